//! The interchange file (`spec/events.md`, "Interchange file: NDJSON"): one
//! flat JSON object per line, read into a [`RawEvent`] and checked by the one
//! validator in [`crate::raw`], and written back in a canonical form.
//!
//! serde_json's `Value` silently keeps the last of two equal keys and forgets
//! whether `200` was written `200.0`, and the contract refuses both, so lines
//! are read through a small JSON tree of our own ([`Json`]) that keeps every
//! key in order and tells integers from other numbers. Strings without
//! escapes are borrowed from the line, so reading allocates little.
//!
//! The canonical line ([`to_line`]) is also the content identity of an event:
//! [`fingerprint`] hashes it, so two lines that are equal as parsed JSON (key
//! order and spacing aside) have the same fingerprint.

use std::{borrow::Cow, fmt, fmt::Write as _};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::{
    FieldError, Refusal,
    date::ClinicalDate,
    event::{Event, EventBody, RecordedEvent},
    raw::{RawEvent, RawField, RawMuscle, validate},
};

/// Reads one line of the interchange file into an event, or every reason it
/// is refused, each naming its field (`line` for a line that is not one JSON
/// object). Blank lines are the caller's to skip.
pub fn parse_line(line: &str, today: ClinicalDate) -> Result<Event, Refusal> {
    validate(raw_of_line(line)?, today)
}

/// Reads one line into a raw event without checking any rule of the
/// contract beyond the JSON shape (unknown fields, nulls, duplicate keys,
/// JSON types are recorded in the raw event for [`validate`] to report).
/// Fails only when the line is not one JSON object.
pub fn raw_of_line(line: &str) -> Result<RawEvent<Cow<'_, str>>, Refusal> {
    if line.starts_with('\u{feff}') {
        return Err(Refusal::single(
            "line",
            "starts with a byte order mark (U+FEFF): save the file as UTF-8 without a BOM",
        ));
    }
    let json: Json<'_> = serde_json::from_str(line)
        .map_err(|error| Refusal::single("line", json_error_reason(&error)))?;
    match json {
        Json::Object(members) => Ok(raw_of_members(members)),
        other => Err(Refusal::single(
            "line",
            format!("must be one JSON object, not {}", other.kind()),
        )),
    }
}

/// Why a line is not JSON, placed by its column: serde_json places an error
/// at "line 1 column N" of the one line it was given, which next to the
/// file's own line number (`FILE:57: line: ...`) reads as another line.
fn json_error_reason(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    match text.strip_suffix(&position) {
        Some(message) => format!("is not valid JSON: {message} at column {}", error.column()),
        None => format!("is not valid JSON: {text}"),
    }
}

/// The `event_id` of a line, if it has a string one, without validating the
/// rest: the duplicate and conflict check comes before every other, so it
/// must work on a line that is refused for other reasons.
pub fn event_id_of_line(line: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Peek<'a> {
        #[serde(borrow, default)]
        event_id: Option<Text<'a>>,
    }
    let peek: Peek<'_> = serde_json::from_str(line).ok()?;
    peek.event_id.map(|text| text.0.into_owned())
}

/// The canonical line of an event: envelope fields first, then the body
/// fields in the contract's order, optional fields left out when absent, no
/// spaces, no trailing newline.
pub fn to_line(event: &Event) -> String {
    let mut line = String::with_capacity(256);
    line.push('{');
    let mut object = ObjectWriter {
        out: &mut line,
        first: true,
    };
    write_event_fields(&mut object, event);
    line.push('}');
    line
}

/// The export form of a stored event: the server's `position`,
/// `recorded_at` (RFC 3339 UTC, microseconds) and `recorded_by` first, then
/// the canonical fields of the event.
pub fn recorded_to_line(recorded: &RecordedEvent) -> String {
    let mut line = String::with_capacity(320);
    line.push('{');
    let mut object = ObjectWriter {
        out: &mut line,
        first: true,
    };
    object.integer("position", recorded.position);
    object.string(
        "recorded_at",
        &rfc3339_from_micros(recorded.recorded_at_micros),
    );
    object.string("recorded_by", &recorded.recorded_by);
    write_event_fields(&mut object, &recorded.event);
    line.push('}');
    line
}

