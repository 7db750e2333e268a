//! Who is looking at the dashboard and which scopes they may see.
//!
//! The token is the gRPC services' JWT, checked by service-kit's verifier,
//! so one token works everywhere and the access rules cannot drift: a
//! clinician reads their own centre only, auditors and admins every scope.
//! A browser signs in once with `POST /login`; the token then lives in an
//! http-only, same-site cookie (scripts never see it, other sites never send
//! it). Programs send `Authorization: Bearer <token>` instead.

use axum::{
    Form,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
};
use domain::audit::{ALL_SCOPE, AuditReport};
use service_kit::{JwtSecret, Principal, ReadScope, Role, ServiceError};

use crate::http::{AppState, page};

/// The cookie that keeps a browser's token after `POST /login`.
pub(crate) const TOKEN_COOKIE: &str = "toxaudit_token";

/// An authenticated reader of the dashboard.
#[derive(Debug, Clone)]
pub(crate) struct Viewer {
    principal: Principal,
}

/// A scope the viewer is allowed to read: the network or one centre.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    All,
    Centre(String),
}

impl Scope {
    /// `all` or the centre's name, as in the report's `scopes`.
    pub(crate) fn name(&self) -> &str {
        match self {
            Scope::All => ALL_SCOPE,
            Scope::Centre(centre) => centre,
        }
    }

    /// Does this scope show data of `centre`?
    pub(crate) fn includes(&self, centre: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Centre(own) => own == centre,
        }
    }

    /// The report as this scope shows it: whole for `all`, that centre's
    /// scope alone (zero counts before its first patient) otherwise.
    pub(crate) fn restrict(&self, report: &AuditReport) -> AuditReport {
        match self {
            Scope::All => report.clone(),
            Scope::Centre(centre) => AuditReport {
                rule_set: report.rule_set.clone(),
                parameters: report.parameters,
                scopes: [(
                    centre.clone(),
                    report.scopes.get(centre).copied().unwrap_or_default(),
                )]
                .into_iter()
                .collect(),
            },
        }
    }
}

