//! Phases 1 and 2: ingest through gRPC (the real `Ingest.Append`, batches of
//! 1000, each answered after the log made it durable) against the raw
//! backend underneath with no gRPC, no validation and no admission: the
//! embedded log's own `append`, and a plain async JetStream publish of the
//! same payloads awaiting every ack.
//!
//! The log under ingest is wrapped in [`TimedLog`], which adds up the time
//! ingest spends waiting on the log (appends, and reads and head queries
//! for what other writers appended), so the phase can say how much of a
//! call is the log's and how much ingest's own (gRPC, validation,
//! admission, encoding). The wrapper costs two clock reads per log call.

use std::{
    future::Future,
    path::Path,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use anyhow::{Context, ensure};
use bytes::Bytes;
use domain::Event;
use eventlog::{
    AppendBatch, AppendOutcome, EventLog, JetStreamLog, JetStreamOptions, LogError, Record,
};
use futures::stream::BoxStream;

use crate::{data, stack::Stack};

/// Events per `Ingest.Append` call and per raw append.
pub const BATCH: usize = 1000;

/// What one ingest comparison measured.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct IngestFigures {
    pub events: usize,
    pub grpc_seconds: f64,
    pub raw_seconds: f64,
    /// Of `grpc_seconds`, the time ingest waited on the log's `append`.
    pub log_append_seconds: f64,
    /// Of `grpc_seconds`, the time ingest waited on log reads (catching up
    /// with other writers, or after a refused append).
    pub log_read_seconds: f64,
    /// Of `grpc_seconds`, the time ingest waited on head and stream-version
    /// queries.
    pub log_head_seconds: f64,
    /// How many log calls of each kind ingest made.
    pub log_appends: u64,
    pub log_reads: u64,
    pub log_heads: u64,
}

impl IngestFigures {
    /// Where the gRPC ingest time went: the log's share and ingest's own.
    pub fn breakdown(&self) -> String {
        let own = self.grpc_seconds
            - self.log_append_seconds
            - self.log_read_seconds
            - self.log_head_seconds;
        let per_batch =
            |seconds: f64| 1000.0 * seconds / (self.events.div_ceil(BATCH).max(1) as f64);
        format!(
            "per batch of {BATCH}: {:.2} ms in all, log append {:.2} ms ({} appends), log reads {:.2} ms ({} calls), log head {:.2} ms ({} calls), ingest's own {:.2} ms",
            per_batch(self.grpc_seconds),
            per_batch(self.log_append_seconds),
            self.log_appends,
            per_batch(self.log_read_seconds),
            self.log_reads,
            per_batch(self.log_head_seconds),
            self.log_heads,
            per_batch(own)
        )
    }

    pub fn grpc_events_per_second(&self) -> f64 {
        self.events as f64 / self.grpc_seconds
    }

    pub fn raw_events_per_second(&self) -> f64 {
        self.events as f64 / self.raw_seconds
    }
}

type LogFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LogError>> + Send + 'a>>;

/// The log under ingest, adding up the time spent in each call.
#[derive(Debug)]
struct TimedLog {
    inner: Arc<dyn EventLog>,
    append_nanos: AtomicU64,
    read_nanos: AtomicU64,
    head_nanos: AtomicU64,
    appends: AtomicU64,
    reads: AtomicU64,
    heads: AtomicU64,
}

impl TimedLog {
    fn new(inner: Arc<dyn EventLog>) -> Self {
        Self {
            inner,
            append_nanos: AtomicU64::new(0),
            read_nanos: AtomicU64::new(0),
            head_nanos: AtomicU64::new(0),
            appends: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            heads: AtomicU64::new(0),
        }
    }

    fn add(&self, nanos: &AtomicU64, calls: &AtomicU64, started: Instant) {
        let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        nanos.fetch_add(elapsed, Ordering::Relaxed);
        calls.fetch_add(1, Ordering::Relaxed);
    }

    fn seconds(nanos: &AtomicU64) -> f64 {
        nanos.load(Ordering::Relaxed) as f64 / 1e9
    }
}

