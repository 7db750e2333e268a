//! The NATS JetStream backend of the event log, for deployments that span
//! machines or sites: [`JetStreamLog`] implements [`EventLog`] on one
//! JetStream stream per deployment.
//!
//! # Subjects and stream
//!
//! Every record is one message of the stream `stream_name` (default
//! `TOXAUDIT_EVENTS`) on the subject `<prefix>.events.<centre>.<patient>`,
//! where the trait's stream `<centre>.<patient>` is split at its first `.`.
//! Each part is escaped into exactly one subject token: bytes outside
//! `[A-Za-z0-9-]` become `_` plus two hex digits, so a pseudonym holding a `.`
//! (`J.Smith` → `J_2ESmith`) stays one token, and one patient is one subject.
//! A stream string of another shape maps to `<prefix>.events._.<escaped stream>`.
//!
//! The global position is the stream sequence: the stream is created with no
//! age or count limit, `deny_delete` and `deny_purge`, so sequences stay
//! gap-free from 1. The key travels as the message id (`Nats-Msg-Id`) and
//! the stream is read back from the subject. The append time (microseconds
//! since the epoch, the appending client's clock) and the principal go in a
//! one-line envelope in front of the payload,
//! `1 <micros> <principal>\n<payload>` (the principal %-escaped outside
//! printable ASCII; see `envelope.rs`), which reads strip:
//! a header would cost nats-server more than the same bytes in the payload,
//! since it looks through every message's header block for each header it
//! knows, and an atomic batch stages every message before storing it
//! (measured: a 1000-record append reaches 59-65% of plain publish with the
//! envelope, 51-58% with the metadata in one header; two headers, as the
//! first format had, cost ~15-20% of an atomic batch's rate). Records appended before the
//! envelope carry their metadata in headers, which are still read:
//! `Toxaudit-Recorded: <micros> <principal>` (session 2), or
//! `Toxaudit-Principal` and `Toxaudit-Recorded-At` (session 1); their payload
//! is the record's, untouched. A record is in the envelope format exactly
//! when it has none of those headers. The append time is the client's rather
//! than the server's timestamp of the message because a hub that sources the
//! centres' streams stamps its copies with the time it sourced them: the
//! envelope (like the headers before it) keeps a record's time the same
//! everywhere, and sourcing copies payload and headers unchanged.
//!
//! # Idempotency
//!
//! Two mechanisms, each covering what the other cannot:
//!
//! 1. Every message carries `Nats-Msg-Id = key`, so the server itself refuses
//!    a second message with a key it stored within the stream's duplicate
//!    window (`duplicate_window`, default two minutes), atomically, even
//!    between concurrent writers and between service instances.
//! 2. Each [`JetStreamLog`] keeps a key index in memory (a 64-bit hash of
//!    every key → its positions; see `key_index.rs`), filled by a catch-up
//!    that reads the `Nats-Msg-Id` headers (headers only) of the records after
//!    the last one it indexed. Connecting catches up over the whole log.
//!    Every append looks its keys up there first. The keys of a batch this
//!    instance stored go into the index from the acknowledgement (positions
//!    and keys are known), so a catch-up reads only other writers' records;
//!    they are filed at the acknowledgement and moved into the maps while a
//!    later append waits for its own (or at the next catch-up), which the
//!    argument below covers too (see `key_index.rs`).
//!
//! Why this is enough: an append trusts a miss in the index only if a
//! catch-up *started* less than a quarter of the duplicate window ago
//! (otherwise it runs one first). A key stored before that catch-up started
//! is in the index; a key stored after it is younger than a quarter window,
//! so the server's `Nats-Msg-Id` check still catches it. The index is derived
//! from the records themselves, so no crash can leave it behind the log, and
//! it needs no writes: a log opened read-only (at a hub) writes nothing.
//! The price is memory (tens of bytes per key) and a headers-only read of the
//! whole log when a service starts.
//!
//! A key found in the index, or reported by the server as a duplicate, is
//! read back: the same payload bytes give `Duplicate { position }`, other bytes
//! `KeyConflict`. If the server refuses an atomic batch for holding a key
//! inside the window, the index is caught up at once and the append retried,
//! which then sees the key.
//!
//! # Optimistic concurrency
//!
//! An expectation on stream S becomes `Nats-Expected-Last-Subject-Sequence`
//! (0 for `Empty`) with `Nats-Expected-Last-Subject-Sequence-Subject` = S's
//! subject, on one message of the batch placed no later than S's first record
//! in the batch (the server checks it against the stream as it was before the
//! batch). One message carries one expectation, so a batch with more
//! expectations than records checks the extra ones from the client just
//! before publishing (a race the server cannot see; rare in practice).
//!
//! # Batches
//!
//! On nats-server 2.12 and later (stream option `allow_atomic`) a batch is one
//! atomic batch publish (`Nats-Batch-Id`, `Nats-Batch-Sequence`,
//! `Nats-Batch-Commit`): stored whole or not at all, at most 1000 records.
//! On an older server ([`BatchMode::Sequential`], chosen automatically) the
//! records are published one by one, expectations checked from the client
//! first and again by the server, and the key index caught up before every
//! append so that keys are found before the first message goes out. A failure
//! part-way (a lost connection, a writer racing on the same stream or key)
//! leaves a stored prefix, which a retry of the same batch completes (the
//! stored records come back as `Duplicate`); concurrent appenders may
//! interleave, so a batch's positions need not be contiguous.
//!
//! # Failures
//!
//! `append` returning [`LogError::Unavailable`] means the outcome is unknown:
//! the batch may or may not be stored (the server may have stored it and the
//! acknowledgement been lost). Retrying the same batch is always safe. An `Ok`
//! is only returned after the server acknowledged the store. On a single
//! server, a stored message survives the server process being killed; to
//! survive the machine losing power, run nats-server with
//! `jetstream { sync_interval: always }` or three replicas.
//!
//! `read` uses one batched direct get for up to 256 records and an ordered
//! consumer for longer reads (replays); `tail` an ordered consumer that is
//! recreated after the last delivered position whenever it fails, so a server
//! restart under a live tail yields no gap and no repeat. The key index
//! catch-up reads headers only.

mod direct_get;
mod envelope;
mod key_index;
mod subjects;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::header::{
    NATS_BATCH_COMMIT, NATS_BATCH_ID, NATS_BATCH_SEQUENCE, NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
    NATS_MESSAGE_ID,
};
use async_nats::jetstream::{self, stream};
use async_nats::{HeaderMap, HeaderValue};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::{
    AppendBatch, AppendOutcome, EventLog, ExpectedVersion, ExpectedVersionDisplay, LogError,
    NewRecord, Record,
};
use direct_get::{Request, StoredMessage, direct_get};
use envelope::Envelopes;
use key_index::{HashedMap, KeyHash, KeyIndex};
use subjects::{Subjects, from_header_value, header_value};

