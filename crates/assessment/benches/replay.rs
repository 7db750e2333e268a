//! Assessment's rebuild alone, against raw read + decode of the same log in
//! the same run: the assessment half of `toxaudit-bench --phases replay`
//! (issue 8, line 3) without reporting folding beside it, so its own cost
//! can be measured and profiled.
//!
//! Writes an embedded log of a demodata random cohort (seed 2026, 8
//! centres, `ASSESSMENT_REPLAY_PATIENTS` patients, 10k by default) plus a
//! sentinel registration, then, `ASSESSMENT_REPLAY_ROUNDS` times (2 by
//! default), reads and decodes every record (the baseline) and rebuilds
//! assessment with `--rebuild` and the in-process bus until the sentinel's
//! derived event arrives. With `ASSESSMENT_REPLAY_LOG=<dir>` the log is kept
//! there and reused by later runs.
//!
//! `cargo bench -p assessment --bench replay`

#![forbid(unsafe_code)]

use std::{path::Path, sync::Arc, time::Instant};

use anyhow::{Context, bail, ensure};
use domain::{ClinicalDate, EventBody, EventId, Pseudonym, audit::RuleParameters};
use eventlog::{AppendBatch, EmbeddedLog, EmbeddedOptions, EventLog, NewRecord};
use futures::StreamExt;
use service_kit::{DerivedBus, Shutdown};

const SEED: u64 = 2026;
const CENTRES: u32 = 8;
const BATCH: usize = 1000;
const READ_RECORDS: usize = 4096;

fn environment_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(text) => text.parse().with_context(|| format!("{name}={text}")),
        Err(_) => Ok(default),
    }
}

fn record_of(event: &domain::Event) -> NewRecord {
    NewRecord {
        key: event.event_id.as_str().to_owned(),
        stream: format!("{}.{}", event.centre, event.patient),
        principal: "bench".to_owned(),
        payload: proto::convert::encode_event(event),
    }
}

async fn open(directory: &Path) -> anyhow::Result<EmbeddedLog> {
    let owned = directory.to_owned();
    tokio::task::spawn_blocking(move || EmbeddedLog::open(&owned, EmbeddedOptions::default()))
        .await?
        .with_context(|| format!("opening the log in {}", directory.display()))
}

/// The log of `patients` random patients and a sentinel registration last;
/// returns its head.
async fn build_log(directory: &Path, patients: u64) -> anyhow::Result<u64> {
    let log = open(directory).await?;
    let head = log.head().await?;
    if head > 0 {
        return Ok(head);
    }
    let today = ClinicalDate::from_ymd(2026, 11, 1).context("not a date")?;
    let mut batch = Vec::with_capacity(BATCH);
    let mut sentinel = None;
    for line in demodata::random_lines(&demodata::RandomSpec {
        patients,
        centres: CENTRES,
        seed: SEED,
    }) {
        let event = domain::ndjson::parse_line(&line, today)?;
        if sentinel.is_none() && matches!(event.body, EventBody::PatientRegistered(_)) {
            let mut copy = event.clone();
            copy.patient = Pseudonym::parse("bench-sentinel").map_err(anyhow::Error::msg)?;
            copy.event_id =
                EventId::parse("bench-sentinel-registration").map_err(anyhow::Error::msg)?;
            sentinel = Some(copy);
        }
        batch.push(record_of(&event));
        if batch.len() == BATCH {
            log.append(AppendBatch::new(std::mem::take(&mut batch)))
                .await?;
        }
    }
    let Some(sentinel) = sentinel else {
        bail!("the cohort has no registration");
    };
    batch.push(record_of(&sentinel));
    log.append(AppendBatch::new(batch)).await?;
    Ok(log.head().await?)
}

/// CPU seconds (user + system) this process has used so far, from
/// `/proc/self/stat` (clock ticks of 10 ms); 0 where there is no procfs.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command's closing parenthesis: utime and stime are
    // the 12th and 13th of them.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => 0.0,
    }
}

async fn read_and_decode(log: &EmbeddedLog, head: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut next = 1;
    let mut registrations = 0_u64;
    loop {
        let records = log.read(next, READ_RECORDS).await?;
        let Some(last) = records.last() else {
            break;
        };
        next = last.position + 1;
        for record in &records {
            let recorded = proto::convert::recorded_from_parts(
                record.position,
                record.recorded_at_micros,
                &record.principal,
                &record.payload,
            )?;
            if matches!(recorded.event.body, EventBody::PatientRegistered(_)) {
                registrations += 1;
            }
        }
    }
    std::hint::black_box(registrations);
    ensure!(next == head + 1, "read {} of {head}", next - 1);
    Ok(started.elapsed().as_secs_f64())
}

/// Seconds until assessment published the sentinel's derived event, and
/// the derived events it published.
async fn rebuild(log: Arc<dyn EventLog>, head: u64, work: &Path) -> anyhow::Result<(f64, u64)> {
    let bus = DerivedBus::in_process();
    let mut derived = bus.follow().await?;
    let assessment =
        assessment::Assessment::prepare(log, bus, work, true, RuleParameters::default()).await?;
    let (trigger, shutdown) = Shutdown::new();
    let started = Instant::now();
    let task = tokio::spawn(assessment.run_until_stopped(shutdown));
    let mut published = 0_u64;
    let seconds = loop {
        let Some(item) = derived.next().await else {
            bail!("the bus ended before the head");
        };
        let event = item?;
        published += 1;
        if event.source_position >= head {
            break started.elapsed().as_secs_f64();
        }
    };
    trigger.trigger();
    task.await??;
    Ok((seconds, published))
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; a `cargo test` run of benches passes
    // nothing else worth doing here.
    if std::env::args().any(|argument| argument == "--list") {
        return Ok(());
    }
    let patients = environment_number("ASSESSMENT_REPLAY_PATIENTS", 10_000)?;
    let rounds = environment_number("ASSESSMENT_REPLAY_ROUNDS", 2)?;
    // For profiling the rebuild alone.
    let skip_baseline = std::env::var("ASSESSMENT_REPLAY_NO_BASELINE").is_ok();
    let scratch = tempfile::tempdir()?;
    let log_directory = match std::env::var("ASSESSMENT_REPLAY_LOG") {
        Ok(directory) => directory.into(),
        Err(_) => scratch.path().join("log"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let started = Instant::now();
        let head = build_log(&log_directory, patients).await?;
        println!(
            "log: {head} records, {patients} patients, ready in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let log = Arc::new(open(&log_directory).await?);
        for round in 1..=rounds {
            let cpu_before = cpu_seconds();
            let baseline = if skip_baseline {
                f64::NAN
            } else {
                read_and_decode(&log, head).await?
            };
            let cpu_baseline = cpu_seconds() - cpu_before;
            let work = scratch.path().join(format!("checkpoints-{round}"));
            let dynamic: Arc<dyn EventLog> = log.clone();
            let cpu_before = cpu_seconds();
            let (seconds, published) = rebuild(dynamic, head, &work).await?;
            let cpu_rebuild = cpu_seconds() - cpu_before;
            println!(
                "round {round}: assessment at the head after {seconds:.3} s ({:.0}k events/s, \
                 {cpu_rebuild:.2} s cpu), read + decode {baseline:.3} s ({:.0}k events/s, \
                 {cpu_baseline:.2} s cpu), ratio {:.2}; {published} derived events",
                head as f64 / seconds / 1e3,
                head as f64 / baseline / 1e3,
                baseline / seconds,
            );
        }
        Ok(())
    })
}
