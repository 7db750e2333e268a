//! The event log: an append-only sequence of opaque records with a gap-free
//! global position from 1. It knows bytes, keys and positions, never clinical
//! events: the domain decides what a record means.
//!
//! Two backends stand behind one trait, [`EventLog`]: the embedded
//! segment-file log (the default, one machine, nothing to install) and NATS
//! JetStream (many machines). One conformance suite proves they behave alike.

#![forbid(unsafe_code)]

use std::fmt;

use bytes::Bytes;
pub use bytestring::ByteString;
use futures::stream::BoxStream;

pub mod embedded;
pub mod jetstream;
pub mod nats_auth;
pub mod network;
mod pass_through;

pub use embedded::{EmbeddedLog, EmbeddedOptions};
pub use jetstream::{BatchMode, JetStreamLog, JetStreamOptions};
pub use nats_auth::{NatsAuth, NatsConnectError, NatsServers, connect_nats, redact_nats_urls};

/// A record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// The idempotency key (the event id): unique across the whole log.
    pub key: String,
    /// The stream the record belongs to (`<centre>.<patient>`), the unit of
    /// optimistic concurrency.
    pub stream: String,
    /// Who is writing it (the authenticated principal).
    pub principal: String,
    /// The record's content. Idempotency compares these bytes: the same key
    /// with the same content is a duplicate, with other content a conflict.
    pub payload: Bytes,
}

/// A stored record, as read back.
///
/// Its text fields are [`ByteString`]s (UTF-8 checked, `Deref<Target = str>`,
/// comparable with `&str` and `String`; `String::into()` builds one): the
/// embedded log hands out every field of the records of one read as slices
/// of one shared buffer, so reading a record allocates nothing of its own. A
/// record kept for long keeps that read's buffer (a few hundred KiB at
/// most) alive: keep what was decoded from it instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Global position, gap-free from 1.
    pub position: u64,
    /// When the log stored it, microseconds since the Unix epoch (UTC).
    pub recorded_at_micros: i64,
    pub key: ByteString,
    pub stream: ByteString,
    pub principal: ByteString,
    pub payload: Bytes,
}

/// What the writer expects of a stream before its batch is appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream has no record yet.
    Empty,
    /// The stream's last record is at this global position.
    At(u64),
}

/// A batch to append atomically: all of it is stored, or none.
#[derive(Debug, Clone, Default)]
pub struct AppendBatch {
    pub records: Vec<NewRecord>,
    /// Optimistic concurrency checks, per stream, made before anything is
    /// written. A stream not named here is not checked.
    pub expectations: Vec<(String, ExpectedVersion)>,
}

impl AppendBatch {
    pub fn new(records: Vec<NewRecord>) -> Self {
        Self {
            records,
            expectations: Vec::new(),
        }
    }

    pub fn expect(mut self, stream: impl Into<String>, version: ExpectedVersion) -> Self {
        self.expectations.push((stream.into(), version));
        self
    }
}

/// What happened to one record of an appended batch, in batch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored at this position.
    Appended { position: u64 },
    /// Already stored with the same content (at this position): nothing new.
    Duplicate { position: u64 },
}

impl AppendOutcome {
    pub fn position(self) -> u64 {
        match self {
            AppendOutcome::Appended { position } | AppendOutcome::Duplicate { position } => {
                position
            }
        }
    }
}