/// The key travels as the message id, so the server's own duplicate check
/// and the record's metadata are one header.
const KEY_HEADER: &str = "Nats-Msg-Id";
/// When and by whom, `<microseconds since the epoch> <principal>`, of records
/// appended in session 2, before the envelope (`envelope.rs`); read, never
/// written.
const RECORDED_HEADER: &str = "Toxaudit-Recorded";
/// The principal and the time of records appended before [`RECORDED_HEADER`]
/// existed; read, never written.
const PRINCIPAL_HEADER: &str = "Toxaudit-Principal";
const RECORDED_AT_HEADER: &str = "Toxaudit-Recorded-At";

/// The most messages nats-server accepts in one atomic batch.
pub const MAX_ATOMIC_BATCH: usize = 1000;
/// Reads up to this many records use a direct get, longer ones a consumer.
const DIRECT_READ_MAX: usize = 256;
/// Own keys the index may hold behind a gap before an append reads the gap.
const MAX_OWN_KEYS_WAITING: usize = 100_000;
/// Records read at once to check keys the index knows.
const LOOKUP_READS_IN_FLIGHT: usize = 64;
/// How often an append retries after the server reported a key inside the
/// duplicate window that the index did not know yet.
const APPEND_ATTEMPTS: usize = 3;
/// How often an append is published again after nats-server refused one of
/// its expectations although every expectation held before and after.
///
/// nats-server 2.12 does that under load: a writer appends to a patient,
/// gets the acknowledgement at position N, appends again expecting N, and is
/// answered "wrong last sequence: N" (10071, naming the very sequence it
/// expected) or "wrong last sequence" (10164: the subject is still marked in
/// flight by the previous conditional write, a mark the server clears only
/// after it has sent that write's acknowledgement). Seen only with CPU
/// contention, on a few appends in a thousand; the refused atomic batch
/// stores nothing, and the same batch published again a moment later is
/// stored. Before this retry the backend reported such a refusal as
/// `WrongExpectedVersion` "expected at N but is at N", which ingest retried
/// at great cost (restore, catch up, admit again) and, three times unlucky,
/// refused the client's events.
const SPURIOUS_REFUSAL_ATTEMPTS: u32 = 8;

/// How a batch is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchMode {
    /// Atomic when the server supports it (2.12+), sequential otherwise.
    #[default]
    Auto,
    /// Atomic batch publish; connecting fails on a server without it.
    Atomic,
    /// One message at a time (not atomic; see the module doc).
    Sequential,
}

/// Where and how the log lives in JetStream.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// The leading subject tokens of every subject of this deployment.
    pub prefix: String,
    /// The events stream; the key index is `<stream_name>_KEYS`.
    pub stream_name: String,
    /// The JetStream domain to talk to (leaf-node deployments), if any.
    pub domain: Option<String>,
    /// Replicas of both streams (1 on a single server, 3 in a cluster).
    pub replicas: usize,
    /// The server's `Nats-Msg-Id` duplicate window for the events stream.
    pub duplicate_window: Duration,
    pub batch_mode: BatchMode,
    /// How long one request to the server may take before the call reports
    /// [`LogError::Unavailable`].
    pub request_timeout: Duration,
    /// The credentials [`JetStreamLog::connect`] presents (else those written
    /// in the URL, if any).
    pub auth: crate::NatsAuth,
}

impl Default for JetStreamOptions {
    fn default() -> Self {
        Self {
            prefix: "toxaudit".to_owned(),
            stream_name: "TOXAUDIT_EVENTS".to_owned(),
            domain: None,
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            batch_mode: BatchMode::Auto,
            request_timeout: Duration::from_secs(10),
            auth: crate::NatsAuth::None,
        }
    }
}

/// The event log on NATS JetStream. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct JetStreamLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    /// `$JS.API` or `$JS.<domain>.API`, for the requests this module sends itself.
    api_prefix: String,
    options: JetStreamOptions,
    subjects: Subjects,
    /// Whether batches go out as atomic batch publishes.
    atomic: bool,
    /// Where old keys are. Held while a catch-up runs, so concurrent appends
    /// run at most one.
    key_index: tokio::sync::Mutex<KeyIndex>,
}

/// One message about to be published.
#[derive(Debug)]
struct Outgoing {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
}

/// Why a publish did not store the batch.
#[derive(Debug)]
enum PublishFailure {
    /// The server answered "wrong last sequence" (10071 with a number, or
    /// 10164 without one, for a subject another conditional write holds).
    WrongLastSequence,
    /// The server refused an expectation, yet every expectation of the batch
    /// holds when read back just after, and nothing of the batch is stored
    /// (see [`SPURIOUS_REFUSAL_ATTEMPTS`]): publishing again is safe.
    ExpectationsHeld,
    /// The batch held a key the server saw within its duplicate window.
    DuplicateKey,
    /// A message was too large or otherwise refused for what it is.
    Refused(String),
    Unavailable(String),
}

