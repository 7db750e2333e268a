//! The audit engine: one patient's events stored compactly, and the rules of
//! `spec/rules.md` evaluated over them. Everything the report counts and the
//! patient view explains comes from [`analyse`], so the two cannot disagree.
//!
//! Events are kept as small fixed-size records (dates as day numbers, event
//! ids as 64-bit hashes, vocabularies as one-byte enums, the injected
//! (muscle, side) pairs as a bit set), because a network-wide rebuild holds
//! every patient's history at once: 10 million events must fit in well under
//! a gigabyte. Event ids are only ever compared within one patient (a
//! response and a void name an event of the same patient), where the chance
//! that two ids share a 64-bit hash is below one in 10^11 even for a patient
//! with 10,000 events.

use serde::{Deserialize, Serialize};

use crate::{
    audit::{RuleParameters, SnrGroup},
    event::{
        EventBody, Guidance, Muscle, Product, Rating, RecordedEvent, ReferralTarget,
        ResistanceMethod, ResistanceResult, Serotype, Side,
    },
    ids::EventId,
};

/// The 64-bit hash that stands for an event id inside one patient's log.
fn id_hash(event_id: &EventId) -> u64 {
    xxhash_rust::xxh3::xxh3_64(event_id.as_str().as_bytes())
}

// Every (muscle, side) pair must have its own bit in a `u32` muscle set.
const _: () = assert!(Muscle::ALL.len() * Side::ALL.len() <= 32);

/// The bit of a (muscle, side) pair in an injection's muscle set: 15 muscles
/// times 2 sides fit in 30 bits.
pub(crate) fn muscle_bit(muscle: Muscle, side: Side) -> u32 {
    1 << (muscle as u32 * 2 + side as u32)
}

/// The (muscle, side) pairs of a muscle set, in the contract's muscle order.
pub(crate) fn muscles_of(set: u32) -> Vec<(Muscle, Side)> {
    let mut pairs = Vec::new();
    for muscle in Muscle::ALL {
        for side in Side::ALL {
            if set & muscle_bit(*muscle, *side) != 0 {
                pairs.push((*muscle, *side));
            }
        }
    }
    pairs
}

/// What the audit needs of one event, by type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Detail {
    Injection {
        #[serde(with = "crate::snapshot::code")]
        product: Product,
        #[serde(with = "crate::snapshot::code")]
        guidance: Guidance,
        total_units: u32,
        /// The set of (muscle, side) pairs, see [`muscle_bit`].
        muscles: u32,
    },
    Response {
        /// Index, in the patient's event list, of the assessed injection.
        injection: u32,
        #[serde(with = "crate::snapshot::code")]
        rating: Rating,
    },
    Resistance {
        #[serde(with = "crate::snapshot::code")]
        method: ResistanceMethod,
        #[serde(with = "crate::snapshot::code")]
        result: ResistanceResult,
    },
    Referral {
        #[serde(with = "crate::snapshot::code")]
        target: ReferralTarget,
    },
    Discontinued,
    /// A voided event: as if it had never been appended. Voids are final
    /// (a void cannot be voided), so its details are never needed again; the
    /// record stays so the indices responses point at do not move.
    Voided,
}

/// One stored event of a patient.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct CompactEvent {
    /// Global log position: breaks ties of clinical date, and orders
    /// re-assessments.
    pub position: u64,
    /// Hash of the event id, to resolve responses and voids.
    pub id_hash: u64,
    /// The clinical date, as days since 1970-01-01.
    pub day: i32,
    pub detail: Detail,
}

/// One patient's history as the audit keeps it. Registrations and voids are
/// folded in rather than stored: a registration sets a flag, a void turns its
/// target into [`Detail::Voided`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PatientLog {
    pub registered: bool,
    pub events: Vec<CompactEvent>,
}

