//! The ingest service's projection: the admission state of the log (every
//! event id, registration and live injection; see `domain::admission`),
//! kept up to date from the batches ingest appends itself (admitted into the
//! state before the append, placed at the positions the append returns) and
//! by reading from the log only what other writers appended (a gap before
//! an appended batch, or past the state's position before the next
//! admission), and checkpointed
//! as a snapshot (the admission state and each stream's last position) so a
//! restart resumes after the checkpoint instead of refolding from position 1.
//! A snapshot is never taken while the state holds events of a batch that
//! was not appended; such a state is thrown away and restored from the
//! checkpoint, then brought up to the log's head.
//!
//! One batch is admitted at a time (a mutex around the state), which is
//! what makes "checked as if each accepted event had been appended before
//! the next" hold across concurrent callers; the log's per-stream expected
//! versions guard against another ingest process writing the same patients.

use std::{collections::HashMap, sync::Arc};

use domain::{
    Event, FieldError,
    admission::{Admission, AdmissionSnapshot, Verdict, WriterScope},
};
use eventlog::{AppendBatch, AppendOutcome, EventLog, ExpectedVersion, NewRecord, Record};
use proto::convert::decode_event;
use service_kit::{
    ServiceError,
    checkpoint::encode,
    follow::{Checkpointer, Snapshotter},
};

/// How many times a batch is admitted when the log says a stream moved.
const ATTEMPTS_ON_CONFLICT: u32 = 3;

/// Records read from the log in one go while catching up.
const CATCH_UP_CHUNK: usize = 4096;

/// What the admission state knows, and up to where.
#[derive(Debug, Default)]
pub(crate) struct Admitted {
    pub(crate) admission: Admission,
    /// The last log position folded in.
    pub(crate) position: u64,
    /// Each stream's last position, for the expected-version check.
    stream_versions: HashMap<String, u64>,
    /// The admission holds events of a batch that was then not appended:
    /// it must be restored before the next check.
    stale: bool,
    /// Records folded by this process (not restored from a checkpoint).
    pub(crate) folded_here: u64,
}

/// The ingest projection's checkpoint (its position is the checkpoint's).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct AdmittedSnapshot {
    admission: AdmissionSnapshot,
    stream_versions: Vec<(String, u64)>,
}

impl Admitted {
    /// The state a snapshot was taken of, at the checkpoint's `position`.
    pub(crate) fn restore(snapshot: AdmittedSnapshot, position: u64) -> Result<Self, String> {
        Ok(Self {
            admission: Admission::from_snapshot(snapshot.admission)
                .map_err(|error| error.to_string())?,
            position,
            stream_versions: snapshot.stream_versions.into_iter().collect(),
            stale: false,
            folded_here: 0,
        })
    }

    fn snapshot(&self) -> AdmittedSnapshot {
        AdmittedSnapshot {
            admission: self.admission.snapshot(),
            stream_versions: self
                .stream_versions
                .iter()
                .map(|(stream, position)| (stream.clone(), *position))
                .collect(),
        }
    }

    /// Folds one stored record.
    pub(crate) fn fold(&mut self, record: &Record) -> Result<(), String> {
        let event = decode_event(&record.payload).map_err(|error| error.to_string())?;
        self.admission.apply(&event);
        self.position = record.position;
        self.folded_here += 1;
        self.stream_versions
            .insert(record.stream.to_string(), record.position);
        Ok(())
    }
}

/// One event of a refused batch after admission.
#[derive(Debug)]
pub(crate) struct EventVerdict {
    pub(crate) event_id: String,
    pub(crate) verdict: Verdict,
}

/// The outcome of one appended event, for the response.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) event_id: String,
    pub(crate) position: u64,
    pub(crate) duplicate: bool,
    pub(crate) warnings: Vec<FieldError>,
}

/// The shared admission state and the log it follows.
#[derive(Debug)]
pub(crate) struct AdmissionState {
    log: Arc<dyn EventLog>,
    checkpointer: Checkpointer,
    state: tokio::sync::Mutex<Admitted>,
}

