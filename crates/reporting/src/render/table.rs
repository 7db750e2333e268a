//! The terminal table: the founding audit's results, scope by scope, as
//! aligned plain text, then the standards against their targets.

use std::fmt::Write;

use domain::audit::AuditReport;

use super::{TITLE, measures, proportion, rule_set_lines, scope_title, standard_rows};

pub(super) fn render(report: &AuditReport) -> String {
    let (rule_set, parameters) = rule_set_lines(report);
    let mut out = String::new();
    // Writing to a String cannot fail, so the fmt::Results below are ignored.
    let _ = writeln!(out, "{TITLE}");
    let _ = writeln!(out, "{rule_set}");
    let _ = writeln!(out, "{parameters}");
    for (name, scope) in report.scopes_in_order() {
        let _ = writeln!(out);
        let _ = writeln!(out, "== {} ==", scope_title(name));
        let rows: Vec<(String, String)> = measures(scope)
            .iter()
            .map(|measure| {
                (
                    format!("{}{}", "  ".repeat(measure.depth), measure.label),
                    measure.shown(),
                )
            })
            .collect();
        let label_width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
        for (label, value) in &rows {
            let _ = writeln!(out, "  {label:<label_width$}  {value}");
        }

        let _ = writeln!(out);
        let standards: Vec<[String; 4]> = standard_rows(report, scope)
            .into_iter()
            .map(|row| {
                [
                    row.id.to_owned(),
                    row.description,
                    proportion(row.numerator, row.denominator),
                    format!("{}%", row.target_pct),
                ]
            })
            .collect();
        let header = [
            "standard".to_owned(),
            "description".to_owned(),
            "result".to_owned(),
            "target".to_owned(),
        ];
        let mut widths = [0usize; 4];
        for row in std::iter::once(&header).chain(&standards) {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.len());
            }
        }
        for row in std::iter::once(&header).chain(&standards) {
            let line = format!(
                "  {:<w0$}  {:<w1$}  {:<w2$}  {}",
                row[0],
                row[1],
                row[2],
                row[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    out
}
