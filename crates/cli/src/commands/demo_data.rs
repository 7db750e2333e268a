//! `toxaudit demo-data paper2019 --seed N` and `toxaudit demo-data random
//! --patients N --centres K --seed S`: seeded NDJSON on standard output, the
//! founding audit's cohort amid realistic noise, or data at scale.

use std::{
    io::{BufWriter, Write},
    process::ExitCode,
};

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    kind: Kind,
}

#[derive(Debug, clap::Subcommand)]
enum Kind {
    /// The two-centre cohort of the founding audit (68 SNR patients) amid noise.
    Paper2019 {
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Random patients at scale (about 100 events per patient).
    Random {
        #[arg(long, default_value_t = 1000)]
        patients: u64,
        #[arg(long, default_value_t = 3)]
        centres: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
    match args.kind {
        Kind::Paper2019 { seed } => demodata::write_paper2019(seed, &mut out),
        Kind::Random {
            patients,
            centres,
            seed,
        } => demodata::write_random(
            &demodata::RandomSpec {
                patients,
                centres,
                seed,
            },
            &mut out,
        )
        .map(|_| ()),
    }
    .context("writing demo data to standard output")?;
    out.flush()
        .context("writing demo data to standard output")?;
    Ok(ExitCode::SUCCESS)
}