/// xxh3-128 of an event's canonical line: equal exactly when two events'
/// canonical lines are equal. Admission decides duplicates and conflicts with
/// the cheaper [`crate::admission::content_fingerprint`], which a property
/// test holds to this definition; this one stays as its reference.
pub fn fingerprint(event: &Event) -> u128 {
    xxhash_rust::xxh3::xxh3_128(to_line(event).as_bytes())
}

/// RFC 3339 UTC with microseconds and `Z`, e.g. `2026-11-25T18:35:00.000000Z`.
pub fn rfc3339_from_micros(micros: i64) -> String {
    const MICROS_PER_DAY: i64 = 86_400_000_000;
    let days = micros.div_euclid(MICROS_PER_DAY);
    let micros_of_day = micros.rem_euclid(MICROS_PER_DAY);
    // A clock reading lies well within the calendar `time` supports
    // (years -9999..=9999); a value beyond it is clamped to its ends rather
    // than failing an export.
    let date = i32::try_from(days)
        .ok()
        .and_then(ClinicalDate::from_days_since_epoch)
        .unwrap_or_else(|| {
            ClinicalDate::from_date(if days < 0 {
                time::Date::MIN
            } else {
                time::Date::MAX
            })
        })
        .as_date();
    let seconds_of_day = micros_of_day / 1_000_000;
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        date.year(),
        u8::from(date.month()),
        date.day(),
        seconds_of_day / 3600,
        seconds_of_day / 60 % 60,
        seconds_of_day % 60,
        micros_of_day % 1_000_000
    )
}

/// Writes `"key":value` pairs, with the commas between them.
struct ObjectWriter<'a> {
    out: &'a mut String,
    first: bool,
}

impl ObjectWriter<'_> {
    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        write_json_string(self.out, value);
    }

    fn integer(&mut self, key: &str, value: impl fmt::Display) {
        self.key(key);
        // Writing into a String cannot fail.
        let _ = write!(self.out, "{value}");
    }

    fn optional_integer(&mut self, key: &str, value: Option<impl fmt::Display>) {
        if let Some(value) = value {
            self.integer(key, value);
        }
    }
}

fn write_event_fields(object: &mut ObjectWriter<'_>, event: &Event) {
    object.string("event_id", event.event_id.as_str());
    object.string("centre", event.centre.as_str());
    object.string("patient", event.patient.as_str());
    object.string("occurred_on", &event.occurred_on.to_string());
    object.string("type", event.event_type().as_str());
    match &event.body {
        EventBody::PatientRegistered(body) => {
            object.optional_integer("birth_year", body.birth_year);
            if let Some(sex) = body.sex {
                object.string("sex", sex.as_str());
            }
            object.optional_integer("onset_year", body.onset_year);
        }
        EventBody::InjectionAdministered(body) => {
            object.string("product", body.product().as_str());
            object.integer("total_units", body.total_units());
            object.string("guidance", body.guidance().as_str());
            object.key("muscles");
            object.out.push('[');
            for (index, dose) in body.muscles().iter().enumerate() {
                if index > 0 {
                    object.out.push(',');
                }
                object.out.push('{');
                let mut entry = ObjectWriter {
                    out: object.out,
                    first: true,
                };
                entry.string("muscle", dose.muscle.as_str());
                entry.string("side", dose.side.as_str());
                entry.integer("units", dose.units);
                object.out.push('}');
            }
            object.out.push(']');
        }
        EventBody::ResponseAssessed(body) => {
            object.string("injection_event_id", body.injection_event_id.as_str());
            object.string("rating", body.rating.as_str());
            object.optional_integer("percent_improvement", body.percent_improvement);
            object.optional_integer("benefit_weeks", body.benefit_weeks);
            object.optional_integer("twstrs_total", body.twstrs_total);
        }
        EventBody::ResistanceTested(body) => {
            object.string("method", body.method.as_str());
            object.string("result", body.result.as_str());
            if let Some(titre) = body.titre_mu_per_ml {
                // Rust prints the shortest decimal that reads back as the
                // same f64, never with an exponent: valid JSON that
                // round-trips. Validation keeps the titre finite.
                object.integer("titre_mu_per_ml", titre);
            }
        }
        EventBody::ReferralMade(body) => {
            object.string("target", body.target.as_str());
        }
        EventBody::TreatmentDiscontinued(body) => {
            object.string("reason", &body.reason);
        }
        EventBody::EventVoided(body) => {
            object.string("target_event_id", body.target_event_id.as_str());
            object.string("reason", &body.reason);
        }
    }
}

