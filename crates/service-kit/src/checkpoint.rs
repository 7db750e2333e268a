//! Checkpoints of a projection, so a restarted service resumes after the
//! last position it had folded instead of replaying the log from 1.
//!
//! The domain's projections (the audit cohort, the assessments) are in-memory
//! folds without a serialised form, so a checkpoint keeps the projection's
//! *input* locally: the records folded so far, in a file of the service's own
//! data directory, plus the position they reach. A restart folds that local
//! file (fast, no network, no log scan) and then follows the log from the
//! checkpoint position + 1. `--rebuild` throws the checkpoint away.
//!
//! Files, in the checkpoint directory:
//! - `records.bin`: frames `[u32 frame length][u64 position][i64 recorded_at
//!   micros][u16 key length][key][u16 stream length][stream][u16 principal
//!   length][principal][payload]`, little-endian, appended in position order;
//! - `checkpoint.json`: `{"position": P, "records_bytes": N}` written
//!   atomically (temporary file, fsync, rename) after `records.bin` was
//!   synced. Bytes of `records.bin` past N are an unfinished commit and are
//!   cut on open, so a crash at any moment leaves a consistent checkpoint.

use std::{
    fs::{File, OpenOptions},
    io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

use bytes::Bytes;
use eventlog::Record;

/// Errors of reading or writing a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint i/o in {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The files do not agree with each other: start with `--rebuild`.
    #[error("checkpoint in {path} is damaged ({reason}); restart with --rebuild")]
    Damaged { path: PathBuf, reason: String },
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Marker {
    position: u64,
    records_bytes: u64,
}

/// The checkpoint of one projection.
#[derive(Debug)]
pub struct CheckpointStore {
    directory: PathBuf,
    records: BufWriter<File>,
    /// Position reached by what is durable.
    position: u64,
    /// Bytes of `records.bin` that are durable.
    durable_bytes: u64,
    /// Frames added since the last commit.
    pending: Vec<u8>,
    pending_position: u64,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    }
}

