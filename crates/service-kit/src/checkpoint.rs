//! Checkpoints of a projection: a snapshot of the projection's state and the
//! log position it reaches, so a restarted service loads the snapshot and
//! follows the log from that position + 1 instead of refolding from 1.
//!
//! The store keeps bytes; what they encode is the projection's (its domain
//! snapshot, see `domain::snapshot`), encoded with [`encode`] (postcard: a
//! compact binary serde format) and read back with [`decode`].
//!
//! Files, in the checkpoint directory:
//! - `snapshot.bin`: the encoded snapshot;
//! - `checkpoint.json`: the marker `{"format": F, "projection": NAME,
//!   "position": P, "snapshot_bytes": N, "snapshot_xxh3": H}`.
//!
//! A save writes `snapshot.bin.tmp` (fsync), then the new marker through
//! `checkpoint.json.tmp` (fsync, rename, fsync of the directory: the commit
//! point), then renames `snapshot.bin.tmp` to `snapshot.bin` (fsync of the
//! directory). A crash before the commit point leaves the old marker and the
//! old `snapshot.bin`, intact; a crash after it leaves the new marker and a
//! complete `snapshot.bin.tmp`, which the next load checks against the marker
//! and moves into place. A snapshot whose length or xxh3 differs from the
//! marker's, or a marker of another format or projection, is never used: the
//! load says why and the service rebuilds from position 1.

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Serialize, de::DeserializeOwned};

/// The layout of the checkpoint files; a change bumps it, and a checkpoint
/// of another format is refused (the service rebuilds).
pub const CHECKPOINT_FORMAT: u32 = 1;

const SNAPSHOT_FILE: &str = "snapshot.bin";
const SNAPSHOT_TEMPORARY: &str = "snapshot.bin.tmp";
const MARKER_FILE: &str = "checkpoint.json";
const MARKER_TEMPORARY: &str = "checkpoint.json.tmp";

/// Errors of reading or writing a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint i/o in {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The checkpoint cannot be used (damaged, or of another format or
    /// projection): the service rebuilds from position 1.
    #[error("checkpoint in {path} cannot be used: {reason}")]
    Damaged { path: PathBuf, reason: String },
    /// A snapshot could not be encoded.
    #[error("snapshot cannot be encoded: {0}")]
    Encode(String),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Marker {
    format: u32,
    projection: String,
    position: u64,
    snapshot_bytes: u64,
    snapshot_xxh3: u64,
}

/// A snapshot read back from a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedSnapshot {
    /// The last log position folded into the snapshot.
    pub position: u64,
    /// The encoded snapshot, checked against the marker's length and xxh3.
    pub bytes: Vec<u8>,
}

/// The checkpoint of one projection, in its own directory.
#[derive(Debug)]
pub struct CheckpointStore {
    directory: PathBuf,
    projection: String,
    /// The position of the durable checkpoint (0: none).
    position: u64,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    }
}

fn remove_if_present(path: &Path) -> Result<(), CheckpointError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error(path)(error)),
    }
}

/// Writes `bytes` to `path` and makes them durable. A snapshot holds every
/// patient's pseudonym and findings, so on Unix the file is created readable
/// by its owner only (0600), whatever the umask.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

/// Makes renames in `directory` durable. Not possible on every platform; a
/// lost rename only means the previous (still consistent) checkpoint.
fn sync_directory(directory: &Path) {
    if let Ok(handle) = File::open(directory)
        && let Err(error) = handle.sync_all()
    {
        tracing::debug!(directory = %directory.display(), %error, "directory fsync not possible");
    }
}

/// Encodes a projection's snapshot for [`CheckpointStore::save`].
pub fn encode<T: Serialize>(snapshot: &T) -> Result<Vec<u8>, CheckpointError> {
    postcard::to_stdvec(snapshot).map_err(|error| CheckpointError::Encode(error.to_string()))
}

/// Decodes a snapshot written by [`encode`]; `path` names it in the error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], path: &Path) -> Result<T, CheckpointError> {
    postcard::from_bytes(bytes).map_err(|error| CheckpointError::Damaged {
        path: path.to_owned(),
        reason: format!("the snapshot does not decode: {error}"),
    })
}

