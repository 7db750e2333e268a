//! Properties of the audit fold: the report depends on each patient's own
//! log order only (any interleaving of patients gives the same report), and
//! the live cohort, reporting after every event, always equals a fold from
//! scratch of the same prefix. Logs are generated valid: registration first,
//! responses and voids naming earlier live events of the same patient, dates
//! that jump back and forth (backdated entries) and re-assessments.

use domain::{
    EventBody, RecordedEvent,
    audit::{Cohort, RuleParameters, assess_patient},
    event::{Guidance, Muscle, Product, Rating, ReferralTarget, ResistanceResult, Side},
};
use proptest::prelude::*;

use crate::audit_builder::{Log, Session, days_after};

const PATIENTS: [&str; 4] = [
    "leeds/L-1",
    "leeds/L-2",
    "salford-royal/S-1",
    "salford-royal/L-1",
];

/// One step of a generated history: which patient, what kind of event, a
/// date offset and a few choices.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    patient: usize,
    kind: u8,
    day: u16,
    choice: u32,
}

pub fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(
        (0..PATIENTS.len(), 0u8..12, 0u16..1500, any::<u32>()).prop_map(
            |(patient, kind, day, choice)| Step {
                patient,
                kind,
                day,
                choice,
            },
        ),
        1..150,
    )
}

/// Per patient, what a valid next event may name.
#[derive(Debug, Default, Clone)]
struct Known {
    registered: bool,
    /// Live injections: (id, date).
    injections: Vec<(String, String)>,
    /// Live events a void may target (not registrations, not voids).
    voidable: Vec<String>,
    /// Days since 2012-01-02 of the patient's latest clinic visit: most
    /// events move it on by two to four months, some are backdated.
    clock: i32,
    /// The patient's current session, repeated until changed.
    session: Option<Session>,
}

/// Turns generated steps into a valid log.
pub fn build(steps: &[Step]) -> Log {
    let mut log = Log::new();
    let mut known = vec![Known::default(); PATIENTS.len()];
    let products = [
        Product::OnabotulinumtoxinA,
        Product::OnabotulinumtoxinA,
        Product::OnabotulinumtoxinA,
        Product::AbobotulinumtoxinA,
        Product::RimabotulinumtoxinB,
    ];
    let ratings = [Rating::Good, Rating::Good, Rating::Suboptimal, Rating::None];
    for step in steps {
        let patient = PATIENTS[step.patient];
        let state = &mut known[step.patient];
        let day = i32::from(step.day);
        let on_day = if day % 8 == 0 {
            (state.clock - day % 300).max(0)
        } else {
            state.clock += 50 + day % 60;
            state.clock
        };
        let on = days_after("2012-01-02", on_day);
        if !state.registered {
            log.register(patient);
            state.registered = true;
            continue;
        }
        let choice = step.choice as usize;
        match step.kind {
            0..=3 => {
                // Most sessions repeat the patient's previous one; about one
                // in three changes it (product, dose, guidance or muscles).
                if state.session.is_none() || choice.is_multiple_of(3) {
                    let product = products[choice / 3 % products.len()];
                    let units = match product {
                        Product::AbobotulinumtoxinA => 400 + 10 * (choice / 7 % 30) as u32,
                        Product::RimabotulinumtoxinB => 5000,
                        _ => 180 + 2 * (choice / 7 % 30) as u32,
                    };
                    let mut session = Session::of(product, units);
                    if (choice / 211).is_multiple_of(4) {
                        session = session.guided(Guidance::Ultrasound);
                    }
                    if (choice / 887).is_multiple_of(3) {
                        session
                            .muscles
                            .push((Muscle::LevatorScapulae, Side::Right, 10));
                    }
                    state.session = Some(session);
                }
                let Some(session) = state.session.clone() else {
                    continue;
                };
                let id = log.inject_session(patient, &on, session);
                state.injections.push((id.clone(), on));
                state.voidable.push(id);
            }
            4..=6 => {
                if state.injections.is_empty() {
                    continue;
                }
                // Mostly the latest injection, sometimes an older one.
                let which = if choice.is_multiple_of(4) {
                    choice / 4 % state.injections.len()
                } else {
                    state.injections.len() - 1
                };
                let (injection, injected_on) = state.injections[which].clone();
                let rated_on = if injected_on > on {
                    injected_on.clone()
                } else {
                    on
                };
                let rating = ratings[choice / 13 % ratings.len()];
                let id = log.rate_on(patient, &rated_on, &injection, rating);
                state.voidable.push(id);
            }
            7 => {
                let result = [
                    ResistanceResult::Positive,
                    ResistanceResult::Negative,
                    ResistanceResult::Equivocal,
                ][choice % 3];
                let id = log.test_resistance(patient, &on, result);
                state.voidable.push(id);
            }
            8 => {
                let target = [
                    ReferralTarget::Dbs,
                    ReferralTarget::PeripheralDenervation,
                    ReferralTarget::Physiotherapy,
                ][choice % 3];
                let id = log.refer(patient, &on, target);
                state.voidable.push(id);
            }
            9 => {
                let id = log.discontinue(patient, &on);
                state.voidable.push(id);
            }
            _ => {
                if state.voidable.is_empty() {
                    continue;
                }
                let target = state.voidable.remove(choice % state.voidable.len());
                state.injections.retain(|(id, _)| *id != target);
                log.void(patient, &on, &target);
            }
        }
    }
    log
}

