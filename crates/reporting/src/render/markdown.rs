//! GitHub-flavoured markdown: a heading per scope, its measures as a table
//! (nesting shown by indentation), then the standards table.

use std::fmt::Write;

use domain::audit::AuditReport;

use super::{TITLE, measures, proportion, rule_set_lines, scope_title, standard_rows};

/// Escapes the characters that would break a markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

pub(super) fn render(report: &AuditReport) -> String {
    let (rule_set, parameters) = rule_set_lines(report);
    let mut out = String::new();
    // Writing to a String cannot fail, so the fmt::Results below are ignored.
    let _ = writeln!(out, "# {TITLE}");
    let _ = writeln!(out);
    let _ = writeln!(out, "{}.", capitalised(&rule_set));
    let _ = writeln!(out, "{}.", capitalised(&parameters));
    for (name, scope) in report.scopes_in_order() {
        let _ = writeln!(out);
        let _ = writeln!(out, "## {}", capitalised(&scope_title(name)));
        let _ = writeln!(out);
        let _ = writeln!(out, "| measure | result |");
        let _ = writeln!(out, "|---|---:|");
        for measure in measures(scope) {
            let _ = writeln!(
                out,
                "| {}{} | {} |",
                "&emsp;".repeat(measure.depth),
                cell(&measure.label),
                measure.shown()
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "| standard | description | result | target |");
        let _ = writeln!(out, "|---|---|---:|---:|");
        for row in standard_rows(report, scope) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {}% |",
                row.id,
                cell(&row.description),
                proportion(row.numerator, row.denominator),
                row.target_pct
            );
        }
    }
    out
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
