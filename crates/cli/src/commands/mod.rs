//! One module per subcommand, plus the pieces they share: opening the
//! embedded log and reading "today" from the clock (the domain never does).

pub mod demo_data;
pub mod export;
pub mod import;
pub mod network;
pub mod patient;
pub mod remote;
pub mod report;
pub mod serve;
pub mod token;
pub mod up;
pub mod validate;

use std::path::Path;

use anyhow::Context;
use domain::ClinicalDate;
use eventlog::{EmbeddedLog, EmbeddedOptions, EventLog};

/// How many records a replay reads per call to the log.
pub const READ_BATCH: usize = 4096;

/// Today's date in UTC: the upper bound of a clinical date is today + 1 day.
pub fn today() -> ClinicalDate {
    ClinicalDate::from_date(time::OffsetDateTime::now_utc().date())
}

/// Opens (creating if needed) the embedded log in `data_dir`.
pub fn open_log(data_dir: &Path) -> anyhow::Result<EmbeddedLog> {
    EmbeddedLog::open(data_dir, EmbeddedOptions::default())
        .with_context(|| format!("opening the event log in {}", data_dir.display()))
}

/// Reads every record of the log in position order, decoding each into a
/// recorded event and handing it to `visit`.
pub async fn replay(
    log: &dyn EventLog,
    mut visit: impl FnMut(domain::RecordedEvent) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut next = 1;
    loop {
        let records = log
            .read(next, READ_BATCH)
            .await
            .with_context(|| format!("reading the event log from position {next}"))?;
        let Some(last) = records.last() else {
            return Ok(());
        };
        next = last.position + 1;
        for record in records {
            let recorded = proto::convert::recorded_from_parts(
                record.position,
                record.recorded_at_micros,
                &record.principal,
                &record.payload,
            )
            .with_context(|| format!("decoding the event at position {}", record.position))?;
            visit(recorded)?;
        }
    }
}

/// A current-thread tokio runtime for the commands that talk to the log.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