impl CheckpointStore {
    /// Opens (creating) the checkpoint directory of `projection`. With
    /// `rebuild` any checkpoint there is deleted. Blocking.
    pub fn open(
        directory: &Path,
        projection: &str,
        rebuild: bool,
    ) -> Result<Self, CheckpointError> {
        std::fs::create_dir_all(directory).map_err(io_error(directory))?;
        let store = Self {
            directory: directory.to_owned(),
            projection: projection.to_owned(),
            position: 0,
        };
        if rebuild {
            store.delete_files()?;
            tracing::info!(directory = %directory.display(), "checkpoint discarded for a rebuild");
        }
        Ok(store)
    }

    /// The position of the last checkpoint loaded or saved (0: none).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The path of the snapshot file, to name it in messages.
    pub fn snapshot_path(&self) -> PathBuf {
        self.directory.join(SNAPSHOT_FILE)
    }

    fn delete_files(&self) -> Result<(), CheckpointError> {
        // The marker first: without it, nothing left behind is ever used.
        for name in [
            MARKER_FILE,
            MARKER_TEMPORARY,
            SNAPSHOT_TEMPORARY,
            SNAPSHOT_FILE,
        ] {
            remove_if_present(&self.directory.join(name))?;
        }
        sync_directory(&self.directory);
        Ok(())
    }

    /// Deletes the checkpoint (after a refused snapshot), so nothing of it
    /// is used again; the next save writes a new one. Blocking.
    pub fn discard(&mut self) -> Result<(), CheckpointError> {
        self.delete_files()?;
        self.position = 0;
        Ok(())
    }

