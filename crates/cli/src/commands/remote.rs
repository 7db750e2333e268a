//! `toxaudit import|report --server URL --token T`: the same commands through
//! the gRPC services instead of an embedded log in a local directory.
//!
//! An import through the server checks every line against the contract
//! locally first (so a bad file is refused with `FILE:LINE: field: reason`
//! and nothing is sent), then sends all the files' events in one
//! `Ingest.Import` call, which the server checks whole against the log
//! before appending anything: if any event is refused, nothing is appended,
//! exactly like `--data-dir` (spec/events.md, "Bad input"). Only an import
//! of more than [`ingest::MOST_EVENTS_PER_IMPORT`] events (or half of
//! [`ingest::MOST_BYTES_PER_IMPORT`] in lines) is sent in several calls,
//! each all or nothing on its own (said before anything is sent):
//! when one is refused, the calls before it stay appended, and the summary
//! says how many (importing the fixed file again is safe: what is stored
//! comes back as duplicates).

use std::{collections::HashSet, path::PathBuf, process::ExitCode};

use anyhow::Context;
use domain::audit::AuditReport;
use indicatif::ProgressBar;
use reporting::render::{Format, render};
use service_kit::client::{ServiceClient, refused_events};

use super::import::{changed_since_checked, for_each_line};

/// Events per `Ingest.Import` call: the server admits a call whole, in
/// memory, and takes at most this many.
pub const EVENTS_PER_REQUEST: usize = ingest::MOST_EVENTS_PER_IMPORT;

/// Bytes of NDJSON lines per `Ingest.Import` call: half what the server
/// takes, counted on the lines (an event's protobuf is shorter than its
/// JSON line).
const LINE_BYTES_PER_REQUEST: usize = ingest::MOST_BYTES_PER_IMPORT / 2;

/// How to reach the services.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The services' gRPC address, e.g. http://127.0.0.1:50051 (instead of --data-dir).
    #[arg(long, env = "TOXAUDIT_SERVER")]
    pub server: Option<String>,
    /// Bearer token (see `toxaudit token issue`).
    #[arg(
        long,
        env = "TOXAUDIT_TOKEN",
        requires = "server",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// CA certificate (PEM) to trust for an https:// server.
    #[arg(long, requires = "server")]
    pub ca_cert: Option<PathBuf>,
}

impl ServerArgs {
    async fn connect(&self) -> anyhow::Result<ServiceClient> {
        let server = self
            .server
            .as_deref()
            .context("--server is required here")?;
        let token = self
            .token
            .as_deref()
            .context("--token (or TOXAUDIT_TOKEN) is required with --server")?;
        Ok(ServiceClient::connect(server, token, self.ca_cert.as_deref()).await?)
    }
}

/// Where a sent event came from, to name its line in a refusal.
type Origin = (usize, u64);

/// Totals of an import through the server.
#[derive(Debug, Default)]
struct Totals {
    appended: u64,
    duplicates: u64,
    refused: u64,
    warnings: u64,
}

