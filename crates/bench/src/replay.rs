//! Phases 3 and 5: replay. A log of a random cohort is written once (raw
//! appends, as import would); then the baseline reads and decodes every
//! record, and a child process — running nothing else, so its peak RSS is
//! the rebuild's — rebuilds every projection with the real services
//! (assessment and reporting, `--rebuild`, in-process bus) until both have
//! folded the log's last record.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Instant,
};

use anyhow::{Context, bail, ensure};
use domain::{EventBody, audit::RuleParameters};
use eventlog::{AppendBatch, EventLog};
use futures::StreamExt;
use service_kit::{DerivedBus, Shutdown};

use crate::{data, ingest::BATCH, measure, stack::open_embedded};

/// Records read per `read` call by the baseline (what a tail reads too).
const READ_RECORDS: usize = 4096;

/// The log written for the replay phases.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayLog {
    pub directory: PathBuf,
    pub patients: u64,
    /// Records in the log (the last one is the sentinel registration).
    pub head: u64,
    pub build_seconds: f64,
}

/// Writes a log of a random cohort of `patients` into `directory` and one
/// sentinel registration after it (see [`data::sentinel_registration`]).
pub async fn build_log(directory: &Path, patients: u64, seed: u64) -> anyhow::Result<ReplayLog> {
    let log = open_embedded(directory).await?;
    ensure!(
        log.head().await? == 0,
        "{} already holds a log",
        directory.display()
    );
    let today = data::today();
    let started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    let mut first_registration = None;
    for line in demodata::random_lines(&demodata::RandomSpec {
        patients,
        centres: data::CENTRES,
        seed,
    }) {
        let event = data::parse(&line, today)?;
        if first_registration.is_none() && matches!(event.body, EventBody::PatientRegistered(_)) {
            first_registration = Some(event.clone());
        }
        batch.push(data::record_of(&event, data::PRINCIPAL));
        if batch.len() == BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            log.append(AppendBatch::new(full)).await?;
        }
    }
    let Some(template) = first_registration else {
        bail!("the cohort has no registration");
    };
    let sentinel = data::sentinel_registration(std::slice::from_ref(&template))?;
    batch.push(data::record_of(&sentinel, data::PRINCIPAL));
    log.append(AppendBatch::new(batch)).await?;
    let head = log.head().await?;
    Ok(ReplayLog {
        directory: directory.to_owned(),
        patients: patients + 1,
        head,
        build_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The baseline: every record read and decoded into a domain event, nothing
/// folded. Returns the seconds taken (the log's open excluded).
pub async fn read_and_decode(directory: &Path, head: u64) -> anyhow::Result<f64> {
    let log = open_embedded(directory).await?;
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
            )
            .with_context(|| format!("decoding position {}", record.position))?;
            if matches!(recorded.event.body, EventBody::PatientRegistered(_)) {
                registrations += 1;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    std::hint::black_box(registrations);
    ensure!(next == head + 1, "read {} records of {head}", next - 1);
    Ok(seconds)
}

/// What the rebuild child measured.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct RebuildFigures {
    pub events: u64,
    pub patients: u64,
    /// From starting both projections until the later one folded the head.
    pub seconds: f64,
    pub reporting_seconds: f64,
    pub assessment_seconds: f64,
    pub rss_before_open_bytes: u64,
    /// After the log was opened (its indexes built), before any fold.
    pub rss_after_open_bytes: u64,
    pub rss_after_rebuild_bytes: u64,
    /// `VmHWM` at the end: the peak of the whole child process.
    pub peak_rss_bytes: u64,
}

impl RebuildFigures {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.seconds
    }

    /// Resident memory the projections added, per patient (allocator slack
    /// included).
    pub fn bytes_per_patient(&self) -> f64 {
        self.rss_after_rebuild_bytes
            .saturating_sub(self.rss_after_open_bytes) as f64
            / self.patients.max(1) as f64
    }
}

