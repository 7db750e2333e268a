//! Who is calling and what they may do: HS256 JWT bearer tokens with claims
//! `sub`, `centre`, `role` and `exp`, checked by a tonic interceptor on every
//! RPC, and the access rules every service applies.
//!
//! The rules, in one place so the three services cannot drift apart:
//! a clinician writes and reads only its own centre; an auditor reads every
//! centre and writes nothing; an admin may do anything.

use std::{fmt, sync::Arc, time::Duration};

use domain::Centre;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ServiceError;

/// The role claim of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Writes and reads its own centre only.
    Clinician,
    /// Reads every centre, writes nothing.
    Auditor,
    /// May do anything.
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "clinician" => Ok(Role::Clinician),
            "auditor" => Ok(Role::Auditor),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "'{other}' is not a role: use clinician, auditor or admin"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Clinician => "clinician",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The claims of a toxaudit token, as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The person or system calling; recorded as `recorded_by` of what it writes.
    pub sub: String,
    /// The centre the principal belongs to (for auditors and admins it may be `all`).
    pub centre: String,
    pub role: Role,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// An authenticated caller, as the services see it after the interceptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    /// The centre claim as signed; only meaningful for clinicians.
    pub centre: String,
    pub role: Role,
    /// When the token stops being valid, seconds since the Unix epoch (its
    /// `exp`): a call that outlives it, such as a watched stream, must end
    /// then too.
    pub expires_at: u64,
}

/// What a caller wants to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadScope<'a> {
    /// Every centre (the network-wide scope `all`).
    All,
    Centre(&'a str),
}

impl ReadScope<'_> {
    /// `all` (or empty) is every centre, anything else one centre.
    pub fn parse(text: &str) -> ReadScope<'_> {
        if text.is_empty() || text == "all" {
            ReadScope::All
        } else {
            ReadScope::Centre(text)
        }
    }
}

impl Principal {
    /// How long the token stays valid from now (zero once expired).
    pub fn expires_in(&self) -> Duration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Duration::from_secs(self.expires_at).saturating_sub(now)
    }

    /// May this caller append events of `centre`?
    pub fn authorise_write(&self, centre: &Centre) -> Result<(), ServiceError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Clinician if self.centre == centre.as_str() => Ok(()),
            Role::Clinician => Err(ServiceError::PermissionDenied(format!(
                "a clinician of centre {} may not write events of centre {centre}",
                self.centre
            ))),
            Role::Auditor => Err(ServiceError::PermissionDenied(
                "an auditor may read but not write".to_owned(),
            )),
        }
    }

    /// May this caller read `scope`?
    pub fn authorise_read(&self, scope: &ReadScope<'_>) -> Result<(), ServiceError> {
        match (self.role, scope) {
            (Role::Admin | Role::Auditor, _) => Ok(()),
            (Role::Clinician, ReadScope::Centre(centre)) if *centre == self.centre => Ok(()),
            (Role::Clinician, ReadScope::Centre(centre)) => {
                Err(ServiceError::PermissionDenied(format!(
                    "a clinician of centre {} may not read centre {centre}",
                    self.centre
                )))
            }
            (Role::Clinician, ReadScope::All) => Err(ServiceError::PermissionDenied(format!(
                "a clinician of centre {} may read only that centre, not all",
                self.centre
            ))),
        }
    }
}

/// Errors of token handling.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The secret is missing or unusable: a configuration mistake.
    #[error("jwt secret: {0}")]
    Secret(String),
    /// The token is missing, malformed, badly signed or expired.
    #[error("{0}")]
    Invalid(String),
}

/// The shared secret that signs and checks tokens (HS256).
#[derive(Clone)]
pub struct JwtSecret {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret, even in debug output.
        f.write_str("JwtSecret(..)")
    }
}

/// Environment variable holding the secret when no file is given.
pub const JWT_SECRET_ENV: &str = "TOXAUDIT_JWT_SECRET";

/// Shortest secret accepted: HS256 with fewer than 16 bytes is guessable.
const MINIMUM_SECRET_BYTES: usize = 16;

