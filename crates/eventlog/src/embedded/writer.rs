//! The single writer: a dedicated OS thread (fsync blocks, so it must not run
//! on a tokio worker) that owns the active segment and the key index.
//!
//! The caller of `append` encodes its batch into one contiguous buffer of
//! frames on its own thread ([`EncodedBatch`]), with the fields only the
//! writer can know (position, recorded_at, batch-end flag, CRC) left at zero,
//! and frees the records there. The writer takes every batch waiting on its
//! channel as one group, checks each batch in arrival order against the log
//! as it will be after the batches before it (a refused batch is answered
//! with its error and writes nothing), seals the accepted frames in place,
//! writes the group's buffers with one vectored write per segment, makes them
//! durable with ONE `sync_data`, publishes the new durable head to readers,
//! and only then answers. If a write or sync fails, nobody can tell what
//! reached the disk: the writer answers the group with the error and refuses
//! everything after it until the log is reopened (recovery then decides from
//! the disk).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::ops::Range;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, watch};

use super::frame::{FRAME_PREFIX_BYTES, decode_checked, encode_unsealed, frame_bytes, seal};
use super::key_index::{Candidate, KeyIndex, PassThroughBuild, StreamVersions, key_hash};
use super::segments::{INDEX_STRIDE, Segment, SegmentFile, Shared, segment_file_name};
use super::sync_directory;
use crate::{
    AppendBatch, AppendOutcome, ExpectedVersion, ExpectedVersionDisplay, LogError, NewRecord,
};

/// At most this many batches form one group commit.
const MAX_GROUP_BATCHES: usize = 4096;

/// A group stops taking batches once it holds this many encoded bytes, which
/// bounds the writer's memory and the latency of the first batch.
const MAX_GROUP_BYTES: usize = 64 * 1024 * 1024;

pub(crate) type Reply = oneshot::Sender<Result<Vec<AppendOutcome>, LogError>>;

/// One record's place in an [`EncodedBatch`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameSlot {
    /// Where the record's frame starts in `EncodedBatch::bytes`.
    start: usize,
    /// The hash of its key, as the key index stores it.
    key_hash: u64,
}

/// A batch as the writer takes it: every record's frame back to back in one
/// buffer, unsealed (see [`encode_unsealed`]), made by the caller of `append`.
#[derive(Debug)]
pub(crate) struct EncodedBatch {
    bytes: Vec<u8>,
    /// One per record, in batch order. Once the writer accepts the batch, one
    /// per record it appends (duplicates are cut out of `bytes`).
    frames: Vec<FrameSlot>,
    expectations: Vec<(String, ExpectedVersion)>,
}

impl EncodedBatch {
    /// Encodes a batch whose records passed `validate_record`, and gives the
    /// records back so that the caller frees them on its own thread (after
    /// handing this to the writer).
    pub(crate) fn encode(batch: AppendBatch) -> (EncodedBatch, Vec<NewRecord>) {
        let AppendBatch {
            records,
            expectations,
        } = batch;
        let mut bytes = Vec::with_capacity(records.iter().map(frame_bytes).sum());
        let mut frames = Vec::with_capacity(records.len());
        for record in &records {
            frames.push(FrameSlot {
                start: bytes.len(),
                key_hash: key_hash(record.key.as_bytes()),
            });
            encode_unsealed(&mut bytes, record);
        }
        (
            EncodedBatch {
                bytes,
                frames,
                expectations,
            },
            records,
        )
    }

    fn frame_range(&self, index: usize) -> Range<usize> {
        frame_range_at(&self.bytes, self.frames[index].start)
    }

    fn frame(&self, index: usize) -> &[u8] {
        &self.bytes[self.frame_range(index)]
    }
}

/// The byte range of the frame that starts at `start` (its length prefix was
/// written by `encode_unsealed`, so it is in range).
fn frame_range_at(bytes: &[u8], start: usize) -> Range<usize> {
    let mut length = [0u8; 4];
    length.copy_from_slice(&bytes[start..start + 4]);
    start..start + FRAME_PREFIX_BYTES + u32::from_le_bytes(length) as usize
}

