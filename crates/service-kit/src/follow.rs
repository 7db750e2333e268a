//! Following the event log into a checkpointed projection: restore the
//! projection from its checkpoint's snapshot (see [`crate::checkpoint`]),
//! tail the log from the snapshot's position + 1 (a task reading one chunk
//! ahead of the fold), fold each record, and save a new snapshot now and
//! then and on shutdown.
//!
//! Saving is paced: at most every [`CHECKPOINT_INTERVAL`], and never more
//! often than [`SAVE_SPACING`] times the duration of the previous save, so a
//! service holding 100k patients spends at most a tenth of its time on
//! snapshots however busy the log is. The snapshot is taken and written on a
//! blocking thread, between two chunks of records (never inside a fold), so
//! it always reaches a position whose fold completed — for assessment, whose
//! derived events were published.
//!
//! A crash loses at most the records folded since the last save; they are
//! read again from the log on restart, and projections are deterministic
//! folds, so the result is the same. A checkpoint that cannot be used
//! (damaged, of another format, or refused by the projection, e.g. folded
//! with other rule parameters) is logged, deleted, and the projection is
//! rebuilt from position 1.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use eventlog::{EventLog, Record};
use futures::StreamExt;
use serde::de::DeserializeOwned;

use crate::{
    Shutdown,
    checkpoint::{CheckpointError, CheckpointStore, decode},
};

/// The shortest time between two checkpoint saves while records arrive.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);

/// A save waits at least this many times as long as the previous one took.
pub const SAVE_SPACING: u32 = 10;

/// Most records folded in one go before the follower looks at its timers.
const FOLD_CHUNK: usize = 4096;

/// Errors of following the log.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("event log: {0}")]
    Log(#[from] eventlog::LogError),
    #[error("checkpoint task failed: {0}")]
    Task(String),
    /// The projection refused a record (undecodable payload): a bug or a log
    /// written by something else.
    #[error("projection cannot fold position {position}: {reason}")]
    Fold { position: u64, reason: String },
}

/// Takes a projection's snapshot, on a blocking thread. Given the position
/// of the last saved checkpoint, it returns the position the projection
/// reaches and its encoded snapshot ([`crate::checkpoint::encode`]), or
/// `None` when there is nothing new to save (or the state must not be saved
/// now).
pub type Snapshotter =
    Box<dyn FnOnce(u64) -> Result<Option<(u64, Vec<u8>)>, CheckpointError> + Send>;

/// A shared handle on a projection's checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpointer {
    store: Arc<Mutex<CheckpointStore>>,
    directory: PathBuf,
}

fn lock(store: &Mutex<CheckpointStore>) -> std::sync::MutexGuard<'_, CheckpointStore> {
    // A panic while holding the lock leaves the files as consistent as any
    // crash would: a save is atomic on disk.
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Loads, decodes and restores the snapshot; a checkpoint that cannot be
/// used is logged and deleted (`None`: rebuild from position 1).
fn restore_blocking<T: DeserializeOwned, S>(
    store: &mut CheckpointStore,
    restore: impl FnOnce(T) -> Result<S, String>,
) -> Result<Option<(u64, S)>, CheckpointError> {
    let path = store.snapshot_path();
    let outcome = store.load().and_then(|loaded| {
        loaded
            .map(|loaded| Ok((loaded.position, decode::<T>(&loaded.bytes, &path)?)))
            .transpose()
    });
    let reason = match outcome {
        Ok(None) => return Ok(None),
        Ok(Some((position, snapshot))) => match restore(snapshot) {
            Ok(state) => return Ok(Some((position, state))),
            Err(reason) => format!("the projection refused the snapshot: {reason}"),
        },
        Err(CheckpointError::Damaged { path, reason }) => format!("{}: {reason}", path.display()),
        Err(error) => return Err(error),
    };
    tracing::warn!(
        %reason,
        "checkpoint not used: rebuilding the projection from position 1"
    );
    store.discard()?;
    Ok(None)
}

