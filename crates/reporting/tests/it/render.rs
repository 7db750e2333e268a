//! Golden output of every renderer, and the rules every human format keeps:
//! proportions as `n/d (pct%)` rounded half up, `n/a` for no denominator,
//! the rule set and every parameter named.

use domain::audit::{RuleParameters, assess_patient};
use reporting::render::{Format, render, render_patient};

use crate::cohort::{founding_audit_report, small_cohort};

/// Snapshots live in the crate's `snapshots/` folder.
fn settings() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings
}

#[test]
fn every_format_of_the_small_cohort_matches_its_golden_file() {
    let report = small_cohort().cohort(RuleParameters::default()).report();
    settings().bind(|| {
        insta::assert_snapshot!("small_cohort.json", render(&report, Format::Json));
        insta::assert_snapshot!("small_cohort.table", render(&report, Format::Table));
        insta::assert_snapshot!("small_cohort.md", render(&report, Format::Markdown));
        insta::assert_snapshot!("small_cohort.csv", render(&report, Format::Csv));
        insta::assert_snapshot!("small_cohort.html", render(&report, Format::Html));
    });
}

#[test]
fn the_founding_audit_reads_as_published() {
    let report = founding_audit_report();
    let table = render(&report, Format::Table);
    settings().bind(|| insta::assert_snapshot!("founding_audit.table", &table));
    for shown in [
        "37/68 (54%)",
        "31/68 (46%)",
        "21/37 (57%)",
        "16/37 (43%)",
        "6/16 (38%)",
        "7/16 (44%)",
        "6/31 (19%)",
        "22/31 (71%)",
        "8/22 (36%)",
    ] {
        for format in [Format::Table, Format::Markdown, Format::Html] {
            assert!(
                render(&report, format).contains(shown),
                "{format} lacks {shown}"
            );
        }
    }
}

#[test]
fn a_standard_without_denominator_is_shown_as_not_applicable() {
    let report = founding_audit_report();
    for format in [Format::Table, Format::Markdown, Format::Html] {
        let text = render(&report, format);
        let bnn_3 = text.lines().find(|line| line.contains("BNN-3")).unwrap();
        assert!(bnn_3.contains("0/0 (n/a)"), "{format}: {bnn_3}");
        assert!(
            !bnn_3.contains("0%)") && !bnn_3.contains("100%)"),
            "{format}: {bnn_3}"
        );
    }
}

#[test]
fn human_formats_name_the_rule_set_and_every_parameter() {
    let mut parameters = RuleParameters::default();
    parameters.set("min_interval_days", "70").unwrap();
    let what_if = small_cohort().cohort(parameters).report();
    let default = small_cohort().cohort(RuleParameters::default()).report();
    for format in [Format::Table, Format::Markdown, Format::Html] {
        for report in [&what_if, &default] {
            let text = render(report, format);
            assert!(text.contains("bnn-2016/v1"), "{format}");
            for name in RuleParameters::NAMES {
                assert!(text.contains(name), "{format} lacks {name}");
            }
        }
        let text = render(&what_if, format);
        assert!(
            text.contains("min_interval_days = 70 (default 84)"),
            "{format}"
        );
        assert!(text.contains("what-if"), "{format}");
        assert!(
            text.contains("injections at least 70 days apart"),
            "{format}"
        );
    }
    let json: serde_json::Value = serde_json::from_str(&render(&what_if, Format::Json)).unwrap();
    assert_eq!(json["parameters"]["min_interval_days"], 70);
    settings().bind(|| insta::assert_snapshot!("what_if.table", render(&what_if, Format::Table)));
}

#[test]
fn csv_has_one_row_per_scope_and_measure() {
    let report = small_cohort().cohort(RuleParameters::default()).report();
    let csv = render(&report, Format::Csv);
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("scope,metric,numerator,denominator"));
    let rows: Vec<Vec<&str>> = lines.map(|line| line.split(',').collect()).collect();
    // 3 scopes × (patients, injections, snr, 2 groups × 10, 5 standards).
    assert_eq!(rows.len(), 3 * (3 + 20 + 5));
    assert!(rows.iter().all(|row| row.len() == 4));
    assert!(rows.contains(&vec!["all", "no_response.resistance_confirmed", "1", "2"]));
    assert!(rows.contains(&vec!["salford-royal", "BNN-2", "2", "3"]));
    assert!(rows.contains(&vec!["leeds", "patients", "3", ""]));
}

#[test]
fn html_is_one_self_contained_page() {
    let report = small_cohort().cohort(RuleParameters::default()).report();
    let html = render(&report, Format::Html);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<style>"));
    assert!(!html.contains("<script"));
    assert!(!html.contains("src=") && !html.contains("href="));
    // Text is escaped: the BoNT-B description's words reach the page intact
    // and no raw ampersand or angle bracket slips into the content.
    assert!(!html.contains("& "));
}

#[test]
fn json_is_the_report_itself() {
    let report = small_cohort().cohort(RuleParameters::default()).report();
    let back: domain::audit::AuditReport =
        serde_json::from_str(&render(&report, Format::Json)).unwrap();
    assert_eq!(back, report);
}

#[test]
fn the_patient_view_matches_its_golden_file() {
    let log = small_cohort();
    let cohort = log.cohort(RuleParameters::default());
    settings().bind(|| {
        for patient in [
            "leeds/L-001",
            "leeds/L-002",
            "leeds/L-003",
            "salford-royal/S-002",
        ] {
            let (centre, pseudonym) = patient.split_once('/').unwrap();
            let key = domain::ids::PatientKey::new(
                domain::ids::Centre::parse(centre).unwrap(),
                domain::ids::Pseudonym::parse(pseudonym).unwrap(),
            );
            let view = cohort.patient(&key).unwrap();
            let own: Vec<_> = log
                .events
                .iter()
                .filter(|event| event.event.patient_key() == key)
                .cloned()
                .collect();
            assert_eq!(
                assess_patient(&own, &RuleParameters::default()).as_ref(),
                Some(&view)
            );
            insta::assert_snapshot!(
                format!("patient_{}_{}", centre, pseudonym),
                render_patient(&view)
            );
        }
    });
}