pub fn import(
    server: &ServerArgs,
    files: &[PathBuf],
    skip_invalid: bool,
) -> anyhow::Result<ExitCode> {
    let today = super::today();
    let mut totals = Totals::default();

    // The contract check of every line, before anything is sent.
    let quiet = ProgressBar::hidden();
    // What was checked is all that is sent: bytes read of each file.
    let mut checked_bytes = Vec::with_capacity(files.len());
    let (mut to_send, mut line_bytes_to_send) = (0, 0);
    for path in files {
        let read = for_each_line(path, &quiet, None, |line_number, line| {
            let length = line.as_ref().map_or(0, |line| line.len());
            match line.and_then(|line| domain::ndjson::parse_line(line, today)) {
                Ok(_) => {
                    to_send += 1;
                    line_bytes_to_send += length;
                }
                Err(refusal) => {
                    totals.refused += 1;
                    for reason in &refusal.reasons {
                        println!("{}:{line_number}: {reason}", path.display());
                    }
                }
            }
        })?;
        checked_bytes.push(read);
    }
    if totals.refused > 0 && !skip_invalid {
        eprintln!(
            "refused: {} line(s) refused, nothing sent to the server",
            totals.refused
        );
        return Ok(ExitCode::from(1));
    }

    if let Some(changed) = changed_since_checked(files, &checked_bytes)? {
        anyhow::bail!("{changed}: nothing sent; import it again once it is complete");
    }

    let runtime = super::runtime()?;
    let client = runtime.block_on(server.connect())?;
    if to_send > EVENTS_PER_REQUEST || line_bytes_to_send > LINE_BYTES_PER_REQUEST {
        eprintln!(
            "note: more than {EVENTS_PER_REQUEST} events or {} MiB: sent in parts, each all or nothing on its own; a refused part leaves the parts before it appended",
            LINE_BYTES_PER_REQUEST >> 20
        );
    }
    let mut batch: Vec<(Origin, proto::v1::Event)> = Vec::new();
    let mut batch_line_bytes = 0;
    // The first failure (or refusal) stops the import.
    let mut stopped: Option<anyhow::Result<Sent>> = None;
    for (file_index, path) in files.iter().enumerate() {
        let limit = checked_bytes.get(file_index).copied().unwrap_or(0);
        for_each_line(path, &quiet, Some(limit), |line_number, line| {
            if stopped.is_some() {
                return;
            }
            let length = line.as_ref().map_or(0, |line| line.len());
            let Ok(event) = line.and_then(|line| domain::ndjson::parse_line(line, today)) else {
                return;
            };
            if batch_line_bytes + length > LINE_BYTES_PER_REQUEST && !batch.is_empty() {
                let full = std::mem::take(&mut batch);
                batch_line_bytes = 0;
                match runtime.block_on(send(&client, full, files, skip_invalid, &mut totals)) {
                    Ok(Sent::Accepted) => {}
                    other => {
                        stopped = Some(other);
                        return;
                    }
                }
            }
            batch.push(((file_index, line_number), proto::v1::Event::from(&event)));
            batch_line_bytes += length;
            if batch.len() == EVENTS_PER_REQUEST {
                batch_line_bytes = 0;
                let full = std::mem::take(&mut batch);
                match runtime.block_on(send(&client, full, files, skip_invalid, &mut totals)) {
                    Ok(Sent::Accepted) => {}
                    other => stopped = Some(other),
                }
            }
        })?;
    }
    let last = match stopped {
        Some(outcome) => outcome,
        None if batch.is_empty() => Ok(Sent::Accepted),
        None => runtime.block_on(send(&client, batch, files, skip_invalid, &mut totals)),
    };
    if let Sent::Refused = last? {
        if totals.appended == 0 && totals.duplicates == 0 {
            eprintln!("refused: the server refused the import, which appended nothing");
        } else {
            eprintln!(
                "refused: the server refused a part of the import, which appended nothing \
                 ({} event(s) appended by earlier parts)",
                totals.appended
            );
        }
        return Ok(ExitCode::from(1));
    }
    eprintln!(
        "appended {}, duplicates {}, refused {}, warnings {}",
        totals.appended, totals.duplicates, totals.refused, totals.warnings
    );
    if let Some(changed) = changed_since_checked(files, &checked_bytes)? {
        anyhow::bail!(
            "{changed}: only what was checked was sent; import it again once it is complete"
        );
    }
    Ok(if totals.refused > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Sends one batch. When the server refuses it, prints every refusal with
/// its line and, with `--skip-invalid`, sends the batch again without the
/// refused events (their dependants may be refused in turn) until it is
/// accepted or empty; without it, stops the import.
async fn send(
    client: &ServiceClient,
    mut batch: Vec<(Origin, proto::v1::Event)>,
    files: &[PathBuf],
    skip_invalid: bool,
    totals: &mut Totals,
) -> anyhow::Result<Sent> {
    while !batch.is_empty() {
        let events = batch.iter().map(|(_, event)| event.clone()).collect();
        match client.import(events).await {
            Ok(response) => {
                for (outcome, (origin, _)) in response.outcomes.iter().zip(&batch) {
                    if outcome.duplicate {
                        totals.duplicates += 1;
                    } else {
                        totals.appended += 1;
                    }
                    for warning in &outcome.warnings {
                        totals.warnings += 1;
                        eprintln!(
                            "{}:{}: warning: {}: {}",
                            files[origin.0].display(),
                            origin.1,
                            warning.field,
                            warning.reason
                        );
                    }
                }
                return Ok(Sent::Accepted);
            }
            Err(status) => {
                let Some(refused) = refused_events(&status) else {
                    // Not a refusal of events: the server is away, the call
                    // too large, the token not allowed, ... (the code says).
                    anyhow::bail!(
                        "the import through the server failed ({:?}): {}",
                        status.code(),
                        status.message()
                    );
                };
                let mut refused_indexes: HashSet<usize> = HashSet::new();
                for event in &refused.events {
                    let index = event.index as usize;
                    let Some((origin, _)) = batch.get(index) else {
                        continue;
                    };
                    refused_indexes.insert(index);
                    for reason in &event.reasons {
                        println!(
                            "{}:{}: {}: {}",
                            files[origin.0].display(),
                            origin.1,
                            reason.field,
                            reason.reason
                        );
                    }
                }
                anyhow::ensure!(
                    !refused_indexes.is_empty(),
                    "the server refused the import: {}",
                    status.message()
                );
                totals.refused += refused_indexes.len() as u64;
                if !skip_invalid {
                    return Ok(Sent::Refused);
                }
                batch = batch
                    .into_iter()
                    .enumerate()
                    .filter(|(index, _)| !refused_indexes.contains(index))
                    .map(|(_, item)| item)
                    .collect();
            }
        }
    }
    Ok(Sent::Accepted)
}

/// How a request ended.
#[derive(Debug)]
enum Sent {
    /// Appended (possibly after dropping refused events with --skip-invalid).
    Accepted,
    /// Refused, reasons printed; the import stops.
    Refused,
}

pub fn report(server: &ServerArgs, scope: &str, format: Format) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    let report = runtime.block_on(async {
        let client = server.connect().await?;
        client
            .get_report(scope)
            .await
            .map_err(|status| anyhow::anyhow!("GetReport: {}", status.message()))
    })?;
    let report: AuditReport =
        serde_json::from_str(&report.json).context("reading the server's report")?;
    let mut text = render(&report, format);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