/// Errors of the event log, by how a caller should react.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The key is already stored with other content: the first one stays.
    /// The caller should report a conflict, not retry.
    #[error("event id {key} is already stored at position {position} with other content")]
    KeyConflict { key: String, position: u64 },
    /// A stream was not at the expected version. The caller may re-read and retry.
    #[error("stream {stream} was expected at {expected} but is at {actual}")]
    WrongExpectedVersion {
        stream: String,
        expected: ExpectedVersionDisplay,
        actual: u64,
    },
    /// The request itself is malformed (empty key, oversized record, …).
    #[error("invalid append: {0}")]
    Invalid(String),
    /// The log cannot be opened as configured: a bad URL or options,
    /// credentials the server refused, a stream of another shape. Fix the
    /// configuration; retrying will not help.
    #[error("{0}")]
    Configuration(String),
    /// The log cannot be reached or written now; retrying later may succeed.
    /// Nothing of the batch is stored when this is returned from `append`,
    /// unless the backend says otherwise in its docs.
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// Stored data is damaged beyond what recovery repairs: a bug or a disk fault.
    #[error("event log corrupt: {0}")]
    Corrupt(String),
    #[error("event log i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// [`ExpectedVersion`] in an error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedVersionDisplay(pub ExpectedVersion);

impl fmt::Display for ExpectedVersionDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::Empty => f.write_str("empty"),
            ExpectedVersion::At(position) => write!(f, "position {position}"),
        }
    }
}

/// The append-only log behind every toxaudit service.
///
/// Positions are gap-free from 1. `append` is atomic and durable: when it
/// returns `Ok`, every record of the batch is stored and will survive a crash
/// (or, for `Duplicate`, was already stored).
#[async_trait::async_trait]
pub trait EventLog: Send + Sync + fmt::Debug {
    /// Appends a batch atomically after checking its expectations and keys.
    async fn append(&self, batch: AppendBatch) -> Result<Vec<AppendOutcome>, LogError>;

    /// The most records one atomic [`EventLog::append`] may hold, when the
    /// backend has a limit (`None`: any number). A caller with more records
    /// than that appends them in several batches, each atomic on its own.
    fn most_records_per_append(&self) -> Option<usize> {
        None
    }

    /// Up to `max` records with position >= `from`, in position order. Fewer
    /// (possibly none) when the log ends.
    async fn read(&self, from: u64, max: usize) -> Result<Vec<Record>, LogError>;

    /// The position of the last stored record (0 when the log is empty).
    async fn head(&self) -> Result<u64, LogError>;

    /// The position of the stream's last record (0 when it has none).
    async fn stream_version(&self, stream: &str) -> Result<u64, LogError>;

    /// Every record from position `from` on, then each new one as it is
    /// appended: a live tail that never ends on its own. No gap, no repeat.
    fn tail(&self, from: u64) -> BoxStream<'static, Result<Record, LogError>>;

    /// [`EventLog::tail`] in chunks of 1 to `max` records (`max` 0 is taken
    /// as 1): the same records in the same order, each chunk what the log had
    /// ready at once, so a reader far behind gets full chunks and one at the
    /// head whatever is new. An error is an item of its own, after the chunk
    /// of the records before it.
    ///
    /// The default regroups `tail`; a backend that reads in chunks anyway
    /// hands its chunks over instead of passing each record through a
    /// stream (the embedded log: ~4% of a projection's replay, ADR 0001).
    fn tail_chunks(
        &self,
        from: u64,
        max: usize,
    ) -> BoxStream<'static, Result<Vec<Record>, LogError>> {
        chunks_of_tail(self.tail(from), max.max(1))
    }
}

/// `tail` regrouped into chunks of what is ready, split around each error
/// so the items keep `tail`'s order.
fn chunks_of_tail(
    tail: BoxStream<'static, Result<Record, LogError>>,
    max: usize,
) -> BoxStream<'static, Result<Vec<Record>, LogError>> {
    use futures::StreamExt;
    tail.ready_chunks(max)
        .flat_map(|chunk| {
            let mut items = Vec::with_capacity(1);
            let mut records = Vec::with_capacity(chunk.len());
            for item in chunk {
                match item {
                    Ok(record) => records.push(record),
                    Err(error) => {
                        if !records.is_empty() {
                            items.push(Ok(std::mem::take(&mut records)));
                        }
                        items.push(Err(error));
                    }
                }
            }
            if !records.is_empty() {
                items.push(Ok(records));
            }
            futures::stream::iter(items)
        })
        .boxed()
}
