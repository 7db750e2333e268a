//! Reporting's replay fold against its same-run baseline, decoding alone:
//! the cost the reporting service adds on top of decoding each record
//! while it rebuilds (issue 8's replay line reads and decodes too, so this
//! is the part reporting owns).
//!
//! The records are those of `toxaudit-bench`'s replay log (a demodata
//! random cohort over 8 centres, encoded for storage), held in memory so no
//! disk read is timed. Each round times, one after the other:
//!
//! - `decode`: `recorded_from_parts` for every record (the baseline);
//! - `decode + fold`: what reporting's fold does to each record: decode
//!   it (without copying the principal, which the audit does not read)
//!   and `Cohort::apply` it, into a fresh cohort;
//! - the final report of that cohort;
//! - `fold alone`: `Cohort::apply` into a fresh cohort of records decoded
//!   beforehand, 4096 at a time (the decoding untimed).
//!
//! Times are the benchmark thread's CPU time where Linux tells it (so
//! other processes' time slices on a shared machine are not counted).
//!
//! `cargo bench -p reporting --bench replay_fold`; `REPLAY_FOLD_PATIENTS=N`
//! changes the cohort's size (default 10,000, ~0.94M records) and
//! `REPLAY_FOLD_ROUNDS=N` the number of rounds (default 3).
//! `REPLAY_FOLD_ONLY=N` decodes every record once and then only folds
//! them N times, for a profiler; `REPLAY_FOLD_DECODING=N` runs only
//! `decode + fold` N times (each into a fresh cohort), so a profile shows
//! the fold as it runs in the service, beside the decoding's allocations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use domain::{
    ClinicalDate, RecordedEvent,
    audit::{Cohort, RuleParameters},
    ndjson,
};
use eventlog::Record;

fn records(patients: u64) -> Vec<Record> {
    let today = ClinicalDate::from_ymd(2026, 11, 25).unwrap();
    demodata::random_lines(&demodata::RandomSpec {
        patients,
        centres: 8,
        seed: 2026,
    })
    .enumerate()
    .map(|(index, line)| {
        let event = ndjson::parse_line(&line, today).unwrap();
        Record {
            position: index as u64 + 1,
            recorded_at_micros: 0,
            key: event.event_id.to_string().into(),
            stream: format!("{}.{}", event.centre, event.patient).into(),
            principal: "bench".into(),
            payload: proto::convert::encode_event(&event),
        }
    })
    .collect()
}

fn decode(record: &Record) -> RecordedEvent {
    proto::convert::recorded_from_parts(record.position, 0, &record.principal, &record.payload)
        .unwrap()
}

/// What reporting's fold decodes: the event, without copying who recorded
/// it (as `reporting::service`'s `fold_record`).
fn decode_for_fold(record: &Record) -> RecordedEvent {
    RecordedEvent {
        position: record.position,
        recorded_at_micros: record.recorded_at_micros,
        recorded_by: Default::default(),
        event: proto::convert::decode_event(&record.payload).unwrap(),
    }
}

/// The time this thread has spent on a CPU (Linux's scheduler statistics,
/// in nanoseconds), or `None` where the kernel does not tell it.
fn thread_cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanoseconds = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanoseconds))
}

/// How long `what` took: this thread's CPU time where the kernel tells it
/// (on a shared machine, wall time counts the time slices other processes
/// took, which made runs of one binary differ by a third), else wall time.
fn time(what: impl FnOnce() -> u64) -> (Duration, u64) {
    let started = Instant::now();
    let cpu_before = thread_cpu_time();
    let checksum = what();
    match (cpu_before, thread_cpu_time()) {
        (Some(before), Some(after)) => (after.saturating_sub(before), checksum),
        _ => (started.elapsed(), checksum),
    }
}

