//! The embedded event log: append-only segment files in one data directory,
//! one writer thread with group commit, any number of concurrent readers.
//! It is the default backend: one machine, nothing to install.
//!
//! # Files
//!
//! - `LOCK`: an exclusive advisory lock (`File::try_lock`) held while the
//!   log is open, so two processes never write one log.
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: a segment, named by the position of its first
//!   record (20 digits, zero-padded). A new segment is started before a batch
//!   once the active one holds at least [`EmbeddedOptions::with_segment_bytes`]
//!   bytes (256 MiB by default); a batch never spans two segments. A segment
//!   is synced in full before the next one is created.
//!
//! # Frame format
//!
//! A segment is a plain sequence of frames, no file header. All integers are
//! little-endian.
//!
//! ```text
//! offset  size  field
//!      0     4  body_length       bytes after the CRC field (27 + key + stream + principal + payload)
//!      4     4  crc32c            CRC32C (Castagnoli) of bytes 0..4 followed by the body
//!      8     1  flags             bit 0: last record of its batch (the batch commit mark)
//!      9     8  position          u64, global position, gap-free from 1
//!     17     8  recorded_at       i64, microseconds since the Unix epoch (UTC)
//!     25     2  key_length        u16
//!     27     2  stream_length     u16
//!     29     2  principal_length  u16
//!     31     4  payload_length    u32
//!     35     …  key, stream, principal (UTF-8), payload (opaque bytes)
//! ```
//!
//! A batch is atomic: only its last frame carries the batch-end flag. On open,
//! frames after the last batch end (an unfinished batch), and a torn or
//! damaged tail with no intact frame after it, are cut off with a warning;
//! damage anywhere else fails the open with [`LogError::Corrupt`] (see
//! `recovery.rs` for the exact rule).
//!
//! # Durability and visibility
//!
//! `append` answers after the one `sync_data` of its group commit. Readers
//! (`read`, `tail`, `head`, `stream_version`) see a record only after that
//! sync, through a durable head the writer publishes on a `watch` channel.
//! After a failed write or sync the writer answers that group with the error
//! (those batches may or may not be stored) and refuses every later append
//! with [`LogError::Unavailable`] until the log is reopened.
//!
//! # Memory
//!
//! Per record: about 15 bytes of key index (a 32-bit key fingerprint and the
//! position as a u32 in a table kept at most 7/8 full; a hit is confirmed by
//! reading the record back, see `key_index.rs`), and one 8-byte sparse-index
//! entry per 128 records. Per stream: its name and last position.

mod frame;
mod key_index;
mod recovery;
mod segments;
mod writer;

use std::collections::VecDeque;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, mpsc};
use std::thread::JoinHandle;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::{oneshot, watch};

use self::segments::Shared;
use self::writer::{EncodedBatch, WriteRequest, Writer};
use crate::{AppendBatch, AppendOutcome, EventLog, LogError, Record};

/// The name of the lock file in the data directory.
const LOCK_FILE_NAME: &str = "LOCK";

/// How many records a tail reads at a time while catching up.
const TAIL_READ_RECORDS: usize = 1024;

/// How an [`EmbeddedLog`] is set up. `Default` is what a service wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedOptions {
    segment_bytes: u64,
    max_payload_bytes: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 256 * 1024 * 1024,
            max_payload_bytes: 1024 * 1024,
        }
    }
}

impl EmbeddedOptions {
    /// Start a new segment once the active one holds at least this many bytes
    /// (checked before each batch). At least 1.
    pub fn with_segment_bytes(mut self, segment_bytes: u64) -> Self {
        self.segment_bytes = segment_bytes.max(1);
        self
    }

    /// Refuse a record whose payload is bigger than this (default 1 MiB, at
    /// most 64 MiB) with [`LogError::Invalid`].
    pub fn with_max_payload_bytes(mut self, max_payload_bytes: usize) -> Self {
        self.max_payload_bytes = max_payload_bytes.min(frame::HARD_MAX_PAYLOAD_BYTES);
        self
    }

    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }
}

