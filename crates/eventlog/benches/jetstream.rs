//! Throughput of the JetStream backend against raw JetStream on the same
//! nats-server, in the same run, so the backend's own cost is visible:
//! `cargo bench -p eventlog --bench jetstream` (needs nats-server >= 2.12;
//! `NATS_SERVER_BIN="$(scripts/ensure-nats-server.sh)"`).
//!
//! - append: one 1000-record batch through [`JetStreamLog::append`] (key
//!   look-up, atomic batch publish) against the same 1000 payloads published
//!   with async JetStream publishes to a plain stream, all acknowledgements
//!   awaited.
//! - replay: [`EventLog::read`] of the whole log against a raw ordered
//!   consumer reading the same stream (and, in the summary, against one
//!   reading the header-less raw stream).
//!
//! Target (issue 3, measured, never asserted): the backend reaches at least
//! 70% of raw throughput on both. After the criterion groups a summary prints
//! both sides and the ratio, plus the cost of the key index catch-up that
//! appends pay once every quarter duplicate window (see the backend's doc).
//! The summary times one batch of every side in turn, round after round, so
//! a change in the machine's load hits every side alike; besides the backend
//! and the plain raw publish it times what the contract demands on its own
//! (raw publishes with `Nats-Msg-Id`, raw atomic batches with and without the
//! backend's metadata, in its envelope and in the headers of before), to show
//! where the gap to raw comes from, and two appends in flight at once against
//! 2 x 1000 raw publishes in flight. `JETSTREAM_BENCH_SIDES=<n,m,..>` runs
//! only those sides of the summary (see `SIDES`), 2000 rounds or
//! `JETSTREAM_BENCH_ROUNDS`, to compare them closely or for `perf record`.
//! Each side's CPU time per batch is printed too, this process's (the
//! client) and nats-server's apart (from `/proc`, in clock ticks of 10 ms
//! summed over all rounds, outside the timed part): on 2 shared CPUs the
//! client's CPU is time the server does not get.
//! `JETSTREAM_BENCH_ATOMIC_SIZES=100,250,500,1000` instead times raw atomic
//! batches of those sizes (the contract's headers only, no backend) against
//! plain publishes and splits the server's time into a part per batch and a
//! part per record (see `atomic_batch_sizes`): the bound on any atomic append.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventlog::{AppendBatch, EventLog, JetStreamLog, JetStreamOptions, NewRecord};
use futures::StreamExt;
use test_support::NatsServer;

const BATCH_RECORDS: usize = 1000;
const PAYLOAD_BYTES: usize = 120;
const REPLAY_RECORDS: u64 = 50_000;
/// Batches of each side the summary times, interleaved.
const INTERLEAVED_ROUNDS: usize = 60;

/// What the summary times, in this order (see `summary`).
#[derive(Clone, Copy)]
enum Side {
    /// One append of 1000 records through the backend.
    Backend,
    /// 1000 plain async publishes in flight, then every acknowledgement.
    Raw,
    RawWithHeaders(RawHeaders),
    RawAtomic(RawHeaders),
    /// [`CONCURRENT`] appends of 1000 through the backend at once, each in
    /// its own task (as ingest serving that many clients).
    BackendConcurrent,
    /// [`CONCURRENT`] × 1000 plain publishes in flight, from as many tasks.
    RawConcurrent,
    /// [`CONCURRENT`] × 1000 plain publishes in flight from one task.
    RawConcurrentOneTask,
}

impl Side {
    fn records_per_round(self) -> usize {
        match self {
            Side::BackendConcurrent | Side::RawConcurrent | Side::RawConcurrentOneTask => {
                CONCURRENT * BATCH_RECORDS
            }
            _ => BATCH_RECORDS,
        }
    }
}

/// Batches of 1000 in flight at once in the concurrent sides.
const CONCURRENT: usize = 2;

const SIDES: [Side; 11] = [
    Side::Backend,
    Side::Raw,
    Side::RawWithHeaders(RawHeaders::Envelope),
    Side::RawWithHeaders(RawHeaders::MessageId),
    Side::RawAtomic(RawHeaders::MessageId),
    Side::RawAtomic(RawHeaders::Envelope),
    Side::RawAtomic(RawHeaders::OneHeader),
    Side::RawAtomic(RawHeaders::TwoHeaders),
    Side::BackendConcurrent,
    Side::RawConcurrent,
    Side::RawConcurrentOneTask,
];

