//! The reporting service: `toxaudit.v1.Reporting`. It follows the event log
//! into the domain's audit [`Cohort`], checkpoints the cohort's snapshot
//! (resuming after it on restart; one folded with other rule parameters is
//! refused and the log refolded from position 1), and serves
//! the report of `spec/rules.md` on demand (`GetReport`) and as a stream
//! pushed after every change (`WatchReport`: coalesced, at most
//! [`WATCH_PUSHES_PER_SECOND`] per second per watcher).
//!
//! [`build`] + [`Application::run_until_stopped`] serve it alone
//! (`toxaudit serve reporting`); [`Reporting`] gives the projection and the
//! tonic service separately for `toxaudit up`.

use std::{
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use domain::audit::{AuditReport, Cohort, CohortSnapshot, RuleParameters, ScopeReport, Standard};
use eventlog::{EventLog, Record};
use futures::Stream;
use proto::v1::{
    GetReportRequest, Report, ScopeCounts, StandardCount,
    reporting_server::{Reporting as ReportingRpc, ReportingServer},
};
use service_kit::{
    AuthInterceptor, GrpcServer, JwtSecret, ReadScope, ServiceError, Shutdown, TlsFiles, auth,
    checkpoint::encode,
    follow::{AsyncFold, Checkpointer, FollowError, Snapshotter, follow_log},
    server::ServerError,
};
use tokio::sync::watch;
use tonic::{
    Request, Response, Status,
    service::{Routes, interceptor::InterceptedService},
};

/// The gRPC service name, for health checks.
pub const SERVICE_NAME: &str = "toxaudit.v1.Reporting";

/// The most reports one `WatchReport` stream receives per second: changes in
/// between are coalesced into the next push. A push is cheap (the cohort
/// re-assesses only the patients changed since the last report, and the
/// message holds counts, not patients), so the pace is set by latency: a
/// change waits at most one pace (10 ms) for its push, which keeps
/// append-to-visible well under the 20 ms the audit dashboard promises.
pub const WATCH_PUSHES_PER_SECOND: u32 = 100;

/// Errors of starting or running the reporting service.
#[derive(Debug, thiserror::Error)]
pub enum ReportingError {
    #[error("reporting projection: {0}")]
    Follow(#[from] FollowError),
    #[error("reporting server: {0}")]
    Server(#[from] ServerError),
}

/// Everything reporting needs to run on its own.
#[derive(Debug, Clone)]
pub struct ReportingConfig {
    pub log: Arc<dyn EventLog>,
    pub secret: Arc<JwtSecret>,
    /// `HOST:PORT`; port 0 picks a free one.
    pub grpc_address: String,
    pub tls: Option<TlsFiles>,
    /// Where the projection's checkpoint lives.
    pub checkpoint_directory: PathBuf,
    /// Throw the checkpoint away and refold the log from position 1.
    pub rebuild: bool,
    pub parameters: RuleParameters,
}

/// The audit projection shared by the follower and the RPCs.
#[derive(Debug)]
struct Projection {
    cohort: Mutex<Cohort>,
    /// The last log position folded in; watchers wait on it.
    position: watch::Sender<u64>,
    /// Records folded by this process (not restored from a checkpoint).
    folded_here: AtomicU64,
}

impl Projection {
    fn report(&self) -> (u64, AuditReport) {
        let mut cohort = self.cohort.lock().unwrap_or_else(PoisonError::into_inner);
        // Read under the lock, so the position matches the report.
        let position = *self.position.borrow();
        (position, cohort.report())
    }
}

fn fold_record(cohort: &mut Cohort, record: &Record) -> Result<(), FollowError> {
    let recorded = proto::convert::recorded_from_parts(
        record.position,
        record.recorded_at_micros,
        &record.principal,
        &record.payload,
    )
    .map_err(|error| FollowError::Fold {
        position: record.position,
        reason: error.to_string(),
    })?;
    cohort.apply(&recorded);
    Ok(())
}

struct ProjectionFold(Arc<Projection>);

impl AsyncFold for ProjectionFold {
    async fn fold(&mut self, records: &[Record]) -> Result<(), FollowError> {
        let Some(last) = records.last() else {
            return Ok(());
        };
        {
            let mut cohort = self.0.cohort.lock().unwrap_or_else(PoisonError::into_inner);
            for record in records {
                fold_record(&mut cohort, record)?;
                self.0.folded_here.fetch_add(1, Ordering::Relaxed);
            }
            self.0.position.send_replace(last.position);
        }
        Ok(())
    }

    fn snapshotter(&self) -> Snapshotter {
        let projection = Arc::clone(&self.0);
        Box::new(move |saved| {
            let (position, snapshot) = {
                let cohort = projection
                    .cohort
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let position = *projection.position.borrow();
                if position <= saved {
                    return Ok(None);
                }
                (position, cohort.snapshot())
            };
            Ok(Some((position, encode(&snapshot)?)))
        })
    }
}

/// A read-only handle on the live projection, for the dashboard
/// ([`crate::http`]): the report, the log position it reflects, and one
/// patient's assessment, always from the same fold the RPCs read.
#[derive(Debug, Clone)]
pub struct LiveReport {
    projection: Arc<Projection>,
}

impl LiveReport {
    /// The report and the last log position folded into it.
    pub fn report(&self) -> (u64, AuditReport) {
        self.projection.report()
    }

    /// How many records this process folded itself (a restart from a
    /// checkpoint folds only those after it).
    pub fn records_folded_here(&self) -> u64 {
        self.projection.folded_here.load(Ordering::Relaxed)
    }

    /// The last log position folded in; it changes after every fold.
    pub fn positions(&self) -> watch::Receiver<u64> {
        self.projection.position.subscribe()
    }

    /// One patient's assessment as folded so far.
    pub fn patient(&self, key: &domain::PatientKey) -> Option<domain::audit::PatientAssessment> {
        let cohort = self
            .projection
            .cohort
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        cohort.patient(key)
    }
}

/// The reporting projection and its service, ready to be served.
#[derive(Debug)]
pub struct Reporting {
    projection: Arc<Projection>,
    checkpointer: Checkpointer,
    log: Arc<dyn EventLog>,
}

impl Reporting {
    /// Loads the checkpoint (or starts empty): the log is followed from the
    /// position after it by [`Reporting::run_until_stopped`].
    pub async fn prepare(
        log: Arc<dyn EventLog>,
        checkpoint_directory: &Path,
        rebuild: bool,
        parameters: RuleParameters,
    ) -> Result<Self, ReportingError> {
        let (checkpointer, restored) = Checkpointer::open(
            checkpoint_directory,
            "reporting",
            rebuild,
            move |snapshot: CohortSnapshot| {
                Cohort::from_snapshot(snapshot, &parameters).map_err(|error| error.to_string())
            },
        )
        .await?;
        let (checkpoint_position, cohort) =
            restored.unwrap_or_else(|| (0, Cohort::new(parameters)));
        let (position, _) = watch::channel(checkpoint_position);
        Ok(Self {
            projection: Arc::new(Projection {
                cohort: Mutex::new(cohort),
                position,
                folded_here: AtomicU64::new(0),
            }),
            checkpointer,
            log,
        })
    }

    /// The live projection, for the dashboard.
    pub fn live(&self) -> LiveReport {
        LiveReport {
            projection: Arc::clone(&self.projection),
        }
    }

    /// The tonic service, behind the bearer-token check.
    pub fn grpc_service(
        &self,
        secret: Arc<JwtSecret>,
    ) -> InterceptedService<ReportingServer<ReportingService>, AuthInterceptor> {
        InterceptedService::new(
            ReportingServer::new(ReportingService {
                projection: Arc::clone(&self.projection),
            })
            .max_encoding_message_size(64 << 20),
            AuthInterceptor::new(secret),
        )
    }

    /// Follows the log into the projection until `shutdown`.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> Result<(), ReportingError> {
        let from_position = *self.projection.position.borrow() + 1;
        follow_log(
            self.log,
            self.checkpointer,
            from_position,
            shutdown,
            ProjectionFold(self.projection),
        )
        .await?;
        Ok(())
    }
}

/// The `toxaudit.v1.Reporting` implementation.
#[derive(Debug, Clone)]
pub struct ReportingService {
    projection: Arc<Projection>,
}

/// The report restricted to what `scope` asks for: everything for `all`,
/// that centre's scope only for a centre (zero counts when it has no
/// registered patient yet).
fn restrict(mut report: AuditReport, scope: &ReadScope<'_>) -> AuditReport {
    if let ReadScope::Centre(centre) = scope {
        let own = report.scopes.remove(*centre).unwrap_or_default();
        report.scopes.clear();
        report.scopes.insert((*centre).to_owned(), own);
    }
    report
}

fn scope_counts(name: &str, scope: &ScopeReport) -> ScopeCounts {
    ScopeCounts {
        scope: name.to_owned(),
        patients: scope.patients,
        injections: scope.injections,
        snr: scope.snr.n,
        standards: Standard::ALL
            .iter()
            .map(|standard| {
                let result = scope.standards.get(*standard);
                StandardCount {
                    id: standard.id().to_owned(),
                    numerator: result.numerator,
                    denominator: result.denominator,
                }
            })
            .collect(),
    }
}

fn to_message(position: u64, report: &AuditReport) -> Report {
    Report {
        rule_set: report.rule_set.clone(),
        as_of_position: position,
        json: report.to_json(),
        scopes: report
            .scopes_in_order()
            .into_iter()
            .map(|(name, scope)| scope_counts(name, scope))
            .collect(),
    }
}

fn authorised_scope<T>(request: &Request<T>, scope: &str) -> Result<(), Status> {
    let principal = auth::principal(request)?;
    principal.authorise_read(&ReadScope::parse(scope))?;
    if let ReadScope::Centre(centre) = ReadScope::parse(scope) {
        domain::Centre::parse(centre)
            .map_err(|reason| ServiceError::invalid(format!("scope: {reason}")))?;
    }
    Ok(())
}

type ReportStream = Pin<Box<dyn Stream<Item = Result<Report, Status>> + Send>>;

#[tonic::async_trait]
impl ReportingRpc for ReportingService {
    async fn get_report(
        &self,
        request: Request<GetReportRequest>,
    ) -> Result<Response<Report>, Status> {
        let scope = request.get_ref().scope.clone();
        authorised_scope(&request, &scope)?;
        let projection = Arc::clone(&self.projection);
        let (position, report) = tokio::task::spawn_blocking(move || projection.report())
            .await
            .map_err(|error| ServiceError::Internal(error.to_string()))?;
        let report = restrict(report, &ReadScope::parse(&scope));
        Ok(Response::new(to_message(position, &report)))
    }

    type WatchReportStream = ReportStream;

    async fn watch_report(
        &self,
        request: Request<GetReportRequest>,
    ) -> Result<Response<Self::WatchReportStream>, Status> {
        let scope = request.get_ref().scope.clone();
        authorised_scope(&request, &scope)?;
        let projection = Arc::clone(&self.projection);
        let mut changes = projection.position.subscribe();
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        let pace = Duration::from_millis(1000 / u64::from(WATCH_PUSHES_PER_SECOND));
        // The task ends when the caller goes away (the send fails) or the
        // projection is dropped (the watch closes).
        tokio::spawn(async move {
            let mut last_sent = None;
            loop {
                changes.borrow_and_update();
                let for_report = Arc::clone(&projection);
                let Ok((position, report)) =
                    tokio::task::spawn_blocking(move || for_report.report()).await
                else {
                    return;
                };
                let report = restrict(report, &ReadScope::parse(&scope));
                if last_sent.as_ref() != Some(&report) {
                    if sender
                        .send(Ok(to_message(position, &report)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    last_sent = Some(report);
                }
                // Bounded rate: whatever changes during the pause is folded
                // into one report after it. A caller that goes away ends the
                // task at once, not at the next change.
                tokio::select! {
                    () = sender.closed() => return,
                    () = tokio::time::sleep(pace) => {}
                }
                tokio::select! {
                    () = sender.closed() => return,
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}

/// Reporting serving alone on its own port.
#[derive(Debug)]
pub struct Application {
    server: GrpcServer,
    reporting: Reporting,
}

/// Loads the checkpoint and binds the port.
pub async fn build(config: ReportingConfig) -> Result<Application, ReportingError> {
    let reporting = Reporting::prepare(
        config.log,
        &config.checkpoint_directory,
        config.rebuild,
        config.parameters,
    )
    .await?;
    let routes = Routes::new(reporting.grpc_service(config.secret));
    let server = GrpcServer::bind(
        &config.grpc_address,
        config.tls.as_ref(),
        routes,
        &[SERVICE_NAME],
    )
    .await?;
    Ok(Application { server, reporting })
}

impl Application {
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// The live projection, for the dashboard.
    pub fn live(&self) -> LiveReport {
        self.reporting.live()
    }

    /// Serves and follows the log until `shutdown`.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> Result<(), ReportingError> {
        let (served, followed) = tokio::join!(
            self.server.run_until_stopped(shutdown.clone().wait()),
            self.reporting.run_until_stopped(shutdown),
        );
        served?;
        followed
    }
}
