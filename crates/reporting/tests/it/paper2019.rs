//! Golden output of every format for the `paper2019` demo cohort: the
//! founding audit reproduced amid import noise (duplicates, voids,
//! backdated cycles, re-assessments), imported exactly as `toxaudit import`
//! chains parsing and admission, then folded into the audit.

use domain::{
    ClinicalDate, RecordedEvent,
    admission::{Admission, Verdict, WriterScope},
    audit::{AuditReport, Cohort, RuleParameters},
    ndjson,
};
use reporting::render::{Format, render, render_patient};

/// The seed of the golden files.
const SEED: u64 = 2019;

/// Every accepted line as a recorded event, positions in file order;
/// duplicates append nothing.
fn imported(seed: u64) -> Vec<RecordedEvent> {
    let today = ClinicalDate::from_ymd(2026, 1, 1).unwrap();
    let mut admission = Admission::new();
    let mut events = Vec::new();
    for (index, line) in demodata::paper2019_lines(seed).iter().enumerate() {
        let event = ndjson::parse_line(line, today).unwrap();
        match admission.check_and_apply(&event, &WriterScope::AnyCentre) {
            Verdict::Accepted { .. } => events.push(RecordedEvent {
                position: events.len() as u64 + 1,
                recorded_at_micros: 0,
                recorded_by: "golden".into(),
                event,
            }),
            Verdict::Duplicate => {}
            other => panic!("line {} was not accepted: {other:?}", index + 1),
        }
    }
    events
}

fn cohort(events: &[RecordedEvent]) -> Cohort {
    let mut cohort = Cohort::new(RuleParameters::default());
    for event in events {
        cohort.apply(event);
    }
    cohort
}

fn report(events: &[RecordedEvent]) -> AuditReport {
    cohort(events).report()
}

#[test]
fn the_paper2019_cohort_reads_as_the_founding_audit_in_every_format() {
    let report = report(&imported(SEED));
    let all = report.scopes["all"];
    assert_eq!(all.snr.n, 68);
    let table = render(&report, Format::Table);
    for shown in [
        "37/68 (54%)",
        "21/37 (57%)",
        "6/16 (38%)",
        "7/16 (44%)",
        "31/68 (46%)",
        "6/31 (19%)",
        "22/31 (71%)",
        "8/22 (36%)",
    ] {
        assert!(table.contains(shown), "table lacks {shown}");
    }
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| {
        for format in Format::ALL {
            insta::assert_snapshot!(format!("paper2019.{format}"), render(&report, *format));
        }
    });
}

#[test]
fn a_paper2019_patient_view_is_stable() {
    let events = imported(SEED);
    let cohort = cohort(&events);
    // The first SNR patient who failed a standard: a view with reasons.
    let view = cohort
        .patient_keys()
        .filter_map(|key| cohort.patient(&key))
        .find(|view| view.snr.is_some() && view.standards_failed().count() > 0)
        .unwrap();
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!("paper2019.patient", render_patient(&view)));
}
