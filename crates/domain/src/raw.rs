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
    date::{ClinicalDate, EARLIEST},
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
pub struct RawMuscle<S = String> {
    pub muscle: RawField<S>,
    pub side: RawField<S>,
    pub units: RawField<i64>,
    /// Reasons found inside the entry that belong to none of its fields
    /// (unknown fields), already named with their full path.
    pub source_errors: Vec<FieldError>,
}

/// An event as its source states it, before any rule is checked. Body fields
/// of every event type sit side by side, as in the interchange file; a field
/// that belongs to another event type than `type` is refused as unknown.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawEvent<S = String> {
    pub event_id: RawField<S>,
    pub centre: RawField<S>,
    pub patient: RawField<S>,
    pub occurred_on: RawField<S>,
    /// The `type` field.
    pub event_type: RawField<S>,

    // patient_registered
    pub birth_year: RawField<i64>,
    pub sex: RawField<S>,
    pub onset_year: RawField<i64>,

    // injection_administered
    pub product: RawField<S>,
    pub total_units: RawField<i64>,
    pub guidance: RawField<S>,
    /// Each entry is `Malformed` when it is not an object at all.
    pub muscles: RawField<Vec<RawField<RawMuscle<S>>>>,

    // response_assessed
    pub injection_event_id: RawField<S>,
    pub rating: RawField<S>,
    pub percent_improvement: RawField<i64>,
    pub benefit_weeks: RawField<i64>,
    pub twstrs_total: RawField<i64>,

    // resistance_tested
    pub method: RawField<S>,
    pub result: RawField<S>,
    pub titre_mu_per_ml: RawField<f64>,

    // referral_made
    pub target: RawField<S>,

    // treatment_discontinued and event_voided
    pub reason: RawField<S>,

    // event_voided
    pub target_event_id: RawField<S>,

    /// Reasons the source found before validation and that belong to no
    /// field above: unknown fields (at any depth), server fields, syntax.
    pub source_errors: Vec<FieldError>,
}

/// The body fields of every event type, in the contract's order, each with
/// the types it belongs to. A field given for another type is refused as not
/// being a field of that type. The order is that of
/// [`RawEvent::body_fields_given`].
const BODY_FIELDS: [(&str, &[EventType]); 18] = [
    ("birth_year", &[EventType::PatientRegistered]),
    ("sex", &[EventType::PatientRegistered]),
    ("onset_year", &[EventType::PatientRegistered]),
    ("product", &[EventType::InjectionAdministered]),
    ("total_units", &[EventType::InjectionAdministered]),
    ("guidance", &[EventType::InjectionAdministered]),
    ("muscles", &[EventType::InjectionAdministered]),
    ("injection_event_id", &[EventType::ResponseAssessed]),
    ("rating", &[EventType::ResponseAssessed]),
    ("percent_improvement", &[EventType::ResponseAssessed]),
    ("benefit_weeks", &[EventType::ResponseAssessed]),
    ("twstrs_total", &[EventType::ResponseAssessed]),
    ("method", &[EventType::ResistanceTested]),
    ("result", &[EventType::ResistanceTested]),
    ("titre_mu_per_ml", &[EventType::ResistanceTested]),
    ("target", &[EventType::ReferralMade]),
    (
        "reason",
        &[EventType::TreatmentDiscontinued, EventType::EventVoided],
    ),
    ("target_event_id", &[EventType::EventVoided]),
];

/// For each event type (by its place in [`EventType::ALL`]), the body fields
/// that belong to it, one bit per entry of `BODY_FIELDS`: a valid event
/// gives none other, which one mask operation tells (see
/// [`RawEvent::body_fields_given_mask`]).
const OWN_BODY_FIELDS: [u32; 7] = {
    let mut masks = [0u32; 7];
    let mut kind = 0;
    while kind < EventType::ALL.len() {
        let mut field = 0;
        while field < BODY_FIELDS.len() {
            let owners = BODY_FIELDS[field].1;
            let mut owner = 0;
            while owner < owners.len() {
                if owners[owner] as usize == EventType::ALL[kind] as usize {
                    masks[kind] |= 1 << field;
                }
                owner += 1;
            }
            field += 1;
        }
        kind += 1;
    }
    masks
};

/// True when `name` is the name of a body field of some event type.
pub fn is_body_field(name: &str) -> bool {
    BODY_FIELDS.iter().any(|(field, _)| *field == name)
}

