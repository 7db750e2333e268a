//! Phases 1 and 2: ingest through gRPC (the real `Ingest.Append`, batches of
//! 1000, each answered after the log made it durable) against the raw
//! backend underneath with no gRPC, no validation and no admission: the
//! embedded log's own `append`, and a plain async JetStream publish of the
//! same payloads awaiting every ack.
//!
//! Each comparison runs twice: one call at a time (the client waits for each
//! answer before sending the next; the raw side awaits a batch's 1000 acks
//! before the next batch), and with [`IN_FLIGHT`] calls in flight: the
//! patients are dealt to `IN_FLIGHT` lanes (clinics), each lane sends its
//! patients' events in order, one call at a time, and the lanes run
//! concurrently, so a patient's events never race each other. The raw side
//! then keeps `IN_FLIGHT` batches of appends (embedded: one lane each) or
//! `IN_FLIGHT` × 1000 publishes (JetStream: a sliding window) in flight, so
//! the baseline gets the same concurrency. Both are reported, labelled.
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

/// Calls the client keeps in flight in the concurrent run (and batches of
/// raw appends or publishes the baseline keeps in flight).
pub const IN_FLIGHT: usize = 4;

/// The client's concurrency in each comparison: one call at a time, then
/// [`IN_FLIGHT`].
pub const CONCURRENCIES: [usize; 2] = [1, IN_FLIGHT];

/// The events as `lanes` lanes of batches of [`BATCH`]: each patient's
/// events, in their order, in the lane its first event was dealt to (the
/// patients dealt round robin in order of first appearance). One lane is
/// the events in their order.
fn lanes(events: &[Event], lanes: usize) -> Vec<Vec<Vec<Event>>> {
    let lanes = lanes.max(1);
    let mut lane_of = std::collections::HashMap::new();
    let mut dealt: Vec<Vec<Event>> = vec![Vec::new(); lanes];
    for event in events {
        let next = lane_of.len() % lanes;
        let lane = *lane_of.entry(event.patient_key()).or_insert(next);
        dealt[lane].push(event.clone());
    }
    dealt
        .into_iter()
        .map(|lane| lane.chunks(BATCH).map(<[Event]>::to_vec).collect())
        .collect()
}

