//! `toxaudit validate FILE...`: checks each line of NDJSON event files against
//! the contract (events.md) without touching a log, and prints every refusal
//! as `FILE:LINE: field: reason`. Lines are read as `import` reads them
//! ([`super::import::for_each_line`]), so both number and refuse alike (a
//! line that is not UTF-8 included).

use std::{path::PathBuf, process::ExitCode};

use indicatif::ProgressBar;

use super::import::for_each_line;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// NDJSON files, one event per line.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let today = super::today();
    let mut valid = 0_u64;
    let mut refused = 0_u64;
    let quiet = ProgressBar::hidden();
    for path in &args.files {
        for_each_line(path, &quiet, None, |line_number, line| {
            match line.and_then(|line| domain::ndjson::parse_line(line, today)) {
                Ok(_) => valid += 1,
                Err(refusal) => {
                    refused += 1;
                    for reason in &refusal.reasons {
                        println!("{}:{line_number}: {reason}", path.display());
                    }
                }
            }
        })?;
    }
    eprintln!("{valid} valid, {refused} refused");
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