/// The embedded, file-backed [`EventLog`].
///
/// Dropping it stops the writer thread after the batches already queued and
/// waits for it (at most one group commit), which releases the directory
/// lock; [`EmbeddedLog::close`] does the same without blocking the runtime.
pub struct EmbeddedLog {
    shared: Arc<Shared>,
    /// `None` only once closing has begun.
    requests: Option<mpsc::Sender<WriteRequest>>,
    writer: Option<JoinHandle<()>>,
    max_payload_bytes: usize,
}

impl std::fmt::Debug for EmbeddedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLog")
            .field("dir", &self.shared.dir)
            .field("head", &self.shared.head())
            .finish_non_exhaustive()
    }
}

/// Adds what was being done, and to which path, to an I/O error.
pub(crate) fn io_context<'path>(
    doing: &'static str,
    path: &'path Path,
) -> impl FnOnce(std::io::Error) -> LogError + 'path {
    move |error| {
        LogError::Io(std::io::Error::new(
            error.kind(),
            format!("{doing} {}: {error}", path.display()),
        ))
    }
}

/// Makes a directory's entries (a new or renamed file) durable.
pub(crate) fn sync_directory(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl EmbeddedLog {
    /// Opens (creating if needed) the log in `dir`: takes the directory lock,
    /// scans every segment, cuts a torn tail, rebuilds the indexes and starts
    /// the writer thread.
    ///
    /// This blocks (file scans, fsync): from async code, call it inside
    /// `tokio::task::spawn_blocking`. The returned log needs a tokio runtime
    /// for `read` and `tail`.
    pub fn open(dir: impl AsRef<Path>, options: EmbeddedOptions) -> Result<EmbeddedLog, LogError> {
        let dir: PathBuf = dir.as_ref().to_path_buf();
        // The log holds clinical records: what it creates is its owner's
        // alone (a directory that exists keeps its mode).
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&dir).map_err(io_context("creating", &dir))?;
        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock = writer::owner_only(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false),
        )
        .open(&lock_path)
        .map_err(io_context("opening", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LogError::Unavailable(format!(
                    "event log directory {} is locked: another process (or another open log in this one) is using it",
                    dir.display()
                )));
            }
            Err(TryLockError::Error(error)) => {
                return Err(io_context("locking", &lock_path)(error));
            }
        }

        let recovered = recovery::recover(&dir)?;
        let (head_sender, head_receiver) = watch::channel(recovered.head);
        let active = recovered
            .segments
            .last()
            .map(|segment| Arc::clone(&segment.file))
            .ok_or_else(|| LogError::Corrupt(format!("no segment in {}", dir.display())))?;
        tracing::debug!(dir = %dir.display(), head = recovered.head, keys = recovered.keys.len(), "opened event log");
        let shared = Arc::new(Shared {
            dir,
            segments: RwLock::new(recovered.segments),
            streams: RwLock::new(recovered.streams),
            durable_head: head_receiver,
        });
        let writer = Writer {
            shared: Arc::clone(&shared),
            head_sender,
            _directory_lock: lock,
            active,
            active_bytes: recovered.active_segment_bytes,
            next_position: recovered.head + 1,
            keys: recovered.keys,
            segment_bytes: options.segment_bytes,
            failure: None,
        };
        let (requests, receiver) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("eventlog-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|error| {
                LogError::Io(std::io::Error::new(
                    error.kind(),
                    format!("starting the event log writer thread: {error}"),
                ))
            })?;
        Ok(EmbeddedLog {
            shared,
            requests: Some(requests),
            writer: Some(writer),
            max_payload_bytes: options.max_payload_bytes,
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Stops the writer after the batches already queued and waits for it,
    /// releasing the directory lock, without blocking the async runtime.
    pub async fn close(mut self) {
        self.requests = None;
        if let Some(writer) = self.writer.take() {
            let joined = tokio::task::spawn_blocking(move || writer.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!(dir = %self.shared.dir.display(), "the event log writer thread panicked");
            }
        }
    }
}

impl Drop for EmbeddedLog {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(dir = %self.shared.dir.display(), "the event log writer thread panicked");
        }
    }
}

fn writer_gone() -> LogError {
    LogError::Unavailable("the event log writer has stopped".into())
}

