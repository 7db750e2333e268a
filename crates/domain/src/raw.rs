//! The one place where input becomes an [`Event`]: a raw, unvalidated event
//! (strings, integers, options) that both the NDJSON parser and the proto
//! conversion fill, and [`validate`], which checks every rule of
//! `spec/events.md` that needs no log state and returns every reason at once.
//!
//! Keeping a single validator means a line of the interchange file and a gRPC
//! message are refused for exactly the same reasons, with the same field
//! names (`muscles[1].units`, `occurred_on`, `type`, …). The checks against
//! the log (duplicates, registration, references) live in
//! [`crate::admission`].

use crate::{
    FieldError, Refusal,
    date::ClinicalDate,
    event::{
        Event, EventBody, EventType, EventVoided, Guidance, InjectionAdministered, Muscle,
        MuscleDose, PatientRegistered, Product, ReferralMade, ReferralTarget, ResistanceMethod,
        ResistanceResult, ResistanceTested, ResponseAssessed, Sex, Side, TreatmentDiscontinued,
        check_injection,
    },
    ids::{Centre, EventId, Pseudonym},
};

/// The earliest birth or onset year the contract accepts.
pub const EARLIEST_YEAR: i64 = 1900;

/// The longest free-text `reason`, in characters.
pub const MAXIMUM_REASON_CHARS: usize = 500;

/// One field of a raw event, as the source gave it.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum RawField<T> {
    /// The source does not carry the field.
    #[default]
    Absent,
    /// The source carries a value of the right shape, not yet checked.
    Present(T),
    /// The source carries the field but in a form that cannot be read (a
    /// `null`, a string where an integer belongs, a duplicated key, …); the
    /// text says why, lowercase.
    Malformed(String),
}

impl<T> RawField<T> {
    /// True unless the field is absent.
    pub fn is_given(&self) -> bool {
        !matches!(self, RawField::Absent)
    }

    /// `Present` when there is a value, `Absent` otherwise.
    pub fn from_option(value: Option<T>) -> Self {
        match value {
            Some(value) => RawField::Present(value),
            None => RawField::Absent,
        }
    }
}

/// One entry of `muscles`, unvalidated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawMuscle {
    pub muscle: RawField<String>,
    pub side: RawField<String>,
    pub units: RawField<i64>,
    /// Reasons found inside the entry that belong to none of its fields
    /// (unknown fields), already named with their full path.
    pub source_errors: Vec<FieldError>,
}

/// An event as its source states it, before any rule is checked. Body fields
/// of every event type sit side by side, as in the interchange file; a field
/// that belongs to another event type than `type` is refused as unknown.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawEvent {
    pub event_id: RawField<String>,
    pub centre: RawField<String>,
    pub patient: RawField<String>,
    pub occurred_on: RawField<String>,
    /// The `type` field.
    pub event_type: RawField<String>,

    // patient_registered
    pub birth_year: RawField<i64>,
    pub sex: RawField<String>,
    pub onset_year: RawField<i64>,

    // injection_administered
    pub product: RawField<String>,
    pub total_units: RawField<i64>,
    pub guidance: RawField<String>,
    /// Each entry is `Malformed` when it is not an object at all.
    pub muscles: RawField<Vec<RawField<RawMuscle>>>,

    // response_assessed
    pub injection_event_id: RawField<String>,
    pub rating: RawField<String>,
    pub percent_improvement: RawField<i64>,
    pub benefit_weeks: RawField<i64>,
    pub twstrs_total: RawField<i64>,

    // resistance_tested
    pub method: RawField<String>,
    pub result: RawField<String>,
    pub titre_mu_per_ml: RawField<f64>,

    // referral_made
    pub target: RawField<String>,

    // treatment_discontinued and event_voided
    pub reason: RawField<String>,

    // event_voided
    pub target_event_id: RawField<String>,

    /// Reasons the source found before validation and that belong to no
    /// field above: unknown fields (at any depth), server fields, syntax.
    pub source_errors: Vec<FieldError>,
}

