//! A test importer: the domain's own parsing, admission and audit, exactly
//! as `toxaudit import` chains them, with counts of what happened.

use std::collections::HashSet;

use anyhow::{Context, bail};
use domain::{
    ClinicalDate, FieldError, RecordedEvent,
    admission::{Admission, Verdict, WriterScope},
    audit::{AuditReport, Cohort, RuleParameters},
    ndjson,
};

/// A day after every generated date (they end on 2025-12-31), fixed so the
/// tests do not depend on the clock.
fn today() -> anyhow::Result<ClinicalDate> {
    ClinicalDate::from_ymd(2026, 1, 1).context("2026-01-01 is a date")
}

/// What importing a file did.
#[derive(Debug)]
pub struct Imported {
    pub events: Vec<RecordedEvent>,
    pub duplicates: usize,
    pub warnings: Vec<FieldError>,
}

impl Imported {
    pub fn warnings_on(&self, field: &str, containing: &str) -> usize {
        self.warnings
            .iter()
            .filter(|warning| warning.field == field && warning.reason.contains(containing))
            .count()
    }

    pub fn report(&self) -> AuditReport {
        let mut cohort = Cohort::new(RuleParameters::default());
        for event in &self.events {
            cohort.apply(event);
        }
        cohort.report()
    }
}

/// Imports `lines` as the importer would, failing on the first line that is
/// refused or a conflict, and on a duplicate that is not an exact copy of an
/// earlier line.
pub fn import<'line>(lines: impl IntoIterator<Item = &'line str>) -> anyhow::Result<Imported> {
    let today = today()?;
    let mut admission = Admission::new();
    let mut seen_lines = HashSet::new();
    let mut imported = Imported {
        events: Vec::new(),
        duplicates: 0,
        warnings: Vec::new(),
    };
    for (index, line) in lines.into_iter().enumerate() {
        let number = index + 1;
        let event = ndjson::parse_line(line, today)
            .with_context(|| format!("line {number} does not parse: {line}"))?;
        match admission.check_and_apply(&event, &WriterScope::AnyCentre) {
            Verdict::Accepted { warnings } => {
                imported.warnings.extend(warnings);
                imported.events.push(RecordedEvent {
                    position: imported.events.len() as u64 + 1,
                    recorded_at_micros: 1_767_225_600_000_000,
                    recorded_by: "demo-import".into(),
                    event,
                });
            }
            Verdict::Duplicate => {
                if !seen_lines.contains(line) {
                    bail!("line {number} is a duplicate of different text: {line}");
                }
                imported.duplicates += 1;
            }
            other => bail!("line {number} was not accepted ({other:?}): {line}"),
        }
        seen_lines.insert(line.to_owned());
    }
    Ok(imported)
}
