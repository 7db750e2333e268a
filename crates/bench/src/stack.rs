//! The services under measurement, in this process as `toxaudit up` runs
//! them: the real ingest (and, for latency, assessment and reporting) on one
//! tonic server bound to `127.0.0.1:0`, behind the real bearer-token check,
//! reached through the real client with a signed token.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use domain::audit::RuleParameters;
use eventlog::{EmbeddedLog, EmbeddedOptions, EventLog};
use reporting::service::LiveReport;
use service_kit::{
    DerivedBus, GrpcServer, JwtSecret, Role, ServiceClient, Shutdown, ShutdownTrigger,
};
use tokio::task::JoinSet;
use tonic::service::Routes;

/// The secret the harness signs its tokens with.
const SECRET: &[u8] = b"the benchmark harness secret, long enough";

/// Opens (creating) an embedded log in `directory` off the async threads.
pub async fn open_embedded(directory: &Path) -> anyhow::Result<EmbeddedLog> {
    let owned = directory.to_owned();
    tokio::task::spawn_blocking(move || EmbeddedLog::open(&owned, EmbeddedOptions::default()))
        .await
        .context("opening the embedded log")?
        .with_context(|| format!("opening the embedded log in {}", directory.display()))
}

/// Running services; [`Stack::stop`] shuts them down and waits for them.
#[derive(Debug)]
pub struct Stack {
    pub url: String,
    /// The reporting projection, when reporting runs.
    pub live: Option<LiveReport>,
    secret: Arc<JwtSecret>,
    trigger: ShutdownTrigger,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl Stack {
    /// Ingest alone over `log`, checkpointing under `directory`.
    pub async fn ingest_only(log: Arc<dyn EventLog>, directory: &Path) -> anyhow::Result<Stack> {
        Stack::start(log, directory, None).await
    }

    /// Ingest, assessment (publishing on `bus`) and reporting over `log`,
    /// as `toxaudit up` wires them.
    pub async fn all_services(
        log: Arc<dyn EventLog>,
        bus: DerivedBus,
        directory: &Path,
    ) -> anyhow::Result<Stack> {
        Stack::start(log, directory, Some(bus)).await
    }

    async fn start(
        log: Arc<dyn EventLog>,
        directory: &Path,
        bus: Option<DerivedBus>,
    ) -> anyhow::Result<Stack> {
        let secret = Arc::new(JwtSecret::from_bytes(SECRET).context("the harness secret")?);
        let parameters = RuleParameters::default();
        let ingest = ingest::Ingest::prepare(Arc::clone(&log), &directory.join("ingest"), true)
            .await
            .context("preparing ingest")?;
        let mut routes = Routes::new(ingest.grpc_service(Arc::clone(&secret)));
        let mut names = vec![ingest::SERVICE_NAME];
        let (trigger, shutdown) = Shutdown::new();
        let mut tasks = JoinSet::new();
        let mut live = None;
        if let Some(bus) = bus {
            let assessment = assessment::Assessment::prepare(
                Arc::clone(&log),
                bus,
                &directory.join("assessment"),
                true,
                parameters,
            )
            .await
            .context("preparing assessment")?;
            let reporting = reporting::service::Reporting::prepare(
                Arc::clone(&log),
                &directory.join("reporting"),
                true,
                parameters,
            )
            .await
            .context("preparing reporting")?;
            routes = routes
                .add_service(assessment.grpc_service(Arc::clone(&secret)))
                .add_service(reporting.grpc_service(Arc::clone(&secret)));
            names.extend([assessment::SERVICE_NAME, reporting::service::SERVICE_NAME]);
            live = Some(reporting.live());
            let stop = shutdown.clone();
            tasks.spawn(async move {
                assessment
                    .run_until_stopped(stop)
                    .await
                    .context("assessment failed")
            });
            let stop = shutdown.clone();
            tasks.spawn(async move {
                reporting
                    .run_until_stopped(stop)
                    .await
                    .context("reporting failed")
            });
        }
        let server = GrpcServer::bind("127.0.0.1:0", None, routes, &names)
            .await
            .context("binding the grpc server")?;
        let url = format!("http://{}", server.local_addr());
        let stop = shutdown.clone();
        tasks.spawn(async move {
            server
                .run_until_stopped(stop.wait())
                .await
                .context("grpc server failed")
        });
        tasks.spawn(async move {
            ingest
                .run_until_stopped(shutdown)
                .await
                .context("ingest failed")
        });
        Ok(Stack {
            url,
            live,
            secret,
            trigger,
            tasks,
        })
    }

    /// A client holding an admin token (writes every centre, reads `all`).
    pub async fn admin_client(&self) -> anyhow::Result<ServiceClient> {
        let token = self
            .secret
            .issue("bench", "all", Role::Admin, Duration::from_secs(24 * 3600))
            .context("signing the harness token")?;
        ServiceClient::connect(&self.url, &token, None)
            .await
            .context("connecting the harness client")
    }

    /// Stops every service and waits for each (they commit their checkpoints).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.trigger.trigger();
        while let Some(outcome) = self.tasks.join_next().await {
            outcome.context("a service task panicked")??;
        }
        Ok(())
    }
}
