//! proptest strategies for valid events of every type. Shared with the proto
//! crate's tests (included there by path) so both round-trip properties run
//! over the same events.

use domain::{
    Centre, ClinicalDate, Event, EventBody, EventId, EventType, EventVoided, Guidance,
    InjectionAdministered, Muscle, MuscleDose, PatientRegistered, Product, Pseudonym, Rating,
    ReferralMade, ReferralTarget, ResistanceMethod, ResistanceResult, ResistanceTested,
    ResponseAssessed, Sex, Side, TreatmentDiscontinued,
};
use proptest::{prelude::*, sample::select};

/// The "today" the generated events are valid for.
pub fn strategy_today() -> ClinicalDate {
    ClinicalDate::from_ymd(2026, 11, 25).unwrap()
}

pub fn event_id() -> impl Strategy<Value = EventId> {
    "[A-Za-z0-9._:-]{1,64}".prop_map(|text| EventId::parse(&text).unwrap())
}

pub fn centre() -> impl Strategy<Value = Centre> {
    "[a-z0-9-]{2,32}".prop_filter_map("all is reserved", |text| Centre::parse(&text).ok())
}

pub fn pseudonym() -> impl Strategy<Value = Pseudonym> {
    // Mostly digits and separators now and then, so NHS-number look-alikes
    // are generated (and filtered) too.
    prop_oneof!["[A-Za-z0-9._-]{1,64}", "[0-9.-]{10,12}"]
        .prop_filter_map("not an NHS number", |text| Pseudonym::parse(&text).ok())
}

pub fn clinical_date() -> impl Strategy<Value = ClinicalDate> {
    let earliest = ClinicalDate::from_ymd(1989, 1, 1)
        .unwrap()
        .days_since_epoch();
    let latest = strategy_today().next_day().days_since_epoch();
    (earliest..=latest).prop_map(|days| ClinicalDate::from_days_since_epoch(days).unwrap())
}

fn vocabulary<T: Copy + std::fmt::Debug + 'static>(all: &'static [T]) -> impl Strategy<Value = T> {
    select(all)
}

/// Free text of 1 to 500 characters, any Unicode (quotes, backslashes and
/// control characters included).
pub fn reason() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z ]{1,40}",
        proptest::collection::vec(any::<char>(), 1..=500)
            .prop_map(|characters| characters.into_iter().collect::<String>()),
    ]
}

pub fn titre() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        0.0..10_000.0f64,
        (proptest::num::f64::POSITIVE | proptest::num::f64::ZERO)
            .prop_filter("finite", |titre| titre.is_finite()),
    ]
}

fn small(high: u8) -> impl Strategy<Value = Option<u8>> {
    proptest::option::of(0..=high)
}

pub fn injection() -> impl Strategy<Value = InjectionAdministered> {
    let pairs: Vec<(Muscle, Side)> = Muscle::ALL
        .iter()
        .flat_map(|muscle| Side::ALL.iter().map(move |side| (*muscle, *side)))
        .collect();
    (
        vocabulary(Product::ALL),
        vocabulary(Guidance::ALL),
        proptest::sample::subsequence(pairs, 1..=8).prop_shuffle(),
    )
        .prop_flat_map(|(product, guidance, pairs)| {
            let most_per_muscle = product.hard_maximum_units() / pairs.len() as u32;
            let count = pairs.len();
            (
                Just(product),
                Just(guidance),
                Just(pairs),
                proptest::collection::vec(1..=most_per_muscle, count),
            )
        })
        .prop_map(|(product, guidance, pairs, units)| {
            let muscles: Vec<MuscleDose> = pairs
                .into_iter()
                .zip(units)
                .map(|((muscle, side), units)| MuscleDose {
                    muscle,
                    side,
                    units,
                })
                .collect();
            let total = muscles.iter().map(|dose| dose.units).sum();
            InjectionAdministered::new(product, total, guidance, muscles).unwrap()
        })
}

pub fn body() -> impl Strategy<Value = EventBody> {
    prop_oneof![
        (
            proptest::option::of(1900..=2026i32),
            proptest::option::of(vocabulary(Sex::ALL)),
            proptest::option::of(0..=50i32),
        )
            .prop_map(|(birth_year, sex, onset_after)| {
                // Onset is not before birth: derive it from the birth year.
                let onset_year =
                    onset_after.map(|after| (birth_year.unwrap_or(1900) + after).min(2026));
                EventBody::PatientRegistered(PatientRegistered {
                    birth_year,
                    sex,
                    onset_year,
                })
            }),
        injection().prop_map(EventBody::InjectionAdministered),
        (
            event_id(),
            vocabulary(Rating::ALL),
            small(100),
            small(52),
            small(87)
        )
            .prop_map(
                |(injection_event_id, rating, percent_improvement, benefit_weeks, twstrs_total)| {
                    EventBody::ResponseAssessed(ResponseAssessed {
                        injection_event_id,
                        rating,
                        percent_improvement,
                        benefit_weeks,
                        twstrs_total,
                    })
                }
            ),
        (
            vocabulary(ResistanceMethod::ALL),
            vocabulary(ResistanceResult::ALL),
            proptest::option::of(titre()),
        )
            .prop_map(|(method, result, titre_mu_per_ml)| {
                EventBody::ResistanceTested(ResistanceTested {
                    method,
                    result,
                    titre_mu_per_ml,
                })
            }),
        vocabulary(ReferralTarget::ALL)
            .prop_map(|target| EventBody::ReferralMade(ReferralMade { target })),
        reason()
            .prop_map(|reason| EventBody::TreatmentDiscontinued(TreatmentDiscontinued { reason })),
        (event_id(), reason()).prop_map(|(target_event_id, reason)| {
            EventBody::EventVoided(EventVoided {
                target_event_id,
                reason,
            })
        }),
    ]
}

/// A valid event of any type, valid for [`strategy_today`].
pub fn event() -> impl Strategy<Value = Event> {
    (event_id(), centre(), pseudonym(), clinical_date(), body()).prop_map(
        |(event_id, centre, patient, occurred_on, body)| Event {
            event_id,
            centre,
            patient,
            occurred_on,
            body,
        },
    )
}

/// Every event type is generated (a guard against a strategy that silently
/// loses a branch).
#[allow(dead_code)]
pub const GENERATED_TYPES: &[EventType] = EventType::ALL;