/// What one ingest comparison measured.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct IngestFigures {
    pub events: usize,
    /// `Ingest.Append` calls the client kept in flight (1: one at a time);
    /// the baseline kept this many batches in flight.
    pub in_flight: usize,
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
        // With calls overlapping, the log's times add up across calls and
        // may exceed the wall time: "own" is then what the wall time has
        // beyond the log's waits, possibly negative.
        format!(
            "{} in flight, per batch of {BATCH}: {:.2} ms in all, log append {:.2} ms ({} appends), log reads {:.2} ms ({} calls), log head {:.2} ms ({} calls), ingest's own {:.2} ms",
            self.in_flight,
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
    fn most_records_per_append(&self) -> Option<usize> {
        self.inner.most_records_per_append()
    }

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

/// Appends `events` through a fresh ingest service over `log` in
/// `Ingest.Append` calls of [`BATCH`] events, `in_flight` calls open at a
/// time (sent in order; a new one as soon as any answered); returns the
/// seconds taken, how many events were newly stored and the log's share of
/// the time.
async fn through_grpc(
    log: Arc<dyn EventLog>,
    directory: &Path,
    events: &[Event],
    in_flight: usize,
) -> anyhow::Result<ThroughGrpc> {
    let timed = Arc::new(TimedLog::new(log));
    let stack = Stack::ingest_only(Arc::clone(&timed) as Arc<dyn EventLog>, directory).await?;
    let client = stack.admin_client().await?;
    let lanes: Vec<Vec<Vec<proto::v1::Event>>> = lanes(events, in_flight)
        .iter()
        .map(|lane| {
            lane.iter()
                .map(|batch| batch.iter().map(proto::v1::Event::from).collect())
                .collect()
        })
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
    let appended_per_lane = futures::future::try_join_all(lanes.into_iter().map(|lane| async {
        let mut appended = 0;
        for batch in lane {
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
        anyhow::Ok(appended)
    }))
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let appended = appended_per_lane.iter().sum();
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
    fn figures(&self, events: usize, in_flight: usize, raw_seconds: f64) -> IngestFigures {
        let figures = IngestFigures {
            events,
            in_flight,
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

/// Appends the records import would write for `events` straight into `log`,
/// in `in_flight` lanes of batches appended concurrently (as [`lanes`]).
async fn raw_log_append(
    log: &dyn EventLog,
    events: &[Event],
    in_flight: usize,
) -> anyhow::Result<(f64, usize)> {
    let lanes: Vec<Vec<AppendBatch>> = lanes(events, in_flight)
        .iter()
        .map(|lane| {
            lane.iter()
                .map(|batch| {
                    AppendBatch::new(
                        batch
                            .iter()
                            .map(|event| data::record_of(event, data::PRINCIPAL))
                            .collect(),
                    )
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    let appended_per_lane =
        futures::future::try_join_all(lanes.into_iter().map(|lane| async move {
            let mut appended = 0;
            for batch in lane {
                let outcomes = log.append(batch).await.context("raw append")?;
                appended += outcomes
                    .iter()
                    .filter(|outcome| matches!(outcome, AppendOutcome::Appended { .. }))
                    .count();
            }
            anyhow::Ok(appended)
        }))
        .await?;
    Ok((
        started.elapsed().as_secs_f64(),
        appended_per_lane.iter().sum(),
    ))
}

/// Phase 1: gRPC ingest into the embedded log vs raw embedded append, once
/// per concurrency of [`CONCURRENCIES`], each on fresh logs.
pub async fn embedded(work: &Path, events: &[Event]) -> anyhow::Result<Vec<IngestFigures>> {
    let mut figures = Vec::new();
    for in_flight in CONCURRENCIES {
        let work = work.join(format!("in-flight-{in_flight}"));
        let raw_log = crate::stack::open_embedded(&work.join("raw-log")).await?;
        let (raw_seconds, raw_appended) = raw_log_append(&raw_log, events, in_flight).await?;
        drop(raw_log);
        let log: Arc<dyn EventLog> =
            Arc::new(crate::stack::open_embedded(&work.join("grpc-log")).await?);
        let grpc = through_grpc(log, &work.join("grpc-services"), events, in_flight).await?;
        let grpc_appended = grpc.appended;
        ensure!(
            raw_appended == grpc_appended,
            "the raw baseline stored {raw_appended} events but ingest stored {grpc_appended}: they did not do the same work"
        );
        figures.push(grpc.figures(events.len(), in_flight, raw_seconds));
    }
    Ok(figures)
}

/// A plain async JetStream publish of every payload, one subject per
/// stream. One at a time (`in_flight` 1): the acks of each batch of
/// [`BATCH`] are awaited before the next batch. Otherwise a sliding window:
/// at most `in_flight` × [`BATCH`] publishes wait for their acks, the
/// oldest ack awaited before each publish past that.
async fn raw_jetstream_publish(
    url: &str,
    events: &[Event],
    in_flight: usize,
) -> anyhow::Result<f64> {
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
    let window = in_flight.max(1) * BATCH;
    let started = Instant::now();
    let mut acks: std::collections::VecDeque<async_nats::jetstream::context::PublishAckFuture> =
        std::collections::VecDeque::with_capacity(window);
    for batch in batches {
        for (subject, payload) in batch {
            if acks.len() == window
                && let Some(ack) = acks.pop_front()
            {
                ack.await.context("raw jetstream ack")?;
            }
            acks.push_back(
                jetstream
                    .publish(subject, payload)
                    .await
                    .context("raw jetstream publish")?,
            );
        }
        if in_flight <= 1 {
            for ack in acks.drain(..) {
                ack.await.context("raw jetstream ack")?;
            }
        }
    }
    for ack in acks {
        ack.await.context("raw jetstream ack")?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Phase 2: gRPC ingest into the JetStream log vs raw JetStream publish, on
/// a nats-server of its own (random port, temporary store), once per
/// concurrency of [`CONCURRENCIES`], each on a fresh server.
pub async fn jetstream(work: &Path, events: &[Event]) -> anyhow::Result<Vec<IngestFigures>> {
    let mut figures = Vec::new();
    for in_flight in CONCURRENCIES {
        let server = test_support::NatsServer::start().await.context(
            "starting nats-server (set NATS_SERVER_BIN or run scripts/ensure-nats-server.sh)",
        )?;
        let raw_seconds = raw_jetstream_publish(&server.url(), events, in_flight).await?;
        let log: Arc<dyn EventLog> = Arc::new(
            JetStreamLog::connect(&server.url(), JetStreamOptions::default())
                .await
                .context("connecting the jetstream log")?,
        );
        let grpc = through_grpc(
            log,
            &work.join(format!("nats-grpc-services-{in_flight}")),
            events,
            in_flight,
        )
        .await?;
        ensure!(
            grpc.appended > 0,
            "ingest stored nothing on jetstream: the comparison would be empty"
        );
        figures.push(grpc.figures(events.len(), in_flight, raw_seconds));
        drop(server);
    }
    Ok(figures)
}