/// The parsed answer to a publish.
#[derive(Debug, serde::Deserialize)]
struct PublishAnswer {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(Debug, serde::Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

impl JetStreamLog {
    /// Connects to the server(s) at `url` (comma-separated) with
    /// `options.auth`, or the credentials written in the URL, and opens
    /// (creating if needed) the streams. An unreachable server is
    /// [`LogError::Unavailable`]; a bad URL or refused credentials are
    /// [`LogError::Configuration`] (retrying will not help). Messages never carry
    /// the password.
    pub async fn connect(url: &str, options: JetStreamOptions) -> Result<JetStreamLog, LogError> {
        let client = crate::nats_auth::connect_nats(
            url,
            &options.auth,
            crate::nats_auth::connect_options(options.request_timeout),
        )
        .await
        .map_err(|error| match error {
            crate::NatsConnectError::Unreachable(reason) => LogError::Unavailable(reason),
            refused => LogError::Configuration(refused.to_string()),
        })?;
        JetStreamLog::with_client(client, options).await
    }

    /// [`JetStreamLog::connect`], retried while the server is unreachable:
    /// waits `backoff` after the first failure, doubling up to ten times that,
    /// and gives up with the last error once `max_wait` has passed. For
    /// services that may start before their nats-server.
    pub async fn connect_with_retry(
        url: &str,
        options: JetStreamOptions,
        backoff: Duration,
        max_wait: Duration,
    ) -> Result<JetStreamLog, LogError> {
        let started = Instant::now();
        let mut delay = backoff;
        loop {
            match JetStreamLog::connect(url, options.clone()).await {
                Err(LogError::Unavailable(reason)) if started.elapsed() + delay < max_wait => {
                    let url = crate::redact_nats_urls(url);
                    tracing::warn!(url, %reason, retry_in = ?delay, "nats server unavailable, retrying");
                    // A retry back-off, not synchronisation: nothing to wait on
                    // but time while the server is down.
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(backoff * 10);
                }
                result => return result,
            }
        }
    }

    /// Opens the log on an existing connection.
    pub async fn with_client(
        client: async_nats::Client,
        options: JetStreamOptions,
    ) -> Result<JetStreamLog, LogError> {
        if !subjects::valid_prefix(&options.prefix) {
            return Err(LogError::Configuration(format!(
                "subject prefix {:?} must be dot-separated tokens of [A-Za-z0-9_-]",
                options.prefix
            )));
        }
        if options.stream_name.is_empty()
            || !options
                .stream_name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        {
            return Err(LogError::Configuration(format!(
                "stream name {:?} must be non-empty [A-Za-z0-9_-]",
                options.stream_name
            )));
        }
        if options.duplicate_window < Duration::from_secs(1) {
            return Err(LogError::Configuration(
                "the duplicate window must be at least one second".to_owned(),
            ));
        }
        let server_has_atomic_batches = client.is_server_compatible(2, 12, 0);
        let atomic = match options.batch_mode {
            BatchMode::Auto => server_has_atomic_batches,
            BatchMode::Atomic if !server_has_atomic_batches => {
                return Err(LogError::Configuration(format!(
                    "atomic batches need nats-server 2.12 or later, the server is {}",
                    client.server_info().version
                )));
            }
            BatchMode::Atomic => true,
            BatchMode::Sequential => false,
        };
        let builder = jetstream::ContextBuilder::new().timeout(options.request_timeout);
        let (jetstream, api_prefix) = match &options.domain {
            Some(domain) => (
                builder.domain(domain).build(client.clone()),
                format!("$JS.{domain}.API"),
            ),
            None => (builder.build(client.clone()), "$JS.API".to_owned()),
        };
        let subjects = Subjects::new(&options.prefix);
        let events_config = stream::Config {
            name: options.stream_name.clone(),
            description: Some("toxaudit event log: one message per record".to_owned()),
            subjects: vec![subjects.all_events()],
            storage: stream::StorageType::File,
            num_replicas: options.replicas,
            duplicate_window: options.duplicate_window,
            allow_direct: true,
            deny_delete: true,
            deny_purge: true,
            allow_atomic_publish: atomic,
            ..Default::default()
        };
        ensure_stream(&jetstream, events_config, atomic).await?;
        let log = JetStreamLog {
            inner: Arc::new(Inner {
                client,
                jetstream,
                api_prefix,
                options,
                subjects,
                atomic,
                key_index: tokio::sync::Mutex::new(KeyIndex::default()),
            }),
        };
        log.catch_up_key_index().await?;
        Ok(log)
    }

    /// Whether batches are published atomically (see [`BatchMode`]).
    pub fn is_atomic(&self) -> bool {
        self.inner.atomic
    }

    /// The connection, for callers that publish or subscribe beside the log.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// Reads the keys of every record the key index does not cover yet
    /// (headers only). Connecting runs it over the whole log; appends run it
    /// when the last pass is older than a quarter of the duplicate window.
    pub async fn catch_up_key_index(&self) -> Result<(), LogError> {
        let mut index = self.inner.key_index.lock().await;
        self.catch_up_locked(&mut index).await
    }

    async fn ensure_index_fresh(&self, force: bool) -> Result<(), LogError> {
        let mut index = self.inner.key_index.lock().await;
        if force || !index.is_fresh(self.inner.options.duplicate_window / 4) {
            self.catch_up_locked(&mut index).await?;
        }
        Ok(())
    }

    async fn catch_up_locked(&self, index: &mut KeyIndex) -> Result<(), LogError> {
        let started = Instant::now();
        index.settle();
        let head = self.head().await?;
        // Only what other writers stored: this instance's own appends are in
        // the index already (see `key_index.rs`).
        for (from, count) in index.gaps(head) {
            if count <= DIRECT_READ_MAX as u64 {
                let messages = self
                    .direct_events(Request::Range {
                        from,
                        max: count as usize,
                    })
                    .await?;
                if messages.len() as u64 != count {
                    return Err(LogError::Corrupt(format!(
                        "expected {count} records from position {from}, the stream returned {}",
                        messages.len()
                    )));
                }
                check_consecutive(from, &messages)?;
                for message in messages {
                    let key = header(&message.headers, KEY_HEADER, message.sequence)?;
                    index.insert(&key, message.sequence);
                }
            } else {
                self.for_each_in_range(from, count, true, |message| {
                    let key = header(&message.headers, KEY_HEADER, message.sequence)?;
                    index.insert(&key, message.sequence);
                    Ok(())
                })
                .await?;
            }
        }
        index.settle();
        index.caught_up(started);
        Ok(())
    }

    /// The stored record of each key that the key index knows (the lowest
    /// position holding it); `wanted` holds the index in `records` of each
    /// key to look for, with the positions the index gives for its hash.
    async fn lookup_keys(
        &self,
        records: &[NewRecord],
        wanted: Vec<(usize, Vec<u64>)>,
    ) -> Result<Vec<(usize, Record)>, LogError> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        // One read per candidate, many in flight: a retried batch of a
        // thousand records must not cost a thousand round trips in a row.
        let mut found = Vec::new();
        let mut reads = futures::stream::iter(wanted)
            .map(|(at, candidates)| async move {
                let stored = self.find_key(records[at].key.clone(), candidates).await?;
                Ok::<_, LogError>(stored.map(|stored| (at, stored)))
            })
            .buffer_unordered(LOOKUP_READS_IN_FLIGHT);
        while let Some(read) = reads.next().await {
            found.extend(read?);
        }
        Ok(found)
    }

    /// The record among `candidates` that holds `key`, if any (another key
    /// there is a hash collision).
    async fn find_key(
        &self,
        key: String,
        candidates: Vec<u64>,
    ) -> Result<Option<Record>, LogError> {
        for position in candidates {
            let stored = self.record_at(position).await?;
            if stored.key == key {
                return Ok(Some(stored));
            }
        }
        Ok(None)
    }

    /// The `count` records from position `from` on (all of which must exist),
    /// through one ordered consumer; with `headers_only` the payloads stay on
    /// the server.
    async fn ordered_range(
        &self,
        from: u64,
        count: u64,
        headers_only: bool,
    ) -> Result<Vec<StoredMessage>, LogError> {
        let mut stored = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(1 << 20));
        self.for_each_in_range(from, count, headers_only, |message| {
            stored.push(message);
            Ok(())
        })
        .await?;
        Ok(stored)
    }

