//! The clinical events of the contract (`spec/events.md`): the envelope every
//! event carries and one body per event type. Events are facts in the past
//! tense; nothing here is ever edited, a mistake is corrected by an
//! [`EventVoided`].

use compact_str::CompactString;

use crate::{
    date::ClinicalDate,
    ids::{Centre, EventId, PatientKey, Pseudonym},
};

/// Declares a closed vocabulary of the contract: each variant with the exact
/// text used in the interchange file and on the wire.
macro_rules! vocabulary {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in the contract's order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as spelled in the contract.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the contract's spelling; the error lists what is allowed.
            pub fn parse(text: &str) -> Result<Self, String> {
                Self::parse_bytes(text.as_bytes())
            }

            /// [`Self::parse`] of a text's bytes, not yet known to be UTF-8
            /// (a stored record's): every spelling is ASCII, so a match
            /// proves the text is too, without checking it twice.
            pub fn parse_bytes(text: &[u8]) -> Result<Self, String> {
                $(if text == $text.as_bytes() {
                    return Ok($name::$variant);
                })+
                Err(format!(
                    "'{}' is not one of {}",
                    String::from_utf8_lossy(text),
                    [$($text),+].join(", ")
                ))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

vocabulary!(
    /// The `type` of an event.
    EventType {
        PatientRegistered => "patient_registered",
        InjectionAdministered => "injection_administered",
        ResponseAssessed => "response_assessed",
        ResistanceTested => "resistance_tested",
        ReferralMade => "referral_made",
        TreatmentDiscontinued => "treatment_discontinued",
        EventVoided => "event_voided",
    }
);

vocabulary!(
    /// Recorded sex of a patient.
    Sex { Female => "female", Male => "male", Other => "other", Unknown => "unknown" }
);

vocabulary!(
    /// A botulinum toxin product. Units are the product's own and are not
    /// interchangeable between products.
    Product {
        OnabotulinumtoxinA => "onabotulinumtoxinA",
        AbobotulinumtoxinA => "abobotulinumtoxinA",
        IncobotulinumtoxinA => "incobotulinumtoxinA",
        DaxibotulinumtoxinA => "daxibotulinumtoxinA",
        RimabotulinumtoxinB => "rimabotulinumtoxinB",
    }
);

/// The toxin serotype of a product: the audit's BoNT-A / BoNT-B distinction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Serotype {
    A,
    B,
}

impl Product {
    pub fn serotype(self) -> Serotype {
        match self {
            Product::RimabotulinumtoxinB => Serotype::B,
            _ => Serotype::A,
        }
    }

    /// Label maximum units per session: above it an injection is accepted
    /// with a warning.
    pub fn label_maximum_units(self) -> u32 {
        match self {
            Product::OnabotulinumtoxinA | Product::IncobotulinumtoxinA => 300,
            Product::DaxibotulinumtoxinA => 250,
            Product::AbobotulinumtoxinA => 1000,
            Product::RimabotulinumtoxinB => 10_000,
        }
    }

    /// Hard maximum units per session: above it an injection is refused.
    pub fn hard_maximum_units(self) -> u32 {
        match self {
            Product::OnabotulinumtoxinA | Product::IncobotulinumtoxinA => 600,
            Product::DaxibotulinumtoxinA => 500,
            Product::AbobotulinumtoxinA => 2000,
            Product::RimabotulinumtoxinB => 25_000,
        }
    }
}

vocabulary!(
    /// How the injections of a session were guided.
    Guidance { None => "none", Emg => "emg", Ultrasound => "ultrasound", EmgUltrasound => "emg_ultrasound" }
);

vocabulary!(
    /// A cervical muscle that can be injected.
    Muscle {
        Sternocleidomastoid => "sternocleidomastoid",
        SpleniusCapitis => "splenius_capitis",
        SpleniusCervicis => "splenius_cervicis",
        Trapezius => "trapezius",
        LevatorScapulae => "levator_scapulae",
        SemispinalisCapitis => "semispinalis_capitis",
        SemispinalisCervicis => "semispinalis_cervicis",
        LongissimusCapitis => "longissimus_capitis",
        ObliquusCapitisInferior => "obliquus_capitis_inferior",
        ScalenusAnterior => "scalenus_anterior",
        ScalenusMedius => "scalenus_medius",
        ScalenusPosterior => "scalenus_posterior",
        LongusColli => "longus_colli",
        LongusCapitis => "longus_capitis",
        Platysma => "platysma",
    }
);

vocabulary!(
    /// Body side of an injected muscle.
    Side { Left => "left", Right => "right" }
);

vocabulary!(
    /// The clinician's judgement of a cycle: what the audit counts.
    Rating { Good => "good", Suboptimal => "suboptimal", None => "none" }
);

impl Rating {
    /// `suboptimal` and `none` are poor.
    pub fn is_poor(self) -> bool {
        !matches!(self, Rating::Good)
    }
}

vocabulary!(
    /// How resistance (neutralising antibodies) was tested.
    ResistanceMethod {
        Frontalis => "frontalis",
        UnilateralBrow => "unilateral_brow",
        Edb => "edb",
        Scm => "scm",
        Mhda => "mhda",
        Mpa => "mpa",
        Elisa => "elisa",
    }
);

vocabulary!(
    /// The result of a resistance test.
    ResistanceResult { Positive => "positive", Negative => "negative", Equivocal => "equivocal" }
);

vocabulary!(
    /// Where a patient was referred.
    ReferralTarget {
        Dbs => "dbs",
        PeripheralDenervation => "peripheral_denervation",
        Physiotherapy => "physiotherapy",
        Psychology => "psychology",
        Other => "other",
    }
);

/// One clinical event as the client states it: the envelope and a body.
/// The server's fields (position, recorded_at, recorded_by) live in
/// [`RecordedEvent`], never here, so an event's content is what the client
/// sent and nothing else.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The idempotency key, chosen by the client.
    pub event_id: EventId,
    pub centre: Centre,
    pub patient: Pseudonym,
    /// The clinical date: when it happened in clinic, not when it was typed in.
    pub occurred_on: ClinicalDate,
    pub body: EventBody,
}

