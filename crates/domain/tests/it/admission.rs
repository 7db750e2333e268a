//! Admission against the log state (`spec/events.md`, "Bad input"): given
//! stored events, when a new one is checked, then the verdict.

use domain::{
    Centre, Event,
    admission::{Admission, Verdict, WriterScope},
    ndjson::parse_line,
};
use serde_json::{Value, json};

use crate::support::{assert_reason, today, valid, with};

/// An event of `event_type` for (leeds, `patient`), with `fields` set over
/// the valid example.
fn event(
    event_id: &str,
    patient: &str,
    occurred_on: &str,
    event_type: &str,
    fields: Value,
) -> Event {
    let mut line = valid(event_type);
    line["event_id"] = json!(event_id);
    line["patient"] = json!(patient);
    line["occurred_on"] = json!(occurred_on);
    for (key, value) in fields.as_object().unwrap() {
        line[key] = value.clone();
    }
    parse_line(&line.to_string(), today()).unwrap()
}

fn registration(event_id: &str, patient: &str) -> Event {
    event(
        event_id,
        patient,
        "2015-01-01",
        "patient_registered",
        json!({}),
    )
}

fn injection(event_id: &str, patient: &str, occurred_on: &str) -> Event {
    event(
        event_id,
        patient,
        occurred_on,
        "injection_administered",
        json!({}),
    )
}

fn response(event_id: &str, patient: &str, occurred_on: &str, injection: &str) -> Event {
    event(
        event_id,
        patient,
        occurred_on,
        "response_assessed",
        json!({"injection_event_id": injection}),
    )
}

fn void(event_id: &str, patient: &str, target: &str) -> Event {
    event(
        event_id,
        patient,
        "2020-01-01",
        "event_voided",
        json!({"target_event_id": target}),
    )
}

fn given(events: &[Event]) -> Admission {
    let mut admission = Admission::new();
    for event in events {
        admission.apply(event);
    }
    admission
}

fn any() -> WriterScope {
    WriterScope::AnyCentre
}