fn main() {
    let patients: u64 = std::env::var("REPLAY_FOLD_PATIENTS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(10_000);
    let rounds: u32 = std::env::var("REPLAY_FOLD_ROUNDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(3);
    let records = records(patients);
    let count = records.len() as f64;
    println!(
        "times are {}",
        if thread_cpu_time().is_some() {
            "this thread's CPU time"
        } else {
            "wall time"
        }
    );
    if let Some(folds) = std::env::var("REPLAY_FOLD_ONLY")
        .ok()
        .and_then(|text| text.parse::<u32>().ok())
    {
        // For a profiler: every record decoded once, then only folds.
        let decoded: Vec<RecordedEvent> = records.iter().map(decode).collect();
        drop(records);
        for round in 1..=folds {
            let mut cohort = Cohort::new(RuleParameters::default());
            let (elapsed, _) = time(|| {
                for recorded in &decoded {
                    cohort.apply(recorded);
                }
                cohort.events_applied()
            });
            println!(
                "fold {round}: {:.3} s ({:.0} ns/record)",
                elapsed.as_secs_f64(),
                elapsed.as_secs_f64() * 1e9 / count
            );
        }
        return;
    }
    if let Some(folds) = std::env::var("REPLAY_FOLD_DECODING")
        .ok()
        .and_then(|text| text.parse::<u32>().ok())
    {
        for round in 1..=folds {
            let mut cohort = Cohort::new(RuleParameters::default());
            let (elapsed, _) = time(|| {
                for chunk in records.chunks(4096) {
                    for record in chunk {
                        cohort.apply(&decode_for_fold(record));
                    }
                }
                cohort.events_applied()
            });
            println!(
                "decode + fold {round}: {:.3} s ({:.0} ns/record)",
                elapsed.as_secs_f64(),
                elapsed.as_secs_f64() * 1e9 / count
            );
        }
        return;
    }
    println!("{} records, {patients} patients", records.len());
    for round in 1..=rounds {
        let (decoding, _) = time(|| {
            let mut registrations = 0;
            for record in &records {
                let recorded = std::hint::black_box(decode(record));
                registrations += u64::from(matches!(
                    recorded.event.body,
                    domain::EventBody::PatientRegistered(_)
                ));
            }
            registrations
        });
        let mut cohort = Cohort::new(RuleParameters::default());
        let (folding, _) = time(|| {
            for chunk in records.chunks(4096) {
                for record in chunk {
                    cohort.apply(&decode_for_fold(record));
                }
            }
            cohort.events_applied()
        });
        let (reporting, _) = time(|| cohort.report().scopes.len() as u64);
        drop(cohort);
        // The fold alone, on records decoded beforehand (untimed).
        let mut fold_only = Duration::ZERO;
        let mut cohort = Cohort::new(RuleParameters::default());
        for chunk in records.chunks(4096) {
            let decoded: Vec<RecordedEvent> = chunk.iter().map(decode).collect();
            let (elapsed, _) = time(|| {
                for recorded in &decoded {
                    cohort.apply(recorded);
                }
                0
            });
            fold_only += elapsed;
        }
        drop(cohort);
        let per_record = |duration: Duration| duration.as_secs_f64() * 1e9 / count;
        println!(
            "round {round}: decode {:.3} s ({:.0} ns/record, {:.2}M/s) | decode + fold {:.3} s ({:.0} ns/record, {:.2}M/s) | fold's own {:.0} ns/record, ratio to decode {:.2} | fold alone {:.3} s ({:.0} ns/record) | final report {:.3} s",
            decoding.as_secs_f64(),
            per_record(decoding),
            count / decoding.as_secs_f64() / 1e6,
            folding.as_secs_f64(),
            per_record(folding),
            count / folding.as_secs_f64() / 1e6,
            per_record(folding) - per_record(decoding),
            decoding.as_secs_f64() / folding.as_secs_f64(),
            fold_only.as_secs_f64(),
            per_record(fold_only),
            reporting.as_secs_f64(),
        );
    }
}