impl Event {
    pub fn patient_key(&self) -> PatientKey {
        PatientKey::new(self.centre.clone(), self.patient.clone())
    }

    pub fn event_type(&self) -> EventType {
        self.body.event_type()
    }
}

/// The type-specific part of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum EventBody {
    PatientRegistered(PatientRegistered),
    InjectionAdministered(InjectionAdministered),
    ResponseAssessed(ResponseAssessed),
    ResistanceTested(ResistanceTested),
    ReferralMade(ReferralMade),
    TreatmentDiscontinued(TreatmentDiscontinued),
    EventVoided(EventVoided),
}

impl EventBody {
    pub fn event_type(&self) -> EventType {
        match self {
            EventBody::PatientRegistered(_) => EventType::PatientRegistered,
            EventBody::InjectionAdministered(_) => EventType::InjectionAdministered,
            EventBody::ResponseAssessed(_) => EventType::ResponseAssessed,
            EventBody::ResistanceTested(_) => EventType::ResistanceTested,
            EventBody::ReferralMade(_) => EventType::ReferralMade,
            EventBody::TreatmentDiscontinued(_) => EventType::TreatmentDiscontinued,
            EventBody::EventVoided(_) => EventType::EventVoided,
        }
    }
}

/// A patient enters the register of a centre.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PatientRegistered {
    pub birth_year: Option<i32>,
    pub sex: Option<Sex>,
    /// Year the dystonia began; not before `birth_year`.
    pub onset_year: Option<i32>,
}

/// One injected (muscle, side) of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MuscleDose {
    pub muscle: Muscle,
    pub side: Side,
    /// Units of the session's product, > 0.
    pub units: u32,
}

/// One treatment session: one cycle of the audit.
///
/// The muscles' units add up to `total_units`, each (muscle, side) appears
/// once, and `total_units` is within the product's hard maximum: the
/// validation that builds one checks it, so the fields are read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectionAdministered {
    product: Product,
    total_units: u32,
    guidance: Guidance,
    muscles: Vec<MuscleDose>,
}

impl InjectionAdministered {
    /// Builds a session, returning every reason it breaks the contract.
    /// Field names in the reasons are the interchange file's.
    pub fn new(
        product: Product,
        total_units: u32,
        guidance: Guidance,
        muscles: Vec<MuscleDose>,
    ) -> Result<Self, Vec<crate::FieldError>> {
        let mut reasons = Vec::new();
        check_injection(product, total_units, &muscles, &mut reasons);
        if reasons.is_empty() {
            Ok(Self {
                product,
                total_units,
                guidance,
                muscles,
            })
        } else {
            Err(reasons)
        }
    }

