//! `toxaudit up`: ingest, assessment and reporting in one process, on one
//! gRPC port, over the embedded log with an in-process bus of derived events
//! (nothing to install) or, with `--nats URL`, over JetStream. Also the
//! configuration every service command shares: a TOML file, then
//! environment variables, then flags, each overriding the one before
//! (`docs/configuration.md`).

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use domain::audit::RuleParameters;
use eventlog::{
    EmbeddedLog, EmbeddedOptions, EventLog, JetStreamLog, JetStreamOptions, NatsAuth,
    redact_nats_urls,
};
use reporting::http::{DashboardConfig, DashboardServer};
use service_kit::{
    DerivedBus, GrpcServer, JwtSecret, Shutdown, ShutdownTrigger, TlsFiles,
    server::terminate_signal,
};
use tonic::service::Routes;

/// Default data directory: the embedded log and the checkpoints.
pub const DEFAULT_DATA_DIR: &str = "./toxaudit-data";
/// Default gRPC address.
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50051";
/// Default HTTP address (`/healthz`).
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
/// Default prefix of NATS subjects and stream names.
pub const DEFAULT_NATS_PREFIX: &str = "toxaudit";

/// How long a service waits for a NATS server that is not up yet.
const NATS_STARTUP_WAIT: Duration = Duration::from_secs(30);

/// Options shared by `up` and `serve`. Each may come from the TOML file
/// (`--config`), an environment variable, or a flag; the flag wins.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceOptions {
    /// TOML configuration file (keys as the long flags, with `_`: data_dir, grpc_addr, …).
    #[arg(long, env = "TOXAUDIT_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of the embedded log and of the services' checkpoints [default: ./toxaudit-data].
    #[arg(long, env = "TOXAUDIT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// gRPC address, HOST:PORT (port 0 picks a free one) [default: 127.0.0.1:50051].
    #[arg(long, env = "TOXAUDIT_GRPC_ADDR")]
    grpc_addr: Option<String>,
    /// Use NATS JetStream at this URL for the log and the derived events.
    #[arg(long, env = "TOXAUDIT_NATS_URL")]
    nats: Option<String>,
    /// Prefix of the NATS subjects and streams [default: toxaudit].
    #[arg(long, env = "TOXAUDIT_NATS_PREFIX")]
    nats_prefix: Option<String>,
    #[command(flatten)]
    nats_auth: NatsAuthOptions,
    /// File holding the token secret (else TOXAUDIT_JWT_SECRET).
    #[arg(long, env = "TOXAUDIT_JWT_SECRET_FILE")]
    jwt_secret_file: Option<PathBuf>,
    /// TLS certificate chain (PEM); with --tls-key, serve gRPC over TLS.
    #[arg(long, env = "TOXAUDIT_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "TOXAUDIT_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Throw the checkpoints away and rebuild every projection from position 1.
    #[arg(long)]
    rebuild: bool,
}

/// The keys of the configuration file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    grpc_addr: Option<String>,
    http_addr: Option<String>,
    nats: Option<String>,
    nats_prefix: Option<String>,
    nats_user: Option<String>,
    nats_password_file: Option<PathBuf>,
    nats_creds: Option<PathBuf>,
    nats_token_file: Option<PathBuf>,
    jwt_secret_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// The environment variable holding the NATS password (with `--nats-user`),
/// when no `--nats-password-file` is given.
pub const NATS_PASSWORD_ENV: &str = "TOXAUDIT_NATS_PASSWORD";
/// The environment variable holding a NATS token, when no
/// `--nats-token-file` is given.
pub const NATS_TOKEN_ENV: &str = "TOXAUDIT_NATS_TOKEN";

