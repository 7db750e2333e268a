//! The report's renderers. Every human format is laid out from the same
//! list of measures ([`measures`]) and standards, with proportions written by
//! one function ([`proportion`]), so no two formats can disagree on a number,
//! a denominator or a rounding.

mod csv;
mod html;
mod markdown;
mod patient;
mod table;

use std::{fmt, str::FromStr};

use domain::audit::{AuditReport, GroupReport, RULE_SET, RuleParameters, ScopeReport, SnrGroup};

pub use patient::render_patient;

/// An output format of `toxaudit report --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// The JSON object of `rules.md`.
    Json,
    /// Aligned plain text for a terminal.
    Table,
    /// GitHub-flavoured markdown.
    Markdown,
    /// One row per scope and measure: `scope,metric,numerator,denominator`.
    Csv,
    /// A self-contained html page (inline css, no scripts).
    Html,
}

impl Format {
    pub const ALL: &'static [Format] = &[
        Format::Json,
        Format::Table,
        Format::Markdown,
        Format::Csv,
        Format::Html,
    ];

    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Table => "table",
            Format::Markdown => "md",
            Format::Csv => "csv",
            Format::Html => "html",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A format name that is not one of `json|table|md|csv|html`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown report format '{0}'; the formats are json, table, md, csv, html")]
pub struct UnknownFormat(pub String);

impl FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .iter()
            .copied()
            .find(|format| format.as_str() == text)
            .ok_or_else(|| UnknownFormat(text.to_owned()))
    }
}

/// Renders the report in a format. Every format ends with a newline.
pub fn render(report: &AuditReport, format: Format) -> String {
    match format {
        Format::Json => {
            // A report is plain structs of integers and strings: serialising
            // it cannot fail, so the fallback is never taken.
            let mut json = serde_json::to_string_pretty(report).unwrap_or_default();
            json.push('\n');
            json
        }
        Format::Table => table::render(report),
        Format::Markdown => markdown::render(report),
        Format::Csv => csv::render(report),
        Format::Html => html::render(report),
    }
}

/// `numerator/denominator (pct%)`, the percentage rounded half up to a whole
/// number in integer arithmetic; `numerator/0 (n/a)` when there is no
/// denominator, never 0% or 100%.
pub fn proportion(numerator: u64, denominator: u64) -> String {
    match percent(numerator, denominator) {
        Some(pct) => format!("{numerator}/{denominator} ({pct}%)"),
        None => format!("{numerator}/{denominator} (n/a)"),
    }
}

/// The whole percentage `numerator/denominator`, rounded half up:
/// floor((200·n + d) / 2d). `None` when the denominator is 0.
pub fn percent(numerator: u64, denominator: u64) -> Option<u128> {
    if denominator == 0 {
        return None;
    }
    let (numerator, denominator) = (u128::from(numerator), u128::from(denominator));
    Some((200 * numerator + denominator) / (2 * denominator))
}

/// The title every human format opens with.
pub(crate) const TITLE: &str = "BNN audit of secondary non-response to BoNT-A";

/// One line naming the rule set, and one naming every parameter (and
/// whether they are the rule set's defaults).
pub(crate) fn rule_set_lines(report: &AuditReport) -> (String, String) {
    let parameters = report.parameters();
    let defaults = RuleParameters::default();
    let rule_set = if report.rule_set == RULE_SET && parameters.is_default() {
        format!("rule set {} with its default parameters", report.rule_set)
    } else {
        format!(
            "rule set {} with what-if parameters (not the rule set's defaults)",
            report.rule_set
        )
    };
    let named: Vec<String> = parameters
        .named_values()
        .iter()
        .zip(defaults.named_values())
        .map(|((name, value), (_, default))| {
            if *value == default {
                format!("{name} = {value}")
            } else {
                format!("{name} = {value} (default {default})")
            }
        })
        .collect();
    (rule_set, format!("parameters: {}", named.join(", ")))
}

/// How a scope is titled.
pub(crate) fn scope_title(scope: &str) -> String {
    if scope == domain::audit::ALL_SCOPE {
        "all centres".to_owned()
    } else {
        format!("centre {scope}")
    }
}

/// One measure of a scope, as every format shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Measure {
    /// The csv metric name (the JSON path below the scope).
    pub key: String,
    /// The words a reader sees.
    pub label: String,
    /// Nesting under the measure above (0 = top level).
    pub depth: usize,
    pub numerator: u64,
    /// `None` for a plain count (patients, injections).
    pub denominator: Option<u64>,
}

impl Measure {
    /// The value as shown: a count, or `n/d (pct%)`.
    pub fn shown(&self) -> String {
        match self.denominator {
            Some(denominator) => proportion(self.numerator, denominator),
            None => self.numerator.to_string(),
        }
    }
}

