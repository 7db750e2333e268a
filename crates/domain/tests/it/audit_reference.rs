//! A second, deliberately plain reading of `spec/rules.md`: the report
//! computed straight from full events with sets and sorts, no compact
//! storage, no hashing, no incremental totals. Generated logs must give the
//! engine's report exactly; a disagreement points at one of the two readings
//! of the rules.

use std::collections::{BTreeMap, HashMap, HashSet};

use domain::{
    ClinicalDate, EventBody, RecordedEvent,
    audit::{AuditReport, Cohort, GroupReport, RuleParameters, ScopeReport},
    event::{Rating, ReferralTarget, ResistanceResult, Serotype},
};
use proptest::prelude::*;

use crate::audit_properties::{build, parameters, steps};

/// One live cycle as the rules read it.
#[derive(Debug, Clone)]
struct Cycle {
    position: u64,
    date: ClinicalDate,
    product: domain::event::Product,
    units: u64,
    guidance: domain::event::Guidance,
    muscles: Vec<(domain::event::Muscle, domain::event::Side)>,
    rating: Option<Rating>,
}

impl Cycle {
    fn is_a(&self) -> bool {
        self.product.serotype() == Serotype::A
    }
}

/// The report, read from the rules line by line.
fn reference(events: &[RecordedEvent], p: &RuleParameters) -> BTreeMap<String, ScopeReport> {
    // Live events: not voided, not voids; assessments of voided injections go too.
    let voided: HashSet<&str> = events
        .iter()
        .filter_map(|e| match &e.event.body {
            EventBody::EventVoided(void) => Some(void.target_event_id.as_str()),
            _ => None,
        })
        .collect();
    let live_injections: HashSet<&str> = events
        .iter()
        .filter(|e| matches!(e.event.body, EventBody::InjectionAdministered(_)))
        .map(|e| e.event.event_id.as_str())
        .filter(|id| !voided.contains(id))
        .collect();
    let live: Vec<&RecordedEvent> = events
        .iter()
        .filter(|e| !voided.contains(e.event.event_id.as_str()))
        .filter(|e| match &e.event.body {
            EventBody::EventVoided(_) => false,
            EventBody::ResponseAssessed(r) => {
                live_injections.contains(r.injection_event_id.as_str())
            }
            _ => true,
        })
        .collect();

    let mut by_patient: BTreeMap<(String, String), Vec<&RecordedEvent>> = BTreeMap::new();
    for e in &live {
        by_patient
            .entry((e.event.centre.to_string(), e.event.patient.to_string()))
            .or_default()
            .push(e);
    }

    let mut scopes: BTreeMap<String, ScopeReport> = BTreeMap::new();
    for ((centre, _), own) in by_patient {
        if !own
            .iter()
            .any(|e| matches!(e.event.body, EventBody::PatientRegistered(_)))
        {
            continue;
        }
        let mut share = ScopeReport {
            patients: 1,
            ..ScopeReport::default()
        };

        // Ratings: the last live assessment by position.
        let mut ratings: HashMap<&str, (u64, Rating)> = HashMap::new();
        for e in &own {
            if let EventBody::ResponseAssessed(r) = &e.event.body {
                let id = r.injection_event_id.as_str();
                if ratings.get(id).is_none_or(|(pos, _)| *pos < e.position) {
                    ratings.insert(id, (e.position, r.rating));
                }
            }
        }
        let mut cycles: Vec<Cycle> = own
            .iter()
            .filter_map(|e| match &e.event.body {
                EventBody::InjectionAdministered(i) => {
                    let mut muscles: Vec<_> =
                        i.muscles().iter().map(|m| (m.muscle, m.side)).collect();
                    muscles.sort();
                    Some(Cycle {
                        position: e.position,
                        date: e.event.occurred_on,
                        product: i.product(),
                        units: u64::from(i.total_units()),
                        guidance: i.guidance(),
                        muscles,
                        rating: ratings.get(e.event.event_id.as_str()).map(|(_, r)| *r),
                    })
                }
                _ => None,
            })
            .collect();
        cycles.sort_by_key(|c| (c.date, c.position));
        share.injections = cycles.len() as u64;
        for pair in cycles.windows(2) {
            share.standards.int_1.denominator += 1;
            if pair[0].date.days_until(pair[1].date) >= i64::from(p.min_interval_days) {
                share.standards.int_1.numerator += 1;
            }
        }

        // Onset.
        let mut good = 0;
        let mut onset = None;
        for (index, c) in cycles.iter().enumerate() {
            if !c.is_a() {
                continue;
            }
            match c.rating {
                Some(Rating::Good) => good += 1,
                Some(poor) if good >= p.min_good_cycles_before_snr => {
                    onset = Some((index, poor));
                    break;
                }
                _ => {}
            }
        }
        if let Some((o, rating)) = onset {
            let onset_date = cycles[o].date;
            let onset_product = cycles[o].product;
            let post: Vec<(usize, &Cycle)> = cycles.iter().enumerate().skip(o + 1).collect();
            let adjusted = |j: usize| -> bool {
                let (prev, cur) = (&cycles[j - 1], &cycles[j]);
                cur.is_a()
                    && (cur.muscles != prev.muscles
                        || cur.guidance != prev.guidance
                        || (cur.product == prev.product
                            && cur.units.abs_diff(prev.units) * 100
                                >= u64::from(p.dose_change_min_pct) * prev.units))
            };
            let first_b = post
                .iter()
                .find(|(_, c)| !c.is_a())
                .map(|(j, c)| (*j, c.date));
            let regained = post
                .iter()
                .find(|(j, c)| {
                    c.is_a()
                        && c.rating == Some(Rating::Good)
                        && first_b.is_none_or(|(b, _)| b > *j)
                })
                .map(|(j, _)| *j);
            let with_adjustment = regained.is_some_and(|r| (o + 1..=r).any(adjusted));
            let post_events: Vec<&&RecordedEvent> = own
                .iter()
                .filter(|e| e.event.occurred_on >= onset_date)
                .collect();
            let dbs: Option<ClinicalDate> = post_events
                .iter()
                .filter(|e| matches!(&e.event.body, EventBody::ReferralMade(r) if r.target == ReferralTarget::Dbs))
                .map(|e| e.event.occurred_on)
                .min();
            let tests: Vec<(ClinicalDate, ResistanceResult)> = post_events
                .iter()
                .filter_map(|e| match &e.event.body {
                    EventBody::ResistanceTested(t) => Some((e.event.occurred_on, t.result)),
                    _ => None,
                })
                .collect();
            let positive = tests
                .iter()
                .filter(|(_, r)| *r == ResistanceResult::Positive)
                .map(|(d, _)| *d)
                .min();

            share.snr.n = 1;
            let group: &mut GroupReport = if rating == Rating::None {
                &mut share.snr.no_response
            } else {
                &mut share.snr.suboptimal
            };
            group.n = 1;
            group.regained_with_adjustment = u64::from(regained.is_some() && with_adjustment);
            group.regained_without_adjustment = u64::from(regained.is_some() && !with_adjustment);
            group.not_regained = u64::from(regained.is_none());
            group.switched_to_bont_b = u64::from(first_b.is_some());
            group.referred_dbs = u64::from(dbs.is_some());
            group.not_regained_switched_to_bont_b =
                u64::from(regained.is_none() && first_b.is_some());
            group.not_regained_referred_dbs = u64::from(regained.is_none() && dbs.is_some());
            group.assessed_for_resistance = u64::from(!tests.is_empty());
            group.resistance_confirmed = u64::from(positive.is_some());

            let escalation = [first_b.map(|(_, d)| d), dbs].into_iter().flatten().min();
            if rating == Rating::Suboptimal && escalation.is_some() {
                share.standards.bnn_1.denominator = 1;
                share.standards.bnn_1.numerator = u64::from(
                    (o + 1..cycles.len()).any(|j| adjusted(j) && Some(cycles[j].date) < escalation),
                );
            }
            if rating == Rating::None {
                share.standards.bnn_2.denominator = 1;
                share.standards.bnn_2.numerator = u64::from(!tests.is_empty());
            }
            if let Some((_, switch)) = first_b {
                share.standards.bnn_3.denominator = 1;
                share.standards.bnn_3.numerator =
                    u64::from(tests.iter().any(|(d, _)| *d <= switch));
            }
            if let Some(confirmed) = positive {
                share.standards.bnn_4.denominator = 1;
                let cycle_change = cycles
                    .iter()
                    .any(|c| c.date >= confirmed && (!c.is_a() || c.product != onset_product));
                let other_change = own.iter().any(|e| {
                    e.event.occurred_on >= confirmed
                        && match &e.event.body {
                            EventBody::ReferralMade(r) => matches!(
                                r.target,
                                ReferralTarget::Dbs | ReferralTarget::PeripheralDenervation
                            ),
                            EventBody::TreatmentDiscontinued(_) => true,
                            _ => false,
                        }
                });
                share.standards.bnn_4.numerator = u64::from(cycle_change || other_change);
            }
        }
        for scope in [centre.as_str(), "all"] {
            let total = scopes.entry(scope.to_owned()).or_default();
            add(total, &share);
        }
    }
    scopes.entry("all".to_owned()).or_default();
    scopes
}

