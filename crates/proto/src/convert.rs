//! Conversions between the domain's events and `toxaudit.v1` messages, and
//! the storage codec of the event log (a prost-encoded `v1::Event` per
//! record).
//!
//! A message from a client becomes an event only through the domain's one
//! validator ([`domain::raw::validate`]), so gRPC and the interchange file
//! refuse the same input for the same reasons. Records read back from the
//! log were valid when written: they are checked again (a damaged record is
//! refused, never trusted) but without the bounds that depend on "today".

use bytes::Bytes;
use domain::{
    ClinicalDate, Event, EventBody, RecordedEvent, Refusal,
    raw::{RawEvent, RawField, RawMuscle, validate, validate_stored},
};
use prost::Message;

use crate::v1;

/// Why a stored record could not be read back as an event. Either means the
/// log holds something this version did not write: a bug or a disk fault.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a protobuf `toxaudit.v1.Event`.
    #[error("stored record is not a protobuf event: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The message breaks the event contract.
    #[error("stored record is not a valid event: {0}")]
    Invalid(#[from] Refusal),
}

impl From<&Event> for v1::Event {
    fn from(event: &Event) -> Self {
        v1::Event {
            event_id: event.event_id.as_str().to_owned(),
            centre: event.centre.as_str().to_owned(),
            patient: event.patient.as_str().to_owned(),
            occurred_on: event.occurred_on.to_string(),
            body: Some(body_to_proto(&event.body)),
        }
    }
}

fn body_to_proto(body: &EventBody) -> v1::event::Body {
    use v1::event::Body;
    match body {
        EventBody::PatientRegistered(body) => Body::PatientRegistered(v1::PatientRegistered {
            birth_year: body.birth_year,
            sex: body.sex.map(|sex| sex.as_str().to_owned()),
            onset_year: body.onset_year,
        }),
        EventBody::InjectionAdministered(body) => {
            Body::InjectionAdministered(v1::InjectionAdministered {
                product: body.product().as_str().to_owned(),
                total_units: body.total_units(),
                guidance: body.guidance().as_str().to_owned(),
                muscles: body
                    .muscles()
                    .iter()
                    .map(|dose| v1::MuscleDose {
                        muscle: dose.muscle.as_str().to_owned(),
                        side: dose.side.as_str().to_owned(),
                        units: dose.units,
                    })
                    .collect(),
            })
        }
        EventBody::ResponseAssessed(body) => Body::ResponseAssessed(v1::ResponseAssessed {
            injection_event_id: body.injection_event_id.as_str().to_owned(),
            rating: body.rating.as_str().to_owned(),
            percent_improvement: body.percent_improvement.map(u32::from),
            benefit_weeks: body.benefit_weeks.map(u32::from),
            twstrs_total: body.twstrs_total.map(u32::from),
        }),
        EventBody::ResistanceTested(body) => Body::ResistanceTested(v1::ResistanceTested {
            method: body.method.as_str().to_owned(),
            result: body.result.as_str().to_owned(),
            titre_mu_per_ml: body.titre_mu_per_ml,
        }),
        EventBody::ReferralMade(body) => Body::ReferralMade(v1::ReferralMade {
            target: body.target.as_str().to_owned(),
        }),
        EventBody::TreatmentDiscontinued(body) => {
            Body::TreatmentDiscontinued(v1::TreatmentDiscontinued {
                reason: body.reason.clone(),
            })
        }
        EventBody::EventVoided(body) => Body::EventVoided(v1::EventVoided {
            target_event_id: body.target_event_id.as_str().to_owned(),
            reason: body.reason.clone(),
        }),
    }
}

/// A client's message as a domain event, through the same validation as a
/// line of the interchange file (field names are the file's).
pub fn event_from_proto(message: v1::Event, today: ClinicalDate) -> Result<Event, Refusal> {
    validate(raw_from_proto(message), today)
}

/// The raw, unvalidated form of a message. proto3 cannot tell an empty
/// string from a missing one, so an empty string is absent ("is required");
/// the `optional` fields keep their presence.
pub fn raw_from_proto(message: v1::Event) -> RawEvent {
    use v1::event::Body;
    let mut raw = RawEvent {
        event_id: text(message.event_id),
        centre: text(message.centre),
        patient: text(message.patient),
        occurred_on: text(message.occurred_on),
        ..RawEvent::default()
    };
    let Some(body) = message.body else {
        return raw;
    };
    raw.event_type = RawField::Present(body_type(&body).as_str().to_owned());
    match body {
        Body::PatientRegistered(body) => {
            raw.birth_year = RawField::from_option(body.birth_year.map(i64::from));
            raw.sex = RawField::from_option(body.sex);
            raw.onset_year = RawField::from_option(body.onset_year.map(i64::from));
        }
        Body::InjectionAdministered(body) => {
            raw.product = text(body.product);
            raw.total_units = RawField::Present(i64::from(body.total_units));
            raw.guidance = text(body.guidance);
            raw.muscles = RawField::Present(
                body.muscles
                    .into_iter()
                    .map(|dose| {
                        RawField::Present(RawMuscle {
                            muscle: text(dose.muscle),
                            side: text(dose.side),
                            units: RawField::Present(i64::from(dose.units)),
                            source_errors: Vec::new(),
                        })
                    })
                    .collect(),
            );
        }
        Body::ResponseAssessed(body) => {
            raw.injection_event_id = text(body.injection_event_id);
            raw.rating = text(body.rating);
            raw.percent_improvement =
                RawField::from_option(body.percent_improvement.map(i64::from));
            raw.benefit_weeks = RawField::from_option(body.benefit_weeks.map(i64::from));
            raw.twstrs_total = RawField::from_option(body.twstrs_total.map(i64::from));
        }
        Body::ResistanceTested(body) => {
            raw.method = text(body.method);
            raw.result = text(body.result);
            raw.titre_mu_per_ml = RawField::from_option(body.titre_mu_per_ml);
        }
        Body::ReferralMade(body) => raw.target = text(body.target),
        Body::TreatmentDiscontinued(body) => raw.reason = text(body.reason),
        Body::EventVoided(body) => {
            raw.target_event_id = text(body.target_event_id);
            raw.reason = text(body.reason);
        }
    }
    raw
}