    /// Hands each of the `count` records from position `from` on to `each`,
    /// in order, through one ordered consumer.
    async fn for_each_in_range(
        &self,
        from: u64,
        count: u64,
        headers_only: bool,
        mut each: impl FnMut(StoredMessage) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        let mut messages = open_ordered(self.clone(), from, headers_only).await?;
        let mut next = from;
        while next < from + count {
            let message =
                match tokio::time::timeout(self.inner.options.request_timeout, messages.next())
                    .await
                {
                    Ok(Some(Ok(message))) => message,
                    Ok(Some(Err(error))) => {
                        return Err(LogError::Unavailable(format!(
                            "reading position {next}: {error}"
                        )));
                    }
                    Ok(None) => {
                        return Err(LogError::Unavailable(format!(
                            "the read ended before position {next}"
                        )));
                    }
                    Err(_) => {
                        return Err(LogError::Unavailable(format!(
                            "position {next} did not arrive within {:?}",
                            self.inner.options.request_timeout
                        )));
                    }
                };
            let message = stored_from_consumer(message)?;
            if message.sequence != next {
                return Err(LogError::Corrupt(format!(
                    "expected position {next} but the stream delivered {}",
                    message.sequence
                )));
            }
            next += 1;
            each(message)?;
        }
        Ok(())
    }

    async fn direct_events(&self, request: Request<'_>) -> Result<Vec<StoredMessage>, LogError> {
        direct_get(
            &self.inner.client,
            &self.inner.api_prefix,
            &self.inner.options.stream_name,
            request,
            self.inner.options.request_timeout,
        )
        .await
    }

    /// The record at `position`, which must exist.
    async fn record_at(&self, position: u64) -> Result<Record, LogError> {
        let messages = self
            .direct_events(Request::Range {
                from: position,
                max: 1,
            })
            .await?;
        match messages.into_iter().next() {
            Some(message) if message.sequence == position => {
                record_from(&self.inner.subjects, message)
            }
            _ => Err(LogError::Corrupt(format!(
                "no record at position {position}"
            ))),
        }
    }

    /// Whether `record` is the one stored at `position` (same key and payload):
    /// `Duplicate`, or the conflict error.
    async fn compare_with_stored(
        &self,
        record: &NewRecord,
        position: u64,
    ) -> Result<AppendOutcome, LogError> {
        let stored = self.record_at(position).await?;
        if stored.key != record.key {
            return Err(LogError::Corrupt(format!(
                "the key index sends {} to position {position}, which holds {}",
                record.key, stored.key
            )));
        }
        if stored.payload == record.payload {
            Ok(AppendOutcome::Duplicate { position })
        } else {
            Err(LogError::KeyConflict {
                key: record.key.clone(),
                position,
            })
        }
    }

