//! The single writer: a dedicated OS thread (fsync blocks, so it must not run
//! on a tokio worker) that owns the active segment and the key index.
//!
//! It takes every batch waiting on its channel as one group, checks each batch
//! in arrival order against the log as it will be after the batches before it
//! (a refused batch is answered with its error and writes nothing), writes all
//! accepted records with one `write`, makes them durable with ONE `sync_data`,
//! publishes the new durable head to readers, and only then answers. If a
//! write or sync fails, nobody can tell what reached the disk: the writer
//! answers the group with the error and refuses everything after it until
//! the log is reopened (recovery then decides from the disk).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, watch};

use super::frame::{decode_checked, encode, frame_bytes};
use super::key_index::{Candidate, KeyIndex, key_hash};
use super::segments::{INDEX_STRIDE, Segment, SegmentFile, Shared, segment_file_name};
use super::sync_directory;
use crate::{
    AppendBatch, AppendOutcome, ExpectedVersion, ExpectedVersionDisplay, LogError, NewRecord,
};

/// At most this many batches form one group commit.
const MAX_GROUP_BATCHES: usize = 4096;

/// A group stops taking batches once it holds this many payload bytes, which
/// bounds the writer's memory and the latency of the first batch.
const MAX_GROUP_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;

pub(crate) type Reply = oneshot::Sender<Result<Vec<AppendOutcome>, LogError>>;

/// One `append` call, waiting for the writer.
#[derive(Debug)]
pub(crate) struct WriteRequest {
    pub(crate) batch: AppendBatch,
    pub(crate) reply: Reply,
}

#[derive(Debug)]
pub(crate) struct Writer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) head_sender: watch::Sender<u64>,
    /// The exclusive lock on the data directory, held as long as the writer runs.
    pub(crate) _directory_lock: File,
    /// The segment appended to.
    pub(crate) active: Arc<SegmentFile>,
    pub(crate) active_bytes: u64,
    /// The position the next record gets (durable head + 1).
    pub(crate) next_position: u64,
    pub(crate) keys: KeyIndex,
    /// Roll to a new segment before a batch once the active one is this big.
    pub(crate) segment_bytes: u64,
    /// Set when a write or sync failed: the writer refuses everything after.
    pub(crate) failure: Option<String>,
}

/// What the idempotency check decided for one record of a batch.
#[derive(Debug, Clone, Copy)]
enum Disposition {
    New,
    StoredAt(u64),
    SameAsEarlierInBatch(usize),
}

/// Where a run of the group's bytes goes: the active segment, or a new one.
#[derive(Debug)]
struct Piece {
    segment_first_position: u64,
    starts_new_segment: bool,
    /// Where the piece starts in `GroupPlan::bytes`.
    bytes_start: usize,
    /// The segment's length before the piece.
    segment_bytes_before: u64,
    /// Sparse index entries for records of this piece.
    sparse_offsets: Vec<u64>,
}

/// The records accepted so far in the current group, encoded, and the state
/// the next batch of the group is checked against.
#[derive(Debug)]
struct GroupPlan {
    first_position: u64,
    next_position: u64,
    recorded_at_micros: i64,
    bytes: Vec<u8>,
    /// Where each planned record starts in `bytes`, by `position - first_position`.
    record_starts: Vec<usize>,
    pieces: Vec<Piece>,
    /// Stream versions changed by this group.
    streams: HashMap<String, u64>,
}

impl GroupPlan {
    fn current_segment_bytes(&self) -> u64 {
        self.pieces.last().map_or(0, |piece| {
            piece.segment_bytes_before + (self.bytes.len() - piece.bytes_start) as u64
        })
    }

    fn stream_version(&self, shared: &Shared, stream: &str) -> u64 {
        match self.streams.get(stream) {
            Some(&version) => version,
            None => shared.stream_version(stream),
        }
    }

    fn planned_frame(&self, position: u64) -> Option<&[u8]> {
        let index = usize::try_from(position.checked_sub(self.first_position)?).ok()?;
        let start = *self.record_starts.get(index)?;
        let end = self
            .record_starts
            .get(index + 1)
            .copied()
            .unwrap_or(self.bytes.len());
        Some(&self.bytes[start..end])
    }

    fn push_record(&mut self, record: &NewRecord, batch_end: bool) -> u64 {
        let position = self.next_position;
        let segment_offset = self.current_segment_bytes();
        if let Some(piece) = self.pieces.last_mut()
            && (position - piece.segment_first_position).is_multiple_of(INDEX_STRIDE)
        {
            piece.sparse_offsets.push(segment_offset);
        }
        self.record_starts.push(self.bytes.len());
        encode(
            &mut self.bytes,
            record,
            position,
            self.recorded_at_micros,
            batch_end,
        );
        match self.streams.get_mut(record.stream.as_str()) {
            Some(version) => *version = position,
            None => {
                self.streams.insert(record.stream.clone(), position);
            }
        }
        self.next_position += 1;
        position
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX)
        })
}