impl<S> RawEvent<S> {
    /// Whether each body field is given (present or malformed), in the order
    /// of `BODY_FIELDS`.
    fn body_fields_given(&self) -> [bool; 18] {
        [
            self.birth_year.is_given(),
            self.sex.is_given(),
            self.onset_year.is_given(),
            self.product.is_given(),
            self.total_units.is_given(),
            self.guidance.is_given(),
            self.muscles.is_given(),
            self.injection_event_id.is_given(),
            self.rating.is_given(),
            self.percent_improvement.is_given(),
            self.benefit_weeks.is_given(),
            self.twstrs_total.is_given(),
            self.method.is_given(),
            self.result.is_given(),
            self.titre_mu_per_ml.is_given(),
            self.target.is_given(),
            self.reason.is_given(),
            self.target_event_id.is_given(),
        ]
    }

    /// [`Self::body_fields_given`] as a mask, bit `i` for entry `i`.
    fn body_fields_given_mask(&self) -> u32 {
        let mut mask = 0;
        for (index, given) in self.body_fields_given().into_iter().enumerate() {
            mask |= u32::from(given) << index;
        }
        mask
    }
}

/// The text of a raw event: owned (`String`, from a decoded message),
/// borrowed (`&str`), either (`Cow`, from a line whose strings may hold
/// escapes), or the bytes of a stored record's string field (`&[u8]`),
/// not yet checked to be UTF-8. The validator reads a text's bytes: every
/// rule but `reason`'s admits ASCII only, so a text that passes proves
/// itself UTF-8 and a stored record's texts are not checked twice. It
/// copies a text only into the event it builds.
pub trait Text {
    /// The text's bytes: UTF-8 for every source but a stored record.
    fn text_bytes(&self) -> &[u8];
    /// The text as an owned string, or `None` when its bytes are not UTF-8.
    fn into_string(self) -> Option<String>;
}

impl Text for String {
    fn text_bytes(&self) -> &[u8] {
        self.as_bytes()
    }
    fn into_string(self) -> Option<String> {
        Some(self)
    }
}

impl Text for &str {
    fn text_bytes(&self) -> &[u8] {
        self.as_bytes()
    }
    fn into_string(self) -> Option<String> {
        Some(self.to_owned())
    }
}

impl Text for std::borrow::Cow<'_, str> {
    fn text_bytes(&self) -> &[u8] {
        self.as_bytes()
    }
    fn into_string(self) -> Option<String> {
        Some(self.into_owned())
    }
}

impl Text for &[u8] {
    fn text_bytes(&self) -> &[u8] {
        self
    }
    fn into_string(self) -> Option<String> {
        std::str::from_utf8(self).ok().map(str::to_owned)
    }
}

/// A field's name in a reason, built only when a reason is given: most
/// events are valid, and naming `muscles[3].units` costs an allocation.
trait FieldName: Copy {
    fn name(self) -> String;
}

impl FieldName for &'static str {
    fn name(self) -> String {
        self.to_owned()
    }
}