/// In the child: rebuilds assessment and reporting from the log in
/// `log_directory` with fresh checkpoints under `work`.
pub async fn rebuild_in_this_process(
    log_directory: &Path,
    work: &Path,
    patients: u64,
) -> anyhow::Result<RebuildFigures> {
    let rss_before_open_bytes = measure::rss_bytes().unwrap_or(0);
    let log: Arc<dyn EventLog> = Arc::new(open_embedded(log_directory).await?);
    let head = log.head().await?;
    let rss_after_open_bytes = measure::rss_bytes().unwrap_or(0);
    let parameters = RuleParameters::default();
    let bus = DerivedBus::in_process();
    let mut derived = bus.follow().await.context("following the derived bus")?;
    let assessment = assessment::Assessment::prepare(
        Arc::clone(&log),
        bus,
        &work.join("assessment"),
        true,
        parameters,
    )
    .await
    .context("preparing assessment")?;
    let reporting = reporting::service::Reporting::prepare(
        Arc::clone(&log),
        &work.join("reporting"),
        true,
        parameters,
    )
    .await
    .context("preparing reporting")?;
    let mut positions = reporting.live().positions();
    let (trigger, shutdown) = Shutdown::new();
    let started = Instant::now();
    let mut assessment_task = tokio::spawn(assessment.run_until_stopped(shutdown.clone()));
    let mut reporting_task = tokio::spawn(reporting.run_until_stopped(shutdown));
    let reporting_done = async {
        positions
            .wait_for(|position| *position >= head)
            .await
            .map(|_| started.elapsed())
            .context("reporting's position watch closed")
    };
    // The sentinel registration is the last record and always changes an
    // assessment, so its derived event marks assessment at the head. A
    // lagging follower is told it missed some events; that is fine here.
    let assessment_done = async {
        while let Some(item) = derived.next().await {
            if item.is_ok_and(|event| event.source_position >= head) {
                return Ok(started.elapsed());
            }
        }
        bail!("the derived bus ended before assessment reached the head")
    };
    let (reporting_elapsed, assessment_elapsed) = tokio::select! {
        (reporting, assessment) = async { tokio::join!(reporting_done, assessment_done) } => (reporting?, assessment?),
        outcome = &mut assessment_task => bail!("assessment stopped during the rebuild: {outcome:?}"),
        outcome = &mut reporting_task => bail!("reporting stopped during the rebuild: {outcome:?}"),
    };
    let rss_after_rebuild_bytes = measure::rss_bytes().unwrap_or(0);
    let peak_rss_bytes = measure::peak_rss_bytes().unwrap_or(0);
    trigger.trigger();
    assessment_task.await.context("assessment panicked")??;
    reporting_task.await.context("reporting panicked")??;
    Ok(RebuildFigures {
        events: head,
        patients,
        seconds: reporting_elapsed.max(assessment_elapsed).as_secs_f64(),
        reporting_seconds: reporting_elapsed.as_secs_f64(),
        assessment_seconds: assessment_elapsed.as_secs_f64(),
        rss_before_open_bytes,
        rss_after_open_bytes,
        rss_after_rebuild_bytes,
        peak_rss_bytes,
    })
}

/// Runs the rebuild in a child process (this binary, `rebuild-child`) and
/// reads its figures from the last line of its stdout.
pub fn rebuild_in_child(log: &ReplayLog, work: &Path) -> anyhow::Result<RebuildFigures> {
    let binary = std::env::current_exe().context("locating the harness binary")?;
    let output = Command::new(binary)
        .arg("rebuild-child")
        .arg("--log")
        .arg(&log.directory)
        .arg("--work")
        .arg(work)
        .arg("--patients")
        .arg(log.patients.to_string())
        .output()
        .context("running the rebuild child")?;
    ensure!(
        output.status.success(),
        "the rebuild child failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).context("the child's output is not utf-8")?;
    let last = stdout
        .lines()
        .last()
        .context("the rebuild child printed nothing")?;
    serde_json::from_str(last).with_context(|| format!("reading the child's figures: {last}"))
}
