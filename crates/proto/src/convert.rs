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

impl From<&RecordedEvent> for v1::RecordedEvent {
    fn from(recorded: &RecordedEvent) -> Self {
        v1::RecordedEvent {
            position: recorded.position,
            recorded_at: domain::ndjson::rfc3339_from_micros(recorded.recorded_at_micros),
            recorded_by: recorded.recorded_by.to_string(),
            event: Some(v1::Event::from(&recorded.event)),
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

/// The log record of an event: the prost-encoded `v1::Event`, written
/// straight from the event (no message of owned strings in between), byte
/// for byte what prost writes for [`v1::Event::from`] (the payload is the
/// idempotency content, so it must never change; pinned by tests against
/// prost's own encoding of that message).
pub fn encode_event(event: &Event) -> Bytes {
    Bytes::from(direct::event(event))
}

/// The log record of an event through prost: the reference
/// [`encode_event`] equals (tests only).
#[cfg(test)]
fn encode_event_via_message(event: &Event) -> Bytes {
    Bytes::from(v1::Event::from(event).encode_to_vec())
}

/// The protobuf wire form of `v1::Event`, written from a domain event in
/// prost's order: fields by number, proto3 scalars and strings left out
/// when zero or empty, `optional` ones written whenever present.
mod direct {
    use domain::{Event, EventBody};
    use prost::encoding::encode_varint;

    const VARINT: u64 = 0;
    const FIXED64: u64 = 1;
    const LENGTH_DELIMITED: u64 = 2;

    fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
        encode_varint((field << 3) | wire, out);
    }

    fn varint_length(value: u64) -> usize {
        prost::encoding::encoded_len_varint(value)
    }

    /// A proto3 string: left out when empty.
    fn text(out: &mut Vec<u8>, field: u64, value: &str) {
        if !value.is_empty() {
            present_text(out, field, value);
        }
    }

    fn present_text(out: &mut Vec<u8>, field: u64, value: &str) {
        key(out, field, LENGTH_DELIMITED);
        encode_varint(value.len() as u64, out);
        out.extend_from_slice(value.as_bytes());
    }

    fn text_length(field: u64, value: &str) -> usize {
        if value.is_empty() {
            0
        } else {
            varint_length(field << 3) + varint_length(value.len() as u64) + value.len()
        }
    }

    /// An `int32` (negative ones sign-extended to ten bytes, as prost does).
    fn int32(out: &mut Vec<u8>, field: u64, value: i32) {
        key(out, field, VARINT);
        encode_varint(i64::from(value) as u64, out);
    }

    fn uint32(out: &mut Vec<u8>, field: u64, value: u32) {
        key(out, field, VARINT);
        encode_varint(u64::from(value), out);
    }

    /// A proto3 `uint32`: left out when zero.
    fn uint32_if_set(out: &mut Vec<u8>, field: u64, value: u32) {
        if value != 0 {
            uint32(out, field, value);
        }
    }

    pub(super) fn event(event: &Event) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        text(&mut out, 1, event.event_id.as_str());
        text(&mut out, 2, event.centre.as_str());
        text(&mut out, 3, event.patient.as_str());
        text(&mut out, 4, &event.occurred_on.to_string());
        let mut body = Vec::with_capacity(160);
        let field = match &event.body {
            EventBody::PatientRegistered(registered) => {
                if let Some(year) = registered.birth_year {
                    int32(&mut body, 1, year);
                }
                if let Some(sex) = registered.sex {
                    present_text(&mut body, 2, sex.as_str());
                }
                if let Some(year) = registered.onset_year {
                    int32(&mut body, 3, year);
                }
                10
            }
            EventBody::InjectionAdministered(injection) => {
                text(&mut body, 1, injection.product().as_str());
                uint32_if_set(&mut body, 2, injection.total_units());
                text(&mut body, 3, injection.guidance().as_str());
                for dose in injection.muscles() {
                    let units_length = if dose.units == 0 {
                        0
                    } else {
                        1 + varint_length(u64::from(dose.units))
                    };
                    let length = text_length(1, dose.muscle.as_str())
                        + text_length(2, dose.side.as_str())
                        + units_length;
                    key(&mut body, 4, LENGTH_DELIMITED);
                    encode_varint(length as u64, &mut body);
                    text(&mut body, 1, dose.muscle.as_str());
                    text(&mut body, 2, dose.side.as_str());
                    uint32_if_set(&mut body, 3, dose.units);
                }
                11
            }
            EventBody::ResponseAssessed(response) => {
                text(&mut body, 1, response.injection_event_id.as_str());
                text(&mut body, 2, response.rating.as_str());
                if let Some(value) = response.percent_improvement {
                    uint32(&mut body, 3, u32::from(value));
                }
                if let Some(value) = response.benefit_weeks {
                    uint32(&mut body, 4, u32::from(value));
                }
                if let Some(value) = response.twstrs_total {
                    uint32(&mut body, 5, u32::from(value));
                }
                12
            }
            EventBody::ResistanceTested(tested) => {
                text(&mut body, 1, tested.method.as_str());
                text(&mut body, 2, tested.result.as_str());
                if let Some(titre) = tested.titre_mu_per_ml {
                    key(&mut body, 3, FIXED64);
                    body.extend_from_slice(&titre.to_bits().to_le_bytes());
                }
                13
            }
            EventBody::ReferralMade(referral) => {
                text(&mut body, 1, referral.target.as_str());
                14
            }
            EventBody::TreatmentDiscontinued(discontinued) => {
                text(&mut body, 1, &discontinued.reason);
                15
            }
            EventBody::EventVoided(voided) => {
                text(&mut body, 1, voided.target_event_id.as_str());
                text(&mut body, 2, &voided.reason);
                16
            }
        };
        // A oneof member is written even when empty (its presence is the type).
        key(&mut out, field, LENGTH_DELIMITED);
        encode_varint(body.len() as u64, &mut out);
        out.extend_from_slice(&body);
        out
    }
}

/// An event read back from the log. Checked again against the contract, but
/// not against "today" (it was valid on the day it was written).
///
/// A replay decodes every stored event, so the records this crate writes
/// are read by a small reader that borrows every string from `bytes` (no
/// intermediate message, no copy but the event's own). Anything it does not
/// expect (an unknown or repeated field, another wire type) is decoded by
/// prost instead, which has the full protobuf semantics; both end in the
/// same validation.
///
/// The fast path hands the validator each string's bytes unchecked: every
/// rule but `reason`'s admits ASCII only, so an event it accepts had UTF-8
/// strings, and checking them first would read every byte twice. Whatever it
/// refuses is decided again by [`decode_event_checked`], which checks UTF-8
/// as protobuf does, so a refusal (and its reasons) is exactly that path's.
///
/// Before both, the `straight` reader builds the event with no raw event in
/// between; it accepts only what both would accept, as the same event, and
/// leaves everything else to them.
pub fn decode_event(bytes: &[u8]) -> Result<Event, DecodeError> {
    if let Some(event) = straight::event(bytes) {
        return Ok(event);
    }
    if let Some(raw) = borrowed::raw_event::<&[u8]>(bytes)
        && let Ok(event) = validate_stored(raw)
    {
        return Ok(event);
    }
    decode_event_checked(bytes)
}

/// [`decode_event`] with every string checked to be UTF-8 before it is
/// validated: a string that is not is refused by prost, as a protobuf error.
fn decode_event_checked(bytes: &[u8]) -> Result<Event, DecodeError> {
    match borrowed::raw_event::<&str>(bytes) {
        Some(raw) => Ok(validate_stored(raw)?),
        None => {
            let message = v1::Event::decode(bytes)?;
            Ok(validate_stored(raw_from_proto(message))?)
        }
    }
}

/// The fast reader of stored records: a raw event whose strings borrow from
/// the record, or `None` for anything but the plain encoding `encode_event`
/// writes (then prost decides). Its strings are either bytes (`&[u8]`, left
/// for the validator to prove UTF-8) or `&str` (checked here, as prost
/// does: a string that is not UTF-8 is then left to prost).
mod borrowed {
    use domain::raw::{RawEvent, RawField, RawMuscle};

