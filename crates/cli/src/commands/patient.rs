//! `toxaudit patient --data-dir DIR --centre C --patient P`: one patient's
//! timeline, SNR classification, BNN steps and failed standards, for the
//! clinician who wants to know why a patient counts where it does.

use std::{io::Write, path::PathBuf, process::ExitCode};

use anyhow::Context;
use domain::{Centre, PatientKey, Pseudonym};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The embedded log's data directory.
    #[arg(long, env = "TOXAUDIT_DATA_DIR")]
    data_dir: PathBuf,
    #[arg(long, value_parser = Centre::parse)]
    centre: Centre,
    /// The patient's pseudonym.
    #[arg(long, value_parser = Pseudonym::parse)]
    patient: Pseudonym,
    #[command(flatten)]
    view: super::report::ViewArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let key = PatientKey::new(args.centre.clone(), args.patient.clone());
    let cohort = args.view.fold(&args.data_dir, |recorded| {
        recorded.event.centre == key.centre && recorded.event.patient == key.patient
    })?;
    let Some(assessment) = cohort.patient(&key) else {
        eprintln!(
            "no patient {key} is registered in {}",
            args.data_dir.display()
        );
        return Ok(ExitCode::from(1));
    };
    let mut text = reporting::render::render_patient(&assessment);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing to standard output")?;
    Ok(ExitCode::SUCCESS)
}
