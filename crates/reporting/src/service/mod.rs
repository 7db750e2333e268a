//! The reporting service: `toxaudit.v1.Reporting`. It follows the event log
//! into the domain's audit [`Cohort`], checkpoints the cohort's snapshot
//! (resuming after it on restart; one folded with other rule parameters is
//! refused and the log refolded from position 1), and serves
//! the report of `spec/rules.md` on demand (`GetReport`) and as a stream
//! pushed after every fold (`WatchReport`).
//!
//! A report is computed once per folded position and shared ([`ReportAt`]):
//! every watcher, `GetReport` and the dashboard read the same `Arc` while the
//! fold has not moved on, so ten watchers cost one report, not ten. A
//! watcher pushes as soon as the fold has applied a change and its previous
//! push has been handed to the stream; what is folded while a report is
//! computed or sent is coalesced into the next one. There is no fixed pace
//! (a 10 ms pace alone cost up to 10 ms of the 20 ms latency budget): the
//! only brake is that a watcher waits [`REPORT_PAUSE_FACTOR`] times as long
//! as the report it just computed took, so during a bulk import, when a
//! report re-assesses thousands of patients, reports take at most a fifth
//! of the time and the fold the rest. While a stream is open, the fold
//! itself computes the report after a small chunk (a live append), so the
//! woken streams find it ready and push without a hop to a blocking thread.
//!
//! [`build`] + [`Application::run_until_stopped`] serve it alone
//! (`toxaudit serve reporting`); [`Reporting`] gives the projection and the
//! tonic service separately for `toxaudit up`.