    /// A string field of a record as the reader hands it on.
    pub(super) trait FieldText<'a>: Sized + Default {
        fn from_field(bytes: &'a [u8]) -> Option<Self>;
        fn from_static(text: &'static str) -> Self;
    }

    impl<'a> FieldText<'a> for &'a [u8] {
        fn from_field(bytes: &'a [u8]) -> Option<Self> {
            Some(bytes)
        }
        fn from_static(text: &'static str) -> Self {
            text.as_bytes()
        }
    }

    impl<'a> FieldText<'a> for &'a str {
        fn from_field(bytes: &'a [u8]) -> Option<Self> {
            std::str::from_utf8(bytes).ok()
        }
        fn from_static(text: &'static str) -> Self {
            text
        }
    }

    /// Protobuf wire types used by `toxaudit.v1.Event`.
    pub(super) const VARINT: u8 = 0;
    pub(super) const FIXED64: u8 = 1;
    pub(super) const LENGTH_DELIMITED: u8 = 2;

    /// A cursor over one message's bytes.
    pub(super) struct Reader<'a> {
        pub(super) bytes: &'a [u8],
    }

    impl<'a> Reader<'a> {
        pub(super) fn varint(&mut self) -> Option<u64> {
            // Every key and length of a stored event, and most values, are
            // one byte: read those without the loop.
            if let Some((&byte, rest)) = self.bytes.split_first()
                && byte < 0x80
            {
                self.bytes = rest;
                return Some(u64::from(byte));
            }
            let mut value = 0u64;
            for (index, byte) in self.bytes.iter().enumerate().take(10) {
                // The tenth byte holds the 64th bit only; more is an
                // overlong varint, which prost refuses too.
                if index == 9 && *byte > 1 {
                    return None;
                }
                value |= u64::from(byte & 0x7f) << (7 * index);
                if byte & 0x80 == 0 {
                    self.bytes = &self.bytes[index + 1..];
                    return Some(value);
                }
            }
            None
        }

        /// The next (field number, wire type), or `None` at the end.
        pub(super) fn key(&mut self) -> Option<Option<(u64, u8)>> {
            if self.bytes.is_empty() {
                return Some(None);
            }
            let key = self.varint()?;
            // The low three bits of a key are the wire type.
            Some(Some((key >> 3, (key & 0x7) as u8)))
        }

        pub(super) fn length_delimited(&mut self) -> Option<&'a [u8]> {
            let length = usize::try_from(self.varint()?).ok()?;
            if length > self.bytes.len() {
                return None;
            }
            let (field, rest) = self.bytes.split_at(length);
            self.bytes = rest;
            Some(field)
        }

        fn text<T: FieldText<'a>>(&mut self) -> Option<T> {
            T::from_field(self.length_delimited()?)
        }

        /// A proto3 string: empty means not given, as in `raw_from_proto`.
        fn proto3_text<T: FieldText<'a>>(&mut self) -> Option<RawField<T>> {
            let bytes = self.length_delimited()?;
            if bytes.is_empty() {
                Some(RawField::Absent)
            } else {
                T::from_field(bytes).map(RawField::Present)
            }
        }

        pub(super) fn fixed64(&mut self) -> Option<u64> {
            let (field, rest) = self.bytes.split_first_chunk::<8>()?;
            self.bytes = rest;
            Some(u64::from_le_bytes(*field))
        }
    }

    /// Sets a field once: a repeated scalar field is left to prost.
    fn once<T>(slot: &mut RawField<T>, value: RawField<T>) -> Option<()> {
        if slot.is_given() {
            return None;
        }
        *slot = value;
        Some(())
    }

    pub(super) fn raw_event<'a, T: FieldText<'a>>(bytes: &'a [u8]) -> Option<RawEvent<T>> {
        let mut reader = Reader { bytes };
        let mut raw = RawEvent::default();
        let mut has_body = false;
        while let Some((field, wire)) = reader.key()? {
            if wire != LENGTH_DELIMITED {
                return None;
            }
            match field {
                1 => once(&mut raw.event_id, reader.proto3_text()?)?,
                2 => once(&mut raw.centre, reader.proto3_text()?)?,
                3 => once(&mut raw.patient, reader.proto3_text()?)?,
                4 => once(&mut raw.occurred_on, reader.proto3_text()?)?,
                10..=16 if !has_body => {
                    has_body = true;
                    body(field, reader.length_delimited()?, &mut raw)?;
                }
                _ => return None,
            }
        }
        Some(raw)
    }

    fn body<'a, T: FieldText<'a>>(
        field: u64,
        bytes: &'a [u8],
        raw: &mut RawEvent<T>,
    ) -> Option<()> {
        let event_type = match field {
            10 => "patient_registered",
            11 => "injection_administered",
            12 => "response_assessed",
            13 => "resistance_tested",
            14 => "referral_made",
            15 => "treatment_discontinued",
            _ => "event_voided",
        };
        raw.event_type = RawField::Present(T::from_static(event_type));
        if field == 11 {
            // proto3 scalars that are not `optional` read as zero when left
            // out, and the muscles as an empty list, as prost reads them.
            raw.total_units = RawField::Present(0);
            raw.muscles = RawField::Present(Vec::new());
        }
        let mut reader = Reader { bytes };
        while let Some((number, wire)) = reader.key()? {
            match (field, number, wire) {
                // patient_registered: int32 birth_year, string sex, int32 onset_year.
                // An int32 is read as prost reads it: the low 32 bits.
                (10, 1, VARINT) => once(
                    &mut raw.birth_year,
                    RawField::Present(i64::from(reader.varint()? as i32)),
                )?,
                (10, 2, LENGTH_DELIMITED) => {
                    // `optional string`: present even when empty.
                    once(&mut raw.sex, RawField::Present(reader.text()?))?
                }
                (10, 3, VARINT) => once(
                    &mut raw.onset_year,
                    RawField::Present(i64::from(reader.varint()? as i32)),
                )?,
                (11, 1, LENGTH_DELIMITED) => once(&mut raw.product, reader.proto3_text()?)?,
                (11, 2, VARINT) => {
                    raw.total_units = RawField::Present(i64::from(reader.varint()? as u32));
                }
                (11, 3, LENGTH_DELIMITED) => once(&mut raw.guidance, reader.proto3_text()?)?,
                (11, 4, LENGTH_DELIMITED) => {
                    let bytes = reader.length_delimited()?;
                    // `muscles` is present from the body's start (above).
                    // An entry is read in place: it is some 100 bytes, and
                    // building it aside then moving it into the list cost
                    // two copies of it.
                    if let RawField::Present(muscles) = &mut raw.muscles {
                        muscles.push(RawField::Present(RawMuscle {
                            units: RawField::Present(0),
                            ..RawMuscle::default()
                        }));
                        if let Some(RawField::Present(dose)) = muscles.last_mut() {
                            muscle(bytes, dose)?;
                        }
                    }
                }
                (12, 1, LENGTH_DELIMITED) => {
                    once(&mut raw.injection_event_id, reader.proto3_text()?)?
                }
                (12, 2, LENGTH_DELIMITED) => once(&mut raw.rating, reader.proto3_text()?)?,
                (12, 3, VARINT) => once(
                    &mut raw.percent_improvement,
                    RawField::Present(i64::from(reader.varint()? as u32)),
                )?,
                (12, 4, VARINT) => once(
                    &mut raw.benefit_weeks,
                    RawField::Present(i64::from(reader.varint()? as u32)),
                )?,
                (12, 5, VARINT) => once(
                    &mut raw.twstrs_total,
                    RawField::Present(i64::from(reader.varint()? as u32)),
                )?,
                (13, 1, LENGTH_DELIMITED) => once(&mut raw.method, reader.proto3_text()?)?,
                (13, 2, LENGTH_DELIMITED) => once(&mut raw.result, reader.proto3_text()?)?,
                (13, 3, FIXED64) => once(
                    &mut raw.titre_mu_per_ml,
                    RawField::Present(f64::from_bits(reader.fixed64()?)),
                )?,
                (14, 1, LENGTH_DELIMITED) => once(&mut raw.target, reader.proto3_text()?)?,
                (15, 1, LENGTH_DELIMITED) => once(&mut raw.reason, reader.proto3_text()?)?,
                (16, 1, LENGTH_DELIMITED) => once(&mut raw.target_event_id, reader.proto3_text()?)?,
                (16, 2, LENGTH_DELIMITED) => once(&mut raw.reason, reader.proto3_text()?)?,
                _ => return None,
            }
        }
        Some(())
    }

    /// Reads one entry of `muscles` into `dose`, which starts with no
    /// muscle, no side and 0 units (prost's defaults).
    fn muscle<'a, T: FieldText<'a>>(bytes: &'a [u8], dose: &mut RawMuscle<T>) -> Option<()> {
        let mut reader = Reader { bytes };
        let mut units_seen = false;
        while let Some((number, wire)) = reader.key()? {
            match (number, wire) {
                (1, LENGTH_DELIMITED) => once(&mut dose.muscle, reader.proto3_text()?)?,
                (2, LENGTH_DELIMITED) => once(&mut dose.side, reader.proto3_text()?)?,
                (3, VARINT) if !units_seen => {
                    units_seen = true;
                    dose.units = RawField::Present(i64::from(reader.varint()? as u32));
                }
                _ => return None,
            }
        }
        Some(())
    }
}