/// One `append` call, waiting for the writer.
#[derive(Debug)]
pub(crate) struct WriteRequest {
    pub(crate) batch: EncodedBatch,
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

/// An accepted batch of the group and where its bytes go.
#[derive(Debug)]
struct PlannedWrite {
    /// The batch's index in the group.
    batch: usize,
    /// The position of its first record.
    first_position: u64,
    starts_new_segment: bool,
    /// Sparse index entries for records of this batch.
    sparse_offsets: Vec<u64>,
}

/// The records accepted so far in the current group and the state the next
/// batch of the group is checked against.
#[derive(Debug)]
struct GroupPlan {
    first_position: u64,
    next_position: u64,
    recorded_at_micros: i64,
    /// Per planned record (by `position - first_position`): the batch it is
    /// in (index in the group) and where its frame starts in that batch.
    planned: Vec<(usize, usize)>,
    writes: Vec<PlannedWrite>,
    /// The segment the next accepted batch would go to: its first position
    /// and its length with everything planned so far.
    segment_first_position: u64,
    segment_bytes: u64,
    /// Stream versions changed by this group. Built only when a batch with
    /// expectations follows accepted batches in the same group, then kept
    /// current: the common case never pays for it.
    streams: Option<StreamVersions>,
}

/// Text the caller gave as a `String`, read back from its frame.
fn frame_text(bytes: &[u8]) -> &str {
    // Every key and stream in a group was a `String` before it was encoded.
    std::str::from_utf8(bytes).unwrap_or_default()
}

impl GroupPlan {
    fn planned_frame<'a>(&self, batches: &'a [EncodedBatch], position: u64) -> Option<&'a [u8]> {
        let index = usize::try_from(position.checked_sub(self.first_position)?).ok()?;
        let &(batch, start) = self.planned.get(index)?;
        let bytes = &batches.get(batch)?.bytes;
        Some(&bytes[frame_range_at(bytes, start)])
    }

    /// The version of `stream` after the batches already planned.
    fn stream_version(&mut self, shared: &Shared, earlier: &[EncodedBatch], stream: &str) -> u64 {
        if self.planned.is_empty() {
            return shared.stream_version(stream);
        }
        let first_position = self.first_position;
        let planned = &self.planned;
        let streams = self.streams.get_or_insert_with(|| {
            let mut streams = StreamVersions::default();
            for (offset, &(batch, start)) in planned.iter().enumerate() {
                let bytes = &earlier[batch].bytes;
                let frame = decode_checked(&bytes[frame_range_at(bytes, start)]);
                set_stream_version(
                    &mut streams,
                    frame_text(frame.stream),
                    first_position + offset as u64,
                );
            }
            streams
        });
        match streams.get(stream) {
            Some(&version) => version,
            None => shared.stream_version(stream),
        }
    }
}

fn set_stream_version(streams: &mut StreamVersions, stream: &str, position: u64) {
    match streams.get_mut(stream) {
        Some(version) => *version = position,
        None => {
            streams.insert(stream.to_owned(), position);
        }
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX)
        })
}

/// `write_all` for several buffers with as few `writev` calls as the kernel
/// allows.
fn write_all_slices(mut file: &File, mut slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "the segment file took no more bytes",
                ));
            }
            Ok(written) => IoSlice::advance_slices(&mut slices, written),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

