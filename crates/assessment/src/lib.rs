//! toxaudit's assessment service. It follows the event log into the domain's
//! audit [`Cohort`], keeps each patient's BNN assessment, and publishes a
//! derived `patient_assessed` event (`toxaudit.v1.PatientAssessed`) on the
//! [`DerivedBus`] whenever a patient's assessment changes. It serves
//! `toxaudit.v1.Assessment` (`GetPatient`, `ListFindings`).
//!
//! What is published, and with which id: after each log event the fold
//! tells whether that event changed its patient's assessment
//! ([`domain::audit::apply_and_compare`]: from the compact log for
//! registrations, injections and ratings, by comparing the assessment before
//! and after only for voids, tests, referrals and discontinuations). The
//! assessment "after the event at position p that changed it" is a pure
//! function of the log, and `p` is its derived event's id (patient + p), so
//! an id never depends on how the log was chunked when read.
//!
//! The fold keeps, per patient whose assessment changed, the position of
//! their last change (the *pending* changes), and publishes them, each
//! patient's assessment as it is now with that position as id, as soon as
//! it is at the head of the log: live, after each chunk of a record or a
//! few, so every change is published. Catching up from far behind (a
//! restart, a `--rebuild`: chunks of a full read, the head further on), the
//! changes wait up to a second (and for at most 1024 patients), so that a
//! patient whose events span many chunks is assessed and serialised once
//! rather than once a chunk, and a patient's intermediate assessments are
//! not published, only their latest.
//! Whatever the chunking and timing, every derived event published is the
//! one a record-by-record fold publishes for the same id (same id, same
//! message), and each patient's latest assessment is always published.
//! (Publishing every intermediate state of a catch-up would mean serialising
//! the patient's whole assessment after nearly every event, O(events²) JSON
//! per patient: a 10M-event rebuild would take hours.)
//!
//! Checkpoint: a snapshot of the cohort and of the pending changes, taken
//! between two chunks of records, so every change at or before its position
//! was published or is in it. A restart (even after `kill -9`) restores it,
//! publishes its pending changes, and follows the log after its position:
//! it republishes, at most, events with ids the bus has already seen (the
//! same message under the same id), which JetStream drops as duplicates,
//! and always the latest assessment of every patient whose assessment
//! changed after the last publication. It never publishes a patient's
//! assessment older than the one the bus already holds: a process killed
//! after publishing a window's events but before checkpointing them would
//! otherwise fold them again in other windows, publish an intermediate
//! state (an id not stored yet) and then the latest (a duplicate, dropped),
//! leaving the stale state last on the bus. So on start it learns each
//! patient's last stored source position from the bus, and publishes a
//! change only after it; the learned positions are dropped once the fold
//! passes them all. (Like the ids, which do not name the rule parameters,
//! this assumes the stored events were folded with the same parameters.)
//! A snapshot folded with other rule
//! parameters, or of the first version (projection `assessment`, which kept
//! published fingerprints), is refused and the log refolded from 1.

#![forbid(unsafe_code)]

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use domain::{
    Centre, PatientKey, Pseudonym,
    audit::{
        AssessmentChange, Cohort, CohortSnapshot, PatientAssessment, PatientNumber, PatientSummary,
        RuleParameters, SnrView, StandardFinding, apply_and_compare_numbered,
    },
};
use eventlog::{EventLog, Record};
use hashbrown::HashMap;
use proto::v1::{
    Finding, GetPatientRequest, ListFindingsRequest, ListFindingsResponse, PatientAssessed,
    assessment_server::{Assessment as AssessmentRpc, AssessmentServer},
};
use service_kit::{
    AuthInterceptor, DerivedBus, GrpcServer, JwtSecret, ReadScope, ServiceError, Shutdown,
    TlsFiles, auth,
    checkpoint::encode,
    follow::{AsyncFold, Checkpointer, FollowError, Snapshotter, follow_log},
    server::ServerError,
};
use tonic::{
    Request, Response, Status,
    service::{Routes, interceptor::InterceptedService},
};

/// The gRPC service name, for health checks.
pub const SERVICE_NAME: &str = "toxaudit.v1.Assessment";