fn refused(verdict: Verdict) -> Vec<domain::FieldError> {
    match verdict {
        Verdict::Refused(refusal) => refusal.reasons,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn warnings(verdict: Verdict) -> Vec<domain::FieldError> {
    match verdict {
        Verdict::Accepted { warnings } => warnings,
        other => panic!("expected acceptance, got {other:?}"),
    }
}

#[test]
fn the_same_event_again_is_a_duplicate() {
    let stored = registration("r-1", "L-1");
    let admission = given(std::slice::from_ref(&stored));
    assert_eq!(admission.check(&stored, &any()), Verdict::Duplicate);
    // Equal as parsed JSON: the same content written in another key order.
    let line = r#"{"type":"patient_registered","onset_year":1990,"sex":"female","birth_year":1961,"occurred_on":"2015-01-01","patient":"L-1","centre":"leeds","event_id":"r-1"}"#;
    let outcome = admission.check_line(line, today(), &any());
    assert_eq!(outcome.verdict, Verdict::Duplicate);
}

#[test]
fn the_duplicate_check_comes_before_every_other() {
    // A writer of another centre resending a stored event gets a duplicate,
    // not a refusal for its centre.
    let stored = registration("r-1", "L-1");
    let admission = given(std::slice::from_ref(&stored));
    let york = WriterScope::Centre(Centre::parse("york").unwrap());
    assert_eq!(admission.check(&stored, &york), Verdict::Duplicate);
}

#[test]
fn the_same_event_id_with_other_content_is_a_conflict() {
    let admission = given(&[registration("r-1", "L-1")]);
    let other = event("r-1", "L-1", "2015-01-02", "patient_registered", json!({}));
    let Verdict::Conflict(reason) = admission.check(&other, &any()) else {
        panic!("expected a conflict");
    };
    assert_eq!(reason.field, "event_id");
    assert!(reason.reason.contains("already stored with other content"));
}

#[test]
fn a_refused_line_with_a_stored_event_id_is_a_conflict() {
    let admission = given(&[registration("r-1", "L-1")]);
    let line = with(valid("patient_registered"), "event_id", json!("r-1"));
    let line = with(line, "sex", json!("F"));
    let outcome = admission.check_line(&line.to_string(), today(), &any());
    assert!(outcome.event.is_none());
    assert!(
        matches!(outcome.verdict, Verdict::Conflict(_)),
        "{outcome:?}"
    );
    // A refused line with a new id stays refused.
    let line = with(line, "event_id", json!("r-2"));
    let outcome = admission.check_line(&line.to_string(), today(), &any());
    assert_reason(&refused(outcome.verdict), "sex", "is not one of");
}

#[test]
fn event_ids_are_case_sensitive() {
    let admission = given(&[registration("r-1", "L-1")]);
    let verdict = admission.check(&registration("R-1", "L-2"), &any());
    assert_eq!(warnings(verdict), []);
}

#[test]
fn a_writer_may_only_write_its_own_centre() {
    let admission = given(&[]);
    let york = WriterScope::Centre(Centre::parse("york").unwrap());
    assert_reason(
        &refused(admission.check(&registration("r-1", "L-1"), &york)),
        "centre",
        "own centre",
    );
    let leeds = WriterScope::Centre(Centre::parse("leeds").unwrap());
    assert!(
        admission
            .check(&registration("r-1", "L-1"), &leeds)
            .is_success()
    );
}

#[test]
fn every_event_needs_a_registered_patient() {
    let admission = given(&[registration("r-1", "L-1")]);
    let verdict = admission.check(&injection("i-1", "L-2", "2020-01-01"), &any());
    assert_reason(&refused(verdict), "patient", "not registered");
    assert!(
        admission
            .check(&injection("i-1", "L-1", "2020-01-01"), &any())
            .is_success()
    );
}

#[test]
fn the_same_pseudonym_in_another_centre_is_another_patient() {
    let admission = given(&[registration("r-1", "L-1")]);
    let mut elsewhere = injection("i-1", "L-1", "2020-01-01");
    elsewhere.centre = Centre::parse("york").unwrap();
    assert_reason(
        &refused(admission.check(&elsewhere, &any())),
        "patient",
        "not registered",
    );
}

#[test]
fn a_second_registration_is_refused() {
    let admission = given(&[registration("r-1", "L-1")]);
    let verdict = admission.check(&registration("r-2", "L-1"), &any());
    assert_reason(&refused(verdict), "patient", "already registered");
}

#[test]
fn a_response_needs_an_injection_in_the_log() {
    let admission = given(&[registration("r-1", "L-1")]);
    let verdict = admission.check(&response("a-1", "L-1", "2020-02-01", "i-9"), &any());
    assert_reason(&refused(verdict), "injection_event_id", "no event i-9");
}

#[test]
fn a_response_must_name_an_injection() {
    let admission = given(&[registration("r-1", "L-1")]);
    let verdict = admission.check(&response("a-1", "L-1", "2020-02-01", "r-1"), &any());
    assert_reason(
        &refused(verdict),
        "injection_event_id",
        "not an injection_administered",
    );
}

#[test]
fn a_response_to_another_patients_injection_is_refused() {
    let admission = given(&[
        registration("r-1", "L-1"),
        registration("r-2", "L-2"),
        injection("i-1", "L-1", "2020-01-01"),
    ]);
    let verdict = admission.check(&response("a-1", "L-2", "2020-02-01", "i-1"), &any());
    assert_reason(&refused(verdict), "injection_event_id", "another patient");
}

#[test]
fn a_response_to_a_voided_injection_is_refused() {
    let admission = given(&[
        registration("r-1", "L-1"),
        injection("i-1", "L-1", "2020-01-01"),
        void("v-1", "L-1", "i-1"),
    ]);
    let verdict = admission.check(&response("a-1", "L-1", "2020-02-01", "i-1"), &any());
    assert_reason(&refused(verdict), "injection_event_id", "voided");
}

#[test]
fn a_response_is_not_before_its_injection() {
    let admission = given(&[
        registration("r-1", "L-1"),
        injection("i-1", "L-1", "2020-01-01"),
    ]);
    let verdict = admission.check(&response("a-1", "L-1", "2019-12-31", "i-1"), &any());
    assert_reason(
        &refused(verdict),
        "occurred_on",
        "before the date of the assessed injection",
    );
    // The same day is fine.
    let verdict = admission.check(&response("a-1", "L-1", "2020-01-01", "i-1"), &any());
    assert_eq!(warnings(verdict), []);
}

#[test]
fn a_void_needs_its_target_in_the_log() {
    let admission = given(&[registration("r-1", "L-1")]);
    let verdict = admission.check(&void("v-1", "L-1", "i-9"), &any());
    assert_reason(&refused(verdict), "target_event_id", "no event i-9");
}

#[test]
fn a_void_targets_the_same_patient() {
    let admission = given(&[
        registration("r-1", "L-1"),
        registration("r-2", "L-2"),
        injection("i-1", "L-1", "2020-01-01"),
    ]);
    let verdict = admission.check(&void("v-1", "L-2", "i-1"), &any());
    assert_reason(&refused(verdict), "target_event_id", "another patient");
}

#[test]
fn a_registration_cannot_be_voided() {
    let admission = given(&[registration("r-1", "L-1")]);
    let verdict = admission.check(&void("v-1", "L-1", "r-1"), &any());
    assert_reason(&refused(verdict), "target_event_id", "patient_registered");
}

#[test]
fn a_void_cannot_be_voided() {
    let admission = given(&[
        registration("r-1", "L-1"),
        injection("i-1", "L-1", "2020-01-01"),
        void("v-1", "L-1", "i-1"),
    ]);
    let verdict = admission.check(&void("v-2", "L-1", "v-1"), &any());
    assert_reason(&refused(verdict), "target_event_id", "event_voided");
}

#[test]
fn an_event_is_voided_once() {
    let admission = given(&[
        registration("r-1", "L-1"),
        injection("i-1", "L-1", "2020-01-01"),
        void("v-1", "L-1", "i-1"),
    ]);
    let verdict = admission.check(&void("v-2", "L-1", "i-1"), &any());
    assert_reason(&refused(verdict), "target_event_id", "already voided");
}

#[test]
fn every_reason_against_the_log_is_given_at_once() {
    let admission = given(&[]);
    let york = WriterScope::Centre(Centre::parse("york").unwrap());
    let reasons = refused(admission.check(&response("a-1", "L-1", "2020-02-01", "i-9"), &york));
    assert_reason(&reasons, "centre", "own centre");
    assert_reason(&reasons, "patient", "not registered");
    assert_reason(&reasons, "injection_event_id", "no event i-9");
}

#[test]
fn a_dose_above_the_label_maximum_is_accepted_with_a_warning() {
    let admission = given(&[registration("r-1", "L-1")]);
    let above = event(
        "i-1",
        "L-1",
        "2020-01-01",
        "injection_administered",
        json!({"total_units": 400, "muscles": [{"muscle": "trapezius", "side": "left", "units": 400}]}),
    );
    assert_reason(
        &warnings(admission.check(&above, &any())),
        "total_units",
        "label maximum of 300",
    );
    let at_label = event(
        "i-1",
        "L-1",
        "2020-01-01",
        "injection_administered",
        json!({"total_units": 300, "muscles": [{"muscle": "trapezius", "side": "left", "units": 300}]}),
    );
    assert_eq!(warnings(admission.check(&at_label, &any())), []);
}

#[test]
fn an_injection_less_than_84_days_after_the_previous_is_accepted_with_a_warning() {
    let admission = given(&[
        registration("r-1", "L-1"),
        injection("i-1", "L-1", "2020-01-01"),
    ]);
    // 2020-03-24 is 83 days after 2020-01-01; 2020-03-25 is 84.
    let early = admission.check(&injection("i-2", "L-1", "2020-03-24"), &any());
    assert_reason(
        &warnings(early),
        "occurred_on",
        "only 83 days after the patient's previous injection i-1",
    );
    let on_time = admission.check(&injection("i-2", "L-1", "2020-03-25"), &any());
    assert_eq!(warnings(on_time), []);
}

#[test]
fn the_interval_is_to_the_previous_live_injection_in_clinical_order() {
    // i-2 is backdated: appended after i-3 but earlier in the clinic.
    let admission = given(&[
        registration("r-1", "L-1"),
        injection("i-1", "L-1", "2020-01-01"),
        injection("i-3", "L-1", "2020-12-01"),
        injection("i-2", "L-1", "2020-06-01"),
    ]);
    // Previous in clinical order to 2020-07-01 is i-2 (30 days), not i-3.
    let verdict = admission.check(&injection("i-4", "L-1", "2020-07-01"), &any());
    assert_reason(&warnings(verdict), "occurred_on", "previous injection i-2");

    // Voided injections do not count.
    let mut admission = admission;
    admission.apply(&void("v-1", "L-1", "i-2"));
    let verdict = admission.check(&injection("i-4", "L-1", "2020-07-01"), &any());
    assert_eq!(warnings(verdict), []);
}

#[test]
fn a_file_is_checked_as_if_each_accepted_line_were_appended() {
    let registration_line = with(valid("patient_registered"), "event_id", json!("r-1"));
    let injection_line = with(valid("injection_administered"), "event_id", json!("i-1"));
    let response_line = with(
        valid("response_assessed"),
        "injection_event_id",
        json!("i-1"),
    );
    let response_line = with(response_line, "event_id", json!("a-1"));
    let response_line = with(response_line, "occurred_on", json!("2017-03-01"));
    // The response refers to a line that comes later: refused.
    let mut admission = Admission::new();
    let outcome = admission.check_line_and_apply(&response_line.to_string(), today(), &any());
    assert!(matches!(outcome.verdict, Verdict::Refused(_)));
    for line in [&registration_line, &injection_line, &response_line] {
        let outcome = admission.check_line_and_apply(&line.to_string(), today(), &any());
        assert!(outcome.verdict.is_success(), "{outcome:?}");
    }
    assert_eq!(admission.event_count(), 3);
    // Sending the file again appends nothing.
    for line in [&registration_line, &injection_line, &response_line] {
        let outcome = admission.check_line_and_apply(&line.to_string(), today(), &any());
        assert_eq!(outcome.verdict, Verdict::Duplicate);
    }
    assert_eq!(admission.event_count(), 3);
}
