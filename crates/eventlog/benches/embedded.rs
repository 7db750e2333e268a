//! Throughput of the embedded log against the raw file it sits on.
//!
//! Issue targets (measured here, never asserted): append >= 1M records/s in
//! batches of 1000 with one fsync per batch, sequential read >= 2M records/s,
//! for records with ~120-byte payloads. Each group also measures the raw file
//! doing the same I/O (the same bytes written with one `sync_data` per 1000
//! records, as the log syncs, and with one plain fsync for reference; the
//! same file read sequentially without decoding), so the log's overhead is
//! visible in one run: `cargo bench -p eventlog --bench embedded`. After the
//! append group a `summary:` line puts the log and the raw file side by side
//! from interleaved rounds, with the process CPU time per appended record.
//! `EMBEDDED_BENCH_OPEN_DIR=DIR` runs only the memory figure of an open log
//! instead (see `open_memory`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventlog::{AppendBatch, EmbeddedLog, EmbeddedOptions, EventLog, NewRecord};
use tempfile::TempDir;

const BATCH_RECORDS: usize = 1000;
const PAYLOAD_BYTES: usize = 120;
const READ_RECORDS: u64 = 200_000;
const READ_CHUNK: usize = 10_000;

/// The bytes one record adds to a segment (see the frame format).
fn frame_bytes(record: &NewRecord) -> usize {
    35 + record.key.len() + record.stream.len() + record.principal.len() + record.payload.len()
}

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