/// Errors of starting or running the assessment service.
#[derive(Debug, thiserror::Error)]
pub enum AssessmentError {
    #[error("assessment projection: {0}")]
    Follow(#[from] FollowError),
    #[error("assessment server: {0}")]
    Server(#[from] ServerError),
    #[error("assessment bus: {0}")]
    Bus(#[from] service_kit::bus::BusError),
}

/// Everything assessment needs to run on its own.
#[derive(Debug, Clone)]
pub struct AssessmentConfig {
    pub log: Arc<dyn EventLog>,
    pub bus: DerivedBus,
    pub secret: Arc<JwtSecret>,
    /// `HOST:PORT`; port 0 picks a free one.
    pub grpc_address: String,
    pub tls: Option<TlsFiles>,
    pub checkpoint_directory: PathBuf,
    /// Throw the checkpoint away and refold the log from position 1.
    pub rebuild: bool,
    pub parameters: RuleParameters,
}

/// The derived event of one patient's assessment after the log event at
/// `source_position`: the summary (classification, findings, rule set,
/// injections) that the bus carries and `ListFindings` lists, with
/// `detail_json` empty. [`patient_assessed_in_detail`] adds the detail.
///
/// The whole assessment as JSON is ~17 KB for a long history; serialising it
/// into every derived event cost assessment ~30% of its rebuild (180 MB of
/// JSON per 10k patients) for a field no consumer of the bus read, and made
/// every change a 17 KB message on JetStream (ADR 0011).
pub fn patient_assessed(assessment: &PatientAssessment, source_position: u64) -> PatientAssessed {
    derived_event(
        &DerivedParts {
            centre: &assessment.centre,
            patient: &assessment.patient,
            rule_set: &assessment.rule_set,
            cycles: assessment.cycles.len(),
            snr: assessment.snr.as_ref(),
            standards: &assessment.standards,
        },
        source_position,
    )
}

/// [`patient_assessed`] of the cohort's summary of the patient, which
/// counts the cycles instead of building them (what a derived event needs;
/// building them was ~6% of assessment's rebuild).
fn summary_assessed(summary: &PatientSummary, source_position: u64) -> PatientAssessed {
    derived_event(
        &DerivedParts {
            centre: &summary.centre,
            patient: &summary.patient,
            rule_set: &summary.rule_set,
            cycles: summary.cycles,
            snr: summary.snr.as_ref(),
            standards: &summary.standards,
        },
        source_position,
    )
}

/// What a derived event is made of, borrowed from an assessment or a summary.
struct DerivedParts<'a> {
    centre: &'a Centre,
    patient: &'a Pseudonym,
    rule_set: &'a str,
    cycles: usize,
    snr: Option<&'a SnrView>,
    standards: &'a [StandardFinding],
}

fn derived_event(assessment: &DerivedParts<'_>, source_position: u64) -> PatientAssessed {
    let mut findings: Vec<Finding> = assessment
        .standards
        .iter()
        .map(|finding| Finding {
            name: finding.standard.id().to_owned(),
            denominator: u32::try_from(finding.denominator).unwrap_or(u32::MAX),
            numerator: u32::try_from(finding.numerator).unwrap_or(u32::MAX),
            reason: finding.reason.clone(),
        })
        .collect();
    if let Some(snr) = assessment.snr {
        let outcomes = [
            (
                "regained_with_adjustment",
                snr.regained() && snr.regained_with_adjustment,
            ),
            (
                "regained_without_adjustment",
                snr.regained() && !snr.regained_with_adjustment,
            ),
            ("not_regained", !snr.regained()),
            ("switched_to_bont_b", snr.switched_to_bont_b_on.is_some()),
            ("referred_dbs", snr.referred_dbs_on.is_some()),
            (
                "assessed_for_resistance",
                snr.assessed_for_resistance_on.is_some(),
            ),
            (
                "resistance_confirmed",
                snr.resistance_confirmed_on.is_some(),
            ),
        ];
        findings.extend(
            outcomes
                .into_iter()
                .filter(|(_, holds)| *holds)
                .map(|(name, _)| Finding {
                    name: name.to_owned(),
                    denominator: 1,
                    numerator: 1,
                    reason: String::new(),
                }),
        );
    }
    PatientAssessed {
        centre: assessment.centre.to_string(),
        patient: assessment.patient.to_string(),
        source_position,
        rule_set: assessment.rule_set.to_owned(),
        classification: assessment
            .snr
            .map_or("not_snr", |snr| snr.group.as_str())
            .to_owned(),
        findings,
        injections: u32::try_from(assessment.cycles).unwrap_or(u32::MAX),
        detail_json: String::new(),
    }
}

/// `GetPatient`'s answer: the derived event's summary and, in `detail_json`,
/// the domain's whole per-patient assessment (cycles, SNR pathway dates,
/// standards with reasons).
pub fn patient_assessed_in_detail(
    assessment: &PatientAssessment,
    source_position: u64,
) -> PatientAssessed {
    PatientAssessed {
        detail_json: detail_json(assessment),
        ..patient_assessed(assessment, source_position)
    }
}

/// The assessment as JSON (`serde_json::to_string`'s text), written into a
/// buffer sized for it up front rather than grown by doubling from 128
/// bytes (a long history's is ~17 KB), then trimmed to its length.
fn detail_json(assessment: &PatientAssessment) -> String {
    const BYTES_PER_CYCLE: usize = 512;
    const BYTES_BESIDE_CYCLES: usize = 4096;
    let mut bytes = Vec::with_capacity(
        BYTES_BESIDE_CYCLES + assessment.cycles.len().saturating_mul(BYTES_PER_CYCLE),
    );
    // Serialising plain structs into memory cannot fail, and serde_json
    // writes UTF-8; an empty string would only lose the optional detail.
    if serde_json::to_writer(&mut bytes, assessment).is_err() {
        return String::new();
    }
    bytes.shrink_to_fit();
    String::from_utf8(bytes).unwrap_or_default()
}

/// The checkpoint's projection name; "-2" since the snapshot holds pending
/// changes instead of published fingerprints (an older checkpoint is
/// refused, and the log refolded).
const CHECKPOINT_NAME: &str = "assessment-2";

/// A chunk at least this long was read in bulk: the follower is behind the
/// head, and may keep changes pending to publish each patient's latest one
/// once (the embedded log's tail reads 1024 records at a time).
const BULK_CHUNK_RECORDS: usize = 512;

/// Changes are never kept pending longer than this while catching up.
const MAX_PENDING: Duration = Duration::from_secs(1);

/// Nor for more patients than this: their derived events are published in
/// one burst, which a lagging bus subscriber holds in memory.
const MAX_PENDING_PATIENTS: usize = 1024;

/// The projection: the cohort, how far it has folded, and the changes not
/// published yet. Nothing else is kept per patient: whether an event changes
/// an assessment is told from the cohort's log, not from what was last
/// published.
#[derive(Debug)]
struct Projection {
    cohort: Cohort,
    position: u64,
    /// Records folded by this process (not restored from a checkpoint).
    folded_here: u64,
    /// Patient → position of their last change not yet published.
    pending: PendingChanges,
    /// When the oldest pending change was folded.
    pending_since: Option<Instant>,
    /// Patient → source position of their last derived event the bus held
    /// when this process started: a change at or before it is not
    /// published (that event, or a later one of the patient, is stored).
    /// Emptied once the fold is past `stored_up_to`, the largest of them.
    stored: HashMap<PatientKey, u64>,
    stored_up_to: u64,
}

/// The changes not published yet: per patient (by the cohort's number),
/// the position of their last change. Kept by number in a plain vector, as
/// the cohort hands the number out with each event it folds: keying a map
/// by the patient's names hashed them a second time per event (a fifth of
/// the fold's instructions outside `Cohort::apply`).
#[derive(Debug, Default)]
struct PendingChanges {
    /// By patient number: the position of their last pending change.
    position: Vec<Option<u64>>,
    /// The patients with a pending change, each once.
    patients: Vec<PatientNumber>,
}

impl PendingChanges {
    /// Notes a change of `patient` at `position` (after any earlier one).
    fn note(&mut self, patient: PatientNumber, position: u64) {
        let index = patient.index();
        if index >= self.position.len() {
            self.position.resize(index + 1, None);
        }
        if self.position[index].replace(position).is_none() {
            self.patients.push(patient);
        }
    }

    /// How many patients have a pending change.
    fn len(&self) -> usize {
        self.patients.len()
    }

    fn is_empty(&self) -> bool {
        self.patients.is_empty()
    }

    /// Each patient with a pending change and its position, in no
    /// particular order.
    fn iter(&self) -> impl Iterator<Item = (PatientNumber, u64)> + '_ {
        self.patients
            .iter()
            .filter_map(|patient| Some((*patient, self.position[patient.index()]?)))
    }

    /// [`Self::iter`], leaving nothing pending.
    fn take(&mut self) -> Vec<(PatientNumber, u64)> {
        let changes = self.iter().collect();
        for patient in self.patients.drain(..) {
            self.position[patient.index()] = None;
        }
        changes
    }
}

/// The projection's checkpoint: the cohort, and the changes not published
/// yet as (centre, pseudonym, position of the patient's last change).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ProjectionSnapshot {
    cohort: CohortSnapshot,
    pending: Vec<(String, String, u64)>,
}