// Written out as `async_trait` expands it, so the harness needs no macro
// crate for one wrapper.
impl EventLog for TimedLog {
    fn append<'life0, 'async_trait>(
        &'life0 self,
        batch: AppendBatch,
    ) -> LogFuture<'async_trait, Vec<AppendOutcome>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let started = Instant::now();
            let outcome = self.inner.append(batch).await;
            self.add(&self.append_nanos, &self.appends, started);
            outcome
        })
    }

    fn read<'life0, 'async_trait>(
        &'life0 self,
        from: u64,
        max: usize,
    ) -> LogFuture<'async_trait, Vec<Record>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let started = Instant::now();
            let outcome = self.inner.read(from, max).await;
            self.add(&self.read_nanos, &self.reads, started);
            outcome
        })
    }

    fn head<'life0, 'async_trait>(&'life0 self) -> LogFuture<'async_trait, u64>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let started = Instant::now();
            let outcome = self.inner.head().await;
            self.add(&self.head_nanos, &self.heads, started);
            outcome
        })
    }

    fn stream_version<'life0, 'life1, 'async_trait>(
        &'life0 self,
        stream: &'life1 str,
    ) -> LogFuture<'async_trait, u64>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let started = Instant::now();
            let outcome = self.inner.stream_version(stream).await;
            self.add(&self.head_nanos, &self.heads, started);
            outcome
        })
    }

    fn tail(&self, from: u64) -> BoxStream<'static, Result<Record, LogError>> {
        self.inner.tail(from)
    }
}

/// What one run through gRPC measured.
struct ThroughGrpc {
    seconds: f64,
    appended: usize,
    log_append_seconds: f64,
    log_read_seconds: f64,
    log_head_seconds: f64,
    log_appends: u64,
    log_reads: u64,
    log_heads: u64,
}

/// Appends `events` through a fresh ingest service over `log`, one
/// `Ingest.Append` of [`BATCH`] events at a time; returns the seconds taken,
/// how many events were newly stored and the log's share of the time.
async fn through_grpc(
    log: Arc<dyn EventLog>,
    directory: &Path,
    events: &[Event],
) -> anyhow::Result<ThroughGrpc> {
    let timed = Arc::new(TimedLog::new(log));
    let stack = Stack::ingest_only(Arc::clone(&timed) as Arc<dyn EventLog>, directory).await?;
    let client = stack.admin_client().await?;
    let batches: Vec<Vec<proto::v1::Event>> = events
        .chunks(BATCH)
        .map(|chunk| chunk.iter().map(proto::v1::Event::from).collect())
        .collect();
    // Only the calls the appends make count: preparing ingest made none
    // (its catch-up runs on the first append), but start from zero anyway.
    for counter in [
        &timed.append_nanos,
        &timed.read_nanos,
        &timed.head_nanos,
        &timed.appends,
        &timed.reads,
        &timed.heads,
    ] {
        counter.store(0, Ordering::Relaxed);
    }
    let started = Instant::now();
    let mut appended = 0;
    for batch in batches {
        let response = client
            .append(batch)
            .await
            .context("ingest refused a batch of demo events")?;
        appended += response
            .outcomes
            .iter()
            .filter(|outcome| !outcome.duplicate)
            .count();
    }
    let seconds = started.elapsed().as_secs_f64();
    let measured = ThroughGrpc {
        seconds,
        appended,
        log_append_seconds: TimedLog::seconds(&timed.append_nanos),
        log_read_seconds: TimedLog::seconds(&timed.read_nanos),
        log_head_seconds: TimedLog::seconds(&timed.head_nanos),
        log_appends: timed.appends.load(Ordering::Relaxed),
        log_reads: timed.reads.load(Ordering::Relaxed),
        log_heads: timed.heads.load(Ordering::Relaxed),
    };
    drop(client);
    stack.stop().await?;
    Ok(measured)
}

impl ThroughGrpc {
    fn figures(&self, events: usize, raw_seconds: f64) -> IngestFigures {
        let figures = IngestFigures {
            events,
            grpc_seconds: self.seconds,
            raw_seconds,
            log_append_seconds: self.log_append_seconds,
            log_read_seconds: self.log_read_seconds,
            log_head_seconds: self.log_head_seconds,
            log_appends: self.log_appends,
            log_reads: self.log_reads,
            log_heads: self.log_heads,
        };
        eprintln!("  {}", figures.breakdown());
        figures
    }
}