/// A field of one entry of `muscles`; an empty field name is the entry.
#[derive(Clone, Copy)]
struct MuscleField(usize, &'static str);

impl FieldName for MuscleField {
    fn name(self) -> String {
        match self.1 {
            "" => format!("muscles[{}]", self.0),
            field => format!("muscles[{}].{field}", self.0),
        }
    }
}

/// Checks every rule of the contract that needs no log state, with "today"
/// bounding `occurred_on` (up to today + 1 day) and the birth and onset years
/// (up to today's year). Returns every reason at once.
pub fn validate<S: Text>(mut raw: RawEvent<S>, today: ClinicalDate) -> Result<Event, Refusal> {
    Validator::new(Some(today)).event(&mut raw)
}

/// Like [`validate`], but without the bounds that depend on "today": for
/// events read back from the log, which were checked against the day they
/// were written. Every other rule still holds, so a damaged record is still
/// refused rather than trusted.
///
/// A stored record's fast reader gives its texts as bytes (`&[u8]`): a text
/// that is not UTF-8 is then refused, whereas the protobuf decoder refuses
/// the whole record; its caller decides again by the slow path whenever
/// this refuses.
pub fn validate_stored<S: Text>(mut raw: RawEvent<S>) -> Result<Event, Refusal> {
    Validator::new(None).event(&mut raw)
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
    fn required<T>(&mut self, field: impl FieldName, value: RawField<T>) -> Option<T> {
        match value {
            RawField::Present(value) => Some(value),
            RawField::Absent => {
                self.refuse(field.name(), "is required");
                None
            }
            RawField::Malformed(reason) => {
                self.refuse(field.name(), reason);
                None
            }
        }
    }

    /// `Ok(None)` when absent, `Ok(Some)` when present, `Err` after recording
    /// why a given value cannot be read.
    fn optional<T>(&mut self, field: impl FieldName, value: RawField<T>) -> Result<Option<T>, ()> {
        match value {
            RawField::Present(value) => Ok(Some(value)),
            RawField::Absent => Ok(None),
            RawField::Malformed(reason) => {
                self.refuse(field.name(), reason);
                Err(())
            }
        }
    }

    /// Parses a required string field with `parse`, recording the refusal.
    fn required_parsed<T, S: Text>(
        &mut self,
        field: impl FieldName,
        value: RawField<S>,
        parse: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.required(field, value)?;
        match parse(text.text_bytes()) {
            Ok(parsed) => Some(parsed),
            Err(reason) => {
                self.refuse(field.name(), reason);
                None
            }
        }
    }

    /// Parses an optional string field; `Err` means given but refused.
    fn optional_parsed<T, S: Text>(
        &mut self,
        field: &'static str,
        value: RawField<S>,
        parse: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<Option<T>, ()> {
        let Some(text) = self.optional(field, value)? else {
            return Ok(None);
        };
        match parse(text.text_bytes()) {
            Ok(parsed) => Ok(Some(parsed)),
            Err(reason) => {
                self.refuse(field, reason);
                Err(())
            }
        }
    }

    /// Checks an integer against an inclusive range; `Err` means refused.
    fn in_range(
        &mut self,
        field: &'static str,
        value: i64,
        low: i64,
        high: i64,
    ) -> Result<i64, ()> {
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
        field: &'static str,
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

    fn reason_text<S: Text>(&mut self, value: RawField<S>) -> Option<String> {
        let text = self.required("reason", value)?;
        let Some(text) = text.into_string() else {
            // Only a stored record's bytes can be other than UTF-8; its
            // caller then asks the protobuf decoder, which refuses it.
            self.refuse("reason", "is not UTF-8 text");
            return None;
        };
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

    /// The event of `raw`, whose fields it takes. By reference: a raw event
    /// is some 600 bytes, and moving it into each step cost a copy each.
    fn event<S: Text>(mut self, raw: &mut RawEvent<S>) -> Result<Event, Refusal> {
        let source_errors = std::mem::take(&mut raw.source_errors);

        let event_id =
            self.required_parsed("event_id", std::mem::take(&mut raw.event_id), |text| {
                EventId::parse_bytes(text)
            });
        let centre = self.required_parsed("centre", std::mem::take(&mut raw.centre), |text| {
            Centre::parse_bytes(text)
        });
        let patient = self.required_parsed("patient", std::mem::take(&mut raw.patient), |text| {
            Pseudonym::parse_bytes(text)
        });
        let today = self.today;
        let occurred_on = self.required_parsed(
            "occurred_on",
            std::mem::take(&mut raw.occurred_on),
            |text| parse_date(text, today),
        );
        let event_type =
            self.required_parsed("type", std::mem::take(&mut raw.event_type), |text| {
                EventType::parse_bytes(text)
            });

        let body = match event_type {
            Some(event_type)
                if raw.body_fields_given_mask() & !OWN_BODY_FIELDS[event_type as usize] == 0 =>
            {
                self.body(event_type, raw)
            }
            Some(event_type) => {
                for ((field, owners), given) in BODY_FIELDS.iter().zip(raw.body_fields_given()) {
                    if given && !owners.contains(&event_type) {
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

    fn body<S: Text>(&mut self, event_type: EventType, raw: &mut RawEvent<S>) -> Option<EventBody> {
        match event_type {
            EventType::PatientRegistered => self.patient_registered(raw),
            EventType::InjectionAdministered => self.injection_administered(raw),
            EventType::ResponseAssessed => self.response_assessed(raw),
            EventType::ResistanceTested => self.resistance_tested(raw),
            EventType::ReferralMade => {
                let target = self.required_parsed(
                    "target",
                    std::mem::take(&mut raw.target),
                    ReferralTarget::parse_bytes,
                )?;
                Some(EventBody::ReferralMade(ReferralMade { target }))
            }
            EventType::TreatmentDiscontinued => {
                let reason = self.reason_text(std::mem::take(&mut raw.reason))?;
                Some(EventBody::TreatmentDiscontinued(TreatmentDiscontinued {
                    reason,
                }))
            }
            EventType::EventVoided => {
                let target_event_id = self.required_parsed(
                    "target_event_id",
                    std::mem::take(&mut raw.target_event_id),
                    EventId::parse_bytes,
                );
                let reason = self.reason_text(std::mem::take(&mut raw.reason));
                Some(EventBody::EventVoided(EventVoided {
                    target_event_id: target_event_id?,
                    reason: reason?,
                }))
            }
        }
    }

    fn patient_registered<S: Text>(&mut self, raw: &mut RawEvent<S>) -> Option<EventBody> {
        // Without a "today" (a stored event), the year bound is the one that
        // held when it was written: no upper bound is checked again.
        let latest_year = self.today.map_or(i64::MAX, |today| i64::from(today.year()));
        let birth_year = self
            .optional("birth_year", std::mem::take(&mut raw.birth_year))
            .and_then(|year| match year {
                Some(year) => self
                    .in_range("birth_year", year, EARLIEST_YEAR, latest_year)
                    .map(Some),
                None => Ok(None),
            });
        let sex = self.optional_parsed("sex", std::mem::take(&mut raw.sex), Sex::parse_bytes);
        let onset_year = self
            .optional("onset_year", std::mem::take(&mut raw.onset_year))
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

    fn injection_administered<S: Text>(&mut self, raw: &mut RawEvent<S>) -> Option<EventBody> {
        let product = self.required_parsed(
            "product",
            std::mem::take(&mut raw.product),
            Product::parse_bytes,
        );
        let total_units = self
            .required("total_units", std::mem::take(&mut raw.total_units))
            .and_then(|units| self.units("total_units", units));
        let guidance = self.required_parsed(
            "guidance",
            std::mem::take(&mut raw.guidance),
            Guidance::parse_bytes,
        );
        let entries = self.required("muscles", std::mem::take(&mut raw.muscles));

        let mut doses = Vec::with_capacity(entries.as_ref().map_or(0, Vec::len));
        let mut every_dose_readable = entries.is_some();
        for (index, entry) in entries.into_iter().flatten().enumerate() {
            match self.muscle_dose(index, entry) {
                Some(dose) => doses.push(dose),
                None => every_dose_readable = false,
            }
        }

        if !every_dose_readable {
            return None;
        }
        // The cross-field rules are written once, in `check_injection`, which
        // `InjectionAdministered::new` runs.
        if let (Some(product), Some(total_units), Some(guidance)) = (product, total_units, guidance)
        {
            return match InjectionAdministered::new(product, total_units, guidance, doses) {
                Ok(injection) => Some(EventBody::InjectionAdministered(injection)),
                Err(reasons) => {
                    self.reasons.extend(reasons);
                    None
                }
            };
        }
        // Something could not be read: still check what can be. An unknown
        // product is checked against the highest hard maximum of all (a total
        // above it is above every product's); with an unknown total, the
        // reasons about the total are left out.
        let sum: u64 = doses.iter().map(|dose| u64::from(dose.units)).sum();
        let assumed_total = total_units.unwrap_or(u32::try_from(sum).unwrap_or(u32::MAX));
        let mut reasons = Vec::new();
        check_injection(
            product.unwrap_or(Product::RimabotulinumtoxinB),
            assumed_total,
            &doses,
            &mut reasons,
        );
        let total_is_known = total_units.is_some();
        self.reasons.extend(reasons.into_iter().filter(|reason| {
            total_is_known
                || (reason.field != "total_units"
                    && !(reason.field == "muscles" && reason.reason.contains("add up")))
        }));
        None
    }

    /// Reads a count of units: a positive integer that fits the domain's
    /// `u32`. Zero passes here so the shared injection check reports it once.
    fn units(&mut self, field: impl FieldName, units: i64) -> Option<u32> {
        if units < 0 {
            self.refuse(field.name(), format!("must be an integer > 0, got {units}"));
            return None;
        }
        match u32::try_from(units) {
            Ok(units) => Some(units),
            Err(_) => {
                self.refuse(field.name(), format!("{units} is too large"));
                None
            }
        }
    }

    fn muscle_dose<S: Text>(
        &mut self,
        index: usize,
        entry: RawField<RawMuscle<S>>,
    ) -> Option<MuscleDose> {
        let mut entry = self.required(MuscleField(index, ""), entry)?;
        self.reasons.append(&mut entry.source_errors);
        let muscle = self.required_parsed(
            MuscleField(index, "muscle"),
            entry.muscle,
            Muscle::parse_bytes,
        );
        let side = self.required_parsed(MuscleField(index, "side"), entry.side, Side::parse_bytes);
        let units_field = MuscleField(index, "units");
        let units = self
            .required(units_field, entry.units)
            .and_then(|units| self.units(units_field, units));
        Some(MuscleDose {
            muscle: muscle?,
            side: side?,
            units: units?,
        })
    }

    fn response_assessed<S: Text>(&mut self, raw: &mut RawEvent<S>) -> Option<EventBody> {
        let injection_event_id = self.required_parsed(
            "injection_event_id",
            std::mem::take(&mut raw.injection_event_id),
            EventId::parse_bytes,
        );
        let rating = self.required_parsed(
            "rating",
            std::mem::take(&mut raw.rating),
            crate::event::Rating::parse_bytes,
        );
        let percent_improvement = self.optional_small(
            "percent_improvement",
            std::mem::take(&mut raw.percent_improvement),
            100,
        );
        let benefit_weeks =
            self.optional_small("benefit_weeks", std::mem::take(&mut raw.benefit_weeks), 52);
        let twstrs_total =
            self.optional_small("twstrs_total", std::mem::take(&mut raw.twstrs_total), 87);
        Some(EventBody::ResponseAssessed(ResponseAssessed {
            injection_event_id: injection_event_id?,
            rating: rating?,
            percent_improvement: percent_improvement.ok()?,
            benefit_weeks: benefit_weeks.ok()?,
            twstrs_total: twstrs_total.ok()?,
        }))
    }

    fn resistance_tested<S: Text>(&mut self, raw: &mut RawEvent<S>) -> Option<EventBody> {
        let method = self.required_parsed(
            "method",
            std::mem::take(&mut raw.method),
            ResistanceMethod::parse_bytes,
        );
        let result = self.required_parsed(
            "result",
            std::mem::take(&mut raw.result),
            ResistanceResult::parse_bytes,
        );
        let titre = match self.optional("titre_mu_per_ml", std::mem::take(&mut raw.titre_mu_per_ml))
        {
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

/// The `occurred_on` of a stored event (checked as [`validate_stored`]
/// checks it: `YYYY-MM-DD`, from 1989-01-01, no upper bound), for a reader
/// of stored records that builds events without a [`RawEvent`]; the error is
/// the reason the validator gives.
pub fn parse_stored_date(bytes: &[u8]) -> Result<ClinicalDate, String> {
    parse_date(bytes, None)
}

/// Reads `YYYY-MM-DD` (exactly that form) and checks the contract's range:
/// from 1989-01-01 to today + 1 day, or with no upper bound for a stored
/// event. Written out by hand because every replay reads one date per event
/// and a general-purpose format parser costs more than the rest of the event.
fn parse_date(bytes: &[u8], today: Option<ClinicalDate>) -> Result<ClinicalDate, String> {
    let number = |digits: &[u8]| {
        digits.iter().try_fold(0u16, |value, digit| {
            digit
                .is_ascii_digit()
                .then(|| value * 10 + u16::from(digit - b'0'))
        })
    };
    let date = if bytes.len() == 10 && bytes[4] == b'-' && bytes[7] == b'-' {
        match (
            number(&bytes[..4]),
            number(&bytes[5..7]),
            number(&bytes[8..]),
        ) {
            // Month and day have two digits: at most 99, a u8.
            (Some(year), Some(month), Some(day)) => {
                ClinicalDate::from_ymd(i32::from(year), month as u8, day as u8)
            }
            _ => None,
        }
    } else {
        None
    };
    let Some(date) = date else {
        return Err(format!(
            "'{}' is not a date in YYYY-MM-DD form",
            String::from_utf8_lossy(bytes)
        ));
    };
    let latest = today.map(ClinicalDate::next_day);
    if date < EARLIEST || latest.is_some_and(|latest| date > latest) {
        let latest = latest.map_or_else(|| "today".to_owned(), |latest| latest.to_string());
        return Err(format!(
            "{date} is outside the allowed range {EARLIEST} to {latest}"
        ));
    }
    Ok(date)
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
    fn the_masks_of_own_body_fields_are_the_table_of_owners() {
        for event_type in EventType::ALL {
            for (index, (field, owners)) in BODY_FIELDS.iter().enumerate() {
                assert_eq!(
                    OWN_BODY_FIELDS[*event_type as usize] & (1 << index) != 0,
                    owners.contains(event_type),
                    "{event_type} {field}"
                );
            }
        }
    }

    #[test]
    fn a_minimal_registration_is_valid() {
        let event = validate(envelope("patient_registered"), today()).unwrap();
        assert_eq!(event.event_type(), EventType::PatientRegistered);
    }

    #[test]
    fn an_empty_raw_event_names_every_required_envelope_field() {
        let refusal = validate(RawEvent::<String>::default(), today()).unwrap_err();
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
