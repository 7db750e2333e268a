//! The state readers share with the writer: the segment table with its sparse
//! position index, the stream versions, and the durable head. Readers only
//! ever look at positions up to the durable head, which the writer publishes
//! after the fsync, so they never see a record that could still be lost.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::watch;

use super::frame::{FrameCursor, FrameRef, RecordsBuilder, Step};
use super::key_index::StreamVersions;
use crate::{LogError, Record};

/// One sparse index entry every this many records of a segment.
pub(crate) const INDEX_STRIDE: u64 = 128;

/// Read buffer for scans and long reads.
pub(crate) const LARGE_CHUNK_BYTES: usize = 256 * 1024;

/// Read buffer for reads of a handful of records (idempotency checks, tails).
pub(crate) const SMALL_CHUNK_BYTES: usize = 8 * 1024;

/// The file name of the segment whose first record is at `first_position`.
pub(crate) fn segment_file_name(first_position: u64) -> String {
    format!("{first_position:020}.seg")
}

/// The first position a segment file name stands for, if it is one.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// An open segment file.
#[derive(Debug)]
pub(crate) struct SegmentFile {
    /// The position of the first record the file holds (or will hold).
    pub(crate) first_position: u64,
    pub(crate) path: PathBuf,
    /// Shared by the writer (appends) and readers (positional reads).
    pub(crate) file: File,
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) file: Arc<SegmentFile>,
    /// `sparse_offsets[k]` is the byte offset of the record at position
    /// `first_position + k * INDEX_STRIDE`.
    pub(crate) sparse_offsets: Vec<u64>,
}

pub(crate) fn corrupt(path: &Path, offset: u64, reason: impl std::fmt::Display) -> LogError {
    LogError::Corrupt(format!(
        "segment {} is damaged at byte offset {offset}: {reason}",
        path.display()
    ))
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    /// In position order; the last one is the one the writer appends to.
    pub(crate) segments: RwLock<Vec<Segment>>,
    /// The position of each stream's last durable record.
    pub(crate) streams: RwLock<StreamVersions>,
    /// The last durable position, published by the writer after each fsync.
    pub(crate) durable_head: watch::Receiver<u64>,
}

impl Shared {
    pub(crate) fn head(&self) -> u64 {
        *self.durable_head.borrow()
    }

    pub(crate) fn stream_version(&self, stream: &str) -> u64 {
        self.streams
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(stream)
            .copied()
            .unwrap_or(0)
    }

    /// Up to `max` durable records from `from` on, sharing one buffer (see
    /// [`RecordsBuilder`]).
    pub(crate) fn read_range(&self, from: u64, max: usize) -> Result<Vec<Record>, LogError> {
        let from = from.max(1);
        let head = self.head();
        if max == 0 || from > head {
            return Ok(Vec::new());
        }
        let last = head.min(from.saturating_add(max as u64 - 1));
        let count = last - from + 1;
        let mut records = RecordsBuilder::with_capacity(count.min(64 * 1024) as usize);
        let chunk = if count <= 16 {
            SMALL_CHUNK_BYTES
        } else {
            LARGE_CHUNK_BYTES
        };
        self.visit(from, last, chunk, |frame, _, _| {
            records.push(frame);
            Ok(())
        })?;
        records.finish().map_err(|(position, reason)| {
            // A frame whose CRC matched but whose text is not UTF-8 was
            // written so: this log never writes one.
            LogError::Corrupt(format!("the record at position {position}: {reason}"))
        })
    }

    /// Calls `inspect` with the durable record at `position`, in place.
    pub(crate) fn with_record<T>(
        &self,
        position: u64,
        inspect: impl FnOnce(&FrameRef<'_>) -> T,
    ) -> Result<T, LogError> {
        let mut inspect = Some(inspect);
        let mut answer = None;
        self.visit(position, position, SMALL_CHUNK_BYTES, |frame, _, _| {
            if let Some(inspect) = inspect.take() {
                answer = Some(inspect(frame));
            }
            Ok(())
        })?;
        answer.ok_or_else(|| {
            LogError::Corrupt(format!("position {position} was not found in the log"))
        })
    }

    /// Walks the records `from..=last` (all durable) in order.
    fn visit(
        &self,
        from: u64,
        last: u64,
        chunk_bytes: usize,
        mut each: impl FnMut(&FrameRef<'_>, &Path, u64) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        let mut position = from;
        let mut previous_segment_first = None;
        while position <= last {
            let (segment, start_offset, start_position) = self.locate(position)?;
            if previous_segment_first == Some(segment.first_position) {
                return Err(LogError::Corrupt(format!(
                    "segment {} ends before position {position}, which the log holds",
                    segment.path.display()
                )));
            }
            previous_segment_first = Some(segment.first_position);
            let mut cursor = FrameCursor::new(&segment.file, start_offset, chunk_bytes);
            let mut expected = start_position;
            loop {
                match cursor.next_step()? {
                    Step::Frame { offset, frame, .. } => {
                        if frame.position != expected {
                            return Err(corrupt(
                                &segment.path,
                                offset,
                                format!(
                                    "found position {} where {expected} was expected",
                                    frame.position
                                ),
                            ));
                        }
                        expected += 1;
                        if frame.position >= position {
                            each(&frame, &segment.path, offset)?;
                            position += 1;
                            if position > last {
                                return Ok(());
                            }
                        }
                    }
                    Step::End { .. } => break,
                    Step::Torn { offset } => {
                        return Err(corrupt(
                            &segment.path,
                            offset,
                            "the file ends inside a record",
                        ));
                    }
                    Step::Bad { offset, reason } => {
                        return Err(corrupt(&segment.path, offset, reason));
                    }
                }
            }
        }
        Ok(())
    }

    /// The segment holding `position`, and the nearest indexed record at or
    /// before it: (segment, byte offset, position at that offset).
    fn locate(&self, position: u64) -> Result<(Arc<SegmentFile>, u64, u64), LogError> {
        let table = self.segments.read().unwrap_or_else(PoisonError::into_inner);
        let holding = table.partition_point(|segment| segment.file.first_position <= position);
        let Some(segment) = holding.checked_sub(1).and_then(|index| table.get(index)) else {
            return Err(LogError::Corrupt(format!(
                "no segment holds position {position}"
            )));
        };
        let wanted_entry = ((position - segment.file.first_position) / INDEX_STRIDE) as usize;
        let (entry, offset) = match segment.sparse_offsets.get(wanted_entry) {
            Some(&offset) => (wanted_entry, offset),
            None => match segment.sparse_offsets.last() {
                Some(&offset) => (segment.sparse_offsets.len() - 1, offset),
                None => (0, 0),
            },
        };
        Ok((
            Arc::clone(&segment.file),
            offset,
            segment.file.first_position + entry as u64 * INDEX_STRIDE,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        let name = segment_file_name(1);
        assert_eq!(name, "00000000000000000001.seg");
        assert_eq!(parse_segment_file_name(&name), Some(1));
        assert_eq!(parse_segment_file_name("LOCK"), None);
        assert_eq!(parse_segment_file_name("0001.seg"), None);
    }
}
