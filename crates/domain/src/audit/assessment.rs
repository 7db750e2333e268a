//! One patient's assessment, as a clinician or auditor reads it: the cycles
//! in clinical order, the SNR classification, the date of each BNN step, and
//! each standard the patient is counted in, met or not and why. It is built
//! from the same [`Analysis`] the report sums, so the patient view and the
//! report can never disagree.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::{
    audit::{
        RULE_SET, RuleParameters,
        engine::{Analysis, PatientLog, analyse, muscles_of},
    },
    date::ClinicalDate,
    event::{Guidance, Muscle, Product, Rating, RecordedEvent, Side},
    ids::{Centre, PatientKey, Pseudonym},
};

/// The SNR group: the onset cycle's rating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnrGroup {
    /// Onset rated `suboptimal`: partial loss of response.
    Suboptimal,
    /// Onset rated `none`: complete loss of response (`no_response`).
    NoResponse,
}

impl SnrGroup {
    /// The key used in the report (`suboptimal`, `no_response`).
    pub fn as_str(self) -> &'static str {
        match self {
            SnrGroup::Suboptimal => "suboptimal",
            SnrGroup::NoResponse => "no_response",
        }
    }
}

impl fmt::Display for SnrGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An audit standard of `rules.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Standard {
    Bnn1,
    Bnn2,
    Bnn3,
    Bnn4,
    Int1,
}

impl Standard {
    /// Every standard, in the order of `rules.md`.
    pub const ALL: &'static [Standard] = &[
        Standard::Bnn1,
        Standard::Bnn2,
        Standard::Bnn3,
        Standard::Bnn4,
        Standard::Int1,
    ];

    /// The id used in the report (`BNN-1`, …, `INT-1`).
    pub fn id(self) -> &'static str {
        match self {
            Standard::Bnn1 => "BNN-1",
            Standard::Bnn2 => "BNN-2",
            Standard::Bnn3 => "BNN-3",
            Standard::Bnn4 => "BNN-4",
            Standard::Int1 => "INT-1",
        }
    }

    /// The standard in words, naming the parameter it depends on.
    pub fn description(self, parameters: &RuleParameters) -> String {
        match self {
            Standard::Bnn1 => "suboptimal responders had an adjustment before escalation".into(),
            Standard::Bnn2 => "no-response patients were assessed for resistance".into(),
            Standard::Bnn3 => "a BoNT-B switch was preceded by a resistance test".into(),
            Standard::Bnn4 => "confirmed resistance led to a change of management".into(),
            Standard::Int1 => format!(
                "injections at least {} days apart",
                parameters.min_interval_days
            ),
        }
    }
}

impl fmt::Display for Standard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// A value that serialises as its `Display` text, which is a string it
/// already holds (vocabularies, identifiers, standards) or can write into a
/// small buffer (dates): serialised with `serialize_str`, whose JSON is the
/// same as `collect_str`'s of the `Display` text (both escape the same
/// characters the same way), without the formatting machinery. An
/// assessment's JSON is written once per change published, about 17 KB for
/// a long history, so this is most of what assessment spends serialising.
trait Spelled {
    /// Hands `spelled` the value's `Display` text.
    fn with_text<R>(&self, spelled: impl FnOnce(&str) -> R) -> R;
}

macro_rules! spelled_by {
    ($($type:ty => $method:ident),+ $(,)?) => {
        $(impl Spelled for $type {
            fn with_text<R>(&self, spelled: impl FnOnce(&str) -> R) -> R {
                spelled(self.$method())
            }
        })+
    };
}

spelled_by! {
    Centre => as_str,
    Pseudonym => as_str,
    Muscle => as_str,
    Side => as_str,
    Product => as_str,
    Guidance => as_str,
    Rating => as_str,
    Standard => id,
}

impl Spelled for ClinicalDate {
    fn with_text<R>(&self, spelled: impl FnOnce(&str) -> R) -> R {
        let mut buffer = [0u8; 10];
        match iso_date(*self, &mut buffer) {
            Some(text) => spelled(text),
            None => spelled(&self.to_string()),
        }
    }
}

/// The date as `Display` writes it (`{:04}-{:02}-{:02}`), for the years
/// 0 to 9999 (every clinical date); `None` for any other.
fn iso_date(date: ClinicalDate, buffer: &mut [u8; 10]) -> Option<&str> {
    let (year, month, day) = date.as_date().to_calendar_date();
    let year = u16::try_from(year).ok().filter(|year| *year <= 9999)?;
    let month = u8::from(month);
    let digit = |value: u16| b'0' + (value % 10) as u8;
    *buffer = [
        digit(year / 1000),
        digit(year / 100),
        digit(year / 10),
        digit(year),
        b'-',
        digit(u16::from(month) / 10),
        digit(u16::from(month)),
        b'-',
        digit(u16::from(day) / 10),
        digit(u16::from(day)),
    ];
    std::str::from_utf8(buffer).ok()
}

/// Serialises a value as its `Display` text (see [`Spelled`]).
fn as_text<T: Spelled, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    value.with_text(|text| serializer.serialize_str(text))
}

fn as_optional_text<T: Spelled, S: Serializer>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => value.with_text(|text| serializer.serialize_str(text)),
        None => serializer.serialize_none(),
    }
}

fn date_of(day: i32) -> ClinicalDate {
    // Every day number here came from a ClinicalDate, so the conversion back
    // always succeeds; the fallback is the contract's earliest date.
    ClinicalDate::from_days_since_epoch(day).unwrap_or(crate::date::EARLIEST)
}

/// One injected (muscle, side) pair of a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct InjectedMuscle {
    #[serde(serialize_with = "as_text")]
    pub muscle: Muscle,
    #[serde(serialize_with = "as_text")]
    pub side: Side,
}

/// One live cycle of the patient's timeline, in clinical order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CycleView {
    /// The injection's log position (clinical-date ties are broken by it).
    pub position: u64,
    #[serde(serialize_with = "as_text")]
    pub occurred_on: ClinicalDate,
    #[serde(serialize_with = "as_text")]
    pub product: Product,
    pub total_units: u32,
    #[serde(serialize_with = "as_text")]
    pub guidance: Guidance,
    pub muscles: Vec<InjectedMuscle>,
    /// The current rating; `None` for an unrated cycle.
    #[serde(serialize_with = "as_optional_text")]
    pub rating: Option<Rating>,
    /// Calendar days since the previous live cycle (any product).
    pub days_since_previous: Option<i64>,
    /// This is the onset cycle O.
    pub onset: bool,
    /// This cycle comes after O in clinical order.
    pub post_onset: bool,
    /// A post-onset BoNT-A cycle that differs from the one before it.
    pub adjusted: bool,
}

/// The SNR classification and the date of each step of the BNN pathway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnrView {
    pub group: SnrGroup,
    #[serde(serialize_with = "as_text")]
    pub onset_on: ClinicalDate,
    /// Good BoNT-A cycles before the onset.
    pub good_cycles_before_onset: u32,
    #[serde(serialize_with = "as_optional_text")]
    pub first_adjusted_on: Option<ClinicalDate>,
    /// The first good post-onset BoNT-A cycle, when no BoNT-B cycle came first.
    #[serde(serialize_with = "as_optional_text")]
    pub regained_on: Option<ClinicalDate>,
    /// Regained, with an adjusted cycle after the onset and at or before the
    /// regaining cycle.
    pub regained_with_adjustment: bool,
    #[serde(serialize_with = "as_optional_text")]
    pub switched_to_bont_b_on: Option<ClinicalDate>,
    #[serde(serialize_with = "as_optional_text")]
    pub referred_dbs_on: Option<ClinicalDate>,
    #[serde(serialize_with = "as_optional_text")]
    pub assessed_for_resistance_on: Option<ClinicalDate>,
    #[serde(serialize_with = "as_optional_text")]
    pub resistance_confirmed_on: Option<ClinicalDate>,
    /// The earliest change of management on or after the confirmation.
    #[serde(serialize_with = "as_optional_text")]
    pub management_changed_on: Option<ClinicalDate>,
}

impl SnrView {
    pub fn regained(&self) -> bool {
        self.regained_on.is_some()
    }
}

/// A standard the patient is counted in: their share of its numerator and
/// denominator, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StandardFinding {
    #[serde(serialize_with = "as_text")]
    pub standard: Standard,
    pub numerator: u64,
    pub denominator: u64,
    /// In words: why the standard is met or not, with the dates that decide it.
    pub reason: String,
}

impl StandardFinding {
    pub fn met(&self) -> bool {
        self.numerator == self.denominator
    }
}

/// A patient's assessment without the cycle by cycle detail: what a
/// derived event carries. [`PatientAssessment`] has the same fields, and
/// the cycles themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientSummary {
    pub centre: Centre,
    pub patient: Pseudonym,
    pub registered: bool,
    pub rule_set: String,
    /// How many live cycles the patient has (`PatientAssessment::cycles.len()`).
    pub cycles: usize,
    pub snr: Option<SnrView>,
    pub standards: Vec<StandardFinding>,
}

/// Everything the audit says about one patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatientAssessment {
    #[serde(serialize_with = "as_text")]
    pub centre: Centre,
    #[serde(serialize_with = "as_text")]
    pub patient: Pseudonym,
    /// A patient never registered is not part of the audit.
    pub registered: bool,
    pub rule_set: String,
    pub parameters: RuleParameters,
    /// Live cycles in clinical order.
    pub cycles: Vec<CycleView>,
    /// The SNR classification; `None` when the patient is not in the cohort.
    pub snr: Option<SnrView>,
    /// Every standard the patient is counted in (denominator > 0).
    pub standards: Vec<StandardFinding>,
}

impl PatientAssessment {
    pub fn key(&self) -> PatientKey {
        PatientKey::new(self.centre.clone(), self.patient.clone())
    }

    /// The standards the patient is counted in and does not meet.
    pub fn standards_failed(&self) -> impl Iterator<Item = &StandardFinding> {
        self.standards.iter().filter(|finding| !finding.met())
    }
}

/// Assesses one patient from their recorded events, in log order: a pure
/// function, the same one the cohort uses. The patient is that of the first
/// event; events of any other patient are ignored. `None` for no events.
pub fn assess_patient(
    events: &[RecordedEvent],
    parameters: &RuleParameters,
) -> Option<PatientAssessment> {
    let first = events.first()?;
    let key = first.event.patient_key();
    let mut log = PatientLog::default();
    for recorded in events {
        if recorded.event.centre == key.centre && recorded.event.patient == key.patient {
            log.apply(recorded);
        }
    }
    Some(view_of(&key, &log, parameters))
}

/// Builds the view of one patient's stored log.
pub(crate) fn view_of(
    key: &PatientKey,
    log: &PatientLog,
    parameters: &RuleParameters,
) -> PatientAssessment {
    view_of_analysis(key, log.registered, &analyse(log, parameters), parameters)
}

/// The view of a patient whose log `analysis` was made of (see
/// [`view_of`]); `registered` is that log's. It reads nothing else, so two
/// equal analyses (with the same key, registration and parameters) give
/// equal views.
pub(crate) fn view_of_analysis(
    key: &PatientKey,
    registered: bool,
    analysis: &Analysis,
    parameters: &RuleParameters,
) -> PatientAssessment {
    let onset = analysis.snr.as_ref().map(|snr| snr.onset);
    let cycles = analysis
        .cycles
        .iter()
        .enumerate()
        .map(|(index, cycle)| CycleView {
            position: cycle.position,
            occurred_on: date_of(cycle.day),
            product: cycle.product,
            total_units: cycle.total_units,
            guidance: cycle.guidance,
            muscles: {
                let mut muscles = Vec::with_capacity(cycle.muscles.count_ones() as usize);
                muscles.extend(
                    muscles_of(cycle.muscles).map(|(muscle, side)| InjectedMuscle { muscle, side }),
                );
                muscles
            },
            rating: cycle.rating,
            days_since_previous: index
                .checked_sub(1)
                .map(|previous| i64::from(cycle.day) - i64::from(analysis.cycles[previous].day)),
            onset: onset == Some(index),
            post_onset: onset.is_some_and(|onset| index > onset),
            adjusted: cycle.adjusted,
        })
        .collect();
    let summary = summary_of_analysis(key, registered, analysis, parameters);
    PatientAssessment {
        centre: summary.centre,
        patient: summary.patient,
        registered,
        rule_set: summary.rule_set,
        parameters: *parameters,
        cycles,
        snr: summary.snr,
        standards: summary.standards,
    }
}

/// The summary of a patient whose log `analysis` was made of: the view of
/// [`view_of_analysis`] without building the cycles.
pub(crate) fn summary_of_analysis(
    key: &PatientKey,
    registered: bool,
    analysis: &Analysis,
    parameters: &RuleParameters,
) -> PatientSummary {
    let snr = analysis.snr.as_ref().map(|snr| SnrView {
        group: snr.group,
        onset_on: date_of(analysis.cycles[snr.onset].day),
        good_cycles_before_onset: snr.good_cycles_before_onset,
        first_adjusted_on: snr.first_adjusted_day.map(date_of),
        regained_on: snr
            .regained
            .map(|index| date_of(analysis.cycles[index].day)),
        regained_with_adjustment: snr.regained.is_some() && snr.regained_with_adjustment,
        switched_to_bont_b_on: snr.first_bont_b_day.map(date_of),
        referred_dbs_on: snr.first_dbs_referral_day.map(date_of),
        assessed_for_resistance_on: snr.first_resistance_test_day.map(date_of),
        resistance_confirmed_on: snr.first_positive_test_day.map(date_of),
        management_changed_on: snr.management_change_day.map(date_of),
    });
    let standards = if registered {
        findings(analysis, snr.as_ref(), parameters)
    } else {
        Vec::new()
    };
    PatientSummary {
        centre: key.centre.clone(),
        patient: key.patient.clone(),
        registered,
        rule_set: RULE_SET.to_owned(),
        cycles: analysis.cycles.len(),
        snr,
        standards,
    }
}

/// The standards the patient is counted in, each with its reason. The
/// numerators and denominators are the patient's share of the report's.
fn findings(
    analysis: &Analysis,
    snr: Option<&SnrView>,
    parameters: &RuleParameters,
) -> Vec<StandardFinding> {
    let tally = crate::audit::report::Tally::of(analysis).0;
    let mut findings = Vec::new();
    for standard in Standard::ALL {
        let result = tally.standards.get(*standard);
        if result.denominator == 0 {
            continue;
        }
        let reason = match (standard, snr) {
            (Standard::Int1, _) => interval_reason(analysis, parameters),
            (_, Some(snr)) => snr_reason(*standard, snr, result.numerator == 1),
            // Only INT-1 counts patients outside the SNR cohort.
            (_, None) => String::new(),
        };
        findings.push(StandardFinding {
            standard: *standard,
            numerator: result.numerator,
            denominator: result.denominator,
            reason,
        });
    }
    findings
}

fn snr_reason(standard: Standard, snr: &SnrView, met: bool) -> String {
    let or_never = |date: Option<ClinicalDate>| date.map_or("never".to_owned(), |d| d.to_string());
    match standard {
        Standard::Bnn1 => {
            let escalation = match (snr.switched_to_bont_b_on, snr.referred_dbs_on) {
                (Some(switch), Some(referral)) if referral < switch => {
                    format!("referred for DBS on {referral}")
                }
                (Some(switch), _) => format!("switched to BoNT-B on {switch}"),
                (None, Some(referral)) => format!("referred for DBS on {referral}"),
                (None, None) => "not escalated".to_owned(),
            };
            if met {
                format!(
                    "{escalation}, after an adjusted cycle on {}",
                    or_never(snr.first_adjusted_on)
                )
            } else {
                match snr.first_adjusted_on {
                    Some(adjusted) => format!(
                        "{escalation}; the first adjusted cycle ({adjusted}) is not before it"
                    ),
                    None => format!("{escalation} with no adjusted cycle after onset"),
                }
            }
        }
        Standard::Bnn2 => match snr.assessed_for_resistance_on {
            Some(tested) => format!("tested for resistance on {tested}"),
            None => format!("no resistance test on or after onset ({})", snr.onset_on),
        },
        Standard::Bnn3 => {
            let switch = or_never(snr.switched_to_bont_b_on);
            match (met, snr.assessed_for_resistance_on) {
                (true, Some(tested)) => {
                    format!("tested for resistance on {tested}, switched to BoNT-B on {switch}")
                }
                (_, Some(tested)) => format!(
                    "switched to BoNT-B on {switch}, before the first resistance test ({tested})"
                ),
                (_, None) => format!("switched to BoNT-B on {switch} with no resistance test"),
            }
        }
        Standard::Bnn4 => {
            let confirmed = or_never(snr.resistance_confirmed_on);
            match snr.management_changed_on {
                Some(changed) => {
                    format!("resistance confirmed on {confirmed}, management changed on {changed}")
                }
                None => format!(
                    "resistance confirmed on {confirmed}, but no BoNT-B cycle, other BoNT-A \
                     product, DBS or peripheral denervation referral, or discontinuation on or \
                     after it"
                ),
            }
        }
        Standard::Int1 => String::new(),
    }
}

fn interval_reason(analysis: &Analysis, parameters: &RuleParameters) -> String {
    let short: Vec<String> = analysis
        .cycles
        .windows(2)
        .filter_map(|pair| {
            let days = i64::from(pair[1].day) - i64::from(pair[0].day);
            (days < i64::from(parameters.min_interval_days)).then(|| {
                format!(
                    "{} to {} ({days} days)",
                    date_of(pair[0].day),
                    date_of(pair[1].day)
                )
            })
        })
        .collect();
    if short.is_empty() {
        format!(
            "every interval is at least {} days",
            parameters.min_interval_days
        )
    } else {
        format!(
            "shorter than {} days: {}",
            parameters.min_interval_days,
            short.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    //! The serialised text of every value [`Spelled`] writes is its
    //! `Display` text. serde_json writes `serialize_str(text)` and
    //! `collect_str(value)` alike when the text is the `Display` text, so an
    //! assessment's JSON is byte for byte what serialising through `Display`
    //! wrote before.

    use proptest::prelude::*;

    use super::*;

    fn spelled<T: Spelled>(value: &T) -> String {
        value.with_text(str::to_owned)
    }

    #[test]
    fn vocabularies_identifiers_and_standards_are_spelled_as_displayed() {
        for value in Muscle::ALL {
            assert_eq!(spelled(value), value.to_string());
        }
        for value in Side::ALL {
            assert_eq!(spelled(value), value.to_string());
        }
        for value in Product::ALL {
            assert_eq!(spelled(value), value.to_string());
        }
        for value in Guidance::ALL {
            assert_eq!(spelled(value), value.to_string());
        }
        for value in Rating::ALL {
            assert_eq!(spelled(value), value.to_string());
        }
        for value in Standard::ALL {
            assert_eq!(spelled(value), value.to_string());
        }
        let centre = Centre::parse("leeds-general").unwrap_or_else(|reason| panic!("{reason}"));
        assert_eq!(spelled(&centre), centre.to_string());
        let patient = Pseudonym::parse("L-000017").unwrap_or_else(|reason| panic!("{reason}"));
        assert_eq!(spelled(&patient), patient.to_string());
    }

    #[test]
    fn dates_at_the_edges_of_four_digit_years_are_spelled_as_displayed() {
        for (year, month, day) in [
            (1989, 1, 1),
            (2000, 2, 29),
            (2026, 12, 31),
            (9999, 12, 31),
            (1, 1, 1),
        ] {
            if let Some(date) = ClinicalDate::from_ymd(year, month, day) {
                assert_eq!(spelled(&date), date.to_string());
            }
        }
    }

    proptest! {
        #[test]
        fn every_date_is_spelled_as_displayed(days in -800_000i32..3_000_000) {
            if let Some(date) = ClinicalDate::from_days_since_epoch(days) {
                prop_assert_eq!(spelled(&date), date.to_string());
            }
        }
    }
}