async fn read_blocking(
    shared: Arc<Shared>,
    from: u64,
    max: usize,
) -> Result<Vec<Record>, LogError> {
    tokio::task::spawn_blocking(move || shared.read_range(from, max))
        .await
        .map_err(|error| LogError::Unavailable(format!("reading the event log failed: {error}")))?
}

/// The state of one `tail` stream.
struct Tail {
    shared: Arc<Shared>,
    durable_head: watch::Receiver<u64>,
    next_position: u64,
    ready: VecDeque<Record>,
    finished: bool,
}

impl Tail {
    fn new(shared: &Arc<Shared>, from: u64) -> Self {
        Tail {
            shared: Arc::clone(shared),
            durable_head: shared.durable_head.clone(),
            next_position: from.max(1),
            ready: VecDeque::new(),
            finished: false,
        }
    }

    async fn next_record(&mut self) -> Option<Result<Record, LogError>> {
        if let Some(record) = self.ready.pop_front() {
            return Some(Ok(record));
        }
        match self.next_read(TAIL_READ_RECORDS).await? {
            Ok(records) => {
                self.ready.extend(records);
                self.ready.pop_front().map(Ok)
            }
            Err(error) => Some(Err(error)),
        }
    }

    /// Waits until a record at `next_position` is durable and reads from
    /// there: 1 to `max` records, straight from one read (a chunk of
    /// `tail_chunks`). `None` once finished; an error finishes.
    async fn next_read(&mut self, max: usize) -> Option<Result<Vec<Record>, LogError>> {
        if self.finished {
            return None;
        }
        loop {
            // Mark the head seen before reading up to it: `changed` below then
            // wakes for any record made durable after this line.
            let head = *self.durable_head.borrow_and_update();
            if self.next_position <= head {
                return match read_blocking(Arc::clone(&self.shared), self.next_position, max).await
                {
                    Ok(records) if !records.is_empty() => {
                        self.next_position += records.len() as u64;
                        Some(Ok(records))
                    }
                    Ok(_) => {
                        self.finished = true;
                        Some(Err(LogError::Corrupt(format!(
                            "position {} is below the durable head {head} but cannot be read",
                            self.next_position
                        ))))
                    }
                    Err(error) => {
                        self.finished = true;
                        Some(Err(error))
                    }
                };
            }
            if self.durable_head.changed().await.is_err() {
                self.finished = true;
                return Some(Err(LogError::Unavailable(
                    "the event log was closed while it was being tailed".into(),
                )));
            }
        }
    }
}

#[async_trait::async_trait]
impl EventLog for EmbeddedLog {
    async fn append(&self, batch: AppendBatch) -> Result<Vec<AppendOutcome>, LogError> {
        for record in &batch.records {
            frame::validate_record(record, self.max_payload_bytes)?;
        }
        let (batch, records) = EncodedBatch::encode(batch);
        let (reply, answer) = oneshot::channel();
        self.requests
            .as_ref()
            .ok_or_else(writer_gone)?
            .send(WriteRequest { batch, reply })
            .map_err(|_| writer_gone())?;
        // Freed here, where they were most likely allocated, while the
        // writer works: not on the writer thread, not after the answer.
        drop(records);
        answer.await.map_err(|_| writer_gone())?
    }

    async fn read(&self, from: u64, max: usize) -> Result<Vec<Record>, LogError> {
        read_blocking(Arc::clone(&self.shared), from, max).await
    }

    async fn head(&self) -> Result<u64, LogError> {
        Ok(self.shared.head())
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, LogError> {
        Ok(self.shared.stream_version(stream))
    }

    fn tail(&self, from: u64) -> BoxStream<'static, Result<Record, LogError>> {
        let tail = Tail::new(&self.shared, from);
        futures::stream::unfold(tail, |mut tail| async move {
            let next = tail.next_record().await?;
            Some((next, tail))
        })
        .boxed()
    }

    fn tail_chunks(
        &self,
        from: u64,
        max: usize,
    ) -> BoxStream<'static, Result<Vec<Record>, LogError>> {
        let tail = Tail::new(&self.shared, from);
        let max = max.max(1);
        futures::stream::unfold(tail, move |mut tail| async move {
            let next = tail.next_read(max).await?;
            Some((next, tail))
        })
        .boxed()
    }
}