impl Checkpointer {
    /// Opens the checkpoint of `projection` in `directory` (deleting it
    /// with `rebuild`) and restores the projection from its snapshot with
    /// `restore`, on a blocking thread. Returns the handle and, when a
    /// snapshot was restored, its position and the restored state; `None`
    /// means fold the log from position 1. Logs where it resumes.
    pub async fn open<T, S>(
        directory: &Path,
        projection: &str,
        rebuild: bool,
        restore: impl FnOnce(T) -> Result<S, String> + Send + 'static,
    ) -> Result<(Self, Option<(u64, S)>), FollowError>
    where
        T: DeserializeOwned,
        S: Send + 'static,
    {
        let owned_directory = directory.to_owned();
        let projection = projection.to_owned();
        let (store, restored) = tokio::task::spawn_blocking(move || {
            let mut store = CheckpointStore::open(&owned_directory, &projection, rebuild)?;
            let restored = restore_blocking(&mut store, restore)?;
            Ok::<_, CheckpointError>((store, restored))
        })
        .await
        .map_err(|error| FollowError::Task(error.to_string()))??;
        match &restored {
            Some((position, _)) => tracing::info!(
                directory = %directory.display(),
                checkpoint_position = position,
                "projection resumed from checkpoint"
            ),
            None => tracing::info!(
                directory = %directory.display(),
                "no usable checkpoint: the projection starts from position 1"
            ),
        }
        Ok((
            Self {
                store: Arc::new(Mutex::new(store)),
                directory: directory.to_owned(),
            },
            restored,
        ))
    }

    /// Restores the projection from the checkpoint again (a projection that
    /// must start over, like ingest after a batch that was not appended),
    /// on a blocking thread; `None`: fold the log from position 1.
    pub async fn reload<T, S>(
        &self,
        restore: impl FnOnce(T) -> Result<S, String> + Send + 'static,
    ) -> Result<Option<(u64, S)>, FollowError>
    where
        T: DeserializeOwned,
        S: Send + 'static,
    {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || restore_blocking(&mut lock(&store), restore))
            .await
            .map_err(|error| FollowError::Task(error.to_string()))?
            .map_err(FollowError::from)
    }

    /// The position of the last checkpoint restored or saved (0: none).
    pub fn position(&self) -> u64 {
        lock(&self.store).position()
    }

    /// Takes a snapshot with `snapshotter` and saves it, both on a blocking
    /// thread. Returns whether a checkpoint was saved.
    pub async fn save(&self, snapshotter: Snapshotter) -> Result<bool, FollowError> {
        let store = Arc::clone(&self.store);
        let directory = self.directory.clone();
        tokio::task::spawn_blocking(move || {
            // The snapshot is taken without holding the store: the
            // projection's lock may be held by a task waiting for the store
            // (ingest restoring its state from the checkpoint).
            let saved = lock(&store).position();
            let Some((position, bytes)) = snapshotter(saved)? else {
                return Ok(false);
            };
            let mut store = lock(&store);
            if position <= store.position() {
                return Ok(false);
            }
            let started = Instant::now();
            store.save(position, &bytes)?;
            tracing::debug!(
                directory = %directory.display(),
                position,
                snapshot_bytes = bytes.len(),
                write_ms = started.elapsed().as_millis() as u64,
                "checkpoint saved"
            );
            Ok::<_, CheckpointError>(true)
        })
        .await
        .map_err(|error| FollowError::Task(error.to_string()))?
        .map_err(FollowError::from)
    }
}

/// When the next save may happen: [`CHECKPOINT_INTERVAL`] after the last,
/// or [`SAVE_SPACING`] times the last save's duration if that is longer.
#[derive(Debug)]
pub struct SavePacing {
    last_end: Instant,
    last_duration: Duration,
}

impl Default for SavePacing {
    fn default() -> Self {
        Self::new()
    }
}

impl SavePacing {
    pub fn new() -> Self {
        Self {
            last_end: Instant::now(),
            last_duration: Duration::ZERO,
        }
    }

    /// True when a save is due now.
    pub fn due(&self) -> bool {
        self.last_end.elapsed() >= CHECKPOINT_INTERVAL.max(self.last_duration * SAVE_SPACING)
    }

    /// Saves with `snapshotter` through `checkpointer` and records how long
    /// it took.
    pub async fn save(
        &mut self,
        checkpointer: &Checkpointer,
        snapshotter: Snapshotter,
    ) -> Result<bool, FollowError> {
        let started = Instant::now();
        let saved = checkpointer.save(snapshotter).await;
        self.last_end = Instant::now();
        self.last_duration = self.last_end.duration_since(started);
        saved
    }
}

