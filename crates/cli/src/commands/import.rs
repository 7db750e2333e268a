//! `toxaudit import --data-dir DIR FILE... [--skip-invalid]`: appends NDJSON
//! event files to the embedded log, all or nothing.
//!
//! The import runs in two passes so a file of millions of lines is never
//! held in memory. The first pass checks every line, in order, against the
//! contract and against the log *as if each accepted line had already been
//! appended* (events.md "Bad input"), remembering only which lines to skip.
//! If any line is refused, nothing is appended (unless `--skip-invalid`).
//! The second pass reads the files again and appends the accepted lines in
//! batches. The log stays locked by this process between the passes, so what
//! the first pass checked is exactly what the second appends.

use std::{
    collections::HashSet,
    fmt::Write as _,
    fs::File,
    io::{BufRead, BufReader, IsTerminal},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use domain::{
    ClinicalDate, FieldError, Refusal,
    admission::{Admission, Verdict, WriterScope},
};
use eventlog::{AppendBatch, AppendOutcome, EventLog, NewRecord};
use indicatif::{ProgressBar, ProgressStyle};

/// Records per append: one durable write (one fsync) each.
const APPEND_BATCH: usize = 1000;
/// Warnings printed one by one before the rest are only counted.
const WARNINGS_SHOWN: usize = 100;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The embedded log's data directory (created if missing).
    #[arg(
        long,
        env = "TOXAUDIT_DATA_DIR",
        required_unless_present = "server",
        conflicts_with = "server"
    )]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    server: super::remote::ServerArgs,
    /// Append the accepted lines even when others are refused.
    #[arg(long)]
    skip_invalid: bool,
    /// The principal recorded as `recorded_by` for what this import appends.
    #[arg(long, default_value_t = default_principal())]
    principal: String,
    /// NDJSON files, one event per line; checked together, appended together.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

fn default_principal() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned());
    format!("cli:{user}")
}

/// A line that the second pass must not append, by (file index, line number).
type LineRef = (usize, u64);

/// What the first pass learnt.
#[derive(Debug, Default)]
struct Plan {
    /// Lines refused or duplicated: skipped by the second pass.
    skip: HashSet<LineRef>,
    accepted: u64,
    duplicates: u64,
    refused_lines: u64,
    warnings: u64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some(data_dir) = &args.data_dir else {
        return super::remote::import(&args.server, &args.files, args.skip_invalid);
    };
    let runtime = super::runtime()?;
    let log = super::open_log(data_dir)?;
    let today = super::today();

    let mut admission = Admission::default();
    runtime.block_on(super::replay(&log, |recorded| {
        admission.apply(&recorded.event);
        Ok(())
    }))?;

    let plan = check_files(&args.files, &mut admission, today)?;
    let refused = plan.refused_lines > 0;
    if refused && !args.skip_invalid {
        eprintln!(
            "refused: {} line(s) refused, nothing appended ({} would have been appended, {} duplicate(s))",
            plan.refused_lines, plan.accepted, plan.duplicates
        );
        return Ok(ExitCode::from(1));
    }