impl Writer {
    /// Runs until every sender is gone and the queue is empty.
    pub(crate) fn run(mut self, requests: mpsc::Receiver<WriteRequest>) {
        while let Ok(first) = requests.recv() {
            let mut group_bytes = first.batch.bytes.len();
            let mut group = vec![first];
            while group.len() < MAX_GROUP_BATCHES && group_bytes < MAX_GROUP_BYTES {
                match requests.try_recv() {
                    Ok(request) => {
                        group_bytes += request.batch.bytes.len();
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
            planned: Vec::new(),
            writes: Vec::new(),
            segment_first_position: self.active.first_position,
            segment_bytes: self.active_bytes,
            streams: None,
        };
        let (mut batches, replies): (Vec<EncodedBatch>, Vec<Reply>) = group
            .into_iter()
            .map(|request| (request.batch, request.reply))
            .unzip();
        let mut answers = Vec::with_capacity(replies.len());
        for index in 0..batches.len() {
            answers.push(self.plan_batch(&mut plan, &mut batches, index));
        }
        let answers = replies.into_iter().zip(answers);
        if plan.planned.is_empty() {
            for (reply, answer) in answers {
                let _ = reply.send(answer);
            }
            return;
        }
        match self.write_and_sync(&plan, &batches) {
            Ok(new_segments) => {
                self.publish(plan, &batches, new_segments);
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
        // The group's buffers are freed here, after the answers.
    }

    /// Checks batch `index` of the group against the log plus the batches
    /// planned before it and, if it passes, seals its new records and adds
    /// them to the plan. Nothing changes on refusal.
    fn plan_batch(
        &mut self,
        plan: &mut GroupPlan,
        batches: &mut [EncodedBatch],
        index: usize,
    ) -> Result<Vec<AppendOutcome>, LogError> {
        let (earlier, rest) = batches.split_at_mut(index);
        let batch = &mut rest[0];
        let count = batch.frames.len();
        if count == 0 {
            return Ok(Vec::new());
        }

        // Idempotency comes before every other check: a batch sent again
        // after its answer was lost is answered with its positions even if
        // its expectations no longer hold.
        let mut dispositions = Vec::with_capacity(count);
        // The key hashes of the batch's new records. A hit is only a hint:
        // the keys are compared before a record counts as a repeat.
        let mut new_hashes: HashMap<u64, (), PassThroughBuild> =
            HashMap::with_capacity_and_hasher(count, PassThroughBuild::default());
        let mut new_count = 0usize;
        for record in 0..count {
            let hash = batch.frames[record].key_hash;
            let frame = decode_checked(batch.frame(record));
            if new_hashes.contains_key(&hash)
                && let Some(earlier_record) = (0..record).find(|&candidate| {
                    matches!(dispositions[candidate], Disposition::New)
                        && batch.frames[candidate].key_hash == hash
                        && decode_checked(batch.frame(candidate)).key == frame.key
                })
            {
                if decode_checked(batch.frame(earlier_record)).payload == frame.payload {
                    dispositions.push(Disposition::SameAsEarlierInBatch(earlier_record));
                    continue;
                }
                let planned_position = plan.next_position
                    + dispositions[..earlier_record]
                        .iter()
                        .filter(|disposition| matches!(disposition, Disposition::New))
                        .count() as u64;
                return Err(LogError::KeyConflict {
                    key: frame_text(frame.key).to_owned(),
                    position: planned_position,
                });
            }
            match self.stored_position(plan, earlier, frame.key, hash, frame.payload)? {
                Some((position, true)) => dispositions.push(Disposition::StoredAt(position)),
                Some((position, false)) => {
                    return Err(LogError::KeyConflict {
                        key: frame_text(frame.key).to_owned(),
                        position,
                    });
                }
                None => {
                    new_hashes.insert(hash, ());
                    new_count += 1;
                    dispositions.push(Disposition::New);
                }
            }
        }

        let mut outcomes: Vec<AppendOutcome> = Vec::with_capacity(count);
        if new_count == 0 {
            for disposition in &dispositions {
                outcomes.push(match *disposition {
                    Disposition::StoredAt(position) => AppendOutcome::Duplicate { position },
                    // Without a new record there is no earlier one in the
                    // batch to be the same as; kept total for the compiler.
                    Disposition::New | Disposition::SameAsEarlierInBatch(_) => {
                        AppendOutcome::Duplicate { position: 0 }
                    }
                });
            }
            return Ok(outcomes);
        }

        for (stream, expected) in &batch.expectations {
            let actual = plan.stream_version(&self.shared, earlier, stream);
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

        // Accepted from here on.
        let first_new_position = plan.next_position;
        let mut next_new_position = first_new_position;
        for disposition in &dispositions {
            outcomes.push(match *disposition {
                Disposition::New => {
                    next_new_position += 1;
                    AppendOutcome::Appended {
                        position: next_new_position - 1,
                    }
                }
                Disposition::StoredAt(position) => AppendOutcome::Duplicate { position },
                Disposition::SameAsEarlierInBatch(earlier_record) => AppendOutcome::Duplicate {
                    position: outcomes[earlier_record].position(),
                },
            });
        }
        if new_count < count {
            // Cut the repeats out: the buffer then holds exactly the frames
            // to write, in position order.
            let mut kept_bytes = Vec::with_capacity(batch.bytes.len());
            let mut kept_frames = Vec::with_capacity(new_count);
            for (record, disposition) in dispositions.iter().enumerate() {
                if matches!(disposition, Disposition::New) {
                    kept_frames.push(FrameSlot {
                        start: kept_bytes.len(),
                        key_hash: batch.frames[record].key_hash,
                    });
                    kept_bytes.extend_from_slice(batch.frame(record));
                }
            }
            batch.bytes = kept_bytes;
            batch.frames = kept_frames;
        }

        // Batches never span segments, so a cut at a batch end on recovery
        // never has to look at two files.
        let starts_new_segment = plan.segment_bytes >= self.segment_bytes && plan.segment_bytes > 0;
        if starts_new_segment {
            plan.segment_first_position = first_new_position;
            plan.segment_bytes = 0;
        }
        let mut sparse_offsets = Vec::new();
        let last = batch.frames.len() - 1;
        let EncodedBatch { bytes, frames, .. } = batch;
        for (record, slot) in frames.iter().enumerate() {
            let position = first_new_position + record as u64;
            let range = frame_range_at(bytes, slot.start);
            if (position - plan.segment_first_position).is_multiple_of(INDEX_STRIDE) {
                sparse_offsets.push(plan.segment_bytes + range.start as u64);
            }
            let frame = &mut bytes[range];
            seal(frame, position, plan.recorded_at_micros, record == last);
            let sealed = decode_checked(frame);
            self.keys.insert_new(sealed.key, slot.key_hash, position);
            if let Some(streams) = &mut plan.streams {
                set_stream_version(streams, frame_text(sealed.stream), position);
            }
            plan.planned.push((index, slot.start));
        }
        plan.segment_bytes += bytes.len() as u64;
        plan.next_position = next_new_position;
        plan.writes.push(PlannedWrite {
            batch: index,
            first_position: first_new_position,
            starts_new_segment,
            sparse_offsets,
        });
        Ok(outcomes)
    }

    /// Where `key` is stored (durably or earlier in this group), and whether
    /// the stored payload is the same.
    fn stored_position(
        &self,
        plan: &GroupPlan,
        earlier: &[EncodedBatch],
        key: &[u8],
        hash: u64,
        payload: &[u8],
    ) -> Result<Option<(u64, bool)>, LogError> {
        let position = match self.keys.candidate(key, hash) {
            Candidate::Absent => return Ok(None),
            Candidate::Exact(position) | Candidate::SameHash(position) => position,
        };
        let (same_key, same_payload) = match plan.planned_frame(earlier, position) {
            Some(frame) => {
                let frame = decode_checked(frame);
                (frame.key == key, frame.payload == payload)
            }
            None => self.shared.with_record(position, |frame| {
                (frame.key == key, frame.payload == payload)
            })?,
        };
        Ok(same_key.then_some((position, same_payload)))
    }

    /// Writes the plan to its segments and syncs. A segment is synced before
    /// the next one is created, so only the last segment can have a torn tail.
    fn write_and_sync(
        &mut self,
        plan: &GroupPlan,
        batches: &[EncodedBatch],
    ) -> std::io::Result<Vec<Arc<SegmentFile>>> {
        let mut new_segments = Vec::new();
        let mut run_start = 0;
        while run_start < plan.writes.len() {
            // The writes up to the next one that starts a segment go to one file.
            let run_end = plan.writes[run_start + 1..]
                .iter()
                .position(|write| write.starts_new_segment)
                .map_or(plan.writes.len(), |offset| run_start + 1 + offset);
            let run = &plan.writes[run_start..run_end];
            if run[0].starts_new_segment {
                self.active.file.sync_data()?;
                let segment = Arc::new(create_segment(&self.shared.dir, run[0].first_position)?);
                self.active = Arc::clone(&segment);
                self.active_bytes = 0;
                new_segments.push(segment);
            }
            let mut slices: Vec<IoSlice<'_>> = run
                .iter()
                .map(|write| IoSlice::new(&batches[write.batch].bytes))
                .collect();
            let run_bytes: usize = slices.iter().map(|slice| slice.len()).sum();
            write_all_slices(&self.active.file, &mut slices)?;
            self.active_bytes += run_bytes as u64;
            run_start = run_end;
        }
        self.active.file.sync_data()?;
        Ok(new_segments)
    }

    /// Makes the durable group visible to readers: index, streams, then head.
    fn publish(
        &mut self,
        plan: GroupPlan,
        batches: &[EncodedBatch],
        new_segments: Vec<Arc<SegmentFile>>,
    ) {
        {
            let mut table = self
                .shared
                .segments
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let mut new_segments = new_segments.into_iter();
            for write in plan.writes {
                if write.starts_new_segment {
                    if let Some(file) = new_segments.next() {
                        table.push(Segment {
                            file,
                            sparse_offsets: write.sparse_offsets,
                        });
                    }
                } else if let Some(segment) = table.last_mut() {
                    segment.sparse_offsets.extend(write.sparse_offsets);
                }
            }
        }
        {
            let mut streams = self
                .shared
                .streams
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for (offset, &(batch, start)) in plan.planned.iter().enumerate() {
                let bytes = &batches[batch].bytes;
                let frame = decode_checked(&bytes[frame_range_at(bytes, start)]);
                set_stream_version(
                    &mut streams,
                    frame_text(frame.stream),
                    plan.first_position + offset as u64,
                );
            }
        }
        self.next_position = plan.next_position;
        self.head_sender.send_replace(plan.next_position - 1);
    }
}

/// `options` creating a file its owner alone may read or write (the log
/// holds clinical records; the umask's usual 022 would leave them readable
/// by every local user).
pub(crate) fn owner_only(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(options, 0o600);
    options
}

/// Creates an empty segment file and makes its directory entry durable.
pub(crate) fn create_segment(dir: &Path, first_position: u64) -> std::io::Result<SegmentFile> {
    let path = dir.join(segment_file_name(first_position));
    let file =
        owner_only(OpenOptions::new().read(true).append(true).create_new(true)).open(&path)?;
    sync_directory(dir)?;
    Ok(SegmentFile {
        first_position,
        path,
        file,
    })
}