fn batch(next_number: &AtomicU64) -> AppendBatch {
    let first = next_number.fetch_add(BATCH_RECORDS as u64, Ordering::Relaxed);
    AppendBatch::new(
        (first..first + BATCH_RECORDS as u64)
            .map(new_record)
            .collect(),
    )
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

fn open(dir: &TempDir) -> EmbeddedLog {
    match EmbeddedLog::open(dir.path(), EmbeddedOptions::default()) {
        Ok(log) => log,
        Err(error) => panic!("cannot open the log: {error}"),
    }
}

/// The resident set of this process in KiB (`VmRSS` of `/proc/self/status`).
fn resident_kib() -> u64 {
    let status =
        std::fs::read_to_string("/proc/self/status").unwrap_or_else(|error| panic!("{error}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/self/status"))
}

/// With `EMBEDDED_BENCH_OPEN_DIR` set: fills that directory with
/// `EMBEDDED_BENCH_OPEN_RECORDS` records (10M by default) if it holds no log
/// yet, then prints how much resident memory opening it adds (the key index,
/// the sparse index, the stream versions). Nothing else runs.
fn open_memory(runtime: &tokio::runtime::Runtime, dir: &std::path::Path) {
    let records: u64 = std::env::var("EMBEDDED_BENCH_OPEN_RECORDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(10_000_000);
    if !dir.join("00000000000000000001.seg").exists() {
        let log = EmbeddedLog::open(dir, EmbeddedOptions::default())
            .unwrap_or_else(|error| panic!("cannot open the log: {error}"));
        let log = Arc::new(log);
        let next_number = Arc::new(AtomicU64::new(1));
        runtime.block_on(async {
            let writers = (0..4).map(|_| {
                let log = Arc::clone(&log);
                let next_number = Arc::clone(&next_number);
                tokio::spawn(async move {
                    while next_number.load(Ordering::Relaxed) + BATCH_RECORDS as u64 <= records + 1
                    {
                        if let Err(error) = log.append(batch(&next_number)).await {
                            panic!("append failed: {error}");
                        }
                    }
                })
            });
            for writer in futures::future::join_all(writers).await {
                writer.unwrap_or_else(|error| panic!("{error}"));
            }
        });
    }
    let before = resident_kib();
    let started = Instant::now();
    let log = EmbeddedLog::open(dir, EmbeddedOptions::default())
        .unwrap_or_else(|error| panic!("cannot open the log: {error}"));
    let opened_in = started.elapsed();
    let after = resident_kib();
    let head = runtime
        .block_on(log.head())
        .unwrap_or_else(|error| panic!("{error}"));
    println!(
        "open: a log of {head} records adds {:.1} MiB of resident memory ({:.1} bytes per record), opened in {:.1} s",
        (after.saturating_sub(before)) as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 * 1024.0 / head.max(1) as f64,
        opened_in.as_secs_f64()
    );
}

fn append(criterion: &mut Criterion) {
    let runtime = runtime();
    if let Some(dir) = std::env::var_os("EMBEDDED_BENCH_OPEN_DIR") {
        open_memory(&runtime, std::path::Path::new(&dir));
        return;
    }
    let mut group = criterion.benchmark_group("append");
    group.throughput(Throughput::Elements(BATCH_RECORDS as u64));
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(8));

    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
    let log = Arc::new(open(&dir));
    let next_number = Arc::new(AtomicU64::new(1));
    group.bench_function("embedded, one batch of 1000 at a time", |bencher| {
        bencher.to_async(&runtime).iter_custom(|iterations| {
            let log = Arc::clone(&log);
            let next_number = Arc::clone(&next_number);
            async move {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iterations {
                    let batch = batch(&next_number);
                    let started = Instant::now();
                    if let Err(error) = log.append(batch).await {
                        panic!("append failed: {error}");
                    }
                    elapsed += started.elapsed();
                }
                elapsed
            }
        });
    });

    // Four appenders at once: the writer's group commit shares one fsync.
    group.throughput(Throughput::Elements(4 * BATCH_RECORDS as u64));
    group.bench_function("embedded, 4 concurrent batches of 1000", |bencher| {
        bencher.to_async(&runtime).iter_custom(|iterations| {
            let log = Arc::clone(&log);
            let next_number = Arc::clone(&next_number);
            async move {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iterations {
                    let batches: Vec<AppendBatch> = (0..4).map(|_| batch(&next_number)).collect();
                    let started = Instant::now();
                    let appends = batches.into_iter().map(|batch| {
                        let log = Arc::clone(&log);
                        tokio::spawn(async move { log.append(batch).await })
                    });
                    for append in futures::future::join_all(appends).await {
                        if !matches!(append, Ok(Ok(_))) {
                            panic!("append failed: {append:?}");
                        }
                    }
                    elapsed += started.elapsed();
                }
                elapsed
            }
        });
    });

    // The floor: the same bytes written to a plain file, one sync per 1000.
    group.throughput(Throughput::Elements(BATCH_RECORDS as u64));
    let batch_bytes: usize = (1..=BATCH_RECORDS as u64)
        .map(|number| frame_bytes(&new_record(number)))
        .sum();
    let bytes = vec![0x5au8; batch_bytes];
    let raw_path = dir.path().join("raw-write");
    let mut raw = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&raw_path)
        .unwrap_or_else(|error| panic!("{error}"));
    group.bench_function("raw file, write + sync_data per 1000", |bencher| {
        bencher.iter(|| {
            if let Err(error) = raw.write_all(&bytes).and_then(|()| raw.sync_data()) {
                panic!("raw write failed: {error}");
            }
        });
    });
    // The log syncs with `sync_data` (fdatasync); a plain fsync for reference.
    group.bench_function("raw file, write + fsync per 1000", |bencher| {
        bencher.iter(|| {
            if let Err(error) = raw.write_all(&bytes).and_then(|()| raw.sync_all()) {
                panic!("raw write failed: {error}");
            }
        });
    });
    group.finish();
    drop(log);
    append_summary(&runtime);
}

/// CPU seconds (user + system) this process has used so far, from
/// `/proc/self/stat` (clock ticks of 10 ms).
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_else(|error| panic!("{error}"));
    // The fields after the command name, which is in parentheses.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => panic!("cannot read the cpu time from /proc/self/stat"),
    }
}