impl CheckpointStore {
    /// Opens (creating) the checkpoint in `directory`, and hands every record
    /// it holds, in position order, to `fold`. With `rebuild` the old
    /// checkpoint is discarded first. Blocking: call it from
    /// `spawn_blocking` in async code.
    pub fn open(
        directory: &Path,
        rebuild: bool,
        mut fold: impl FnMut(Record),
    ) -> Result<Self, CheckpointError> {
        std::fs::create_dir_all(directory).map_err(io_error(directory))?;
        let records_path = directory.join("records.bin");
        let marker_path = directory.join("checkpoint.json");
        if rebuild {
            for path in [&records_path, &marker_path] {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(io_error(path)(error)),
                }
            }
            tracing::info!(directory = %directory.display(), "checkpoint discarded for a rebuild");
        }
        let marker = match std::fs::read(&marker_path) {
            Ok(bytes) => serde_json::from_slice::<Marker>(&bytes).map_err(|error| {
                CheckpointError::Damaged {
                    path: marker_path.clone(),
                    reason: error.to_string(),
                }
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Marker {
                position: 0,
                records_bytes: 0,
            },
            Err(error) => return Err(io_error(&marker_path)(error)),
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&records_path)
            .map_err(io_error(&records_path))?;
        let length = file.metadata().map_err(io_error(&records_path))?.len();
        if length < marker.records_bytes {
            return Err(CheckpointError::Damaged {
                path: records_path,
                reason: format!(
                    "{length} bytes on disk but the checkpoint says {}",
                    marker.records_bytes
                ),
            });
        }
        if length > marker.records_bytes {
            // An unfinished commit: its frames were never declared durable.
            file.set_len(marker.records_bytes)
                .map_err(io_error(&records_path))?;
        }
        let mut reader = BufReader::with_capacity(1 << 20, &mut file);
        let last_position =
            read_frames(&mut reader, marker.records_bytes, &records_path, &mut fold)?;
        if last_position != marker.position {
            return Err(CheckpointError::Damaged {
                path: records_path,
                reason: format!(
                    "the records reach position {last_position}, the checkpoint says {}",
                    marker.position
                ),
            });
        }
        drop(reader);
        file.seek(SeekFrom::End(0))
            .map_err(io_error(&records_path))?;
        Ok(Self {
            directory: directory.to_owned(),
            records: BufWriter::with_capacity(1 << 20, file),
            position: marker.position,
            durable_bytes: marker.records_bytes,
            pending: Vec::new(),
            pending_position: marker.position,
        })
    }

    /// The last position the durable checkpoint holds (0: none).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The position reached including records not yet committed.
    pub fn pending_position(&self) -> u64 {
        self.pending_position
    }

    /// True when records were added since the last commit.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Hands every record added so far — durable and pending — to `fold`,
    /// in position order, without changing the checkpoint: a projection that
    /// must start over (ingest after a refused batch) refolds from here
    /// instead of from the log. Blocking.
    pub fn replay(&mut self, mut fold: impl FnMut(Record)) -> Result<(), CheckpointError> {
        let records_path = self.directory.join("records.bin");
        let file = File::open(&records_path).map_err(io_error(&records_path))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        read_frames(&mut reader, self.durable_bytes, &records_path, &mut fold)?;
        let pending = std::mem::take(&mut self.pending);
        let outcome = read_frames(
            &mut pending.as_slice(),
            pending.len() as u64,
            &records_path,
            &mut fold,
        );
        self.pending = pending;
        outcome.map(|_| ())
    }

    /// Adds a folded record; it becomes durable at the next [`commit`](Self::commit).
    pub fn add(&mut self, record: &Record) {
        encode_frame(record, &mut self.pending);
        self.pending_position = record.position;
    }

    /// Makes every added record durable and moves the checkpoint. Blocking.
    pub fn commit(&mut self) -> Result<(), CheckpointError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let records_path = self.directory.join("records.bin");
        self.records
            .write_all(&self.pending)
            .map_err(io_error(&records_path))?;
        self.records.flush().map_err(io_error(&records_path))?;
        self.records
            .get_ref()
            .sync_data()
            .map_err(io_error(&records_path))?;
        let marker = Marker {
            position: self.pending_position,
            records_bytes: self.durable_bytes + self.pending.len() as u64,
        };
        let marker_path = self.directory.join("checkpoint.json");
        let temporary_path = self.directory.join("checkpoint.json.tmp");
        let text = serde_json::to_vec(&marker).map_err(|error| CheckpointError::Damaged {
            path: marker_path.clone(),
            reason: error.to_string(),
        })?;
        {
            let mut temporary = File::create(&temporary_path).map_err(io_error(&temporary_path))?;
            temporary
                .write_all(&text)
                .map_err(io_error(&temporary_path))?;
            temporary.sync_all().map_err(io_error(&temporary_path))?;
        }
        std::fs::rename(&temporary_path, &marker_path).map_err(io_error(&marker_path))?;
        if let Ok(directory) = File::open(&self.directory) {
            // Makes the rename itself durable; not possible everywhere, and a
            // lost rename only means an older (still consistent) checkpoint.
            let _ = directory.sync_all();
        }
        self.position = marker.position;
        self.durable_bytes = marker.records_bytes;
        self.pending.clear();
        Ok(())
    }
}

/// Reads `length` bytes of frames from `reader`, folding each record;
/// returns the last position read (0 for none).
fn read_frames(
    reader: &mut impl Read,
    length: u64,
    path: &Path,
    fold: &mut impl FnMut(Record),
) -> Result<u64, CheckpointError> {
    let mut remaining = length;
    let mut last_position = 0;
    let mut frame = Vec::new();
    while remaining > 0 {
        let mut length_bytes = [0u8; 4];
        reader
            .read_exact(&mut length_bytes)
            .map_err(io_error(path))?;
        let frame_length = u64::from(u32::from_le_bytes(length_bytes));
        if frame_length + 4 > remaining {
            return Err(CheckpointError::Damaged {
                path: path.to_owned(),
                reason: "a frame runs past the checkpoint".to_owned(),
            });
        }
        frame.resize(frame_length as usize, 0);
        reader.read_exact(&mut frame).map_err(io_error(path))?;
        remaining -= frame_length + 4;
        let record = decode_frame(&frame).ok_or_else(|| CheckpointError::Damaged {
            path: path.to_owned(),
            reason: "a frame does not decode".to_owned(),
        })?;
        last_position = record.position;
        fold(record);
    }
    Ok(last_position)
}

