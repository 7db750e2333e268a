//! The audit report: the JSON shape of `spec/rules.md` ("The report"), and
//! the additive tally each patient contributes to it. A tally is summed over
//! patients, so a scope's numbers are the sum of its patients' shares and one
//! changed patient moves the totals by exactly its own difference.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::audit::{RULE_SET, RuleParameters, SnrGroup, Standard, engine::Analysis};

/// The name of the network-wide scope (a centre may not be called that).
pub const ALL_SCOPE: &str = "all";

/// The whole report: every scope, the rule set, and (only for a what-if
/// report) the parameters that differ from the rule set's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditReport {
    pub rule_set: String,
    /// All three parameters, present only when any differs from the default,
    /// so a default report has exactly the keys of `rules.md`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<RuleParameters>,
    /// `all` plus one entry per centre that has a registered patient.
    pub scopes: BTreeMap<String, ScopeReport>,
}

impl AuditReport {
    /// The parameters the numbers were computed with.
    pub fn parameters(&self) -> RuleParameters {
        self.parameters.unwrap_or_default()
    }

    /// The scopes for display: `all` first, then the centres by name.
    pub fn scopes_in_order(&self) -> Vec<(&str, &ScopeReport)> {
        let mut scopes: Vec<(&str, &ScopeReport)> = self
            .scopes
            .iter()
            .map(|(name, scope)| (name.as_str(), scope))
            .collect();
        scopes.sort_by_key(|(name, _)| (*name != ALL_SCOPE, *name));
        scopes
    }

    /// The report as the compact JSON object of `rules.md`.
    pub fn to_json(&self) -> String {
        // Serialising plain structs of integers and strings into a string
        // cannot fail; the fallback only keeps the no-panic rule honest.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The numbers of one scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeReport {
    /// Registered patients.
    pub patients: u64,
    /// Live `injection_administered` events of those patients.
    pub injections: u64,
    pub snr: SnrReport,
    pub standards: StandardsReport,
}

/// The SNR cohort and its two groups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnrReport {
    pub n: u64,
    pub suboptimal: GroupReport,
    pub no_response: GroupReport,
}

impl SnrReport {
    pub fn group(&self, group: SnrGroup) -> &GroupReport {
        match group {
            SnrGroup::Suboptimal => &self.suboptimal,
            SnrGroup::NoResponse => &self.no_response,
        }
    }

    fn group_mut(&mut self, group: SnrGroup) -> &mut GroupReport {
        match group {
            SnrGroup::Suboptimal => &mut self.suboptimal,
            SnrGroup::NoResponse => &mut self.no_response,
        }
    }
}

/// The ten counts of one SNR group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupReport {
    pub n: u64,
    pub regained_with_adjustment: u64,
    pub regained_without_adjustment: u64,
    pub not_regained: u64,
    pub switched_to_bont_b: u64,
    pub referred_dbs: u64,
    pub not_regained_switched_to_bont_b: u64,
    pub not_regained_referred_dbs: u64,
    pub assessed_for_resistance: u64,
    pub resistance_confirmed: u64,
}

/// The five standards, keyed by their ids in JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandardsReport {
    #[serde(rename = "BNN-1")]
    pub bnn_1: StandardResult,
    #[serde(rename = "BNN-2")]
    pub bnn_2: StandardResult,
    #[serde(rename = "BNN-3")]
    pub bnn_3: StandardResult,
    #[serde(rename = "BNN-4")]
    pub bnn_4: StandardResult,
    #[serde(rename = "INT-1")]
    pub int_1: StandardResult,
}

impl StandardsReport {
    pub fn get(&self, standard: Standard) -> &StandardResult {
        match standard {
            Standard::Bnn1 => &self.bnn_1,
            Standard::Bnn2 => &self.bnn_2,
            Standard::Bnn3 => &self.bnn_3,
            Standard::Bnn4 => &self.bnn_4,
            Standard::Int1 => &self.int_1,
        }
    }