    let appended = append_files(&args, &runtime, &log, &plan, today)?;
    eprintln!(
        "appended {appended}, duplicates {}, refused {}, warnings {}",
        plan.duplicates, plan.refused_lines, plan.warnings
    );
    Ok(if refused {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The first pass: every line of every file, checked in order.
fn check_files(
    files: &[PathBuf],
    admission: &mut Admission,
    today: ClinicalDate,
) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    let progress = progress_bar(files, "checking")?;
    for (file_index, path) in files.iter().enumerate() {
        for_each_line(path, &progress, |line_number, line| {
            let line_ref = (file_index, line_number);
            let line = match line {
                Ok(line) => line,
                Err(refusal) => {
                    report_refusal(&mut plan, line_ref, path, &refusal.reasons, &progress);
                    return;
                }
            };
            match admission
                .check_line_and_apply(line, today, &WriterScope::AnyCentre)
                .verdict
            {
                Verdict::Accepted { warnings } => {
                    for warning in &warnings {
                        plan.warnings += 1;
                        if plan.warnings <= WARNINGS_SHOWN as u64 {
                            progress.suspend(|| {
                                eprintln!("{}:{line_number}: warning: {warning}", path.display());
                            });
                        }
                    }
                    plan.accepted += 1;
                }
                Verdict::Duplicate => {
                    plan.duplicates += 1;
                    plan.skip.insert(line_ref);
                }
                Verdict::Conflict(reason) => {
                    report_refusal(&mut plan, line_ref, path, &[reason], &progress);
                }
                Verdict::Refused(refusal) => {
                    report_refusal(&mut plan, line_ref, path, &refusal.reasons, &progress);
                }
            }
        })?;
    }
    progress.finish_and_clear();
    if plan.warnings > WARNINGS_SHOWN as u64 {
        eprintln!(
            "… and {} more warning(s)",
            plan.warnings - WARNINGS_SHOWN as u64
        );
    }
    Ok(plan)
}

/// Prints a refused line's reasons as `FILE:LINE: field: reason`, on stdout
/// so they can be piped to a file and fixed.
fn report_refusal(
    plan: &mut Plan,
    line_ref: LineRef,
    path: &Path,
    reasons: &[FieldError],
    progress: &ProgressBar,
) {
    plan.refused_lines += 1;
    plan.skip.insert(line_ref);
    let mut text = String::new();
    for reason in reasons {
        // Writing to a String cannot fail.
        let _ = writeln!(text, "{}:{}: {reason}", path.display(), line_ref.1);
    }
    progress.suspend(|| print!("{text}"));
}

/// The second pass: append every line the first pass accepted, in batches
/// of [`APPEND_BATCH`], each one durable write. Only one batch is in memory.
fn append_files(
    args: &Args,
    runtime: &tokio::runtime::Runtime,
    log: &dyn EventLog,
    plan: &Plan,
    today: ClinicalDate,
) -> anyhow::Result<u64> {
    let progress = progress_bar(&args.files, "appending")?;
    let mut appended = 0_u64;
    let mut batch: Vec<NewRecord> = Vec::with_capacity(APPEND_BATCH);
    let mut failure: Option<anyhow::Error> = None;
    for (file_index, path) in args.files.iter().enumerate() {
        for_each_line(path, &progress, |line_number, line| {
            if failure.is_some() || plan.skip.contains(&(file_index, line_number)) {
                return;
            }
            let event = match line.and_then(|line| domain::ndjson::parse_line(line, today)) {
                Ok(event) => event,
                // The first pass accepted this very line: the file changed under us.
                Err(refusal) => {
                    failure = Some(anyhow::anyhow!(
                        "{}:{line_number} changed while importing: {refusal}",
                        path.display()
                    ));
                    return;
                }
            };
            batch.push(NewRecord {
                key: event.event_id.as_str().to_owned(),
                stream: format!("{}.{}", event.centre, event.patient),
                principal: args.principal.clone(),
                payload: proto::convert::encode_event(&event),
            });
            if batch.len() == APPEND_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(APPEND_BATCH));
                match runtime.block_on(append(log, full)) {
                    Ok(count) => appended += count,
                    Err(error) => failure = Some(error),
                }
            }
        })?;
        if let Some(error) = failure.take() {
            return Err(error);
        }
    }
    if !batch.is_empty() {
        appended += runtime.block_on(append(log, batch))?;
    }
    progress.finish_and_clear();
    Ok(appended)
}

/// Appends one batch and counts what it added (duplicates add nothing).
async fn append(log: &dyn EventLog, records: Vec<NewRecord>) -> anyhow::Result<u64> {
    let outcomes = log
        .append(AppendBatch::new(records))
        .await
        .context("appending to the event log")?;
    Ok(outcomes
        .iter()
        .filter(|outcome| matches!(outcome, AppendOutcome::Appended { .. }))
        .count() as u64)
}

/// Calls `visit(line_number, line)` for every non-blank line of `path`;
/// line numbers count every physical line from 1. A line that is not UTF-8
/// is bad input on that line, not an unreadable file: it is visited as the
/// refusal that says so, and the lines after it are still read.
pub(super) fn for_each_line(
    path: &Path,
    progress: &ProgressBar,
    mut visit: impl FnMut(u64, Result<&str, Refusal>),
) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, progress.wrap_read(file));
    let mut line = Vec::new();
    let mut line_number = 0_u64;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {} after line {line_number}", path.display()))?;
        if read == 0 {
            return Ok(());
        }
        line_number += 1;
        while line
            .last()
            .is_some_and(|byte| matches!(byte, b'\n' | b'\r'))
        {
            line.pop();
        }
        match std::str::from_utf8(&line) {
            Ok(content) if content.trim().is_empty() => {}
            Ok(content) => visit(line_number, Ok(content)),
            Err(error) => visit(line_number, Err(not_utf8(&line, &error))),
        }
    }
}

/// Why a line that is not UTF-8 is refused, naming its first bad byte.
fn not_utf8(line: &[u8], error: &std::str::Utf8Error) -> Refusal {
    let at = error.valid_up_to();
    let byte = line.get(at).copied().unwrap_or_default();
    Refusal::single(
        "line",
        format!(
            "is not UTF-8 text: byte {} (0x{byte:02x}) is not valid UTF-8; save the file as UTF-8",
            at + 1
        ),
    )
}

/// A progress bar over the files' bytes, drawn only when stderr is a terminal.
fn progress_bar(files: &[PathBuf], what: &str) -> anyhow::Result<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return Ok(ProgressBar::hidden());
    }
    let mut total = 0;
    for path in files {
        total += std::fs::metadata(path)
            .with_context(|| format!("reading the size of {}", path.display()))?
            .len();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})")
            .map(|style| style.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_owned());
    Ok(bar)
}