fn add(total: &mut ScopeReport, share: &ScopeReport) {
    total.patients += share.patients;
    total.injections += share.injections;
    total.snr.n += share.snr.n;
    for (t, s) in [
        (&mut total.snr.suboptimal, &share.snr.suboptimal),
        (&mut total.snr.no_response, &share.snr.no_response),
    ] {
        t.n += s.n;
        t.regained_with_adjustment += s.regained_with_adjustment;
        t.regained_without_adjustment += s.regained_without_adjustment;
        t.not_regained += s.not_regained;
        t.switched_to_bont_b += s.switched_to_bont_b;
        t.referred_dbs += s.referred_dbs;
        t.not_regained_switched_to_bont_b += s.not_regained_switched_to_bont_b;
        t.not_regained_referred_dbs += s.not_regained_referred_dbs;
        t.assessed_for_resistance += s.assessed_for_resistance;
        t.resistance_confirmed += s.resistance_confirmed;
    }
    for (t, s) in [
        (&mut total.standards.bnn_1, &share.standards.bnn_1),
        (&mut total.standards.bnn_2, &share.standards.bnn_2),
        (&mut total.standards.bnn_3, &share.standards.bnn_3),
        (&mut total.standards.bnn_4, &share.standards.bnn_4),
        (&mut total.standards.int_1, &share.standards.int_1),
    ] {
        t.numerator += s.numerator;
        t.denominator += s.denominator;
    }
}

fn engine(events: &[RecordedEvent], parameters: RuleParameters) -> AuditReport {
    let mut cohort = Cohort::new(parameters);
    for event in events {
        cohort.apply(event);
    }
    cohort.report()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_engine_agrees_with_a_plain_reading_of_the_rules(
        steps in steps(),
        parameters in prop_oneof![Just(RuleParameters::default()), parameters()],
    ) {
        let log = build(&steps);
        prop_assert_eq!(engine(&log.events, parameters).scopes, reference(&log.events, &parameters));
    }
}