/// The token a request carries: the bearer header first, else the cookie.
fn token_of(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
    {
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?;
        return Some(token.trim().to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .map(|(_, token)| token.trim().to_owned())
}

impl Viewer {
    /// The caller of a request, or why it is not let in.
    pub(crate) fn from_headers(
        secret: &JwtSecret,
        headers: &HeaderMap,
    ) -> Result<Self, ServiceError> {
        let token = token_of(headers).ok_or_else(|| {
            ServiceError::Unauthenticated(
                "sign in: send authorization: Bearer <token> or the sign-in cookie".to_owned(),
            )
        })?;
        let principal = secret
            .verify(&token)
            .map_err(|error| ServiceError::Unauthenticated(error.to_string()))?;
        Ok(Self { principal })
    }

    /// The token's subject: who is looking.
    pub(crate) fn subject(&self) -> &str {
        &self.principal.subject
    }

    /// How long the viewer's token stays valid: a stream ends then.
    pub(crate) fn expires_in(&self) -> std::time::Duration {
        self.principal.expires_in()
    }

    /// May this viewer read every centre?
    pub(crate) fn sees_every_centre(&self) -> bool {
        matches!(self.principal.role, Role::Auditor | Role::Admin)
    }

    /// Who signed in, as the page greets them.
    pub(crate) fn describe(&self) -> String {
        match self.principal.role {
            Role::Clinician => format!(
                "{} · clinician, {}",
                self.principal.subject, self.principal.centre
            ),
            role => format!("{} · {role}", self.principal.subject),
        }
    }

    /// The scope to show: the one asked for, else the network for those
    /// who may see it and the own centre for a clinician. Refused when the
    /// viewer may not read it.
    pub(crate) fn scope(&self, requested: Option<&str>) -> Result<Scope, ServiceError> {
        let requested = match requested.map(str::trim) {
            Some(text) if !text.is_empty() => text.to_owned(),
            _ if self.sees_every_centre() => ALL_SCOPE.to_owned(),
            _ => self.principal.centre.clone(),
        };
        let scope = ReadScope::parse(&requested);
        self.principal.authorise_read(&scope)?;
        match scope {
            ReadScope::All => Ok(Scope::All),
            ReadScope::Centre(centre) => {
                let centre = domain::Centre::parse(centre)
                    .map_err(|reason| ServiceError::invalid(format!("scope: {reason}")))?;
                Ok(Scope::Centre(centre.as_str().to_owned()))
            }
        }
    }

    /// The scopes the picker offers: the network and each centre of the
    /// report for those who see every centre, the own centre otherwise.
    pub(crate) fn scopes_offered(&self, report: &AuditReport) -> Vec<String> {
        if self.sees_every_centre() {
            report
                .scopes_in_order()
                .into_iter()
                .map(|(name, _)| name.to_owned())
                .collect()
        } else {
            vec![self.principal.centre.clone()]
        }
    }
}

/// The sign-in form.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct SignIn {
    token: String,
}

/// `POST /login`: checks the token and keeps it in the cookie.
pub(crate) async fn login(State(state): State<AppState>, Form(form): Form<SignIn>) -> Response {
    let token = form.token.trim();
    match state.secret.verify(token) {
        Ok(principal) => {
            tracing::info!(subject = %principal.subject, role = %principal.role, "dashboard sign-in");
            let cookie = format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
            let mut response = Redirect::to("/").into_response();
            match header::HeaderValue::from_str(&cookie) {
                Ok(value) => {
                    response.headers_mut().insert(header::SET_COOKIE, value);
                    response
                }
                Err(_) => (
                    StatusCode::BAD_REQUEST,
                    Html(page::sign_in_page(Some(
                        "that token has characters a token cannot have",
                    ))),
                )
                    .into_response(),
            }
        }
        Err(error) => (
            StatusCode::UNAUTHORIZED,
            Html(page::sign_in_page(Some(&error.to_string()))),
        )
            .into_response(),
    }
}

/// `POST /logout`: forgets the cookie.
pub(crate) async fn logout() -> Response {
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        header::HeaderValue::from_static(
            "toxaudit_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn secret() -> JwtSecret {
        JwtSecret::from_bytes(b"a test secret of enough bytes").unwrap()
    }

    fn headers_with_cookie(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("other=1; {TOKEN_COOKIE}={token}").parse().unwrap(),
        );
        headers
    }

    #[test]
    fn a_clinician_reads_only_their_centre() {
        let token = secret()
            .issue("dr-a", "leeds", Role::Clinician, Duration::from_secs(60))
            .unwrap();
        let viewer = Viewer::from_headers(&secret(), &headers_with_cookie(&token)).unwrap();
        assert_eq!(viewer.scope(None).unwrap(), Scope::Centre("leeds".into()));
        assert!(viewer.scope(Some("leeds")).is_ok());
        assert!(viewer.scope(Some("york")).is_err());
        assert!(viewer.scope(Some("all")).is_err());
    }

    #[test]
    fn an_auditor_reads_everything_from_a_bearer_header() {
        let token = secret()
            .issue("audit", "all", Role::Auditor, Duration::from_secs(60))
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        let viewer = Viewer::from_headers(&secret(), &headers).unwrap();
        assert_eq!(viewer.scope(None).unwrap(), Scope::All);
        assert_eq!(
            viewer.scope(Some("york")).unwrap(),
            Scope::Centre("york".into())
        );
        assert!(viewer.scope(Some("Not A Centre")).is_err());
    }

    #[test]
    fn no_token_or_a_bad_one_is_unauthenticated() {
        assert!(matches!(
            Viewer::from_headers(&secret(), &HeaderMap::new()),
            Err(ServiceError::Unauthenticated(_))
        ));
        assert!(matches!(
            Viewer::from_headers(&secret(), &headers_with_cookie("not-a-token")),
            Err(ServiceError::Unauthenticated(_))
        ));
    }

    #[test]
    fn a_centre_scope_shows_only_that_centre() {
        let mut report = AuditReport {
            rule_set: "bnn-2016/v1".into(),
            parameters: None,
            scopes: Default::default(),
        };
        for name in ["all", "leeds", "york"] {
            report.scopes.insert(name.into(), Default::default());
        }
        let restricted = Scope::Centre("leeds".into()).restrict(&report);
        assert_eq!(restricted.scopes.keys().collect::<Vec<_>>(), ["leeds"]);
        let unknown = Scope::Centre("hull".into()).restrict(&report);
        assert_eq!(unknown.scopes.keys().collect::<Vec<_>>(), ["hull"]);
    }
}
