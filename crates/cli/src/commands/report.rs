//! `toxaudit report --data-dir DIR --format json|table|md|csv|html`: the BNN
//! audit of the whole log (or of one centre), optionally as the log stood at
//! an earlier position or date (`--as-of`), or with rule parameters changed
//! for a what-if (`--param NAME=VALUE`).

use std::{io::Write, path::PathBuf, process::ExitCode};

use anyhow::Context;
use domain::{
    Centre, ClinicalDate, RecordedEvent,
    audit::{Cohort, RuleParameters},
};
use reporting::render::{Format, render};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The embedded log's data directory.
    #[arg(
        long,
        env = "TOXAUDIT_DATA_DIR",
        required_unless_present = "server",
        conflicts_with = "server"
    )]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    server: super::remote::ServerArgs,
    /// json (the rules.md shape), table, md, csv or html.
    #[arg(long, default_value = "table")]
    format: Format,
    /// Only this centre's patients.
    #[arg(long, value_parser = Centre::parse)]
    centre: Option<Centre>,
    #[command(flatten)]
    view: ViewArgs,
}

/// The options every audit view shares: which rules, as of when.
#[derive(Debug, clap::Args)]
pub struct ViewArgs {
    /// Override a rule parameter for this report only, e.g.
    /// `--param min_good_cycles_before_snr=1` (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// The log as it stood at a position (a number) or at the end of a
    /// recorded date (YYYY-MM-DD, UTC): what an audit meeting saw then.
    #[arg(long, value_parser = parse_as_of)]
    as_of: Option<AsOf>,
}

/// How far into the log a view reads.
#[derive(Debug, Clone, Copy)]
pub enum AsOf {
    Position(u64),
    RecordedOn(ClinicalDate),
}

fn parse_as_of(text: &str) -> Result<AsOf, String> {
    if let Ok(position) = text.parse::<u64>() {
        return Ok(AsOf::Position(position));
    }
    ClinicalDate::parse(text)
        .map(AsOf::RecordedOn)
        .map_err(|_| format!("'{text}' is neither a log position nor a date in YYYY-MM-DD form"))
}

impl AsOf {
    /// True while `recorded` still belongs to the view. Positions and
    /// recording times both only grow along the log, so the first record
    /// past the bound ends the view.
    fn includes(self, recorded: &RecordedEvent) -> bool {
        match self {
            AsOf::Position(position) => recorded.position <= position,
            AsOf::RecordedOn(date) => {
                let day = recorded.recorded_at_micros.div_euclid(86_400_000_000);
                i64::from(date.days_since_epoch()) >= day
            }
        }
    }
}

impl ViewArgs {
    pub fn parameters(&self) -> anyhow::Result<RuleParameters> {
        let mut parameters = RuleParameters::default();
        for assignment in &self.params {
            parameters
                .set_assignment(assignment)
                .map_err(|reason| anyhow::anyhow!("--param {assignment}: {reason}"))?;
        }
        Ok(parameters)
    }

    /// Folds the log (up to `--as-of`) into a cohort, keeping only the events
    /// `keep` selects.
    pub fn fold(
        &self,
        data_dir: &std::path::Path,
        keep: impl Fn(&RecordedEvent) -> bool,
    ) -> anyhow::Result<Cohort> {
        let mut cohort = Cohort::new(self.parameters()?);
        let runtime = super::runtime()?;
        let log = super::open_log(data_dir)?;
        let as_of = self.as_of;
        runtime.block_on(super::replay(&log, |recorded| {
            if as_of.is_none_or(|bound| bound.includes(&recorded)) && keep(&recorded) {
                cohort.apply(&recorded);
            }
            Ok(())
        }))?;
        Ok(cohort)
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some(data_dir) = &args.data_dir else {
        // The server folds the log with the rule set's defaults, live.
        anyhow::ensure!(
            args.view.params.is_empty() && args.view.as_of.is_none(),
            "--param and --as-of work on a log read from --data-dir, not with --server"
        );
        let scope = args.centre.as_ref().map_or("all", Centre::as_str);
        return super::remote::report(&args.server, scope, args.format);
    };
    let centre = args.centre.clone();
    let mut cohort = args.view.fold(data_dir, |recorded| {
        centre
            .as_ref()
            .is_none_or(|centre| *centre == recorded.event.centre)
    })?;
    let mut report = cohort.report();
    if let Some(centre) = &args.centre {
        // Only this centre's events were folded, so `all` would be this
        // centre under the network's name: keep the centre's scope alone
        // (zero counts when it has no patient), as the server answers
        // `--centre` too.
        let own = report
            .scopes
            .get(centre.as_str())
            .copied()
            .unwrap_or_default();
        report.scopes = [(centre.as_str().to_owned(), own)].into_iter().collect();
    }
    let mut text = render(&report, args.format);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing to standard output")?;
    Ok(ExitCode::SUCCESS)
}