/// How the services authenticate to NATS. At most one of user + password,
/// credentials file, token; none means the credentials written in the URL,
/// if any. Secrets come from files or the environment, never from a flag's
/// value (which `ps` would show).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NatsAuthOptions {
    /// NATS user; the password comes from --nats-password-file or TOXAUDIT_NATS_PASSWORD.
    #[arg(long, env = "TOXAUDIT_NATS_USER")]
    nats_user: Option<String>,
    /// File holding the NATS password of --nats-user.
    #[arg(long, env = "TOXAUDIT_NATS_PASSWORD_FILE")]
    nats_password_file: Option<PathBuf>,
    /// NATS credentials file (.creds: JWT and nkey seed).
    #[arg(long, env = "TOXAUDIT_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// File holding a NATS token (else TOXAUDIT_NATS_TOKEN).
    #[arg(long, env = "TOXAUDIT_NATS_TOKEN_FILE")]
    nats_token_file: Option<PathBuf>,
}

impl NatsAuthOptions {
    /// These options with no configuration file under them, the secrets read
    /// from their files or the environment.
    pub fn resolve_alone(&self) -> anyhow::Result<NatsAuth> {
        self.resolve(
            NatsAuthOptions::default(),
            std::env::var(NATS_PASSWORD_ENV).ok(),
            std::env::var(NATS_TOKEN_ENV).ok(),
        )
        .context("reading the nats credentials")
    }

    /// These options over `file`'s, with the secrets read from their files or
    /// from `password_env` / `token_env` (the values of the variables).
    fn resolve(
        &self,
        file: NatsAuthOptions,
        password_env: Option<String>,
        token_env: Option<String>,
    ) -> anyhow::Result<NatsAuth> {
        let user = self.nats_user.clone().or(file.nats_user);
        let password_file = self.nats_password_file.clone().or(file.nats_password_file);
        let creds = self.nats_creds.clone().or(file.nats_creds);
        let token_file = self.nats_token_file.clone().or(file.nats_token_file);
        let password = match &password_file {
            Some(path) => Some(read_secret(path, "the nats password")?),
            None => password_env.filter(|password| !password.is_empty()),
        };
        let token = match &token_file {
            Some(path) => Some(read_secret(path, "the nats token")?),
            None => token_env.filter(|token| !token.is_empty()),
        };
        match (user, password, creds, token) {
            (None, None, None, None) => Ok(NatsAuth::None),
            (Some(user), Some(password), None, None) => {
                Ok(NatsAuth::UserPassword { user, password })
            }
            (None, None, Some(path), None) => Ok(NatsAuth::CredsFile(path)),
            (None, None, None, Some(token)) => Ok(NatsAuth::Token(token)),
            (Some(_), None, None, None) => anyhow::bail!(
                "--nats-user needs a password: --nats-password-file or {NATS_PASSWORD_ENV}"
            ),
            (None, Some(_), None, None) => {
                anyhow::bail!("a nats password is set but no --nats-user")
            }
            _ => anyhow::bail!(
                "give one kind of nats credentials: --nats-user with a password, --nats-creds, or a token"
            ),
        }
    }
}

/// The first line of a secret file, without surrounding whitespace.
fn read_secret(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {what} from {}", path.display()))?;
    let secret = text.lines().next().unwrap_or_default().trim().to_owned();
    if secret.is_empty() {
        anyhow::bail!("{what} file {} is empty", path.display());
    }
    Ok(secret)
}

/// What to do when no token secret is configured at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretPolicy {
    /// Refuse to start (`serve`: a deployment must say which secret it uses).
    Require,
    /// Use `<data-dir>/jwt.secret`, creating it with a random secret the
    /// first time (`up`: it must run with no arguments at all).
    GenerateInDataDir,
}

/// The secret file `up` creates in its data directory when none is configured.
pub fn local_secret_file(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("jwt.secret")
}

/// Creates `path` with 32 random bytes (hex) readable by the owner only,
/// unless it exists.
fn ensure_local_secret(path: &std::path::Path) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    if path.exists() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        // The data directory holds the secret, the log and checkpoints:
        // its owner's alone when toxaudit creates it.
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut source| source.read_exact(&mut random))
        .context("reading /dev/urandom for a token secret")?;
    let text: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating the token secret {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing the token secret {}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        "no token secret configured: created one; issue tokens with toxaudit token issue --jwt-secret-file"
    );
    eprintln!(
        "toxaudit: no token secret configured; created {} (issue tokens with: toxaudit token issue --jwt-secret-file {} --centre C --role R)",
        path.display(),
        path.display()
    );
    Ok(())
}