    fn get_mut(&mut self, standard: Standard) -> &mut StandardResult {
        match standard {
            Standard::Bnn1 => &mut self.bnn_1,
            Standard::Bnn2 => &mut self.bnn_2,
            Standard::Bnn3 => &mut self.bnn_3,
            Standard::Bnn4 => &mut self.bnn_4,
            Standard::Int1 => &mut self.int_1,
        }
    }
}

/// One standard's result. A denominator of 0 stays 0/0 here; human formats
/// show it as "n/a".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandardResult {
    pub numerator: u64,
    pub denominator: u64,
    /// Every BNN standard aims at 100%.
    pub target_pct: u64,
}

impl Default for StandardResult {
    fn default() -> Self {
        Self {
            numerator: 0,
            denominator: 0,
            target_pct: 100,
        }
    }
}

/// A patient's share of a scope: the same counters as [`ScopeReport`], added
/// and subtracted as patients change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally(pub ScopeReport);

impl Tally {
    /// The share of one patient. A patient who was never registered is not in
    /// the audit (admission refuses their events, so a valid log has none).
    pub fn of(analysis: &Analysis) -> Self {
        Share::of(analysis).tally()
    }

    pub fn add(&mut self, other: &Tally) {
        self.combine(other, u64::wrapping_add);
    }

    /// Takes back a share added earlier. Totals never go below zero because
    /// only shares that were added are ever subtracted; wrapping arithmetic
    /// keeps that cheap and panic-free.
    pub fn subtract(&mut self, other: &Tally) {
        self.combine(other, u64::wrapping_sub);
    }

    fn combine(&mut self, other: &Tally, operation: fn(u64, u64) -> u64) {
        let (mine, theirs) = (&mut self.0, &other.0);
        mine.patients = operation(mine.patients, theirs.patients);
        mine.injections = operation(mine.injections, theirs.injections);
        mine.snr.n = operation(mine.snr.n, theirs.snr.n);
        for group in [SnrGroup::Suboptimal, SnrGroup::NoResponse] {
            let their_group = *theirs.snr.group(group);
            let my_group = mine.snr.group_mut(group);
            for (mine, theirs) in my_group
                .counters_mut()
                .into_iter()
                .zip(their_group.counters())
            {
                *mine = operation(*mine, theirs);
            }
        }
        for standard in Standard::ALL {
            let their_result = *theirs.standards.get(*standard);
            let my_result = mine.standards.get_mut(*standard);
            my_result.numerator = operation(my_result.numerator, their_result.numerator);
            my_result.denominator = operation(my_result.denominator, their_result.denominator);
        }
    }
}

/// A patient's share in compact form: exactly what [`Tally::of`] reads of an
/// analysis. The cohort keeps one per patient to take it back from the
/// totals when the patient changes; at 40 bytes instead of a 304-byte
/// [`Tally`] that is 26 MB less for 100k patients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Share {
    registered: bool,
    injections: u64,
    interval_pairs: u64,
    interval_pairs_met: u64,
    snr: Option<SnrShare>,
}

/// What the tally reads of a patient's SNR facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SnrShare {
    group: SnrGroup,
    switched: bool,
    referred_dbs: bool,
    assessed: bool,
    confirmed: bool,
    regained: bool,
    regained_with_adjustment: bool,
    adjusted_before_escalation: bool,
    tested_by_first_bont_b: bool,
    management_changed: bool,
}

impl Share {
    /// The share of one patient (nothing for a patient never registered).
    pub fn of(analysis: &Analysis) -> Self {
        if !analysis.registered {
            return Self::default();
        }
        Self {
            registered: true,
            injections: analysis.cycles.len() as u64,
            interval_pairs: analysis.interval_pairs,
            interval_pairs_met: analysis.interval_pairs_met,
            snr: analysis.snr.as_ref().map(|snr| SnrShare {
                group: snr.group,
                switched: snr.first_bont_b_day.is_some(),
                referred_dbs: snr.first_dbs_referral_day.is_some(),
                assessed: snr.first_resistance_test_day.is_some(),
                confirmed: snr.first_positive_test_day.is_some(),
                regained: snr.regained.is_some(),
                regained_with_adjustment: snr.regained_with_adjustment,
                adjusted_before_escalation: snr.adjusted_before_escalation,
                tested_by_first_bont_b: snr.tested_by_first_bont_b,
                management_changed: snr.management_change_day.is_some(),
            }),
        }
    }