/// Reorders the log so patients interleave differently while each patient's
/// events keep their order, and renumbers positions in the new log order.
fn interleave(events: &[RecordedEvent], seed: u64) -> Vec<RecordedEvent> {
    let patient_of = |event: &RecordedEvent| event.event.patient_key();
    let mut labels: Vec<_> = events.iter().map(patient_of).collect();
    // Fisher–Yates with SplitMix64, so a seed names one interleaving.
    let mut state = seed;
    for index in (1..labels.len()).rev() {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        labels.swap(index, (z % (index as u64 + 1)) as usize);
    }
    let mut queues: std::collections::HashMap<_, std::collections::VecDeque<&RecordedEvent>> =
        Default::default();
    for event in events {
        queues
            .entry(patient_of(event))
            .or_default()
            .push_back(event);
    }
    labels
        .iter()
        .enumerate()
        .map(|(index, label)| {
            let mut event = queues.get_mut(label).unwrap().pop_front().unwrap().clone();
            event.position = index as u64 + 1;
            event
        })
        .collect()
}

fn fold(events: &[RecordedEvent], parameters: RuleParameters) -> domain::audit::AuditReport {
    let mut cohort = Cohort::new(parameters);
    for event in events {
        cohort.apply(event);
    }
    cohort.report()
}

pub fn parameters() -> impl Strategy<Value = RuleParameters> {
    (0u32..4, 1u32..40, 60u32..100).prop_map(|(good, pct, days)| RuleParameters {
        min_good_cycles_before_snr: good,
        dose_change_min_pct: pct,
        min_interval_days: days,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn any_interleaving_of_patients_gives_the_same_report(
        steps in steps(),
        seed in any::<u64>(),
        parameters in prop_oneof![Just(RuleParameters::default()), parameters()],
    ) {
        let log = build(&steps);
        let reordered = interleave(&log.events, seed);
        prop_assert_eq!(fold(&log.events, parameters), fold(&reordered, parameters));
    }

    #[test]
    fn the_live_cohort_equals_a_fold_from_scratch_after_every_event(steps in steps()) {
        let log = build(&steps);
        let parameters = RuleParameters::default();
        let mut live = Cohort::new(parameters);
        for (index, event) in log.events.iter().enumerate() {
            live.apply(event);
            // Report only now and then as well as at the end, so several
            // events are sometimes folded between two reports.
            if index % 3 != 1 || index + 1 == log.events.len() {
                prop_assert_eq!(live.report(), fold(&log.events[..=index], parameters));
            }
        }
    }

    #[test]
    fn each_patient_view_is_the_pure_assessment_of_their_events(steps in steps()) {
        let log = build(&steps);
        let parameters = RuleParameters::default();
        let mut cohort = Cohort::new(parameters);
        for event in &log.events {
            cohort.apply(event);
        }
        let report = cohort.report();
        let mut snr_patients = 0;
        for key in cohort.patient_keys() {
            let own: Vec<RecordedEvent> = log
                .events
                .iter()
                .filter(|event| event.event.patient_key() == key)
                .cloned()
                .collect();
            let alone = assess_patient(&own, &parameters).unwrap();
            snr_patients += u64::from(alone.snr.is_some());
            prop_assert_eq!(Some(alone), cohort.patient(&key));
        }
        prop_assert_eq!(report.scopes["all"].snr.n, snr_patients);
        // Registrations are never voided, so every generated patient counts.
        let registered = log
            .events
            .iter()
            .filter(|event| matches!(event.event.body, EventBody::PatientRegistered(_)))
            .count() as u64;
        prop_assert_eq!(report.scopes["all"].patients, registered);
    }
}
