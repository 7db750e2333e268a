//! `toxaudit network sync --nats URL --centre C...`: creates the hub's network
//! stream, or adds to it a source for each centre it lacks (ADR 0006). Run by
//! the network's operators once when the hub comes up and again whenever a
//! centre joins (`deploy/nats/add-centre.sh` says when). It never removes a
//! centre.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use eventlog::network::{CentreSource, NetworkStreamOptions, ensure_network_stream};
use eventlog::{NatsAuth, redact_nats_urls};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Create the network stream at the hub, or add the centres it does not source yet.
    Sync(SyncArgs),
}

#[derive(Debug, clap::Args)]
struct SyncArgs {
    /// A hub node, as the network-admin user: nats://network-admin:PASSWORD@HOST:4222
    /// (comma-separate several nodes).
    #[arg(long, env = "TOXAUDIT_NATS_URL")]
    nats: String,
    /// A centre whose leaf node the hub sources from; its JetStream domain is
    /// the centre's name (repeatable).
    #[arg(long = "centre", required = true)]
    centres: Vec<String>,
    /// Prefix of the NATS subjects and streams.
    #[arg(long, env = "TOXAUDIT_NATS_PREFIX", default_value = super::up::DEFAULT_NATS_PREFIX)]
    nats_prefix: String,
    #[command(flatten)]
    nats_auth: super::up::NatsAuthOptions,
    /// Replicas of the network stream: 3 on the three-node hub.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Sync(args) => sync(args),
    }
}

fn sync(args: SyncArgs) -> anyhow::Result<ExitCode> {
    let centres = args
        .centres
        .iter()
        .map(|centre| CentreSource::new(centre))
        .collect::<Result<Vec<_>, _>>()
        .context("reading the centres")?;
    let stream_prefix = args.nats_prefix.to_uppercase().replace(['.', '-'], "_");
    let options = NetworkStreamOptions {
        prefix: args.nats_prefix.clone(),
        stream_name: format!("{stream_prefix}_EVENTS"),
        centre_stream_name: format!("{stream_prefix}_EVENTS"),
        replicas: args.replicas,
        ..NetworkStreamOptions::default()
    };
    let auth = args.nats_auth.resolve_alone()?;
    let runtime = super::runtime()?;
    let sourced = runtime.block_on(async {
        let client = connect(&args.nats, &auth).await?;
        ensure_network_stream(client, &options, &centres)
            .await
            .context("creating or updating the network stream")
    })?;
    println!(
        "network stream {} sources {} centre(s): {}",
        options.stream_name,
        sourced.len(),
        sourced.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// Connects to one or more comma-separated URLs, as `--nats-user` & co say,
/// else with the user and password written in the URL.
async fn connect(urls: &str, auth: &NatsAuth) -> anyhow::Result<async_nats::Client> {
    eventlog::connect_nats(
        urls,
        auth,
        async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5)),
    )
    .await
    .with_context(|| format!("connecting to the hub at {}", redact_nats_urls(urls)))
}