/// The body fields of every event type, in the contract's order. A field
/// given for another type than its own is refused as not being a field of
/// that type.
const BODY_FIELDS: &[(&str, EventType)] = &[
    ("birth_year", EventType::PatientRegistered),
    ("sex", EventType::PatientRegistered),
    ("onset_year", EventType::PatientRegistered),
    ("product", EventType::InjectionAdministered),
    ("total_units", EventType::InjectionAdministered),
    ("guidance", EventType::InjectionAdministered),
    ("muscles", EventType::InjectionAdministered),
    ("injection_event_id", EventType::ResponseAssessed),
    ("rating", EventType::ResponseAssessed),
    ("percent_improvement", EventType::ResponseAssessed),
    ("benefit_weeks", EventType::ResponseAssessed),
    ("twstrs_total", EventType::ResponseAssessed),
    ("method", EventType::ResistanceTested),
    ("result", EventType::ResistanceTested),
    ("titre_mu_per_ml", EventType::ResistanceTested),
    ("target", EventType::ReferralMade),
    ("reason", EventType::TreatmentDiscontinued),
    ("reason", EventType::EventVoided),
    ("target_event_id", EventType::EventVoided),
];

/// True when `name` is the name of a body field of some event type.
pub fn is_body_field(name: &str) -> bool {
    BODY_FIELDS.iter().any(|(field, _)| *field == name)
}

impl RawEvent {
    /// Whether the body field `name` is given (present or malformed).
    fn body_field_given(&self, name: &str) -> bool {
        match name {
            "birth_year" => self.birth_year.is_given(),
            "sex" => self.sex.is_given(),
            "onset_year" => self.onset_year.is_given(),
            "product" => self.product.is_given(),
            "total_units" => self.total_units.is_given(),
            "guidance" => self.guidance.is_given(),
            "muscles" => self.muscles.is_given(),
            "injection_event_id" => self.injection_event_id.is_given(),
            "rating" => self.rating.is_given(),
            "percent_improvement" => self.percent_improvement.is_given(),
            "benefit_weeks" => self.benefit_weeks.is_given(),
            "twstrs_total" => self.twstrs_total.is_given(),
            "method" => self.method.is_given(),
            "result" => self.result.is_given(),
            "titre_mu_per_ml" => self.titre_mu_per_ml.is_given(),
            "target" => self.target.is_given(),
            "reason" => self.reason.is_given(),
            "target_event_id" => self.target_event_id.is_given(),
            _ => false,
        }
    }
}

/// Checks every rule of the contract that needs no log state, with "today"
/// bounding `occurred_on` (up to today + 1 day) and the birth and onset years
/// (up to today's year). Returns every reason at once.
pub fn validate(raw: RawEvent, today: ClinicalDate) -> Result<Event, Refusal> {
    Validator::new(Some(today)).event(raw)
}

/// Like [`validate`], but without the bounds that depend on "today": for
/// events read back from the log, which were checked against the day they
/// were written. Every other rule still holds, so a damaged record is still
/// refused rather than trusted.
pub fn validate_stored(raw: RawEvent) -> Result<Event, Refusal> {
    Validator::new(None).event(raw)
}

/// Collects reasons while a raw event is read.
struct Validator {
    today: Option<ClinicalDate>,
    reasons: Vec<FieldError>,
}

impl Validator {
    fn new(today: Option<ClinicalDate>) -> Self {
        Self {
            today,
            reasons: Vec::new(),
        }
    }

    fn refuse(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.reasons.push(FieldError::new(field, reason));
    }

    /// The value of a required field, or `None` after recording why not.
    fn required<T>(&mut self, field: &str, value: RawField<T>) -> Option<T> {
        match value {
            RawField::Present(value) => Some(value),
            RawField::Absent => {
                self.refuse(field, "is required");
                None
            }
            RawField::Malformed(reason) => {
                self.refuse(field, reason);
                None
            }
        }
    }

    /// `Ok(None)` when absent, `Ok(Some)` when present, `Err` after recording
    /// why a given value cannot be read.
    fn optional<T>(&mut self, field: &str, value: RawField<T>) -> Result<Option<T>, ()> {
        match value {
            RawField::Present(value) => Ok(Some(value)),
            RawField::Absent => Ok(None),
            RawField::Malformed(reason) => {
                self.refuse(field, reason);
                Err(())
            }
        }
    }

    /// Parses a required string field with `parse`, recording the refusal.
    fn required_parsed<T>(
        &mut self,
        field: &str,
        value: RawField<String>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.required(field, value)?;
        match parse(&text) {
            Ok(parsed) => Some(parsed),
            Err(reason) => {
                self.refuse(field, reason);
                None
            }
        }
    }