impl JwtSecret {
    pub fn from_bytes(secret: &[u8]) -> Result<Self, AuthError> {
        if secret.len() < MINIMUM_SECRET_BYTES {
            return Err(AuthError::Secret(format!(
                "the secret must be at least {MINIMUM_SECRET_BYTES} bytes, got {}",
                secret.len()
            )));
        }
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        })
    }

    /// The secret from `file` when given (surrounding whitespace trimmed, so
    /// a trailing newline does not matter), else from `TOXAUDIT_JWT_SECRET`.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, AuthError> {
        match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| {
                    AuthError::Secret(format!("cannot read {}: {error}", path.display()))
                })?;
                warn_if_others_may_read(path);
                Self::from_bytes(text.trim().as_bytes())
            }
            None => match std::env::var(JWT_SECRET_ENV) {
                Ok(text) => Self::from_bytes(text.trim().as_bytes()),
                Err(_) => Err(AuthError::Secret(format!(
                    "no secret: set {JWT_SECRET_ENV} or pass --jwt-secret-file"
                ))),
            },
        }
    }

    /// Signs a token for `subject` of `centre` with `role`, valid for `ttl`.
    pub fn issue(
        &self,
        subject: &str,
        centre: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<String, AuthError> {
        let claims = Claims {
            sub: subject.to_owned(),
            centre: centre.to_owned(),
            role,
            exp: jsonwebtoken::get_current_timestamp().saturating_add(ttl.as_secs()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|error| AuthError::Invalid(format!("cannot sign token: {error}")))
    }

    /// Checks signature, algorithm and expiry, and returns the caller.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        // A token may say it is valid only from later on; honour it.
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|error| AuthError::Invalid(format!("invalid token: {error}")))?;
        let claims = data.claims;
        // The subject is recorded as `recorded_by` and written into logs: a
        // control character there would forge log lines or records.
        if claims.sub.trim().is_empty() || claims.sub.chars().any(char::is_control) {
            return Err(AuthError::Invalid(
                "invalid token: the subject claim is empty or holds control characters".to_owned(),
            ));
        }
        if claims.role == Role::Clinician && Centre::parse(&claims.centre).is_err() {
            return Err(AuthError::Invalid(format!(
                "invalid token: a clinician's centre claim '{}' is not a centre",
                claims.centre
            )));
        }
        Ok(Principal {
            subject: claims.sub,
            centre: claims.centre,
            role: claims.role,
            expires_at: claims.exp,
        })
    }
}

/// `stream` until `principal`'s token expires; then one UNAUTHENTICATED
/// status and the end. A long-lived stream (`WatchReport`) is authorised
/// once, when it opens: without this it would keep delivering to a caller
/// whose token has run out.
pub fn until_token_expires<S, T>(
    stream: S,
    principal: &Principal,
) -> impl futures::Stream<Item = Result<T, tonic::Status>> + Send + use<S, T>
where
    S: futures::Stream<Item = Result<T, tonic::Status>> + Send,
    T: Send,
{
    use futures::StreamExt;
    let expired = Box::pin(tokio::time::sleep(principal.expires_in()));
    let state = (Box::pin(stream), expired, false);
    futures::stream::unfold(state, |(mut stream, mut expired, ended)| async move {
        if ended {
            return None;
        }
        tokio::select! {
            biased;
            () = &mut expired => {
                let status = ServiceError::Unauthenticated(
                    "the token expired: sign in again".to_owned(),
                )
                .into_status();
                Some((Err(status), (stream, expired, true)))
            }
            item = stream.next() => item.map(|item| (item, (stream, expired, false))),
        }
    })
}

/// Parses a time-to-live such as `8h`, `30m`, `45s`, `7d` or plain seconds.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit_seconds) = match text.char_indices().last() {
        Some((index, 'd')) => (&text[..index], 86_400),
        Some((index, 'h')) => (&text[..index], 3_600),
        Some((index, 'm')) => (&text[..index], 60),
        Some((index, 's')) => (&text[..index], 1),
        _ => (text, 1),
    };
    let count: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a duration such as 8h, 30m or 7d"))?;
    if count == 0 {
        return Err("a token's time to live must be more than zero".to_owned());
    }
    Ok(Duration::from_secs(count.saturating_mul(unit_seconds)))
}

/// The tonic interceptor: every request must carry `authorization: Bearer
/// <jwt>`; the verified [`Principal`] goes into the request's extensions.
#[derive(Debug, Clone)]
pub struct AuthInterceptor {
    secret: Arc<JwtSecret>,
}

impl AuthInterceptor {
    pub fn new(secret: Arc<JwtSecret>) -> Self {
        Self { secret }
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| {
                ServiceError::Unauthenticated("no authorization: Bearer token".to_owned())
                    .into_status()
            })?
            .to_str()
            .map_err(|_| {
                ServiceError::Unauthenticated("authorization header is not text".to_owned())
                    .into_status()
            })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                ServiceError::Unauthenticated("authorization must be 'Bearer <token>'".to_owned())
                    .into_status()
            })?;
        let principal = self
            .secret
            .verify(token.trim())
            .map_err(|error| ServiceError::Unauthenticated(error.to_string()).into_status())?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// The caller of a request that went through [`AuthInterceptor`].
pub fn principal<T>(request: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| {
            ServiceError::Unauthenticated("request was not authenticated".to_owned()).into_status()
        })
}