/// The stream of an event in the log: `<centre>.<patient>`.
pub(crate) fn stream_of(event: &Event) -> String {
    format!("{}.{}", event.centre, event.patient)
}

impl AdmissionState {
    pub(crate) fn new(
        log: Arc<dyn EventLog>,
        checkpointer: Checkpointer,
        admitted: Admitted,
    ) -> Self {
        Self {
            log,
            checkpointer,
            state: tokio::sync::Mutex::new(admitted),
        }
    }

    /// The projection's snapshot, for [`Checkpointer::save`]: nothing while
    /// the state is stale or has nothing past the last checkpoint. Waits for
    /// a batch being admitted to finish (it runs on a blocking thread).
    pub(crate) fn snapshotter(self: &Arc<Self>) -> Snapshotter {
        let state = Arc::clone(self);
        Box::new(move |saved| {
            let (position, snapshot) = {
                let admitted = state.state.blocking_lock();
                if admitted.stale || admitted.position <= saved {
                    return Ok(None);
                }
                (admitted.position, admitted.snapshot())
            };
            Ok(Some((position, encode(&snapshot)?)))
        })
    }

    /// How many records this process folded itself.
    pub(crate) async fn records_folded_here(&self) -> u64 {
        self.state.lock().await.folded_here
    }

    /// Brings the state up to the log's head (restoring it from the
    /// checkpoint first when a refused batch left it stale). Asks the log
    /// for its head first: when nobody else wrote, that is all it costs.
    async fn catch_up(&self, admitted: &mut Admitted) -> Result<(), ServiceError> {
        if admitted.stale {
            // Start over from what the log really holds: the checkpoint's
            // snapshot (local), then the log after it.
            let restored = self
                .checkpointer
                .reload(|snapshot: AdmittedSnapshot| Admitted::restore(snapshot, 0))
                .await
                .map_err(|error| ServiceError::Internal(error.to_string()))?;
            let folded_here = admitted.folded_here;
            *admitted = match restored {
                Some((position, fresh)) => Admitted { position, ..fresh },
                None => Admitted::default(),
            };
            admitted.folded_here = folded_here;
            tracing::info!(
                position = admitted.position,
                "admission state restored from its checkpoint after a batch that was not appended"
            );
        }
        let head = self.log.head().await.map_err(ServiceError::from)?;
        self.fold_from_log(admitted, head).await
    }

    /// Reads the log after the state's position up to `through` and folds
    /// every record of it: what other writers appended.
    async fn fold_from_log(
        &self,
        admitted: &mut Admitted,
        through: u64,
    ) -> Result<(), ServiceError> {
        while admitted.position < through {
            let missing = usize::try_from(through - admitted.position).unwrap_or(usize::MAX);
            let records = self
                .log
                .read(admitted.position + 1, missing.min(CATCH_UP_CHUNK))
                .await
                .map_err(ServiceError::from)?;
            if records.is_empty() {
                return Err(ServiceError::Internal(format!(
                    "log positions {} to {through} cannot be read back",
                    admitted.position + 1
                )));
            }
            for record in &records {
                if record.position != admitted.position + 1 || record.position > through {
                    return Err(ServiceError::Internal(format!(
                        "the log returned position {} where {} was due",
                        record.position,
                        admitted.position + 1
                    )));
                }
                admitted.fold(record).map_err(|reason| {
                    ServiceError::Internal(format!(
                        "cannot read back log position {}: {reason}",
                        record.position
                    ))
                })?;
            }
        }
        Ok(())
    }

