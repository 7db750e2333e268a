//! Opening an existing data directory: scan every segment, cut off a torn or
//! incomplete tail, refuse damage in the middle, and rebuild the in-memory
//! indexes (sparse positions, keys, stream versions) from what survives.
//!
//! What counts as a torn tail: damage in the LAST segment (a frame whose
//! length is out of range, whose CRC does not match, that the file ends
//! inside of, or that carries the wrong position) with no intact frame
//! anywhere after it, or intact records after the last batch-end mark. Both
//! are what a crash during a group commit leaves; the writer never
//! acknowledged those records. The file is cut back to the end of the last
//! complete batch. Damage that is followed by an intact frame, or damage in
//! a segment that is not the last (the writer syncs a segment completely
//! before it creates the next), is not a crash artefact: open fails with
//! [`LogError::Corrupt`] naming the file and the byte offset, and nothing is
//! cut.

use std::fs::{self, File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::frame::{FrameCheck, FrameCursor, MIN_FRAME_BYTES, Step, check_frame, peek_position};
use super::key_index::{KeyIndex, StreamVersions, key_hash};
use super::segments::{
    INDEX_STRIDE, LARGE_CHUNK_BYTES, Segment, SegmentFile, corrupt, parse_segment_file_name,
    segment_file_name,
};
use super::{io_context, sync_directory};
use crate::LogError;

/// Everything the log needs in memory, rebuilt from the segment files.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// At least one segment; the last one is open for appending.
    pub(crate) segments: Vec<Segment>,
    pub(crate) streams: StreamVersions,
    pub(crate) keys: KeyIndex,
    /// The last stored position (0 when the log is empty).
    pub(crate) head: u64,
    /// The byte length of the last segment after any cut.
    pub(crate) active_segment_bytes: u64,
}

pub(crate) fn recover(dir: &Path) -> Result<Recovered, LogError> {
    let mut first_positions = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_context("listing", dir))? {
        let entry = entry.map_err(io_context("listing", dir))?;
        if let Some(first_position) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            first_positions.push(first_position);
        }
    }
    first_positions.sort_unstable();
    if first_positions.is_empty() {
        let path = dir.join(segment_file_name(1));
        super::writer::owner_only(std::fs::OpenOptions::new().write(true).create_new(true))
            .open(&path)
            .map_err(io_context("creating", &path))?;
        sync_directory(dir).map_err(io_context("syncing", dir))?;
        first_positions.push(1);
    }

    let mut keys = KeyIndex::default();
    let mut streams = StreamVersions::default();
    let mut segments = Vec::with_capacity(first_positions.len());
    let mut next_position = 1;
    let mut active_segment_bytes = 0;
    let last_index = first_positions.len() - 1;
    for (index, &first_position) in first_positions.iter().enumerate() {
        let path = dir.join(segment_file_name(first_position));
        if first_position != next_position {
            return Err(LogError::Corrupt(format!(
                "segment {} starts at position {first_position}, but the segments before it end at {}",
                path.display(),
                next_position - 1
            )));
        }
        let is_last = index == last_index;
        let file = OpenOptions::new()
            .read(true)
            .append(is_last)
            .open(&path)
            .map_err(io_context("opening", &path))?;
        let scanned = scan_segment(
            &file,
            &path,
            first_position,
            is_last,
            &mut keys,
            &mut streams,
        )?;
        next_position = scanned.next_position;
        active_segment_bytes = scanned.kept_bytes;
        segments.push(Segment {
            file: Arc::new(SegmentFile {
                first_position,
                path,
                file,
            }),
            sparse_offsets: scanned.sparse_offsets,
        });
    }
    Ok(Recovered {
        segments,
        streams,
        keys,
        head: next_position - 1,
        active_segment_bytes,
    })
}

struct ScannedSegment {
    sparse_offsets: Vec<u64>,
    next_position: u64,
    kept_bytes: u64,
}

/// The keys and streams of the batch being scanned: they enter the indexes
/// only when its batch-end mark is seen. Text is kept in two reused arenas so
/// that a scan does not allocate per record.
#[derive(Default)]
struct OpenBatch {
    key_text: String,
    keys: Vec<(u64, u64, Range<usize>)>,
    stream_text: String,
    streams: Vec<(u64, Range<usize>)>,
}

impl OpenBatch {
    fn commit(&mut self, keys: &mut KeyIndex, streams: &mut StreamVersions) {
        for (hash, position, range) in self.keys.drain(..) {
            keys.insert_new(self.key_text[range].as_bytes(), hash, position);
        }
        for (position, range) in self.streams.drain(..) {
            let stream = &self.stream_text[range];
            match streams.get_mut(stream) {
                Some(version) => *version = position,
                None => {
                    streams.insert(stream.to_owned(), position);
                }
            }
        }
        self.key_text.clear();
        self.stream_text.clear();
    }
}