    /// Reads the checkpoint: `None` when there is none, the snapshot when
    /// the marker and the snapshot agree, [`CheckpointError::Damaged`] when
    /// they do not (or the marker is of another format or projection).
    /// Finishes a save interrupted after its commit point. Blocking.
    pub fn load(&mut self) -> Result<Option<LoadedSnapshot>, CheckpointError> {
        let marker_path = self.directory.join(MARKER_FILE);
        let damaged = |path: &Path, reason: String| CheckpointError::Damaged {
            path: path.to_owned(),
            reason,
        };
        let marker = match std::fs::read(&marker_path) {
            Ok(bytes) => serde_json::from_slice::<Marker>(&bytes).map_err(|error| {
                damaged(&marker_path, format!("the marker does not parse: {error}"))
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                // Anything else here is from a save that never committed.
                remove_if_present(&self.directory.join(MARKER_TEMPORARY))?;
                remove_if_present(&self.directory.join(SNAPSHOT_TEMPORARY))?;
                self.position = 0;
                return Ok(None);
            }
            Err(error) => return Err(io_error(&marker_path)(error)),
        };
        if marker.format != CHECKPOINT_FORMAT {
            return Err(damaged(
                &marker_path,
                format!(
                    "it is of format {}, this build reads format {CHECKPOINT_FORMAT}",
                    marker.format
                ),
            ));
        }
        if marker.projection != self.projection {
            return Err(damaged(
                &marker_path,
                format!(
                    "it is a checkpoint of {}, not of {}",
                    marker.projection, self.projection
                ),
            ));
        }
        remove_if_present(&self.directory.join(MARKER_TEMPORARY))?;
        let snapshot_path = self.directory.join(SNAPSHOT_FILE);
        let temporary_path = self.directory.join(SNAPSHOT_TEMPORARY);
        let bytes = match read_matching(&snapshot_path, &marker)? {
            Ok(bytes) => {
                // A newer snapshot whose marker never committed.
                remove_if_present(&temporary_path)?;
                bytes
            }
            Err(reason) => match read_matching(&temporary_path, &marker)? {
                Ok(bytes) => {
                    // The save committed its marker, then stopped before
                    // moving its snapshot into place: finish it.
                    std::fs::rename(&temporary_path, &snapshot_path)
                        .map_err(io_error(&snapshot_path))?;
                    sync_directory(&self.directory);
                    tracing::info!(
                        directory = %self.directory.display(),
                        position = marker.position,
                        "finished a checkpoint save interrupted after its commit"
                    );
                    bytes
                }
                Err(_) => return Err(damaged(&snapshot_path, reason)),
            },
        };
        self.position = marker.position;
        Ok(Some(LoadedSnapshot {
            position: marker.position,
            bytes,
        }))
    }

    /// Saves `snapshot` as the checkpoint at `position`, atomically (see the
    /// module docs): after a crash at any moment the next load finds this
    /// checkpoint or the previous one. Blocking.
    pub fn save(&mut self, position: u64, snapshot: &[u8]) -> Result<(), CheckpointError> {
        let snapshot_path = self.directory.join(SNAPSHOT_FILE);
        let temporary_path = self.directory.join(SNAPSHOT_TEMPORARY);
        write_synced(&temporary_path, snapshot)?;
        let marker = Marker {
            format: CHECKPOINT_FORMAT,
            projection: self.projection.clone(),
            position,
            snapshot_bytes: snapshot.len() as u64,
            snapshot_xxh3: xxhash_rust::xxh3::xxh3_64(snapshot),
        };
        let marker_path = self.directory.join(MARKER_FILE);
        let marker_temporary = self.directory.join(MARKER_TEMPORARY);
        let text = serde_json::to_vec(&marker)
            .map_err(|error| CheckpointError::Encode(error.to_string()))?;
        write_synced(&marker_temporary, &text)?;
        std::fs::rename(&marker_temporary, &marker_path).map_err(io_error(&marker_path))?;
        sync_directory(&self.directory);
        // Committed: from here a load uses this snapshot, wherever it is.
        self.position = position;
        std::fs::rename(&temporary_path, &snapshot_path).map_err(io_error(&snapshot_path))?;
        sync_directory(&self.directory);
        Ok(())
    }
}

/// The file's bytes when they are the marker's snapshot; `Err(reason)` when
/// the file is missing or differs.
fn read_matching(path: &Path, marker: &Marker) -> Result<Result<Vec<u8>, String>, CheckpointError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Err("the snapshot file is missing".to_owned()));
        }
        Err(error) => return Err(io_error(path)(error)),
    };
    if bytes.len() as u64 != marker.snapshot_bytes {
        return Ok(Err(format!(
            "the snapshot has {} bytes, the marker says {}",
            bytes.len(),
            marker.snapshot_bytes
        )));
    }
    if xxhash_rust::xxh3::xxh3_64(&bytes) != marker.snapshot_xxh3 {
        return Ok(Err(
            "the snapshot's checksum differs from the marker's".to_owned()
        ));
    }
    Ok(Ok(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(directory: &Path) -> CheckpointStore {
        CheckpointStore::open(directory, "test", false).unwrap()
    }

    fn loaded(position: u64, bytes: &[u8]) -> Option<LoadedSnapshot> {
        Some(LoadedSnapshot {
            position,
            bytes: bytes.to_vec(),
        })
    }

    #[cfg(unix)]
    #[test]
    fn a_checkpoint_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let directory = tempfile::tempdir().unwrap();
        store(directory.path()).save(3, b"patients").unwrap();
        for name in [SNAPSHOT_FILE, MARKER_FILE] {
            let mode = std::fs::metadata(directory.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name} has mode {mode:o}");
        }
    }

    #[test]
    fn a_saved_checkpoint_is_read_back() {
        let directory = tempfile::tempdir().unwrap();
        let mut first = store(directory.path());
        assert_eq!(first.load().unwrap(), None);
        first.save(3, b"three").unwrap();
        first.save(7, b"seven!").unwrap();
        assert_eq!(first.position(), 7);
        let mut second = store(directory.path());
        assert_eq!(second.load().unwrap(), loaded(7, b"seven!"));
        assert_eq!(second.position(), 7);
    }

    #[test]
    fn a_save_interrupted_before_its_commit_leaves_the_previous_checkpoint() {
        let directory = tempfile::tempdir().unwrap();
        store(directory.path()).save(3, b"three").unwrap();
        // The next save wrote part of its snapshot and of its marker, then
        // the process died.
        std::fs::write(directory.path().join(SNAPSHOT_TEMPORARY), b"sev").unwrap();
        std::fs::write(directory.path().join(MARKER_TEMPORARY), b"{\"form").unwrap();
        let mut reopened = store(directory.path());
        assert_eq!(reopened.load().unwrap(), loaded(3, b"three"));
        assert!(!directory.path().join(SNAPSHOT_TEMPORARY).exists());
        assert!(!directory.path().join(MARKER_TEMPORARY).exists());
        reopened.save(7, b"seven").unwrap();
        assert_eq!(store(directory.path()).load().unwrap(), loaded(7, b"seven"));
    }

    #[test]
    fn a_save_interrupted_after_its_commit_is_finished_on_load() {
        let directory = tempfile::tempdir().unwrap();
        let mut first = store(directory.path());
        first.save(3, b"three").unwrap();
        first.save(7, b"seven").unwrap();
        // As if the process died between the marker's rename and the
        // snapshot's: the new marker, the old snapshot, the new one aside.
        std::fs::rename(
            directory.path().join(SNAPSHOT_FILE),
            directory.path().join(SNAPSHOT_TEMPORARY),
        )
        .unwrap();
        std::fs::write(directory.path().join(SNAPSHOT_FILE), b"three").unwrap();
        assert_eq!(store(directory.path()).load().unwrap(), loaded(7, b"seven"));
        assert!(!directory.path().join(SNAPSHOT_TEMPORARY).exists());
        assert_eq!(store(directory.path()).load().unwrap(), loaded(7, b"seven"));
    }

    #[test]
    fn a_truncated_or_altered_snapshot_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        store(directory.path()).save(3, b"three").unwrap();
        let snapshot = directory.path().join(SNAPSHOT_FILE);
        std::fs::write(&snapshot, b"thr").unwrap();
        let error = store(directory.path()).load().unwrap_err();
        assert!(
            error.to_string().contains("3 bytes, the marker says 5"),
            "{error}"
        );
        std::fs::write(&snapshot, b"THREE").unwrap();
        let error = store(directory.path()).load().unwrap_err();
        assert!(error.to_string().contains("checksum"), "{error}");
        std::fs::remove_file(&snapshot).unwrap();
        let error = store(directory.path()).load().unwrap_err();
        assert!(error.to_string().contains("missing"), "{error}");
    }

    #[test]
    fn a_marker_of_another_format_or_projection_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        store(directory.path()).save(3, b"three").unwrap();
        let marker_path = directory.path().join(MARKER_FILE);
        let mut marker: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&marker_path).unwrap()).unwrap();
        marker["format"] = serde_json::json!(CHECKPOINT_FORMAT + 1);
        std::fs::write(&marker_path, marker.to_string()).unwrap();
        let error = store(directory.path()).load().unwrap_err();
        assert!(
            error.to_string().contains("this build reads format"),
            "{error}"
        );

        let mut other = CheckpointStore::open(directory.path(), "other", true).unwrap();
        other.save(3, b"three").unwrap();
        let error = store(directory.path()).load().unwrap_err();
        assert!(error.to_string().contains("checkpoint of other"), "{error}");

        std::fs::write(&marker_path, b"{not json").unwrap();
        let error = store(directory.path()).load().unwrap_err();
        assert!(matches!(error, CheckpointError::Damaged { .. }), "{error}");
    }

    #[test]
    fn rebuild_and_discard_start_empty() {
        let directory = tempfile::tempdir().unwrap();
        store(directory.path()).save(3, b"three").unwrap();
        let mut rebuilt = CheckpointStore::open(directory.path(), "test", true).unwrap();
        assert_eq!(rebuilt.load().unwrap(), None);
        assert_eq!(rebuilt.position(), 0);
        rebuilt.save(4, b"four").unwrap();
        rebuilt.discard().unwrap();
        assert_eq!(store(directory.path()).load().unwrap(), None);
    }

    #[test]
    fn snapshots_round_trip_through_the_codec() {
        let value = (7u64, vec!["leeds".to_owned()], [1u64, 2]);
        let bytes = encode(&value).unwrap();
        let back: (u64, Vec<String>, [u64; 2]) = decode(&bytes, Path::new("x")).unwrap();
        assert_eq!(back, value);
        let error = decode::<(u64, Vec<String>)>(&bytes[..3], Path::new("x")).unwrap_err();
        assert!(error.to_string().contains("does not decode"), "{error}");
    }
}