/// The measures of a scope, in the founding audit's order. Each proportion
/// names its own denominator: the group for most, the not-regained patients
/// for the escalations among them, and those assessed for confirmation.
pub(crate) fn measures(scope: &ScopeReport) -> Vec<Measure> {
    let measure = |key: &str, label: &str, depth, numerator, denominator| Measure {
        key: key.to_owned(),
        label: label.to_owned(),
        depth,
        numerator,
        denominator,
    };
    let mut measures = vec![
        measure("patients", "registered patients", 0, scope.patients, None),
        measure("injections", "injections", 0, scope.injections, None),
        measure(
            "snr",
            "secondary non-response (SNR)",
            0,
            scope.snr.n,
            Some(scope.patients),
        ),
    ];
    for group in [SnrGroup::Suboptimal, SnrGroup::NoResponse] {
        let counts: &GroupReport = scope.snr.group(group);
        let name = group.as_str();
        let key = |field: &str| format!("{name}.{field}");
        let label = match group {
            SnrGroup::Suboptimal => "suboptimal response",
            SnrGroup::NoResponse => "no response",
        };
        let mut group_measure = measure(&key("n"), label, 1, counts.n, Some(scope.snr.n));
        group_measure.key = name.to_owned();
        measures.push(group_measure);
        let rows: [(&str, &str, usize, u64, u64); 9] = [
            (
                "regained_with_adjustment",
                "regained with adjustment",
                2,
                counts.regained_with_adjustment,
                counts.n,
            ),
            (
                "regained_without_adjustment",
                "regained without adjustment",
                2,
                counts.regained_without_adjustment,
                counts.n,
            ),
            (
                "not_regained",
                "not regained",
                2,
                counts.not_regained,
                counts.n,
            ),
            (
                "not_regained_switched_to_bont_b",
                "of whom switched to BoNT-B",
                3,
                counts.not_regained_switched_to_bont_b,
                counts.not_regained,
            ),
            (
                "not_regained_referred_dbs",
                "of whom referred for DBS",
                3,
                counts.not_regained_referred_dbs,
                counts.not_regained,
            ),
            (
                "switched_to_bont_b",
                "switched to BoNT-B (regained or not)",
                2,
                counts.switched_to_bont_b,
                counts.n,
            ),
            (
                "referred_dbs",
                "referred for DBS (regained or not)",
                2,
                counts.referred_dbs,
                counts.n,
            ),
            (
                "assessed_for_resistance",
                "assessed for resistance",
                2,
                counts.assessed_for_resistance,
                counts.n,
            ),
            (
                "resistance_confirmed",
                "of whom resistance confirmed",
                3,
                counts.resistance_confirmed,
                counts.assessed_for_resistance,
            ),
        ];
        for (field, label, depth, numerator, denominator) in rows {
            measures.push(measure(
                &key(field),
                label,
                depth,
                numerator,
                Some(denominator),
            ));
        }
    }
    measures
}

/// One standard of a scope, as every format shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StandardRow {
    pub id: &'static str,
    pub description: String,
    pub numerator: u64,
    pub denominator: u64,
    pub target_pct: u64,
}

pub(crate) fn standard_rows(report: &AuditReport, scope: &ScopeReport) -> Vec<StandardRow> {
    let parameters = report.parameters();
    domain::audit::Standard::ALL
        .iter()
        .map(|standard| {
            let result = scope.standards.get(*standard);
            StandardRow {
                id: standard.id(),
                description: standard.description(&parameters),
                numerator: result.numerator,
                denominator: result.denominator,
                target_pct: result.target_pct,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_half_up_in_integers() {
        assert_eq!(proportion(6, 16), "6/16 (38%)"); // 37.5 rounds up
        assert_eq!(proportion(7, 16), "7/16 (44%)"); // 43.75
        assert_eq!(proportion(8, 22), "8/22 (36%)"); // 36.36
        assert_eq!(proportion(22, 31), "22/31 (71%)");
        assert_eq!(proportion(1, 8), "1/8 (13%)"); // 12.5 rounds up
        assert_eq!(proportion(1, 200), "1/200 (1%)"); // 0.5 rounds up
        assert_eq!(proportion(1, 201), "1/201 (0%)"); // 0.497 rounds down
        assert_eq!(proportion(0, 5), "0/5 (0%)");
        assert_eq!(proportion(5, 5), "5/5 (100%)");
        assert_eq!(
            proportion(u64::MAX, u64::MAX),
            format!("{0}/{0} (100%)", u64::MAX)
        );
    }

    #[test]
    fn no_denominator_is_not_a_percentage() {
        assert_eq!(proportion(0, 0), "0/0 (n/a)");
        assert_eq!(percent(0, 0), None);
    }

    #[test]
    fn formats_parse_from_their_names() {
        for format in Format::ALL {
            assert_eq!(format.as_str().parse::<Format>(), Ok(*format));
        }
        assert_eq!(
            "markdown".parse::<Format>(),
            Err(UnknownFormat("markdown".to_owned()))
        );
    }
}
