//! The patient view: one patient's cycles in clinical order, the SNR
//! classification, each BNN step taken with its date, and the standards the
//! patient is counted in, with why each is met or not.

use std::fmt::Write;

use domain::audit::{PatientAssessment, SnrGroup};

use super::{proportion, rule_set_lines};

/// Renders one patient's assessment as plain text for a terminal.
pub fn render_patient(view: &PatientAssessment) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail, so the fmt::Results below are ignored.
    let _ = writeln!(
        out,
        "patient {} at centre {}{}",
        view.patient,
        view.centre,
        if view.registered {
            ""
        } else {
            " (not registered: not part of the audit)"
        }
    );
    let report_like = domain::audit::AuditReport {
        rule_set: view.rule_set.clone(),
        parameters: (!view.parameters.is_default()).then_some(view.parameters),
        scopes: Default::default(),
    };
    let (rule_set, parameters) = rule_set_lines(&report_like);
    let _ = writeln!(out, "{rule_set}");
    let _ = writeln!(out, "{parameters}");

    let _ = writeln!(out);
    let _ = writeln!(out, "timeline (live cycles in clinical order)");
    if view.cycles.is_empty() {
        let _ = writeln!(out, "  no injections recorded");
    }
    let rows: Vec<[String; 8]> = view
        .cycles
        .iter()
        .enumerate()
        .map(|(index, cycle)| {
            let mut notes = Vec::new();
            if cycle.onset {
                notes.push("SNR onset".to_owned());
            }
            if cycle.adjusted {
                notes.push("adjusted".to_owned());
            }
            if let Some(days) = cycle.days_since_previous
                && days < i64::from(view.parameters.min_interval_days)
            {
                notes.push(format!("{days} days after the previous cycle"));
            }
            let muscles: Vec<String> = cycle
                .muscles
                .iter()
                .map(|injected| format!("{} {}", injected.side, injected.muscle))
                .collect();
            [
                (index + 1).to_string(),
                cycle.occurred_on.to_string(),
                cycle.product.to_string(),
                cycle.total_units.to_string(),
                cycle.guidance.to_string(),
                cycle
                    .rating
                    .map_or_else(|| "unrated".to_owned(), |rating| rating.to_string()),
                notes.join("; "),
                muscles.join(", "),
            ]
        })
        .collect();
    if !rows.is_empty() {
        let header = [
            "#", "date", "product", "units", "guidance", "rating", "notes", "muscles",
        ]
        .map(str::to_owned);
        let mut widths = [0usize; 8];
        for row in std::iter::once(&header).chain(&rows) {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.len());
            }
        }
        for row in std::iter::once(&header).chain(&rows) {
            let mut line = String::from(" ");
            for (column, (cell, width)) in row.iter().zip(widths).enumerate() {
                // Numbers right-aligned, words left-aligned.
                if column == 0 || column == 3 {
                    let _ = write!(line, " {cell:>width$}");
                } else {
                    let _ = write!(line, " {cell:<width$}");
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }

    let _ = writeln!(out);
    match &view.snr {
        None => {
            let _ = writeln!(
                out,
                "SNR: not in the SNR cohort (no poor BoNT-A cycle after {} good ones)",
                view.parameters.min_good_cycles_before_snr
            );
        }
        Some(snr) => {
            let group = match snr.group {
                SnrGroup::Suboptimal => "suboptimal response",
                SnrGroup::NoResponse => "no response",
            };
            let _ = writeln!(
                out,
                "SNR: {group}, onset {} after {} good BoNT-A cycles",
                snr.onset_on, snr.good_cycles_before_onset
            );
            let _ = writeln!(out, "BNN steps after onset:");
            let step = |label: &str, date: Option<domain::ClinicalDate>| match date {
                Some(date) => format!("  {label:<36} {date}"),
                None => format!("  {label:<36} not taken"),
            };
            let regained_label = if snr.regained_on.is_none() {
                "regained a good response"
            } else if snr.regained_with_adjustment {
                "regained a good response (adjusted)"
            } else {
                "regained a good response (unadjusted)"
            };
            let steps = [
                step("first adjusted cycle", snr.first_adjusted_on),
                step(regained_label, snr.regained_on),
                step("switched to BoNT-B", snr.switched_to_bont_b_on),
                step("referred for DBS", snr.referred_dbs_on),
                step("assessed for resistance", snr.assessed_for_resistance_on),
                step("resistance confirmed", snr.resistance_confirmed_on),
            ];
            for line in steps {
                let _ = writeln!(out, "{line}");
            }
            if snr.resistance_confirmed_on.is_some() {
                let _ = writeln!(
                    out,
                    "{}",
                    step("management changed", snr.management_changed_on)
                );
            }
        }
    }

    let _ = writeln!(out);
    if view.standards.is_empty() {
        let _ = writeln!(out, "standards: the patient is not counted in any standard");
    } else {
        let _ = writeln!(out, "standards the patient is counted in:");
        for finding in &view.standards {
            let verdict = if finding.met() { "met" } else { "NOT MET" };
            let _ = writeln!(
                out,
                "  {} {} {}: {}",
                finding.standard.id(),
                proportion(finding.numerator, finding.denominator),
                verdict,
                finding.reason
            );
        }
        let failed = view.standards_failed().count();
        let _ = writeln!(out, "standards failed: {failed}");
    }
    out
}