impl Projection {
    fn new(parameters: RuleParameters) -> Self {
        Self {
            cohort: Cohort::new(parameters),
            position: 0,
            folded_here: 0,
            pending: PendingChanges::default(),
            pending_since: None,
            stored: HashMap::new(),
            stored_up_to: 0,
        }
    }

    /// Notes each patient's last derived event already on the bus, as
    /// (centre, patient, source position); an entry that names no valid
    /// patient cannot be one of ours and is ignored.
    fn learn_stored(&mut self, stored: Vec<(String, String, u64)>) {
        for (centre, patient, position) in stored {
            let (Ok(centre), Ok(patient)) = (Centre::parse(&centre), Pseudonym::parse(&patient))
            else {
                continue;
            };
            let known = self
                .stored
                .entry(PatientKey::new(centre, patient))
                .or_insert(position);
            *known = (*known).max(position);
            self.stored_up_to = self.stored_up_to.max(position);
        }
    }

    fn snapshot(&self) -> ProjectionSnapshot {
        ProjectionSnapshot {
            cohort: self.cohort.snapshot(),
            pending: self
                .pending
                .iter()
                .filter_map(|(patient, position)| {
                    // A pending patient is in the cohort that numbered them.
                    let key = self.cohort.key_of(patient)?;
                    Some((
                        key.centre.as_str().to_owned(),
                        key.patient.as_str().to_owned(),
                        position,
                    ))
                })
                .collect(),
        }
    }