fn new_record(number: u64) -> NewRecord {
    let mut payload = format!(
        "{{\"event_id\":\"e-{number:010}\",\"centre\":\"leeds\",\"patient\":\"L-{:04}\",\"type\":\"response_assessed\"",
        number % 5000
    );
    while payload.len() < PAYLOAD_BYTES - 1 {
        payload.push(' ');
    }
    payload.push('}');
    NewRecord {
        key: format!("e-{number:010}"),
        stream: format!("leeds.L-{:04}", number % 5000),
        principal: "clinician@leeds".to_owned(),
        payload: Bytes::from(payload),
    }
}

fn records(next_number: &AtomicU64) -> Vec<NewRecord> {
    let first = next_number.fetch_add(BATCH_RECORDS as u64, Ordering::Relaxed);
    (first..first + BATCH_RECORDS as u64)
        .map(new_record)
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => panic!("cannot build a tokio runtime: {error}"),
    }
}

fn or_die<T, E: std::fmt::Display>(result: Result<T, E>, doing: &str) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{doing}: {error}"),
    }
}

/// One server with the backend's stream and a raw stream beside it.
struct Setup {
    _server: NatsServer,
    url: String,
    log: JetStreamLog,
    raw: jetstream::Context,
}

async fn setup(prefix: &str) -> Setup {
    let server = or_die(NatsServer::start().await, "starting nats-server");
    let log = or_die(
        JetStreamLog::connect(
            &server.url(),
            JetStreamOptions {
                prefix: prefix.to_owned(),
                stream_name: "BENCH_EVENTS".to_owned(),
                ..JetStreamOptions::default()
            },
        )
        .await,
        "connecting the log",
    );
    let client = or_die(async_nats::connect(server.url()).await, "connecting raw");
    let raw = jetstream::new(client);
    or_die(
        raw.create_stream(stream::Config {
            name: "RAW".to_owned(),
            subjects: vec!["raw.>".to_owned()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await,
        "creating the raw stream",
    );
    or_die(
        raw.create_stream(stream::Config {
            name: "RAW_ATOMIC".to_owned(),
            subjects: vec!["atomic.>".to_owned()],
            storage: stream::StorageType::File,
            allow_atomic_publish: true,
            ..Default::default()
        })
        .await,
        "creating the raw atomic stream",
    );
    Setup {
        url: server.url(),
        _server: server,
        log,
        raw,
    }
}

async fn append_through_log(log: &JetStreamLog, batch: Vec<NewRecord>) {
    let outcomes = or_die(log.append(AppendBatch::new(batch)).await, "appending");
    assert_eq!(outcomes.len(), BATCH_RECORDS);
}

async fn publish_raw(raw: &jetstream::Context, batch: Vec<NewRecord>) {
    let mut acknowledgements = Vec::with_capacity(batch.len());
    for record in batch {
        let subject = format!("raw.{}", record.stream);
        acknowledgements.push(or_die(
            raw.publish(subject, record.payload).await,
            "publishing raw",
        ));
    }
    for acknowledgement in acknowledgements {
        or_die(acknowledgement.await, "raw acknowledgement");
    }
}

/// How a raw publish carries the metadata, to show what each costs the server.
#[derive(Clone, Copy)]
enum RawHeaders {
    /// The key as message id (the server's duplicate check), nothing else.
    MessageId,
    /// What the backend sends: the key as message id, append time and
    /// principal in a line in front of the payload (its envelope).
    Envelope,
    /// The key as message id, append time and principal in one header (the
    /// backend's format of session 2).
    OneHeader,
    /// The key as message id, principal and time in two headers (session 1).
    TwoHeaders,
}

/// The headers beside the message id (see [`RawHeaders`]).
fn add_metadata(headers: &mut async_nats::HeaderMap, record: &NewRecord, which: RawHeaders) {
    match which {
        RawHeaders::MessageId | RawHeaders::Envelope => {}
        RawHeaders::OneHeader => {
            headers.insert(
                "Toxaudit-Recorded",
                format!("1764000000000000 {}", record.principal),
            );
        }
        RawHeaders::TwoHeaders => {
            headers.insert("Toxaudit-Principal", record.principal.as_str());
            headers.insert("Toxaudit-Recorded-At", "1764000000000000");
        }
    }
}

/// The payload as sent (see [`RawHeaders`]): with the backend's envelope
/// line in front for [`RawHeaders::Envelope`], untouched otherwise.
fn raw_payload(record: &NewRecord, which: RawHeaders) -> Bytes {
    match which {
        RawHeaders::Envelope => {
            let line = format!("1 1764000000000000 {}\n", record.principal);
            let mut enveloped = Vec::with_capacity(line.len() + record.payload.len());
            enveloped.extend_from_slice(line.as_bytes());
            enveloped.extend_from_slice(&record.payload);
            Bytes::from(enveloped)
        }
        _ => record.payload.clone(),
    }
}

/// The raw publish with headers (see [`RawHeaders`]).
async fn publish_raw_with_headers(
    raw: &jetstream::Context,
    batch: Vec<NewRecord>,
    which: RawHeaders,
) {
    let mut acknowledgements = Vec::with_capacity(batch.len());
    for record in batch {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", record.key.as_str());
        add_metadata(&mut headers, &record, which);
        let subject = format!("raw.{}", record.stream);
        acknowledgements.push(or_die(
            raw.publish_with_headers(subject, headers, raw_payload(&record, which))
                .await,
            "publishing raw",
        ));
    }
    for acknowledgement in acknowledgements {
        or_die(acknowledgement.await, "raw acknowledgement");
    }
}

/// The payloads as one atomic batch, acknowledged once, at the commit, with
/// the key as message id, the batch headers and the metadata headers of
/// `which` ([`RawHeaders::MessageId`]: nothing but what the contract demands).
///
/// Returns how long it took to hand the last message (the commit) to the
/// client; the acknowledgement comes after that.
async fn publish_raw_atomic_batch(
    raw: &jetstream::Context,
    batch: Vec<NewRecord>,
    which: RawHeaders,
) -> Duration {
    let started = Instant::now();
    let client = raw.client();
    let inbox = client.new_inbox();
    let batch_id = inbox.rsplit('.').next().unwrap_or("batch").to_owned();
    let mut replies = or_die(client.subscribe(inbox.clone()).await, "subscribing");
    let count = batch.len();
    for (index, record) in batch.into_iter().enumerate() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", record.key.as_str());
        add_metadata(&mut headers, &record, which);
        headers.insert("Nats-Batch-Id", batch_id.as_str());
        headers.insert("Nats-Batch-Sequence", (index + 1).to_string().as_str());
        let subject = format!("atomic.{}", record.stream);
        let payload = raw_payload(&record, which);
        if index + 1 == count {
            headers.insert("Nats-Batch-Commit", "1");
            or_die(
                client
                    .publish_with_reply_and_headers(subject, inbox.clone(), headers, payload)
                    .await,
                "publishing the commit",
            );
        } else {
            or_die(
                client.publish_with_headers(subject, headers, payload).await,
                "publishing a batch message",
            );
        }
    }
    let handed_over = started.elapsed();
    match replies.next().await {
        Some(reply) if reply.payload.windows(5).any(|window| window == b"count") => handed_over,
        other => panic!("the raw atomic batch was not committed: {other:?}"),
    }
}

async fn replay_through_log(log: &JetStreamLog, count: u64) {
    let mut next = 1;
    while next <= count {
        let chunk = or_die(log.read(next, 10_000).await, "reading");
        assert!(!chunk.is_empty(), "the log ended at {next}");
        next += chunk.len() as u64;
    }
}

async fn replay_raw(raw: &jetstream::Context, stream_name: &str, count: u64) {
    let stream = or_die(raw.get_stream(stream_name).await, "finding the stream");
    let ordered = or_die(
        stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await,
        "creating an ordered consumer",
    );
    let mut messages = or_die(ordered.messages().await, "starting the ordered consumer");
    let mut seen = 0;
    while seen < count {
        match messages.next().await {
            Some(Ok(message)) => {
                // Every reader needs the position; read it as the backend does.
                or_die(message.info(), "message position");
                seen += 1;
            }
            Some(Err(error)) => panic!("ordered consumer: {error}"),
            None => panic!("ordered consumer ended at {seen}"),
        }
    }
}

fn append(criterion: &mut Criterion) {
    let runtime = runtime();
    let setup = runtime.block_on(setup("bench-append"));
    let numbers = AtomicU64::new(1);
    let mut group = criterion.benchmark_group("jetstream_append");
    group.throughput(Throughput::Elements(BATCH_RECORDS as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("backend_batch_1000", |bencher| {
        bencher
            .to_async(&runtime)
            .iter(|| append_through_log(&setup.log, records(&numbers)));
    });
    group.bench_function("raw_async_publish_1000", |bencher| {
        bencher
            .to_async(&runtime)
            .iter(|| publish_raw(&setup.raw, records(&numbers)));
    });
    group.finish();
}

fn replay(criterion: &mut Criterion) {
    let runtime = runtime();
    let setup = runtime.block_on(setup("bench-replay"));
    let numbers = AtomicU64::new(1);
    runtime.block_on(async {
        for _ in 0..REPLAY_RECORDS / BATCH_RECORDS as u64 {
            let batch = records(&numbers);
            publish_raw(&setup.raw, batch.clone()).await;
            append_through_log(&setup.log, batch).await;
        }
    });
    let mut group = criterion.benchmark_group("jetstream_replay");
    group.throughput(Throughput::Elements(REPLAY_RECORDS));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("backend_read", |bencher| {
        bencher
            .to_async(&runtime)
            .iter(|| replay_through_log(&setup.log, REPLAY_RECORDS));
    });
    group.bench_function("raw_ordered_consumer_same_stream", |bencher| {
        bencher
            .to_async(&runtime)
            .iter(|| replay_raw(&setup.raw, "BENCH_EVENTS", REPLAY_RECORDS));
    });
    group.finish();
}

/// CPU seconds (user + system) a process has used so far, from
/// `/proc/<pid>/stat` (clock ticks, 100 a second on Linux).
fn process_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The pid of the newest nats-server this process started (the summary's).
fn newest_nats_server_child() -> Option<String> {
    let mut newest: Option<(u64, String)> = None;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for pid in children.split_whitespace() {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some((name, rest)) = stat.split_once(')') else {
                continue;
            };
            if !name.ends_with("(nats-server") {
                continue;
            }
            let started: u64 = rest
                .split_whitespace()
                .nth(19)
                .and_then(|field| field.parse().ok())
                .unwrap_or(0);
            if newest.as_ref().is_none_or(|(at, _)| started >= *at) {
                newest = Some((started, pid.to_owned()));
            }
        }
    }
    newest.map(|(_, pid)| pid)
}

/// Records per second of `rounds` runs of `work`, each handling `per_round`
/// records, taking the median run.
async fn median_rate<F, Fut>(rounds: usize, per_round: u64, mut work: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut seconds = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        work().await;
        seconds.push(started.elapsed().as_secs_f64());
    }
    seconds.sort_by(f64::total_cmp);
    per_round as f64 / seconds[rounds / 2]
}

fn print_ratio(what: &str, backend: f64, raw: f64) {
    println!(
        "{what}: backend {backend:.0} records/s, raw {raw:.0} records/s, ratio {:.0}% (target >= 70%)",
        100.0 * backend / raw
    );
}

/// The middle value (the upper one of an even count); sorts `values`.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The line `y = a + b x` closest to `points` by least squares: `(a, b)`.
fn least_squares(points: &[(f64, f64)]) -> (f64, f64) {
    let count = points.len() as f64;
    let (sum_x, sum_y) = points
        .iter()
        .fold((0.0, 0.0), |(x, y), point| (x + point.0, y + point.1));
    let (sum_xx, sum_xy) = points.iter().fold((0.0, 0.0), |(xx, xy), point| {
        (xx + point.0 * point.0, xy + point.0 * point.1)
    });
    let slope = (count * sum_xy - sum_x * sum_y) / (count * sum_xx - sum_x * sum_x);
    ((sum_y - slope * sum_x) / count, slope)
}

/// `JETSTREAM_BENCH_ATOMIC_SIZES=100,250,500,1000`: where a raw atomic
/// batch's time goes, with no backend at all and only the headers the
/// contract demands (`Nats-Msg-Id` and the batch headers). Round after round,
/// one batch of each size and one plain raw publish of 1000 (so a change in
/// load hits every line alike); for each size the median time until every
/// message was handed to the client and until the acknowledgement, and a
/// least-squares line through the acknowledgement medians, which splits the
/// server's time into a part per batch and a part per record. Nothing of
/// nats-server's work on a batch can overlap with the next batch of the same
/// caller, so this bounds any single caller's atomic appends.
async fn atomic_batch_sizes(setup: &Setup, numbers: &AtomicU64, sizes: &[usize], rounds: usize) {
    let mut handed_over = vec![Vec::with_capacity(rounds); sizes.len()];
    let mut acknowledged = vec![Vec::with_capacity(rounds); sizes.len()];
    let mut plain = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        for (at, &size) in sizes.iter().enumerate() {
            let mut batch = records(numbers);
            batch.truncate(size);
            let started = Instant::now();
            let handed = publish_raw_atomic_batch(&setup.raw, batch, RawHeaders::MessageId).await;
            acknowledged[at].push(started.elapsed().as_secs_f64());
            handed_over[at].push(handed.as_secs_f64());
        }
        let batch = records(numbers);
        let started = Instant::now();
        publish_raw(&setup.raw, batch).await;
        plain.push(started.elapsed().as_secs_f64());
    }
    let plain_rate = BATCH_RECORDS as f64 / median(&mut plain);
    println!(
        "plain raw async publish, 1000 in flight: {plain_rate:.0} records/s ({rounds} rounds)"
    );
    let mut points = Vec::with_capacity(sizes.len());
    for (at, &size) in sizes.iter().enumerate() {
        let handed = median(&mut handed_over[at]);
        let acked = median(&mut acknowledged[at]);
        points.push((size as f64, acked));
        let rate = size as f64 / acked;
        println!(
            "raw atomic batch of {size}: all handed to the client after {:.2} ms, acknowledged after {:.2} ms ({:.2} ms after the last); {rate:.0} records/s, {:.0}% of plain",
            1e3 * handed,
            1e3 * acked,
            1e3 * (acked - handed),
            100.0 * rate / plain_rate
        );
    }
    if points.len() >= 2 {
        let (per_batch, per_record) = least_squares(&points);
        println!(
            "acknowledgement time, least squares over the sizes: {:.2} ms per batch + {:.2} us per record",
            1e3 * per_batch,
            1e6 * per_record
        );
    }
}

/// Both sides and their ratio, measured alternately in one run.
fn summary(_criterion: &mut Criterion) {
    let runtime = runtime();
    runtime.block_on(async {
        let setup = setup("bench-summary").await;
        let numbers = AtomicU64::new(1);
        // One batch of each side in turn, round after round, so a change in
        // the machine's load (2 shared CPUs) hits every side alike; the
        // median batch time of each side gives its rate.
        // For profiling or comparing a few sides (see the module doc):
        // JETSTREAM_BENCH_SIDES=<indexes into SIDES, comma-separated> runs
        // only those, JETSTREAM_BENCH_ROUNDS rounds (default 2000 then).
        if let Ok(sizes) = std::env::var("JETSTREAM_BENCH_ATOMIC_SIZES") {
            let sizes: Vec<usize> = sizes
                .split(',')
                .filter_map(|size| size.trim().parse().ok())
                .filter(|size| (2..=BATCH_RECORDS).contains(size))
                .collect();
            assert!(
                !sizes.is_empty(),
                "JETSTREAM_BENCH_ATOMIC_SIZES takes sizes from 2 to {BATCH_RECORDS}, comma-separated"
            );
            let rounds = std::env::var("JETSTREAM_BENCH_ROUNDS")
                .ok()
                .and_then(|value| value.parse().ok())
                .unwrap_or(300);
            atomic_batch_sizes(&setup, &numbers, &sizes, rounds).await;
            return;
        }
        let only: Option<Vec<usize>> = std::env::var("JETSTREAM_BENCH_SIDES")
            .ok()
            .map(|value| value.split(',').filter_map(|index| index.trim().parse().ok()).collect());
        let rounds = std::env::var("JETSTREAM_BENCH_ROUNDS")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(if only.is_some() { 2000 } else { INTERLEAVED_ROUNDS });
        let mut seconds = vec![Vec::with_capacity(rounds); SIDES.len()];
        // CPU seconds of each side over all its rounds: (client, server).
        let mut cpu = vec![(0.0_f64, 0.0_f64); SIDES.len()];
        let server_pid = newest_nats_server_child();
        let cpu_now = || {
            (
                process_cpu_seconds("self").unwrap_or(f64::NAN),
                server_pid
                    .as_deref()
                    .and_then(process_cpu_seconds)
                    .unwrap_or(f64::NAN),
            )
        };
        for _ in 0..rounds {
            for (index, (side, times)) in SIDES.iter().zip(&mut seconds).enumerate() {
                if only.as_ref().is_some_and(|only| !only.contains(&index)) {
                    continue;
                }
                let batch = records(&numbers);
                let cpu_before = cpu_now();
                let started = Instant::now();
                match side {
                    Side::BackendConcurrent => {
                        let tasks: Vec<_> = (0..CONCURRENT)
                            .map(|slot| {
                                let log = setup.log.clone();
                                let batch = if slot == 0 {
                                    batch.clone()
                                } else {
                                    records(&numbers)
                                };
                                tokio::spawn(async move { append_through_log(&log, batch).await })
                            })
                            .collect();
                        for task in tasks {
                            or_die(task.await, "joining an append");
                        }
                    }
                    Side::RawConcurrent => {
                        let tasks: Vec<_> = (0..CONCURRENT)
                            .map(|slot| {
                                let raw = setup.raw.clone();
                                let batch = if slot == 0 {
                                    batch.clone()
                                } else {
                                    records(&numbers)
                                };
                                tokio::spawn(async move { publish_raw(&raw, batch).await })
                            })
                            .collect();
                        for task in tasks {
                            or_die(task.await, "joining a publish");
                        }
                    }
                    Side::RawConcurrentOneTask => {
                        let mut all = batch;
                        for _ in 1..CONCURRENT {
                            all.extend(records(&numbers));
                        }
                        publish_raw(&setup.raw, all).await
                    }
                    Side::Backend => append_through_log(&setup.log, batch).await,
                    Side::Raw => publish_raw(&setup.raw, batch).await,
                    Side::RawWithHeaders(which) => {
                        publish_raw_with_headers(&setup.raw, batch, *which).await
                    }
                    Side::RawAtomic(which) => {
                        publish_raw_atomic_batch(&setup.raw, batch, *which).await;
                    }
                }
                times.push(started.elapsed().as_secs_f64());
                let cpu_after = cpu_now();
                cpu[index].0 += cpu_after.0 - cpu_before.0;
                cpu[index].1 += cpu_after.1 - cpu_before.1;
            }
        }
        // Per 1000 records, so the concurrent sides compare too.
        let cpu_per_batch = |side: usize| {
            let batches = (rounds * SIDES[side].records_per_round()) as f64 / BATCH_RECORDS as f64;
            (
                1e3 * cpu[side].0 / batches,
                1e3 * cpu[side].1 / batches,
            )
        };
        let rate = |side: usize| {
            let times = &mut seconds[side].clone();
            times.sort_by(f64::total_cmp);
            SIDES[side].records_per_round() as f64 / times[times.len() / 2]
        };
        if let Some(only) = only {
            for side in only {
                let (client, server) = cpu_per_batch(side);
                println!(
                    "side {side}: {:.0} records/s over {rounds} rounds; CPU per 1000 records: client {client:.2} ms, nats-server {server:.2} ms",
                    rate(side)
                );
            }
            return;
        }
        let [
            backend,
            raw,
            raw_envelope,
            raw_message_id,
            atomic_message_id,
            atomic_envelope,
            atomic_one_header,
            atomic_two_headers,
            backend_concurrent,
            raw_concurrent,
            raw_concurrent_one_task,
        ] = std::array::from_fn(rate);
        print_ratio("append, batches of 1000", backend, raw);
        print_ratio(
            "append, batches of 1000 (raw async publish with the same metadata: message id, envelope)",
            backend,
            raw_envelope,
        );
        // Two appends at once (two callers): the raw side has as many
        // publishes in flight as the backend has records in flight.
        print_ratio(
            &format!(
                "append, {CONCURRENT} batches of 1000 in flight (raw: {CONCURRENT} x 1000 publishes in flight, {CONCURRENT} tasks)"
            ),
            backend_concurrent,
            raw_concurrent,
        );
        print_ratio(
            &format!(
                "append, {CONCURRENT} batches of 1000 in flight (raw: {CONCURRENT} x 1000 publishes in flight, one task)"
            ),
            backend_concurrent,
            raw_concurrent_one_task,
        );
        // What the server spends on what the contract demands, each against
        // the plain raw publish (informational: where the gap comes from).
        print_ratio(
            "raw async publish with Nats-Msg-Id only (vs plain raw)",
            raw_message_id,
            raw,
        );
        print_ratio(
            "raw atomic batch of 1000, Nats-Msg-Id + batch headers only: the contract's floor (vs plain raw)",
            atomic_message_id,
            raw,
        );
        print_ratio(
            "raw atomic batch of 1000 as the backend sends it: + metadata in an envelope (vs plain raw)",
            atomic_envelope,
            raw,
        );
        print_ratio(
            "raw atomic batch of 1000, metadata in one header as in session 2 (vs plain raw)",
            atomic_one_header,
            raw,
        );
        print_ratio(
            "raw atomic batch of 1000, metadata in two headers as in session 1 (vs plain raw)",
            atomic_two_headers,
            raw,
        );
        print_ratio(
            "backend append vs the raw atomic batch as the backend sends it (the backend's own cost)",
            backend,
            atomic_envelope,
        );
        for (side, name) in [
            (0, "backend append"),
            (1, "plain raw async publish"),
            (4, "raw atomic batch, Nats-Msg-Id + batch headers only"),
            (5, "raw atomic batch as the backend sends it"),
        ] {
            let (client, server) = cpu_per_batch(side);
            println!(
                "CPU per 1000 records, {name}: client {client:.2} ms, nats-server {server:.2} ms"
            );
        }

        // The catch-up every quarter duplicate window indexes the keys appended
        // since the last one; its cost per record, amortised over appends. The
        // appending instance knows its own keys from the acknowledgements, so
        // it reads only other writers' records: for it the catch-up is the
        // first line; an instance that appended none of them reads them all
        // (second line, the worst case: every record another writer's).
        let appended = or_die(setup.log.head().await, "reading the head");
        let started = Instant::now();
        or_die(setup.log.catch_up_key_index().await, "catching up the key index");
        let catch_up = started.elapsed().as_secs_f64();
        let per_record_backend = 1.0 / backend;
        println!(
            "key index catch-up by the appending instance: {appended} records in {catch_up:.3}s; append including it: {:.0} records/s, ratio {:.0}%",
            1.0 / (per_record_backend + catch_up / appended as f64),
            100.0 * (1.0 / (per_record_backend + catch_up / appended as f64)) / raw
        );
        let started = Instant::now();
        let other = or_die(
            JetStreamLog::connect(
                &setup.url,
                JetStreamOptions {
                    prefix: "bench-summary".to_owned(),
                    stream_name: "BENCH_EVENTS".to_owned(),
                    ..JetStreamOptions::default()
                },
            )
            .await,
            "connecting a second instance",
        );
        let foreign = started.elapsed().as_secs_f64();
        drop(other);
        println!(
            "key index catch-up of records another instance appended: {appended} records in {foreign:.2}s ({:.0} records/s); append including it: {:.0} records/s, ratio {:.0}%",
            appended as f64 / foreign,
            1.0 / (per_record_backend + foreign / appended as f64),
            100.0 * (1.0 / (per_record_backend + foreign / appended as f64)) / raw
        );

        // Replay of the log the append summary just wrote, against the raw stream.
        let raw_count = or_die(
            or_die(setup.raw.get_stream("RAW").await, "raw stream")
                .get_info()
                .await,
            "raw info",
        )
        .state
        .messages;
        let count = appended.min(raw_count);
        let backend_replay = median_rate(5, count, || replay_through_log(&setup.log, count)).await;
        let raw_replay = median_rate(5, count, || replay_raw(&setup.raw, "BENCH_EVENTS", count)).await;
        print_ratio(
            &format!("replay of {count} records (raw: ordered consumer on the same stream)"),
            backend_replay,
            raw_replay,
        );
        let raw_plain_replay = median_rate(5, count, || replay_raw(&setup.raw, "RAW", count)).await;
        print_ratio(
            &format!("replay of {count} records (raw: ordered consumer on the header-less raw stream)"),
            backend_replay,
            raw_plain_replay,
        );
    });
}

criterion_group!(benches, append, replay, summary);
criterion_main!(benches);