/// The fastest reader of stored records: the event straight from the
/// record's bytes, each field parsed by the same function the validator
/// uses and checked by the same rules, with no [`RawEvent`] in between (a
/// raw event is some 600 bytes to fill and take apart again, and was ~20%
/// of a replay's read + decode).
///
/// It reads only what [`encode_event`] writes for a valid event: fields in
/// number order, each at most once (muscles repeated in a row), the wire
/// types of `toxaudit.v1.Event`, every rule met. Anything else is `None`,
/// and [`decode_event`] decides as it did before this reader existed, so a
/// refusal and its reasons are never this reader's. What it accepts, the
/// validator accepts as the same event (property-tested against the
/// checked path on damaged and arbitrary records).
mod straight {
    use domain::{
        Centre, Event, EventBody, EventId, EventVoided, Guidance, InjectionAdministered, Muscle,
        MuscleDose, PatientRegistered, Product, Pseudonym, Rating, ReferralMade, ReferralTarget,
        ResistanceMethod, ResistanceResult, ResistanceTested, ResponseAssessed, Sex, Side,
        TreatmentDiscontinued,
        raw::{EARLIEST_YEAR, MAXIMUM_REASON_CHARS, parse_stored_date},
    };

    use super::borrowed::{FIXED64, LENGTH_DELIMITED, Reader, VARINT};

