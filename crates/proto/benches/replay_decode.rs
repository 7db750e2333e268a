//! Read + decode of a stored log, the replay's baseline (issue 8, line 3),
//! alone and in its parts, with CPU seconds per record: what each service
//! pays per record before its fold (each reads and decodes every record
//! itself, ADR 0005), in a form `perf record` and `perf stat` can be
//! pointed at.
//!
//! Writes an embedded log of a demodata random cohort (seed 2026, 8
//! centres, `REPLAY_DECODE_PATIENTS` patients, 10k by default: ~0.94M
//! records, as `toxaudit-bench --phases replay`), then
//! `REPLAY_DECODE_ROUNDS` times (3 by default) runs each mode of
//! `REPLAY_DECODE_MODES` (comma-separated, all by default):
//!
//! - `read`: every record read from the log in chunks of 4096, as a tail
//!   reads them, nothing decoded;
//! - `decode`: every payload (read into memory once, beforehand) decoded
//!   with `recorded_from_parts`;
//! - `read+decode`: both, as the harness's baseline does.
//!
//! `REPLAY_DECODE_LOG=<dir>` keeps the log there and reuses it.
//!
//! `cargo bench -p proto --bench replay_decode`

#![forbid(unsafe_code)]
// A benchmark's set-up failing is a bug in the benchmark: let it panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, time::Instant};

use domain::{ClinicalDate, EventBody};
use eventlog::{AppendBatch, EmbeddedLog, EmbeddedOptions, EventLog, NewRecord, Record};

const SEED: u64 = 2026;
const CENTRES: u32 = 8;
const BATCH: usize = 1000;
const READ_RECORDS: usize = 4096;

fn environment_number(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |text| text.parse().expect(name))
}

/// CPU seconds (user + system) of this process so far, from
/// `/proc/self/stat` (ticks of 10 ms); 0 where there is no procfs.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => 0.0,
    }
}

fn open(directory: &Path) -> EmbeddedLog {
    EmbeddedLog::open(directory, EmbeddedOptions::default()).unwrap()
}

async fn build_log(log: &EmbeddedLog, patients: u64) -> u64 {
    let head = log.head().await.unwrap();
    if head > 0 {
        return head;
    }
    let today = ClinicalDate::from_ymd(2026, 11, 1).unwrap();
    let mut batch = Vec::with_capacity(BATCH);
    for line in demodata::random_lines(&demodata::RandomSpec {
        patients,
        centres: CENTRES,
        seed: SEED,
    }) {
        let event = domain::ndjson::parse_line(&line, today).unwrap();
        batch.push(NewRecord {
            key: event.event_id.as_str().to_owned(),
            stream: format!("{}.{}", event.centre, event.patient),
            principal: "bench".to_owned(),
            payload: proto::convert::encode_event(&event),
        });
        if batch.len() == BATCH {
            log.append(AppendBatch::new(std::mem::take(&mut batch)))
                .await
                .unwrap();
        }
    }
    if !batch.is_empty() {
        log.append(AppendBatch::new(batch)).await.unwrap();
    }
    log.head().await.unwrap()
}

/// Reads every record in chunks, handing each chunk to `each`.
async fn read_all(log: &EmbeddedLog, head: u64, mut each: impl FnMut(&[Record])) {
    let mut next = 1;
    loop {
        let records = log.read(next, READ_RECORDS).await.unwrap();
        let Some(last) = records.last() else {
            break;
        };
        next = last.position + 1;
        each(&records);
    }
    assert_eq!(next, head + 1, "read {} of {head}", next - 1);
}

fn decode(record: &Record) -> bool {
    let recorded = proto::convert::recorded_from_parts(
        record.position,
        record.recorded_at_micros,
        &record.principal,
        &record.payload,
    )
    .unwrap();
    matches!(recorded.event.body, EventBody::PatientRegistered(_))
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` lists.
    if std::env::args().any(|argument| argument == "--list") {
        return;
    }
    let patients = environment_number("REPLAY_DECODE_PATIENTS", 10_000);
    let rounds = environment_number("REPLAY_DECODE_ROUNDS", 3);
    let modes = std::env::var("REPLAY_DECODE_MODES").unwrap_or("read,decode,read+decode".into());
    let scratch = tempfile::tempdir().unwrap();
    let directory =
        std::env::var("REPLAY_DECODE_LOG").map_or_else(|_| scratch.path().join("log"), Into::into);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let log = open(&directory);
        let head = build_log(&log, patients).await;
        let mut records = Vec::with_capacity(head as usize);
        read_all(&log, head, |chunk| records.extend_from_slice(chunk)).await;
        println!("log: {head} records");
        for round in 1..=rounds {
            for mode in modes.split(',') {
                let cpu = cpu_seconds();
                let started = Instant::now();
                let mut registrations = 0_u64;
                match mode {
                    "read" => {
                        read_all(&log, head, |chunk| {
                            registrations += chunk.len() as u64;
                        })
                        .await
                    }
                    "decode" => {
                        for record in &records {
                            registrations += u64::from(decode(record));
                        }
                    }
                    "read+decode" => {
                        read_all(&log, head, |chunk| {
                            for record in chunk {
                                registrations += u64::from(decode(record));
                            }
                        })
                        .await
                    }
                    other => panic!("unknown mode {other}"),
                }
                std::hint::black_box(registrations);
                let seconds = started.elapsed().as_secs_f64();
                let cpu = cpu_seconds() - cpu;
                println!(
                    "round {round} {mode:>11}: {seconds:.3} s wall, {cpu:.2} s cpu, {:.0} ns cpu/record, {:.2}M records/s",
                    cpu * 1e9 / head as f64,
                    head as f64 / seconds / 1e6
                );
            }
        }
    });
}
