//! `toxaudit export --data-dir DIR [--centre C]`: every event of the log as
//! NDJSON, in position order, with the server's fields (position,
//! recorded_at, recorded_by), so the log can be read by other tools.

use std::{
    io::{BufWriter, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context;
use domain::Centre;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The embedded log's data directory.
    #[arg(long, env = "TOXAUDIT_DATA_DIR")]
    data_dir: PathBuf,
    /// Only this centre's events.
    #[arg(long, value_parser = parse_centre)]
    centre: Option<Centre>,
}

fn parse_centre(text: &str) -> Result<Centre, String> {
    Centre::parse(text)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    let log = super::open_log(&args.data_dir)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    runtime.block_on(super::replay(&log, |recorded| {
        if args
            .centre
            .as_ref()
            .is_none_or(|centre| *centre == recorded.event.centre)
        {
            writeln!(out, "{}", domain::ndjson::recorded_to_line(&recorded))
                .context("writing to standard output")?;
        }
        Ok(())
    }))?;
    out.flush().context("writing to standard output")?;
    Ok(ExitCode::SUCCESS)
}
