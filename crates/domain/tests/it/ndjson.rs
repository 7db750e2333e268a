//! The interchange file codec: the contract's example lines read, the
//! canonical and export forms, and the content identity.

use domain::{
    EventBody, RecordedEvent,
    ndjson::{event_id_of_line, fingerprint, parse_line, recorded_to_line, to_line},
};

use crate::support::today;

const EXAMPLE: [&str; 3] = [
    r#"{"event_id":"e-0001","centre":"leeds","patient":"L-0001","occurred_on":"2017-01-09","type":"patient_registered","birth_year":1961,"sex":"female"}"#,
    r#"{"event_id":"e-0002","centre":"leeds","patient":"L-0001","occurred_on":"2017-02-01","type":"injection_administered","product":"onabotulinumtoxinA","total_units":200,"guidance":"emg","muscles":[{"muscle":"splenius_capitis","side":"left","units":80},{"muscle":"sternocleidomastoid","side":"right","units":60},{"muscle":"trapezius","side":"left","units":60}]}"#,
    r#"{"event_id":"e-0003","centre":"leeds","patient":"L-0001","occurred_on":"2017-03-10","type":"response_assessed","injection_event_id":"e-0002","rating":"good","percent_improvement":60,"benefit_weeks":11}"#,
];

#[test]
fn the_contracts_example_reads_and_is_already_canonical() {
    for line in EXAMPLE {
        let event = parse_line(line, today()).unwrap();
        assert_eq!(to_line(&event), line);
    }
    let injection = parse_line(EXAMPLE[1], today()).unwrap();
    let EventBody::InjectionAdministered(body) = &injection.body else {
        panic!("not an injection");
    };
    assert_eq!(body.total_units(), 200);
    assert_eq!(body.muscles().len(), 3);
}

#[test]
fn key_order_and_spacing_do_not_change_the_canonical_line_or_fingerprint() {
    let shuffled = r#" { "type" : "response_assessed", "benefit_weeks": 11,
        "rating":"good", "injection_event_id":"e-0002", "percent_improvement" :60,
        "occurred_on":"2017-03-10", "patient":"L-0001", "centre":"leeds", "event_id":"e-0003" } "#
        .replace('\n', " ");
    let event = parse_line(&shuffled, today()).unwrap();
    let canonical = parse_line(EXAMPLE[2], today()).unwrap();
    assert_eq!(event, canonical);
    assert_eq!(to_line(&event), EXAMPLE[2]);
    assert_eq!(fingerprint(&event), fingerprint(&canonical));
}

#[test]
fn other_content_has_another_fingerprint() {
    let event = parse_line(EXAMPLE[2], today()).unwrap();
    let other = parse_line(&EXAMPLE[2].replace("\"good\"", "\"none\""), today()).unwrap();
    assert_ne!(fingerprint(&event), fingerprint(&other));
}

#[test]
fn strings_with_escapes_read_and_write_back() {
    let line = r#"{"event_id":"e-9","centre":"leeds","patient":"L-0001","occurred_on":"2017-03-10","type":"treatment_discontinued","reason":"said \"no more\"\nleft \u00e9 \\ ok"}"#;
    let event = parse_line(line, today()).unwrap();
    let EventBody::TreatmentDiscontinued(body) = &event.body else {
        panic!("not a discontinuation");
    };
    assert_eq!(body.reason, "said \"no more\"\nleft é \\ ok");
    assert_eq!(parse_line(&to_line(&event), today()).unwrap(), event);
}

#[test]
fn the_export_form_adds_the_server_fields_first() {
    let event = parse_line(EXAMPLE[0], today()).unwrap();
    let recorded = RecordedEvent {
        position: 12,
        recorded_at_micros: 1_764_095_700_123_456,
        recorded_by: "leeds-clerk".into(),
        event,
    };
    let expected = format!(
        r#"{{"position":12,"recorded_at":"2025-11-25T18:35:00.123456Z","recorded_by":"leeds-clerk",{}"#,
        &EXAMPLE[0][1..]
    );
    assert_eq!(recorded_to_line(&recorded), expected);
}

#[test]
fn the_event_id_is_peeked_even_from_a_refused_line() {
    let line = r#"{"event_id":"e-7","centre":"ALL","unknown":null,"total_units":1.5}"#;
    assert!(parse_line(line, today()).is_err());
    assert_eq!(event_id_of_line(line).as_deref(), Some("e-7"));
    assert_eq!(event_id_of_line(r#"{"centre":"leeds"}"#), None);
    assert_eq!(event_id_of_line("{"), None);
}
