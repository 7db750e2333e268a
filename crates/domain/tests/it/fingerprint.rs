//! Property: admission's content fingerprint, built from the fields, tells
//! events apart exactly as the canonical line does (the fingerprint it
//! replaced was the hash of that line).

use domain::{
    admission::content_fingerprint,
    ndjson::{parse_line, to_line},
};
use proptest::prelude::*;

use crate::strategies::{event, strategy_today};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_fingerprint_is_equal_exactly_when_the_canonical_line_is(
        first in event(),
        second in event(),
        taken in 0..32u32,
    ) {
        // A copy of `first` with some of `second`'s parts: equal when none
        // is taken, otherwise usually different in just those parts.
        let mut mixed = first.clone();
        if taken & 1 != 0 { mixed.event_id = second.event_id.clone(); }
        if taken & 2 != 0 { mixed.centre = second.centre.clone(); }
        if taken & 4 != 0 { mixed.patient = second.patient.clone(); }
        if taken & 8 != 0 { mixed.occurred_on = second.occurred_on; }
        if taken & 16 != 0 { mixed.body = second.body.clone(); }
        prop_assert_eq!(
            content_fingerprint(&mixed) == content_fingerprint(&first),
            to_line(&mixed) == to_line(&first)
        );
        prop_assert_eq!(
            content_fingerprint(&second) == content_fingerprint(&first),
            to_line(&second) == to_line(&first)
        );
    }

    #[test]
    fn the_fingerprint_survives_the_interchange_file(event in event()) {
        let parsed = parse_line(&to_line(&event), strategy_today()).unwrap();
        prop_assert_eq!(content_fingerprint(&parsed), content_fingerprint(&event));
    }
}

/// Lines that differ in one body value, or only in where one string ends
/// and the next begins, or in an optional value being absent or zero.
#[test]
fn near_identical_events_have_different_fingerprints() {
    let envelope =
        r#""event_id":"e-1","centre":"leeds","patient":"L-1","occurred_on":"2020-01-01""#;
    let bodies = [
        r#""type":"patient_registered""#,
        r#""type":"patient_registered","birth_year":1970"#,
        r#""type":"patient_registered","onset_year":1970"#,
        r#""type":"patient_registered","birth_year":1970,"onset_year":1971"#,
        r#""type":"patient_registered","sex":"female""#,
        r#""type":"treatment_discontinued","reason":"ab""#,
        r#""type":"treatment_discontinued","reason":"abc""#,
        r#""type":"event_voided","target_event_id":"e-2","reason":"ab""#,
        r#""type":"event_voided","target_event_id":"e-2a","reason":"b""#,
        r#""type":"resistance_tested","method":"mhda","result":"positive""#,
        r#""type":"resistance_tested","method":"mhda","result":"positive","titre_mu_per_ml":0"#,
        r#""type":"resistance_tested","method":"mhda","result":"positive","titre_mu_per_ml":0.5"#,
        r#""type":"response_assessed","injection_event_id":"e-0","rating":"good""#,
        r#""type":"response_assessed","injection_event_id":"e-0","rating":"good","percent_improvement":5"#,
        r#""type":"response_assessed","injection_event_id":"e-0","rating":"good","benefit_weeks":5"#,
        r#""type":"response_assessed","injection_event_id":"e-0","rating":"good","twstrs_total":5"#,
        r#""type":"injection_administered","product":"onabotulinumtoxinA","total_units":100,"guidance":"emg","muscles":[{"muscle":"splenius_capitis","side":"left","units":100}]"#,
        r#""type":"injection_administered","product":"onabotulinumtoxinA","total_units":100,"guidance":"emg","muscles":[{"muscle":"splenius_capitis","side":"right","units":100}]"#,
        r#""type":"injection_administered","product":"onabotulinumtoxinA","total_units":100,"guidance":"emg","muscles":[{"muscle":"splenius_capitis","side":"left","units":50},{"muscle":"splenius_capitis","side":"right","units":50}]"#,
    ];
    let fingerprints: Vec<u128> = bodies
        .iter()
        .map(|body| {
            let line = format!("{{{envelope},{body}}}");
            let event = parse_line(&line, strategy_today())
                .unwrap_or_else(|refusal| panic!("{refusal} for {line}"));
            content_fingerprint(&event)
        })
        .collect();
    for (index, fingerprint) in fingerprints.iter().enumerate() {
        for (other, other_fingerprint) in fingerprints.iter().enumerate().skip(index + 1) {
            assert_ne!(
                fingerprint, other_fingerprint,
                "{} and {}",
                bodies[index], bodies[other]
            );
        }
    }
}

/// The fingerprint is persisted in admission snapshots: it must not change
/// between runs or builds without a new snapshot format.
#[test]
fn the_fingerprint_is_stable() {
    let line = r#"{"event_id":"e-1","centre":"leeds","patient":"L-1","occurred_on":"2020-01-01","type":"referral_made","target":"dbs"}"#;
    let event = parse_line(line, strategy_today()).unwrap();
    assert_eq!(content_fingerprint(&event), STABLE_REFERRAL_FINGERPRINT);
}

const STABLE_REFERRAL_FINGERPRINT: u128 = 75_527_980_611_639_267_218_508_710_199_676_728_079;