    /// The fields of one message, each read only in number order.
    struct Fields<'a> {
        reader: Reader<'a>,
        /// The next field, read ahead: (number, wire type).
        next: Option<(u64, u8)>,
    }

    impl<'a> Fields<'a> {
        fn new(bytes: &'a [u8]) -> Option<Self> {
            let mut reader = Reader { bytes };
            let next = reader.key()?;
            Some(Self { reader, next })
        }

        /// Whether the next field is `number`; a field of a lower number
        /// than asked for (out of order, or repeated) is `None` for the
        /// whole record.
        fn at(&self, number: u64) -> Option<bool> {
            match self.next {
                Some((next, _)) if next < number => None,
                Some((next, _)) => Some(next == number),
                None => Some(false),
            }
        }

        /// The field `number` when it comes next with the `wire` type.
        fn take(&mut self, number: u64, wire: u8) -> Option<bool> {
            if !self.at(number)? {
                return Some(false);
            }
            if self.next.map(|(_, next_wire)| next_wire) != Some(wire) {
                return None;
            }
            Some(true)
        }

        /// Moves past the field just read.
        fn advance(&mut self) -> Option<()> {
            self.next = self.reader.key()?;
            Some(())
        }

        /// The field `number` of the `wire` type, when it comes next, read
        /// by `read`; the cursor then moves past it.
        fn field<T>(
            &mut self,
            number: u64,
            wire: u8,
            read: impl FnOnce(&mut Reader<'a>) -> Option<T>,
        ) -> Option<Option<T>> {
            if !self.take(number, wire)? {
                return Some(None);
            }
            let value = read(&mut self.reader)?;
            self.advance()?;
            Some(Some(value))
        }

        /// A string field, when it comes next (proto3 writes no empty one).
        fn text(&mut self, number: u64) -> Option<Option<&'a [u8]>> {
            self.field(number, LENGTH_DELIMITED, Reader::length_delimited)
        }

        /// A varint field, when it comes next.
        fn varint(&mut self, number: u64) -> Option<Option<u64>> {
            self.field(number, VARINT, Reader::varint)
        }

        /// A fixed64 field, when it comes next.
        fn fixed64(&mut self, number: u64) -> Option<Option<u64>> {
            self.field(number, FIXED64, Reader::fixed64)
        }

        /// The message is read whole: nothing is left.
        fn end(&self) -> Option<()> {
            self.next.is_none().then_some(())
        }
    }

    pub(super) fn event(bytes: &[u8]) -> Option<Event> {
        let mut fields = Fields::new(bytes)?;
        let event_id = EventId::parse_bytes(fields.text(1)??).ok()?;
        let centre = Centre::parse_bytes(fields.text(2)??).ok()?;
        let patient = Pseudonym::parse_bytes(fields.text(3)??).ok()?;
        let occurred_on = parse_stored_date(fields.text(4)??).ok()?;
        let (number, wire) = fields.next?;
        if !(10..=16).contains(&number) || wire != LENGTH_DELIMITED {
            return None;
        }
        let body_bytes = fields.reader.length_delimited()?;
        fields.advance()?;
        fields.end()?;
        let mut body_fields = Fields::new(body_bytes)?;
        let body = match number {
            10 => registered(&mut body_fields)?,
            11 => injection(&mut body_fields)?,
            12 => response(&mut body_fields)?,
            13 => resistance(&mut body_fields)?,
            14 => EventBody::ReferralMade(ReferralMade {
                target: ReferralTarget::parse_bytes(body_fields.text(1)??).ok()?,
            }),
            15 => EventBody::TreatmentDiscontinued(TreatmentDiscontinued {
                reason: reason(body_fields.text(1)??)?,
            }),
            _ => EventBody::EventVoided(EventVoided {
                target_event_id: EventId::parse_bytes(body_fields.text(1)??).ok()?,
                reason: reason(body_fields.text(2)??)?,
            }),
        };
        body_fields.end()?;
        Some(Event {
            event_id,
            centre,
            patient,
            occurred_on,
            body,
        })
    }

    /// A free-text reason: UTF-8, 1 to 500 characters.
    fn reason(bytes: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(bytes).ok()?;
        let length = text.chars().count();
        (1..=MAXIMUM_REASON_CHARS)
            .contains(&length)
            .then(|| text.to_owned())
    }

    /// An `int32` year as prost reads it (the low 32 bits), from 1900 on.
    fn year(value: Option<u64>) -> Option<Option<i32>> {
        match value {
            None => Some(None),
            Some(value) => {
                let year = value as i32;
                (i64::from(year) >= EARLIEST_YEAR).then_some(Some(year))
            }
        }
    }

    fn registered(fields: &mut Fields<'_>) -> Option<EventBody> {
        let birth_year = year(fields.varint(1)?)?;
        // `optional string`: present even when empty (then refused).
        let sex = match fields.text(2)? {
            Some(text) => Some(Sex::parse_bytes(text).ok()?),
            None => None,
        };
        let onset_year = year(fields.varint(3)?)?;
        if let (Some(birth), Some(onset)) = (birth_year, onset_year)
            && onset < birth
        {
            return None;
        }
        Some(EventBody::PatientRegistered(PatientRegistered {
            birth_year,
            sex,
            onset_year,
        }))
    }

    fn injection(fields: &mut Fields<'_>) -> Option<EventBody> {
        let product = Product::parse_bytes(fields.text(1)??).ok()?;
        // A `uint32` as prost reads it: the low 32 bits; left out is 0
        // (which the injection's own check refuses).
        let total_units = fields.varint(2)?.unwrap_or(0) as u32;
        let guidance = Guidance::parse_bytes(fields.text(3)??).ok()?;
        let mut muscles = Vec::with_capacity(4);
        while let Some(entry) = fields.text(4)? {
            let mut entry = Fields::new(entry)?;
            let muscle = Muscle::parse_bytes(entry.text(1)??).ok()?;
            let side = Side::parse_bytes(entry.text(2)??).ok()?;
            let units = entry.varint(3)?.unwrap_or(0) as u32;
            entry.end()?;
            muscles.push(MuscleDose {
                muscle,
                side,
                units,
            });
        }
        InjectionAdministered::new(product, total_units, guidance, muscles)
            .ok()
            .map(EventBody::InjectionAdministered)
    }

    /// An optional `uint32` (the low 32 bits) within 0..=`high`.
    fn small(value: Option<u64>, high: u8) -> Option<Option<u8>> {
        match value {
            None => Some(None),
            Some(value) => {
                let value = u8::try_from(value as u32).ok()?;
                (value <= high).then_some(Some(value))
            }
        }
    }

    fn response(fields: &mut Fields<'_>) -> Option<EventBody> {
        let injection_event_id = EventId::parse_bytes(fields.text(1)??).ok()?;
        let rating = Rating::parse_bytes(fields.text(2)??).ok()?;
        let percent_improvement = small(fields.varint(3)?, 100)?;
        let benefit_weeks = small(fields.varint(4)?, 52)?;
        let twstrs_total = small(fields.varint(5)?, 87)?;
        Some(EventBody::ResponseAssessed(ResponseAssessed {
            injection_event_id,
            rating,
            percent_improvement,
            benefit_weeks,
            twstrs_total,
        }))
    }

    fn resistance(fields: &mut Fields<'_>) -> Option<EventBody> {
        let method = ResistanceMethod::parse_bytes(fields.text(1)??).ok()?;
        let result = ResistanceResult::parse_bytes(fields.text(2)??).ok()?;
        let titre_mu_per_ml = match fields.fixed64(3)? {
            None => None,
            Some(bits) => {
                let titre = f64::from_bits(bits);
                if !(titre.is_finite() && titre >= 0.0) {
                    return None;
                }
                // -0.0 is kept as 0.0, as the validator keeps it.
                Some(if titre == 0.0 { 0.0 } else { titre })
            }
        };
        Some(EventBody::ResistanceTested(ResistanceTested {
            method,
            result,
            titre_mu_per_ml,
        }))
    }
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
        recorded_by: recorded_by.into(),
        event: decode_event(payload)?,
    })
}