fn put_text(text: &str, out: &mut Vec<u8>) {
    // Keys, streams and principals are short (the contract caps them at a
    // few dozen characters); anything longer is cut rather than corrupting
    // the frame.
    let bytes = &text.as_bytes()[..text.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn encode_frame(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&record.position.to_le_bytes());
    out.extend_from_slice(&record.recorded_at_micros.to_le_bytes());
    put_text(&record.key, out);
    put_text(&record.stream, out);
    put_text(&record.principal, out);
    out.extend_from_slice(&record.payload);
    let frame_length = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&frame_length.to_le_bytes());
}

fn decode_frame(frame: &[u8]) -> Option<Record> {
    let mut rest = frame;
    let mut take = |count: usize| -> Option<&[u8]> {
        if rest.len() < count {
            return None;
        }
        let (head, tail) = rest.split_at(count);
        rest = tail;
        Some(head)
    };
    let position = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let recorded_at_micros = i64::from_le_bytes(take(8)?.try_into().ok()?);
    let mut texts = Vec::with_capacity(3);
    for _ in 0..3 {
        let length = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
        texts.push(String::from_utf8(take(length)?.to_vec()).ok()?);
    }
    let payload = Bytes::copy_from_slice(rest);
    let principal = texts.pop()?;
    let stream = texts.pop()?;
    let key = texts.pop()?;
    Some(Record {
        position,
        recorded_at_micros,
        key,
        stream,
        principal,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(position: u64) -> Record {
        Record {
            position,
            recorded_at_micros: 1_700_000_000_000_000 + position as i64,
            key: format!("e-{position}"),
            stream: "leeds.L-1".to_owned(),
            principal: "dr-a".to_owned(),
            payload: Bytes::from(vec![position as u8; 5]),
        }
    }

    #[test]
    fn a_committed_checkpoint_is_read_back() {
        let directory = tempfile::tempdir().unwrap();
        let mut store = CheckpointStore::open(directory.path(), false, |_| {}).unwrap();
        for position in 1..=3 {
            store.add(&record(position));
        }
        store.commit().unwrap();
        store.add(&record(4));
        // Record 4 is never committed: it must not come back.
        drop(store);
        let mut seen = Vec::new();
        let store =
            CheckpointStore::open(directory.path(), false, |record| seen.push(record)).unwrap();
        assert_eq!(seen, vec![record(1), record(2), record(3)]);
        assert_eq!(store.position(), 3);
    }

    #[test]
    fn a_torn_commit_is_cut() {
        let directory = tempfile::tempdir().unwrap();
        let mut store = CheckpointStore::open(directory.path(), false, |_| {}).unwrap();
        store.add(&record(1));
        store.commit().unwrap();
        drop(store);
        // Bytes written after the marker: an interrupted commit.
        let mut file = OpenOptions::new()
            .append(true)
            .open(directory.path().join("records.bin"))
            .unwrap();
        file.write_all(&[9, 9, 9]).unwrap();
        drop(file);
        let mut seen = Vec::new();
        let mut store =
            CheckpointStore::open(directory.path(), false, |record| seen.push(record)).unwrap();
        assert_eq!(seen, vec![record(1)]);
        store.add(&record(2));
        store.commit().unwrap();
        drop(store);
        let mut seen = Vec::new();
        CheckpointStore::open(directory.path(), false, |record| seen.push(record)).unwrap();
        assert_eq!(seen, vec![record(1), record(2)]);
    }

    #[test]
    fn replay_gives_durable_and_pending_records() {
        let directory = tempfile::tempdir().unwrap();
        let mut store = CheckpointStore::open(directory.path(), false, |_| {}).unwrap();
        store.add(&record(1));
        store.add(&record(2));
        store.commit().unwrap();
        store.add(&record(3));
        let mut seen = Vec::new();
        store.replay(|record| seen.push(record)).unwrap();
        assert_eq!(seen, vec![record(1), record(2), record(3)]);
        // Replaying changes nothing: the pending record still commits.
        store.commit().unwrap();
        drop(store);
        let mut seen = Vec::new();
        CheckpointStore::open(directory.path(), false, |record| seen.push(record)).unwrap();
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn rebuild_starts_empty() {
        let directory = tempfile::tempdir().unwrap();
        let mut store = CheckpointStore::open(directory.path(), false, |_| {}).unwrap();
        store.add(&record(1));
        store.commit().unwrap();
        drop(store);
        let mut seen = Vec::new();
        let store =
            CheckpointStore::open(directory.path(), true, |record| seen.push(record)).unwrap();
        assert!(seen.is_empty());
        assert_eq!(store.position(), 0);
    }
}