use std::{
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
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

/// After computing a report that took `t`, a watcher waits `t` times this
/// before computing the next, so reports take at most 1/(1 + this) of the
/// time while the fold is busy. A report after a small append takes tens of
/// microseconds, so the wait is below [`SHORTEST_PAUSE`] and skipped.
pub const REPORT_PAUSE_FACTOR: u32 = 4;

/// The fold computes the report for watchers itself (on an async thread)
/// only when at most this many records were folded since the last report,
/// so it re-assesses a few dozen patients at most (well under a
/// millisecond); after a bulk chunk, or the first report after a restart
/// (every patient re-assessed), watchers compute it on a blocking thread.
const INLINE_REPORT_MAX_RECORDS: usize = 64;

/// Pauses shorter than this are not taken: the timer's resolution is a
/// millisecond, so sleeping would cost more than the pause is worth.
const SHORTEST_PAUSE: Duration = Duration::from_millis(1);

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

/// The report as of one log position, computed once and shared by every
/// reader until the fold moves on.
#[derive(Debug)]
pub struct ReportAt {
    /// The last log position folded into `report`.
    pub position: u64,
    pub report: Arc<AuditReport>,
    /// The `Report` message of scope `all`, encoded by the first reader
    /// that needs it (the JSON is the costly part).
    all_scope_message: OnceLock<Report>,
}

impl ReportAt {
    fn new(position: u64, report: AuditReport) -> Self {
        Self {
            position,
            report: Arc::new(report),
            all_scope_message: OnceLock::new(),
        }
    }

    /// The message for `scope` (already authorised).
    fn message(&self, scope: &ReadScope<'_>) -> Report {
        match restricted(&self.report, scope) {
            None => self
                .all_scope_message
                .get_or_init(|| to_message(self.position, &self.report))
                .clone(),
            Some(own) => to_message(self.position, &own),
        }
    }
}

/// The cohort and the last report computed from it, under one lock so the
/// report's position always names what the cohort had folded.
#[derive(Debug)]
struct Folded {
    cohort: Cohort,
    latest: Option<Arc<ReportAt>>,
    /// Before this instant, watchers wait rather than compute a new report
    /// (see [`REPORT_PAUSE_FACTOR`]).
    next_watch_report: Instant,
    /// Records folded since `latest` was computed.
    folded_since_report: usize,
}

impl Folded {
    /// The shared report when it is as of `position`.
    fn latest_at(&self, position: u64) -> Option<Arc<ReportAt>> {
        self.latest
            .as_ref()
            .filter(|at| at.position == position)
            .map(Arc::clone)
    }

    /// Computes the report as of `position` (what the cohort has folded),
    /// shares it, and sets when watchers may compute the next one.
    fn refresh_report(&mut self, position: u64) -> Arc<ReportAt> {
        let started = Instant::now();
        let report = Arc::new(ReportAt::new(position, self.cohort.report()));
        let finished = Instant::now();
        self.next_watch_report = finished + (finished - started) * REPORT_PAUSE_FACTOR;
        self.folded_since_report = 0;
        self.latest = Some(Arc::clone(&report));
        report
    }
}

/// The audit projection shared by the follower and the RPCs.
#[derive(Debug)]
struct Projection {
    folded: Mutex<Folded>,
    /// The last log position folded in; watchers wait on it. Sent under
    /// the `folded` lock.
    position: watch::Sender<u64>,
    /// Records folded by this process (not restored from a checkpoint).
    folded_here: AtomicU64,
    /// Open `WatchReport` streams: while there is one, the fold computes
    /// the report right after applying a chunk (when due), so the streams
    /// find it ready instead of each waking a blocking thread for it.
    watchers: AtomicUsize,
}

/// What a watcher woken by a fold finds.
enum Ready {
    /// The shared report is as of the last folded position.
    Current(Arc<ReportAt>),
    /// It is not: compute it, but not before this instant.
    DueAt(Instant),
}

impl Projection {
    /// A projection holding `cohort`, folded up to `folded_to`.
    fn new(cohort: Cohort, folded_to: u64) -> Arc<Self> {
        let (position, _) = watch::channel(folded_to);
        Arc::new(Self {
            folded: Mutex::new(Folded {
                cohort,
                latest: None,
                next_watch_report: Instant::now(),
                folded_since_report: 0,
            }),
            position,
            folded_here: AtomicU64::new(0),
            watchers: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Folded> {
        // A panic in a fold leaves at worst a partly applied chunk, which
        // the next report reflects; there is nothing better to serve.
        self.folded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The report as of the last folded position: the shared one when it
    /// is current, else computed now (a blocking call: the first report
    /// after a restart re-assesses every patient).
    fn report(&self) -> Arc<ReportAt> {
        let mut folded = self.lock();
        // Read under the lock, so the position matches the report.
        let position = *self.position.borrow();
        match folded.latest_at(position) {
            Some(latest) => latest,
            None => folded.refresh_report(position),
        }
    }

    /// The shared report when it is current, without blocking; else when a
    /// watcher may compute the next one (now when the fold holds the lock:
    /// the blocking call then waits for it off the async threads).
    fn ready(&self) -> Ready {
        let folded = match self.folded.try_lock() {
            Ok(folded) => folded,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ready::DueAt(Instant::now()),
        };
        match folded.latest_at(*self.position.borrow()) {
            Some(current) => Ready::Current(current),
            None => Ready::DueAt(folded.next_watch_report),
        }
    }

    /// [`Projection::report`] off the async threads, unless the shared
    /// report is current (then no thread hop).
    async fn report_async(self: &Arc<Self>) -> Option<Arc<ReportAt>> {
        if let Ready::Current(current) = self.ready() {
            return Some(current);
        }
        let projection = Arc::clone(self);
        tokio::task::spawn_blocking(move || projection.report())
            .await
            .ok()
    }
}

/// Decodes one record and folds it into `cohort`. Who recorded it is not
/// copied: the audit reads the event and its position only (so the
/// principal's string is not allocated and freed once per record).
fn fold_record(cohort: &mut Cohort, record: &Record) -> Result<(), FollowError> {
    let event =
        proto::convert::decode_event(&record.payload).map_err(|error| FollowError::Fold {
            position: record.position,
            reason: error.to_string(),
        })?;
    cohort.apply(&domain::RecordedEvent {
        position: record.position,
        recorded_at_micros: record.recorded_at_micros,
        recorded_by: Default::default(),
        event,
    });
    Ok(())
}

struct ProjectionFold(Arc<Projection>);

impl AsyncFold for ProjectionFold {
    async fn fold(&mut self, records: &[Record]) -> Result<(), FollowError> {
        let Some(last) = records.last() else {
            return Ok(());
        };
        {
            let mut folded = self.0.lock();
            for (folded_before, record) in records.iter().enumerate() {
                if let Err(error) = fold_record(&mut folded.cohort, record) {
                    self.0
                        .folded_here
                        .fetch_add(folded_before as u64, Ordering::Relaxed);
                    return Err(error);
                }
            }
            self.0
                .folded_here
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            folded.folded_since_report += records.len();
            // Someone watches: the report now, before they wake, saves each
            // push a hop to a blocking thread and back (under load each
            // hop can wait for a time slice). Not while nobody watches, so
            // a rebuild re-assesses each patient once, not once per chunk,
            // and not when it would re-assess many patients on this async
            // thread (see `INLINE_REPORT_MAX_RECORDS`).
            if self.0.watchers.load(Ordering::Relaxed) > 0
                && folded.latest.is_some()
                && folded.folded_since_report <= INLINE_REPORT_MAX_RECORDS
                && Instant::now() >= folded.next_watch_report
            {
                folded.refresh_report(last.position);
            }
            self.0.position.send_replace(last.position);
        }
        Ok(())
    }

    fn snapshotter(&self) -> Snapshotter {
        let projection = Arc::clone(&self.0);
        Box::new(move |saved| {
            let (position, snapshot) = {
                let folded = projection.lock();
                let position = *projection.position.borrow();
                if position <= saved {
                    return Ok(None);
                }
                (position, folded.cohort.snapshot())
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
    /// The report and the last log position folded into it (a blocking
    /// call when the fold has moved since the last report).
    pub fn report(&self) -> (u64, AuditReport) {
        let at = self.projection.report();
        (at.position, AuditReport::clone(&at.report))
    }

    /// The same report, shared with every other reader of this position
    /// (the `WatchReport` streams and the dashboard compute it once).
    pub fn shared_report(&self) -> (u64, Arc<AuditReport>) {
        let at = self.projection.report();
        (at.position, Arc::clone(&at.report))
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
        self.projection.lock().cohort.patient(key)
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
        Ok(Self {
            projection: Projection::new(cohort, checkpoint_position),
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

/// The report restricted to what `scope` asks for: `None` for `all` (the
/// whole report), that centre's scope only for a centre (zero counts when
/// it has no registered patient yet).
fn restricted(report: &AuditReport, scope: &ReadScope<'_>) -> Option<AuditReport> {
    let ReadScope::Centre(centre) = scope else {
        return None;
    };
    let own = report.scopes.get(*centre).copied().unwrap_or_default();
    Some(AuditReport {
        rule_set: report.rule_set.clone(),
        parameters: report.parameters,
        scopes: [((*centre).to_owned(), own)].into_iter().collect(),
    })
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
        let report = self
            .projection
            .report_async()
            .await
            .ok_or_else(|| ServiceError::Internal("computing the report failed".to_owned()))?;
        Ok(Response::new(report.message(&ReadScope::parse(&scope))))
    }

    type WatchReportStream = ReportStream;

    async fn watch_report(
        &self,
        request: Request<GetReportRequest>,
    ) -> Result<Response<Self::WatchReportStream>, Status> {
        let scope = request.get_ref().scope.clone();
        authorised_scope(&request, &scope)?;
        let principal = auth::principal(&request)?;
        let watcher = Watcher::new(Arc::clone(&self.projection), scope);
        // The stream is polled by the task writing the response: a fold
        // wakes it directly, with no task in between to hand reports over.
        // While the previous push is being sent it is not polled, so what is
        // folded meanwhile is coalesced into the next push.
        let pushes = futures::stream::unfold(watcher, |mut watcher| async move {
            let message = watcher.next_push().await?;
            Some((Ok(message), watcher))
        });
        // Authorised once, here: the stream ends when the token expires.
        Ok(Response::new(Box::pin(auth::until_token_expires(
            pushes, &principal,
        ))))
    }
}

/// One `WatchReport` stream: the report at once, then after every fold
/// (coalesced while a push is being sent). A fold that changes no number
/// the scope shows is pushed too, with its newer `as_of_position`: the
/// caller learns its report covers those records (a client waiting for its
/// own append to be reflected would otherwise wait for the next change
/// anywhere, unboundedly). Dropped (and counted out of the watchers) when
/// the caller goes away or the server stops.
struct Watcher {
    projection: Arc<Projection>,
    changes: watch::Receiver<u64>,
    /// The scope asked for, already authorised.
    scope: String,
    /// The position of the last push.
    last_sent: Option<u64>,
}

impl Watcher {
    fn new(projection: Arc<Projection>, scope: String) -> Self {
        projection.watchers.fetch_add(1, Ordering::Relaxed);
        let mut changes = projection.position.subscribe();
        // The first push goes out at once.
        changes.mark_changed();
        Self {
            projection,
            changes,
            scope,
            last_sent: None,
        }
    }

    /// The next report to push: waits for a fold past the last push.
    /// `None` when the position watch or the report task fails.
    async fn next_push(&mut self) -> Option<Report> {
        let scope = ReadScope::parse(&self.scope);
        loop {
            self.changes.changed().await.ok()?;
            // Marked seen before the report is read: a fold from now on
            // wakes the next round, and the report covers at least this.
            self.changes.borrow_and_update();
            let report = match self.projection.ready() {
                Ready::Current(report) => report,
                Ready::DueAt(due) => {
                    // Bounded share of the time: a report that took long
                    // (many patients changed, e.g. a bulk import) is
                    // followed by a pause in proportion.
                    if due.saturating_duration_since(Instant::now()) >= SHORTEST_PAUSE {
                        tokio::time::sleep_until(due.into()).await;
                    }
                    self.projection.report_async().await?
                }
            };
            // Not newer only when the previous push already read past the
            // fold that woke this round.
            if self.last_sent.is_none_or(|sent| sent < report.position) {
                self.last_sent = Some(report.position);
                return Some(report.message(&scope));
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.projection.watchers.fetch_sub(1, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use domain::{ClinicalDate, ndjson};

    use super::*;

    /// A random cohort of `patients` over three centres, as log records.
    fn records(patients: u64) -> Vec<Record> {
        let today = ClinicalDate::from_ymd(2026, 1, 1).unwrap();
        demodata::random_lines(&demodata::RandomSpec {
            patients,
            centres: 3,
            seed: 8,
        })
        .enumerate()
        .map(|(index, line)| {
            let event = ndjson::parse_line(&line, today).unwrap();
            Record {
                position: index as u64 + 1,
                recorded_at_micros: 0,
                key: event.event_id.to_string().into(),
                stream: format!("{}.{}", event.centre, event.patient).into(),
                principal: "test".into(),
                payload: proto::convert::encode_event(&event),
            }
        })
        .collect()
    }

    fn empty_projection() -> Arc<Projection> {
        Projection::new(Cohort::new(RuleParameters::default()), 0)
    }

    /// The report of a cohort that folded `records` and reported only at
    /// the end: the slow path every shared report must equal.
    fn from_scratch(records: &[Record]) -> AuditReport {
        let mut cohort = Cohort::new(RuleParameters::default());
        for record in records {
            fold_record(&mut cohort, record).unwrap();
        }
        cohort.report()
    }

    #[tokio::test]
    async fn a_report_is_computed_once_per_position_and_equals_a_fold_from_scratch() {
        let records = records(40);
        let projection = empty_projection();
        let mut fold = ProjectionFold(Arc::clone(&projection));
        let mut folded_so_far = 0;
        for chunk in records.chunks(37) {
            fold.fold(chunk).await.unwrap();
            folded_so_far += chunk.len();
            let first = projection.report();
            let second = projection.report();
            assert!(Arc::ptr_eq(&first, &second), "recomputed at one position");
            assert_eq!(first.position, folded_so_far as u64);
            assert_eq!(*first.report, from_scratch(&records[..folded_so_far]));
        }
    }

    #[tokio::test]
    async fn with_a_watcher_the_fold_shares_the_report_of_every_small_chunk_it_folds() {
        let records = records(40);
        let (small, bulk) = records.split_at(records.len() - INLINE_REPORT_MAX_RECORDS - 1);
        let projection = empty_projection();
        let mut fold = ProjectionFold(Arc::clone(&projection));
        let _watcher = Watcher::new(Arc::clone(&projection), "all".to_owned());
        // The first report (every patient) is the watcher's to compute.
        projection.report();
        let mut folded_so_far = 0;
        for chunk in small.chunks(INLINE_REPORT_MAX_RECORDS) {
            // Computing a report is never due before the previous one ends.
            projection.lock().next_watch_report = Instant::now();
            fold.fold(chunk).await.unwrap();
            folded_so_far += chunk.len();
            let Ready::Current(shared) = projection.ready() else {
                panic!("the fold did not compute the report for its watcher");
            };
            assert_eq!(shared.position, folded_so_far as u64);
            assert_eq!(*shared.report, from_scratch(&records[..folded_so_far]));
        }
        // A bulk chunk is left to the watcher's blocking thread.
        projection.lock().next_watch_report = Instant::now();
        fold.fold(bulk).await.unwrap();
        assert!(matches!(projection.ready(), Ready::DueAt(_)));
        assert_eq!(*projection.report().report, from_scratch(&records));
    }

    #[tokio::test]
    async fn without_a_watcher_the_fold_computes_no_report() {
        let records = records(5);
        let projection = empty_projection();
        let mut fold = ProjectionFold(Arc::clone(&projection));
        let watcher = Watcher::new(Arc::clone(&projection), "all".to_owned());
        drop(watcher);
        fold.fold(&records).await.unwrap();
        assert!(projection.lock().latest.is_none());
    }

    #[tokio::test]
    async fn a_watcher_pushes_at_once_then_the_newest_report_after_each_fold() {
        let records = records(20);
        let projection = empty_projection();
        let mut fold = ProjectionFold(Arc::clone(&projection));
        let mut watcher = Watcher::new(Arc::clone(&projection), "all".to_owned());
        let first = watcher.next_push().await.unwrap();
        assert_eq!(first.as_of_position, 0);
        // Two folds before the watcher looks: coalesced into one push.
        let (early, late) = records.split_at(records.len() / 2);
        fold.fold(early).await.unwrap();
        fold.fold(late).await.unwrap();
        let pushed = watcher.next_push().await.unwrap();
        assert_eq!(pushed.as_of_position, records.len() as u64);
        let expected = from_scratch(&records);
        assert_eq!(pushed, to_message(records.len() as u64, &expected));
        drop(watcher);
        assert_eq!(projection.watchers.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_centre_sees_only_its_own_numbers_and_zero_before_its_first_patient() {
        let report = from_scratch(&records(30));
        let centre = report
            .scopes
            .keys()
            .find(|name| name.as_str() != "all")
            .unwrap()
            .clone();
        let at = ReportAt::new(7, report.clone());
        let own = at.message(&ReadScope::Centre(&centre));
        assert_eq!(own.scopes.len(), 1);
        assert_eq!(own.scopes[0].scope, centre);
        assert_eq!(own.as_of_position, 7);
        let unknown = at.message(&ReadScope::Centre("nowhere"));
        assert_eq!(unknown.scopes[0].patients, 0);
        assert_eq!(at.message(&ReadScope::All), to_message(7, &report));
    }

    #[tokio::test]
    async fn a_fold_that_changes_no_number_is_pushed_with_its_position() {
        let records = records(10);
        let projection = empty_projection();
        let mut fold = ProjectionFold(Arc::clone(&projection));
        let mut watcher = Watcher::new(Arc::clone(&projection), "all".to_owned());
        fold.fold(&records).await.unwrap();
        let before = watcher.next_push().await.unwrap();
        // The last event again, as a later record: the cohort has it already.
        let mut again = records[records.len() - 1].clone();
        again.position = records.len() as u64 + 1;
        fold.fold(std::slice::from_ref(&again)).await.unwrap();
        let after = watcher.next_push().await.unwrap();
        assert_eq!(after.as_of_position, again.position);
        assert_eq!(after.scopes, before.scopes);
    }

    fn now_seconds() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[tokio::test]
    async fn a_watch_ends_unauthenticated_when_the_callers_token_expires() {
        use futures::StreamExt;
        let service = ReportingService {
            projection: empty_projection(),
        };
        let expires_at = now_seconds() + 1;
        let mut request = Request::new(GetReportRequest {
            scope: "leeds".to_owned(),
        });
        request.extensions_mut().insert(service_kit::Principal {
            subject: "dr-a".into(),
            centre: "leeds".into(),
            role: service_kit::Role::Clinician,
            expires_at,
        });
        let mut pushes = service.watch_report(request).await.unwrap().into_inner();
        let first = pushes.next().await.unwrap().unwrap();
        assert_eq!(first.as_of_position, 0);
        // Nothing is folded any more: the next item is the expiry, and the
        // end (bounded, so a stream that outlives the token fails the test
        // instead of hanging it).
        let next = tokio::time::timeout(std::time::Duration::from_secs(30), pushes.next());
        let status = next.await.unwrap().unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(now_seconds() >= expires_at);
        assert!(pushes.next().await.is_none());
    }
}
