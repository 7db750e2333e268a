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
//! Batches are admitted one at a time (a mutex around the state), in the
//! order the calls arrived (a ticket taken on entry; also when a batch is
//! admitted again), and
//! appended in the same order, one at a time, which is what makes "checked
//! as if each accepted event had been appended before the next" hold across
//! concurrent callers; but the lock is not held across the append: the next
//! batch is admitted and encoded while the previous one's append is in
//! flight, and its verdicts stand only once every batch before it was
//! appended (see [`AdmissionState`]). The log's per-stream expected versions
//! guard against another ingest process writing the same patients.

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

/// How many times a batch is admitted when batches before it in the
/// pipeline were not appended (each of those judged it on events that are
/// not stored).
const MOST_ADMISSIONS: u32 = 8;

/// Events handled between two yields to the runtime: validating, admitting
/// and encoding a batch of thousands of events is milliseconds of CPU, and
/// the log's client (async-nats) shares the runtime's threads; without a
/// yield, a batch's append in flight waits for its acknowledgement to be
/// read until the next batch's work is done.
const EVENTS_BETWEEN_YIELDS: usize = 128;

/// Lets the runtime run other tasks every [`EVENTS_BETWEEN_YIELDS`] events.
pub(crate) async fn yield_now_and_then(index: usize) {
    if index % EVENTS_BETWEEN_YIELDS == EVENTS_BETWEEN_YIELDS - 1 {
        tokio::task::yield_now().await;
    }
}

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
    /// The batches admitted and not finished yet (kept across a restore).
    pipeline: Pipeline,
}

/// The order of admitted batches. Each admitted batch gets the next
/// sequence number; batches append, and finish, in that order. The admission
/// holds the events of every batch admitted so far, so a batch is judged as
/// if every batch before it were appended; when one of those is not
/// appended, the state is stale and the batches after it are admitted again.
#[derive(Debug, Default)]
struct Pipeline {
    /// The sequence number of the last batch admitted (from 1).
    admitted_through: u64,
    /// Every batch up to this one has finished (appended or not).
    finished_through: u64,
    /// Admissions and snapshots waiting for the pipeline to empty, holding
    /// new admissions back meanwhile.
    pausers: u32,
    /// Batches not appended since the last restore (their events made the
    /// state stale): a batch after one of them must be admitted again.
    failed: Vec<u64>,
    /// The streams batches in flight write.
    pending: HashMap<String, PendingStream>,
    /// The ticket the next call gets: calls take one, in the order they
    /// reach [`AdmissionState::admit_and_append`], before anything else.
    next_ticket: u64,
    /// The tickets of calls waiting to be admitted (for the first time, or
    /// again): a call is admitted only when no call that arrived before it
    /// is waiting, so admissions keep the calls' order of arrival also
    /// when several waiters are woken at once (after a snapshot, a failed
    /// append or a drained re-admission) and race for the lock.
    waiting: std::collections::BTreeSet<u64>,
}

/// A stream written by a batch in flight.
#[derive(Debug)]
struct PendingStream {
    /// The last batch admitted that writes it.
    latest: u64,
    /// The last batch that appended to it, and its last position there.
    written: Option<(u64, u64)>,
}

/// What waiting batches watch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Turns {
    admitted_through: u64,
    finished_through: u64,
    pausers: u32,
    /// The first ticket waiting to be admitted (`u64::MAX`: none).
    first_waiting: u64,
}

impl Pipeline {
    fn in_flight(&self) -> u64 {
        self.admitted_through - self.finished_through
    }

    /// The sequence number of a newly admitted batch.
    fn admit(&mut self) -> u64 {
        self.admitted_through += 1;
        self.admitted_through
    }

    fn turns(&self) -> Turns {
        Turns {
            admitted_through: self.admitted_through,
            finished_through: self.finished_through,
            pausers: self.pausers,
            first_waiting: self.first_waiting(),
        }
    }

    fn first_waiting(&self) -> u64 {
        self.waiting.first().copied().unwrap_or(u64::MAX)
    }
}

/// What an admission waits for before it may go on.
enum Wait {
    /// No call that arrived before this ticket waits to be admitted.
    Earlier(u64),
    /// Every batch up to this one finished.
    Finished(u64),
    /// No snapshot or drained admission holds admissions back.
    Unpaused,
}

/// The stream version a batch expects, known at admission or once the batch
/// in flight before it that writes the same stream is appended.
#[derive(Debug, Clone, Copy)]
enum Expected {
    Known(ExpectedVersion),
    AfterBatch(u64),
}

/// How one admission of a batch ended.
enum Attempt {
    Done(Result<Vec<Placed>, AdmitError>),
    /// Judged on events that are not stored, or refused without a catch-up
    /// with the log: admit again (`drained`: once no batch is in flight).
    Again {
        drained: bool,
    },
}

