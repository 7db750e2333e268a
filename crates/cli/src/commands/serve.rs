//! `toxaudit serve ingest|assessment|reporting`: one service alone in its
//! process, normally with `--nats URL` so that each can run, restart and
//! scale on its own. Without `--nats` it opens the embedded log in the data
//! directory, which only one process can hold: fine for one service, not
//! for three (use `toxaudit up` for that).

use std::{process::ExitCode, sync::Arc};

use anyhow::Context;
use domain::audit::RuleParameters;
use service_kit::Shutdown;

use super::up::{
    SecretPolicy, ServiceOptions, Settings, run_component, service_runtime, stop_on_signal,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Service {
    Ingest,
    Assessment,
    Reporting,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which service to run.
    #[arg(value_enum)]
    service: Service,
    #[command(flatten)]
    options: ServiceOptions,
    /// reporting only: also serve the dashboard, its API, /metrics and
    /// /healthz on this HOST:PORT (or the configuration file's `http_addr`).
    #[arg(long, env = "TOXAUDIT_HTTP_ADDR")]
    http_addr: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = Settings::resolve(
        &args.options,
        args.http_addr.as_deref(),
        SecretPolicy::Require,
    )?;
    // Only reporting has an HTTP side; the address of the flag, the
    // variable or the file, never the default of `up`.
    let http_addr = settings.http_addr_asked.then(|| settings.http_addr.clone());
    if args.service != Service::Reporting && args.http_addr.is_some() {
        eprintln!(
            "toxaudit: --http-addr (or TOXAUDIT_HTTP_ADDR) is ignored: only serve reporting has an HTTP side"
        );
    }
    let runtime = service_runtime()?;
    runtime.block_on(serve(args.service, settings, http_addr))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(
    service: Service,
    settings: Settings,
    http_addr: Option<String>,
) -> anyhow::Result<()> {
    let log = settings.open_log().await?;
    let parameters = RuleParameters::default();
    let (trigger, shutdown) = Shutdown::new();
    let trigger = Arc::new(trigger);
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let signal = stop_on_signal(Arc::clone(&trigger), shutdown.clone());
    match service {
        Service::Ingest => {
            let application = ingest::build(ingest::IngestConfig {
                log,
                secret: Arc::clone(&settings.secret),
                grpc_address: settings.grpc_addr.clone(),
                tls: settings.tls.clone(),
                checkpoint_directory: settings.checkpoint_directory("ingest"),
                rebuild: settings.rebuild,
            })
            .await
            .context("starting ingest")?;
            println!(
                "listening grpc {scheme}://{} (ingest)",
                application.local_addr()
            );
            let ((), outcome) = tokio::join!(
                signal,
                run_component("ingest", trigger, application.run_until_stopped(shutdown))
            );
            outcome
        }
        Service::Assessment => {
            let bus = settings.open_bus().await?;
            let application = assessment::build(assessment::AssessmentConfig {
                log,
                bus,
                secret: Arc::clone(&settings.secret),
                grpc_address: settings.grpc_addr.clone(),
                tls: settings.tls.clone(),
                checkpoint_directory: settings.checkpoint_directory("assessment"),
                rebuild: settings.rebuild,
                parameters,
            })
            .await
            .context("starting assessment")?;
            println!(
                "listening grpc {scheme}://{} (assessment)",
                application.local_addr()
            );
            let ((), outcome) = tokio::join!(
                signal,
                run_component(
                    "assessment",
                    trigger,
                    application.run_until_stopped(shutdown)
                )
            );
            outcome
        }
        Service::Reporting => {
            let application = reporting::service::build(reporting::service::ReportingConfig {
                log: Arc::clone(&log),
                secret: Arc::clone(&settings.secret),
                grpc_address: settings.grpc_addr.clone(),
                tls: settings.tls.clone(),
                checkpoint_directory: settings.checkpoint_directory("reporting"),
                rebuild: settings.rebuild,
                parameters,
            })
            .await
            .context("starting reporting")?;
            println!(
                "listening grpc {scheme}://{} (reporting)",
                application.local_addr()
            );
            let http = match &http_addr {
                Some(address) => {
                    let http = reporting::http::DashboardServer::bind(
                        address,
                        reporting::http::DashboardConfig {
                            live: application.live(),
                            log,
                            secret: Arc::clone(&settings.secret),
                        },
                    )
                    .await?;
                    println!("dashboard {}", http.url());
                    Some(http)
                }
                None => None,
            };
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
            let ((), outcome, http) = tokio::join!(
                signal,
                run_component(
                    "reporting",
                    Arc::clone(&trigger),
                    application.run_until_stopped(shutdown.clone())
                ),
                http_run,
            );
            outcome.and(http)
        }
    }
}
