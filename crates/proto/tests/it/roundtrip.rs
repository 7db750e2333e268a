//! Properties: a valid event survives the storage codec (domain → proto
//! bytes → domain) and a client message (domain → proto → validation)
//! unchanged, and both paths agree with the interchange file.

use domain::ndjson::{parse_line, to_line};
use proptest::prelude::*;
use proto::{
    convert::{decode_event, encode_event, event_from_proto},
    v1,
};

use crate::strategies::{event, strategy_today};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_valid_event_survives_the_storage_codec_unchanged(event in event()) {
        let bytes = encode_event(&event);
        let decoded = decode_event(&bytes)
            .map_err(|error| TestCaseError::fail(error.to_string()))?;
        prop_assert_eq!(&decoded, &event);
        prop_assert_eq!(encode_event(&decoded), bytes);
    }

    #[test]
    fn a_valid_event_survives_a_client_message_unchanged(event in event()) {
        let message = v1::Event::from(&event);
        let converted = event_from_proto(message, strategy_today())
            .map_err(|refusal| TestCaseError::fail(refusal.to_string()))?;
        prop_assert_eq!(&converted, &event);
    }

    #[test]
    fn the_file_and_the_log_hold_the_same_event(event in event()) {
        let from_file = parse_line(&to_line(&event), strategy_today())
            .map_err(|refusal| TestCaseError::fail(refusal.to_string()))?;
        let from_log = decode_event(&encode_event(&from_file))
            .map_err(|error| TestCaseError::fail(error.to_string()))?;
        prop_assert_eq!(to_line(&from_log), to_line(&event));
    }
}