    async fn try_append(
        &self,
        batch: &AppendBatch,
    ) -> Result<Result<Vec<AppendOutcome>, PublishFailure>, LogError> {
        let records = &batch.records;
        // Each key is hashed once, for the look-ups here and for the index
        // after the acknowledgement (the index's hash seed never changes).
        let (hashes, first_with_key, wanted) = {
            let index = self.inner.key_index.lock().await;
            let hashes: Vec<KeyHash> = records
                .iter()
                .map(|record| index.hash(&record.key))
                .collect();
            let first_with_key = first_with_same_key(records, &hashes);
            let wanted: Vec<(usize, Vec<u64>)> = (0..records.len())
                .filter(|&at| first_with_key[at] == at)
                .filter_map(|at| {
                    let candidates = index.candidates_of(hashes[at]);
                    (!candidates.is_empty()).then_some((at, candidates))
                })
                .collect();
            (hashes, first_with_key, wanted)
        };
        // Keys seen earlier in the same batch: a repeat is that record again.
        let mut same_as: Vec<Option<usize>> = vec![None; records.len()];
        let mut repeated_with_other_content = None;
        for (index, record) in records.iter().enumerate() {
            let first = first_with_key[index];
            if first == index {
                continue;
            }
            if records[first].payload == record.payload {
                same_as[index] = Some(first);
            } else {
                repeated_with_other_content.get_or_insert(record.key.as_str());
            }
        }

        let mut outcomes: Vec<Option<AppendOutcome>> = vec![None; records.len()];
        let indexed = self.lookup_keys(records, wanted).await?;
        if let Some(key) = repeated_with_other_content {
            // Conflicting with itself; with the stored record too when there is one.
            return Err(LogError::KeyConflict {
                key: key.to_owned(),
                position: indexed
                    .iter()
                    .find(|(at, _)| records[*at].key == key)
                    .map_or(0, |(_, stored)| stored.position),
            });
        }
        for (index, stored) in indexed {
            outcomes[index] = Some(if stored.payload == records[index].payload {
                AppendOutcome::Duplicate {
                    position: stored.position,
                }
            } else {
                return Err(LogError::KeyConflict {
                    key: records[index].key.clone(),
                    position: stored.position,
                });
            });
        }
        let new_records: Vec<usize> = (0..records.len())
            .filter(|&index| outcomes[index].is_none() && same_as[index].is_none())
            .collect();

        if !new_records.is_empty() {
            let positions = match self.publish_new(batch, &new_records).await? {
                Ok(positions) => positions,
                Err(failure) => return Ok(Err(failure)),
            };
            let mut key_index = self.inner.key_index.lock().await;
            key_index.record_own(new_records.iter().zip(&positions).filter_map(
                |(&index, outcome)| match outcome {
                    AppendOutcome::Appended { position } => Some((*position, hashes[index])),
                    AppendOutcome::Duplicate { .. } => None,
                },
            ));
            // An atomic batch of several settles the keys of the appends
            // before it while it waits for its acknowledgement
            // (`publish_atomic`); others have no such wait, so their few
            // keys go in now.
            if !(self.inner.atomic && new_records.len() > 1) {
                key_index.settle();
            }
            // Own keys waiting behind another writer's records take memory
            // until a catch-up reads those: bound them. Keys that only wait
            // for a settle (a later append's, skipped when it found the
            // index locked) are settled first, without a round trip.
            if key_index.own_waiting() > MAX_OWN_KEYS_WAITING {
                key_index.settle();
            }
            if key_index.own_waiting() > MAX_OWN_KEYS_WAITING
                && let Err(error) = self.catch_up_locked(&mut key_index).await
            {
                // The batch is stored; the next append catches up again.
                tracing::warn!(%error, "catching up the key index after an append");
            }
            drop(key_index);
            for (&index, outcome) in new_records.iter().zip(positions) {
                outcomes[index] = Some(outcome);
            }
        }
        for (index, first) in same_as.iter().enumerate() {
            if let Some(first) = *first {
                let position = outcomes[first].map(AppendOutcome::position).unwrap_or(0);
                outcomes[index] = Some(AppendOutcome::Duplicate { position });
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| {
                outcome
                    .ok_or_else(|| LogError::Corrupt("an append outcome went missing".to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Ok)
    }

    /// Publishes the records at `new_records` (batch indexes) with the batch's
    /// expectations; the outcome of each, in the same order.
    async fn publish_new(
        &self,
        batch: &AppendBatch,
        new_records: &[usize],
    ) -> Result<Result<Vec<AppendOutcome>, PublishFailure>, LogError> {
        // Place each expectation on a message no later than its stream's first
        // record in the batch (see the module doc); check the rest here.
        let mut expectations: Vec<(usize, &str, u64)> = batch
            .expectations
            .iter()
            .filter_map(|(stream, version)| {
                let expected = match version {
                    ExpectedVersion::Any => return None,
                    ExpectedVersion::Empty => 0,
                    ExpectedVersion::At(position) => *position,
                };
                let first = new_records
                    .iter()
                    .position(|&index| batch.records[index].stream == *stream)
                    .unwrap_or(usize::MAX);
                Some((first, stream.as_str(), expected))
            })
            .collect();
        expectations.sort_by_key(|(first, _, _)| *first);
        let sequential = !self.inner.atomic;
        for (slot, (first, stream, expected)) in expectations.iter().enumerate() {
            if sequential || slot >= new_records.len() || slot > *first {
                let actual = self.stream_version(stream).await?;
                if actual != *expected {
                    return Err(wrong_version(stream, *expected, actual));
                }
            }
        }

        // The messages are built as they go out, so the server starts on the
        // first while the client still builds the rest.
        let payload_bytes: usize = new_records
            .iter()
            .map(|&index| batch.records[index].payload.len())
            .sum();
        let principal = batch
            .records
            .first()
            .map_or("", |record| record.principal.as_str());
        let mut envelopes = Envelopes::with_capacity(
            now_micros(),
            Envelopes::capacity_for(new_records.len(), payload_bytes, principal),
        );
        let messages = new_records.iter().enumerate().map(|(slot, &index)| {
            let record = &batch.records[index];
            let mut headers = HeaderMap::new();
            // Header names as constants and values from owned strings: a
            // `&str` name is checked and matched, a `&str` value copied again.
            headers.insert(
                NATS_MESSAGE_ID,
                HeaderValue::from(header_value(&record.key)),
            );
            if let Some((first, stream, expected)) = expectations.get(slot)
                && slot <= *first
            {
                headers.insert(
                    NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    HeaderValue::from(expected.to_string()),
                );
                headers.insert(
                    "Nats-Expected-Last-Subject-Sequence-Subject",
                    HeaderValue::from(self.inner.subjects.stream(stream)),
                );
            }
            Outgoing {
                subject: self.inner.subjects.stream(&record.stream),
                headers,
                payload: envelopes.wrap(&record.principal, &record.payload),
            }
        });

        if self.inner.atomic {
            match self.publish_atomic(new_records.len(), messages).await? {
                Ok(last) => {
                    let count = new_records.len() as u64;
                    let first = last + 1 - count;
                    Ok(Ok((first..=last)
                        .map(|position| AppendOutcome::Appended { position })
                        .collect()))
                }
                Err(PublishFailure::WrongLastSequence) => {
                    match self.explain_wrong_version(batch).await? {
                        Some(error) => Err(error),
                        // Refused whole, so nothing is stored: safe to publish again.
                        None => Ok(Err(PublishFailure::ExpectationsHeld)),
                    }
                }
                Err(failure) => Ok(Err(failure)),
            }
        } else {
            let mut outcomes = Vec::with_capacity(new_records.len());
            for (message, &index) in messages.zip(new_records) {
                let answer = self.publish_one(message).await?;
                match answer {
                    Ok((position, false)) => outcomes.push(AppendOutcome::Appended { position }),
                    Ok((position, true)) => outcomes.push(
                        self.compare_with_stored(&batch.records[index], position)
                            .await?,
                    ),
                    Err(PublishFailure::WrongLastSequence) => {
                        return match self.explain_wrong_version(batch).await? {
                            Some(error) => Err(error),
                            // Nothing of this attempt stored yet: safe to publish again.
                            None if outcomes.is_empty() => {
                                Ok(Err(PublishFailure::ExpectationsHeld))
                            }
                            None => Err(LogError::Unavailable(format!(
                                "the server refused an expectation that holds after {} records of the batch were stored; send the batch again",
                                outcomes.len()
                            ))),
                        };
                    }
                    Err(failure) => return Ok(Err(failure)),
                }
            }
            Ok(Ok(outcomes))
        }
    }

    /// After the server refused an expectation: the first one that does not
    /// hold, with where its stream is, or `None` when every one holds (the
    /// refusal was spurious, see [`SPURIOUS_REFUSAL_ATTEMPTS`]): the refused
    /// publish stored nothing, and publishing it again has the server check
    /// every expectation again.
    async fn explain_wrong_version(
        &self,
        batch: &AppendBatch,
    ) -> Result<Option<LogError>, LogError> {
        let mut checked_any = false;
        for (stream, version) in &batch.expectations {
            let expected = match version {
                ExpectedVersion::Any => continue,
                ExpectedVersion::Empty => 0,
                ExpectedVersion::At(position) => *position,
            };
            checked_any = true;
            let actual = self.stream_version(stream).await?;
            if actual != expected {
                return Ok(Some(wrong_version(stream, expected, actual)));
            }
        }
        if checked_any {
            Ok(None)
        } else {
            Err(LogError::Unavailable(
                "the server refused an expectation the batch did not carry".to_owned(),
            ))
        }
    }

    /// One message, not part of an atomic batch: its position and whether the
    /// server reported it as a duplicate.
    async fn publish_one(
        &self,
        message: Outgoing,
    ) -> Result<Result<(u64, bool), PublishFailure>, LogError> {
        let reply = self
            .inner
            .client
            .request_with_headers(message.subject, message.headers, message.payload)
            .await
            .map_err(|error| LogError::Unavailable(format!("publishing a record: {error}")))?;
        Ok(parse_answer(&reply.payload).map(|answer| (answer.seq, answer.duplicate)))
    }

    /// The `count` messages as one atomic batch; the position of the last one.
    async fn publish_atomic(
        &self,
        count: usize,
        mut messages: impl Iterator<Item = Outgoing>,
    ) -> Result<Result<u64, PublishFailure>, LogError> {
        if count == 1 {
            let Some(message) = messages.next() else {
                return Err(LogError::Corrupt(
                    "a batch of one had no message to publish".to_owned(),
                ));
            };
            return Ok(match self.publish_one(message).await? {
                Ok((_, true)) => Err(PublishFailure::DuplicateKey),
                Ok((position, false)) => Ok(position),
                Err(failure) => Err(failure),
            });
        }
        let inbox = self.inner.client.new_inbox();
        let batch_id = new_batch_id();
        let mut replies = self
            .inner
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|error| {
                LogError::Unavailable(format!("subscribing for batch replies: {error}"))
            })?;
        let unavailable = |error: async_nats::PublishError| {
            LogError::Unavailable(format!("publishing a batch: {error}"))
        };
        let batch_id = HeaderValue::from(batch_id);
        let mut published = 0;
        for (index, mut message) in messages.enumerate() {
            message.headers.insert(NATS_BATCH_ID, batch_id.clone());
            message.headers.insert(
                NATS_BATCH_SEQUENCE,
                HeaderValue::from((index + 1).to_string()),
            );
            let last = index + 1 == count;
            if last {
                message.headers.insert(NATS_BATCH_COMMIT, "1");
            }
            if index == 0 || last {
                // The first message's (empty) reply confirms the batch started;
                // the commit's reply is the acknowledgement of the whole batch.
                self.inner
                    .client
                    .publish_with_reply_and_headers(
                        message.subject,
                        inbox.clone(),
                        message.headers,
                        message.payload,
                    )
                    .await
                    .map_err(unavailable)?;
            } else {
                self.inner
                    .client
                    .publish_with_headers(message.subject, message.headers, message.payload)
                    .await
                    .map_err(unavailable)?;
            }
            published += 1;
            if last {
                break;
            }
        }
        if published != count {
            // Never committed: the server drops the batch after its timeout.
            return Err(LogError::Corrupt(format!(
                "a batch of {count} had {published} messages to publish"
            )));
        }
        // The server stores the batch now; meanwhile the keys of earlier
        // appends go into the index (see `key_index.rs`), off the path
        // between the acknowledgement and the answer. Skipped when another
        // append holds the index: that one or a later one settles them.
        if let Ok(mut index) = self.inner.key_index.try_lock() {
            index.settle();
        }
        let deadline = tokio::time::Instant::now() + self.inner.options.request_timeout;
        let mut first_failure = None;
        for _ in 0..2 {
            let reply = match tokio::time::timeout_at(deadline, replies.next()).await {
                Ok(Some(reply)) => reply,
                Ok(None) => {
                    return Err(LogError::Unavailable(
                        "connection closed during a batch".to_owned(),
                    ));
                }
                Err(_) => break,
            };
            if reply.payload.is_empty() {
                if reply.status.is_some_and(|status| status.as_u16() == 503) {
                    return Err(LogError::Unavailable(
                        "no JetStream responders for the batch".to_owned(),
                    ));
                }
                continue;
            }
            match parse_answer(&reply.payload) {
                Ok(answer) if answer.count.is_some() => {
                    if answer.count != Some(count as u64) {
                        return Err(LogError::Corrupt(format!(
                            "the server committed {:?} of a batch of {count}",
                            answer.count
                        )));
                    }
                    return Ok(Ok(answer.seq));
                }
                Ok(_) => continue,
                Err(failure) => {
                    first_failure.get_or_insert(failure);
                }
            }
        }
        match first_failure {
            Some(failure) => Ok(Err(failure)),
            None => Err(LogError::Unavailable(format!(
                "no acknowledgement of a batch within {:?}; it may or may not be stored",
                self.inner.options.request_timeout
            ))),
        }
    }
}

#[async_trait::async_trait]
impl EventLog for JetStreamLog {
    async fn append(&self, batch: AppendBatch) -> Result<Vec<AppendOutcome>, LogError> {
        if batch.records.is_empty() {
            return Ok(Vec::new());
        }
        // Read once: `server_info` clones the whole server description.
        let max_payload = self.inner.client.server_info().max_payload;
        for record in &batch.records {
            check_record(record, max_payload)?;
        }
        if self.inner.atomic && batch.records.len() > MAX_ATOMIC_BATCH {
            return Err(LogError::Invalid(format!(
                "a batch of {} records is larger than the {MAX_ATOMIC_BATCH} an atomic batch may hold",
                batch.records.len()
            )));
        }
        let mut duplicate_key_attempts = 0;
        let mut spurious_refusals = 0;
        loop {
            // Sequential batches cannot be refused whole by the server, so every
            // key they hold must be found before the first message goes out.
            self.ensure_index_fresh(duplicate_key_attempts > 0 || !self.inner.atomic)
                .await?;
            match self.try_append(&batch).await? {
                Ok(outcomes) => return Ok(outcomes),
                // A key stored inside the duplicate window that the index did not
                // know yet: catch the index up and look again.
                Err(PublishFailure::DuplicateKey) => {
                    duplicate_key_attempts += 1;
                    if duplicate_key_attempts >= APPEND_ATTEMPTS {
                        return Err(LogError::Unavailable(format!(
                            "append gave up after {APPEND_ATTEMPTS} attempts: a key stored concurrently"
                        )));
                    }
                }
                Err(PublishFailure::ExpectationsHeld) => {
                    spurious_refusals += 1;
                    if spurious_refusals >= SPURIOUS_REFUSAL_ATTEMPTS {
                        return Err(LogError::Unavailable(format!(
                            "the server refused the batch's expectations {SPURIOUS_REFUSAL_ATTEMPTS} times although they held; nothing was stored"
                        )));
                    }
                    tracing::debug!(
                        attempt = spurious_refusals,
                        "the server refused expectations that hold, publishing again"
                    );
                    // A retry back-off, not synchronisation: the server's
                    // in-flight mark has no event a client could wait on.
                    tokio::time::sleep(Duration::from_millis(1 << spurious_refusals.min(6))).await;
                }
                Err(PublishFailure::Refused(reason)) => return Err(LogError::Invalid(reason)),
                Err(PublishFailure::Unavailable(reason)) => {
                    return Err(LogError::Unavailable(reason));
                }
                Err(PublishFailure::WrongLastSequence) => {
                    return Err(LogError::Unavailable(
                        "unexplained wrong last sequence".to_owned(),
                    ));
                }
            }
        }
    }

    /// [`MAX_ATOMIC_BATCH`] for atomic batches; none for the sequential
    /// fallback, which is not atomic anyway.
    fn most_records_per_append(&self) -> Option<usize> {
        self.inner.atomic.then_some(MAX_ATOMIC_BATCH)
    }

    async fn read(&self, from: u64, max: usize) -> Result<Vec<Record>, LogError> {
        let from = from.max(1);
        if max == 0 {
            return Ok(Vec::new());
        }
        let messages = if max <= DIRECT_READ_MAX {
            // A short read: one batched direct get, no consumer to set up.
            let messages = self.direct_events(Request::Range { from, max }).await?;
            check_consecutive(from, &messages)?;
            messages
        } else {
            // A long read (a replay): an ordered consumer streams it far faster.
            let head = self.head().await?;
            if from > head {
                return Ok(Vec::new());
            }
            let count = (head - from + 1).min(u64::try_from(max).unwrap_or(u64::MAX));
            self.ordered_range(from, count, false).await?
        };
        messages
            .into_iter()
            .map(|message| record_from(&self.inner.subjects, message))
            .collect()
    }

    async fn head(&self) -> Result<u64, LogError> {
        let stream = self
            .inner
            .jetstream
            .get_stream_no_info(&self.inner.options.stream_name)
            .await
            .map_err(|error| {
                LogError::Unavailable(format!("finding the events stream: {error}"))
            })?;
        let info = stream.get_info().await.map_err(|error| {
            LogError::Unavailable(format!("reading the events stream state: {error}"))
        })?;
        Ok(info.state.last_sequence)
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, LogError> {
        let subject = self.inner.subjects.stream(stream);
        let found = self
            .direct_events(Request::LastOf(std::slice::from_ref(&subject)))
            .await?;
        Ok(found.first().map_or(0, |message| message.sequence))
    }

    fn tail(&self, from: u64) -> BoxStream<'static, Result<Record, LogError>> {
        let state = Tail {
            log: self.clone(),
            next: from.max(1),
            messages: None,
            failures: 0,
        };
        futures::stream::unfold(state, |mut state| async move {
            let item = state.next_record().await;
            Some((item, state))
        })
        .boxed()
    }
}

type OrderedMessages = async_nats::jetstream::consumer::pull::Ordered;

/// The state of a live tail: the next position it owes its reader.
struct Tail {
    log: JetStreamLog,
    next: u64,
    messages: Option<OrderedMessages>,
    /// Consecutive failures, for the retry back-off.
    failures: u32,
}

impl Tail {
    async fn next_record(&mut self) -> Result<Record, LogError> {
        loop {
            let Some(messages) = self.messages.as_mut() else {
                match open_ordered(self.log.clone(), self.next, false).await {
                    Ok(messages) => self.messages = Some(messages),
                    Err(error) => self.back_off(&error).await,
                }
                continue;
            };
            match messages.next().await {
                Some(Ok(message)) => {
                    self.failures = 0;
                    let position = match message.info() {
                        Ok(info) => info.stream_sequence,
                        Err(error) => {
                            return Err(LogError::Corrupt(format!(
                                "a tailed message has no stream position: {error}"
                            )));
                        }
                    };
                    if position < self.next {
                        // Redelivered after a recreation: already handed out.
                        continue;
                    }
                    if position > self.next {
                        return Err(LogError::Corrupt(format!(
                            "tail expected position {} but the stream delivered {position}",
                            self.next
                        )));
                    }
                    let stored = stored_from_consumer(message)?;
                    self.next += 1;
                    return record_from(&self.log.inner.subjects, stored);
                }
                Some(Err(error)) => {
                    self.messages = None;
                    self.back_off(&LogError::Unavailable(error.to_string()))
                        .await;
                }
                None => {
                    self.messages = None;
                }
            }
        }
    }

    async fn back_off(&mut self, error: &LogError) {
        self.failures = self.failures.saturating_add(1);
        let delay = Duration::from_millis(50 * u64::from(self.failures.min(40)));
        tracing::warn!(%error, next = self.next, retry_in = ?delay, "tail interrupted, resuming");
        // A retry back-off while the server is away, not synchronisation.
        tokio::time::sleep(delay).await;
    }
}

/// An ordered consumer delivering the events stream from position `next`.
/// Takes the log by value so the future is `Send` (the consumer stream is not `Sync`).
async fn open_ordered(
    log: JetStreamLog,
    next: u64,
    headers_only: bool,
) -> Result<OrderedMessages, LogError> {
    let inner = &log.inner;
    let stream = inner
        .jetstream
        .get_stream_no_info(&inner.options.stream_name)
        .await
        .map_err(|error| LogError::Unavailable(format!("finding the events stream: {error}")))?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: inner.subjects.all_events(),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: next,
            },
            headers_only,
            ..Default::default()
        })
        .await
        .map_err(|error| LogError::Unavailable(format!("creating an ordered consumer: {error}")))?;
    consumer
        .messages()
        .await
        .map_err(|error| LogError::Unavailable(format!("starting an ordered consumer: {error}")))
}

