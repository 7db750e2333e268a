//! toxaudit's ingest service: `toxaudit.v1.Ingest`, the one way events get
//! into the log over the network. It runs the same validation and admission
//! as `toxaudit import` (the domain's), appends accepted batches atomically,
//! and checkpoints a snapshot of its admission state in its data directory.
//!
//! The library exposes the service two ways: [`build`] +
//! [`Application::run_until_stopped`] for a process serving ingest alone
//! (`toxaudit serve ingest`), and [`Ingest`] (a projection + a tonic service)
//! for `toxaudit up`, which serves all three services on one port.

#![forbid(unsafe_code)]

mod service;
mod state;

use std::{path::PathBuf, sync::Arc, time::Duration};

use eventlog::EventLog;
use proto::v1::ingest_server::IngestServer;
use service_kit::{
    AuthInterceptor, GrpcServer, JwtSecret, Shutdown, TlsFiles,
    follow::{CHECKPOINT_INTERVAL, Checkpointer, FollowError, SavePacing},
    server::ServerError,
};
use tonic::service::{Routes, interceptor::InterceptedService};

pub use service::{IngestService, MOST_BYTES_PER_IMPORT, MOST_EVENTS_PER_IMPORT};

/// The gRPC service name, for health checks.
pub const SERVICE_NAME: &str = "toxaudit.v1.Ingest";

/// Largest request accepted: a bulk batch of some ten thousand events.
const MAXIMUM_MESSAGE_BYTES: usize = 64 << 20;

/// Errors of starting or running the ingest service.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("ingest checkpoint: {0}")]
    Checkpoint(#[from] FollowError),
    #[error("ingest server: {0}")]
    Server(#[from] ServerError),
}

/// Everything ingest needs to run on its own.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub log: Arc<dyn EventLog>,
    pub secret: Arc<JwtSecret>,
    /// `HOST:PORT`; port 0 picks a free one (see [`Application::local_addr`]).
    pub grpc_address: String,
    pub tls: Option<TlsFiles>,
    /// Where the checkpoint of the admission state lives.
    pub checkpoint_directory: PathBuf,
    /// Throw the checkpoint away and refold the log from position 1.
    pub rebuild: bool,
}

/// A read-only look at the admission state's progress, for tests and
/// metrics.
#[derive(Debug, Clone)]
pub struct Progress {
    state: Arc<state::AdmissionState>,
}

impl Progress {
    /// How many log records this process folded into its admission state
    /// (a restart from a checkpoint folds only those after it; a batch it
    /// appended itself is admitted, not folded back).
    pub async fn records_folded_here(&self) -> u64 {
        self.state.records_folded_here().await
    }
}

/// The ingest projection and its service, ready to be served.
#[derive(Debug)]
pub struct Ingest {
    service: IngestService,
    state: Arc<state::AdmissionState>,
    checkpointer: Checkpointer,
}

impl Ingest {
    /// Restores the checkpoint's snapshot (or starts empty). The log after
    /// it is read up to its head on the first append.
    pub async fn prepare(
        log: Arc<dyn EventLog>,
        checkpoint_directory: &std::path::Path,
        rebuild: bool,
    ) -> Result<Self, IngestError> {
        let (checkpointer, restored) = Checkpointer::open(
            checkpoint_directory,
            "ingest",
            rebuild,
            |snapshot: state::AdmittedSnapshot| state::Admitted::restore(snapshot, 0),
        )
        .await?;
        let admitted = match restored {
            Some((position, mut admitted)) => {
                admitted.position = position;
                admitted
            }
            None => state::Admitted::default(),
        };
        let state = Arc::new(state::AdmissionState::new(
            log,
            checkpointer.clone(),
            admitted,
        ));
        Ok(Self {
            service: IngestService::new(Arc::clone(&state)),
            state,
            checkpointer,
        })
    }

    /// The admission state's progress, readable while it serves.
    pub fn progress(&self) -> Progress {
        Progress {
            state: Arc::clone(&self.state),
        }
    }

    /// The tonic service, behind the bearer-token check.
    pub fn grpc_service(
        &self,
        secret: Arc<JwtSecret>,
    ) -> InterceptedService<IngestServer<IngestService>, AuthInterceptor> {
        InterceptedService::new(
            IngestServer::new(self.service.clone())
                .max_decoding_message_size(MAXIMUM_MESSAGE_BYTES)
                .max_encoding_message_size(MAXIMUM_MESSAGE_BYTES),
            AuthInterceptor::new(secret),
        )
    }

    /// Saves the checkpoint's snapshot as paced by [`SavePacing`] until
    /// `shutdown`, then once more.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> Result<(), IngestError> {
        let mut timer = tokio::time::interval(CHECKPOINT_INTERVAL.max(Duration::from_millis(1)));
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pacing = SavePacing::new();
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = timer.tick() => {
                    if pacing.due() {
                        pacing.save(&self.checkpointer, self.state.snapshotter()).await?;
                    }
                }
            }
        }
        self.checkpointer.save(self.state.snapshotter()).await?;
        Ok(())
    }
}

/// Ingest serving alone on its own port.
#[derive(Debug)]
pub struct Application {
    server: GrpcServer,
    ingest: Ingest,
}

/// Prepares the projection and binds the port.
pub async fn build(config: IngestConfig) -> Result<Application, IngestError> {
    let ingest = Ingest::prepare(config.log, &config.checkpoint_directory, config.rebuild).await?;
    let routes = Routes::new(ingest.grpc_service(config.secret));
    let server = GrpcServer::bind(
        &config.grpc_address,
        config.tls.as_ref(),
        routes,
        &[SERVICE_NAME],
    )
    .await?;
    Ok(Application { server, ingest })
}

impl Application {
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// The admission state's progress, readable while it serves.
    pub fn progress(&self) -> Progress {
        self.ingest.progress()
    }

    /// Serves until `shutdown`, then saves the checkpoint.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> Result<(), IngestError> {
        let (served, checkpointed) = tokio::join!(
            self.server.run_until_stopped(shutdown.clone().wait()),
            self.ingest.run_until_stopped(shutdown),
        );
        served?;
        checkpointed
    }
}
