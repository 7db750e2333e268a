//! `toxaudit import --data-dir DIR FILE... [--skip-invalid]`: appends NDJSON
//! event files to the embedded log, all or nothing.
//!
//! The import runs in two passes so a file of millions of lines is never
//! held in memory. The first pass checks every line, in order, against the
//! contract and against the log *as if each accepted line had already been
//! appended* (events.md "Bad input"), remembering only which lines to skip.
//! If any line is refused, nothing is appended (unless `--skip-invalid`).
//! The second pass reads the files again and appends the accepted lines in
//! batches. The log stays locked by this process between the passes, and
//! the second pass appends only what the first checked: it reads each file
//! no further than the first did, refuses to start when a file's length
//! changed in between (a file another program is still writing), and stops
//! at a line that is not the event the first pass accepted (a file rewritten
//! in place), so no event ever reaches the log unchecked.

use std::{
    collections::HashSet,
    fmt::Write as _,
    fs::File,
    io::{BufRead, BufReader, IsTerminal, Read},
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
    /// Bytes of each file the first pass read: all the second may read.
    checked_bytes: Vec<u64>,
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

    let appended = append_files(&args, &runtime, &log, &plan, &admission, today)?;
    eprintln!(
        "appended {appended}, duplicates {}, refused {}, warnings {}",
        plan.duplicates, plan.refused_lines, plan.warnings
    );
    // What was checked was appended, and nothing else: a file that grew
    // meanwhile is not imported whole, which must not pass for success.
    if let Some(changed) = changed_since_checked(&args.files, &plan.checked_bytes)? {
        anyhow::bail!(
            "{changed}: only what was checked was imported; import it again once it is complete"
        );
    }
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
        let read = for_each_line(path, &progress, None, |line_number, line| {
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
        plan.checked_bytes.push(read);
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

/// The first of `files` whose length is no longer the `checked_bytes` the
/// first pass read of it, described, or `None`.
pub(super) fn changed_since_checked(
    files: &[PathBuf],
    checked_bytes: &[u64],
) -> anyhow::Result<Option<String>> {
    for (path, checked) in files.iter().zip(checked_bytes) {
        let now = std::fs::metadata(path)
            .with_context(|| format!("reading the size of {}", path.display()))?
            .len();
        if now != *checked {
            return Ok(Some(format!(
                "{} changed after it was checked ({checked} bytes checked, {now} now; is another \
                 program still writing it?)",
                path.display()
            )));
        }
    }
    Ok(None)
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
///
/// `admission` is the first pass's state, every accepted event folded in:
/// a line to append must be a duplicate there, i.e. exactly an event the
/// first pass accepted. Each file is read no further than the first pass
/// read it, and must still be that long when this starts.
fn append_files(
    args: &Args,
    runtime: &tokio::runtime::Runtime,
    log: &dyn EventLog,
    plan: &Plan,
    admission: &Admission,
    today: ClinicalDate,
) -> anyhow::Result<u64> {
    if let Some(changed) = changed_since_checked(&args.files, &plan.checked_bytes)? {
        anyhow::bail!("{changed}: nothing appended; import it again once it is complete");
    }
    let progress = progress_bar(&args.files, "appending")?;
    let mut appended = 0_u64;
    let mut batch: Vec<NewRecord> = Vec::with_capacity(APPEND_BATCH);
    let mut failure: Option<anyhow::Error> = None;
    for (file_index, path) in args.files.iter().enumerate() {
        let limit = plan.checked_bytes.get(file_index).copied().unwrap_or(0);
        for_each_line(path, &progress, Some(limit), |line_number, line| {
            if failure.is_some() || plan.skip.contains(&(file_index, line_number)) {
                return;
            }
            let changed = |why: String| {
                anyhow::anyhow!(
                    "{}:{line_number} changed while importing ({why}); the lines before it \
                     were appended, it and the rest were not",
                    path.display()
                )
            };
            let event = match line.and_then(|line| domain::ndjson::parse_line(line, today)) {
                Ok(event) => event,
                // The first pass accepted this very line: the file changed under us.
                Err(refusal) => {
                    failure = Some(changed(refusal.to_string()));
                    return;
                }
            };
            if admission.check(&event, &WriterScope::AnyCentre) != Verdict::Duplicate {
                failure = Some(changed("it is not the event that was checked".to_owned()));
                return;
            }
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

/// Calls `visit(line_number, line)` for every non-blank line of `path`,
/// reading at most `limit` bytes when given; line numbers count every
/// physical line from 1. A line that is not UTF-8 is bad input on that
/// line, not an unreadable file: it is visited as the refusal that says so,
/// and the lines after it are still read. Returns the bytes read.
pub(super) fn for_each_line(
    path: &Path,
    progress: &ProgressBar,
    limit: Option<u64>,
    mut visit: impl FnMut(u64, Result<&str, Refusal>),
) -> anyhow::Result<u64> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::with_capacity(
        1 << 20,
        progress.wrap_read(file).take(limit.unwrap_or(u64::MAX)),
    );
    let mut line = Vec::new();
    let mut line_number = 0_u64;
    let mut total = 0_u64;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {} after line {line_number}", path.display()))?;
        if read == 0 {
            return Ok(total);
        }
        total += read as u64;
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

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTERED: &str = r#"{"event_id":"e-1","centre":"leeds","patient":"L-1","occurred_on":"2020-01-06","type":"patient_registered"}"#;
    const REFERRED: &str = r#"{"event_id":"e-2","centre":"leeds","patient":"L-1","occurred_on":"2020-01-06","type":"referral_made","target":"dbs"}"#;
    /// Valid by the contract, refused by admission: unregistered patient,
    /// no such injection.
    const UNCHECKED: &str = r#"{"event_id":"e-9","centre":"leeds","patient":"L-9","occurred_on":"2020-01-06","type":"response_assessed","injection_event_id":"e-404","rating":"good"}"#;

    fn args(file: PathBuf) -> Args {
        Args {
            data_dir: None,
            server: super::super::remote::ServerArgs {
                server: None,
                token: None,
                ca_cert: None,
            },
            skip_invalid: false,
            principal: "cli:test".to_owned(),
            files: vec![file],
        }
    }

    /// Runs the first pass on `lines`, lets `change` rewrite the file, then
    /// the second pass: what it returns, and the log's head after it.
    fn import_with_a_change_between_the_passes(
        lines: &[&str],
        change: impl FnOnce(&Path),
    ) -> (anyhow::Result<u64>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("events.ndjson");
        std::fs::write(&file, format!("{}\n", lines.join("\n"))).unwrap();
        let runtime = crate::commands::runtime().unwrap();
        let log = crate::commands::open_log(&dir.path().join("data")).unwrap();
        let today = crate::commands::today();
        let mut admission = Admission::default();
        let plan = check_files(std::slice::from_ref(&file), &mut admission, today).unwrap();
        assert_eq!(plan.refused_lines, 0);
        change(&file);
        let appended = append_files(&args(file), &runtime, &log, &plan, &admission, today);
        let head = runtime.block_on(log.head()).unwrap();
        (appended, head)
    }

    /// A file still being written by another program (an interface engine
    /// dropping an export) grew between the passes: the lines added after
    /// the check were appended unchecked (an unregistered patient's
    /// assessment of an injection that does not exist), and the export of
    /// the log could no longer be imported.
    #[test]
    fn lines_added_after_the_check_are_never_appended() {
        let (appended, head) = import_with_a_change_between_the_passes(&[REGISTERED], |file| {
            let mut text = std::fs::read_to_string(file).unwrap();
            text.push_str(UNCHECKED);
            text.push('\n');
            std::fs::write(file, text).unwrap();
        });
        let error = appended.expect_err("a file that grew was imported");
        assert!(error.to_string().contains("changed"), "{error:#}");
        assert_eq!(head, 0, "nothing is appended");
    }

    /// A line rewritten in place (same length) between the passes is not
    /// the event that was checked: it is never appended.
    #[test]
    fn a_line_rewritten_after_the_check_is_never_appended() {
        let (appended, head) =
            import_with_a_change_between_the_passes(&[REGISTERED, REFERRED], |file| {
                let text = std::fs::read_to_string(file).unwrap();
                std::fs::write(file, text.replace("\"e-2\"", "\"e-8\"")).unwrap();
            });
        let error = appended.expect_err("a rewritten file was imported");
        assert!(error.to_string().contains("changed"), "{error:#}");
        assert_eq!(head, 0, "nothing of the last batch is appended");
    }

    /// Unchanged, the second pass appends what the first accepted.
    #[test]
    fn an_unchanged_file_is_appended_whole() {
        let (appended, head) =
            import_with_a_change_between_the_passes(&[REGISTERED, REFERRED], |_| {});
        assert_eq!(appended.unwrap(), 2);
        assert_eq!(head, 2);
    }
}