    fn restore(
        snapshot: ProjectionSnapshot,
        parameters: &RuleParameters,
        position: u64,
    ) -> Result<Self, String> {
        let cohort = Cohort::from_snapshot(snapshot.cohort, parameters)
            .map_err(|error| error.to_string())?;
        let mut pending = PendingChanges::default();
        for (centre, patient, changed_at) in snapshot.pending {
            let key = PatientKey::new(
                Centre::parse(&centre).map_err(|reason| format!("pending centre: {reason}"))?,
                Pseudonym::parse(&patient)
                    .map_err(|reason| format!("pending patient: {reason}"))?,
            );
            // A patient the cohort does not hold has no assessment to
            // publish (nor did they before patients were numbered: their
            // change was dropped when published).
            match cohort.number_of(&key) {
                Some(number) => pending.note(number, changed_at),
                None => tracing::warn!(
                    %centre,
                    %patient,
                    "a pending change in the checkpoint names a patient the cohort does not hold; dropped"
                ),
            }
        }
        Ok(Self {
            cohort,
            position,
            folded_here: 0,
            pending_since: (!pending.is_empty()).then(Instant::now),
            pending,
            stored: HashMap::new(),
            stored_up_to: 0,
        })
    }

    /// Folds a chunk of records, noting each patient whose assessment
    /// changed with the position of their last change. Returns the error of
    /// the record that stopped the fold early, if one did (the records
    /// before it are folded).
    fn fold_chunk(&mut self, records: &[Record]) -> Option<FollowError> {
        for record in records {
            let recorded = match proto::convert::recorded_from_parts(
                record.position,
                record.recorded_at_micros,
                &record.principal,
                &record.payload,
            ) {
                Ok(recorded) => recorded,
                Err(error) => {
                    return Some(FollowError::Fold {
                        position: record.position,
                        reason: error.to_string(),
                    });
                }
            };
            let (patient, change) = apply_and_compare_numbered(&mut self.cohort, &recorded);
            self.position = record.position;
            self.folded_here += 1;
            if change == AssessmentChange::Changed {
                self.pending.note(patient, record.position);
                self.pending_since.get_or_insert_with(Instant::now);
            }
        }
        None
    }

    /// The derived events of the pending changes, by position: each
    /// patient's assessment now, which is their assessment after their last
    /// change. Nothing is pending afterwards. A change at or before the
    /// patient's last event already stored is left out: that event is the
    /// same one (same id) or a later state of the patient.
    fn take_derived(&mut self) -> Vec<PatientAssessed> {
        self.pending_since = None;
        let mut latest = self.pending.take();
        if !self.stored.is_empty() {
            let (stored, cohort) = (&self.stored, &self.cohort);
            latest.retain(|(patient, position)| {
                cohort
                    .key_of(*patient)
                    .and_then(|key| stored.get(&key))
                    .is_none_or(|stored| position > stored)
            });
            if self.position >= self.stored_up_to {
                // Every change from now on is after every stored event.
                self.stored = HashMap::new();
            }
        }
        latest.sort_unstable_by_key(|(_, position)| *position);
        latest
            .into_iter()
            .filter_map(|(patient, position)| {
                // A changed patient is registered and in the cohort.
                let summary = self.cohort.patient_summary_of(patient)?;
                Some(summary_assessed(&summary, position))
            })
            .collect()
    }

    /// True when pending changes have waited long enough, or are for
    /// enough patients, to be published even while catching up.
    fn pending_too_long(&self) -> bool {
        self.pending.len() >= MAX_PENDING_PATIENTS
            || self
                .pending_since
                .is_some_and(|since| since.elapsed() >= MAX_PENDING)
    }
}

struct PublishingFold {
    projection: Arc<Mutex<Projection>>,
    bus: DerivedBus,
    log: Arc<dyn EventLog>,
}

impl PublishingFold {
    /// Publishes every pending change. Called before a chunk's fold
    /// returns, so before a checkpoint covers it; were the process to die
    /// before, the checkpoint still holds the changes as pending. A crash
    /// after republishes the same ids, never loses one.
    async fn publish_pending(&self) -> Result<(), FollowError> {
        let derived = self
            .projection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take_derived();
        for derived in derived {
            let position = derived.source_position;
            self.bus
                .publish(derived)
                .await
                .map_err(|error| FollowError::Fold {
                    position,
                    reason: error.to_string(),
                })?;
        }
        Ok(())
    }
}