/// A message delivered by a consumer, in the shape a direct get gives.
fn stored_from_consumer(message: jetstream::Message) -> Result<StoredMessage, LogError> {
    let info = message.info().map_err(|error| {
        LogError::Corrupt(format!(
            "a delivered message has no stream position: {error}"
        ))
    })?;
    let sequence = info.stream_sequence;
    let stored_at_micros = i64::try_from(info.published.unix_timestamp_nanos() / 1000).ok();
    let message = message.split().0;
    Ok(StoredMessage {
        sequence,
        subject: message.subject.to_string(),
        headers: message.headers.unwrap_or_default(),
        payload: message.payload,
        stored_at_micros,
    })
}

/// Creates the stream, or checks an existing one and turns on atomic batches
/// when they are wanted and missing.
async fn ensure_stream(
    jetstream: &jetstream::Context,
    config: stream::Config,
    need_atomic: bool,
) -> Result<(), LogError> {
    let name = config.name.clone();
    let mut stream = jetstream
        .get_or_create_stream(config.clone())
        .await
        .map_err(|error| LogError::Unavailable(format!("opening stream {name}: {error}")))?;
    let info = stream
        .info()
        .await
        .map_err(|error| LogError::Unavailable(format!("reading stream {name}: {error}")))?;
    if info.config.subjects != config.subjects {
        return Err(LogError::Configuration(format!(
            "stream {name} exists with subjects {:?}, expected {:?}",
            info.config.subjects, config.subjects
        )));
    }
    if need_atomic && !info.config.allow_atomic_publish {
        let mut updated = info.config.clone();
        updated.allow_atomic_publish = true;
        // Not a Configuration error: a refused update often arrives as a
        // timeout (nats-server answers a denied publish asynchronously),
        // which cannot be told from a server that is away.
        jetstream.update_stream(updated).await.map_err(|error| {
            LogError::Unavailable(format!(
                "stream {name} predates atomic batches and could not be changed to allow them ({error}); \
                 a centre's services may not update streams (deploy/nats/leaf.conf.template): \
                 deploy/README.md says how to allow them once"
            ))
        })?;
    }
    Ok(())
}

