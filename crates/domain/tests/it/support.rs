//! Small helpers shared by the validation, NDJSON and admission tests: a
//! fixed "today", valid lines of every event type to start from, and
//! assertions about refusals that name a field and a recognisable reason.

use domain::{ClinicalDate, Event, FieldError, ndjson};
use serde_json::{Value, json};

/// The "today" every test passes in: the domain never reads a clock.
pub fn today() -> ClinicalDate {
    ClinicalDate::from_ymd(2026, 11, 25).unwrap()
}

/// A valid line of `event_type` as a JSON value, for tests to alter.
pub fn valid(event_type: &str) -> Value {
    let mut line = json!({
        "event_id": "e-0001",
        "centre": "leeds",
        "patient": "L-0001",
        "occurred_on": "2017-02-01",
        "type": event_type,
    });
    let body = match event_type {
        "patient_registered" => json!({"birth_year": 1961, "sex": "female", "onset_year": 1990}),
        "injection_administered" => json!({
            "product": "onabotulinumtoxinA",
            "total_units": 200,
            "guidance": "emg",
            "muscles": [
                {"muscle": "splenius_capitis", "side": "left", "units": 80},
                {"muscle": "sternocleidomastoid", "side": "right", "units": 60},
                {"muscle": "trapezius", "side": "left", "units": 60}
            ]
        }),
        "response_assessed" => json!({
            "injection_event_id": "e-0002",
            "rating": "good",
            "percent_improvement": 60,
            "benefit_weeks": 11,
            "twstrs_total": 20
        }),
        "resistance_tested" => {
            json!({"method": "frontalis", "result": "negative", "titre_mu_per_ml": 0.5})
        }
        "referral_made" => json!({"target": "dbs"}),
        "treatment_discontinued" => json!({"reason": "moved away"}),
        "event_voided" => json!({"target_event_id": "e-0002", "reason": "wrong patient"}),
        other => panic!("no valid example of {other}"),
    };
    for (key, value) in body.as_object().unwrap() {
        line[key] = value.clone();
    }
    line
}

/// `line` with `key` set to `value` (a JSON pointer-free, top-level edit).
pub fn with(mut line: Value, key: &str, value: Value) -> Value {
    line[key] = value;
    line
}

/// `line` without `key`.
pub fn without(mut line: Value, key: &str) -> Value {
    line.as_object_mut().unwrap().remove(key);
    line
}

pub fn parse(line: &Value) -> Result<Event, domain::Refusal> {
    ndjson::parse_line(&line.to_string(), today())
}

/// Every reason a line (given as text) is refused; fails when it is accepted.
pub fn reasons_of_text(line: &str) -> Vec<FieldError> {
    match ndjson::parse_line(line, today()) {
        Ok(event) => panic!("expected a refusal, got {event:?} for {line}"),
        Err(refusal) => {
            assert!(!refusal.reasons.is_empty(), "a refusal is never empty");
            refusal.reasons
        }
    }
}

pub fn reasons(line: &Value) -> Vec<FieldError> {
    reasons_of_text(&line.to_string())
}

/// Asserts some reason names `field` and contains `reason_part`.
pub fn assert_reason(reasons: &[FieldError], field: &str, reason_part: &str) {
    assert!(
        reasons
            .iter()
            .any(|reason| reason.field == field && reason.reason.contains(reason_part)),
        "no reason on {field} containing {reason_part:?} in {reasons:#?}"
    );
}

/// Asserts the line is refused with a reason naming `field` that contains
/// `reason_part`.
pub fn assert_refused(line: &Value, field: &str, reason_part: &str) {
    assert_reason(&reasons(line), field, reason_part);
}

pub fn assert_accepted(line: &Value) {
    if let Err(refusal) = parse(line) {
        panic!("expected {line} to be accepted, got {refusal}");
    }
}