impl PatientLog {
    /// Folds one more event of this patient, in the patient's log order.
    /// Returns false when the event changes nothing the audit reads (a second
    /// registration, or a response or void naming an event this patient does
    /// not have: admission refuses both, so a valid log never has them).
    pub fn apply(&mut self, recorded: &RecordedEvent) -> bool {
        let event = &recorded.event;
        let detail = match &event.body {
            EventBody::PatientRegistered(_) => {
                let changed = !self.registered;
                self.registered = true;
                return changed;
            }
            EventBody::EventVoided(void) => {
                let target_hash = id_hash(&void.target_event_id);
                return match self.find(target_hash, |_| true) {
                    Some(index) if self.events[index].detail != Detail::Voided => {
                        self.events[index].detail = Detail::Voided;
                        true
                    }
                    _ => false,
                };
            }
            EventBody::InjectionAdministered(injection) => Detail::Injection {
                product: injection.product(),
                guidance: injection.guidance(),
                total_units: injection.total_units(),
                muscles: injection
                    .muscles()
                    .iter()
                    .fold(0, |set, dose| set | muscle_bit(dose.muscle, dose.side)),
            },
            EventBody::ResponseAssessed(response) => {
                let target_hash = id_hash(&response.injection_event_id);
                let is_injection =
                    |detail: &Detail| matches!(detail, Detail::Injection { .. } | Detail::Voided);
                let Some(index) = self.find(target_hash, is_injection) else {
                    return false;
                };
                let Ok(injection) = u32::try_from(index) else {
                    return false;
                };
                Detail::Response {
                    injection,
                    rating: response.rating,
                }
            }
            EventBody::ResistanceTested(test) => Detail::Resistance {
                method: test.method,
                result: test.result,
            },
            EventBody::ReferralMade(referral) => Detail::Referral {
                target: referral.target,
            },
            EventBody::TreatmentDiscontinued(_) => Detail::Discontinued,
        };
        if self.events.len() == self.events.capacity() {
            // Grow by half rather than double: across 100k patients the
            // slack of doubling would be a third of the cohort's memory.
            let extra = (self.events.len() / 2).max(4);
            self.events.reserve_exact(extra);
        }
        self.events.push(CompactEvent {
            position: recorded.position,
            id_hash: id_hash(&event.event_id),
            day: event.occurred_on.days_since_epoch(),
            detail,
        });
        true
    }

    /// Checks what a restored log must hold for the rules to read it: a
    /// response names an earlier event of this log.
    pub fn check_restored(&self) -> Result<(), String> {
        for (index, event) in self.events.iter().enumerate() {
            if let Detail::Response { injection, .. } = event.detail
                && usize::try_from(injection).map_or(true, |injection| injection >= index)
            {
                return Err(format!(
                    "event {index} is a response to event {injection}, which does not precede it"
                ));
            }
        }
        Ok(())
    }

    /// The latest event with this id hash that passes `filter`. Searching
    /// from the end finds the usual targets (the last injection, a recent
    /// mistake) in a step or two.
    fn find(&self, hash: u64, filter: impl Fn(&Detail) -> bool) -> Option<usize> {
        self.events
            .iter()
            .rposition(|event| event.id_hash == hash && filter(&event.detail))
    }
}

/// One live cycle, in clinical order, with what the rules found about it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CycleFacts {
    pub position: u64,
    pub day: i32,
    pub product: Product,
    pub guidance: Guidance,
    pub total_units: u32,
    pub muscles: u32,
    /// The current rating: the last live assessment by position.
    pub rating: Option<Rating>,
    /// A post-onset BoNT-A cycle that differs from the one before it.
    pub adjusted: bool,
}

impl CycleFacts {
    pub fn is_bont_a(&self) -> bool {
        self.product.serotype() == Serotype::A
    }
}

/// What the rules found after a patient's SNR onset.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SnrFacts {
    /// Index of the onset cycle O in [`Analysis::cycles`].
    pub onset: usize,
    pub group: SnrGroup,
    /// Good BoNT-A cycles before O.
    pub good_cycles_before_onset: u32,
    pub first_adjusted_day: Option<i32>,
    /// Index of the first good post-onset BoNT-A cycle R, when no post-onset
    /// BoNT-B cycle comes before it.
    pub regained: Option<usize>,
    pub regained_with_adjustment: bool,
    pub first_bont_b_day: Option<i32>,
    pub first_dbs_referral_day: Option<i32>,
    pub first_resistance_test_day: Option<i32>,
    pub first_positive_test_day: Option<i32>,
    /// BNN-1 numerator: an adjusted cycle strictly before the escalation date.
    pub adjusted_before_escalation: bool,
    /// BNN-3 numerator: a post-onset test on or before the first post-onset
    /// BoNT-B cycle's date.
    pub tested_by_first_bont_b: bool,
    /// BNN-4 numerator: the earliest change of management on or after the
    /// first positive test's date.
    pub management_change_day: Option<i32>,
}

