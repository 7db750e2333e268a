//! Throughput of the embedded log against the raw file it sits on.
//!
//! Issue targets (measured here, never asserted): append >= 1M records/s in
//! batches of 1000 with one fsync per batch, sequential read >= 2M records/s,
//! for records with ~120-byte payloads. Each group also measures the raw file
//! doing the same I/O (the same bytes written with one `sync_data` per 1000
//! records; the same file read sequentially without decoding), so the log's
//! overhead is visible in one run: `cargo bench -p eventlog --bench embedded`.

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

fn append(criterion: &mut Criterion) {
    let runtime = runtime();
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
    group.finish();
    drop(log);
}

fn read(criterion: &mut Criterion) {
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
