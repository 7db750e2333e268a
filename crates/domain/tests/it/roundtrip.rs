//! Property: a valid event survives the interchange file unchanged, NDJSON
//! → domain → NDJSON, and its fingerprint does not depend on key order.

use domain::ndjson::{fingerprint, parse_line, to_line};
use proptest::prelude::*;

use crate::strategies::{event, strategy_today};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_valid_event_survives_ndjson_unchanged(event in event()) {
        let line = to_line(&event);
        let parsed = parse_line(&line, strategy_today())
            .map_err(|refusal| TestCaseError::fail(format!("{refusal} for {line}")))?;
        prop_assert_eq!(&parsed, &event);
        prop_assert_eq!(to_line(&parsed), line);
    }

    #[test]
    fn reordered_keys_keep_the_fingerprint(event in event()) {
        // serde_json's map (without preserve_order) writes keys sorted, not
        // in the canonical order: the same content in another key order.
        let value: serde_json::Value = serde_json::from_str(&to_line(&event)).unwrap();
        let reordered = value.to_string();
        let parsed = parse_line(&reordered, strategy_today())
            .map_err(|refusal| TestCaseError::fail(format!("{refusal} for {reordered}")))?;
        prop_assert_eq!(fingerprint(&parsed), fingerprint(&event));
    }
}