/// Anyone who can read the token secret can sign tokens of any centre and
/// role: say so when the file is readable by others than its owner.
fn warn_if_others_may_read(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(metadata) = std::fs::metadata(path) {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{mode:o}"),
                    "the token secret is readable by other users: chmod 600 it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> JwtSecret {
        JwtSecret::from_bytes(b"a test secret of enough bytes").unwrap()
    }

    #[test]
    fn a_token_round_trips() {
        let token = secret()
            .issue("dr-a", "leeds", Role::Clinician, Duration::from_secs(60))
            .unwrap();
        let principal = secret().verify(&token).unwrap();
        assert_eq!(principal.subject, "dr-a");
        assert_eq!(principal.centre, "leeds");
        assert_eq!(principal.role, Role::Clinician);
    }

    #[test]
    fn another_secret_is_refused() {
        let token = secret()
            .issue("dr-a", "leeds", Role::Admin, Duration::from_secs(60))
            .unwrap();
        let other = JwtSecret::from_bytes(b"another secret, also long").unwrap();
        assert!(other.verify(&token).is_err());
    }

    #[test]
    fn an_expired_token_is_refused() {
        let claims = Claims {
            sub: "dr-a".into(),
            centre: "leeds".into(),
            role: Role::Admin,
            exp: jsonwebtoken::get_current_timestamp() - 10,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"a test secret of enough bytes"),
        )
        .unwrap();
        assert!(secret().verify(&token).is_err());
    }

    /// A token signed with the test secret, with `claims` as given.
    fn signed(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"a test secret of enough bytes"),
        )
        .unwrap()
    }

    #[test]
    fn a_token_not_yet_valid_is_refused() {
        let now = jsonwebtoken::get_current_timestamp();
        let token = signed(serde_json::json!({
            "sub": "dr-a", "centre": "leeds", "role": "admin",
            "exp": now + 3600, "nbf": now + 1800,
        }));
        assert!(secret().verify(&token).is_err());
    }

    #[test]
    fn a_subject_that_is_empty_or_holds_control_characters_is_refused() {
        let now = jsonwebtoken::get_current_timestamp();
        for subject in ["", "evil\nINFO a forged log line", "bell\u{7}"] {
            let token = signed(serde_json::json!({
                "sub": subject, "centre": "leeds", "role": "admin", "exp": now + 3600,
            }));
            assert!(secret().verify(&token).is_err(), "{subject:?} was accepted");
        }
    }

    fn principal_expiring_at(expires_at: u64) -> Principal {
        Principal {
            subject: "dr-a".into(),
            centre: "leeds".into(),
            role: Role::Clinician,
            expires_at,
        }
    }

    #[tokio::test]
    async fn a_stream_ends_unauthenticated_when_the_token_expires() {
        use futures::StreamExt;
        // A stream that never yields, like a watch with nothing new.
        let pending = futures::stream::pending::<Result<u32, tonic::Status>>();
        let expires_at = jsonwebtoken::get_current_timestamp() + 1;
        let items: Vec<_> = until_token_expires(pending, &principal_expiring_at(expires_at))
            .collect()
            .await;
        assert!(jsonwebtoken::get_current_timestamp() >= expires_at);
        assert_eq!(items.len(), 1);
        let status = items[0].as_ref().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }

    #[tokio::test]
    async fn a_stream_passes_its_items_through_while_the_token_is_valid() {
        use futures::StreamExt;
        let items = futures::stream::iter([Ok::<u32, tonic::Status>(1), Ok(2)]);
        let seen: Vec<u32> = until_token_expires(items, &principal_expiring_at(u64::MAX))
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(seen, [1, 2]);
        let principal = principal_expiring_at(jsonwebtoken::get_current_timestamp() + 3600);
        assert!(principal.expires_in() > Duration::from_secs(3500));
        assert_eq!(principal_expiring_at(0).expires_in(), Duration::ZERO);
    }

    #[test]
    fn a_short_secret_is_refused() {
        assert!(JwtSecret::from_bytes(b"short").is_err());
    }

    #[test]
    fn clinicians_stay_in_their_centre() {
        let leeds = Centre::parse("leeds").unwrap();
        let york = Centre::parse("york").unwrap();
        let clinician = Principal {
            subject: "dr-a".into(),
            centre: "leeds".into(),
            role: Role::Clinician,
            expires_at: u64::MAX,
        };
        assert!(clinician.authorise_write(&leeds).is_ok());
        assert!(clinician.authorise_write(&york).is_err());
        assert!(
            clinician
                .authorise_read(&ReadScope::Centre("leeds"))
                .is_ok()
        );
        assert!(
            clinician
                .authorise_read(&ReadScope::Centre("york"))
                .is_err()
        );
        assert!(clinician.authorise_read(&ReadScope::All).is_err());
        let auditor = Principal {
            role: Role::Auditor,
            ..clinician.clone()
        };
        assert!(auditor.authorise_read(&ReadScope::All).is_ok());
        assert!(auditor.authorise_write(&leeds).is_err());
        let admin = Principal {
            role: Role::Admin,
            ..clinician
        };
        assert!(admin.authorise_write(&york).is_ok());
    }

    #[test]
    fn time_to_live_parses() {
        assert_eq!(parse_ttl("8h").unwrap(), Duration::from_secs(8 * 3600));
        assert_eq!(parse_ttl("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert!(parse_ttl("0h").is_err());
        assert!(parse_ttl("soon").is_err());
    }
}