/// Tails `log` from `from_position` until `shutdown`, handing each chunk of
/// records to `fold` (which must fold every record of the chunk), and saving
/// the projection's snapshot when [`SavePacing`] says so and at the end. No
/// snapshot is saved after a failed fold: its state may be ahead of what it
/// completed (published, for assessment).
pub async fn follow_log(
    log: Arc<dyn EventLog>,
    checkpointer: Checkpointer,
    from_position: u64,
    shutdown: Shutdown,
    mut fold: impl AsyncFold,
) -> Result<(), FollowError> {
    tracing::info!(from_position, "following the event log");
    let mut tail = ReadAhead::start(log.tail_chunks(from_position, FOLD_CHUNK));
    let outcome = follow_chunks(&mut tail, &checkpointer, shutdown, &mut fold).await;
    // On every way out, the reader is stopped and gone (the tail it holds
    // dropped) before the follower returns.
    tail.stop().await;
    outcome
}

/// [`follow_log`]'s loop over the read-ahead chunks.
async fn follow_chunks(
    tail: &mut ReadAhead,
    checkpointer: &Checkpointer,
    shutdown: Shutdown,
    fold: &mut impl AsyncFold,
) -> Result<(), FollowError> {
    let mut timer = tokio::time::interval(CHECKPOINT_INTERVAL);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pacing = SavePacing::new();
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = timer.tick() => {
                if pacing.due() {
                    pacing.save(checkpointer, fold.snapshotter()).await?;
                }
            }
            chunk = tail.next() => {
                match chunk {
                    None => break,
                    Some(Ok(records)) => fold.fold(&records).await?,
                    Some(Err(error)) => {
                        // Every record before the failure was folded: keep them.
                        checkpointer.save(fold.snapshotter()).await?;
                        return Err(FollowError::Log(error));
                    }
                }
            }
        }
    }
    checkpointer.save(fold.snapshotter()).await?;
    Ok(())
}

/// How many chunks the reader may have read that the fold has not taken
/// yet (besides the one it holds while waiting for room).
const READ_AHEAD_CHUNKS: usize = 1;

/// The log's chunks, read by a task of their own one chunk ahead of the
/// fold: the next chunk is read (by the embedded log on a blocking thread,
/// by JetStream from its consumer) while this one is folded, so a
/// follower's time is its fold's, not its reads' plus its fold's. A rebuild of two services on two cores was two strict chains
/// of read-then-fold, neither of which could use a core the other left
/// idle (the reads were ~a fifth of each chain).
///
/// Chunks come in the tail's order, and an error after the chunks read
/// before it, so the follower sees what reading inline saw. The reading
/// task ends when the tail does, or when [`ReadAhead::stop`] or a drop
/// aborts it (a tail at the head would otherwise wait for the next record
/// forever, holding the log).
struct ReadAhead {
    chunks: tokio::sync::mpsc::Receiver<Result<Vec<Record>, eventlog::LogError>>,
    /// `None` once the reader was awaited (it ended, or was stopped).
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl ReadAhead {
    fn start(
        mut tail: futures::stream::BoxStream<'static, Result<Vec<Record>, eventlog::LogError>>,
    ) -> Self {
        let (sender, chunks) = tokio::sync::mpsc::channel(READ_AHEAD_CHUNKS);
        let reader = tokio::spawn(async move {
            while let Some(chunk) = tail.next().await {
                if sender.send(chunk).await.is_err() {
                    break;
                }
            }
        });
        Self {
            chunks,
            reader: Some(reader),
        }
    }

    /// The next chunk, or `None` when the tail ended. A panic of the tail
    /// (in the reader) is resumed here, so it reaches the follower as it
    /// did when the tail was read inline, instead of looking like the
    /// tail's end.
    async fn next(&mut self) -> Option<Result<Vec<Record>, eventlog::LogError>> {
        let chunk = self.chunks.recv().await;
        if chunk.is_none()
            && let Some(reader) = &mut self.reader
        {
            // Awaited through a reference, so a follower that drops this
            // future (another `select!` branch won) awaits it again next time.
            let ended = reader.await;
            self.reader = None;
            resume_if_panicked(ended);
        }
        chunk
    }

    /// Stops the reader and waits until it is gone (its tail dropped).
    async fn stop(mut self) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
            resume_if_panicked(reader.await);
        }
    }
}