fn body_type(body: &v1::event::Body) -> domain::EventType {
    use domain::EventType;
    use v1::event::Body;
    match body {
        Body::PatientRegistered(_) => EventType::PatientRegistered,
        Body::InjectionAdministered(_) => EventType::InjectionAdministered,
        Body::ResponseAssessed(_) => EventType::ResponseAssessed,
        Body::ResistanceTested(_) => EventType::ResistanceTested,
        Body::ReferralMade(_) => EventType::ReferralMade,
        Body::TreatmentDiscontinued(_) => EventType::TreatmentDiscontinued,
        Body::EventVoided(_) => EventType::EventVoided,
    }
}

/// A proto3 string: empty means not given.
fn text(value: String) -> RawField<String> {
    if value.is_empty() {
        RawField::Absent
    } else {
        RawField::Present(value)
    }
}

/// The log record of an event: the prost-encoded `v1::Event`.
pub fn encode_event(event: &Event) -> Bytes {
    Bytes::from(v1::Event::from(event).encode_to_vec())
}

/// An event read back from the log. Checked again against the contract, but
/// not against "today" (it was valid on the day it was written).
pub fn decode_event(bytes: &[u8]) -> Result<Event, DecodeError> {
    let message = v1::Event::decode(bytes)?;
    Ok(validate_stored(raw_from_proto(message))?)
}

/// A stored record as a [`RecordedEvent`]: the log's facts and the decoded
/// payload.
pub fn recorded_from_parts(
    position: u64,
    recorded_at_micros: i64,
    recorded_by: &str,
    payload: &[u8],
) -> Result<RecordedEvent, DecodeError> {
    Ok(RecordedEvent {
        position,
        recorded_at_micros,
        recorded_by: recorded_by.to_owned(),
        event: decode_event(payload)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> ClinicalDate {
        ClinicalDate::from_ymd(2026, 11, 25).unwrap()
    }

    const INJECTION: &str = r#"{"event_id":"e-0002","centre":"leeds","patient":"L-0001","occurred_on":"2017-02-01","type":"injection_administered","product":"onabotulinumtoxinA","total_units":200,"guidance":"emg","muscles":[{"muscle":"splenius_capitis","side":"left","units":80},{"muscle":"sternocleidomastoid","side":"right","units":60},{"muscle":"trapezius","side":"left","units":60}]}"#;

    #[test]
    fn an_event_survives_the_storage_codec() {
        let event = domain::ndjson::parse_line(INJECTION, today()).unwrap();
        let bytes = encode_event(&event);
        assert_eq!(decode_event(&bytes).unwrap(), event);
    }

    #[test]
    fn a_message_is_refused_for_the_same_reasons_as_a_line() {
        let event = domain::ndjson::parse_line(INJECTION, today()).unwrap();
        let mut message = v1::Event::from(&event);
        message.centre = "all".to_owned();
        message.event_id = String::new();
        if let Some(v1::event::Body::InjectionAdministered(body)) = &mut message.body {
            body.muscles[1].units = 0;
        }
        let refusal = event_from_proto(message, today()).unwrap_err();
        let fields: Vec<_> = refusal.reasons.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(
            fields,
            ["event_id", "centre", "muscles[1].units", "muscles"]
        );
    }

    #[test]
    fn a_message_without_a_body_has_no_type() {
        let message = v1::Event {
            event_id: "e-1".into(),
            centre: "leeds".into(),
            patient: "L-1".into(),
            occurred_on: "2020-01-01".into(),
            body: None,
        };
        let refusal = event_from_proto(message, today()).unwrap_err();
        assert_eq!(refusal.reasons.len(), 1);
        assert_eq!(refusal.reasons[0].field, "type");
    }

    #[test]
    fn stored_records_are_not_held_to_today() {
        let line = INJECTION.replace("2017-02-01", "2030-01-01");
        let later = ClinicalDate::from_ymd(2030, 1, 1).unwrap();
        let event = domain::ndjson::parse_line(&line, later).unwrap();
        assert!(event_from_proto(v1::Event::from(&event), today()).is_err());
        assert_eq!(decode_event(&encode_event(&event)).unwrap(), event);
    }

    #[test]
    fn damaged_records_are_refused() {
        assert!(matches!(
            decode_event(&[0xff, 0xff, 0xff]),
            Err(DecodeError::Protobuf(_))
        ));
        let event = domain::ndjson::parse_line(INJECTION, today()).unwrap();
        let mut message = v1::Event::from(&event);
        message.patient = "9434765919".into();
        assert!(matches!(
            decode_event(&message.encode_to_vec()),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn recorded_parts_keep_the_log_facts() {
        let event = domain::ndjson::parse_line(INJECTION, today()).unwrap();
        let recorded = recorded_from_parts(7, 42, "leeds-writer", &encode_event(&event)).unwrap();
        assert_eq!(recorded.position, 7);
        assert_eq!(recorded.recorded_at_micros, 42);
        assert_eq!(recorded.recorded_by, "leeds-writer");
        assert_eq!(recorded.event, event);
    }
}