#[cfg(test)]
mod tests {
    /// A varint of ten bytes carries 64 bits: the tenth may be 0 or 1, as
    /// prost reads it; anything more is refused, by both.
    #[test]
    fn the_record_reader_refuses_an_overlong_varint_as_prost_does() {
        let mut longest = [0xff_u8; 10];
        longest[9] = 0x01;
        let mut reader = super::borrowed::Reader { bytes: &longest };
        assert_eq!(reader.varint(), Some(u64::MAX));
        assert!(reader.bytes.is_empty());
        assert_eq!(
            prost::encoding::decode_varint(&mut &longest[..]).ok(),
            Some(u64::MAX)
        );
        let mut overlong = longest;
        overlong[9] = 0x02;
        assert_eq!(super::borrowed::Reader { bytes: &overlong }.varint(), None);
        assert!(prost::encoding::decode_varint(&mut &overlong[..]).is_err());
    }

    use super::*;

    fn today() -> ClinicalDate {
        ClinicalDate::from_ymd(2026, 11, 25).unwrap()
    }

    const INJECTION: &str = r#"{"event_id":"e-0002","centre":"leeds","patient":"L-0001","occurred_on":"2017-02-01","type":"injection_administered","product":"onabotulinumtoxinA","total_units":200,"guidance":"emg","muscles":[{"muscle":"splenius_capitis","side":"left","units":80},{"muscle":"sternocleidomastoid","side":"right","units":60},{"muscle":"trapezius","side":"left","units":60}]}"#;