/// Appends the records import would write for `events` straight into `log`.
async fn raw_log_append(log: &dyn EventLog, events: &[Event]) -> anyhow::Result<(f64, usize)> {
    let batches: Vec<AppendBatch> = events
        .chunks(BATCH)
        .map(|chunk| {
            AppendBatch::new(
                chunk
                    .iter()
                    .map(|event| data::record_of(event, data::PRINCIPAL))
                    .collect(),
            )
        })
        .collect();
    let started = Instant::now();
    let mut appended = 0;
    for batch in batches {
        let outcomes = log.append(batch).await.context("raw append")?;
        appended += outcomes
            .iter()
            .filter(|outcome| matches!(outcome, AppendOutcome::Appended { .. }))
            .count();
    }
    Ok((started.elapsed().as_secs_f64(), appended))
}

/// Phase 1: gRPC ingest into the embedded log vs raw embedded append.
pub async fn embedded(work: &Path, events: &[Event]) -> anyhow::Result<IngestFigures> {
    let raw_log = crate::stack::open_embedded(&work.join("raw-log")).await?;
    let (raw_seconds, raw_appended) = raw_log_append(&raw_log, events).await?;
    drop(raw_log);
    let log: Arc<dyn EventLog> =
        Arc::new(crate::stack::open_embedded(&work.join("grpc-log")).await?);
    let grpc = through_grpc(log, &work.join("grpc-services"), events).await?;
    let grpc_appended = grpc.appended;
    ensure!(
        raw_appended == grpc_appended,
        "the raw baseline stored {raw_appended} events but ingest stored {grpc_appended}: they did not do the same work"
    );
    Ok(grpc.figures(events.len(), raw_seconds))
}

/// A plain async JetStream publish of every payload, one subject per
/// stream, awaiting the acks of each batch of [`BATCH`] before the next.
async fn raw_jetstream_publish(url: &str, events: &[Event]) -> anyhow::Result<f64> {
    let client = async_nats::connect(url)
        .await
        .context("connecting the raw publisher")?;
    let jetstream = async_nats::jetstream::new(client);
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "BENCH_RAW".to_owned(),
            subjects: vec!["benchraw.>".to_owned()],
            ..Default::default()
        })
        .await
        .context("creating the raw baseline stream")?;
    let batches: Vec<Vec<(String, Bytes)>> = events
        .chunks(BATCH)
        .map(|chunk| {
            chunk
                .iter()
                .map(|event| {
                    let record = data::record_of(event, data::PRINCIPAL);
                    (format!("benchraw.{}", record.stream), record.payload)
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    for batch in batches {
        let mut acks = Vec::with_capacity(batch.len());
        for (subject, payload) in batch {
            acks.push(
                jetstream
                    .publish(subject, payload)
                    .await
                    .context("raw jetstream publish")?,
            );
        }
        for ack in acks {
            ack.await.context("raw jetstream ack")?;
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Phase 2: gRPC ingest into the JetStream log vs raw JetStream publish, on
/// a nats-server of its own (random port, temporary store).
pub async fn jetstream(work: &Path, events: &[Event]) -> anyhow::Result<IngestFigures> {
    let server = test_support::NatsServer::start().await.context(
        "starting nats-server (set NATS_SERVER_BIN or run scripts/ensure-nats-server.sh)",
    )?;
    let raw_seconds = raw_jetstream_publish(&server.url(), events).await?;
    let log: Arc<dyn EventLog> = Arc::new(
        JetStreamLog::connect(&server.url(), JetStreamOptions::default())
            .await
            .context("connecting the jetstream log")?,
    );
    let grpc = through_grpc(log, &work.join("nats-grpc-services"), events).await?;
    ensure!(
        grpc.appended > 0,
        "ingest stored nothing on jetstream: the comparison would be empty"
    );
    Ok(grpc.figures(events.len(), raw_seconds))
}
