//! toxaudit's assessment service. It follows the event log into the domain's
//! audit [`Cohort`], keeps each patient's BNN assessment, and publishes a
//! derived `patient_assessed` event (`toxaudit.v1.PatientAssessed`) on the
//! [`DerivedBus`] whenever a patient's assessment changes. It serves
//! `toxaudit.v1.Assessment` (`GetPatient`, `ListFindings`).
//!
//! Idempotent publishing: assessments are checked after *each* log event, so
//! a derived event's id — patient + the position of the log event that
//! changed it — does not depend on how the log was chunked when read.
//!
//! Checkpoint: a snapshot of the cohort and of what was last published per
//! patient (a 128-bit fingerprint of the message), taken between two chunks
//! of records, so it only ever covers positions whose derived events were
//! published. A restart (even after `kill -9`) restores it and follows the
//! log after its position: it republishes, at most, events with ids the bus
//! has already seen, which JetStream drops as duplicates. A snapshot folded
//! with other rule parameters is refused and the log refolded from 1.

#![forbid(unsafe_code)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use domain::{
    Centre, PatientKey, Pseudonym,
    audit::{Cohort, CohortSnapshot, PatientAssessment, RuleParameters},
};
use eventlog::{EventLog, Record};
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
/// `source_position`.
pub fn patient_assessed(assessment: &PatientAssessment, source_position: u64) -> PatientAssessed {
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
    if let Some(snr) = &assessment.snr {
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
        rule_set: assessment.rule_set.clone(),
        classification: assessment
            .snr
            .as_ref()
            .map_or("not_snr", |snr| snr.group.as_str())
            .to_owned(),
        findings,
        injections: u32::try_from(assessment.cycles.len()).unwrap_or(u32::MAX),
        // Serialising plain structs cannot fail; an empty string would only
        // lose the optional detail.
        detail_json: serde_json::to_string(assessment).unwrap_or_default(),
    }
}

/// The fingerprint of a derived event with `source_position` 0: equal
/// assessments have equal fingerprints (prost encodes fields in order), and
/// 128 bits make a false "unchanged" practically impossible.
fn fingerprint(current: &PatientAssessed) -> [u64; 2] {
    let hash = xxhash_rust::xxh3::xxh3_128(&prost::Message::encode_to_vec(current));
    // The two halves of the u128, bit for bit.
    [(hash >> 64) as u64, hash as u64]
}

/// The projection: the cohort, and what was last published per patient.
#[derive(Debug)]
struct Projection {
    cohort: Cohort,
    /// The fingerprint of each patient's last published assessment.
    published: HashMap<PatientKey, [u64; 2]>,
    position: u64,
    /// Records folded by this process (not restored from a checkpoint).
    folded_here: u64,
}

/// The projection's checkpoint: the cohort and the published fingerprints
/// as (centre, pseudonym, fingerprint).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ProjectionSnapshot {
    cohort: CohortSnapshot,
    published: Vec<(String, String, [u64; 2])>,
}

impl Projection {
    fn new(parameters: RuleParameters) -> Self {
        Self {
            cohort: Cohort::new(parameters),
            published: HashMap::new(),
            position: 0,
            folded_here: 0,
        }
    }

    fn snapshot(&self) -> ProjectionSnapshot {
        ProjectionSnapshot {
            cohort: self.cohort.snapshot(),
            published: self
                .published
                .iter()
                .map(|(key, fingerprint)| {
                    (
                        key.centre.as_str().to_owned(),
                        key.patient.as_str().to_owned(),
                        *fingerprint,
                    )
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
        let mut published = HashMap::with_capacity(snapshot.published.len());
        for (centre, patient, fingerprint) in snapshot.published {
            let key = PatientKey::new(
                Centre::parse(&centre).map_err(|reason| format!("published centre: {reason}"))?,
                Pseudonym::parse(&patient)
                    .map_err(|reason| format!("published patient: {reason}"))?,
            );
            published.insert(key, fingerprint);
        }
        Ok(Self {
            cohort,
            published,
            position,
            folded_here: 0,
        })
    }

    fn fold(&mut self, record: &Record) -> Result<Option<PatientAssessed>, FollowError> {
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
        self.cohort.apply(&recorded);
        self.position = record.position;
        self.folded_here += 1;
        let key = recorded.event.patient_key();
        let Some(assessment) = self.cohort.patient(&key) else {
            return Ok(None);
        };
        if !assessment.registered {
            return Ok(None);
        }
        let current = patient_assessed(&assessment, 0);
        let fingerprint = fingerprint(&current);
        if self.published.get(&key) == Some(&fingerprint) {
            return Ok(None);
        }
        self.published.insert(key, fingerprint);
        Ok(Some(PatientAssessed {
            source_position: record.position,
            ..current
        }))
    }
}

struct PublishingFold {
    projection: Arc<Mutex<Projection>>,
    bus: DerivedBus,
}

impl AsyncFold for PublishingFold {
    async fn fold(&mut self, records: &[Record]) -> Result<(), FollowError> {
        for record in records {
            let derived = {
                let mut projection = self
                    .projection
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                projection.fold(record)?
            };
            if let Some(derived) = derived {
                // Published before the record reaches the checkpoint: a
                // crash in between republishes the same id, never loses one.
                self.bus
                    .publish(derived)
                    .await
                    .map_err(|error| FollowError::Fold {
                        position: record.position,
                        reason: error.to_string(),
                    })?;
            }
        }
        Ok(())
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
    /// was published before, and is not folded again.
    pub async fn prepare(
        log: Arc<dyn EventLog>,
        bus: DerivedBus,
        checkpoint_directory: &Path,
        rebuild: bool,
        parameters: RuleParameters,
    ) -> Result<Self, AssessmentError> {
        let (checkpointer, restored) = Checkpointer::open(
            checkpoint_directory,
            "assessment",
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
        follow_log(
            self.log,
            self.checkpointer,
            from_position,
            shutdown,
            PublishingFold {
                projection: self.projection,
                bus: self.bus,
            },
        )
        .await?;
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
            Some(assessment) if assessment.registered => Ok(Response::new(patient_assessed(
                &assessment,
                projection.position,
            ))),
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