    /// Events of every type, with and without their optional fields, at
    /// zero and at large values, are stored as the very bytes prost writes.
    #[test]
    fn the_direct_storage_encoding_is_prosts_byte_for_byte() {
        let head = |id: &str, kind: &str| {
            format!(
                r#"{{"event_id":"{id}","centre":"salford-royal","patient":"P.1-x","occurred_on":"2017-05-01","type":"{kind}""#
            )
        };
        let mut lines = vec![INJECTION.to_owned()];
        for (birth, sex, onset) in [
            ("", "", ""),
            (
                r#","birth_year":1900"#,
                r#","sex":"female""#,
                r#","onset_year":2001"#,
            ),
            (r#","birth_year":1950"#, "", ""),
            ("", r#","sex":"unknown""#, r#","onset_year":1990"#),
        ] {
            lines.push(format!(
                "{}{birth}{sex}{onset}}}",
                head("r-1", "patient_registered")
            ));
        }
        for (product, units) in [("onabotulinumtoxinA", 1), ("abobotulinumtoxinA", 1000)] {
            for guidance in ["none", "emg", "ultrasound", "emg_ultrasound"] {
                lines.push(format!(
                    r#"{},"product":"{product}","total_units":{units},"guidance":"{guidance}","muscles":[{{"muscle":"platysma","side":"right","units":{units}}}]}}"#,
                    head("i-1", "injection_administered")
                ));
            }
        }
        for optional in [
            "",
            r#","percent_improvement":0,"benefit_weeks":0,"twstrs_total":0"#,
            r#","percent_improvement":100,"benefit_weeks":52,"twstrs_total":87"#,
            r#","benefit_weeks":7"#,
        ] {
            for rating in ["good", "suboptimal", "none"] {
                lines.push(format!(
                    r#"{},"injection_event_id":"e-0002","rating":"{rating}"{optional}}}"#,
                    head("a-1", "response_assessed")
                ));
            }
        }
        for method in [
            "frontalis",
            "unilateral_brow",
            "edb",
            "scm",
            "mhda",
            "mpa",
            "elisa",
        ] {
            for (result, titre) in [
                ("positive", r#","titre_mu_per_ml":12.5"#),
                ("negative", r#","titre_mu_per_ml":0"#),
                ("equivocal", ""),
            ] {
                lines.push(format!(
                    r#"{},"method":"{method}","result":"{result}"{titre}}}"#,
                    head("t-1", "resistance_tested")
                ));
            }
        }
        for target in [
            "dbs",
            "peripheral_denervation",
            "physiotherapy",
            "psychology",
            "other",
        ] {
            lines.push(format!(
                r#"{},"target":"{target}"}}"#,
                head("f-1", "referral_made")
            ));
        }
        let long_reason = "é".repeat(200);
        for reason in ["moved away", long_reason.as_str()] {
            lines.push(format!(
                r#"{},"reason":"{reason}"}}"#,
                head("d-1", "treatment_discontinued")
            ));
            lines.push(format!(
                r#"{},"target_event_id":"e-0002","reason":"{reason}"}}"#,
                head("v-1", "event_voided")
            ));
        }
        for line in &lines {
            let event = domain::ndjson::parse_line(line, today())
                .unwrap_or_else(|refusal| panic!("{line}: {refusal}"));
            assert_eq!(
                encode_event(&event),
                encode_event_via_message(&event),
                "{line}"
            );
        }
    }

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

    /// The prost path of `decode_event`, for comparing with the fast reader.
    fn decode_with_prost(bytes: &[u8]) -> Result<Event, String> {
        let message = v1::Event::decode(bytes).map_err(|error| error.to_string())?;
        validate_stored(raw_from_proto(message)).map_err(|refusal| refusal.to_string())
    }

    #[test]
    fn records_the_fast_reader_does_not_expect_go_through_prost() {
        let event = domain::ndjson::parse_line(INJECTION, today()).unwrap();
        let mut bytes = encode_event(&event).to_vec();
        // An unknown field 99 (varint 5), which prost skips.
        bytes.extend_from_slice(&[0x98, 0x06, 0x05]);
        assert!(borrowed::raw_event::<&[u8]>(&bytes).is_none());
        assert_eq!(decode_event(&bytes).unwrap(), event);
        // event_id twice: proto3 keeps the last.
        let mut bytes = encode_event(&event).to_vec();
        bytes.extend_from_slice(&[0x0a, 0x03, b'e', b'-', b'9']);
        assert_eq!(decode_event(&bytes).unwrap().event_id.as_str(), "e-9");
    }

    /// A decoding's outcome, errors as their messages (with their kind).
    fn outcome(result: Result<Event, DecodeError>) -> Result<Event, String> {
        result.map_err(|error| match error {
            DecodeError::Invalid(refusal) => format!("invalid: {refusal}"),
            DecodeError::Protobuf(error) => format!("protobuf: {error}"),
        })
    }

    /// Every string field of `event`'s record in turn with a byte that is
    /// not UTF-8: prost refuses such a record, and so must the fast path,
    /// for the same reason, although it reads strings as bytes.
    #[test]
    fn a_string_that_is_not_utf8_is_a_protobuf_error_in_every_field() {
        let lines = [
            INJECTION,
            r#"{"event_id":"e-0005","centre":"leeds","patient":"L-0001","occurred_on":"2017-02-01","type":"event_voided","target_event_id":"e-0001","reason":"entered twice"}"#,
            r#"{"event_id":"e-0006","centre":"leeds","patient":"L-0001","occurred_on":"2017-02-01","type":"patient_registered","sex":"female","birth_year":1950}"#,
        ];
        for line in &lines {
            let event = domain::ndjson::parse_line(line, today()).unwrap();
            let record = encode_event(&event).to_vec();
            let mut damaged_somewhere = 0;
            for at in 0..record.len() {
                let mut bytes = record.clone();
                bytes[at] = 0xff;
                let fast = outcome(decode_event(&bytes));
                assert_eq!(
                    fast,
                    outcome(decode_event_checked(&bytes)),
                    "{line} at {at}"
                );
                if fast.as_ref().is_err_and(|error| error.contains("UTF-8")) {
                    damaged_somewhere += 1;
                }
            }
            // Every byte of every string but the fixed-width date's, at
            // least: the test would prove nothing if none were reached.
            assert!(damaged_somewhere > 20, "{line}: {damaged_somewhere}");
        }
    }

    proptest::proptest! {
        /// The fast path (strings as bytes, validated once) decides exactly
        /// as the checked path, which reads strings as protobuf does:
        /// the same events accepted, the same refused for the same reasons.
        #[test]
        fn the_fast_path_decides_as_the_checked_path(
            line in 0..5usize,
            cut in 0..300usize,
            flips in proptest::collection::vec((0..300usize, proptest::prelude::any::<u8>()), 0..4),
            arbitrary in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let lines = [
                INJECTION.to_owned(),
                r#"{"event_id":"e-3","centre":"leeds","patient":"L-1","occurred_on":"2017-03-10","type":"response_assessed","injection_event_id":"e-2","rating":"good","percent_improvement":60}"#.to_owned(),
                r#"{"event_id":"e-4","centre":"leeds","patient":"L-1","occurred_on":"2017-03-10","type":"resistance_tested","method":"mhda","result":"positive","titre_mu_per_ml":1.5}"#.to_owned(),
                r#"{"event_id":"e-5","centre":"leeds","patient":"L-1","occurred_on":"2017-03-10","type":"event_voided","target_event_id":"e-2","reason":"entered twice, é"}"#.to_owned(),
                r#"{"event_id":"e-6","centre":"leeds","patient":"L-1","occurred_on":"2017-03-10","type":"patient_registered","birth_year":1950,"sex":"male","onset_year":1990}"#.to_owned(),
            ];
            let event = domain::ndjson::parse_line(&lines[line], today()).unwrap();
            let mut bytes = encode_event(&event).to_vec();
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            bytes.truncate(cut.min(bytes.len()));
            proptest::prop_assert_eq!(
                outcome(decode_event(&bytes)),
                outcome(decode_event_checked(&bytes))
            );
            proptest::prop_assert_eq!(
                outcome(decode_event(&arbitrary)),
                outcome(decode_event_checked(&arbitrary))
            );
        }

        #[test]
        fn the_fast_reader_agrees_with_prost_on_damaged_records(
            line in 0..3usize,
            cut in 0..200usize,
            flips in proptest::collection::vec((0..200usize, 0..=255u8), 0..4),
        ) {
            let lines = [
                INJECTION,
                r#"{"event_id":"e-3","centre":"leeds","patient":"L-1","occurred_on":"2017-03-10","type":"response_assessed","injection_event_id":"e-2","rating":"good","percent_improvement":60}"#,
                r#"{"event_id":"e-4","centre":"leeds","patient":"L-1","occurred_on":"2017-03-10","type":"resistance_tested","method":"mhda","result":"positive","titre_mu_per_ml":1.5}"#,
            ];
            let event = domain::ndjson::parse_line(lines[line], today()).unwrap();
            let mut bytes = encode_event(&event).to_vec();
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            bytes.truncate(cut.min(bytes.len()));
            let fast = decode_event(&bytes).map_err(|error| match error {
                DecodeError::Invalid(refusal) => refusal.to_string(),
                DecodeError::Protobuf(error) => error.to_string(),
            });
            let slow = decode_with_prost(&bytes);
            proptest::prop_assert_eq!(fast.is_ok(), slow.is_ok());
            if let (Ok(fast), Ok(slow)) = (&fast, &slow) {
                proptest::prop_assert_eq!(fast, slow);
            }
        }
    }

    /// The straight reader is the one a replay takes: it reads every
    /// record of a random cohort (all event types, optional fields given
    /// and not), as the same event the checked path builds. (Were it to
    /// give up on valid records, the property tests would still pass.)
    #[test]
    fn the_straight_reader_reads_every_record_of_a_cohort() {
        let mut types = std::collections::BTreeSet::new();
        for line in demodata::random_lines(&demodata::RandomSpec {
            patients: 300,
            centres: 4,
            seed: 11,
        }) {
            let event = domain::ndjson::parse_line(&line, today()).unwrap();
            let bytes = encode_event(&event);
            let straight = straight::event(&bytes);
            assert_eq!(straight.as_ref(), Some(&event), "{line}");
            assert_eq!(outcome(decode_event_checked(&bytes)), Ok(event.clone()));
            types.insert(event.event_type());
        }
        assert!(types.len() >= 6, "{types:?}");
        let long_reason = "é".repeat(500);
        for line in [
            format!(
                r#"{{"event_id":"e-5","centre":"leeds","patient":"L-1","occurred_on":"2017-03-10","type":"event_voided","target_event_id":"e-2","reason":"{long_reason}"}}"#
            ),
            format!(
                r#"{{"event_id":"e-5","centre":"leeds","patient":"L-1","occurred_on":"2017-03-10","type":"treatment_discontinued","reason":"{long_reason}"}}"#
            ),
            r#"{"event_id":"e-4","centre":"leeds","patient":"L-1","occurred_on":"2017-03-10","type":"resistance_tested","method":"mhda","result":"positive","titre_mu_per_ml":0}"#.to_owned(),
            r#"{"event_id":"e-6","centre":"leeds","patient":"L-1","occurred_on":"2017-03-10","type":"patient_registered"}"#.to_owned(),
            r#"{"event_id":"e-6","centre":"leeds","patient":"L-1","occurred_on":"2017-03-10","type":"patient_registered","birth_year":1950,"sex":"other","onset_year":1950}"#.to_owned(),
            r#"{"event_id":"e-3","centre":"leeds","patient":"L-1","occurred_on":"2017-03-10","type":"response_assessed","injection_event_id":"e-2","rating":"none","percent_improvement":0,"benefit_weeks":52,"twstrs_total":87}"#.to_owned(),
            r#"{"event_id":"f-1","centre":"leeds","patient":"L-1","occurred_on":"2017-03-10","type":"referral_made","target":"dbs"}"#.to_owned(),
        ] {
            let event = domain::ndjson::parse_line(&line, today()).unwrap();
            let bytes = encode_event(&event);
            assert_eq!(straight::event(&bytes).as_ref(), Some(&event), "{line}");
        }
    }

    proptest::proptest! {
        /// Whatever the straight reader accepts (damaged, cut or arbitrary
        /// bytes) the checked path accepts as the same event: it never
        /// decides a record the rest of `decode_event` would refuse.
        #[test]
        fn the_straight_reader_accepts_only_what_the_checked_path_accepts(
            line in 0..6usize,
            cut in 0..300usize,
            flips in proptest::collection::vec((0..300usize, proptest::prelude::any::<u8>()), 0..3),
            arbitrary in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let lines = [
                INJECTION,
                r#"{"event_id":"e-3","centre":"leeds","patient":"L-1","occurred_on":"2017-03-10","type":"response_assessed","injection_event_id":"e-2","rating":"good","percent_improvement":60,"benefit_weeks":12,"twstrs_total":40}"#,
                r#"{"event_id":"e-4","centre":"leeds","patient":"L-1","occurred_on":"2017-03-10","type":"resistance_tested","method":"mhda","result":"positive","titre_mu_per_ml":1.5}"#,
                r#"{"event_id":"e-5","centre":"leeds","patient":"L-1","occurred_on":"2017-03-10","type":"event_voided","target_event_id":"e-2","reason":"entered twice, é"}"#,
                r#"{"event_id":"e-6","centre":"leeds","patient":"L-1","occurred_on":"2017-03-10","type":"patient_registered","birth_year":1950,"sex":"male","onset_year":1990}"#,
                r#"{"event_id":"e-7","centre":"leeds","patient":"L-1","occurred_on":"2017-03-10","type":"treatment_discontinued","reason":"moved"}"#,
            ];
            let event = domain::ndjson::parse_line(lines[line], today()).unwrap();
            let mut bytes = encode_event(&event).to_vec();
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            bytes.truncate(cut.min(bytes.len()));
            for bytes in [&bytes, &arbitrary] {
                if let Some(straight) = straight::event(bytes) {
                    proptest::prop_assert_eq!(
                        outcome(decode_event_checked(bytes)),
                        Ok(straight.clone())
                    );
                    proptest::prop_assert_eq!(decode_with_prost(bytes), Ok(straight));
                }
            }
        }
    }

    #[test]
    fn a_recorded_event_carries_the_log_facts_on_the_wire() {
        let event = domain::ndjson::parse_line(INJECTION, today()).unwrap();
        let recorded =
            recorded_from_parts(7, 1_764_095_700_123_456, "clerk", &encode_event(&event)).unwrap();
        let message = v1::RecordedEvent::from(&recorded);
        assert_eq!(message.position, 7);
        assert_eq!(message.recorded_at, "2025-11-25T18:35:00.123456Z");
        assert_eq!(message.recorded_by, "clerk");
        assert_eq!(message.event, Some(v1::Event::from(&event)));
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