    /// The share as a tally, to add to or take from the totals.
    pub fn tally(&self) -> Tally {
        let mut scope = ScopeReport::default();
        if !self.registered {
            return Tally(scope);
        }
        scope.patients = 1;
        scope.injections = self.injections;
        let int_1 = scope.standards.get_mut(Standard::Int1);
        int_1.numerator = self.interval_pairs_met;
        int_1.denominator = self.interval_pairs;

        let Some(snr) = &self.snr else {
            return Tally(scope);
        };
        scope.snr.n = 1;
        let SnrShare {
            group: snr_group,
            switched,
            referred_dbs,
            assessed,
            confirmed,
            regained,
            ..
        } = *snr;

        let group = scope.snr.group_mut(snr_group);
        group.n = 1;
        group.regained_with_adjustment = u64::from(regained && snr.regained_with_adjustment);
        group.regained_without_adjustment = u64::from(regained && !snr.regained_with_adjustment);
        group.not_regained = u64::from(!regained);
        group.switched_to_bont_b = u64::from(switched);
        group.referred_dbs = u64::from(referred_dbs);
        group.not_regained_switched_to_bont_b = u64::from(!regained && switched);
        group.not_regained_referred_dbs = u64::from(!regained && referred_dbs);
        group.assessed_for_resistance = u64::from(assessed);
        group.resistance_confirmed = u64::from(confirmed);

        let standards = &mut scope.standards;
        if snr_group == SnrGroup::Suboptimal && (switched || referred_dbs) {
            standards.bnn_1.denominator = 1;
            standards.bnn_1.numerator = u64::from(snr.adjusted_before_escalation);
        }
        if snr_group == SnrGroup::NoResponse {
            standards.bnn_2.denominator = 1;
            standards.bnn_2.numerator = u64::from(assessed);
        }
        if switched {
            standards.bnn_3.denominator = 1;
            standards.bnn_3.numerator = u64::from(snr.tested_by_first_bont_b);
        }
        if confirmed {
            standards.bnn_4.denominator = 1;
            standards.bnn_4.numerator = u64::from(snr.management_changed);
        }
        Tally(scope)
    }
}

impl GroupReport {
    fn counters(&self) -> [u64; 10] {
        [
            self.n,
            self.regained_with_adjustment,
            self.regained_without_adjustment,
            self.not_regained,
            self.switched_to_bont_b,
            self.referred_dbs,
            self.not_regained_switched_to_bont_b,
            self.not_regained_referred_dbs,
            self.assessed_for_resistance,
            self.resistance_confirmed,
        ]
    }

    fn counters_mut(&mut self) -> [&mut u64; 10] {
        [
            &mut self.n,
            &mut self.regained_with_adjustment,
            &mut self.regained_without_adjustment,
            &mut self.not_regained,
            &mut self.switched_to_bont_b,
            &mut self.referred_dbs,
            &mut self.not_regained_switched_to_bont_b,
            &mut self.not_regained_referred_dbs,
            &mut self.assessed_for_resistance,
            &mut self.resistance_confirmed,
        ]
    }
}

/// Builds the report from per-centre totals (centres with a registered
/// patient only) and the parameters used.
pub(crate) fn build_report<'a>(
    parameters: &RuleParameters,
    centres: impl Iterator<Item = (&'a str, &'a Tally)>,
) -> AuditReport {
    let mut all = Tally::default();
    let mut scopes = BTreeMap::new();
    for (centre, tally) in centres {
        all.add(tally);
        if tally.0.patients > 0 {
            scopes.insert(centre.to_owned(), tally.0);
        }
    }
    scopes.insert(ALL_SCOPE.to_owned(), all.0);
    AuditReport {
        rule_set: RULE_SET.to_owned(),
        parameters: (!parameters.is_default()).then_some(*parameters),
        scopes,
    }
}
