//! The harness's output: one [`Line`] per figure with the baseline measured
//! in the same run, their ratio, the target and whether it was met; printed
//! as a table and written as `target/bench/report.json`.

use std::fmt::Write as _;

use crate::measure::Machine;

/// Whether a bigger or a smaller figure is better, for the ratio's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// One measured figure next to its baseline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Line {
    /// Short stable identifier, e.g. `ingest_grpc_embedded`.
    pub id: String,
    /// What was measured, in words.
    pub name: String,
    pub unit: String,
    pub figure: f64,
    pub better: Better,
    /// What the figure is judged against, measured in this run.
    pub baseline_name: String,
    pub baseline: Option<f64>,
    /// figure / baseline.
    pub ratio: Option<f64>,
    /// The target in words (empty when the line has none).
    pub target: String,
    /// `None` when the line has no target.
    pub met: Option<bool>,
    /// Anything a reader needs to judge the figure.
    pub note: String,
}

impl Line {
    pub fn new(id: &str, name: &str, unit: &str, figure: f64, better: Better) -> Self {
        Self {
            id: id.to_owned(),
            name: name.to_owned(),
            unit: unit.to_owned(),
            figure,
            better,
            baseline_name: String::new(),
            baseline: None,
            ratio: None,
            target: String::new(),
            met: None,
            note: String::new(),
        }
    }

    pub fn baseline(mut self, name: &str, baseline: f64) -> Self {
        self.baseline_name = name.to_owned();
        self.baseline = Some(baseline);
        self.ratio = (baseline != 0.0).then(|| self.figure / baseline);
        self
    }

    pub fn target(mut self, target: &str, met: bool) -> Self {
        self.target = target.to_owned();
        self.met = Some(met);
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub started_at: String,
    pub commit: String,
    pub machine: Machine,
    /// The sizes this run used.
    pub settings: serde_json::Value,
    pub lines: Vec<Line>,
    pub seconds: f64,
}

fn format_number(value: f64, unit: &str) -> String {
    match unit {
        "events/s" => {
            if value >= 1e6 {
                format!("{:.2}M {unit}", value / 1e6)
            } else {
                format!("{:.1}k {unit}", value / 1e3)
            }
        }
        "MiB" | "ms" => format!("{value:.1} {unit}"),
        _ => format!("{value:.0} {unit}"),
    }
}

/// The report as a plain-text table, one line per figure, notes below.
pub fn table(lines: &[Line]) -> String {
    let rows: Vec<[String; 6]> = lines
        .iter()
        .map(|line| {
            [
                line.name.clone(),
                format_number(line.figure, &line.unit),
                line.baseline.map_or_else(
                    || "-".to_owned(),
                    |baseline| {
                        format!(
                            "{} ({})",
                            format_number(baseline, &line.unit),
                            line.baseline_name
                        )
                    },
                ),
                line.ratio
                    .map_or_else(|| "-".to_owned(), |ratio| format!("{ratio:.2}")),
                if line.target.is_empty() {
                    "-".to_owned()
                } else {
                    line.target.clone()
                },
                match line.met {
                    Some(true) => "met".to_owned(),
                    Some(false) => "MISSED".to_owned(),
                    None => "-".to_owned(),
                },
            ]
        })
        .collect();
    let header = [
        "figure",
        "value",
        "baseline (same run)",
        "ratio",
        "target",
        "",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut write_row = |cells: &[&str]| {
        for (index, (cell, width)) in cells.iter().zip(widths).enumerate() {
            let separator = if index == 0 { "" } else { " | " };
            // Writing to a String cannot fail.
            let _ = write!(text, "{separator}{cell:<width$}");
        }
        text.push('\n');
    };
    write_row(&header);
    let rule: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
    write_row(&rule.iter().map(String::as_str).collect::<Vec<_>>());
    for row in &rows {
        write_row(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    for line in lines.iter().filter(|line| !line.note.is_empty()) {
        let _ = writeln!(text, "  {}: {}", line.name, line.note);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_is_figure_over_baseline_and_the_table_says_missed() {
        let line = Line::new("x", "thing", "events/s", 50.0, Better::Higher)
            .baseline("raw", 200.0)
            .target(">= 100 events/s", false);
        assert_eq!(line.ratio, Some(0.25));
        let text = table(&[line]);
        assert!(text.contains("MISSED"));
        assert!(text.contains("0.25"));
    }
}