impl AsyncFold for PublishingFold {
    async fn fold(&mut self, records: &[Record]) -> Result<(), FollowError> {
        let (failure, position, overdue) = {
            let mut projection = self
                .projection
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let failure = projection.fold_chunk(records);
            (failure, projection.position, projection.pending_too_long())
        };
        // Catching up (a chunk read in bulk, and the head further on), the
        // changes wait, at most `MAX_PENDING`, so that a patient changed in
        // many chunks is assessed and published once; live, they go now.
        let catching_up = failure.is_none()
            && !overdue
            && records.len() >= BULK_CHUNK_RECORDS
            && self.log.head().await.is_ok_and(|head| head > position);
        if !catching_up {
            self.publish_pending().await?;
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn snapshotter(&self) -> Snapshotter {
        let projection = Arc::clone(&self.projection);
        Box::new(move |saved| {
            // Called between chunks only: every derived event up to
            // `position` was published.
            let (position, snapshot) = {
                let projection = projection.lock().unwrap_or_else(PoisonError::into_inner);
                if projection.position <= saved {
                    return Ok(None);
                }
                (projection.position, projection.snapshot())
            };
            Ok(Some((position, encode(&snapshot)?)))
        })
    }
}

/// A read-only look at the projection's progress, for tests and metrics.
#[derive(Debug, Clone)]
pub struct Progress {
    projection: Arc<Mutex<Projection>>,
}

impl Progress {
    /// The last log position folded in.
    pub fn position(&self) -> u64 {
        self.lock().position
    }

    /// How many records this process folded itself: a restart from a
    /// checkpoint folds only those after it.
    pub fn records_folded_here(&self) -> u64 {
        self.lock().folded_here
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Projection> {
        self.projection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The assessment projection and its service, ready to be served.
#[derive(Debug)]
pub struct Assessment {
    projection: Arc<Mutex<Projection>>,
    checkpointer: Checkpointer,
    log: Arc<dyn EventLog>,
    bus: DerivedBus,
}

impl Assessment {
    /// Restores the checkpoint's snapshot (or starts empty); what it covers
    /// was published before or is pending in it, and is not folded again.
    pub async fn prepare(
        log: Arc<dyn EventLog>,
        bus: DerivedBus,
        checkpoint_directory: &Path,
        rebuild: bool,
        parameters: RuleParameters,
    ) -> Result<Self, AssessmentError> {
        let (checkpointer, restored) = Checkpointer::open(
            checkpoint_directory,
            CHECKPOINT_NAME,
            rebuild,
            move |snapshot: ProjectionSnapshot| {
                // The position is the marker's; it is set just below.
                Projection::restore(snapshot, &parameters, 0)
            },
        )
        .await?;
        let projection = match restored {
            Some((position, projection)) => Projection {
                position,
                ..projection
            },
            None => Projection::new(parameters),
        };
        Ok(Self {
            projection: Arc::new(Mutex::new(projection)),
            checkpointer,
            log,
            bus,
        })
    }

    /// The tonic service, behind the bearer-token check.
    pub fn grpc_service(
        &self,
        secret: Arc<JwtSecret>,
    ) -> InterceptedService<AssessmentServer<AssessmentService>, AuthInterceptor> {
        InterceptedService::new(
            AssessmentServer::new(AssessmentService {
                projection: Arc::clone(&self.projection),
            })
            .max_encoding_message_size(64 << 20),
            AuthInterceptor::new(secret),
        )
    }

    /// The projection's progress, readable while it runs.
    pub fn progress(&self) -> Progress {
        Progress {
            projection: Arc::clone(&self.projection),
        }
    }

    /// Follows the log, publishing derived events, until `shutdown`.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> Result<(), AssessmentError> {
        let from_position = self.progress().position() + 1;
        let fold = PublishingFold {
            projection: self.projection,
            bus: self.bus,
            log: Arc::clone(&self.log),
        };
        // What the bus holds already is never published over with an older
        // state; then changes the checkpoint kept pending are published.
        let stored = fold.bus.stored_latest_positions().await?;
        fold.projection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .learn_stored(stored);
        fold.publish_pending().await?;
        follow_log(self.log, self.checkpointer, from_position, shutdown, fold).await?;
        Ok(())
    }
}

/// The `toxaudit.v1.Assessment` implementation.
#[derive(Debug, Clone)]
pub struct AssessmentService {
    projection: Arc<Mutex<Projection>>,
}

impl AssessmentService {
    fn lock(&self) -> std::sync::MutexGuard<'_, Projection> {
        self.projection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn parse_centre(text: &str) -> Result<Centre, Status> {
    Centre::parse(text).map_err(|reason| ServiceError::invalid(format!("centre: {reason}")).into())
}

#[tonic::async_trait]
impl AssessmentRpc for AssessmentService {
    async fn get_patient(
        &self,
        request: Request<GetPatientRequest>,
    ) -> Result<Response<PatientAssessed>, Status> {
        let principal = auth::principal(&request)?;
        let asked = request.into_inner();
        principal.authorise_read(&ReadScope::Centre(&asked.centre))?;
        let centre = parse_centre(&asked.centre)?;
        let patient = Pseudonym::parse(&asked.patient)
            .map_err(|reason| ServiceError::invalid(format!("patient: {reason}")))?;
        let key = PatientKey::new(centre, patient);
        let projection = self.lock();
        match projection.cohort.patient(&key) {
            Some(assessment) if assessment.registered => Ok(Response::new(
                patient_assessed_in_detail(&assessment, projection.position),
            )),
            _ => Err(ServiceError::NotFound(format!("patient {key} is not registered")).into()),
        }
    }

    async fn list_findings(
        &self,
        request: Request<ListFindingsRequest>,
    ) -> Result<Response<ListFindingsResponse>, Status> {
        let principal = auth::principal(&request)?;
        let asked = request.into_inner();
        principal.authorise_read(&ReadScope::Centre(&asked.centre))?;
        let centre = parse_centre(&asked.centre)?;
        let projection = self.lock();
        let patients = projection
            .cohort
            .patient_keys()
            .filter(|key| key.centre == centre)
            .filter_map(|key| projection.cohort.patient(&key))
            .filter(|assessment| {
                assessment.registered
                    && (assessment.snr.is_some() || assessment.standards_failed().next().is_some())
            })
            .map(|assessment| patient_assessed(&assessment, projection.position))
            .collect();
        Ok(Response::new(ListFindingsResponse {
            patients,
            as_of_position: projection.position,
        }))
    }
}

/// Assessment serving alone on its own port.
#[derive(Debug)]
pub struct Application {
    server: GrpcServer,
    assessment: Assessment,
}

/// Loads the checkpoint and binds the port.
pub async fn build(config: AssessmentConfig) -> Result<Application, AssessmentError> {
    let assessment = Assessment::prepare(
        config.log,
        config.bus,
        &config.checkpoint_directory,
        config.rebuild,
        config.parameters,
    )
    .await?;
    let routes = Routes::new(assessment.grpc_service(config.secret));
    let server = GrpcServer::bind(
        &config.grpc_address,
        config.tls.as_ref(),
        routes,
        &[SERVICE_NAME],
    )
    .await?;
    Ok(Application { server, assessment })
}

impl Application {
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// The projection's progress, readable while it runs.
    pub fn progress(&self) -> Progress {
        self.assessment.progress()
    }

    /// Serves and follows the log until `shutdown`.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> Result<(), AssessmentError> {
        let (served, followed) = tokio::join!(
            self.server.run_until_stopped(shutdown.clone().wait()),
            self.assessment.run_until_stopped(shutdown),
        );
        served?;
        followed
    }
}

#[cfg(test)]
mod tests {
    //! The chunked fold against the record-by-record rule it replaces, on
    //! random cohorts (voids, re-assessments, backdated cycles, duplicates,
    //! tests and referrals) and on the paper's cohort, cut into chunks of
    //! many sizes.

    use std::collections::{BTreeMap, HashMap};

    use domain::{ClinicalDate, PatientKey, audit::Cohort, audit::RuleParameters};
    use eventlog::Record;
    use proto::v1::PatientAssessed;

    use super::{Projection, patient_assessed, patient_assessed_in_detail};

    fn records_of(lines: &[String]) -> anyhow::Result<Vec<Record>> {
        let today =
            ClinicalDate::from_ymd(2030, 1, 1).ok_or_else(|| anyhow::anyhow!("not a date"))?;
        lines
            .iter()
            .enumerate()
            .map(|(index, line)| {
                let event = domain::ndjson::parse_line(line, today)?;
                Ok(Record {
                    position: index as u64 + 1,
                    recorded_at_micros: 1_700_000_000_000_000 + index as i64,
                    key: event.event_id.to_string().into(),
                    stream: format!("{}.{}", event.centre, event.patient).into(),
                    principal: "test".into(),
                    payload: proto::convert::encode_event(&event),
                })
            })
            .collect()
    }

    /// The rule as first written: after every record, the patient's whole
    /// assessment, its summary published when it differs from the last one.
    fn record_by_record(records: &[Record]) -> anyhow::Result<Vec<(PatientKey, PatientAssessed)>> {
        let mut cohort = Cohort::new(RuleParameters::default());
        let mut last: HashMap<PatientKey, PatientAssessed> = HashMap::new();
        let mut published = Vec::new();
        for record in records {
            let recorded = proto::convert::recorded_from_parts(
                record.position,
                record.recorded_at_micros,
                &record.principal,
                &record.payload,
            )?;
            cohort.apply(&recorded);
            let key = recorded.event.patient_key();
            let Some(view) = cohort.patient(&key) else {
                continue;
            };
            if !view.registered {
                continue;
            }
            // Changed is judged on the whole assessment (the detail);
            // what is published is the summary.
            let current = patient_assessed_in_detail(&view, 0);
            if last.get(&key) != Some(&current) {
                last.insert(key.clone(), current);
                published.push((key, patient_assessed(&view, record.position)));
            }
        }
        Ok(published)
    }

    /// What the chunked fold must publish for chunks ending at `ends`: per
    /// chunk, each patient's last record-by-record event in it.
    fn expected_for_chunks(
        reference: &[(PatientKey, PatientAssessed)],
        ends: &[u64],
    ) -> Vec<PatientAssessed> {
        let mut expected = Vec::new();
        let mut start = 0;
        for end in ends {
            let mut last_in_chunk: HashMap<&PatientKey, &PatientAssessed> = HashMap::new();
            for (key, event) in reference {
                if event.source_position > start && event.source_position <= *end {
                    last_in_chunk.insert(key, event);
                }
            }
            let mut chunk: Vec<_> = last_in_chunk.into_values().cloned().collect();
            chunk.sort_by_key(|event| event.source_position);
            expected.extend(chunk);
            start = *end;
        }
        expected
    }

    fn chunked(
        records: &[Record],
        sizes: &mut dyn FnMut() -> usize,
    ) -> (Vec<PatientAssessed>, Vec<u64>) {
        let mut projection = Projection::new(RuleParameters::default());
        let mut published = Vec::new();
        let mut ends = Vec::new();
        let mut rest = records;
        while !rest.is_empty() {
            let (chunk, after) = rest.split_at(sizes().clamp(1, rest.len()));
            let failure = projection.fold_chunk(chunk);
            assert!(failure.is_none(), "{failure:?}");
            published.extend(projection.take_derived());
            ends.push(chunk[chunk.len() - 1].position);
            rest = after;
        }
        (published, ends)
    }

    fn check_every_chunking(lines: &[String]) -> anyhow::Result<()> {
        let records = records_of(lines)?;
        let reference = record_by_record(&records)?;
        anyhow::ensure!(reference.len() > 10, "a cohort too small to test");

        // One record at a time (a live follower): exactly the old rule.
        let (published, _) = chunked(&records, &mut || 1);
        let old: Vec<_> = reference.iter().map(|(_, event)| event.clone()).collect();
        assert_eq!(published, old);

        // Any chunking: per chunk, each changed patient's last change, the
        // very message the old rule published under that id.
        let mut seed = 0x5EED_u64;
        let mut random_size = move || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            1 + (seed >> 33) as usize % 700
        };
        let mut whole = || 4096;
        let mut pairs = || 2;
        let mut odd = || 97;
        let chunkings: [&mut dyn FnMut() -> usize; 4] =
            [&mut whole, &mut pairs, &mut odd, &mut random_size];
        for sizes in chunkings {
            let (published, ends) = chunked(&records, sizes);
            assert_eq!(published, expected_for_chunks(&reference, &ends));
            // Every patient's latest assessment is among them.
            let mut latest: BTreeMap<(String, String), &PatientAssessed> = BTreeMap::new();
            for event in &published {
                latest.insert((event.centre.clone(), event.patient.clone()), event);
            }
            let mut latest_old: BTreeMap<(String, String), &PatientAssessed> = BTreeMap::new();
            for event in &old {
                latest_old.insert((event.centre.clone(), event.patient.clone()), event);
            }
            assert_eq!(latest, latest_old);
        }
        Ok(())
    }

    #[test]
    fn random_cohorts_publish_what_the_record_by_record_rule_publishes() -> anyhow::Result<()> {
        for seed in [1, 2026] {
            let lines: Vec<String> = demodata::random_lines(&demodata::RandomSpec {
                patients: 12,
                centres: 3,
                seed,
            })
            .collect();
            check_every_chunking(&lines)?;
        }
        Ok(())
    }

    #[test]
    fn pending_changes_survive_a_checkpoint() -> anyhow::Result<()> {
        let records = records_of(&demodata::paper2019_lines(2019))?;
        let reference = record_by_record(&records)?;
        let head = records.len() as u64;
        for split in [1, records.len() / 3, records.len() - 1] {
            let mut before = Projection::new(RuleParameters::default());
            assert!(before.fold_chunk(&records[..split]).is_none());
            // Checkpointed with its changes pending, as the service saves it.
            let bytes = service_kit::checkpoint::encode(&before.snapshot())?;
            let snapshot: super::ProjectionSnapshot =
                service_kit::checkpoint::decode(&bytes, std::path::Path::new("snapshot.bin"))?;
            let mut restored =
                Projection::restore(snapshot, &RuleParameters::default(), split as u64)
                    .map_err(anyhow::Error::msg)?;
            let mut published = restored.take_derived();
            assert_eq!(
                published,
                expected_for_chunks(&reference, &[split as u64]),
                "the pending changes of the checkpoint at {split}"
            );
            assert!(restored.fold_chunk(&records[split..]).is_none());
            published.extend(restored.take_derived());
            assert_eq!(
                published,
                expected_for_chunks(&reference, &[split as u64, head])
            );
        }
        Ok(())
    }

    /// A process killed after publishing a window's events but before its
    /// checkpoint covered them folds them again, in other windows: with
    /// what the bus holds learned first, it never publishes a patient's
    /// older state after the stored one, so each patient's last stored
    /// event stays the rule's latest.
    #[test]
    fn a_restart_never_publishes_an_older_state_than_the_bus_holds() -> anyhow::Result<()> {
        let records = records_of(&demodata::paper2019_lines(2019))?;
        let reference = record_by_record(&records)?;
        let mut rule_latest: BTreeMap<(String, String), &PatientAssessed> = BTreeMap::new();
        let by_id: HashMap<String, &PatientAssessed> = reference
            .iter()
            .map(|(_, event)| (service_kit::bus::derived_event_id(event), event))
            .collect();
        for (_, event) in &reference {
            rule_latest.insert((event.centre.clone(), event.patient.clone()), event);
        }
        for split in [records.len() / 3, records.len() / 2, records.len() - 1] {
            // The bus, deduplicating by id as JetStream does.
            let mut bus: Vec<PatientAssessed> = Vec::new();
            let mut ids = std::collections::HashSet::new();
            let mut publish = |events: Vec<PatientAssessed>, bus: &mut Vec<PatientAssessed>| {
                for event in events {
                    if ids.insert(service_kit::bus::derived_event_id(&event)) {
                        bus.push(event);
                    }
                }
            };
            // First run: one window up to `split`, published, then killed
            // before any checkpoint.
            let mut first = Projection::new(RuleParameters::default());
            assert!(first.fold_chunk(&records[..split]).is_none());
            publish(first.take_derived(), &mut bus);
            let stored_before: HashMap<(String, String), u64> = bus
                .iter()
                .map(|event| {
                    (
                        (event.centre.clone(), event.patient.clone()),
                        event.source_position,
                    )
                })
                .collect();
            // Restart from nothing, record by record: every intermediate
            // state of the first window is a window's latest now.
            let mut restarted = Projection::new(RuleParameters::default());
            restarted.learn_stored(
                stored_before
                    .iter()
                    .map(|((centre, patient), position)| {
                        (centre.clone(), patient.clone(), *position)
                    })
                    .collect(),
            );
            for record in &records {
                assert!(restarted.fold_chunk(std::slice::from_ref(record)).is_none());
                let derived = restarted.take_derived();
                for event in &derived {
                    let stored = stored_before
                        .get(&(event.centre.clone(), event.patient.clone()))
                        .copied()
                        .unwrap_or(0);
                    assert!(
                        event.source_position > stored,
                        "{} published after {stored} was stored",
                        service_kit::bus::derived_event_id(event)
                    );
                    assert_eq!(
                        by_id.get(&service_kit::bus::derived_event_id(event)),
                        Some(&event),
                        "not the rule's event of that id"
                    );
                }
                publish(derived, &mut bus);
            }
            assert!(
                restarted.stored.is_empty(),
                "the learned positions are kept"
            );
            let mut bus_latest: BTreeMap<(String, String), &PatientAssessed> = BTreeMap::new();
            for event in &bus {
                bus_latest.insert((event.centre.clone(), event.patient.clone()), event);
            }
            assert_eq!(bus_latest, rule_latest, "split at {split}");
        }
        Ok(())
    }

    #[test]
    fn detail_json_is_serde_jsons_text_of_the_assessment() -> anyhow::Result<()> {
        let records = records_of(&demodata::paper2019_lines(2019))?;
        let mut projection = Projection::new(RuleParameters::default());
        assert!(projection.fold_chunk(&records).is_none());
        let mut assessed = 0;
        for key in projection.cohort.patient_keys() {
            let Some(assessment) = projection.cohort.patient(&key) else {
                continue;
            };
            assert_eq!(
                super::detail_json(&assessment),
                serde_json::to_string(&assessment)?
            );
            assessed += 1;
        }
        anyhow::ensure!(assessed > 100, "only {assessed} patients");
        Ok(())
    }

    #[test]
    fn the_paper_cohort_publishes_what_the_record_by_record_rule_publishes() -> anyhow::Result<()> {
        check_every_chunking(&demodata::paper2019_lines(2019))
    }
}
