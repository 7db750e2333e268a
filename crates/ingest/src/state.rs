//! The ingest service's projection: the admission state of the log (every
//! event id, registration and live injection; see `domain::admission`),
//! kept up to date by reading the log after every append, and checkpointed
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
            .insert(record.stream.clone(), record.position);
        Ok(())
    }
}

/// One event of a batch after admission.
#[derive(Debug)]
pub(crate) struct EventVerdict {
    pub(crate) event_id: String,
    pub(crate) verdict: Verdict,
    pub(crate) event: Option<Event>,
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
    /// checkpoint first when a refused batch left it stale).
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
        loop {
            let records = self
                .log
                .read(admitted.position + 1, CATCH_UP_CHUNK)
                .await
                .map_err(ServiceError::from)?;
            if records.is_empty() {
                return Ok(());
            }
            for record in &records {
                admitted.fold(record).map_err(|reason| {
                    ServiceError::Internal(format!(
                        "cannot read back log position {}: {reason}",
                        record.position
                    ))
                })?;
            }
        }
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
            match self.admit_once(parsed.clone(), writer, principal).await {
                Err(AdmitError::Service(ServiceError::Aborted(reason)))
                    if attempt < ATTEMPTS_ON_CONFLICT =>
                {
                    tracing::warn!(%reason, attempt, "append refused on a stream version, admitting again");
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    async fn admit_once(
        &self,
        parsed: Vec<(String, Result<Event, domain::Refusal>)>,
        writer: &WriterScope,
        principal: &str,
    ) -> Result<Vec<Stored>, AdmitError> {
        let mut admitted = self.state.lock().await;
        if let Err(error) = self.catch_up(&mut admitted).await {
            return Err(AdmitError::Service(error));
        }
        let mut verdicts = Vec::with_capacity(parsed.len());
        let mut applied_any = false;
        let mut failed = false;
        for (event_id, event) in parsed {
            let verdict = match &event {
                Ok(event) => admitted.admission.check_and_apply(event, writer),
                Err(_) => admitted
                    .admission
                    .check_parsed(Some(&event_id), &event, writer),
            };
            applied_any |= matches!(verdict, Verdict::Accepted { .. });
            failed |= !verdict.is_success();
            verdicts.push(EventVerdict {
                event_id,
                verdict,
                event: event.ok(),
            });
        }
        if failed {
            admitted.stale |= applied_any;
            return Err(AdmitError::Refused(verdicts));
        }
        // One record per event id: an event repeated within the batch is a
        // duplicate of its first occurrence and is not sent to the log again.
        let mut records = Vec::with_capacity(verdicts.len());
        let mut record_of_event = Vec::with_capacity(verdicts.len());
        let mut first_record: HashMap<String, usize> = HashMap::new();
        let mut expectations: HashMap<String, ExpectedVersion> = HashMap::new();
        for judged in &verdicts {
            let Some(event) = &judged.event else {
                admitted.stale |= applied_any;
                return Err(AdmitError::Service(ServiceError::Internal(format!(
                    "event {} was admitted without being valid",
                    judged.event_id
                ))));
            };
            if let Some(&index) = first_record.get(&judged.event_id) {
                record_of_event.push((index, true));
                continue;
            }
            let stream = stream_of(event);
            if matches!(judged.verdict, Verdict::Accepted { .. }) {
                let version = admitted.stream_versions.get(&stream).copied().unwrap_or(0);
                expectations
                    .entry(stream.clone())
                    .or_insert(if version == 0 {
                        ExpectedVersion::Empty
                    } else {
                        ExpectedVersion::At(version)
                    });
            }
            first_record.insert(judged.event_id.clone(), records.len());
            record_of_event.push((records.len(), false));
            records.push(NewRecord {
                key: judged.event_id.clone(),
                stream,
                principal: principal.to_owned(),
                payload: proto::convert::encode_event(event),
            });
        }
        let mut batch = AppendBatch::new(records);
        batch.expectations = expectations.into_iter().collect();
        let outcomes = match self.log.append(batch).await {
            Ok(outcomes) => outcomes,
            Err(error) => {
                admitted.stale |= applied_any;
                return Err(AdmitError::Service(ServiceError::from(error)));
            }
        };
        // The admission already holds this batch's new events: read the log
        // up to its new head, folding only what someone else wrote.
        let ours: std::collections::HashSet<u64> = outcomes
            .iter()
            .filter_map(|outcome| match outcome {
                AppendOutcome::Appended { position } => Some(*position),
                AppendOutcome::Duplicate { .. } => None,
            })
            .collect();
        if let Err(error) = self.skip_our_own(&mut admitted, &ours).await {
            admitted.stale = true;
            return Err(AdmitError::Service(error));
        }
        let mut stored = Vec::with_capacity(verdicts.len());
        for (judged, (record, repeated)) in verdicts.into_iter().zip(record_of_event) {
            let Some(outcome) = outcomes.get(record) else {
                return Err(AdmitError::Service(ServiceError::Internal(format!(
                    "the log answered {} outcomes for {} records",
                    outcomes.len(),
                    record + 1
                ))));
            };
            stored.push(Stored {
                event_id: judged.event_id,
                position: outcome.position(),
                duplicate: repeated || matches!(outcome, AppendOutcome::Duplicate { .. }),
                warnings: match judged.verdict {
                    Verdict::Accepted { warnings } if !repeated => warnings,
                    _ => Vec::new(),
                },
            });
        }
        Ok(stored)
    }

    /// After an append: reads the log past the state's position, folding
    /// the records not in `ours` (those are in the state already).
    async fn skip_our_own(
        &self,
        admitted: &mut Admitted,
        ours: &std::collections::HashSet<u64>,
    ) -> Result<(), ServiceError> {
        let Some(&last_ours) = ours.iter().max() else {
            return Ok(());
        };
        while admitted.position < last_ours {
            let records = self
                .log
                .read(admitted.position + 1, CATCH_UP_CHUNK)
                .await
                .map_err(ServiceError::from)?;
            if records.is_empty() {
                return Err(ServiceError::Internal(format!(
                    "appended position {last_ours} cannot be read back"
                )));
            }
            for record in &records {
                if ours.contains(&record.position) {
                    admitted.position = record.position;
                    admitted
                        .stream_versions
                        .insert(record.stream.clone(), record.position);
                } else {
                    admitted.fold(record).map_err(|reason| {
                        ServiceError::Internal(format!(
                            "cannot read back log position {}: {reason}",
                            record.position
                        ))
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// Why a batch was not appended.
#[derive(Debug)]
pub(crate) enum AdmitError {
    /// Some event was refused or conflicts: every event's verdict, in order.
    Refused(Vec<EventVerdict>),
    /// Not about the events: the log is unavailable, someone wrote first, a bug.
    Service(ServiceError),
}