/// Writes `value` as a JSON string: quotes, backslashes and control
/// characters escaped, everything else (any Unicode) as it is.
fn write_json_string(out: &mut String, value: &str) {
    out.push('"');
    for character in value.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            control if u32::from(control) < 0x20 => {
                // Writing into a String cannot fail.
                let _ = write!(out, "\\u{:04x}", u32::from(control));
            }
            other => out.push(other),
        }
    }
    out.push('"');
}

/// 2^63, the first number beyond every i64: a float at or beyond it (or
/// below its negative) is out of every integer range of the contract.
const TWO_TO_THE_63: f64 = 9_223_372_036_854_775_808.0;

/// Why a `null` is refused, for every field.
const NULL_REASON: &str = "null is not allowed: leave an optional field out instead";

/// A JSON value as written on the line: object members in order with
/// duplicates kept, integers apart from other numbers.
#[derive(Debug, Clone, PartialEq)]
enum Json<'a> {
    Null,
    Bool(bool),
    /// An integer literal that fits an i64.
    Integer(i64),
    /// An integer literal above i64::MAX that fits a u64.
    LargeInteger(u64),
    /// Any other number (a fraction or an exponent, or beyond u64).
    Float(f64),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl Json<'_> {
    /// The JSON type, for reasons ("must be a string, not an array").
    fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Integer(_) | Json::LargeInteger(_) | Json::Float(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

/// A string borrowed from the line when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(TextVisitor(std::marker::PhantomData))
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Ok(Json::Integer(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Ok(match i64::try_from(value) {
            Ok(value) => Json::Integer(value),
            Err(_) => Json::LargeInteger(value),
        })
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        Ok(Json::Float(value))
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Json::String(Cow::Borrowed(text)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Json::String(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
        Ok(Json::String(Cow::Owned(text)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(sequence.size_hint().unwrap_or(0).min(64));
        while let Some(item) = sequence.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // Members are kept as a list, duplicates and all, so the reader can
        // refuse a duplicated key instead of silently keeping one of them.
        let mut members = Vec::with_capacity(16);
        while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
            let value: Json<'de> = map.next_value()?;
            members.push((key, value));
        }
        Ok(Json::Object(members))
    }
}

/// What a member's key is, in a given object.
enum Member {
    /// A field of the contract: its value goes into the raw event.
    Known,
    /// A field added by the server: refused in an import file.
    Server,
    /// Anything else: refused, at any depth.
    Unknown,
}

/// The fields of an event line.
fn classify_event_member(key: &str) -> Member {
    match key {
        "event_id" | "centre" | "patient" | "occurred_on" | "type" => Member::Known,
        "position" | "recorded_at" | "recorded_by" => Member::Server,
        other if crate::raw::is_body_field(other) => Member::Known,
        _ => Member::Unknown,
    }
}

/// Walks the members of an object: refuses unknown and server fields and
/// duplicated keys (naming them with `prefix`), and hands each first
/// occurrence of a known key to `take`, or, for a duplicated known key,
/// a `Malformed` reason instead of a value.
fn walk_members<'a>(
    members: Vec<(Cow<'a, str>, Json<'a>)>,
    prefix: &str,
    classify: impl Fn(&str) -> Member,
    source_errors: &mut Vec<FieldError>,
    mut take: impl FnMut(&str, Result<Json<'a>, String>),
) {
    let keys: Vec<Cow<'a, str>> = members.iter().map(|(key, _)| key.clone()).collect();
    for (index, (key, value)) in members.into_iter().enumerate() {
        if keys[..index].contains(&key) {
            // Reported at its first occurrence.
            continue;
        }
        let duplicated = keys[index + 1..].contains(&key);
        let field = format!("{prefix}{key}");
        match classify(&key) {
            Member::Known if duplicated => take(
                &key,
                Err("duplicate key: the field appears more than once".to_owned()),
            ),
            Member::Known => take(&key, Ok(value)),
            Member::Server => source_errors.push(FieldError::new(
                field,
                "is a field the server adds; an import file must not carry it",
            )),
            Member::Unknown => source_errors.push(FieldError::new(field, "unknown field")),
        }
    }
}

fn raw_of_members<'a>(members: Vec<(Cow<'a, str>, Json<'a>)>) -> RawEvent<Cow<'a, str>> {
    let mut raw = RawEvent::default();
    let mut source_errors = Vec::new();
    walk_members(
        members,
        "",
        classify_event_member,
        &mut source_errors,
        |key, value| match key {
            "event_id" => raw.event_id = string_field(value),
            "centre" => raw.centre = string_field(value),
            "patient" => raw.patient = string_field(value),
            "occurred_on" => raw.occurred_on = string_field(value),
            "type" => raw.event_type = string_field(value),
            "birth_year" => raw.birth_year = integer_field(value),
            "sex" => raw.sex = string_field(value),
            "onset_year" => raw.onset_year = integer_field(value),
            "product" => raw.product = string_field(value),
            "total_units" => raw.total_units = integer_field(value),
            "guidance" => raw.guidance = string_field(value),
            "muscles" => raw.muscles = muscles_field(value),
            "injection_event_id" => raw.injection_event_id = string_field(value),
            "rating" => raw.rating = string_field(value),
            "percent_improvement" => raw.percent_improvement = integer_field(value),
            "benefit_weeks" => raw.benefit_weeks = integer_field(value),
            "twstrs_total" => raw.twstrs_total = integer_field(value),
            "method" => raw.method = string_field(value),
            "result" => raw.result = string_field(value),
            "titre_mu_per_ml" => raw.titre_mu_per_ml = number_field(value),
            "target" => raw.target = string_field(value),
            "reason" => raw.reason = string_field(value),
            "target_event_id" => raw.target_event_id = string_field(value),
            // `classify_event_member` knows exactly the names above.
            _ => {}
        },
    );
    raw.source_errors = source_errors;
    raw
}

fn string_field(value: Result<Json<'_>, String>) -> RawField<Cow<'_, str>> {
    match value {
        Ok(Json::String(text)) => RawField::Present(text),
        Ok(Json::Null) => RawField::Malformed(NULL_REASON.to_owned()),
        Ok(other) => RawField::Malformed(format!("must be a string, not {}", other.kind())),
        Err(reason) => RawField::Malformed(reason),
    }
}

fn integer_field(value: Result<Json<'_>, String>) -> RawField<i64> {
    match value {
        Ok(Json::Integer(integer)) => RawField::Present(integer),
        Ok(Json::LargeInteger(integer)) => RawField::Malformed(format!("{integer} is too large")),
        // serde_json reads an integer literal beyond u64 (or below i64) as a
        // float; what matters then is that it is beyond every range of the
        // contract, and its float value is not what was written.
        Ok(Json::Float(number)) if number >= TWO_TO_THE_63 => {
            RawField::Malformed("is too large".to_owned())
        }
        Ok(Json::Float(number)) if number < -TWO_TO_THE_63 => {
            RawField::Malformed("is too small".to_owned())
        }
        Ok(Json::Float(number)) => RawField::Malformed(format!(
            "must be an integer literal (like 200, not 200.0), got {number}"
        )),
        Ok(Json::Null) => RawField::Malformed(NULL_REASON.to_owned()),
        Ok(other) => RawField::Malformed(format!("must be an integer, not {}", other.kind())),
        Err(reason) => RawField::Malformed(reason),
    }
}

fn number_field(value: Result<Json<'_>, String>) -> RawField<f64> {
    match value {
        // Any JSON number is a number here; the conversions are exact for
        // every titre a laboratory reports.
        Ok(Json::Integer(integer)) => RawField::Present(integer as f64),
        Ok(Json::LargeInteger(integer)) => RawField::Present(integer as f64),
        Ok(Json::Float(number)) => RawField::Present(number),
        Ok(Json::Null) => RawField::Malformed(NULL_REASON.to_owned()),
        Ok(other) => RawField::Malformed(format!("must be a number, not {}", other.kind())),
        Err(reason) => RawField::Malformed(reason),
    }
}

fn muscles_field(
    value: Result<Json<'_>, String>,
) -> RawField<Vec<RawField<RawMuscle<Cow<'_, str>>>>> {
    match value {
        Ok(Json::Array(items)) => RawField::Present(
            items
                .into_iter()
                .enumerate()
                .map(|(index, item)| muscle_entry(index, item))
                .collect(),
        ),
        Ok(Json::Null) => RawField::Malformed(NULL_REASON.to_owned()),
        Ok(other) => RawField::Malformed(format!(
            "must be an array of {{muscle, side, units}} objects, not {}",
            other.kind()
        )),
        Err(reason) => RawField::Malformed(reason),
    }
}

fn muscle_entry(index: usize, item: Json<'_>) -> RawField<RawMuscle<Cow<'_, str>>> {
    let members = match item {
        Json::Object(members) => members,
        Json::Null => return RawField::Malformed(NULL_REASON.to_owned()),
        other => {
            return RawField::Malformed(format!(
                "must be a {{muscle, side, units}} object, not {}",
                other.kind()
            ));
        }
    };
    let mut muscle = RawMuscle::default();
    let mut source_errors = Vec::new();
    walk_members(
        members,
        &format!("muscles[{index}]."),
        |key| match key {
            "muscle" | "side" | "units" => Member::Known,
            _ => Member::Unknown,
        },
        &mut source_errors,
        |key, value| match key {
            "muscle" => muscle.muscle = string_field(value),
            "side" => muscle.side = string_field(value),
            "units" => muscle.units = integer_field(value),
            _ => {}
        },
    );
    muscle.source_errors = source_errors;
    RawField::Present(muscle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_duplicate_keys_and_tells_integers_from_floats() {
        let json: Json<'_> = serde_json::from_str(r#"{"a":1,"a":2.0,"b":"x"}"#).unwrap();
        let Json::Object(members) = json else {
            panic!("not an object")
        };
        assert_eq!(members.len(), 3);
        assert_eq!(members[0].1, Json::Integer(1));
        assert_eq!(members[1].1, Json::Float(2.0));
        assert!(matches!(members[2].1, Json::String(Cow::Borrowed("x"))));
    }

    #[test]
    fn escapes_strings_as_json() {
        let mut out = String::new();
        write_json_string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn formats_recorded_at_in_utc_with_microseconds() {
        assert_eq!(rfc3339_from_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_from_micros(1_764_095_700_123_456),
            "2025-11-25T18:35:00.123456Z"
        );
        assert_eq!(rfc3339_from_micros(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn peeks_the_event_id_of_any_object_line() {
        assert_eq!(
            event_id_of_line(r#"{"x":[1,{"y":null}],"event_id":"e-1","total_units":2.5}"#),
            Some("e-1".to_owned())
        );
        assert_eq!(event_id_of_line(r#"{"event_id":5}"#), None);
        assert_eq!(event_id_of_line("not json"), None);
    }
}
