//! `toxaudit token issue`: prints a bearer token (HS256 JWT) signed with the
//! services' secret, so an operator can hand a clinician, an auditor or a
//! script the right to call the services.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use service_kit::{JwtSecret, Role, auth::parse_ttl};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Print a token signed with the secret of TOXAUDIT_JWT_SECRET or --jwt-secret-file.
    Issue(IssueArgs),
}

#[derive(Debug, clap::Args)]
struct IssueArgs {
    /// The centre the holder belongs to (a clinician reads and writes only it).
    #[arg(long)]
    centre: String,
    /// clinician | auditor | admin.
    #[arg(long, value_parser = Role::parse)]
    role: Role,
    /// Who the holder is; recorded as `recorded_by` of what they write.
    /// Default: `<role>@<centre>`.
    #[arg(long)]
    sub: Option<String>,
    /// How long the token is valid: e.g. 8h, 30m, 7d.
    #[arg(long, default_value = "8h", value_parser = parse_ttl)]
    ttl: std::time::Duration,
    /// File holding the signing secret (else TOXAUDIT_JWT_SECRET, else the
    /// secret `toxaudit up` created in its data directory).
    #[arg(long, env = "TOXAUDIT_JWT_SECRET_FILE")]
    jwt_secret_file: Option<PathBuf>,
    /// The data directory of `toxaudit up`, whose `jwt.secret` is used when
    /// no other secret is given.
    #[arg(long, env = "TOXAUDIT_DATA_DIR", default_value = super::up::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Issue(issue) => {
            if issue.role == Role::Clinician {
                domain::Centre::parse(&issue.centre)
                    .map_err(|reason| anyhow::anyhow!("--centre: {reason}"))?;
            }
            let local = super::up::local_secret_file(&issue.data_dir);
            let secret_file = match issue.jwt_secret_file {
                Some(path) => Some(path),
                None if std::env::var_os(service_kit::auth::JWT_SECRET_ENV).is_some() => None,
                None if local.exists() => Some(local),
                None => None,
            };
            let secret =
                JwtSecret::load(secret_file.as_deref()).context("loading the token secret")?;
            let subject = issue
                .sub
                .unwrap_or_else(|| format!("{}@{}", issue.role, issue.centre));
            let token = secret
                .issue(&subject, &issue.centre, issue.role, issue.ttl)
                .context("signing the token")?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
