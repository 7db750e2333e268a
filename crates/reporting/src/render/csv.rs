//! The csv form: one row per scope and measure, `scope,metric,numerator,denominator`,
//! for spreadsheets and scripts. Plain counts leave the denominator empty.
//! Scope names are `[a-z0-9-]` and metric names `[a-z0-9_.-]` (centre names
//! and standard ids), so no field ever needs quoting.

use std::fmt::Write;

use domain::audit::AuditReport;

use super::{measures, standard_rows};

pub(super) fn render(report: &AuditReport) -> String {
    let mut out = String::from("scope,metric,numerator,denominator\n");
    // Writing to a String cannot fail, so the fmt::Results below are ignored.
    for (name, scope) in report.scopes_in_order() {
        for measure in measures(scope) {
            let denominator = measure
                .denominator
                .map(|denominator| denominator.to_string())
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{name},{},{},{denominator}",
                measure.key, measure.numerator
            );
        }
        for row in standard_rows(report, scope) {
            let _ = writeln!(
                out,
                "{name},{},{},{}",
                row.id, row.numerator, row.denominator
            );
        }
    }
    out
}