    /// Parses an optional string field; `Err` means given but refused.
    fn optional_parsed<T>(
        &mut self,
        field: &str,
        value: RawField<String>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ()> {
        let Some(text) = self.optional(field, value)? else {
            return Ok(None);
        };
        match parse(&text) {
            Ok(parsed) => Ok(Some(parsed)),
            Err(reason) => {
                self.refuse(field, reason);
                Err(())
            }
        }
    }

    /// Checks an integer against an inclusive range; `Err` means refused.
    fn in_range(&mut self, field: &str, value: i64, low: i64, high: i64) -> Result<i64, ()> {
        if (low..=high).contains(&value) {
            Ok(value)
        } else {
            self.refuse(
                field,
                format!("{value} is outside the allowed range {low} to {high}"),
            );
            Err(())
        }
    }

    /// An optional integer in an inclusive range, as a `u8` (every small
    /// range of the contract fits one).
    fn optional_small(
        &mut self,
        field: &str,
        value: RawField<i64>,
        high: u8,
    ) -> Result<Option<u8>, ()> {
        let Some(value) = self.optional(field, value)? else {
            return Ok(None);
        };
        let value = self.in_range(field, value, 0, i64::from(high))?;
        // The range check above keeps the value within 0..=high, a u8.
        u8::try_from(value).map(Some).map_err(|_| ())
    }

    fn reason_text(&mut self, value: RawField<String>) -> Option<String> {
        let text = self.required("reason", value)?;
        let length = text.chars().count();
        if length == 0 || length > MAXIMUM_REASON_CHARS {
            self.refuse(
                "reason",
                format!("must be 1 to {MAXIMUM_REASON_CHARS} characters, got {length}"),
            );
            return None;
        }
        Some(text)
    }

    fn event(mut self, mut raw: RawEvent) -> Result<Event, Refusal> {
        let source_errors = std::mem::take(&mut raw.source_errors);

        let event_id =
            self.required_parsed("event_id", std::mem::take(&mut raw.event_id), |text| {
                EventId::parse(text)
            });
        let centre = self.required_parsed("centre", std::mem::take(&mut raw.centre), |text| {
            Centre::parse(text)
        });
        let patient = self.required_parsed("patient", std::mem::take(&mut raw.patient), |text| {
            Pseudonym::parse(text)
        });
        let today = self.today;
        let occurred_on = self.required_parsed(
            "occurred_on",
            std::mem::take(&mut raw.occurred_on),
            |text| match today {
                Some(today) => ClinicalDate::parse_clinical(text, today),
                None => ClinicalDate::parse(text),
            },
        );
        let event_type =
            self.required_parsed("type", std::mem::take(&mut raw.event_type), |text| {
                EventType::parse(text)
            });

        let body = match event_type {
            Some(event_type) => {
                for (index, (field, _)) in BODY_FIELDS.iter().enumerate() {
                    // `reason` is listed once per type that has it: judge a name once.
                    let seen_before = BODY_FIELDS[..index].iter().any(|(name, _)| name == field);
                    let belongs = BODY_FIELDS
                        .iter()
                        .any(|(name, kind)| name == field && *kind == event_type);
                    if !seen_before && !belongs && raw.body_field_given(field) {
                        self.refuse(
                            *field,
                            format!("unknown field: it is not a field of a {event_type} event"),
                        );
                    }
                }
                self.body(event_type, raw)
            }
            None => None,
        };

        self.reasons.extend(source_errors);
        match (event_id, centre, patient, occurred_on, body) {
            (Some(event_id), Some(centre), Some(patient), Some(occurred_on), Some(body))
                if self.reasons.is_empty() =>
            {
                Ok(Event {
                    event_id,
                    centre,
                    patient,
                    occurred_on,
                    body,
                })
            }
            _ => {
                if self.reasons.is_empty() {
                    // Every path that yields None records a reason; this
                    // keeps a refusal from ever being empty all the same.
                    self.refuse("event", "is not a valid event");
                }
                Err(Refusal::from(self.reasons))
            }
        }
    }

    fn body(&mut self, event_type: EventType, raw: RawEvent) -> Option<EventBody> {
        match event_type {
            EventType::PatientRegistered => self.patient_registered(raw),
            EventType::InjectionAdministered => self.injection_administered(raw),
            EventType::ResponseAssessed => self.response_assessed(raw),
            EventType::ResistanceTested => self.resistance_tested(raw),
            EventType::ReferralMade => {
                let target = self.required_parsed("target", raw.target, ReferralTarget::parse)?;
                Some(EventBody::ReferralMade(ReferralMade { target }))
            }
            EventType::TreatmentDiscontinued => {
                let reason = self.reason_text(raw.reason)?;
                Some(EventBody::TreatmentDiscontinued(TreatmentDiscontinued {
                    reason,
                }))
            }
            EventType::EventVoided => {
                let target_event_id =
                    self.required_parsed("target_event_id", raw.target_event_id, EventId::parse);
                let reason = self.reason_text(raw.reason);
                Some(EventBody::EventVoided(EventVoided {
                    target_event_id: target_event_id?,
                    reason: reason?,
                }))
            }
        }
    }

    fn patient_registered(&mut self, raw: RawEvent) -> Option<EventBody> {
        // Without a "today" (a stored event), the year bound is the one that
        // held when it was written: no upper bound is checked again.
        let latest_year = self.today.map_or(i64::MAX, |today| i64::from(today.year()));
        let birth_year = self
            .optional("birth_year", raw.birth_year)
            .and_then(|year| match year {
                Some(year) => self
                    .in_range("birth_year", year, EARLIEST_YEAR, latest_year)
                    .map(Some),
                None => Ok(None),
            });
        let sex = self.optional_parsed("sex", raw.sex, Sex::parse);
        let onset_year = self
            .optional("onset_year", raw.onset_year)
            .and_then(|year| match year {
                Some(year) => self
                    .in_range("onset_year", year, EARLIEST_YEAR, latest_year)
                    .map(Some),
                None => Ok(None),
            });
        if let (Ok(Some(birth)), Ok(Some(onset))) = (birth_year, onset_year)
            && onset < birth
        {
            self.refuse(
                "onset_year",
                format!("{onset} is before the birth year {birth}"),
            );
            return None;
        }
        Some(EventBody::PatientRegistered(PatientRegistered {
            birth_year: year_as_i32(birth_year.ok()?),
            sex: sex.ok()?,
            onset_year: year_as_i32(onset_year.ok()?),
        }))
    }

    fn injection_administered(&mut self, raw: RawEvent) -> Option<EventBody> {
        let product = self.required_parsed("product", raw.product, Product::parse);
        let total_units = self
            .required("total_units", raw.total_units)
            .and_then(|units| self.units("total_units", units));
        let guidance = self.required_parsed("guidance", raw.guidance, Guidance::parse);
        let entries = self.required("muscles", raw.muscles);

        let mut doses = Vec::with_capacity(entries.as_ref().map_or(0, Vec::len));
        let mut every_dose_readable = entries.is_some();
        for (index, entry) in entries.into_iter().flatten().enumerate() {
            match self.muscle_dose(index, entry) {
                Some(dose) => doses.push(dose),
                None => every_dose_readable = false,
            }
        }

        if every_dose_readable {
            // The cross-field rules are written once, in `check_injection`.
            // When the product or the total cannot be read, check what still
            // can be (muscles present, each once, units > 0) and leave out
            // the reasons about a total or maximum we do not know.
            let sum: u64 = doses.iter().map(|dose| u64::from(dose.units)).sum();
            let known_total = total_units.unwrap_or(u32::try_from(sum).unwrap_or(u32::MAX));
            let mut reasons = Vec::new();
            check_injection(
                product.unwrap_or(Product::RimabotulinumtoxinB),
                known_total,
                &doses,
                &mut reasons,
            );
            let total_is_known = product.is_some() && total_units.is_some();
            self.reasons.extend(reasons.into_iter().filter(|reason| {
                total_is_known
                    || (reason.field != "total_units"
                        && !(reason.field == "muscles" && reason.reason.contains("add up")))
            }));
        }

        let injection =
            InjectionAdministered::new(product?, total_units?, guidance?, doses).ok()?;
        Some(EventBody::InjectionAdministered(injection))
    }

    /// Reads a count of units: a positive integer that fits the domain's
    /// `u32`. Zero passes here so the shared injection check reports it once.
    fn units(&mut self, field: &str, units: i64) -> Option<u32> {
        if units < 0 {
            self.refuse(field, format!("must be an integer > 0, got {units}"));
            return None;
        }
        match u32::try_from(units) {
            Ok(units) => Some(units),
            Err(_) => {
                self.refuse(field, format!("{units} is too large"));
                None
            }
        }
    }

    fn muscle_dose(&mut self, index: usize, entry: RawField<RawMuscle>) -> Option<MuscleDose> {
        let mut entry = self.required(&format!("muscles[{index}]"), entry)?;
        self.reasons.append(&mut entry.source_errors);
        let muscle = self.required_parsed(
            &format!("muscles[{index}].muscle"),
            entry.muscle,
            Muscle::parse,
        );
        let side = self.required_parsed(&format!("muscles[{index}].side"), entry.side, Side::parse);
        let units_field = format!("muscles[{index}].units");
        let units = self
            .required(&units_field, entry.units)
            .and_then(|units| self.units(&units_field, units));
        Some(MuscleDose {
            muscle: muscle?,
            side: side?,
            units: units?,
        })
    }

    fn response_assessed(&mut self, raw: RawEvent) -> Option<EventBody> {
        let injection_event_id =
            self.required_parsed("injection_event_id", raw.injection_event_id, EventId::parse);
        let rating = self.required_parsed("rating", raw.rating, crate::event::Rating::parse);
        let percent_improvement =
            self.optional_small("percent_improvement", raw.percent_improvement, 100);
        let benefit_weeks = self.optional_small("benefit_weeks", raw.benefit_weeks, 52);
        let twstrs_total = self.optional_small("twstrs_total", raw.twstrs_total, 87);
        Some(EventBody::ResponseAssessed(ResponseAssessed {
            injection_event_id: injection_event_id?,
            rating: rating?,
            percent_improvement: percent_improvement.ok()?,
            benefit_weeks: benefit_weeks.ok()?,
            twstrs_total: twstrs_total.ok()?,
        }))
    }

    fn resistance_tested(&mut self, raw: RawEvent) -> Option<EventBody> {
        let method = self.required_parsed("method", raw.method, ResistanceMethod::parse);
        let result = self.required_parsed("result", raw.result, ResistanceResult::parse);
        let titre = match self.optional("titre_mu_per_ml", raw.titre_mu_per_ml) {
            Ok(Some(titre)) if titre.is_finite() && titre >= 0.0 => {
                // -0.0 and 0.0 are the same titre; keep one spelling so the
                // canonical line (and its fingerprint) is unique.
                Ok(Some(if titre == 0.0 { 0.0 } else { titre }))
            }
            Ok(Some(titre)) => {
                self.refuse(
                    "titre_mu_per_ml",
                    format!("must be a finite number >= 0, got {titre}"),
                );
                Err(())
            }
            Ok(None) => Ok(None),
            Err(()) => Err(()),
        };
        Some(EventBody::ResistanceTested(ResistanceTested {
            method: method?,
            result: result?,
            titre_mu_per_ml: titre.ok()?,
        }))
    }
}

/// A year already checked to lie in 1900..=today's year, as the domain's i32.
fn year_as_i32(year: Option<i64>) -> Option<i32> {
    // A stored event is checked against no upper bound; a year beyond i32
    // cannot come from the proto (int32) nor from a line checked on writing.
    year.map(|year| i32::try_from(year).unwrap_or(i32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> ClinicalDate {
        ClinicalDate::from_ymd(2026, 11, 25).unwrap()
    }

    fn envelope(event_type: &str) -> RawEvent {
        RawEvent {
            event_id: RawField::Present("e-1".into()),
            centre: RawField::Present("leeds".into()),
            patient: RawField::Present("L-0001".into()),
            occurred_on: RawField::Present("2020-01-01".into()),
            event_type: RawField::Present(event_type.into()),
            ..RawEvent::default()
        }
    }

    #[test]
    fn a_minimal_registration_is_valid() {
        let event = validate(envelope("patient_registered"), today()).unwrap();
        assert_eq!(event.event_type(), EventType::PatientRegistered);
    }

    #[test]
    fn an_empty_raw_event_names_every_required_envelope_field() {
        let refusal = validate(RawEvent::default(), today()).unwrap_err();
        let fields: Vec<_> = refusal.reasons.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(
            fields,
            ["event_id", "centre", "patient", "occurred_on", "type"]
        );
    }

    #[test]
    fn stored_events_skip_only_the_today_bounds() {
        let mut raw = envelope("patient_registered");
        raw.occurred_on = RawField::Present("2030-01-01".into());
        raw.birth_year = RawField::Present(2029);
        assert!(validate(raw.clone(), today()).is_err());
        assert!(validate_stored(raw.clone()).is_ok());
        raw.birth_year = RawField::Present(1899);
        assert!(validate_stored(raw).is_err());
    }

    #[test]
    fn unreadable_total_still_checks_the_muscles() {
        let mut raw = envelope("injection_administered");
        raw.product = RawField::Present("onabotulinumtoxinA".into());
        raw.total_units = RawField::Malformed("must be an integer".into());
        raw.guidance = RawField::Present("emg".into());
        let dose = RawMuscle {
            muscle: RawField::Present("trapezius".into()),
            side: RawField::Present("left".into()),
            units: RawField::Present(10),
            source_errors: Vec::new(),
        };
        raw.muscles = RawField::Present(vec![
            RawField::Present(dose.clone()),
            RawField::Present(dose),
        ]);
        let refusal = validate(raw, today()).unwrap_err();
        let fields: Vec<_> = refusal.reasons.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(fields, ["total_units", "muscles[1]"]);
    }
}