fn payload_bytes(batch: &AppendBatch) -> usize {
    batch
        .records
        .iter()
        .map(|record| record.payload.len())
        .sum()
}

impl Writer {
    /// Runs until every sender is gone and the queue is empty.
    pub(crate) fn run(mut self, requests: mpsc::Receiver<WriteRequest>) {
        while let Ok(first) = requests.recv() {
            let mut group_payload = payload_bytes(&first.batch);
            let mut group = vec![first];
            while group.len() < MAX_GROUP_BATCHES && group_payload < MAX_GROUP_PAYLOAD_BYTES {
                match requests.try_recv() {
                    Ok(request) => {
                        group_payload += payload_bytes(&request.batch);
                        group.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.process_group(group);
        }
        // Dropping `self` here releases the directory lock after the last write.
    }

    fn process_group(&mut self, group: Vec<WriteRequest>) {
        if let Some(failure) = &self.failure {
            for request in group {
                let _ = request.reply.send(Err(LogError::Unavailable(format!(
                    "the event log writer stopped after an i/o failure ({failure}); reopen the log"
                ))));
            }
            return;
        }
        let mut plan = GroupPlan {
            first_position: self.next_position,
            next_position: self.next_position,
            recorded_at_micros: now_micros(),
            bytes: Vec::new(),
            record_starts: Vec::new(),
            pieces: vec![Piece {
                segment_first_position: self.active.first_position,
                starts_new_segment: false,
                bytes_start: 0,
                segment_bytes_before: self.active_bytes,
                sparse_offsets: Vec::new(),
            }],
            streams: HashMap::new(),
        };
        let mut answers = Vec::with_capacity(group.len());
        // The batches are kept until the function ends so that freeing their
        // records happens after the answers, not before the fsync.
        let mut batches = Vec::with_capacity(group.len());
        for request in group {
            let answer = self.plan_batch(&mut plan, &request.batch);
            answers.push((request.reply, answer));
            batches.push(request.batch);
        }
        if plan.record_starts.is_empty() {
            for (reply, answer) in answers {
                let _ = reply.send(answer);
            }
            return;
        }
        match self.write_and_sync(&plan) {
            Ok(new_segments) => {
                self.publish(plan, new_segments);
                for (reply, answer) in answers {
                    let _ = reply.send(answer);
                }
            }
            Err(error) => {
                tracing::error!(
                    dir = %self.shared.dir.display(),
                    error = %error,
                    "writing the event log failed; the writer stops until the log is reopened"
                );
                self.failure = Some(error.to_string());
                for (reply, answer) in answers {
                    let answer = answer.and_then(|_| {
                        Err(LogError::Io(std::io::Error::new(
                            error.kind(),
                            format!(
                                "the batch may or may not be stored until the log is reopened: {error}"
                            ),
                        )))
                    });
                    let _ = reply.send(answer);
                }
            }
        }
    }

    /// Checks one batch against the log plus the group so far and, if it
    /// passes, adds its new records to the plan. Nothing changes on refusal.
    fn plan_batch(
        &mut self,
        plan: &mut GroupPlan,
        batch: &AppendBatch,
    ) -> Result<Vec<AppendOutcome>, LogError> {
        let records = &batch.records;
        if records.is_empty() {
            return Ok(Vec::new());
        }

        // Idempotency comes before every other check: a batch sent again
        // after its answer was lost is answered with its positions even if
        // its expectations no longer hold.
        let mut dispositions = Vec::with_capacity(records.len());
        let mut hashes = Vec::with_capacity(records.len());
        let mut new_in_batch: HashMap<&str, usize> = HashMap::new();
        for (index, record) in records.iter().enumerate() {
            let hash = key_hash(&record.key);
            hashes.push(hash);
            if let Some(&earlier) = new_in_batch.get(record.key.as_str()) {
                if records[earlier].payload == record.payload {
                    dispositions.push(Disposition::SameAsEarlierInBatch(earlier));
                    continue;
                }
                let planned_position = plan.next_position
                    + dispositions[..earlier]
                        .iter()
                        .filter(|disposition| matches!(disposition, Disposition::New))
                        .count() as u64;
                return Err(LogError::KeyConflict {
                    key: record.key.clone(),
                    position: planned_position,
                });
            }
            match self.stored_position(plan, &record.key, hash, &record.payload)? {
                Some((position, true)) => dispositions.push(Disposition::StoredAt(position)),
                Some((position, false)) => {
                    return Err(LogError::KeyConflict {
                        key: record.key.clone(),
                        position,
                    });
                }
                None => {
                    new_in_batch.insert(record.key.as_str(), index);
                    dispositions.push(Disposition::New);
                }
            }
        }
        if new_in_batch.is_empty() {
            return Ok(dispositions
                .iter()
                .map(|disposition| match disposition {
                    Disposition::StoredAt(position) => AppendOutcome::Duplicate {
                        position: *position,
                    },
                    // Without a new record there is no earlier one in the
                    // batch to be the same as; kept total for the compiler.
                    Disposition::New | Disposition::SameAsEarlierInBatch(_) => {
                        AppendOutcome::Duplicate { position: 0 }
                    }
                })
                .collect());
        }

        for (stream, expected) in &batch.expectations {
            let actual = plan.stream_version(&self.shared, stream);
            let holds = match expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::Empty => actual == 0,
                ExpectedVersion::At(position) => actual == *position,
            };
            if !holds {
                return Err(LogError::WrongExpectedVersion {
                    stream: stream.clone(),
                    expected: ExpectedVersionDisplay(*expected),
                    actual,
                });
            }
        }

        // Batches never span segments, so a cut at a batch end on recovery
        // never has to look at two files.
        if plan.current_segment_bytes() >= self.segment_bytes && plan.current_segment_bytes() > 0 {
            plan.pieces.push(Piece {
                segment_first_position: plan.next_position,
                starts_new_segment: true,
                bytes_start: plan.bytes.len(),
                segment_bytes_before: 0,
                sparse_offsets: Vec::new(),
            });
        }
        let last_new = dispositions
            .iter()
            .rposition(|disposition| matches!(disposition, Disposition::New));
        let mut positions = vec![0u64; records.len()];
        let mut outcomes = Vec::with_capacity(records.len());
        plan.bytes
            .reserve(records.iter().map(frame_bytes).sum::<usize>());
        for (index, (record, disposition)) in records.iter().zip(&dispositions).enumerate() {
            let outcome = match *disposition {
                Disposition::New => {
                    let position = plan.push_record(record, Some(index) == last_new);
                    self.keys.insert_new(&record.key, hashes[index], position);
                    AppendOutcome::Appended { position }
                }
                Disposition::StoredAt(position) => AppendOutcome::Duplicate { position },
                Disposition::SameAsEarlierInBatch(earlier) => AppendOutcome::Duplicate {
                    position: positions[earlier],
                },
            };
            positions[index] = outcome.position();
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Where `key` is stored (durably or earlier in this group), and whether
    /// the stored payload is the same.
    fn stored_position(
        &self,
        plan: &GroupPlan,
        key: &str,
        hash: u64,
        payload: &[u8],
    ) -> Result<Option<(u64, bool)>, LogError> {
        let position = match self.keys.candidate(key, hash) {
            Candidate::Absent => return Ok(None),
            Candidate::Exact(position) | Candidate::SameHash(position) => position,
        };
        let (same_key, same_payload) = match plan.planned_frame(position) {
            Some(frame) => {
                let frame = decode_checked(frame);
                (frame.key == key.as_bytes(), frame.payload == payload)
            }
            None => self.shared.with_record(position, |frame| {
                (frame.key == key.as_bytes(), frame.payload == payload)
            })?,
        };
        Ok(same_key.then_some((position, same_payload)))
    }

    /// Writes the plan to its segments and syncs. A segment is synced before
    /// the next one is created, so only the last segment can have a torn tail.
    fn write_and_sync(&mut self, plan: &GroupPlan) -> std::io::Result<Vec<Arc<SegmentFile>>> {
        let mut new_segments = Vec::new();
        for (index, piece) in plan.pieces.iter().enumerate() {
            let end = plan
                .pieces
                .get(index + 1)
                .map_or(plan.bytes.len(), |next| next.bytes_start);
            if piece.starts_new_segment {
                self.active.file.sync_data()?;
                let segment = Arc::new(create_segment(
                    &self.shared.dir,
                    piece.segment_first_position,
                )?);
                self.active = Arc::clone(&segment);
                self.active_bytes = 0;
                new_segments.push(segment);
            }
            let bytes = &plan.bytes[piece.bytes_start..end];
            (&self.active.file).write_all(bytes)?;
            self.active_bytes += bytes.len() as u64;
        }
        self.active.file.sync_data()?;
        Ok(new_segments)
    }

    /// Makes the durable group visible to readers: index, streams, then head.
    fn publish(&mut self, plan: GroupPlan, new_segments: Vec<Arc<SegmentFile>>) {
        {
            let mut table = self
                .shared
                .segments
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let mut new_segments = new_segments.into_iter();
            for piece in plan.pieces {
                if piece.starts_new_segment {
                    if let Some(file) = new_segments.next() {
                        table.push(Segment {
                            file,
                            sparse_offsets: piece.sparse_offsets,
                        });
                    }
                } else if let Some(segment) = table.last_mut() {
                    segment.sparse_offsets.extend(piece.sparse_offsets);
                }
            }
        }
        {
            let mut streams = self
                .shared
                .streams
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            streams.extend(plan.streams);
        }
        self.next_position = plan.next_position;
        self.head_sender.send_replace(plan.next_position - 1);
    }
}

/// Creates an empty segment file and makes its directory entry durable.
pub(crate) fn create_segment(dir: &Path, first_position: u64) -> std::io::Result<SegmentFile> {
    let path = dir.join(segment_file_name(first_position));
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(&path)?;
    sync_directory(dir)?;
    Ok(SegmentFile {
        first_position,
        path,
        file,
    })
}