/// Resumes the reader's panic, if it panicked; a reader that ended or was
/// cancelled is simply gone.
fn resume_if_panicked(ended: Result<(), tokio::task::JoinError>) {
    if let Err(error) = ended
        && error.is_panic()
    {
        std::panic::resume_unwind(error.into_panic());
    }
}

impl Drop for ReadAhead {
    /// A read-ahead dropped without [`ReadAhead::stop`] (its follower's
    /// future was dropped) still stops its reader.
    fn drop(&mut self) {
        if let Some(reader) = &self.reader {
            reader.abort();
        }
    }
}

/// What a follower does with each chunk of records, and how it snapshots.
pub trait AsyncFold: Send {
    fn fold(
        &mut self,
        records: &[Record],
    ) -> impl std::future::Future<Output = Result<(), FollowError>> + Send;

    /// The projection's snapshot as folded so far, taken when called on a
    /// blocking thread (see [`Snapshotter`]).
    fn snapshotter(&self) -> Snapshotter;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;

    use eventlog::{LogError, Record};
    use futures::StreamExt;

    use super::ReadAhead;

    fn record(position: u64) -> Record {
        Record {
            position,
            recorded_at_micros: 0,
            key: "k".into(),
            stream: "s".into(),
            principal: "p".into(),
            payload: bytes::Bytes::new(),
        }
    }

    /// The chunks come as the tail gave them, the error after the chunks
    /// read before it, then the end.
    #[tokio::test]
    async fn read_ahead_gives_the_tails_chunks_in_order_then_its_error() {
        let tail = futures::stream::iter(vec![
            Ok(vec![record(1), record(2)]),
            Ok(vec![record(3)]),
            Err(LogError::Unavailable("gone".into())),
        ])
        .boxed();
        let mut chunks = ReadAhead::start(tail);
        let positions = |chunk: Vec<Record>| chunk.iter().map(|r| r.position).collect::<Vec<_>>();
        assert_eq!(positions(chunks.next().await.unwrap().unwrap()), [1, 2]);
        assert_eq!(positions(chunks.next().await.unwrap().unwrap()), [3]);
        assert!(matches!(
            chunks.next().await,
            Some(Err(LogError::Unavailable(_)))
        ));
        assert!(chunks.next().await.is_none());
    }

    /// Dropped, it stops its reader, which drops the tail (a tail waiting at
    /// the head would otherwise hold the log for ever).
    #[tokio::test]
    async fn dropping_the_read_ahead_drops_the_tail() {
        let held = Arc::new(());
        let witness = Arc::clone(&held);
        let tail = futures::stream::once(async { Ok(vec![record(1)]) })
            .chain(futures::stream::pending())
            .map(move |chunk| {
                let _keep = &witness;
                chunk
            })
            .boxed();
        let mut chunks = ReadAhead::start(tail);
        assert!(chunks.next().await.unwrap().is_ok());
        assert_eq!(Arc::strong_count(&held), 2);
        chunks.stop().await;
        assert_eq!(Arc::strong_count(&held), 1);
    }

    /// Dropped without `stop` (its follower's future dropped), it still
    /// stops its reader.
    #[tokio::test]
    async fn a_dropped_read_ahead_stops_its_reader() {
        let tail = futures::stream::pending().boxed();
        let chunks = ReadAhead::start(tail);
        let reader = chunks.reader.as_ref().unwrap().abort_handle();
        drop(chunks);
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while !reader.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the reader was not stopped");
    }

    /// A tail that panics makes the follower panic, as reading it inline
    /// did, instead of ending as if the tail had.
    #[tokio::test]
    async fn a_panic_of_the_tail_reaches_the_follower() {
        let tail = futures::stream::once(async { Ok(vec![record(1)]) })
            .chain(futures::stream::poll_fn(
                |_| -> std::task::Poll<Option<Result<Vec<Record>, LogError>>> {
                    panic!("the tail broke")
                },
            ))
            .boxed();
        let follower = tokio::spawn(async move {
            let mut chunks = ReadAhead::start(tail);
            let mut seen = 0;
            while let Some(chunk) = chunks.next().await {
                seen += chunk.unwrap().len();
            }
            seen
        });
        let ended = follower.await.unwrap_err();
        assert!(ended.is_panic(), "{ended:?}");
    }
}