/// One line with the figure and its baseline from the same
/// interleaved rounds: the log appending batches of 1000 one at a time
/// (records built beforehand), and the raw file writing the same number of
/// bytes with one `sync_data`, and with one fsync, per 1000. Also the
/// process CPU time per appended record, which the disk's noise does not move.
fn append_summary(runtime: &tokio::runtime::Runtime) {
    const ROUNDS: usize = 3;
    const BATCHES_PER_ROUND: usize = 100;
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
    let log = open(&dir);
    let next_number = AtomicU64::new(1);
    let batch_bytes: usize = (1..=BATCH_RECORDS as u64)
        .map(|number| frame_bytes(&new_record(number)))
        .sum();
    let bytes = vec![0x5au8; batch_bytes];
    let mut raw = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("raw-write"))
        .unwrap_or_else(|error| panic!("{error}"));
    // Warm up the log and the file.
    runtime.block_on(async {
        for _ in 0..10 {
            if let Err(error) = log.append(batch(&next_number)).await {
                panic!("append failed: {error}");
            }
        }
    });
    let (mut log_time, mut log_cpu, mut data_time, mut fsync_time) =
        (Duration::ZERO, 0.0, Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS {
        let batches: Vec<AppendBatch> = (0..BATCHES_PER_ROUND)
            .map(|_| batch(&next_number))
            .collect();
        let cpu_before = process_cpu_seconds();
        let started = Instant::now();
        runtime.block_on(async {
            for batch in batches {
                if let Err(error) = log.append(batch).await {
                    panic!("append failed: {error}");
                }
            }
        });
        log_time += started.elapsed();
        log_cpu += process_cpu_seconds() - cpu_before;
        for (sync_all, total) in [(false, &mut data_time), (true, &mut fsync_time)] {
            let started = Instant::now();
            for _ in 0..BATCHES_PER_ROUND {
                let written = raw.write_all(&bytes).and_then(|()| {
                    if sync_all {
                        raw.sync_all()
                    } else {
                        raw.sync_data()
                    }
                });
                if let Err(error) = written {
                    panic!("raw write failed: {error}");
                }
            }
            *total += started.elapsed();
        }
    }
    let records = (ROUNDS * BATCHES_PER_ROUND * BATCH_RECORDS) as f64;
    let rate = |time: Duration| records / time.as_secs_f64();
    println!(
        "summary: embedded append {:.0} records/s (batches of 1000, one sync_data each; \
         process cpu {:.2} us/record); raw write + sync_data {:.0} records/s ({:.0}% of it reached); \
         raw write + fsync {:.0} records/s; {} records of ~{} bytes framed",
        rate(log_time),
        log_cpu * 1e6 / records,
        rate(data_time),
        100.0 * rate(log_time) / rate(data_time),
        rate(fsync_time),
        records,
        batch_bytes / BATCH_RECORDS,
    );
    drop(log);
}

fn read(criterion: &mut Criterion) {
    if std::env::var_os("EMBEDDED_BENCH_OPEN_DIR").is_some() {
        return;
    }
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
    let log = open(&dir);
    let next_number = AtomicU64::new(1);
    runtime.block_on(async {
        while next_number.load(Ordering::Relaxed) <= READ_RECORDS {
            if let Err(error) = log.append(batch(&next_number)).await {
                panic!("append failed: {error}");
            }
        }
    });

    let mut group = criterion.benchmark_group("read");
    group.throughput(Throughput::Elements(READ_RECORDS));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("embedded, sequential in chunks of 10000", |bencher| {
        bencher.to_async(&runtime).iter(|| async {
            let mut from = 1;
            while from <= READ_RECORDS {
                match log.read(from, READ_CHUNK).await {
                    Ok(records) => from += records.len() as u64,
                    Err(error) => panic!("read failed: {error}"),
                }
            }
        });
    });

    // The floor: the same segment file read front to back, not decoded.
    let segment = dir.path().join("00000000000000000001.seg");
    let mut buffer = vec![0u8; 256 * 1024];
    group.bench_function("raw file, sequential 256 KiB reads", |bencher| {
        bencher.iter(|| {
            let mut file = File::open(&segment).unwrap_or_else(|error| panic!("{error}"));
            let mut total = 0;
            loop {
                match file.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(read) => total += read,
                    Err(error) => panic!("raw read failed: {error}"),
                }
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, append, read);
criterion_main!(benches);
