//! A self-contained html page: inline css, no scripts, every text escaped,
//! so it can be mailed or archived as one file.

use std::fmt::Write;

use domain::audit::AuditReport;

use super::{TITLE, measures, proportion, rule_set_lines, scope_title, standard_rows};

/// Escapes text for html element content and attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:0.5em 0 1.5em}\
th,td{border:1px solid #ccc;padding:0.25em 0.75em;text-align:left}\
td.number{text-align:right;font-variant-numeric:tabular-nums}\
td.depth-1{padding-left:1.75em}td.depth-2{padding-left:3em}td.depth-3{padding-left:4.25em}\
p.rule-set{color:#555}";

pub(super) fn render(report: &AuditReport) -> String {
    let (rule_set, parameters) = rule_set_lines(report);
    let mut out = String::new();
    // Writing to a String cannot fail, so the fmt::Results below are ignored.
    let _ = writeln!(out, "<!DOCTYPE html>");
    let _ = writeln!(out, "<html lang=\"en\">");
    let _ = writeln!(out, "<head>");
    let _ = writeln!(out, "<meta charset=\"utf-8\">");
    let _ = writeln!(out, "<title>{}</title>", escape(TITLE));
    let _ = writeln!(out, "<style>{STYLE}</style>");
    let _ = writeln!(out, "</head>");
    let _ = writeln!(out, "<body>");
    let _ = writeln!(out, "<h1>{}</h1>", escape(TITLE));
    let _ = writeln!(
        out,
        "<p class=\"rule-set\">{}<br>{}</p>",
        escape(&rule_set),
        escape(&parameters)
    );
    for (name, scope) in report.scopes_in_order() {
        let _ = writeln!(out, "<h2>{}</h2>", escape(&scope_title(name)));
        let _ = writeln!(out, "<table>");
        let _ = writeln!(out, "<tr><th>measure</th><th>result</th></tr>");
        for measure in measures(scope) {
            let _ = writeln!(
                out,
                "<tr><td class=\"depth-{}\">{}</td><td class=\"number\">{}</td></tr>",
                measure.depth,
                escape(&measure.label),
                escape(&measure.shown())
            );
        }
        let _ = writeln!(out, "</table>");
        let _ = writeln!(out, "<table>");
        let _ = writeln!(
            out,
            "<tr><th>standard</th><th>description</th><th>result</th><th>target</th></tr>"
        );
        for row in standard_rows(report, scope) {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td class=\"number\">{}</td><td class=\"number\">{}%</td></tr>",
                escape(row.id),
                escape(&row.description),
                escape(&proportion(row.numerator, row.denominator)),
                row.target_pct
            );
        }
        let _ = writeln!(out, "</table>");
    }
    let _ = writeln!(out, "</body>");
    let _ = writeln!(out, "</html>");
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape(r#"<b>"a" & 'b'</b>"#),
            "&lt;b&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/b&gt;"
        );
    }
}
