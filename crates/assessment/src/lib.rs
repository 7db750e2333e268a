//! toxaudit's assessment service. It follows the event log into the domain's
//! audit [`Cohort`], keeps each patient's BNN assessment, and publishes a
//! derived `patient_assessed` event (`toxaudit.v1.PatientAssessed`) on the
//! [`DerivedBus`] whenever a patient's assessment changes. It serves
//! `toxaudit.v1.Assessment` (`GetPatient`, `ListFindings`).
//!
//! Idempotent publishing: assessments are checked after *each* log event, so
//! a derived event's id — patient + the position of the log event that
//! changed it — does not depend on how the log was chunked when read. The
//! checkpoint only ever holds records whose derived events were published,
//! so a restart (even after `kill -9`) republishes, at most, events with ids
//! the bus has already seen, which JetStream drops as duplicates.

#![forbid(unsafe_code)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use domain::{
    Centre, PatientKey, Pseudonym,
    audit::{Cohort, PatientAssessment, RuleParameters},
};
use eventlog::{EventLog, Record};
use proto::v1::{
    Finding, GetPatientRequest, ListFindingsRequest, ListFindingsResponse, PatientAssessed,
    assessment_server::{Assessment as AssessmentRpc, AssessmentServer},
};
use service_kit::{
    AuthInterceptor, DerivedBus, GrpcServer, JwtSecret, ReadScope, ServiceError, Shutdown,
    TlsFiles, auth,
    follow::{AsyncFold, Checkpointer, FollowError, follow_log},
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

/// The projection: the cohort, and what was last published per patient.
#[derive(Debug)]
struct Projection {
    cohort: Cohort,
    /// Each patient's last published assessment, with `source_position` 0
    /// so that equal assessments compare equal.
    published: HashMap<PatientKey, PatientAssessed>,
    position: u64,
}

impl Projection {
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
        let key = recorded.event.patient_key();
        let Some(assessment) = self.cohort.patient(&key) else {
            return Ok(None);
        };
        if !assessment.registered {
            return Ok(None);
        }
        let current = patient_assessed(&assessment, 0);
        if self.published.get(&key) == Some(&current) {
            return Ok(None);
        }
        let derived = PatientAssessed {
            source_position: record.position,
            ..current.clone()
        };
        self.published.insert(key, current);
        Ok(Some(derived))
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
    /// Loads the checkpoint (or starts empty); what it holds was published
    /// before, so it is folded without publishing.
    pub async fn prepare(
        log: Arc<dyn EventLog>,
        bus: DerivedBus,
        checkpoint_directory: &Path,
        rebuild: bool,
        parameters: RuleParameters,
    ) -> Result<Self, AssessmentError> {
        let (checkpointer, (mut projection, failure)) = Checkpointer::open(
            checkpoint_directory,
            rebuild,
            (
                Projection {
                    cohort: Cohort::new(parameters),
                    published: HashMap::new(),
                    position: 0,
                },
                None::<FollowError>,
            ),
            |(projection, failure), record| {
                if failure.is_none()
                    && let Err(error) = projection.fold(&record)
                {
                    *failure = Some(error);
                }
            },
        )
        .await?;
        if let Some(error) = failure {
            return Err(error.into());
        }
        projection.position = checkpointer.position();
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

    /// Follows the log, publishing derived events, until `shutdown`.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> Result<(), AssessmentError> {
        follow_log(
            self.log,
            self.checkpointer,
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