    /// Admits a batch: every event checked as if the ones before it were
    /// appended; all accepted (or duplicates) → appended in one atomic
    /// batch; otherwise nothing is appended and every refusal comes back.
    ///
    /// When the log refuses the batch because a patient's stream moved
    /// (another writer got there first), the state is restored from the
    /// checkpoint, brought to the log's head, and the batch
    /// admitted again, up to [`ATTEMPTS_ON_CONFLICT`] times in all: the
    /// events are judged against what is really stored, and a retry can
    /// never store anything twice (ids are idempotency keys).
    pub(crate) async fn admit_and_append(
        &self,
        parsed: Vec<(String, Result<Event, domain::Refusal>)>,
        writer: &WriterScope,
        principal: &str,
    ) -> Result<Vec<Stored>, AdmitError> {
        let mut attempt = 1;
        loop {
            match self.admit_once(&parsed, writer, principal).await {
                Err(AdmitError::Service(ServiceError::Aborted(reason)))
                    if attempt < ATTEMPTS_ON_CONFLICT =>
                {
                    tracing::warn!(%reason, attempt, "append refused on a stream version, admitting again");
                    attempt += 1;
                }
                Ok(placed) => {
                    return Ok(parsed
                        .into_iter()
                        .zip(placed)
                        .map(|((event_id, _), placed)| Stored {
                            event_id,
                            position: placed.position,
                            duplicate: placed.duplicate,
                            warnings: placed.warnings,
                        })
                        .collect());
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn admit_once(
        &self,
        parsed: &[(String, Result<Event, domain::Refusal>)],
        writer: &WriterScope,
        principal: &str,
    ) -> Result<Vec<Placed>, AdmitError> {
        let mut admitted = self.state.lock().await;
        if let Err(error) = self.catch_up(&mut admitted).await {
            return Err(AdmitError::Service(error));
        }
        let mut verdicts = Vec::with_capacity(parsed.len());
        let mut applied_any = false;
        let mut failed = false;
        for (event_id, event) in parsed {
            let verdict = match event {
                Ok(event) => admitted.admission.check_and_apply(event, writer),
                Err(_) => admitted
                    .admission
                    .check_parsed(Some(event_id), event, writer),
            };
            applied_any |= matches!(verdict, Verdict::Accepted { .. });
            failed |= !verdict.is_success();
            verdicts.push(verdict);
        }
        if failed {
            admitted.stale |= applied_any;
            return Err(AdmitError::Refused(
                parsed
                    .iter()
                    .zip(verdicts)
                    .map(|((event_id, _), verdict)| EventVerdict {
                        event_id: event_id.clone(),
                        verdict,
                    })
                    .collect(),
            ));
        }
        // One record per event id: an event repeated within the batch is a
        // duplicate of its first occurrence and is not sent to the log again.
        let mut records = Vec::with_capacity(verdicts.len());
        let mut record_of_event = Vec::with_capacity(verdicts.len());
        let mut first_record: HashMap<&str, usize> = HashMap::with_capacity(verdicts.len());
        let mut expectations: HashMap<String, ExpectedVersion> = HashMap::new();
        for ((event_id, event), verdict) in parsed.iter().zip(&verdicts) {
            let Ok(event) = event else {
                admitted.stale |= applied_any;
                return Err(AdmitError::Service(ServiceError::Internal(format!(
                    "event {event_id} was admitted without being valid"
                ))));
            };
            if let Some(&index) = first_record.get(event_id.as_str()) {
                record_of_event.push((index, true));
                continue;
            }
            let stream = stream_of(event);
            if matches!(verdict, Verdict::Accepted { .. }) && !expectations.contains_key(&stream) {
                let version = admitted.stream_versions.get(&stream).copied().unwrap_or(0);
                expectations.insert(
                    stream.clone(),
                    if version == 0 {
                        ExpectedVersion::Empty
                    } else {
                        ExpectedVersion::At(version)
                    },
                );
            }
            first_record.insert(event_id, records.len());
            record_of_event.push((records.len(), false));
            records.push(NewRecord {
                key: event_id.clone(),
                stream,
                principal: principal.to_owned(),
                payload: proto::convert::encode_event(event),
            });
        }
        // The streams, to fold the appended records' positions in below.
        let streams: Vec<String> = records.iter().map(|record| record.stream.clone()).collect();
        let mut batch = AppendBatch::new(records);
        batch.expectations = expectations.into_iter().collect();
        let outcomes = match self.log.append(batch).await {
            Ok(outcomes) => outcomes,
            Err(error) => {
                admitted.stale |= applied_any;
                return Err(AdmitError::Service(ServiceError::from(error)));
            }
        };
        if outcomes.len() != streams.len() {
            admitted.stale = true;
            return Err(AdmitError::Service(ServiceError::Internal(format!(
                "the log answered {} outcomes for {} records",
                outcomes.len(),
                streams.len()
            ))));
        }
        // The admission already holds this batch's new events: fold in their
        // positions from the outcomes, and read from the log only what
        // someone else appended before them.
        if let Err(error) = self.fold_appended(&mut admitted, &streams, &outcomes).await {
            admitted.stale = true;
            return Err(AdmitError::Service(error));
        }
        let mut placed = Vec::with_capacity(verdicts.len());
        for (verdict, (record, repeated)) in verdicts.into_iter().zip(record_of_event) {
            // In range: every record index is below records.len(), which
            // equals outcomes.len() (checked above).
            let outcome = outcomes[record];
            placed.push(Placed {
                position: outcome.position(),
                duplicate: repeated || matches!(outcome, AppendOutcome::Duplicate { .. }),
                warnings: match verdict {
                    Verdict::Accepted { warnings } if !repeated => warnings,
                    _ => Vec::new(),
                },
            });
        }
        Ok(placed)
    }

    /// After an append: the state's admission holds the batch's new events
    /// already, so only their positions and streams are folded in, from the
    /// log's outcomes. Positions between the state's and an appended one
    /// are another writer's (appended after our catch-up): those, and only
    /// those, are read from the log and folded. A record that came back a
    /// duplicate is not ours to place (its position, if past ours, is
    /// folded from the log by the next catch-up).
    async fn fold_appended(
        &self,
        admitted: &mut Admitted,
        streams: &[String],
        outcomes: &[AppendOutcome],
    ) -> Result<(), ServiceError> {
        let mut ours: Vec<(u64, &str)> = outcomes
            .iter()
            .zip(streams)
            .filter_map(|(outcome, stream)| match outcome {
                AppendOutcome::Appended { position } => Some((*position, stream.as_str())),
                AppendOutcome::Duplicate { .. } => None,
            })
            .collect();
        // Batch order is position order on both backends; sorting costs
        // nothing then and keeps the fold right if a backend ever differs.
        ours.sort_unstable_by_key(|(position, _)| *position);
        for (position, stream) in ours {
            if position <= admitted.position {
                return Err(ServiceError::Internal(format!(
                    "the log placed an appended record at {position}, at or before position {} already folded",
                    admitted.position
                )));
            }
            if position > admitted.position + 1 {
                self.fold_from_log(admitted, position - 1).await?;
            }
            admitted.position = position;
            match admitted.stream_versions.get_mut(stream) {
                Some(version) => *version = position,
                None => {
                    admitted.stream_versions.insert(stream.to_owned(), position);
                }
            }
        }
        Ok(())
    }
}

/// Where one event of an appended batch ended up, in batch order.
#[derive(Debug)]
pub(crate) struct Placed {
    position: u64,
    duplicate: bool,
    warnings: Vec<FieldError>,
}

/// Why a batch was not appended.
#[derive(Debug)]
pub(crate) enum AdmitError {
    /// Some event was refused or conflicts: every event's verdict, in order.
    Refused(Vec<EventVerdict>),
    /// Not about the events: the log is unavailable, someone wrote first, a bug.
    Service(ServiceError),
}

#[cfg(test)]
mod tests {
    //! The state after folding an appended batch from the batch itself (and
    //! the log only for others' records) is the state a full catch-up from
    //! the log gives: with nobody else writing, with another writer
    //! appending between ingest's catch-up and its append, and when that
    //! writer moved a stream of the batch (the retry).

    use std::{future::Future, pin::Pin, sync::Mutex};

    use domain::ClinicalDate;
    use eventlog::{EmbeddedLog, EmbeddedOptions, LogError};
    use futures::stream::BoxStream;
    use proto::v1::{self, event::Body};

    use super::*;

    type LogFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LogError>> + Send + 'a>>;

    /// A log on which "another writer" appends its queued batch just before
    /// ingest's next append reaches the log: after ingest's catch-up.
    #[derive(Debug)]
    struct Interleaving {
        inner: Arc<dyn EventLog>,
        before_next_append: Mutex<Option<AppendBatch>>,
    }

    impl Interleaving {
        fn queue(&self, batch: AppendBatch) {
            *self.before_next_append.lock().expect("not poisoned") = Some(batch);
        }
    }

    // Written out as `async_trait` expands it (the crate does not depend on it).
    impl EventLog for Interleaving {
        fn append<'life0, 'async_trait>(
            &'life0 self,
            batch: AppendBatch,
        ) -> LogFuture<'async_trait, Vec<AppendOutcome>>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move {
                let queued = self.before_next_append.lock().expect("not poisoned").take();
                if let Some(other) = queued {
                    self.inner.append(other).await?;
                }
                self.inner.append(batch).await
            })
        }

        fn read<'life0, 'async_trait>(
            &'life0 self,
            from: u64,
            max: usize,
        ) -> LogFuture<'async_trait, Vec<Record>>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            self.inner.read(from, max)
        }

        fn head<'life0, 'async_trait>(&'life0 self) -> LogFuture<'async_trait, u64>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            self.inner.head()
        }

        fn stream_version<'life0, 'life1, 'async_trait>(
            &'life0 self,
            stream: &'life1 str,
        ) -> LogFuture<'async_trait, u64>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            self.inner.stream_version(stream)
        }

        fn tail(&self, from: u64) -> BoxStream<'static, Result<Record, LogError>> {
            self.inner.tail(from)
        }
    }

    fn today() -> ClinicalDate {
        ClinicalDate::from_ymd(2026, 1, 1).expect("a date")
    }

    fn message(event_id: &str, patient: &str, occurred_on: &str, body: Body) -> v1::Event {
        v1::Event {
            event_id: event_id.to_owned(),
            centre: "leeds".to_owned(),
            patient: patient.to_owned(),
            occurred_on: occurred_on.to_owned(),
            body: Some(body),
        }
    }

    fn registered(event_id: &str, patient: &str) -> v1::Event {
        message(
            event_id,
            patient,
            "2020-01-06",
            Body::PatientRegistered(v1::PatientRegistered::default()),
        )
    }

    fn injected(event_id: &str, patient: &str, occurred_on: &str) -> v1::Event {
        message(
            event_id,
            patient,
            occurred_on,
            Body::InjectionAdministered(v1::InjectionAdministered {
                product: "onabotulinumtoxinA".to_owned(),
                total_units: 200,
                guidance: "emg".to_owned(),
                muscles: vec![v1::MuscleDose {
                    muscle: "sternocleidomastoid".to_owned(),
                    side: "left".to_owned(),
                    units: 200,
                }],
            }),
        )
    }

    fn voided(event_id: &str, patient: &str, target: &str) -> v1::Event {
        message(
            event_id,
            patient,
            "2020-04-01",
            Body::EventVoided(v1::EventVoided {
                target_event_id: target.to_owned(),
                reason: "entered in error".to_owned(),
            }),
        )
    }

    fn event(message: v1::Event) -> Event {
        proto::convert::event_from_proto(message, today()).expect("a valid test event")
    }

    fn parsed(messages: Vec<v1::Event>) -> Vec<(String, Result<Event, domain::Refusal>)> {
        messages
            .into_iter()
            .map(|message| {
                let event_id = message.event_id.clone();
                (event_id, proto::convert::event_from_proto(message, today()))
            })
            .collect()
    }

    /// The records another writer (the CLI, a second ingest) appends.
    fn other_writer(messages: Vec<v1::Event>) -> AppendBatch {
        AppendBatch::new(
            messages
                .into_iter()
                .map(|message| {
                    let event = event(message);
                    NewRecord {
                        key: event.event_id.as_str().to_owned(),
                        stream: stream_of(&event),
                        principal: "another writer".to_owned(),
                        payload: proto::convert::encode_event(&event),
                    }
                })
                .collect(),
        )
    }

    struct Fixture {
        _directory: tempfile::TempDir,
        log: Arc<Interleaving>,
        state: AdmissionState,
    }

    async fn fixture() -> Fixture {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let inner: Arc<dyn EventLog> = Arc::new(
            EmbeddedLog::open(directory.path().join("log"), EmbeddedOptions::default())
                .expect("an embedded log"),
        );
        let log = Arc::new(Interleaving {
            inner,
            before_next_append: Mutex::new(None),
        });
        let (checkpointer, restored) = Checkpointer::open(
            &directory.path().join("checkpoint"),
            "ingest",
            true,
            |snapshot: AdmittedSnapshot| Admitted::restore(snapshot, 0),
        )
        .await
        .expect("a checkpointer");
        assert!(restored.is_none());
        let state = AdmissionState::new(
            Arc::clone(&log) as Arc<dyn EventLog>,
            checkpointer,
            Admitted::default(),
        );
        Fixture {
            _directory: directory,
            log,
            state,
        }
    }

    /// The state a catch-up from position 1 gives.
    async fn folded_from_the_log(log: &dyn EventLog) -> Admitted {
        let mut reference = Admitted::default();
        for record in log.read(1, usize::MAX).await.expect("the log reads") {
            reference.fold(&record).expect("a stored event decodes");
        }
        reference
    }

    /// Events whose verdicts depend on everything admission knows: every
    /// stored event again (duplicate), every patient registered again and
    /// injected again (refused or accepted, with warnings from its live
    /// injections), and every injection voided (refused once voided).
    async fn probes(log: &dyn EventLog) -> Vec<Event> {
        let records = log.read(1, usize::MAX).await.expect("the log reads");
        let mut probes = Vec::new();
        for record in &records {
            let stored = decode_event(&record.payload).expect("a stored event decodes");
            let patient = stored.patient.as_str().to_owned();
            probes.push(event(registered("probe-registration", &patient)));
            probes.push(event(injected("probe-injection", &patient, "2020-03-02")));
            probes.push(event(voided(
                "probe-void",
                &patient,
                stored.event_id.as_str(),
            )));
            probes.push(stored);
        }
        probes
    }

    async fn assert_same_as_a_full_catch_up(fixture: &Fixture, exact: bool) {
        let ours = fixture.state.state.lock().await;
        let reference = folded_from_the_log(fixture.log.as_ref()).await;
        assert!(!ours.stale);
        assert_eq!(ours.position, reference.position);
        assert_eq!(ours.stream_versions, reference.stream_versions);
        assert_eq!(
            ours.admission.event_count(),
            reference.admission.event_count()
        );
        for probe in probes(fixture.log.as_ref()).await {
            assert_eq!(
                ours.admission.check(&probe, &WriterScope::AnyCentre),
                reference.admission.check(&probe, &WriterScope::AnyCentre),
                "{probe:?}"
            );
        }
        if exact {
            // Folded in the same order: the very same state, byte for byte.
            assert_eq!(
                encode(&ours.admission.snapshot()).expect("encodes"),
                encode(&reference.admission.snapshot()).expect("encodes")
            );
        }
    }

    async fn admit(fixture: &Fixture, messages: Vec<v1::Event>) -> Vec<Stored> {
        fixture
            .state
            .admit_and_append(parsed(messages), &WriterScope::AnyCentre, "ingest")
            .await
            .unwrap_or_else(|error| panic!("the batch was not appended: {error:?}"))
    }

    #[tokio::test]
    async fn with_nobody_else_writing_the_state_is_the_full_catch_up_exactly() {
        let fixture = fixture().await;
        let stored = admit(
            &fixture,
            vec![
                registered("e-1", "L-1"),
                injected("e-2", "L-1", "2020-02-01"),
                registered("e-3", "L-2"),
                registered("e-3", "L-2"),
            ],
        )
        .await;
        let placed: Vec<_> = stored
            .iter()
            .map(|stored| (stored.position, stored.duplicate))
            .collect();
        assert_eq!(placed, vec![(1, false), (2, false), (3, false), (3, true)]);
        admit(
            &fixture,
            vec![voided("e-4", "L-1", "e-2"), registered("e-1", "L-1")],
        )
        .await;
        assert_same_as_a_full_catch_up(&fixture, true).await;
        // Nothing was read back from the log: every record was ingest's own.
        assert_eq!(fixture.state.records_folded_here().await, 0);
    }

    #[tokio::test]
    async fn another_writer_appending_between_catch_up_and_append_is_folded_from_the_log() {
        let fixture = fixture().await;
        admit(
            &fixture,
            vec![
                registered("e-1", "L-1"),
                injected("e-2", "L-1", "2020-02-01"),
            ],
        )
        .await;
        // Before ingest's catch-up: read by the catch-up.
        fixture
            .log
            .inner
            .append(other_writer(vec![
                registered("o-1", "L-3"),
                injected("o-2", "L-3", "2020-02-01"),
            ]))
            .await
            .expect("the other writer appends");
        // After ingest's catch-up, before its append: the gap.
        fixture.log.queue(other_writer(vec![
            registered("o-3", "L-4"),
            injected("o-4", "L-4", "2020-02-03"),
            voided("o-5", "L-3", "o-2"),
        ]));
        let stored = admit(
            &fixture,
            vec![
                injected("e-5", "L-1", "2020-05-01"),
                registered("e-6", "L-5"),
                voided("e-7", "L-1", "e-2"),
            ],
        )
        .await;
        let positions: Vec<_> = stored.iter().map(|stored| stored.position).collect();
        assert_eq!(positions, vec![8, 9, 10]);
        // Ours were admitted before the gap's records were seen, so the
        // state's internal order differs; what admission decides does not.
        assert_same_as_a_full_catch_up(&fixture, false).await;
        assert_eq!(fixture.state.records_folded_here().await, 5);

        // And the next batch, with nobody in between, keeps it so.
        admit(
            &fixture,
            vec![
                registered("e-8", "L-6"),
                injected("e-9", "L-4", "2020-06-01"),
            ],
        )
        .await;
        assert_same_as_a_full_catch_up(&fixture, false).await;
    }

    #[tokio::test]
    async fn a_stream_moved_by_another_writer_is_admitted_again_against_the_log() {
        let fixture = fixture().await;
        admit(&fixture, vec![registered("e-1", "L-1")]).await;
        // The other writer registers L-2 after ingest's catch-up: ingest's
        // batch expects L-2's stream empty, the log refuses it, and ingest
        // admits it again from the log's state: now a duplicate.
        fixture
            .log
            .queue(other_writer(vec![registered("o-1", "L-2")]));
        let stored = admit(
            &fixture,
            vec![
                registered("o-1", "L-2"),
                injected("e-2", "L-2", "2020-02-01"),
                injected("e-3", "L-1", "2020-02-01"),
            ],
        )
        .await;
        let placed: Vec<_> = stored
            .iter()
            .map(|stored| (stored.position, stored.duplicate))
            .collect();
        assert_eq!(placed, vec![(2, true), (3, false), (4, false)]);
        // Restored (from nothing) and caught up from the log, then admitted
        // in log order: the same state exactly.
        assert_same_as_a_full_catch_up(&fixture, true).await;
    }
}