/// The configuration after file, environment and flags are merged.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub grpc_addr: String,
    pub http_addr: String,
    /// Whether `http_addr` was asked for (flag, variable or file) rather
    /// than the default: `serve reporting` serves HTTP only then.
    pub http_addr_asked: bool,
    pub nats: Option<String>,
    pub nats_prefix: String,
    /// How to authenticate to NATS (Debug never shows the secret).
    pub nats_auth: NatsAuth,
    pub secret: Arc<JwtSecret>,
    pub tls: Option<TlsFiles>,
    pub rebuild: bool,
}

impl Settings {
    pub fn resolve(
        options: &ServiceOptions,
        http_addr: Option<&str>,
        secret_policy: SecretPolicy,
    ) -> anyhow::Result<Self> {
        let file = match &options.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the configuration {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("parsing the configuration {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let data_dir = options
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let nats_auth = options
            .nats_auth
            .resolve(
                NatsAuthOptions {
                    nats_user: file.nats_user,
                    nats_password_file: file.nats_password_file,
                    nats_creds: file.nats_creds,
                    nats_token_file: file.nats_token_file,
                },
                std::env::var(NATS_PASSWORD_ENV).ok(),
                std::env::var(NATS_TOKEN_ENV).ok(),
            )
            .context("reading the nats credentials")?;
        let jwt_secret_file = options.jwt_secret_file.clone().or(file.jwt_secret_file);
        let secret = match jwt_secret_file {
            Some(path) => JwtSecret::load(Some(&path)),
            None if std::env::var_os(service_kit::auth::JWT_SECRET_ENV).is_some() => {
                JwtSecret::load(None)
            }
            None if secret_policy == SecretPolicy::GenerateInDataDir => {
                let path = local_secret_file(&data_dir);
                ensure_local_secret(&path)?;
                JwtSecret::load(Some(&path))
            }
            None => JwtSecret::load(None),
        }
        .context("loading the token secret")?;
        let tls = match (
            options.tls_cert.clone().or(file.tls_cert),
            options.tls_key.clone().or(file.tls_key),
        ) {
            (Some(certificate), Some(private_key)) => Some(TlsFiles {
                certificate,
                private_key,
            }),
            (None, None) => None,
            _ => anyhow::bail!("tls needs both a certificate and a private key"),
        };
        Ok(Self {
            data_dir,
            grpc_addr: options
                .grpc_addr
                .clone()
                .or(file.grpc_addr)
                .unwrap_or_else(|| DEFAULT_GRPC_ADDR.to_owned()),
            http_addr_asked: http_addr.is_some() || file.http_addr.is_some(),
            http_addr: http_addr
                .map(str::to_owned)
                .or(file.http_addr)
                .unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_owned()),
            nats: options.nats.clone().or(file.nats),
            nats_prefix: options
                .nats_prefix
                .clone()
                .or(file.nats_prefix)
                .unwrap_or_else(|| DEFAULT_NATS_PREFIX.to_owned()),
            nats_auth,
            secret: Arc::new(secret),
            tls,
            rebuild: options.rebuild,
        })
    }

    /// The checkpoint directory of one service.
    pub fn checkpoint_directory(&self, service: &str) -> PathBuf {
        self.data_dir.join("checkpoints").join(service)
    }

    /// The event log: JetStream with `--nats`, else the embedded log in the
    /// data directory (which this process then locks).
    pub async fn open_log(&self) -> anyhow::Result<Arc<dyn EventLog>> {
        match &self.nats {
            Some(url) => {
                let options = JetStreamOptions {
                    prefix: self.nats_prefix.clone(),
                    stream_name: format!(
                        "{}_EVENTS",
                        self.nats_prefix.to_uppercase().replace(['.', '-'], "_")
                    ),
                    auth: self.nats_auth.clone(),
                    ..JetStreamOptions::default()
                };
                let log = JetStreamLog::connect_with_retry(
                    url,
                    options,
                    Duration::from_millis(200),
                    NATS_STARTUP_WAIT,
                )
                .await
                .with_context(|| {
                    format!(
                        "connecting to the event log on nats at {}",
                        redact_nats_urls(url)
                    )
                })?;
                Ok(Arc::new(log))
            }
            None => {
                let directory = self.data_dir.clone();
                let log = tokio::task::spawn_blocking(move || {
                    EmbeddedLog::open(&directory, EmbeddedOptions::default())
                })
                .await
                .context("opening the event log")?
                .with_context(|| format!("opening the event log in {}", self.data_dir.display()))?;
                Ok(Arc::new(log))
            }
        }
    }

    /// The bus of derived events: JetStream with `--nats`, else in process.
    pub async fn open_bus(&self) -> anyhow::Result<DerivedBus> {
        match &self.nats {
            Some(url) => DerivedBus::connect_nats_with(url, &self.nats_prefix, &self.nats_auth)
                .await
                .with_context(|| {
                    format!(
                        "connecting the derived event bus to {}",
                        redact_nats_urls(url)
                    )
                }),
            None => Ok(DerivedBus::in_process()),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    service: ServiceOptions,
    /// HTTP address of the dashboard, its API, /metrics and /healthz, HOST:PORT [default: 127.0.0.1:8080].
    #[arg(long, env = "TOXAUDIT_HTTP_ADDR")]
    http_addr: Option<String>,
    /// Do not serve HTTP at all.
    #[arg(long)]
    no_http: bool,
}

/// A multi-threaded runtime for the long-running service commands.
pub fn service_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Waits for ctrl-c / SIGTERM and triggers `trigger`, unless shutdown comes
/// first from elsewhere (a failing component).
pub async fn stop_on_signal(trigger: Arc<ShutdownTrigger>, shutdown: Shutdown) {
    tokio::select! {
        () = terminate_signal() => trigger.trigger(),
        () = shutdown.wait() => {}
    }
}

/// Runs a component; if it fails, shuts the others down too.
pub async fn run_component<E: std::error::Error + Send + Sync + 'static>(
    name: &'static str,
    trigger: Arc<ShutdownTrigger>,
    component: impl std::future::Future<Output = Result<(), E>>,
) -> anyhow::Result<()> {
    let outcome = component.await;
    if let Err(error) = &outcome {
        tracing::error!(component = name, %error, "component failed, shutting down");
        trigger.trigger();
    }
    outcome.with_context(|| format!("{name} failed"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let http_addr = if args.no_http {
        None
    } else {
        Some(args.http_addr.as_deref())
    };
    let settings = Settings::resolve(
        &args.service,
        http_addr.flatten(),
        SecretPolicy::GenerateInDataDir,
    )?;
    let runtime = service_runtime()?;
    runtime.block_on(up(settings, http_addr.is_some()))?;
    Ok(ExitCode::SUCCESS)
}

async fn up(settings: Settings, serve_http: bool) -> anyhow::Result<()> {
    let log = settings.open_log().await?;
    let bus = settings.open_bus().await?;
    let parameters = RuleParameters::default();
    let ingest = ingest::Ingest::prepare(
        Arc::clone(&log),
        &settings.checkpoint_directory("ingest"),
        settings.rebuild,
    )
    .await
    .context("preparing ingest")?;
    let assessment = assessment::Assessment::prepare(
        Arc::clone(&log),
        bus,
        &settings.checkpoint_directory("assessment"),
        settings.rebuild,
        parameters,
    )
    .await
    .context("preparing assessment")?;
    let reporting = reporting::service::Reporting::prepare(
        Arc::clone(&log),
        &settings.checkpoint_directory("reporting"),
        settings.rebuild,
        parameters,
    )
    .await
    .context("preparing reporting")?;
    let routes = Routes::new(ingest.grpc_service(Arc::clone(&settings.secret)))
        .add_service(assessment.grpc_service(Arc::clone(&settings.secret)))
        .add_service(reporting.grpc_service(Arc::clone(&settings.secret)));
    let server = GrpcServer::bind(
        &settings.grpc_addr,
        settings.tls.as_ref(),
        routes,
        &[
            ingest::SERVICE_NAME,
            assessment::SERVICE_NAME,
            reporting::service::SERVICE_NAME,
        ],
    )
    .await?;
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    println!(
        "listening grpc {scheme}://{} (ingest, assessment, reporting; {} log)",
        server.local_addr(),
        if settings.nats.is_some() {
            "jetstream"
        } else {
            "embedded"
        }
    );
    let http = if serve_http {
        let http = DashboardServer::bind(
            &settings.http_addr,
            DashboardConfig {
                live: reporting.live(),
                log: Arc::clone(&log),
                secret: Arc::clone(&settings.secret),
            },
        )
        .await?;
        println!(
            "listening http http://{} (dashboard, /api/report, /api/stream, /metrics, /healthz)",
            http.local_addr()
        );
        println!("dashboard {}", http.url());
        Some(http)
    } else {
        None
    };
    let (trigger, shutdown) = Shutdown::new();
    let trigger = Arc::new(trigger);
    let http_run = async {
        match http {
            Some(http) => {
                run_component(
                    "http",
                    Arc::clone(&trigger),
                    http.run_until_stopped(shutdown.clone()),
                )
                .await
            }
            None => Ok(()),
        }
    };
    let outcomes = tokio::join!(
        stop_on_signal(Arc::clone(&trigger), shutdown.clone()),
        run_component(
            "grpc",
            Arc::clone(&trigger),
            server.run_until_stopped(shutdown.clone().wait())
        ),
        run_component(
            "ingest",
            Arc::clone(&trigger),
            ingest.run_until_stopped(shutdown.clone())
        ),
        run_component(
            "assessment",
            Arc::clone(&trigger),
            assessment.run_until_stopped(shutdown.clone())
        ),
        run_component(
            "reporting",
            Arc::clone(&trigger),
            reporting.run_until_stopped(shutdown.clone())
        ),
        http_run,
    );
    let ((), grpc, ingest, assessment, reporting, http) = outcomes;
    grpc.and(ingest).and(assessment).and(reporting).and(http)?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        service: ServiceOptions,
    }

    fn options(arguments: &[&str]) -> ServiceOptions {
        Command::parse_from(std::iter::once("toxaudit").chain(arguments.iter().copied())).service
    }

    #[test]
    fn nats_credentials_come_from_flags_over_the_file_and_never_from_nothing() {
        let directory = tempfile::tempdir().unwrap();
        let password = directory.path().join("password");
        std::fs::write(&password, "s3cret\n").unwrap();
        let password = password.display().to_string();
        let file = NatsAuthOptions {
            nats_user: Some("from-file".into()),
            ..NatsAuthOptions::default()
        };
        let resolved = options(&["--nats-user", "services", "--nats-password-file", &password])
            .nats_auth
            .resolve(file.clone(), None, None)
            .unwrap();
        assert_eq!(
            resolved,
            NatsAuth::UserPassword {
                user: "services".into(),
                password: "s3cret".into()
            }
        );
        let from_environment = options(&[])
            .nats_auth
            .resolve(file.clone(), Some("env-secret".into()), None)
            .unwrap();
        assert_eq!(
            from_environment,
            NatsAuth::UserPassword {
                user: "from-file".into(),
                password: "env-secret".into()
            }
        );
        assert!(options(&[]).nats_auth.resolve(file, None, None).is_err());
        assert!(
            options(&["--nats-creds", "/x.creds"])
                .nats_auth
                .resolve(NatsAuthOptions::default(), Some("p".into()), None)
                .is_err()
        );
        assert_eq!(
            options(&["--nats-creds", "/x.creds"])
                .nats_auth
                .resolve(NatsAuthOptions::default(), None, None)
                .unwrap(),
            NatsAuth::CredsFile(PathBuf::from("/x.creds"))
        );
        assert_eq!(
            options(&[])
                .nats_auth
                .resolve(NatsAuthOptions::default(), None, None)
                .unwrap(),
            NatsAuth::None
        );
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_the_defaults() {
        let directory = tempfile::tempdir().unwrap();
        let secret = directory.path().join("secret");
        std::fs::write(&secret, "a secret from a file, long enough\n").unwrap();
        let config = directory.path().join("toxaudit.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"/from/file\"\ngrpc_addr = \"0.0.0.0:1\"\nnats = \"nats://file:4222\"\njwt_secret_file = \"{}\"\n",
                secret.display()
            ),
        )
        .unwrap();
        let config = config.display().to_string();
        let settings = Settings::resolve(
            &options(&["--config", &config, "--grpc-addr", "127.0.0.1:2"]),
            None,
            SecretPolicy::Require,
        )
        .unwrap();
        assert_eq!(settings.data_dir, PathBuf::from("/from/file"));
        assert_eq!(settings.grpc_addr, "127.0.0.1:2");
        assert_eq!(settings.nats.as_deref(), Some("nats://file:4222"));
        assert_eq!(settings.http_addr, DEFAULT_HTTP_ADDR);
        assert!(!settings.http_addr_asked, "the default is not asked for");
        assert_eq!(settings.nats_prefix, DEFAULT_NATS_PREFIX);
    }

    /// `serve reporting` serves HTTP on the file's `http_addr` too (it used
    /// to read only the flag and the variable, found by the operator review).
    #[test]
    fn the_file_s_http_addr_is_asked_for_as_the_flag_is() {
        let directory = tempfile::tempdir().unwrap();
        let secret = directory.path().join("jwt.secret");
        std::fs::write(&secret, "a-test-secret-of-at-least-sixteen-bytes").unwrap();
        let config = directory.path().join("toxaudit.toml");
        std::fs::write(
            &config,
            format!(
                "http_addr = \"127.0.0.1:9\"\njwt_secret_file = \"{}\"\n",
                secret.display()
            ),
        )
        .unwrap();
        let config = config.display().to_string();
        let from_file = Settings::resolve(
            &options(&["--config", &config]),
            None,
            SecretPolicy::Require,
        )
        .unwrap();
        assert!(from_file.http_addr_asked);
        assert_eq!(from_file.http_addr, "127.0.0.1:9");
        let from_flag = Settings::resolve(
            &options(&["--config", &config]),
            Some("127.0.0.1:10"),
            SecretPolicy::Require,
        )
        .unwrap();
        assert!(from_flag.http_addr_asked);
        assert_eq!(from_flag.http_addr, "127.0.0.1:10");
    }

    #[test]
    fn an_unknown_key_in_the_file_is_an_error() {
        let directory = tempfile::tempdir().unwrap();
        let config = directory.path().join("toxaudit.toml");
        std::fs::write(&config, "grpc_adress = \"0.0.0.0:1\"\n").unwrap();
        let config = config.display().to_string();
        let error = Settings::resolve(
            &options(&["--config", &config]),
            None,
            SecretPolicy::GenerateInDataDir,
        )
        .unwrap_err();
        assert!(format!("{error:#}").contains("grpc_adress"), "{error:#}");
    }

    #[test]
    fn up_creates_a_secret_in_its_data_directory_once() {
        let directory = tempfile::tempdir().unwrap();
        let path = local_secret_file(directory.path());
        ensure_local_secret(&path).unwrap();
        let first = std::fs::read_to_string(&path).unwrap();
        ensure_local_secret(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
        assert!(JwtSecret::from_bytes(first.as_bytes()).is_ok());
    }
}