impl SnrFacts {
    /// The first escalation date: the earlier of the first post-onset BoNT-B
    /// cycle and the earliest post-onset DBS referral.
    pub fn escalation_day(&self) -> Option<i32> {
        match (self.first_bont_b_day, self.first_dbs_referral_day) {
            (Some(switch), Some(referral)) => Some(switch.min(referral)),
            (switch, referral) => switch.or(referral),
        }
    }
}

/// Everything the rules say about one patient.
#[derive(Debug, Clone, Default)]
pub(crate) struct Analysis {
    pub registered: bool,
    /// Live cycles in clinical order: (occurred_on, position).
    pub cycles: Vec<CycleFacts>,
    pub snr: Option<SnrFacts>,
    /// INT-1: consecutive pairs of cycles, and those far enough apart.
    pub interval_pairs: u64,
    pub interval_pairs_met: u64,
}

/// Evaluates the rules over one patient's log.
pub(crate) fn analyse(log: &PatientLog, parameters: &RuleParameters) -> Analysis {
    let events = &log.events;

    // The current rating of each injection: its last live assessment by
    // position. A voided injection's assessments never reach a cycle,
    // because the cycle list below holds live injections only.
    let mut latest_rating: Vec<Option<(u64, Rating)>> = vec![None; events.len()];
    for event in events {
        if let Detail::Response { injection, rating } = event.detail
            && let Some(slot) = latest_rating.get_mut(injection as usize)
            && slot.is_none_or(|(position, _)| position < event.position)
        {
            *slot = Some((event.position, rating));
        }
    }

    let mut cycles: Vec<CycleFacts> = events
        .iter()
        .zip(&latest_rating)
        .filter_map(|(event, rating)| match event.detail {
            Detail::Injection {
                product,
                guidance,
                total_units,
                muscles,
            } => Some(CycleFacts {
                position: event.position,
                day: event.day,
                product,
                guidance,
                total_units,
                muscles,
                rating: rating.map(|(_, rating)| rating),
                adjusted: false,
            }),
            _ => None,
        })
        .collect();
    cycles.sort_unstable_by_key(|cycle| (cycle.day, cycle.position));

    let mut interval_pairs = 0;
    let mut interval_pairs_met = 0;
    for pair in cycles.windows(2) {
        interval_pairs += 1;
        if i64::from(pair[1].day) - i64::from(pair[0].day)
            >= i64::from(parameters.min_interval_days)
        {
            interval_pairs_met += 1;
        }
    }

    let snr = find_onset(&cycles, parameters).map(|(onset, group, good)| {
        after_onset(events, &mut cycles, onset, group, good, parameters)
    });

    Analysis {
        registered: log.registered,
        cycles,
        snr,
        interval_pairs,
        interval_pairs_met,
    }
}

/// Walks the BoNT-A cycles for the onset cycle O: the first poor one after at
/// least `min_good_cycles_before_snr` good ones. Unrated cycles neither count
/// nor stop the walk; a poor cycle does not reset the count.
fn find_onset(
    cycles: &[CycleFacts],
    parameters: &RuleParameters,
) -> Option<(usize, SnrGroup, u32)> {
    let mut good = 0u32;
    for (index, cycle) in cycles.iter().enumerate() {
        if !cycle.is_bont_a() {
            continue;
        }
        match cycle.rating {
            None => {}
            Some(Rating::Good) => good = good.saturating_add(1),
            Some(poor) if good >= parameters.min_good_cycles_before_snr => {
                let group = if poor == Rating::None {
                    SnrGroup::NoResponse
                } else {
                    SnrGroup::Suboptimal
                };
                return Some((index, group, good));
            }
            // A poor cycle too early for SNR neither counts nor resets.
            Some(_) => {}
        }
    }
    None
}

/// True when J differs from P, the cycle before it, enough to count as an
/// adjustment: muscles, guidance, or (same product only) the dose by at least
/// `dose_change_min_pct` percent of P's, in exact integer arithmetic.
fn is_adjustment(previous: &CycleFacts, cycle: &CycleFacts, parameters: &RuleParameters) -> bool {
    if cycle.muscles != previous.muscles || cycle.guidance != previous.guidance {
        return true;
    }
    if cycle.product != previous.product {
        return false;
    }
    let change = u64::from(cycle.total_units.abs_diff(previous.total_units));
    change * 100 >= u64::from(parameters.dose_change_min_pct) * u64::from(previous.total_units)
}

