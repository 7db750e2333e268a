//! One test per validation rule of `spec/events.md`: each given a line that
//! breaks exactly one rule, then the refusal names the field and says why.

use domain::{
    ClinicalDate, Product,
    raw::{RawEvent, RawField, validate},
};
use serde_json::json;

use crate::support::*;

const EVERY_TYPE: [&str; 7] = [
    "patient_registered",
    "injection_administered",
    "response_assessed",
    "resistance_tested",
    "referral_made",
    "treatment_discontinued",
    "event_voided",
];

#[test]
fn a_valid_line_of_every_type_is_accepted() {
    for event_type in EVERY_TYPE {
        assert_accepted(&valid(event_type));
    }
}

// Envelope

#[test]
fn every_envelope_field_is_required() {
    for field in ["event_id", "centre", "patient", "occurred_on", "type"] {
        assert_refused(
            &without(valid("referral_made"), field),
            field,
            "is required",
        );
    }
}

#[test]
fn event_id_is_1_to_64_characters() {
    let line = valid("referral_made");
    assert_refused(
        &with(line.clone(), "event_id", json!("")),
        "event_id",
        "1 to 64",
    );
    assert_refused(
        &with(line.clone(), "event_id", json!("e".repeat(65))),
        "event_id",
        "1 to 64",
    );
    assert_accepted(&with(line, "event_id", json!("e".repeat(64))));
}

#[test]
fn event_id_allows_only_letters_digits_and_dot_underscore_colon_hyphen() {
    let line = valid("referral_made");
    for bad in ["e 1", "e/1", "é-1", "e#1"] {
        assert_refused(
            &with(line.clone(), "event_id", json!(bad)),
            "event_id",
            "may only contain",
        );
    }
    assert_accepted(&with(line, "event_id", json!("urn:uuid:A.b_c-9")));
}

#[test]
fn centre_is_2_to_32_characters() {
    let line = valid("referral_made");
    assert_refused(
        &with(line.clone(), "centre", json!("l")),
        "centre",
        "2 to 32",
    );
    assert_refused(
        &with(line.clone(), "centre", json!("l".repeat(33))),
        "centre",
        "2 to 32",
    );
    assert_accepted(&with(line, "centre", json!("l".repeat(32))));
}

#[test]
fn centre_allows_only_lowercase_letters_digits_and_hyphen() {
    let line = valid("referral_made");
    for bad in ["Leeds", "salford_royal", "leeds royal"] {
        assert_refused(
            &with(line.clone(), "centre", json!(bad)),
            "centre",
            "may only contain",
        );
    }
    assert_accepted(&with(line, "centre", json!("salford-royal-2")));
}

#[test]
fn centre_all_is_reserved() {
    assert_refused(
        &with(valid("referral_made"), "centre", json!("all")),
        "centre",
        "reserved",
    );
}

#[test]
fn patient_is_1_to_64_characters_of_letters_digits_dot_underscore_hyphen() {
    let line = valid("referral_made");
    assert_refused(
        &with(line.clone(), "patient", json!("")),
        "patient",
        "1 to 64",
    );
    assert_refused(
        &with(line.clone(), "patient", json!("p".repeat(65))),
        "patient",
        "1 to 64",
    );
    assert_refused(
        &with(line.clone(), "patient", json!("L:0001")),
        "patient",
        "may only contain",
    );
    assert_accepted(&with(line, "patient", json!("L.0001_a-B")));
}

#[test]
fn patient_that_looks_like_an_nhs_number_is_refused() {
    let line = valid("referral_made");
    for nhs_number in ["9434765919", "943-476-5919", "943.476.5919"] {
        assert_refused(
            &with(line.clone(), "patient", json!(nhs_number)),
            "patient",
            "NHS number",
        );
    }
    // Ten digits failing the modulus-11 check are not an NHS number.
    assert_accepted(&with(line, "patient", json!("9434765918")));
}

