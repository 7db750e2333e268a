//! `toxaudit-bench`, the harness behind `make bench`: every figure of issue
//! 8 measured next to the baseline it should be judged against, in one run
//! on one machine, printed as a table and written to
//! `target/bench/report.json`.
//!
//! 1. ingest through gRPC into the embedded log vs raw embedded append;
//! 2. the same on JetStream vs raw async JetStream publish;
//! 3. replay (assessment + reporting rebuilt) vs raw read + decode;
//! 4. append acked → visible on `WatchReport`, embedded and NATS, at a
//!    steady 1k events/s, vs the projection's own fold;
//! 5. peak RSS of the rebuild (a child process running only that) and the
//!    projections' resident bytes per patient.
//!
//! `BENCH_FULL=1` replays 100k patients (about 10M events) instead of 10k.

#![forbid(unsafe_code)]

mod data;
mod ingest;
mod latency;
mod measure;
mod replay;
mod report;
mod stack;

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use eventlog::{EventLog, JetStreamLog, JetStreamOptions};
use report::{Better, Line, Report};
use service_kit::DerivedBus;

/// The seed of every generated cohort: the same events every run.
const SEED: u64 = 2026;
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Parser)]
#[command(
    name = "toxaudit-bench",
    about = "toxaudit's benchmark harness (make bench)"
)]
struct Arguments {
    #[command(subcommand)]
    child: Option<Child>,
    /// Where report.json is written.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Scratch space for logs and checkpoints (emptied first, removed at the
    /// end; on a real disk, so fsyncs cost what they cost).
    #[arg(long, default_value = "target/bench/work")]
    work: PathBuf,
    /// Patients of the replay log (default 10k, 100k with BENCH_FULL=1).
    #[arg(long)]
    replay_patients: Option<u64>,
    /// Patients of the ingest cohorts (about 95 events each).
    #[arg(long, default_value_t = 2_000)]
    ingest_patients: u64,
    /// Seconds of steady load per latency run.
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    /// Offered load of the latency runs, events per second.
    #[arg(long, default_value_t = 1_000)]
    latency_rate: u32,
    /// Events per `Ingest.Append` in the latency runs (a clinic's small
    /// batch; 1 asks ingest for 1k appends/s, see docs/performance.md).
    #[arg(long, default_value_t = 10)]
    latency_events_per_append: usize,
    /// Phases to run, comma-separated: ingest,nats,replay,latency.
    #[arg(long, value_delimiter = ',', default_values_t = ["ingest".to_owned(), "nats".to_owned(), "replay".to_owned(), "latency".to_owned()])]
    phases: Vec<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Child {
    /// Internal: rebuild the projections from a log and print the figures as
    /// one JSON line (so the peak RSS is this phase's alone).
    RebuildChild {
        #[arg(long)]
        log: PathBuf,
        #[arg(long)]
        work: PathBuf,
        #[arg(long)]
        patients: u64,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    let outcome = match &arguments.child {
        Some(Child::RebuildChild {
            log,
            work,
            patients,
        }) => rebuild_child(log, work, *patients),
        None => run(&arguments),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("toxaudit-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn rebuild_child(
    log: &std::path::Path,
    work: &std::path::Path,
    patients: u64,
) -> anyhow::Result<ExitCode> {
    let figures = runtime()?.block_on(replay::rebuild_in_this_process(log, work, patients))?;
    println!("{}", serde_json::to_string(&figures)?);
    Ok(ExitCode::SUCCESS)
}

fn full_run() -> bool {
    std::env::var("BENCH_FULL").is_ok_and(|value| !value.is_empty() && value != "0")
}

/// The commit the harness was built from, when git can tell.
fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |output| String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        )
}

fn run(arguments: &Arguments) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let machine = measure::Machine::describe();
    // Read at the start: the tree may move while a long run goes on.
    let commit = commit();
    let replay_patients =
        arguments
            .replay_patients
            .unwrap_or(if full_run() { 100_000 } else { 10_000 });
    if arguments.work.exists() {
        std::fs::remove_dir_all(&arguments.work)
            .with_context(|| format!("emptying {}", arguments.work.display()))?;
    }
    std::fs::create_dir_all(&arguments.work)
        .with_context(|| format!("creating {}", arguments.work.display()))?;
    std::fs::create_dir_all(&arguments.out)
        .with_context(|| format!("creating {}", arguments.out.display()))?;
    let runtime = runtime()?;
    let wants = |phase: &str| arguments.phases.iter().any(|wanted| wanted == phase);

    let mut lines = Vec::new();
    let mut failures = Vec::new();
    let mut phase = |name: &str, outcome: anyhow::Result<Vec<Line>>| match outcome {
        Ok(mut measured) => {
            for line in &measured {
                eprintln!(
                    "  {}",
                    report::table(std::slice::from_ref(line))
                        .lines()
                        .nth(2)
                        .unwrap_or_default()
                );
            }
            lines.append(&mut measured);
        }
        Err(error) => {
            eprintln!("toxaudit-bench: phase {name} failed: {error:#}");
            failures.push(format!("{name}: {error:#}"));
        }
    };

    let ingest_events = if wants("ingest") || wants("nats") {
        eprintln!(
            "generating {} patients for ingest",
            arguments.ingest_patients
        );
        data::cohort(arguments.ingest_patients, SEED)?
    } else {
        Vec::new()
    };
    if wants("ingest") {
        eprintln!(
            "phase 1: grpc ingest vs raw append, embedded log ({} events)",
            ingest_events.len()
        );
        phase(
            "ingest",
            runtime
                .block_on(ingest::embedded(
                    &arguments.work.join("ingest"),
                    &ingest_events,
                ))
                .map(|figures| figures.iter().map(ingest_embedded_line).collect()),
        );
    }
    if wants("nats") {
        eprintln!(
            "phase 2: grpc ingest vs raw publish, jetstream ({} events)",
            ingest_events.len()
        );
        phase(
            "nats",
            runtime
                .block_on(ingest::jetstream(
                    &arguments.work.join("nats"),
                    &ingest_events,
                ))
                .map(|figures| figures.iter().map(ingest_jetstream_line).collect()),
        );
    }
    drop(ingest_events);
    if wants("replay") {
        eprintln!("phase 3 and 5: replay of {replay_patients} patients");
        phase(
            "replay",
            replay_phase(
                &runtime,
                &arguments.work.join("replay"),
                replay_patients,
                full_run(),
            ),
        );
    }
    if wants("latency") {
        let duration = Duration::from_secs(arguments.latency_seconds);
        eprintln!(
            "phase 4: latency at {} events/s for {duration:?}, embedded and jetstream",
            arguments.latency_rate
        );
        phase(
            "latency",
            runtime.block_on(latency_phase(
                &arguments.work.join("latency"),
                arguments.latency_rate,
                arguments.latency_events_per_append,
                duration,
            )),
        );
    }

    let report = Report {
        started_at,
        commit,
        machine,
        settings: serde_json::json!({
            "full": full_run(),
            "ingest_patients": arguments.ingest_patients,
            "ingest_batch": ingest::BATCH,
            "replay_patients": replay_patients,
            "latency_rate": arguments.latency_rate,
            "latency_seconds": arguments.latency_seconds,
            "latency_events_per_append": arguments.latency_events_per_append,
            "failures": failures,
        }),
        lines,
        seconds: started.elapsed().as_secs_f64(),
    };
    // The scratch logs are gigabytes at full size; nothing reads them later.
    if let Err(error) = std::fs::remove_dir_all(&arguments.work) {
        eprintln!(
            "toxaudit-bench: cannot remove {}: {error}",
            arguments.work.display()
        );
    }
    let path = arguments.out.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "\ntoxaudit-bench {} on {} cpus ({}), {:.1} GiB, load {} at start, commit {}\n",
        report.started_at,
        report.machine.cpus,
        report.machine.cpu_model,
        report.machine.memory_bytes as f64 / (MIB * 1024.0),
        report.machine.load_average_at_start,
        report.commit
    );
    print!("{}", report::table(&report.lines));
    println!("\nwritten to {} in {:.0} s", path.display(), report.seconds);
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for failure in &failures {
            eprintln!("failed: {failure}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// The id and name suffixes of an ingest line: none for one call at a time
/// (the lines of earlier sessions), "calls in flight" otherwise.
fn in_flight_label(figures: &ingest::IngestFigures) -> (String, String) {
    if figures.in_flight <= 1 {
        (String::new(), ", one call at a time".to_owned())
    } else {
        (
            format!("_{}_in_flight", figures.in_flight),
            format!(", {} calls in flight", figures.in_flight),
        )
    }
}

fn ingest_embedded_line(figures: &ingest::IngestFigures) -> Line {
    let rate = figures.grpc_events_per_second();
    let (id, name) = in_flight_label(figures);
    let raw = if figures.in_flight <= 1 {
        "raw append".to_owned()
    } else {
        format!("raw append, {} in flight", figures.in_flight)
    };
    Line::new(
        &format!("ingest_grpc_embedded{id}"),
        &format!("ingest via gRPC, embedded log{name}"),
        "events/s",
        rate,
        Better::Higher,
    )
    .baseline(&raw, figures.raw_events_per_second())
    .target(">= 100k events/s", rate >= 100_000.0)
    .note(format!(
        "{} events, Ingest.Append batches of {}, each acked after fsync, {} lane(s) of patients sending concurrently; raw = EmbeddedLog::append of the same records, as many batches in flight; {}",
        figures.events,
        ingest::BATCH,
        figures.in_flight,
        figures.breakdown()
    ))
}

fn ingest_jetstream_line(figures: &ingest::IngestFigures) -> Line {
    let (id, name) = in_flight_label(figures);
    let raw = if figures.in_flight <= 1 {
        "raw js publish".to_owned()
    } else {
        format!("raw js publish, {}k in flight", figures.in_flight)
    };
    let line = Line::new(
        &format!("ingest_grpc_jetstream{id}"),
        &format!("ingest via gRPC, JetStream log{name}"),
        "events/s",
        figures.grpc_events_per_second(),
        Better::Higher,
    )
    .baseline(&raw, figures.raw_events_per_second());
    let met = line.ratio.is_some_and(|ratio| ratio >= 0.70);
    let acks = if figures.in_flight <= 1 {
        "acks of each 1000 awaited before the next 1000".to_owned()
    } else {
        format!(
            "at most {} publishes awaiting their acks (sliding window)",
            figures.in_flight * ingest::BATCH
        )
    };
    line.target(">= 70% of raw publish", met).note(format!(
        "{} events, {} lane(s) of patients sending concurrently; raw = async-nats publish of the same payloads, {acks}; {}",
        figures.events,
        figures.in_flight,
        figures.breakdown()
    ))
}

fn replay_phase(
    runtime: &tokio::runtime::Runtime,
    work: &std::path::Path,
    patients: u64,
    full: bool,
) -> anyhow::Result<Vec<Line>> {
    let log = runtime.block_on(replay::build_log(&work.join("log"), patients, SEED))?;
    eprintln!(
        "  log of {} events for {} patients written in {:.1} s",
        log.head, log.patients, log.build_seconds
    );
    let raw_seconds = runtime.block_on(replay::read_and_decode(&log.directory, log.head))?;
    let raw_rate = log.head as f64 / raw_seconds;
    let rebuild = replay::rebuild_in_child(&log, &work.join("rebuild"))?;
    let rate = rebuild.events_per_second();
    let replay = Line::new(
        "replay_rebuild",
        "replay: rebuild assessment + reporting",
        "events/s",
        rate,
        Better::Higher,
    )
    .baseline("read + decode", raw_rate);
    let met = rate >= 1_000_000.0 && replay.ratio.is_some_and(|ratio| ratio >= 0.5);
    let replay = replay
        .target(">= 1M events/s and >= 50% of read + decode", met)
        .note(format!(
            "{} events, {} patients; reporting at the head after {:.2} s, assessment after {:.2} s (both services' own follow loops, --rebuild, in-process bus)",
            rebuild.events, rebuild.patients, rebuild.reporting_seconds, rebuild.assessment_seconds
        ));
    let peak_mib = rebuild.peak_rss_bytes as f64 / MIB;
    let scale = if full {
        "this run is the target's 10M/100k"
    } else {
        "target is for 10M events / 100k patients (BENCH_FULL=1); this run is 1/10 of that"
    };
    let memory = Line::new(
        "replay_peak_rss",
        "replay: peak RSS of the rebuild",
        "MiB",
        peak_mib,
        Better::Lower,
    )
    .baseline(
        "RSS with the log open",
        rebuild.rss_after_open_bytes as f64 / MIB,
    )
    .target("<= 1024 MiB at 10M/100k", peak_mib <= 1024.0)
    .note(format!(
        "VmHWM of a child running only the rebuild; {scale}"
    ));
    let per_patient = Line::new(
        "projection_bytes_per_patient",
        "replay: projection RSS per patient",
        "bytes",
        rebuild.bytes_per_patient(),
        Better::Lower,
    )
    .note("(RSS after the rebuild - RSS with the log open) / patients, both services' projections, allocator slack included");
    Ok(vec![replay, memory, per_patient])
}

async fn latency_phase(
    work: &std::path::Path,
    rate: u32,
    events_per_append: usize,
    duration: Duration,
) -> anyhow::Result<Vec<Line>> {
    let needed = (f64::from(rate) * duration.as_secs_f64()) as u64;
    // About 95 events per patient; round robin so one patient's events are
    // far apart in time.
    let events = data::round_robin(data::cohort(needed / 50 + 10, SEED + 1)?);
    let mut lines = Vec::new();

    let embedded: Arc<dyn EventLog> =
        Arc::new(stack::open_embedded(&work.join("embedded-log")).await?);
    let figures = latency::run(
        embedded,
        DerivedBus::in_process(),
        &work.join("embedded-services"),
        events.clone(),
        rate,
        events_per_append,
        duration,
    )
    .await?;
    lines.push(latency_line("latency_embedded", "embedded", &figures, 20.0));

    let server = test_support::NatsServer::start()
        .await
        .context("starting nats-server for the latency run")?;
    let log: Arc<dyn EventLog> = Arc::new(
        JetStreamLog::connect(&server.url(), JetStreamOptions::default())
            .await
            .context("connecting the jetstream log")?,
    );
    let bus = DerivedBus::connect_nats(&server.url(), "toxaudit")
        .await
        .context("connecting the derived bus")?;
    let figures = latency::run(
        log,
        bus,
        &work.join("nats-services"),
        events,
        rate,
        events_per_append,
        duration,
    )
    .await?;
    lines.push(latency_line(
        "latency_jetstream",
        "JetStream",
        &figures,
        50.0,
    ));
    Ok(lines)
}

fn latency_line(
    id: &str,
    backend: &str,
    figures: &latency::LatencyFigures,
    target_ms: f64,
) -> Line {
    let p99 = figures.watch.p99_ms;
    let hold = figures.hold.map_or_else(String::new, |hold| {
        format!(
            " (hold p50 {:.1} ms, max {:.1} ms)",
            hold.p50_ms, hold.max_ms
        )
    });
    Line::new(
        id,
        &format!("ack -> WatchReport p99, {backend}"),
        "ms",
        p99,
        Better::Lower,
    )
    .baseline("ack -> folded p99", figures.folded.p99_ms)
    .target(&format!("p99 < {target_ms:.0} ms"), p99 < target_ms)
    .note(format!(
        "{} events/s offered open-loop in appends of {} for {:.1} s, {} sent, {} refused, {} appends held until an earlier append of one of their patients was answered{}; WatchReport p50 {:.1} ms, max {:.1} ms; folded p50 {:.1} ms, max {:.1} ms; append send->ack p50 {:.1} ms, p99 {:.1} ms; {} reports pushed, {} events visible before their ack arrived",
        figures.offered_events_per_second,
        figures.events_per_append,
        figures.seconds,
        figures.sent,
        figures.refused,
        figures.held_back,
        hold,
        figures.watch.p50_ms,
        figures.watch.max_ms,
        figures.folded.p50_ms,
        figures.folded.max_ms,
        figures.append.p50_ms,
        figures.append.p99_ms,
        figures.reports_received,
        figures.visible_before_ack,
    ))
}