fn scan_segment(
    file: &File,
    path: &Path,
    first_position: u64,
    is_last: bool,
    keys: &mut KeyIndex,
    streams: &mut StreamVersions,
) -> Result<ScannedSegment, LogError> {
    let mut cursor = FrameCursor::new(file, 0, LARGE_CHUNK_BYTES);
    let mut sparse_offsets = Vec::new();
    let mut open_batch = OpenBatch::default();
    let mut expected = first_position;
    let mut committed_bytes = 0u64;
    let mut committed_position = first_position - 1;
    // (byte offset of the damage, why, whether intact frames may follow it)
    let damage: Option<(u64, String, bool)> = loop {
        match cursor.next_step().map_err(io_context("reading", path))? {
            Step::Frame {
                offset,
                frame_bytes,
                frame,
            } => {
                if frame.position != expected {
                    break Some((
                        offset,
                        format!(
                            "found position {} where {expected} was expected",
                            frame.position
                        ),
                        true,
                    ));
                }
                let (Ok(key), Ok(stream)) = (
                    std::str::from_utf8(frame.key),
                    std::str::from_utf8(frame.stream),
                ) else {
                    break Some((offset, "key or stream is not utf-8".to_owned(), true));
                };
                if (expected - first_position).is_multiple_of(INDEX_STRIDE) {
                    sparse_offsets.push(offset);
                }
                let key_start = open_batch.key_text.len();
                open_batch.key_text.push_str(key);
                open_batch.keys.push((
                    key_hash(key.as_bytes()),
                    expected,
                    key_start..open_batch.key_text.len(),
                ));
                let stream_start = open_batch.stream_text.len();
                open_batch.stream_text.push_str(stream);
                open_batch
                    .streams
                    .push((expected, stream_start..open_batch.stream_text.len()));
                expected += 1;
                if frame.is_batch_end() {
                    open_batch.commit(keys, streams);
                    committed_bytes = offset + frame_bytes as u64;
                    committed_position = expected - 1;
                }
            }
            Step::End { offset } => {
                if committed_position + 1 == expected {
                    break None;
                }
                break Some((
                    committed_bytes,
                    format!(
                        "the batch from position {} has no batch-end mark before the file ends at byte {offset}",
                        committed_position + 1
                    ),
                    // Every frame after the last batch end is intact: that
                    // is what an unfinished batch looks like, not damage.
                    false,
                ));
            }
            Step::Torn { offset } => {
                break Some((offset, "the file ends inside a record".to_owned(), true));
            }
            Step::Bad { offset, reason } => break Some((offset, reason.to_owned(), true)),
        }
    };

    let file_bytes = file.metadata().map_err(io_context("reading", path))?.len();
    if let Some((damaged_at, reason, check_what_follows)) = damage {
        if !is_last {
            return Err(corrupt(path, damaged_at, reason));
        }
        if check_what_follows
            && intact_frame_after(file, damaged_at, file_bytes, committed_position)
                .map_err(io_context("reading", path))?
        {
            return Err(corrupt(
                path,
                damaged_at,
                format!("{reason}, and intact records follow it, so it is not a torn tail"),
            ));
        }
        tracing::warn!(
            segment = %path.display(),
            damaged_at,
            reason = %reason,
            cut_from = committed_bytes,
            cut_bytes = file_bytes - committed_bytes,
            dropped_records = expected - 1 - committed_position,
            kept_up_to_position = committed_position,
            "cut a torn tail off the event log"
        );
        file.set_len(committed_bytes)
            .map_err(io_context("truncating", path))?;
        file.sync_all().map_err(io_context("syncing", path))?;
        let kept_entries = if committed_position >= first_position {
            ((committed_position - first_position) / INDEX_STRIDE + 1) as usize
        } else {
            0
        };
        sparse_offsets.truncate(kept_entries);
    }
    Ok(ScannedSegment {
        sparse_offsets,
        next_position: committed_position + 1,
        kept_bytes: committed_bytes,
    })
}

/// Whether any valid frame starts after `damaged_at` (excluding it) with a
/// position beyond what was kept. Only called on damage, so reading the rest
/// of the file at once is fine.
fn intact_frame_after(
    file: &File,
    damaged_at: u64,
    file_bytes: u64,
    committed_position: u64,
) -> std::io::Result<bool> {
    let start = damaged_at + 1;
    if start >= file_bytes {
        return Ok(false);
    }
    let mut rest = vec![0u8; (file_bytes - start) as usize];
    file.read_exact_at(&mut rest, start)?;
    // A frame cannot be shorter than MIN_FRAME_BYTES, which bounds how many
    // positions the rest of the file can hold: a cheap filter before the CRC.
    let most_positions = (rest.len() / MIN_FRAME_BYTES) as u64 + 1;
    for at in 0..rest.len().saturating_sub(MIN_FRAME_BYTES - 1) {
        let Some(position) = peek_position(&rest, at) else {
            break;
        };
        if position > committed_position
            && position - committed_position <= most_positions
            && matches!(check_frame(&rest[at..]), FrameCheck::Complete { .. })
        {
            return Ok(true);
        }
    }
    Ok(false)
}
