//! How every toxaudit NATS connection authenticates: the one place that turns
//! a URL list and a [`NatsAuth`] into an `async_nats::Client`, used by the
//! JetStream log, the network stream tooling and service-kit's derived event
//! bus. It exists because async-nats ignores a `user:password@` written in a
//! URL: without it a service silently connects as nobody, and the deployment
//! had to admit clients without credentials. The user and password of a URL
//! are parsed out here and passed as options; every URL that reaches a
//! message or a log goes through [`redact_nats_urls`] first.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{ConnectErrorKind, ConnectOptions, ServerAddr};

/// How a client proves who it is to nats-server.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials of its own: the user and password written in the URL,
    /// if any, else none at all.
    #[default]
    None,
    /// A user and password (the `users` of an account in the server config).
    UserPassword { user: String, password: String },
    /// A `.creds` file (JWT and nkey seed) of a decentralised deployment.
    CredsFile(PathBuf),
    /// An authorization token.
    Token(String),
}

impl std::fmt::Debug for NatsAuth {
    /// Never prints a password or token.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.describe())
    }
}

impl NatsAuth {
    /// What the credentials are, without their secret: for messages and logs.
    pub fn describe(&self) -> String {
        match self {
            NatsAuth::None => "no credentials".to_owned(),
            NatsAuth::UserPassword { user, .. } => format!("user {user} with a password"),
            NatsAuth::CredsFile(path) => format!("credentials file {}", path.display()),
            NatsAuth::Token(_) => "a token".to_owned(),
        }
    }

    /// `options` with these credentials set. Reads a credentials file.
    pub async fn apply(&self, options: ConnectOptions) -> Result<ConnectOptions, NatsConnectError> {
        Ok(match self {
            NatsAuth::None => options,
            NatsAuth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
            NatsAuth::CredsFile(path) => options.credentials_file(path).await.map_err(|error| {
                NatsConnectError::Credentials(format!(
                    "cannot read the nats credentials file {}: {error}",
                    path.display()
                ))
            })?,
            NatsAuth::Token(token) => options.token(token.clone()),
        })
    }
}

/// Why a connection could not be opened, by how a caller should react.
#[derive(Debug, thiserror::Error)]
pub enum NatsConnectError {
    /// The URL list does not parse. Fix the configuration.
    #[error("invalid nats url {0}")]
    InvalidUrl(String),
    /// The credentials are unreadable or the server refused them. Fix the
    /// configuration; retrying will not help.
    #[error("nats credentials: {0}")]
    Credentials(String),
    /// No server answered; retrying later may succeed.
    #[error("{0}")]
    Unreachable(String),
}

/// One or more comma-separated server URLs, with the credentials written in
/// them taken out.
#[derive(Clone)]
pub struct NatsServers {
    addresses: Vec<ServerAddr>,
    url_auth: NatsAuth,
    redacted: String,
}

impl std::fmt::Debug for NatsServers {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.redacted)
    }
}

impl NatsServers {
    /// Parses `nats://[user:password@]host:port[,…]`. The first URL that
    /// carries a user and password gives the credentials (percent-decoded);
    /// the addresses keep none, so that the client never logs them.
    pub fn parse(urls: &str) -> Result<NatsServers, NatsConnectError> {
        let redacted = redact_nats_urls(urls);
        let mut addresses = Vec::new();
        let mut url_auth = NatsAuth::None;
        for url in urls.split(',').map(str::trim).filter(|url| !url.is_empty()) {
            let (without, userinfo) = split_userinfo(url);
            if let (NatsAuth::None, Some(userinfo)) = (&url_auth, userinfo) {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                url_auth = if password.is_empty() {
                    // `nats://TOKEN@host`: the nats convention for a token.
                    NatsAuth::Token(percent_decode(user))
                } else {
                    NatsAuth::UserPassword {
                        user: percent_decode(user),
                        password: percent_decode(password),
                    }
                };
            }
            let address: ServerAddr = without.parse().map_err(|error| {
                NatsConnectError::InvalidUrl(format!("{}: {error}", redact_nats_urls(url)))
            })?;
            addresses.push(address);
        }
        if addresses.is_empty() {
            return Err(NatsConnectError::InvalidUrl(format!(
                "{redacted:?}: no url"
            )));
        }
        Ok(NatsServers {
            addresses,
            url_auth,
            redacted,
        })
    }

    /// The URLs as given, with every password replaced by `***`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The credentials written in the URLs ([`NatsAuth::None`] if none).
    pub fn url_auth(&self) -> &NatsAuth {
        &self.url_auth
    }

