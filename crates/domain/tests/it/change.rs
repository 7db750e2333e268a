//! `audit::apply_and_compare`: for every event of generated logs (voids,
//! re-assessments, backdated cycles, tests, referrals of several patients),
//! what it says the event did to the patient's assessment is what comparing
//! the whole assessment before and after the event says.

use domain::audit::{AssessmentChange, Cohort, RuleParameters, apply_and_compare};
use domain::{Product, Rating};
use proptest::prelude::*;

use crate::{
    audit_builder::Log,
    audit_properties::{build, parameters, steps},
};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn the_cheap_verdict_is_the_verdict_of_comparing_whole_assessments(
        steps in steps(),
        parameters in prop_oneof![Just(RuleParameters::default()), parameters()],
    ) {
        let log = build(&steps);
        let mut judged = Cohort::new(parameters);
        let mut reference = Cohort::new(parameters);
        for event in &log.events {
            let key = event.event.patient_key();
            let before = reference.patient(&key);
            reference.apply(event);
            let after = reference.patient(&key);
            let expected = match (&before, &after) {
                (_, None) => AssessmentChange::NotRegistered,
                (_, Some(after)) if !after.registered => AssessmentChange::NotRegistered,
                (Some(before), Some(after)) if before.registered && before == after => {
                    AssessmentChange::Unchanged
                }
                _ => AssessmentChange::Changed,
            };
            let verdict = apply_and_compare(&mut judged, event);
            prop_assert_eq!(verdict, expected, "at position {}", event.position);
        }
    }
}

#[test]
fn unregistered_then_registered_then_a_same_rating_again() {
    let mut log = Log::new();
    let injection = log.inject("leeds/L-1", "2020-01-06", Product::OnabotulinumtoxinA, 200);
    log.register("leeds/L-1");
    log.register("leeds/L-1");
    log.rate("leeds/L-1", "2020-01-06", &injection, Rating::Good);
    log.rate("leeds/L-1", "2020-01-06", &injection, Rating::Good);
    log.rate("leeds/L-1", "2020-01-06", &injection, Rating::None);
    let mut cohort = Cohort::new(RuleParameters::default());
    let verdicts: Vec<_> = log
        .events
        .iter()
        .map(|event| apply_and_compare(&mut cohort, event))
        .collect();
    use AssessmentChange::{Changed, NotRegistered, Unchanged};
    assert_eq!(
        verdicts,
        [
            NotRegistered,
            Changed,
            Unchanged,
            Changed,
            Unchanged,
            Changed
        ]
    );
}
