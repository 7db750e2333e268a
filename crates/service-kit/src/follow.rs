//! Following the event log into a checkpointed projection: load the local
//! checkpoint, then tail the log from the position after it, fold each
//! record, and commit the checkpoint every few seconds and on shutdown.
//!
//! A crash loses at most the records folded since the last commit; they are
//! read again from the log on restart, and projections are deterministic
//! folds, so the result is the same.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use eventlog::{EventLog, Record};
use futures::StreamExt;

use crate::{
    Shutdown,
    checkpoint::{CheckpointError, CheckpointStore},
};

/// How often a follower makes its checkpoint durable while records arrive.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);

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

/// A shared handle on a projection's checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpointer {
    store: Arc<Mutex<CheckpointStore>>,
    directory: PathBuf,
}

impl Checkpointer {
    /// Opens the checkpoint in `directory` and folds what it holds into
    /// `state`; returns the handle and the state. Logs where it resumes.
    pub async fn open<S: Send + 'static>(
        directory: &Path,
        rebuild: bool,
        mut state: S,
        mut fold: impl FnMut(&mut S, Record) + Send + 'static,
    ) -> Result<(Self, S), FollowError> {
        let owned_directory = directory.to_owned();
        let (store, state) = tokio::task::spawn_blocking(move || {
            let store = CheckpointStore::open(&owned_directory, rebuild, |record| {
                fold(&mut state, record)
            })?;
            Ok::<_, CheckpointError>((store, state))
        })
        .await
        .map_err(|error| FollowError::Task(error.to_string()))??;
        tracing::info!(
            directory = %directory.display(),
            checkpoint_position = store.position(),
            "projection resumed from checkpoint"
        );
        Ok((
            Self {
                store: Arc::new(Mutex::new(store)),
                directory: directory.to_owned(),
            },
            state,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CheckpointStore> {
        // A panic while holding the lock leaves the store as consistent as
        // any crash would: its durable part is only moved by `commit`.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The position reached, including records not committed yet.
    pub fn position(&self) -> u64 {
        self.lock().pending_position()
    }

    /// Folds every record of the checkpoint (durable and pending) into
    /// `state`, on a blocking thread, and returns it.
    pub async fn replay<S: Send + 'static>(
        &self,
        mut state: S,
        mut fold: impl FnMut(&mut S, Record) + Send + 'static,
    ) -> Result<S, FollowError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            let mut store = store.lock().unwrap_or_else(PoisonError::into_inner);
            store.replay(|record| fold(&mut state, record))?;
            Ok::<_, CheckpointError>(state)
        })
        .await
        .map_err(|error| FollowError::Task(error.to_string()))?
        .map_err(FollowError::from)
    }

    /// Adds a folded record to the next commit.
    pub fn add(&self, record: &Record) {
        self.lock().add(record);
    }

    /// Makes the checkpoint durable (on a blocking thread: it fsyncs).
    pub async fn commit(&self) -> Result<(), FollowError> {
        let store = Arc::clone(&self.store);
        let directory = self.directory.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = store.lock().unwrap_or_else(PoisonError::into_inner);
            if store.has_pending() {
                store.commit()?;
                tracing::debug!(
                    directory = %directory.display(),
                    position = store.position(),
                    "checkpoint committed"
                );
            }
            Ok::<_, CheckpointError>(())
        })
        .await
        .map_err(|error| FollowError::Task(error.to_string()))??;
        Ok(())
    }
}

/// Tails `log` after the checkpoint's position until `shutdown`, handing each
/// chunk of records to `fold` (which must fold every record of the chunk),
/// adding them to the checkpoint and committing it every
/// [`CHECKPOINT_INTERVAL`] and at the end.
pub async fn follow_log(
    log: Arc<dyn EventLog>,
    checkpointer: Checkpointer,
    shutdown: Shutdown,
    mut fold: impl AsyncFold,
) -> Result<(), FollowError> {
    let from = checkpointer.position() + 1;
    tracing::info!(from_position = from, "following the event log");
    let mut tail = log.tail(from).ready_chunks(FOLD_CHUNK);
    let mut commit_timer = tokio::time::interval(CHECKPOINT_INTERVAL);
    commit_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let outcome = loop {
        tokio::select! {
            () = &mut stop => break Ok(()),
            _ = commit_timer.tick() => {
                if let Err(error) = checkpointer.commit().await {
                    break Err(error);
                }
            }
            chunk = tail.next() => {
                let Some(chunk) = chunk else {
                    break Ok(());
                };
                let mut records = Vec::with_capacity(chunk.len());
                let mut failure = None;
                for item in chunk {
                    match item {
                        Ok(record) => records.push(record),
                        Err(error) => {
                            failure = Some(error);
                            break;
                        }
                    }
                }
                if let Err(error) = fold.fold(&records).await {
                    break Err(error);
                }
                for record in &records {
                    checkpointer.add(record);
                }
                if let Some(error) = failure {
                    break Err(FollowError::Log(error));
                }
            }
        }
    };
    let committed = checkpointer.commit().await;
    outcome.and(committed)
}

/// What a follower does with each chunk of records.
pub trait AsyncFold: Send {
    fn fold(
        &mut self,
        records: &[Record],
    ) -> impl std::future::Future<Output = Result<(), FollowError>> + Send;
}