    pub fn product(&self) -> Product {
        self.product
    }
    pub fn total_units(&self) -> u32 {
        self.total_units
    }
    pub fn guidance(&self) -> Guidance {
        self.guidance
    }
    pub fn muscles(&self) -> &[MuscleDose] {
        &self.muscles
    }

    /// True when above the product's label maximum (accepted with a warning).
    pub fn exceeds_label_maximum(&self) -> bool {
        self.total_units > self.product.label_maximum_units()
    }
}

/// The cross-field checks of an injection, shared by [`InjectionAdministered::new`]
/// and the line validator so the rule is written once.
pub(crate) fn check_injection(
    product: Product,
    total_units: u32,
    muscles: &[MuscleDose],
    reasons: &mut Vec<crate::FieldError>,
) {
    use crate::FieldError;
    if total_units == 0 {
        reasons.push(FieldError::new("total_units", "must be an integer > 0"));
    }
    if total_units > product.hard_maximum_units() {
        reasons.push(FieldError::new(
            "total_units",
            format!(
                "{total_units} units exceeds the hard maximum of {} for {product}",
                product.hard_maximum_units()
            ),
        ));
    }
    if muscles.is_empty() {
        reasons.push(FieldError::new(
            "muscles",
            "at least one muscle is required",
        ));
    }
    // One bit per (muscle, side) pair (15 × 2 of them): every stored
    // injection passes here on replay, and a hash set would allocate.
    let mut seen: u64 = 0;
    for (index, dose) in muscles.iter().enumerate() {
        if dose.units == 0 {
            reasons.push(FieldError::new(
                format!("muscles[{index}].units"),
                "must be an integer > 0",
            ));
        }
        let bit = 1u64 << (dose.muscle as u32 * 2 + dose.side as u32);
        let first_time = seen & bit == 0;
        seen |= bit;
        if !first_time {
            reasons.push(FieldError::new(
                format!("muscles[{index}]"),
                format!("{} {} appears more than once", dose.side, dose.muscle),
            ));
        }
    }
    let sum: u64 = muscles.iter().map(|dose| u64::from(dose.units)).sum();
    if !muscles.is_empty() && sum != u64::from(total_units) {
        reasons.push(FieldError::new(
            "muscles",
            format!("units add up to {sum}, not total_units {total_units}"),
        ));
    }
}

/// The outcome of one cycle, usually at the 4–6 week review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseAssessed {
    /// The assessed injection: same patient, in the log, not voided.
    pub injection_event_id: EventId,
    pub rating: Rating,
    /// Patient-rated improvement, 0..=100.
    pub percent_improvement: Option<u8>,
    /// Weeks of benefit, 0..=52.
    pub benefit_weeks: Option<u8>,
    /// TWSTRS total score, 0..=87.
    pub twstrs_total: Option<u8>,
}

/// A test for BoNT-A resistance.
#[derive(Debug, Clone, PartialEq)]
pub struct ResistanceTested {
    pub method: ResistanceMethod,
    pub result: ResistanceResult,
    /// Antibody titre in mU/ml, >= 0 and finite.
    pub titre_mu_per_ml: Option<f64>,
}

/// A referral to another service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReferralMade {
    pub target: ReferralTarget,
}

/// Toxin treatment stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreatmentDiscontinued {
    /// 1..=500 characters.
    pub reason: String,
}

/// Corrects a mistake: the target is ignored by every projection from now on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventVoided {
    /// An event of the same patient, already in the log, not a registration,
    /// not a void, not already voided.
    pub target_event_id: EventId,
    /// 1..=500 characters.
    pub reason: String,
}

/// An event as the log holds it: the client's event plus the server's facts.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// Global log position, gap-free from 1.
    pub position: u64,
    /// When the log stored it, microseconds since 1970-01-01T00:00:00Z (UTC).
    pub recorded_at_micros: i64,
    /// The authenticated principal that wrote it. A [`CompactString`]: a
    /// replay builds one for every stored event, and a principal of up to
    /// 24 bytes (all in practice) is then held inline instead of in an
    /// allocation of its own (`Default::default()` is the empty one,
    /// `"name".into()` builds one).
    pub recorded_by: CompactString,
    pub event: Event,
}