#[test]
fn occurred_on_is_a_yyyy_mm_dd_date() {
    let line = valid("referral_made");
    for bad in [
        "2017-2-01",
        "01/02/2017",
        "2017-02-30",
        "20170201",
        "2017-02-01T00:00:00Z",
    ] {
        assert_refused(
            &with(line.clone(), "occurred_on", json!(bad)),
            "occurred_on",
            "YYYY-MM-DD",
        );
    }
}

#[test]
fn occurred_on_is_not_before_1989() {
    let line = valid("referral_made");
    assert_refused(
        &with(line.clone(), "occurred_on", json!("1988-12-31")),
        "occurred_on",
        "outside the allowed range",
    );
    assert_accepted(&with(line, "occurred_on", json!("1989-01-01")));
}

#[test]
fn occurred_on_is_at_most_tomorrow() {
    let line = valid("referral_made");
    assert_accepted(&with(line.clone(), "occurred_on", json!("2026-11-26")));
    assert_refused(
        &with(line, "occurred_on", json!("2026-11-27")),
        "occurred_on",
        "outside the allowed range",
    );
}

#[test]
fn type_must_be_a_known_event_type() {
    assert_refused(
        &with(valid("referral_made"), "type", json!("patient_died")),
        "type",
        "is not one of",
    );
}

// Shape of the line

