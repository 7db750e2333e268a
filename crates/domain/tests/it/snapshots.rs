//! Snapshots of the projections: a projection restored from a snapshot
//! (taken at any point of a generated log, through a serde round trip) and
//! then given the rest of the log behaves exactly like a fold of the whole
//! log from scratch; a snapshot of other parameters or another format is
//! refused.

use domain::{
    RecordedEvent,
    admission::{Admission, AdmissionSnapshot, Verdict, WriterScope},
    audit::{Cohort, CohortSnapshot, RuleParameters},
    snapshot::SnapshotError,
};
use proptest::prelude::*;

use crate::audit_properties::{build, parameters, steps};

fn round_trip_cohort(cohort: &Cohort) -> CohortSnapshot {
    let text = serde_json::to_string(&cohort.snapshot()).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn round_trip_admission(admission: &Admission) -> AdmissionSnapshot {
    let text = serde_json::to_string(&admission.snapshot()).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn cohort_of(events: &[RecordedEvent], parameters: RuleParameters) -> Cohort {
    let mut cohort = Cohort::new(parameters);
    for event in events {
        cohort.apply(event);
    }
    cohort
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_cohort_restored_at_any_position_ends_like_a_fold_from_scratch(
        steps in steps(),
        parameters in prop_oneof![Just(RuleParameters::default()), parameters()],
    ) {
        let log = build(&steps);
        let mut whole = cohort_of(&log.events, parameters);
        let expected = whole.report();
        for split in 0..=log.events.len() {
            let mut before = cohort_of(&log.events[..split], parameters);
            if split % 2 == 0 {
                // Sometimes reported before the snapshot, sometimes not.
                before.report();
            }
            let mut restored =
                Cohort::from_snapshot(round_trip_cohort(&before), &parameters).unwrap();
            for event in &log.events[split..] {
                restored.apply(event);
            }
            prop_assert_eq!(restored.events_applied(), whole.events_applied());
            prop_assert_eq!(restored.report(), expected.clone());
            let keys: Vec<_> = restored.patient_keys().collect();
            prop_assert_eq!(&keys, &whole.patient_keys().collect::<Vec<_>>());
            for key in keys {
                prop_assert_eq!(restored.patient(&key), whole.patient(&key));
            }
        }
    }

    #[test]
    fn an_admission_restored_at_any_position_ends_like_a_fold_from_scratch(steps in steps()) {
        let log = build(&steps);
        let mut whole = Admission::new();
        for event in &log.events {
            whole.apply(&event.event);
        }
        let expected = serde_json::to_value(whole.snapshot()).unwrap();
        for split in 0..=log.events.len() {
            let mut before = Admission::new();
            for event in &log.events[..split] {
                before.apply(&event.event);
            }
            let mut restored = Admission::from_snapshot(round_trip_admission(&before)).unwrap();
            for event in &log.events[split..] {
                prop_assert!(
                    restored.check(&event.event, &WriterScope::AnyCentre).is_success(),
                    "a valid event was refused after the restore"
                );
                restored.apply(&event.event);
            }
            prop_assert_eq!(serde_json::to_value(restored.snapshot()).unwrap(), expected.clone());
            for event in &log.events {
                prop_assert_eq!(
                    restored.check(&event.event, &WriterScope::AnyCentre),
                    Verdict::Duplicate
                );
            }
        }
    }
}

#[test]
fn a_snapshot_of_other_parameters_is_refused() {
    let log = build(&[]);
    let mut cohort = cohort_of(&log.events, RuleParameters::default());
    cohort.report();
    let mut other = RuleParameters::default();
    other.set("min_interval_days", "70").unwrap();
    let refused = Cohort::from_snapshot(round_trip_cohort(&cohort), &other).unwrap_err();
    assert!(
        matches!(refused, SnapshotError::Parameters { .. }),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("min_interval_days=84"),
        "{refused}"
    );
}

#[test]
fn a_snapshot_of_another_format_or_rule_set_is_refused() {
    let cohort = Cohort::new(RuleParameters::default());
    let mut value = serde_json::to_value(cohort.snapshot()).unwrap();
    value["format"] = serde_json::json!(999);
    let snapshot: CohortSnapshot = serde_json::from_value(value.clone()).unwrap();
    let refused = Cohort::from_snapshot(snapshot, &RuleParameters::default()).unwrap_err();
    assert!(
        matches!(refused, SnapshotError::Format { found: 999, .. }),
        "{refused}"
    );

    value["format"] = serde_json::json!(domain::audit::COHORT_SNAPSHOT_FORMAT);
    value["rule_set"] = serde_json::json!("bnn-2016/v0");
    let snapshot: CohortSnapshot = serde_json::from_value(value).unwrap();
    let refused = Cohort::from_snapshot(snapshot, &RuleParameters::default()).unwrap_err();
    assert!(
        matches!(refused, SnapshotError::RuleSet { .. }),
        "{refused}"
    );

    let admission = Admission::new();
    let mut value = serde_json::to_value(admission.snapshot()).unwrap();
    value["format"] = serde_json::json!(0);
    let snapshot: AdmissionSnapshot = serde_json::from_value(value).unwrap();
    let refused = Admission::from_snapshot(snapshot).unwrap_err();
    assert!(
        matches!(refused, SnapshotError::Format { found: 0, .. }),
        "{refused}"
    );
}

#[test]
fn an_admission_snapshot_with_a_dangling_index_is_refused() {
    let mut admission = Admission::new();
    for event in &build_one_patient().events {
        admission.apply(&event.event);
    }
    let mut value = serde_json::to_value(admission.snapshot()).unwrap();
    value["events"][0]["patient"] = serde_json::json!(42);
    let snapshot: AdmissionSnapshot = serde_json::from_value(value).unwrap();
    let refused = Admission::from_snapshot(snapshot).unwrap_err();
    assert!(
        matches!(refused, SnapshotError::Inconsistent(_)),
        "{refused}"
    );
}

fn build_one_patient() -> crate::audit_builder::Log {
    let mut log = crate::audit_builder::Log::new();
    log.register("leeds/L-1");
    log
}