fn parse_answer(payload: &[u8]) -> Result<PublishAnswer, PublishFailure> {
    let answer: PublishAnswer = serde_json::from_slice(payload).map_err(|error| {
        PublishFailure::Unavailable(format!(
            "unreadable publish answer {:?}: {error}",
            String::from_utf8_lossy(payload)
        ))
    })?;
    match &answer.error {
        None => Ok(answer),
        Some(error) => Err(match error.err_code {
            // Wrong last sequence, alone or in a batch.
            10071 | 10164 => PublishFailure::WrongLastSequence,
            // The batch holds a message id the server saw within its window.
            10201 => PublishFailure::DuplicateKey,
            // Message too large; batch too large.
            10054 | 10199 => PublishFailure::Refused(error.description.clone()),
            _ => PublishFailure::Unavailable(format!(
                "the server refused a publish: {} ({})",
                error.description, error.err_code
            )),
        }),
    }
}

fn check_record(record: &NewRecord, max_payload: usize) -> Result<(), LogError> {
    if record.key.is_empty() {
        return Err(LogError::Invalid(
            "a record needs a non-empty key".to_owned(),
        ));
    }
    if record.stream.is_empty() {
        return Err(LogError::Invalid(format!(
            "record {} needs a non-empty stream",
            record.key
        )));
    }
    // Headers count against the server's max_payload too; leave them room.
    let overhead = 512 + 3 * (record.key.len() + record.stream.len()) + 3 * record.principal.len();
    if record.payload.len() + overhead > max_payload {
        return Err(LogError::Invalid(format!(
            "record {} of {} bytes is larger than the server allows ({max_payload} bytes with headers)",
            record.key,
            record.payload.len()
        )));
    }
    Ok(())
}