#[test]
fn a_line_that_is_not_json_is_refused_on_the_line() {
    assert_reason(
        &reasons_of_text(r#"{"event_id":"e-1","#),
        "line",
        "not valid JSON",
    );
    assert_reason(&reasons_of_text("{} trailing"), "line", "not valid JSON");
}

#[test]
fn a_line_must_be_one_object() {
    assert_reason(&reasons_of_text("[1,2]"), "line", "one JSON object");
    assert_reason(&reasons_of_text(r#""event""#), "line", "one JSON object");
}

#[test]
fn unknown_fields_are_refused() {
    assert_refused(
        &with(valid("referral_made"), "targte", json!("dbs")),
        "targte",
        "unknown field",
    );
}

#[test]
fn unknown_fields_inside_muscles_are_refused() {
    let mut line = valid("injection_administered");
    line["muscles"][1]["unit"] = json!(5);
    assert_refused(&line, "muscles[1].unit", "unknown field");
}

#[test]
fn a_field_of_another_event_type_is_an_unknown_field() {
    let line = with(valid("referral_made"), "rating", json!("good"));
    assert_refused(&line, "rating", "not a field of a referral_made event");
    let line = with(valid("event_voided"), "method", json!("frontalis"));
    assert_refused(&line, "method", "unknown field");
}

#[test]
fn null_values_are_refused() {
    let line = with(valid("patient_registered"), "sex", json!(null));
    assert_refused(&line, "sex", "null is not allowed");
    let mut line = valid("injection_administered");
    line["muscles"][0]["side"] = json!(null);
    assert_refused(&line, "muscles[0].side", "null is not allowed");
}

#[test]
fn duplicate_keys_are_refused() {
    let line = r#"{"event_id":"e-1","centre":"leeds","patient":"L-1","occurred_on":"2017-02-01","type":"referral_made","target":"dbs","target":"other"}"#;
    assert_reason(&reasons_of_text(line), "target", "duplicate key");
    let line = r#"{"event_id":"e-1","centre":"leeds","patient":"L-1","occurred_on":"2017-02-01","type":"injection_administered","product":"onabotulinumtoxinA","total_units":10,"guidance":"emg","muscles":[{"muscle":"trapezius","side":"left","units":10,"units":10}]}"#;
    assert_reason(&reasons_of_text(line), "muscles[0].units", "duplicate key");
}

#[test]
fn server_fields_are_refused() {
    for (field, value) in [
        ("position", json!(1)),
        ("recorded_at", json!("2026-11-25T10:00:00Z")),
        ("recorded_by", json!("admin")),
    ] {
        assert_refused(&with(valid("referral_made"), field, value), field, "server");
    }
}

#[test]
fn integers_must_be_integer_literals() {
    let line = r#"{"event_id":"e-1","centre":"leeds","patient":"L-1","occurred_on":"2017-02-01","type":"injection_administered","product":"onabotulinumtoxinA","total_units":200.0,"guidance":"emg","muscles":[{"muscle":"trapezius","side":"left","units":2e2}]}"#;
    let found = reasons_of_text(line);
    assert_reason(&found, "total_units", "integer literal");
    assert_reason(&found, "muscles[0].units", "integer literal");
    assert_refused(
        &with(valid("patient_registered"), "birth_year", json!("1961")),
        "birth_year",
        "must be an integer, not a string",
    );
}

#[test]
fn wrong_json_types_are_refused() {
    assert_refused(
        &with(valid("referral_made"), "centre", json!(7)),
        "centre",
        "must be a string",
    );
    assert_refused(
        &with(
            valid("injection_administered"),
            "muscles",
            json!({"muscle": "trapezius"}),
        ),
        "muscles",
        "must be an array",
    );
    let mut line = valid("injection_administered");
    line["muscles"][0] = json!("trapezius");
    assert_refused(
        &line,
        "muscles[0]",
        "must be a {muscle, side, units} object",
    );
    assert_refused(
        &with(valid("resistance_tested"), "titre_mu_per_ml", json!("0.5")),
        "titre_mu_per_ml",
        "must be a number",
    );
}

#[test]
fn integers_beyond_any_range_are_refused() {
    assert_refused(
        &with(valid("patient_registered"), "birth_year", json!(u64::MAX)),
        "birth_year",
        "too large",
    );
}

#[test]
fn every_reason_is_given_at_once() {
    let mut line = valid("injection_administered");
    line["centre"] = json!("all");
    line["occurred_on"] = json!("1970-01-01");
    line["guidance"] = json!("x-ray");
    line["muscles"][2]["side"] = json!("middle");
    line["extra"] = json!(1);
    let found = reasons(&line);
    assert_reason(&found, "centre", "reserved");
    assert_reason(&found, "occurred_on", "outside");
    assert_reason(&found, "guidance", "is not one of");
    assert_reason(&found, "muscles[2].side", "is not one of");
    assert_reason(&found, "extra", "unknown field");
    assert_eq!(found.len(), 5, "{found:#?}");
}

// patient_registered

#[test]
fn registration_fields_are_optional() {
    let line = valid("patient_registered");
    let line = without(without(without(line, "birth_year"), "sex"), "onset_year");
    assert_accepted(&line);
}

#[test]
fn birth_year_is_1900_to_the_current_year() {
    let line = valid("patient_registered");
    let line = without(line, "onset_year");
    assert_refused(
        &with(line.clone(), "birth_year", json!(1899)),
        "birth_year",
        "1900 to 2026",
    );
    assert_refused(
        &with(line.clone(), "birth_year", json!(2027)),
        "birth_year",
        "1900 to 2026",
    );
    assert_accepted(&with(line.clone(), "birth_year", json!(1900)));
    assert_accepted(&with(line, "birth_year", json!(2026)));
}

#[test]
fn onset_year_is_1900_to_the_current_year() {
    let line = without(valid("patient_registered"), "birth_year");
    assert_refused(
        &with(line.clone(), "onset_year", json!(1899)),
        "onset_year",
        "1900 to 2026",
    );
    assert_refused(
        &with(line.clone(), "onset_year", json!(2027)),
        "onset_year",
        "1900 to 2026",
    );
    assert_accepted(&with(line, "onset_year", json!(2026)));
}

#[test]
fn onset_year_is_not_before_birth_year() {
    let line = with(valid("patient_registered"), "onset_year", json!(1960));
    assert_refused(&line, "onset_year", "before the birth year 1961");
    assert_accepted(&with(line, "onset_year", json!(1961)));
}

#[test]
fn sex_is_from_the_vocabulary() {
    let line = valid("patient_registered");
    assert_refused(
        &with(line.clone(), "sex", json!("F")),
        "sex",
        "is not one of",
    );
    for sex in ["female", "male", "other", "unknown"] {
        assert_accepted(&with(line.clone(), "sex", json!(sex)));
    }
}

// injection_administered

#[test]
fn injection_fields_are_required() {
    for field in ["product", "total_units", "guidance", "muscles"] {
        assert_refused(
            &without(valid("injection_administered"), field),
            field,
            "is required",
        );
    }
    let mut line = valid("injection_administered");
    line["muscles"][0].as_object_mut().unwrap().remove("units");
    assert_refused(&line, "muscles[0].units", "is required");
}

#[test]
fn product_is_from_the_vocabulary() {
    assert_refused(
        &with(valid("injection_administered"), "product", json!("Botox")),
        "product",
        "is not one of",
    );
}

#[test]
fn total_units_is_above_zero() {
    let line = valid("injection_administered");
    assert_refused(
        &with(line.clone(), "total_units", json!(0)),
        "total_units",
        "> 0",
    );
    assert_refused(
        &with(line, "total_units", json!(-200)),
        "total_units",
        "> 0",
    );
}

#[test]
fn total_units_is_within_the_hard_maximum_of_its_product() {
    for product in Product::ALL {
        let hard = product.hard_maximum_units();
        let at = |units: u32| {
            json!({
                "event_id": "e-1", "centre": "leeds", "patient": "L-1",
                "occurred_on": "2017-02-01", "type": "injection_administered",
                "product": product.as_str(), "total_units": units, "guidance": "none",
                "muscles": [{"muscle": "trapezius", "side": "left", "units": units}]
            })
        };
        assert_accepted(&at(hard));
        assert_refused(&at(hard + 1), "total_units", "exceeds the hard maximum");
    }
}

#[test]
fn guidance_is_from_the_vocabulary() {
    assert_refused(
        &with(valid("injection_administered"), "guidance", json!("x-ray")),
        "guidance",
        "is not one of",
    );
}

#[test]
fn at_least_one_muscle_is_injected() {
    let line = with(valid("injection_administered"), "muscles", json!([]));
    assert_refused(&line, "muscles", "at least one muscle");
}

#[test]
fn muscle_and_side_are_from_the_vocabularies() {
    let mut line = valid("injection_administered");
    line["muscles"][0]["muscle"] = json!("biceps");
    line["muscles"][1]["side"] = json!("both");
    let found = reasons(&line);
    assert_reason(&found, "muscles[0].muscle", "is not one of");
    assert_reason(&found, "muscles[1].side", "is not one of");
}

#[test]
fn muscle_units_are_above_zero() {
    let mut line = valid("injection_administered");
    line["muscles"][1]["units"] = json!(0);
    assert_refused(&line, "muscles[1].units", "> 0");
    line["muscles"][1]["units"] = json!(-5);
    assert_refused(&line, "muscles[1].units", "> 0");
}

#[test]
fn muscle_units_add_up_to_total_units() {
    let line = with(valid("injection_administered"), "total_units", json!(210));
    assert_refused(&line, "muscles", "add up to 200, not total_units 210");
}

#[test]
fn a_muscle_and_side_appear_at_most_once() {
    let mut line = valid("injection_administered");
    line["muscles"][2]["muscle"] = json!("splenius_capitis");
    assert_refused(&line, "muscles[2]", "appears more than once");
    // The same muscle on the other side is another pair.
    line["muscles"][2]["side"] = json!("right");
    assert_accepted(&line);
}

// response_assessed

#[test]
fn response_fields_are_required() {
    for field in ["injection_event_id", "rating"] {
        assert_refused(
            &without(valid("response_assessed"), field),
            field,
            "is required",
        );
    }
    assert_refused(
        &with(
            valid("response_assessed"),
            "injection_event_id",
            json!("e 2"),
        ),
        "injection_event_id",
        "may only contain",
    );
}

#[test]
fn rating_is_good_suboptimal_or_none() {
    let line = valid("response_assessed");
    assert_refused(
        &with(line.clone(), "rating", json!("poor")),
        "rating",
        "is not one of",
    );
    for rating in ["good", "suboptimal", "none"] {
        assert_accepted(&with(line.clone(), "rating", json!(rating)));
    }
}

#[test]
fn response_scores_are_within_their_ranges() {
    let line = valid("response_assessed");
    for (field, high) in [
        ("percent_improvement", 100),
        ("benefit_weeks", 52),
        ("twstrs_total", 87),
    ] {
        assert_accepted(&with(line.clone(), field, json!(0)));
        assert_accepted(&with(line.clone(), field, json!(high)));
        assert_refused(
            &with(line.clone(), field, json!(high + 1)),
            field,
            "outside the allowed range",
        );
        assert_refused(
            &with(line.clone(), field, json!(-1)),
            field,
            "outside the allowed range",
        );
        assert_accepted(&without(line.clone(), field));
    }
}

// resistance_tested

#[test]
fn resistance_method_and_result_are_from_the_vocabularies() {
    let line = valid("resistance_tested");
    assert_refused(
        &with(line.clone(), "method", json!("blood")),
        "method",
        "is not one of",
    );
    assert_refused(
        &with(line.clone(), "result", json!("maybe")),
        "result",
        "is not one of",
    );
    for method in [
        "frontalis",
        "unilateral_brow",
        "edb",
        "scm",
        "mhda",
        "mpa",
        "elisa",
    ] {
        assert_accepted(&with(line.clone(), "method", json!(method)));
    }
}

#[test]
fn titre_is_a_number_at_least_zero() {
    let line = valid("resistance_tested");
    assert_refused(
        &with(line.clone(), "titre_mu_per_ml", json!(-0.1)),
        "titre_mu_per_ml",
        ">= 0",
    );
    assert_accepted(&with(line.clone(), "titre_mu_per_ml", json!(0)));
    assert_accepted(&with(line.clone(), "titre_mu_per_ml", json!(12)));
    assert_accepted(&without(line, "titre_mu_per_ml"));
}

#[test]
fn titre_is_finite() {
    // JSON cannot write a NaN or an infinity; the proto can, and it goes
    // through the same validation.
    let today = ClinicalDate::from_ymd(2026, 11, 25).unwrap();
    for titre in [f64::NAN, f64::INFINITY] {
        let raw: RawEvent = RawEvent {
            event_id: RawField::Present("e-1".into()),
            centre: RawField::Present("leeds".into()),
            patient: RawField::Present("L-1".into()),
            occurred_on: RawField::Present("2020-01-01".into()),
            event_type: RawField::Present("resistance_tested".into()),
            method: RawField::Present("elisa".into()),
            result: RawField::Present("positive".into()),
            titre_mu_per_ml: RawField::Present(titre),
            ..RawEvent::default()
        };
        let refusal = validate(raw, today).unwrap_err();
        assert_reason(&refusal.reasons, "titre_mu_per_ml", "finite");
    }
}

// referral_made

#[test]
fn referral_target_is_from_the_vocabulary() {
    let line = valid("referral_made");
    assert_refused(
        &with(line.clone(), "target", json!("surgery")),
        "target",
        "is not one of",
    );
    assert_refused(&without(line.clone(), "target"), "target", "is required");
    for target in [
        "dbs",
        "peripheral_denervation",
        "physiotherapy",
        "psychology",
        "other",
    ] {
        assert_accepted(&with(line.clone(), "target", json!(target)));
    }
}

// treatment_discontinued and event_voided

#[test]
fn reason_is_1_to_500_characters() {
    for event_type in ["treatment_discontinued", "event_voided"] {
        let line = valid(event_type);
        assert_refused(
            &with(line.clone(), "reason", json!("")),
            "reason",
            "1 to 500",
        );
        assert_refused(
            &with(line.clone(), "reason", json!("r".repeat(501))),
            "reason",
            "1 to 500",
        );
        assert_refused(&without(line.clone(), "reason"), "reason", "is required");
        // Characters, not bytes: 500 two-byte characters are allowed.
        assert_accepted(&with(line.clone(), "reason", json!("é".repeat(500))));
    }
}

#[test]
fn void_target_is_a_well_formed_event_id() {
    let line = valid("event_voided");
    assert_refused(
        &without(line.clone(), "target_event_id"),
        "target_event_id",
        "is required",
    );
    assert_refused(
        &with(line, "target_event_id", json!("e/2")),
        "target_event_id",
        "may only contain",
    );
}

// Reasons an integration engineer can act on (acceptance review, session 6)

/// A short id of non-ASCII characters is too long in bytes but not in
/// characters: "must be 1 to 64 characters, got 40" contradicted itself.
#[test]
fn a_short_id_of_non_ascii_characters_is_refused_for_its_alphabet_not_its_length() {
    let line = valid("referral_made");
    for (field, text) in [
        ("event_id", "é".repeat(40)),
        ("patient", "é".repeat(40)),
        ("centre", "é".repeat(17)),
    ] {
        let found = reasons(&with(line.clone(), field, json!(text)));
        assert_reason(&found, field, "may only contain");
        assert!(
            !found
                .iter()
                .any(|reason| reason.reason.contains("characters, got")),
            "{found:#?}"
        );
    }
    // Too many characters is still a length refusal.
    assert_refused(
        &with(line, "event_id", json!("é".repeat(65))),
        "event_id",
        "1 to 64 characters, got 65",
    );
}

/// An integer literal beyond every range (serde_json reads it as a float)
/// was refused as "must be an integer literal (like 200, not 200.0), got
/// 100000000000000000000000": it is one, and that is not what was written.
#[test]
fn an_integer_literal_beyond_every_range_is_too_large_not_a_non_integer() {
    let base = valid("injection_administered").to_string();
    let huge = base.replace(
        "\"total_units\":200",
        "\"total_units\":99999999999999999999999",
    );
    let found = reasons_of_text(&huge);
    assert_reason(&found, "total_units", "too large");
    assert!(
        !found
            .iter()
            .any(|reason| reason.reason.contains("integer literal")),
        "{found:#?}"
    );
    let tiny = base.replace(
        "\"total_units\":200",
        "\"total_units\":-99999999999999999999999",
    );
    assert_reason(&reasons_of_text(&tiny), "total_units", "too small");
    // A fraction is still not an integer literal.
    let fraction = base.replace("\"total_units\":200", "\"total_units\":200.5");
    assert_reason(
        &reasons_of_text(&fraction),
        "total_units",
        "integer literal",
    );
}

/// Each line is parsed alone, so serde_json's position always said "line 1"
/// whatever the file's line: `FILE:57: line: ... at line 1 column 12`.
#[test]
fn a_syntax_error_names_its_column_not_a_line_of_its_own() {
    let found = reasons_of_text(r#"{"event_id":"e-1","#);
    assert_reason(&found, "line", "not valid JSON");
    assert_reason(&found, "line", "at column 18");
    assert!(
        !found.iter().any(|reason| reason.reason.contains("line 1")),
        "{found:#?}"
    );
}

/// A byte order mark (what some Windows tools put before UTF-8 text) was
/// refused as "expected value at line 1 column 1", which does not say what
/// to fix.
#[test]
fn a_byte_order_mark_is_refused_by_name() {
    let line = format!("\u{feff}{}", valid("referral_made"));
    let found = reasons_of_text(&line);
    assert_reason(&found, "line", "byte order mark");
}