/// The log records of an accepted batch (one per event id; an event
/// repeated within the batch is a duplicate of its first occurrence and is
/// not sent again), and for each event its record and whether it repeats.
#[allow(clippy::type_complexity)]
async fn prepare_records(
    parsed: &[(String, Result<Event, domain::Refusal>)],
    verdicts: &[Verdict],
    stream_of_event: Vec<Option<String>>,
    principal: &str,
) -> Result<(Vec<NewRecord>, Vec<(usize, bool)>), ServiceError> {
    let mut records = Vec::with_capacity(verdicts.len());
    let mut record_of_event = Vec::with_capacity(verdicts.len());
    let mut first_record: HashMap<&str, usize> = HashMap::with_capacity(verdicts.len());
    for (index, ((event_id, event), stream)) in parsed.iter().zip(stream_of_event).enumerate() {
        yield_now_and_then(index).await;
        let (Ok(event), Some(stream)) = (event, stream) else {
            return Err(ServiceError::Internal(format!(
                "event {event_id} was admitted without being valid"
            )));
        };
        if let Some(&index) = first_record.get(event_id.as_str()) {
            record_of_event.push((index, true));
            continue;
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
    Ok((records, record_of_event))
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
            pipeline: Pipeline::default(),
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
///
/// Batches go through a pipeline: a batch is admitted under the lock (on
/// the state holding every batch admitted before it), encoded outside it,
/// then waits for its turn (every earlier batch finished) and appends
/// outside the lock, so the next batch is admitted and encoded while this
/// one's append is in flight. Appends stay in admission order, one at a
/// time. A batch's verdicts stand only if every batch before it was
/// appended: when one was not (the log refused it or failed, or it was
/// refused after admitting some of its events), the state is stale, and
/// every batch admitted after it is admitted again once the pipeline has
/// emptied and the state is restored (from the checkpoint, then the log),
/// exactly as if the failed batch had never been. A stream written by a
/// batch in flight is expected, by the next batch writing it, at the
/// position that batch appended there; other streams at their version when
/// admitted.
#[derive(Debug)]
pub(crate) struct AdmissionState {
    log: Arc<dyn EventLog>,
    checkpointer: Checkpointer,
    state: tokio::sync::Mutex<Admitted>,
    /// The pipeline's progress, for batches waiting for their turn.
    turns: tokio::sync::watch::Sender<Turns>,
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
        let (turns, _) = tokio::sync::watch::channel(admitted.pipeline.turns());
        Self {
            log,
            checkpointer,
            state: tokio::sync::Mutex::new(admitted),
            turns,
        }
    }

    /// The projection's snapshot, for [`Checkpointer::save`]: nothing while
    /// the state is stale or has nothing past the last checkpoint. Taken
    /// with no batch in flight (their events are in the admission, their
    /// positions not yet): holds new admissions back until the pipeline
    /// empties (it runs on a blocking thread of the runtime).
    pub(crate) fn snapshotter(self: &Arc<Self>) -> Snapshotter {
        let state = Arc::clone(self);
        Box::new(move |saved| {
            let taken = tokio::runtime::Handle::current().block_on(state.quiet_snapshot(saved));
            match taken {
                Some((position, snapshot)) => Ok(Some((position, encode(&snapshot)?))),
                None => Ok(None),
            }
        })
    }

    /// The snapshot once no batch is in flight (see [`Self::snapshotter`]).
    async fn quiet_snapshot(&self, saved: u64) -> Option<(u64, AdmittedSnapshot)> {
        let mut pausing = false;
        let mut turns = self.turns.subscribe();
        loop {
            let mut admitted = self.state.lock().await;
            if admitted.pipeline.in_flight() == 0 || admitted.stale {
                if pausing {
                    admitted.pipeline.pausers -= 1;
                    self.publish(&admitted);
                }
                if admitted.stale || admitted.position <= saved {
                    return None;
                }
                return Some((admitted.position, admitted.snapshot()));
            }
            if !pausing {
                pausing = true;
                admitted.pipeline.pausers += 1;
                self.publish(&admitted);
            }
            let through = admitted.pipeline.admitted_through;
            drop(admitted);
            if turns
                .wait_for(|turns| turns.finished_through >= through)
                .await
                .is_err()
            {
                // The sender lives as long as `self`: cannot happen.
                return None;
            }
        }
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
            let mut pipeline = std::mem::take(&mut admitted.pipeline);
            // Restored only with no batch in flight: none is pending, and
            // the failed ones have all finished.
            pipeline.failed.clear();
            pipeline.pending.clear();
            *admitted = match restored {
                Some((position, fresh)) => Admitted { position, ..fresh },
                None => Admitted::default(),
            };
            admitted.folded_here = folded_here;
            admitted.pipeline = pipeline;
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

    /// [`AdmissionState::admit_and_append_as`] with [`AppendUnit::Atomic`].
    #[cfg(test)]
    pub(crate) async fn admit_and_append(
        self: &Arc<Self>,
        parsed: Vec<(String, Result<Event, domain::Refusal>)>,
        writer: WriterScope,
        principal: String,
    ) -> Result<Vec<Stored>, AdmitError> {
        self.admit_and_append_as(parsed, writer, principal, AppendUnit::Atomic)
            .await
    }

    /// Admits a batch: every event checked as if the ones before it were
    /// appended; all accepted (or duplicates) → appended as `unit` says (in
    /// one atomic batch, or a whole import in the log's atomic batches, see
    /// [`AppendUnit`]); otherwise nothing is appended and every refusal
    /// comes back.
    ///
    /// Runs on a task of its own, so a caller going away (a cancelled call)
    /// never leaves a batch half-way through the pipeline: it keeps its turn
    /// and finishes (see [`AdmissionState`]).
    ///
    /// When the log refuses the batch because a patient's stream moved
    /// (another writer got there first), the state is restored from the
    /// checkpoint, brought to the log's head, and the batch
    /// admitted again, up to [`ATTEMPTS_ON_CONFLICT`] times in all: the
    /// events are judged against what is really stored, and a retry can
    /// never store anything twice (ids are idempotency keys).
    pub(crate) async fn admit_and_append_as(
        self: &Arc<Self>,
        parsed: Vec<(String, Result<Event, domain::Refusal>)>,
        writer: WriterScope,
        principal: String,
        unit: AppendUnit,
    ) -> Result<Vec<Stored>, AdmitError> {
        // The call's place in the order of arrival, taken before the task
        // is spawned (a runtime may run spawned tasks in any order).
        let ticket = {
            let mut admitted = self.state.lock().await;
            let ticket = admitted.pipeline.next_ticket;
            admitted.pipeline.next_ticket += 1;
            admitted.pipeline.waiting.insert(ticket);
            self.publish(&admitted);
            ticket
        };
        let state = Arc::clone(self);
        let outcome = tokio::spawn(async move {
            let outcome = state
                .admit_in_turn(ticket, parsed, &writer, &principal, unit)
                .await;
            state.leave(ticket).await;
            outcome
        })
        .await;
        outcome.unwrap_or_else(|error| {
            // The task panicked before it left the queue: leave it here,
            // or every later call would wait for this one forever.
            let state = Arc::clone(self);
            tokio::spawn(async move { state.leave(ticket).await });
            Err(AdmitError::Service(ServiceError::Internal(format!(
                "the admission task failed: {error}"
            ))))
        })
    }

    /// Takes a call that is done out of the admission queue.
    async fn leave(&self, ticket: u64) {
        let mut admitted = self.state.lock().await;
        if admitted.pipeline.waiting.remove(&ticket) {
            self.publish(&admitted);
        }
    }

    async fn admit_in_turn(
        &self,
        ticket: u64,
        parsed: Vec<(String, Result<Event, domain::Refusal>)>,
        writer: &WriterScope,
        principal: &str,
        unit: AppendUnit,
    ) -> Result<Vec<Stored>, AdmitError> {
        let mut attempt = 1;
        let mut admissions = 1;
        let mut drained = false;
        loop {
            match self
                .admit_once(ticket, &parsed, writer, principal, drained, unit)
                .await
            {
                Attempt::Again { drained: wanted } if admissions < MOST_ADMISSIONS => {
                    admissions += 1;
                    drained |= wanted;
                }
                Attempt::Again { .. } => {
                    return Err(AdmitError::Service(ServiceError::Unavailable(format!(
                        "the batch was admitted {MOST_ADMISSIONS} times, each time after a batch before it was not appended"
                    ))));
                }
                Attempt::Done(Err(AdmitError::Service(ServiceError::Aborted(reason))))
                    if attempt < ATTEMPTS_ON_CONFLICT =>
                {
                    tracing::warn!(%reason, attempt, "append refused on a stream version, admitting again");
                    attempt += 1;
                }
                Attempt::Done(Ok(placed)) => {
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
                Attempt::Done(Err(error)) => return Err(error),
            }
        }
    }

    /// Publishes the pipeline's progress to the batches waiting on it.
    fn publish(&self, admitted: &Admitted) {
        self.turns.send_replace(admitted.pipeline.turns());
    }

    /// The state, once a batch may be admitted on it: no call that arrived
    /// before this one (an earlier `ticket`) is waiting to be admitted, no snapshot or
    /// drained admission is waiting for the pipeline to empty, and a stale
    /// state (which only an empty pipeline may restore) has no batch in
    /// flight. With `drained`, also waits until no batch is in flight
    /// (holding new admissions back meanwhile), so the batch is judged
    /// after a catch-up with the log's head.
    /// The call leaves the queue of waiting tickets when it gets the state.
    async fn lock_for_admission(
        &self,
        ticket: u64,
        drained: bool,
    ) -> Result<tokio::sync::MutexGuard<'_, Admitted>, ServiceError> {
        let mut pausing = false;
        let mut turns = self.turns.subscribe();
        loop {
            let mut admitted = self.state.lock().await;
            let in_flight = admitted.pipeline.in_flight();
            let awaited = if admitted.pipeline.first_waiting() < ticket {
                // An earlier call goes first; a drained admission stops
                // holding admissions back meanwhile (it would hold back
                // the very call it waits for).
                if pausing {
                    pausing = false;
                    admitted.pipeline.pausers -= 1;
                    self.publish(&admitted);
                }
                Wait::Earlier(ticket)
            } else if drained {
                if in_flight == 0 {
                    if pausing {
                        admitted.pipeline.pausers -= 1;
                    }
                    admitted.pipeline.waiting.remove(&ticket);
                    self.publish(&admitted);
                    return Ok(admitted);
                }
                if !pausing {
                    pausing = true;
                    admitted.pipeline.pausers += 1;
                    self.publish(&admitted);
                }
                Wait::Finished(admitted.pipeline.admitted_through)
            } else if admitted.pipeline.pausers > 0 {
                Wait::Unpaused
            } else if admitted.stale && in_flight > 0 {
                Wait::Finished(admitted.pipeline.admitted_through)
            } else {
                if admitted.pipeline.waiting.remove(&ticket) {
                    self.publish(&admitted);
                }
                return Ok(admitted);
            };
            drop(admitted);
            let waited = match awaited {
                Wait::Earlier(ticket) => turns
                    .wait_for(|turns| turns.first_waiting >= ticket)
                    .await
                    .map(drop),
                Wait::Finished(through) => turns
                    .wait_for(|turns| turns.finished_through >= through)
                    .await
                    .map(drop),
                Wait::Unpaused => turns.wait_for(|turns| turns.pausers == 0).await.map(drop),
            };
            waited.map_err(|_| {
                ServiceError::Internal("the admission pipeline went away".to_owned())
            })?;
        }
    }

    /// Ends batch `sequence`'s turn: the next batch may append.
    fn finish(&self, admitted: &mut Admitted, sequence: u64, streams: &[String]) {
        let pipeline = &mut admitted.pipeline;
        for stream in streams {
            if pipeline
                .pending
                .get(stream)
                .is_some_and(|pending| pending.latest == sequence)
            {
                pipeline.pending.remove(stream);
            }
        }
        pipeline.finished_through = sequence;
        self.publish(admitted);
    }

    /// Ends batch `sequence`'s turn as not appended: its events stay in the
    /// admission, so the state is stale, and every batch admitted after it
    /// so far must be admitted again.
    fn finish_failed(&self, admitted: &mut Admitted, sequence: u64, streams: &[String]) {
        admitted.stale = true;
        admitted.pipeline.failed.push(sequence);
        self.finish(admitted, sequence, streams);
    }

    async fn admit_once(
        &self,
        ticket: u64,
        parsed: &[(String, Result<Event, domain::Refusal>)],
        writer: &WriterScope,
        principal: &str,
        drained: bool,
        unit: AppendUnit,
    ) -> Attempt {
        // 1. Admission, under the lock, on the state with every batch
        //    admitted before this one (appended or in flight).
        let mut admitted = match self.lock_for_admission(ticket, drained).await {
            Ok(admitted) => admitted,
            Err(error) => return Attempt::Done(Err(AdmitError::Service(error))),
        };
        // Only an empty pipeline is caught up with the log's head: with
        // batches in flight their records are not folded yet. The streams'
        // expected versions guard the patients this batch writes; what
        // another writer appended meanwhile is folded in after them.
        let caught_up = admitted.pipeline.in_flight() == 0;
        if caught_up && let Err(error) = self.catch_up(&mut admitted).await {
            return Attempt::Done(Err(AdmitError::Service(error)));
        }
        let mut verdicts = Vec::with_capacity(parsed.len());
        let mut applied_any = false;
        let mut failed = false;
        for (index, (event_id, event)) in parsed.iter().enumerate() {
            yield_now_and_then(index).await;
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
        let sequence = admitted.pipeline.admit();
        self.publish(&admitted);
        // The streams this batch writes, and what each is expected at: its
        // version now, or where the batch in flight before it leaves it.
        let mut streams: Vec<String> = Vec::new();
        let mut expected: Vec<Expected> = Vec::new();
        let mut stream_of_event: Vec<Option<String>> = Vec::with_capacity(parsed.len());
        if failed {
            if applied_any {
                admitted.stale = true;
                admitted.pipeline.failed.push(sequence);
            }
        } else {
            let mut written: std::collections::HashSet<String> = std::collections::HashSet::new();
            for ((_, event), verdict) in parsed.iter().zip(&verdicts) {
                let Ok(event) = event else {
                    stream_of_event.push(None);
                    continue;
                };
                let stream = stream_of(event);
                if matches!(verdict, Verdict::Accepted { .. }) && !written.contains(&stream) {
                    written.insert(stream.clone());
                    let pipeline = &mut admitted.pipeline;
                    let source = match pipeline.pending.get_mut(&stream) {
                        Some(pending) => {
                            let before = pending.latest;
                            pending.latest = sequence;
                            Expected::AfterBatch(before)
                        }
                        None => {
                            pipeline.pending.insert(
                                stream.clone(),
                                PendingStream {
                                    latest: sequence,
                                    written: None,
                                },
                            );
                            match admitted.stream_versions.get(&stream).copied() {
                                None | Some(0) => Expected::Known(ExpectedVersion::Empty),
                                Some(version) => Expected::Known(ExpectedVersion::At(version)),
                            }
                        }
                    };
                    streams.push(stream.clone());
                    expected.push(source);
                }
                stream_of_event.push(Some(stream));
            }
        }
        drop(admitted);

        // 2. Encoding, outside the lock: other batches are admitted meanwhile.
        let prepared = if failed {
            None
        } else {
            match prepare_records(parsed, &verdicts, stream_of_event, principal).await {
                Ok(prepared) => Some(prepared),
                Err(error) => {
                    // Finishing keeps the order: it waits for this batch's turn.
                    if let Err(wait) = self.wait_turn(sequence).await {
                        return Attempt::Done(Err(AdmitError::Service(wait)));
                    }
                    let mut admitted = self.state.lock().await;
                    self.finish_failed(&mut admitted, sequence, &streams);
                    return Attempt::Done(Err(AdmitError::Service(error)));
                }
            }
        };

        // 3. This batch's turn: every batch admitted before it is appended
        //    (or known not to be).
        if let Err(error) = self.wait_turn(sequence).await {
            return Attempt::Done(Err(AdmitError::Service(error)));
        }
        let mut admitted = self.state.lock().await;
        if admitted
            .pipeline
            .failed
            .iter()
            .any(|&failed| failed < sequence)
        {
            // Judged with events of a batch that was not appended: back in
            // the queue, in its place among the calls.
            admitted.pipeline.waiting.insert(ticket);
            self.finish(&mut admitted, sequence, &streams);
            return Attempt::Again { drained: false };
        }
        let Some((records, record_of_event)) = prepared else {
            if !caught_up {
                // Refused without a look at what other writers appended:
                // judge again, caught up.
                admitted.pipeline.waiting.insert(ticket);
                self.finish(&mut admitted, sequence, &streams);
                return Attempt::Again { drained: true };
            }
            self.finish(&mut admitted, sequence, &streams);
            return Attempt::Done(Err(AdmitError::Refused(
                parsed
                    .iter()
                    .zip(verdicts)
                    .map(|((event_id, _), verdict)| EventVerdict {
                        event_id: event_id.clone(),
                        verdict,
                    })
                    .collect(),
            )));
        };
        let mut expectations = Vec::with_capacity(streams.len());
        for (stream, source) in streams.iter().zip(&expected) {
            let version = match *source {
                Expected::Known(version) => version,
                Expected::AfterBatch(before) => match admitted
                    .pipeline
                    .pending
                    .get(stream)
                    .and_then(|pending| pending.written)
                {
                    Some((batch, position)) if batch == before => ExpectedVersion::At(position),
                    _ => {
                        // The batch before wrote nothing there after all
                        // (its record was already stored): judge again.
                        admitted.pipeline.waiting.insert(ticket);
                        self.finish_failed(&mut admitted, sequence, &streams);
                        return Attempt::Done(Err(AdmitError::Service(ServiceError::Aborted(
                            format!("stream {stream} was not written where this batch expected it"),
                        ))));
                    }
                },
            };
            expectations.push((stream.clone(), version));
        }
        drop(admitted);

        // 4. The append, outside the lock; the next batch waits for it.
        let record_streams: Vec<String> =
            records.iter().map(|record| record.stream.clone()).collect();
        let appended = append_records(self.log.as_ref(), records, expectations, unit).await;
        let mut admitted = self.state.lock().await;
        let outcomes = match appended {
            Ok(outcomes) => outcomes,
            Err(error) => {
                // Admitted again if a stream moved (see `admit_in_turn`).
                admitted.pipeline.waiting.insert(ticket);
                self.finish_failed(&mut admitted, sequence, &streams);
                return Attempt::Done(Err(AdmitError::Service(ServiceError::from(error))));
            }
        };
        if outcomes.len() != record_streams.len() {
            self.finish_failed(&mut admitted, sequence, &streams);
            return Attempt::Done(Err(AdmitError::Service(ServiceError::Internal(format!(
                "the log answered {} outcomes for {} records",
                outcomes.len(),
                record_streams.len()
            )))));
        }
        // The admission already holds this batch's new events: fold in their
        // positions from the outcomes, and read from the log only what
        // someone else appended before them.
        if let Err(error) = self
            .fold_appended(&mut admitted, &record_streams, &outcomes)
            .await
        {
            self.finish_failed(&mut admitted, sequence, &streams);
            return Attempt::Done(Err(AdmitError::Service(error)));
        }
        for (outcome, stream) in outcomes.iter().zip(&record_streams) {
            if let AppendOutcome::Appended { position } = outcome
                && let Some(pending) = admitted.pipeline.pending.get_mut(stream)
            {
                pending.written = Some((sequence, *position));
            }
        }
        self.finish(&mut admitted, sequence, &streams);
        drop(admitted);
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
        Attempt::Done(Ok(placed))
    }

    /// Waits until every batch admitted before `sequence` has finished.
    async fn wait_turn(&self, sequence: u64) -> Result<(), ServiceError> {
        self.turns
            .subscribe()
            .wait_for(|turns| turns.finished_through + 1 >= sequence)
            .await
            .map(drop)
            .map_err(|_| ServiceError::Internal("the admission pipeline went away".to_owned()))
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

/// How an admitted batch goes into the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppendUnit {
    /// One atomic append: every record is stored or none is (`Append`, and
    /// each batch of `AppendStream`). A batch larger than the log's atomic
    /// batch is refused by the log.
    Atomic,
    /// A whole import (`Import`): admitted as one, so a refusal anywhere
    /// appends nothing; then appended in consecutive parts of at most the
    /// log's atomic batch, each atomic on its own (see [`append_records`]).
    InLogBatches,
}

/// Appends `records` with `expectations` as `unit` says. In parts
/// ([`AppendUnit::InLogBatches`], more records than the log's atomic batch
/// holds): each part expects each stream it writes where the batch expected
/// it, or, once an earlier part appended to it, where that part left it
/// (an earlier part whose records there all came back as duplicates moved
/// nothing). When a part fails after records of the parts before it were
/// stored, those stay stored and the error becomes
/// [`eventlog::LogError::Unavailable`] saying how many (never a refusal, a
/// conflict or a new admission, which would hide them or report them as
/// duplicates): the caller's state then restores itself from the log (as
/// after any failed append), where it finds them, and a resend of the same
/// events finds them as duplicates.
async fn append_records(
    log: &dyn EventLog,
    records: Vec<NewRecord>,
    expectations: Vec<(String, ExpectedVersion)>,
    unit: AppendUnit,
) -> Result<Vec<AppendOutcome>, eventlog::LogError> {
    let most = match unit {
        AppendUnit::Atomic => None,
        AppendUnit::InLogBatches => log.most_records_per_append(),
    };
    let Some(most) = most.filter(|most| records.len() > *most) else {
        let mut batch = AppendBatch::new(records);
        batch.expectations = expectations;
        return log.append(batch).await;
    };
    let total = records.len();
    let mut expected: HashMap<String, ExpectedVersion> = expectations.into_iter().collect();
    let mut outcomes = Vec::with_capacity(records.len());
    let mut stored = 0;
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() {
        let part: Vec<NewRecord> = records.by_ref().take(most.max(1)).collect();
        let streams: Vec<String> = part.iter().map(|record| record.stream.clone()).collect();
        let mut batch = AppendBatch::new(part);
        let mut named = std::collections::HashSet::new();
        for stream in &streams {
            if let Some(version) = expected.get(stream)
                && named.insert(stream.as_str())
            {
                batch.expectations.push((stream.clone(), *version));
            }
        }
        let appended = match log.append(batch).await {
            Ok(appended) => appended,
            // Nothing of this call stored yet: the error as it is (a stream
            // that moved has the batch admitted again, see `admit_in_turn`).
            Err(error) if stored == 0 => return Err(error),
            // Part of it stored: neither a refusal nor a conflict can be
            // answered now without hiding that, and admitting it again
            // would report its own records as duplicates.
            Err(error) => {
                return Err(eventlog::LogError::Unavailable(format!(
                    "{stored} of the {total} records were stored before the log failed ({error}); send the same events again to store the rest (the stored ones come back as duplicates)"
                )));
            }
        };
        for (outcome, stream) in appended.iter().zip(streams) {
            if let AppendOutcome::Appended { position } = outcome {
                stored += 1;
                expected.insert(stream, ExpectedVersion::At(*position));
            }
        }
        outcomes.extend(appended);
    }
    Ok(outcomes)
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

    /// Everything of a test log but `append`, read from its `inner` log
    /// (written out as `async_trait` expands it; the crate does not depend
    /// on it).
    macro_rules! reads_from_inner {
        () => {
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
        };
    }

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

        reads_from_inner!();
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
        state: Arc<AdmissionState>,
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
        let state = new_state(Arc::clone(&log) as Arc<dyn EventLog>, directory.path()).await;
        Fixture {
            _directory: directory,
            log,
            state,
        }
    }

    /// A new admission state on `log`, with no checkpoint yet in `directory`.
    async fn new_state(log: Arc<dyn EventLog>, directory: &std::path::Path) -> Arc<AdmissionState> {
        let (checkpointer, restored) = Checkpointer::open(
            &directory.join("checkpoint"),
            "ingest",
            true,
            |snapshot: AdmittedSnapshot| Admitted::restore(snapshot, 0),
        )
        .await
        .expect("a checkpointer");
        assert!(restored.is_none());
        Arc::new(AdmissionState::new(log, checkpointer, Admitted::default()))
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
            .admit_and_append(
                parsed(messages),
                WriterScope::AnyCentre,
                "ingest".to_owned(),
            )
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

    /// A log whose appends wait at a gate: the test sees each append arrive
    /// and lets it through, or fails it without storing anything.
    #[derive(Debug)]
    struct Gated {
        inner: Arc<dyn EventLog>,
        gates: Mutex<std::collections::VecDeque<Gate>>,
    }

    #[derive(Debug)]
    struct Gate {
        reached: tokio::sync::oneshot::Sender<()>,
        /// `true`: store the batch; `false`: fail it, storing nothing.
        release: tokio::sync::oneshot::Receiver<bool>,
    }

    /// The test's end of a gate.
    struct GateControl {
        reached: tokio::sync::oneshot::Receiver<()>,
        release: tokio::sync::oneshot::Sender<bool>,
    }

    impl Gated {
        fn gate(&self) -> GateControl {
            let (reached_sender, reached) = tokio::sync::oneshot::channel();
            let (release, release_receiver) = tokio::sync::oneshot::channel();
            self.gates.lock().expect("not poisoned").push_back(Gate {
                reached: reached_sender,
                release: release_receiver,
            });
            GateControl { reached, release }
        }
    }

    impl EventLog for Gated {
        fn append<'life0, 'async_trait>(
            &'life0 self,
            batch: AppendBatch,
        ) -> LogFuture<'async_trait, Vec<AppendOutcome>>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move {
                let gate = self.gates.lock().expect("not poisoned").pop_front();
                if let Some(gate) = gate {
                    let _ = gate.reached.send(());
                    if !gate.release.await.unwrap_or(false) {
                        return Err(LogError::Unavailable("failed by the test".to_owned()));
                    }
                }
                self.inner.append(batch).await
            })
        }

        reads_from_inner!();
    }

    struct GatedFixture {
        _directory: tempfile::TempDir,
        log: Arc<Gated>,
        state: Arc<AdmissionState>,
    }

    async fn gated_fixture() -> GatedFixture {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let inner: Arc<dyn EventLog> = Arc::new(
            EmbeddedLog::open(directory.path().join("log"), EmbeddedOptions::default())
                .expect("an embedded log"),
        );
        let log = Arc::new(Gated {
            inner,
            gates: Mutex::new(std::collections::VecDeque::new()),
        });
        let state = new_state(Arc::clone(&log) as Arc<dyn EventLog>, directory.path()).await;
        GatedFixture {
            _directory: directory,
            log,
            state,
        }
    }

    type Call = tokio::task::JoinHandle<Result<Vec<Stored>, AdmitError>>;

    /// Starts admitting a batch and returns once it is admitted (it may be
    /// waiting for its turn or appending).
    async fn start(fixture: &GatedFixture, messages: Vec<v1::Event>) -> Call {
        let admitted_before = fixture.state.turns.borrow().admitted_through;
        let state = Arc::clone(&fixture.state);
        let call = tokio::spawn(async move {
            state
                .admit_and_append(
                    parsed(messages),
                    WriterScope::AnyCentre,
                    "ingest".to_owned(),
                )
                .await
        });
        fixture
            .state
            .turns
            .subscribe()
            .wait_for(|turns| turns.admitted_through > admitted_before)
            .await
            .expect("the pipeline lives");
        call
    }

    async fn same_as_a_full_catch_up(state: &AdmissionState, log: &dyn EventLog) {
        let ours = state.state.lock().await;
        let reference = folded_from_the_log(log).await;
        assert_eq!(ours.pipeline.in_flight(), 0);
        assert_eq!(ours.position, reference.position);
        assert_eq!(ours.stream_versions, reference.stream_versions);
        for probe in probes(log).await {
            assert_eq!(
                ours.admission.check(&probe, &WriterScope::AnyCentre),
                reference.admission.check(&probe, &WriterScope::AnyCentre),
                "{probe:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_batch_admitted_while_the_one_before_is_appending_is_judged_after_it() {
        let fixture = gated_fixture().await;
        let gate = fixture.log.gate();
        let first = start(
            &fixture,
            vec![
                registered("e-1", "L-1"),
                injected("e-2", "L-1", "2020-02-01"),
            ],
        )
        .await;
        gate.reached.await.expect("the first append arrives");
        // Admitted while the first batch's append is in flight: it needs
        // L-1 registered, repeats e-2 (a duplicate), and writes L-1's
        // stream again, which the log must expect after the first batch.
        let second = start(
            &fixture,
            vec![
                injected("e-2", "L-1", "2020-02-01"),
                injected("e-3", "L-1", "2020-06-01"),
                registered("e-4", "L-2"),
            ],
        )
        .await;
        gate.release.send(true).expect("the append waits");
        let first = first.await.expect("joins").expect("appended");
        let second = second.await.expect("joins").expect("appended");
        let placed = |stored: &[Stored]| -> Vec<(u64, bool)> {
            stored
                .iter()
                .map(|stored| (stored.position, stored.duplicate))
                .collect()
        };
        assert_eq!(placed(&first), vec![(1, false), (2, false)]);
        assert_eq!(placed(&second), vec![(2, true), (3, false), (4, false)]);
        same_as_a_full_catch_up(&fixture.state, fixture.log.as_ref()).await;
        assert_eq!(fixture.state.records_folded_here().await, 0);
    }

    #[tokio::test]
    async fn when_an_append_fails_the_batches_admitted_after_it_are_judged_as_if_it_never_was() {
        let fixture = gated_fixture().await;
        admit_gated(&fixture, vec![registered("e-0", "L-0")]).await;
        let gate = fixture.log.gate();
        let failing = start(
            &fixture,
            vec![
                registered("e-1", "L-1"),
                injected("e-2", "L-1", "2020-02-01"),
            ],
        )
        .await;
        gate.reached.await.expect("the failing append arrives");
        // Both admitted on a state holding the failing batch's events.
        let dependent = start(&fixture, vec![injected("e-3", "L-1", "2020-06-01")]).await;
        let independent = start(
            &fixture,
            vec![
                registered("e-4", "L-2"),
                injected("e-5", "L-0", "2020-02-01"),
            ],
        )
        .await;
        // Conflicts with the failing batch's e-1 (other content) while that
        // is in flight; once it failed, e-1 is new.
        let repeating = start(&fixture, vec![registered("e-1", "L-3")]).await;
        gate.release.send(false).expect("the append waits");
        assert!(matches!(
            failing.await.expect("joins"),
            Err(AdmitError::Service(ServiceError::Unavailable(_)))
        ));
        // L-1 was never registered: the injection is refused, as it would
        // have been had the failed batch never been sent.
        match dependent.await.expect("joins") {
            Err(AdmitError::Refused(verdicts)) => {
                assert!(matches!(verdicts[0].verdict, Verdict::Refused(_)));
            }
            other => panic!("the dependent batch was not refused: {other:?}"),
        }
        // Judged again once the pipeline emptied, in whichever order they
        // came back (concurrent calls have none): both stored, as new.
        let independent = independent.await.expect("joins").expect("appended");
        let repeating = repeating.await.expect("joins").expect("appended");
        let mut positions: Vec<_> = independent
            .iter()
            .chain(&repeating)
            .map(|stored| {
                assert!(!stored.duplicate);
                stored.position
            })
            .collect();
        positions.sort_unstable();
        assert_eq!(positions, vec![2, 3, 4]);
        same_as_a_full_catch_up(&fixture.state, fixture.log.as_ref()).await;
    }

    #[tokio::test]
    async fn after_a_failed_append_the_batches_behind_it_are_judged_again_in_the_order_they_came() {
        let fixture = gated_fixture().await;
        let gate = fixture.log.gate();
        let failing = start(&fixture, vec![registered("e-0", "L-0")]).await;
        gate.reached.await.expect("the failing append arrives");
        // Independent of the failing batch; the second needs the first
        // (L-1's registration). Both are judged again once the failed
        // append finished: the last one to finish (the injection) must not
        // be judged before the registration that came before it.
        let registration = start(&fixture, vec![registered("e-1", "L-1")]).await;
        let injection = start(&fixture, vec![injected("e-2", "L-1", "2020-02-01")]).await;
        gate.release.send(false).expect("the append waits");
        assert!(matches!(
            failing.await.expect("joins"),
            Err(AdmitError::Service(ServiceError::Unavailable(_)))
        ));
        let registration = registration.await.expect("joins").expect("appended");
        let injection = injection
            .await
            .expect("joins")
            .unwrap_or_else(|error| panic!("the injection was not appended: {error:?}"));
        assert_eq!((registration[0].position, injection[0].position), (1, 2));
        same_as_a_full_catch_up(&fixture.state, fixture.log.as_ref()).await;
    }

    #[tokio::test]
    async fn a_refused_batch_behind_one_in_flight_leaves_the_state_as_the_log() {
        let fixture = gated_fixture().await;
        let gate = fixture.log.gate();
        let first = start(&fixture, vec![registered("e-1", "L-1")]).await;
        gate.reached.await.expect("the append arrives");
        // Accepts e-2 into the admission, then e-3 is refused (L-9 is not
        // registered): nothing of it may remain.
        let refused = start(
            &fixture,
            vec![
                injected("e-2", "L-1", "2020-02-01"),
                injected("e-3", "L-9", "2020-02-01"),
            ],
        )
        .await;
        gate.release.send(true).expect("the append waits");
        first.await.expect("joins").expect("appended");
        assert!(matches!(
            refused.await.expect("joins"),
            Err(AdmitError::Refused(_))
        ));
        let after = admit_gated(&fixture, vec![injected("e-2", "L-1", "2020-03-01")]).await;
        assert_eq!((after[0].position, after[0].duplicate), (2, false));
        same_as_a_full_catch_up(&fixture.state, fixture.log.as_ref()).await;
    }

    #[tokio::test]
    async fn a_call_that_goes_away_keeps_its_turn_and_the_next_one_is_served() {
        let fixture = gated_fixture().await;
        let gate = fixture.log.gate();
        let state = Arc::clone(&fixture.state);
        let abandoned = tokio::spawn(async move {
            state
                .admit_and_append(
                    parsed(vec![registered("e-1", "L-1")]),
                    WriterScope::AnyCentre,
                    "ingest".to_owned(),
                )
                .await
        });
        gate.reached.await.expect("the append arrives");
        abandoned.abort();
        let _ = abandoned.await;
        let next = start(&fixture, vec![injected("e-2", "L-1", "2020-02-01")]).await;
        gate.release.send(true).expect("the append still waits");
        let next = next.await.expect("joins").expect("appended");
        assert_eq!((next[0].position, next[0].duplicate), (2, false));
        same_as_a_full_catch_up(&fixture.state, fixture.log.as_ref()).await;
    }

    #[tokio::test]
    async fn a_snapshot_waits_for_the_batches_in_flight() {
        let fixture = gated_fixture().await;
        admit_gated(&fixture, vec![registered("e-0", "L-0")]).await;
        let gate = fixture.log.gate();
        let first = start(&fixture, vec![registered("e-1", "L-1")]).await;
        gate.reached.await.expect("the append arrives");
        let state = Arc::clone(&fixture.state);
        let snapshot = tokio::task::spawn_blocking(move || (state.snapshotter())(0));
        // The snapshot holds new admissions back until the pipeline empties.
        fixture
            .state
            .turns
            .subscribe()
            .wait_for(|turns| turns.pausers == 1)
            .await
            .expect("the pipeline lives");
        gate.release.send(true).expect("the append waits");
        first.await.expect("joins").expect("appended");
        let (position, _) = snapshot
            .await
            .expect("joins")
            .expect("encodes")
            .expect("a snapshot");
        assert_eq!(position, 2);
        assert_eq!(fixture.state.turns.borrow().pausers, 0);
    }

    async fn admit_gated(fixture: &GatedFixture, messages: Vec<v1::Event>) -> Vec<Stored> {
        fixture
            .state
            .admit_and_append(
                parsed(messages),
                WriterScope::AnyCentre,
                "ingest".to_owned(),
            )
            .await
            .unwrap_or_else(|error| panic!("the batch was not appended: {error:?}"))
    }

    /// An append as [`InParts`] saw it: its size and its expectations.
    type PartSeen = (usize, Vec<(String, ExpectedVersion)>);

    /// A log whose atomic batch holds two records, and whose `fail_on`-th
    /// append (from 1) fails once, saying a stream moved (what the log says
    /// when another writer got there first); it keeps each append's size
    /// and expectations.
    #[derive(Debug)]
    struct InParts {
        inner: Arc<dyn EventLog>,
        fail_on: Mutex<Option<usize>>,
        appends: Mutex<Vec<PartSeen>>,
    }

    impl EventLog for InParts {
        fn most_records_per_append(&self) -> Option<usize> {
            Some(2)
        }

        fn append<'life0, 'async_trait>(
            &'life0 self,
            batch: AppendBatch,
        ) -> LogFuture<'async_trait, Vec<AppendOutcome>>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move {
                let call = {
                    let mut appends = self.appends.lock().expect("not poisoned");
                    appends.push((batch.records.len(), batch.expectations.clone()));
                    appends.len()
                };
                let fails = {
                    let mut fail_on = self.fail_on.lock().expect("not poisoned");
                    let fails = *fail_on == Some(call);
                    if fails {
                        *fail_on = None;
                    }
                    fails
                };
                if fails {
                    return Err(LogError::WrongExpectedVersion {
                        stream: "leeds.L-2".to_owned(),
                        expected: eventlog::ExpectedVersionDisplay(ExpectedVersion::Empty),
                        actual: 99,
                    });
                }
                self.inner.append(batch).await
            })
        }

        reads_from_inner!();
    }

    /// A whole import goes into a log with a small atomic batch in parts;
    /// a stream written by an earlier part is expected where that part left
    /// it; a part failing leaves the parts before it stored and the call
    /// fails as unavailable, saying so (not admitted again: its own stored
    /// records would come back as duplicates, or a refusal would claim that
    /// nothing was appended); the state rebuilds from the log, and sending
    /// the import again completes it with the stored part as duplicates,
    /// every event stored once.
    #[tokio::test]
    async fn an_import_goes_into_the_log_in_parts_and_a_failed_part_is_completed_by_a_retry() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let log = Arc::new(InParts {
            inner: Arc::new(
                EmbeddedLog::open(directory.path().join("log"), EmbeddedOptions::default())
                    .expect("an embedded log"),
            ),
            fail_on: Mutex::new(Some(2)),
            appends: Mutex::new(Vec::new()),
        });
        let state = new_state(Arc::clone(&log) as Arc<dyn EventLog>, directory.path()).await;
        let import = || {
            parsed(vec![
                registered("r-1", "L-1"),
                injected("i-1", "L-1", "2020-02-03"),
                registered("r-2", "L-2"),
                injected("i-2", "L-2", "2020-02-03"),
                injected("i-3", "L-1", "2020-05-04"),
            ])
        };

        let failed = state
            .admit_and_append_as(
                import(),
                WriterScope::AnyCentre,
                "t".to_owned(),
                AppendUnit::InLogBatches,
            )
            .await;
        assert!(
            matches!(
                &failed,
                Err(AdmitError::Service(ServiceError::Unavailable(reason)))
                    if reason.contains("2 of the 5 records were stored")
            ),
            "{failed:?}"
        );
        assert_eq!(log.head().await.expect("a head"), 2, "the first part stays");
        assert_eq!(
            log.appends.lock().expect("not poisoned").len(),
            2,
            "not admitted again after a part was stored"
        );

        let stored = state
            .admit_and_append_as(
                import(),
                WriterScope::AnyCentre,
                "t".to_owned(),
                AppendUnit::InLogBatches,
            )
            .await
            .expect("the retry completes the import");
        let outcomes: Vec<(u64, bool)> = stored
            .iter()
            .map(|stored| (stored.position, stored.duplicate))
            .collect();
        assert_eq!(
            outcomes,
            vec![(1, true), (2, true), (3, false), (4, false), (5, false)]
        );
        let keys: Vec<String> = log
            .read(1, 10)
            .await
            .expect("the log reads")
            .iter()
            .map(|record| record.key.to_string())
            .collect();
        assert_eq!(keys, ["r-1", "i-1", "r-2", "i-2", "i-3"]);

        // The retry's parts: [r-1 i-1] (duplicates) [r-2 i-2] [i-3], i-3's
        // patient expected where the first part of the first try left it.
        let appends = log.appends.lock().expect("not poisoned").clone();
        let sizes: Vec<usize> = appends.iter().map(|(size, _)| *size).collect();
        assert_eq!(sizes, vec![2, 2, 2, 2, 1]);
        assert_eq!(
            appends[4].1,
            vec![("leeds.L-1".to_owned(), ExpectedVersion::At(2))]
        );
        let ours = state.state.lock().await;
        let reference = folded_from_the_log(log.as_ref()).await;
        assert!(!ours.stale);
        assert_eq!(ours.position, reference.position);
        assert_eq!(ours.stream_versions, reference.stream_versions);
    }
}