fn wrong_version(stream: &str, expected: u64, actual: u64) -> LogError {
    let expected = if expected == 0 {
        ExpectedVersion::Empty
    } else {
        ExpectedVersion::At(expected)
    };
    LogError::WrongExpectedVersion {
        stream: stream.to_owned(),
        expected: ExpectedVersionDisplay(expected),
        actual,
    }
}

fn header(headers: &HeaderMap, name: &str, position: u64) -> Result<String, LogError> {
    headers
        .get(name)
        .and_then(|value| from_header_value(value.as_str()))
        .ok_or_else(|| {
            LogError::Corrupt(format!(
                "the record at position {position} has no valid {name} header"
            ))
        })
}

fn record_from(subjects: &Subjects, message: StoredMessage) -> Result<Record, LogError> {
    let position = message.sequence;
    let headers = &message.headers;
    let (recorded_at_micros, principal, payload) = if let Some(value) = headers.get(RECORDED_HEADER)
    {
        // Appended with the one metadata header (session 2): payload untouched.
        let (micros, principal) = value
            .as_str()
            .split_once(' ')
            .and_then(|(micros, principal)| {
                Some((micros.parse().ok()?, from_header_value(principal)?))
            })
            .ok_or_else(|| {
                LogError::Corrupt(format!(
                    "the record at position {position} has a bad {RECORDED_HEADER} header"
                ))
            })?;
        (micros, principal, message.payload)
    } else if headers.get(PRINCIPAL_HEADER).is_some() || headers.get(RECORDED_AT_HEADER).is_some() {
        // Appended with the two headers of before, or (a message this backend
        // did not write) a principal and no time, which the server's
        // timestamp gives.
        let recorded_at_micros = match headers.get(RECORDED_AT_HEADER) {
            Some(value) => value.as_str().parse().map_err(|_| {
                LogError::Corrupt(format!(
                    "the record at position {position} has a bad {RECORDED_AT_HEADER}"
                ))
            })?,
            None => message.stored_at_micros.ok_or_else(|| {
                LogError::Corrupt(format!(
                    "the record at position {position} has no time it was stored"
                ))
            })?,
        };
        (
            recorded_at_micros,
            header(headers, PRINCIPAL_HEADER, position)?,
            message.payload,
        )
    } else {
        let opened = envelope::open(&message.payload).ok_or_else(|| {
            LogError::Corrupt(format!(
                "the record at position {position} has neither metadata headers nor an envelope"
            ))
        })?;
        (opened.recorded_at_micros, opened.principal, opened.payload)
    };
    Ok(Record {
        position,
        recorded_at_micros,
        key: header(headers, KEY_HEADER, position)?.into(),
        stream: subjects
            .stream_of(&message.subject)
            .ok_or_else(|| {
                LogError::Corrupt(format!(
                    "the record at position {position} has the subject {} of no stream",
                    message.subject
                ))
            })?
            .into(),
        principal: principal.into(),
        payload,
    })
}

/// The id of a new atomic batch: 64 random bits in base 62, 11 characters.
/// nats-server tells the in-flight batches of a stream apart by it, so it
/// must not repeat among them (two batches in flight share it with a
/// probability of 2^-64). Every message of the batch carries it, and
/// nats-server looks through a message's whole header block once for every
/// header it knows, so it is kept short: the inbox's NUID used before has 22
/// characters, a tenth of a message's header block.
fn new_batch_id() -> String {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    // Each RandomState has fresh keys (seeded from the operating system's
    // randomness, then counted up), so its hash of a constant is a new
    // random number.
    let mut bits = std::collections::hash_map::RandomState::new().hash_one("toxaudit batch id");
    let mut id = String::with_capacity(11);
    for _ in 0..11 {
        id.push(char::from(DIGITS[(bits % 62) as usize]));
        bits /= 62;
    }
    id
}

fn now_micros() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
}

/// A direct get of a range must return consecutive sequences from `from`:
/// anything else means the stream is not what this log wrote.
fn check_consecutive(from: u64, messages: &[StoredMessage]) -> Result<(), LogError> {
    for (offset, message) in messages.iter().enumerate() {
        let expected = from + offset as u64;
        if message.sequence != expected {
            return Err(LogError::Corrupt(format!(
                "expected position {expected} but the stream returned {}",
                message.sequence
            )));
        }
    }
    Ok(())
}

/// For each record of a batch, the index of the first record with its key
/// (itself when it is the first). Keyed by the keys' hashes (`hashes[i]` is
/// the hash of `records[i].key`), which the append has anyway; two different
/// keys with one hash send the whole batch the slow way, by key.
fn first_with_same_key(records: &[NewRecord], hashes: &[KeyHash]) -> Vec<usize> {
    let mut first_with_hash: HashedMap<usize> =
        HashedMap::with_capacity_and_hasher(records.len(), Default::default());
    let mut first = Vec::with_capacity(records.len());
    for (index, (record, KeyHash(hash))) in records.iter().zip(hashes).enumerate() {
        let earliest = *first_with_hash.entry(*hash).or_insert(index);
        if records[earliest].key != record.key {
            return first_with_same_key_by_key(records);
        }
        first.push(earliest);
    }
    first
}

/// [`first_with_same_key`] by the keys themselves.
fn first_with_same_key_by_key(records: &[NewRecord]) -> Vec<usize> {
    let mut first_with_key: HashMap<&str, usize> = HashMap::with_capacity(records.len());
    records
        .iter()
        .enumerate()
        .map(|(index, record)| *first_with_key.entry(record.key.as_str()).or_insert(index))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_ids_are_short_plain_and_new_each_time() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| new_batch_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(
            ids.iter()
                .all(|id| id.len() == 11 && id.bytes().all(|byte| byte.is_ascii_alphanumeric()))
        );
    }

    proptest::proptest! {
        /// The hash-keyed way gives what the by-key way gives, with real
        /// hashes and with hashes that collide all the time.
        #[test]
        fn first_with_same_key_by_hash_equals_by_key(
            keys in proptest::collection::vec(0_u8..8, 0..40),
            collide in proptest::bool::ANY,
        ) {
            let index = KeyIndex::default();
            let records: Vec<NewRecord> = keys
                .iter()
                .map(|key| NewRecord {
                    key: format!("e-{key}"),
                    stream: "leeds.L-0001".to_owned(),
                    principal: "clinician@leeds".to_owned(),
                    payload: Bytes::new(),
                })
                .collect();
            let hashes: Vec<KeyHash> = records
                .iter()
                .map(|record| if collide { KeyHash(7) } else { index.hash(&record.key) })
                .collect();
            proptest::prop_assert_eq!(
                first_with_same_key(&records, &hashes),
                first_with_same_key_by_key(&records)
            );
        }
    }
}