/// Everything after the onset: adjusted cycles, regained, escalation, tests,
/// and the standards' numerators.
fn after_onset(
    events: &[CompactEvent],
    cycles: &mut [CycleFacts],
    onset: usize,
    group: SnrGroup,
    good_cycles_before_onset: u32,
    parameters: &RuleParameters,
) -> SnrFacts {
    let onset_day = cycles[onset].day;
    let onset_product = cycles[onset].product;

    // Adjusted cycles: each post-onset BoNT-A cycle against the one before it
    // (any product; O itself can be that one, but is never adjusted).
    for index in onset + 1..cycles.len() {
        if cycles[index].is_bont_a() {
            cycles[index].adjusted = is_adjustment(&cycles[index - 1], &cycles[index], parameters);
        }
    }
    let post_onset = &cycles[onset + 1..];
    let first_adjusted_day = post_onset
        .iter()
        .find(|cycle| cycle.adjusted)
        .map(|c| c.day);
    let first_bont_b_day = post_onset
        .iter()
        .find(|cycle| !cycle.is_bont_a())
        .map(|c| c.day);

    // Regained: the first good post-onset BoNT-A cycle R, unless a BoNT-B
    // cycle comes first; with adjustment when an adjusted cycle lies in (O, R].
    let mut regained = None;
    let mut adjusted_so_far = false;
    let mut regained_with_adjustment = false;
    for (offset, cycle) in post_onset.iter().enumerate() {
        if !cycle.is_bont_a() {
            break;
        }
        adjusted_so_far |= cycle.adjusted;
        if cycle.rating == Some(Rating::Good) {
            regained = Some(onset + 1 + offset);
            regained_with_adjustment = adjusted_so_far;
            break;
        }
    }

    // Post-onset tests and referrals go by date, not by cycle order.
    let mut first_dbs_referral_day: Option<i32> = None;
    let mut first_resistance_test_day: Option<i32> = None;
    let mut first_positive_test_day: Option<i32> = None;
    let mut tested_by_first_bont_b = false;
    for event in events.iter().filter(|event| event.day >= onset_day) {
        match event.detail {
            Detail::Referral {
                target: ReferralTarget::Dbs,
            } => first_dbs_referral_day = earliest(first_dbs_referral_day, event.day),
            Detail::Resistance { result, .. } => {
                first_resistance_test_day = earliest(first_resistance_test_day, event.day);
                if result == ResistanceResult::Positive {
                    first_positive_test_day = earliest(first_positive_test_day, event.day);
                }
                if first_bont_b_day.is_some_and(|switch| event.day <= switch) {
                    tested_by_first_bont_b = true;
                }
            }
            _ => {}
        }
    }

    let mut facts = SnrFacts {
        onset,
        group,
        good_cycles_before_onset,
        first_adjusted_day,
        regained,
        regained_with_adjustment,
        first_bont_b_day,
        first_dbs_referral_day,
        first_resistance_test_day,
        first_positive_test_day,
        adjusted_before_escalation: false,
        tested_by_first_bont_b,
        management_change_day: None,
    };
    if let Some(escalation) = facts.escalation_day() {
        facts.adjusted_before_escalation = cycles[onset + 1..]
            .iter()
            .any(|cycle| cycle.adjusted && cycle.day < escalation);
    }
    if let Some(confirmed) = first_positive_test_day {
        facts.management_change_day =
            management_change_on_or_after(events, cycles, onset_product, confirmed);
    }
    facts
}

/// BNN-4: the earliest date, on or after `confirmed`, of a BoNT-B cycle, a
/// BoNT-A cycle of another product than O's, a referral to DBS or peripheral
/// denervation, or a discontinuation. All compared by date.
fn management_change_on_or_after(
    events: &[CompactEvent],
    cycles: &[CycleFacts],
    onset_product: Product,
    confirmed: i32,
) -> Option<i32> {
    let mut change = None;
    for cycle in cycles.iter().filter(|cycle| cycle.day >= confirmed) {
        if !cycle.is_bont_a() || cycle.product != onset_product {
            change = earliest(change, cycle.day);
        }
    }
    for event in events.iter().filter(|event| event.day >= confirmed) {
        let changes_management = matches!(
            event.detail,
            Detail::Referral {
                target: ReferralTarget::Dbs | ReferralTarget::PeripheralDenervation
            } | Detail::Discontinued
        );
        if changes_management {
            change = earliest(change, event.day);
        }
    }
    change
}

fn earliest(current: Option<i32>, day: i32) -> Option<i32> {
    Some(current.map_or(day, |current| current.min(day)))
}
