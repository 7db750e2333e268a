//! `toxaudit validate FILE...`: checks each line of NDJSON event files against
//! the contract (events.md) without touching a log, and prints every refusal
//! as `FILE:LINE: field: reason`.

use std::{io::BufRead, path::PathBuf, process::ExitCode};

use anyhow::Context;

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
    for path in &args.files {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            match domain::ndjson::parse_line(&line, today) {
                Ok(_) => valid += 1,
                Err(refusal) => {
                    refused += 1;
                    for reason in &refusal.reasons {
                        println!("{}:{}: {}", path.display(), index + 1, reason);
                    }
                }
            }
        }
    }
    eprintln!("{valid} valid, {refused} refused");
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