    /// The server addresses, without credentials.
    pub fn addresses(&self) -> &[ServerAddr] {
        &self.addresses
    }
}

/// Connects to `urls` (comma-separated) with `auth`, or with the credentials
/// written in the URLs when `auth` is [`NatsAuth::None`]. `options` carries
/// the caller's timeouts and callbacks.
pub async fn connect_nats(
    urls: &str,
    auth: &NatsAuth,
    options: ConnectOptions,
) -> Result<async_nats::Client, NatsConnectError> {
    let servers = NatsServers::parse(urls)?;
    let auth = match auth {
        NatsAuth::None => servers.url_auth(),
        explicit => explicit,
    };
    let options = auth.apply(options).await?;
    options
        .connect(servers.addresses().to_vec())
        .await
        .map_err(|error| match error.kind() {
            ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                NatsConnectError::Credentials(format!(
                    "nats server at {} refused {}: {error}",
                    servers.redacted(),
                    auth.describe()
                ))
            }
            _ => NatsConnectError::Unreachable(format!(
                "cannot reach nats server at {}: {error}",
                servers.redacted()
            )),
        })
}

/// Default options of a service connection: fail within `timeout`.
pub fn connect_options(timeout: Duration) -> ConnectOptions {
    ConnectOptions::new()
        .connection_timeout(timeout)
        .request_timeout(Some(timeout))
}

/// `urls` with the password (or token) of each replaced by `***`, for
/// messages and logs.
pub fn redact_nats_urls(urls: &str) -> String {
    urls.split(',')
        .map(|url| match split_userinfo(url) {
            (_, None) => url.to_owned(),
            (without, Some(userinfo)) => {
                let shown = match userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:***"),
                    None => "***".to_owned(),
                };
                let scheme_length = scheme_length(&without);
                format!(
                    "{}{shown}@{}",
                    &without[..scheme_length],
                    &without[scheme_length..]
                )
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The length of `scheme://` at the start of `url`, 0 when it has none.
fn scheme_length(url: &str) -> usize {
    url.find("://").map_or(0, |end| end + 3)
}

/// `url` without its `userinfo@`, and the userinfo. Only the authority (up to
/// the first `/`, `?` or `#` after the scheme) is looked at.
fn split_userinfo(url: &str) -> (String, Option<&str>) {
    let scheme_length = scheme_length(url);
    let after_scheme = &url[scheme_length..];
    let authority_end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    let authority = &after_scheme[..authority_end];
    match authority.rfind('@') {
        Some(at) => (
            format!("{}{}", &url[..scheme_length], &after_scheme[at + 1..]),
            Some(&authority[..at]),
        ),
        None => (url.to_owned(), None),
    }
}

/// `%XX` sequences decoded; anything malformed is kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && let Some(hex) = text.get(index + 1..index + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            decoded.push(byte);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).unwrap_or_else(|_| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_a_redacted_url() {
        assert_eq!(
            redact_nats_urls("nats://admin:s3cret@hub-1:4222,nats://hub-2:4222"),
            "nats://admin:***@hub-1:4222,nats://hub-2:4222"
        );
        assert_eq!(
            redact_nats_urls("nats://t0ken@hub:4222"),
            "nats://***@hub:4222"
        );
        assert_eq!(redact_nats_urls("hub:4222"), "hub:4222");
        assert_eq!(redact_nats_urls("u:p@hub:4222"), "u:***@hub:4222");
    }

    #[test]
    fn credentials_in_a_url_are_parsed_out_of_the_addresses() -> Result<(), NatsConnectError> {
        let servers = NatsServers::parse("nats://services:p%40ss@leaf:4222, nats://leaf-2:4222")?;
        assert_eq!(
            servers.url_auth(),
            &NatsAuth::UserPassword {
                user: "services".into(),
                password: "p@ss".into()
            }
        );
        assert_eq!(servers.addresses().len(), 2);
        assert!(
            servers
                .addresses()
                .iter()
                .all(|address| !address.has_user_pass())
        );
        assert!(!format!("{servers:?}").contains("p%40ss"));
        Ok(())
    }

    #[test]
    fn debug_output_hides_secrets() {
        let auth = NatsAuth::UserPassword {
            user: "services".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{auth:?}").contains("hunter2"));
        assert!(!format!("{:?}", NatsAuth::Token("tok123".into())).contains("tok123"));
    }

    #[test]
    fn an_empty_url_list_is_invalid() {
        assert!(matches!(
            NatsServers::parse(" , "),
            Err(NatsConnectError::InvalidUrl(_))
        ));
    }
}
