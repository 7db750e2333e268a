//! The audit rules of `spec/rules.md`, one test per definition and edge case,
//! each written as given events / when / then report (or patient view).

use domain::{
    audit::{AuditReport, Cohort, RULE_SET, RuleParameters, SnrGroup, Standard, assess_patient},
    event::{Guidance, Product, Rating, ReferralTarget, ResistanceResult},
};

use crate::audit_builder::{Log, PATIENT, Session, date, key};

const ONA: Product = Product::OnabotulinumtoxinA;
const ABO: Product = Product::AbobotulinumtoxinA;
const INCO: Product = Product::IncobotulinumtoxinA;
const RIMA: Product = Product::RimabotulinumtoxinB;

// Cycle dates 13 weeks (91 days) apart, after the responder's two good
// cycles on 2015-01-05 and 2015-04-06.
const C3: &str = "2015-07-06";
const C4: &str = "2015-10-05";
const C5: &str = "2016-01-04";
const C6: &str = "2016-04-04";

/// Given a responder (two good cycles) whose third cycle is rated `onset`.
fn with_onset(onset: Rating) -> Log {
    let mut log = Log::new();
    log.responder(PATIENT);
    log.cycle(PATIENT, C3, ONA, 200, onset);
    log
}

// ---- SNR onset ----------------------------------------------------------

#[test]
fn good_responders_are_counted_but_not_in_the_snr_cohort() {
    let mut log = Log::new();
    log.responder(PATIENT);
    log.cycle(PATIENT, C3, ONA, 200, Rating::Good);

    let all = log.all();
    assert_eq!((all.patients, all.injections, all.snr.n), (1, 3, 0));
    assert!(log.patient(PATIENT).snr.is_none());
}

#[test]
fn a_poor_cycle_after_two_good_ones_is_the_onset_and_its_rating_the_group() {
    let suboptimal = with_onset(Rating::Suboptimal).all();
    assert_eq!(suboptimal.snr.n, 1);
    assert_eq!(suboptimal.snr.suboptimal.n, 1);
    assert_eq!(suboptimal.snr.no_response.n, 0);

    let none = with_onset(Rating::None).all();
    assert_eq!(none.snr.no_response.n, 1);
    assert_eq!(none.snr.suboptimal.n, 0);

    let view = with_onset(Rating::None).patient(PATIENT);
    let snr = view.snr.unwrap();
    assert_eq!(snr.group, SnrGroup::NoResponse);
    assert_eq!(snr.onset_on, date(C3));
    assert_eq!(snr.good_cycles_before_onset, 2);
    assert!(view.cycles[2].onset);
}

#[test]
fn one_good_cycle_is_not_enough_and_primary_non_responders_are_not_snr() {
    let mut log = Log::new();
    log.register("leeds/L-1");
    log.cycle("leeds/L-1", "2015-01-05", ONA, 200, Rating::Good);
    log.cycle("leeds/L-1", "2015-04-06", ONA, 200, Rating::Suboptimal);
    log.register("leeds/L-2");
    log.cycle("leeds/L-2", "2015-01-05", ONA, 200, Rating::None);
    log.cycle("leeds/L-2", "2015-04-06", ONA, 200, Rating::None);
    log.cycle("leeds/L-2", "2015-07-06", ONA, 200, Rating::None);

    assert_eq!(log.all().snr.n, 0);
}

#[test]
fn a_poor_cycle_does_not_reset_the_good_count() {
    let mut log = Log::new();
    log.register(PATIENT);
    log.cycle(PATIENT, "2015-01-05", ONA, 200, Rating::Good);
    log.cycle(PATIENT, "2015-04-06", ONA, 200, Rating::Suboptimal);
    log.cycle(PATIENT, "2015-07-06", ONA, 200, Rating::Good);
    log.cycle(PATIENT, "2015-10-05", ONA, 200, Rating::None);

    let snr = log.patient(PATIENT).snr.unwrap();
    assert_eq!(snr.onset_on, date("2015-10-05"));
    assert_eq!(snr.group, SnrGroup::NoResponse);
    assert_eq!(snr.good_cycles_before_onset, 2);
}

#[test]
fn an_unrated_cycle_neither_counts_nor_breaks_the_walk() {
    // good, unrated, good, poor: the unrated cycle is skipped, onset found.
    let mut log = Log::new();
    log.register(PATIENT);
    log.cycle(PATIENT, "2015-01-05", ONA, 200, Rating::Good);
    log.inject(PATIENT, "2015-04-06", ONA, 200);
    log.cycle(PATIENT, "2015-07-06", ONA, 200, Rating::Good);
    log.cycle(PATIENT, "2015-10-05", ONA, 200, Rating::Suboptimal);
    let view = log.patient(PATIENT);
    assert_eq!(view.snr.unwrap().onset_on, date("2015-10-05"));
    assert_eq!(view.cycles[1].rating, None);
    assert_eq!(log.all().injections, 4);

    // good, unrated, poor: the unrated cycle is not a good one.
    let mut log = Log::new();
    log.register(PATIENT);
    log.cycle(PATIENT, "2015-01-05", ONA, 200, Rating::Good);
    log.inject(PATIENT, "2015-04-06", ONA, 200);
    log.cycle(PATIENT, "2015-07-06", ONA, 200, Rating::Suboptimal);
    assert_eq!(log.all().snr.n, 0);
}

#[test]
fn bont_b_cycles_are_skipped_in_the_onset_walk() {
    // A good BoNT-B cycle does not count towards the two good cycles.
    let mut log = Log::new();
    log.register(PATIENT);
    log.cycle(PATIENT, "2015-01-05", ONA, 200, Rating::Good);
    log.cycle(PATIENT, "2015-04-06", RIMA, 5000, Rating::Good);
    log.cycle(PATIENT, "2015-07-06", ONA, 200, Rating::Suboptimal);
    assert_eq!(log.all().snr.n, 0);

    // A poor BoNT-B cycle is not an onset either.
    let mut log = Log::new();
    log.responder(PATIENT);
    log.cycle(PATIENT, C3, RIMA, 5000, Rating::None);
    log.cycle(PATIENT, C4, ONA, 200, Rating::Suboptimal);
    let snr = log.patient(PATIENT).snr.unwrap();
    assert_eq!(snr.onset_on, date(C4));
    assert_eq!(snr.group, SnrGroup::Suboptimal);
}

#[test]
fn a_backdated_cycle_falls_in_clinical_order() {
    // Typed in: good (January), suboptimal (July), then January's follow-up
    // cycle of April, entered late. In clinical order: good, good, poor.
    let mut log = Log::new();
    log.register(PATIENT);
    log.cycle(PATIENT, "2015-01-05", ONA, 200, Rating::Good);
    log.cycle(PATIENT, "2015-07-06", ONA, 200, Rating::Suboptimal);
    let before = log.all();
    assert_eq!(before.snr.n, 0);
    assert_eq!(before.standards.int_1.numerator, 1);

    log.cycle(PATIENT, "2015-04-06", ONA, 200, Rating::Good);
    let view = log.patient(PATIENT);
    let dates: Vec<String> = view
        .cycles
        .iter()
        .map(|c| c.occurred_on.to_string())
        .collect();
    assert_eq!(dates, ["2015-01-05", "2015-04-06", "2015-07-06"]);
    assert_eq!(view.snr.unwrap().onset_on, date("2015-07-06"));
    // INT-1 pairs follow clinical order too: two pairs of 91 days.
    let all = log.all();
    assert_eq!(
        (
            all.standards.int_1.numerator,
            all.standards.int_1.denominator
        ),
        (2, 2)
    );
}

#[test]
fn cycles_on_the_same_date_are_ordered_by_log_position() {
    let mut log = Log::new();
    log.register(PATIENT);
    log.cycle(PATIENT, "2015-01-05", ONA, 200, Rating::Good);
    log.cycle(PATIENT, "2015-04-06", ONA, 200, Rating::Suboptimal);
    log.cycle(PATIENT, "2015-04-06", ONA, 200, Rating::Good);
    // Same date: the suboptimal one came first (lower position), after one
    // good cycle only, so there is no onset.
    assert_eq!(log.all().snr.n, 0);
}

// ---- Cycle ratings --------------------------------------------------------

#[test]
fn the_last_assessment_by_position_wins_and_voiding_it_brings_the_earlier_back() {
    let mut log = Log::new();
    log.responder(PATIENT);
    let third = log.inject(PATIENT, C3, ONA, 200);
    log.rate_on(PATIENT, "2015-08-10", &third, Rating::None);
    assert_eq!(log.all().snr.no_response.n, 1);

    // A re-assessment dated earlier but appended later still wins: the last
    // by position counts, not the last by date.
    let reassessment = log.rate_on(PATIENT, "2015-08-03", &third, Rating::Good);
    assert_eq!(log.all().snr.n, 0);
    assert_eq!(log.patient(PATIENT).cycles[2].rating, Some(Rating::Good));

    log.void(PATIENT, "2015-09-01", &reassessment);
    assert_eq!(log.all().snr.no_response.n, 1);
    assert_eq!(log.patient(PATIENT).cycles[2].rating, Some(Rating::None));
}

#[test]
fn a_voided_injection_takes_its_assessments_with_it() {
    let mut log = Log::new();
    log.responder(PATIENT);
    let wrong = log.cycle(PATIENT, C3, ONA, 200, Rating::None);
    log.void(PATIENT, "2015-09-01", &wrong);

    let all = log.all();
    assert_eq!(all.snr.n, 0);
    assert_eq!(all.injections, 2);
    assert_eq!(
        (
            all.standards.int_1.numerator,
            all.standards.int_1.denominator
        ),
        (1, 1)
    );
    assert_eq!(log.patient(PATIENT).cycles.len(), 2);
}

#[test]
fn voided_tests_and_referrals_are_ignored() {
    let mut log = with_onset(Rating::None);
    let test = log.test_resistance(PATIENT, C4, ResistanceResult::Positive);
    let referral = log.refer(PATIENT, C4, ReferralTarget::Dbs);
    let group = log.all().snr.no_response;
    assert_eq!((group.assessed_for_resistance, group.referred_dbs), (1, 1));

    log.void(PATIENT, C5, &test);
    log.void(PATIENT, C5, &referral);
    let group = log.all().snr.no_response;
    assert_eq!(
        (group.assessed_for_resistance, group.resistance_confirmed),
        (0, 0)
    );
    assert_eq!(group.referred_dbs, 0);
}

// ---- Adjusted cycles and regaining ---------------------------------------

/// Given a suboptimal onset at 200 ONA units, then a good cycle `next`.
fn regained_after(next: Session) -> domain::audit::GroupReport {
    let mut log = with_onset(Rating::Suboptimal);
    log.cycle_session(PATIENT, C4, next, Rating::Good);
    log.all().snr.suboptimal
}

fn regained_with_adjustment(next: Session) -> bool {
    let group = regained_after(next);
    assert_eq!(
        group.regained_with_adjustment + group.regained_without_adjustment,
        1
    );
    group.regained_with_adjustment == 1
}

#[test]
fn a_dose_change_of_exactly_the_threshold_counts_and_less_does_not() {
    assert!(
        regained_with_adjustment(Session::of(ONA, 220)),
        "+10% counts"
    );
    assert!(
        !regained_with_adjustment(Session::of(ONA, 218)),
        "+9% does not"
    );
    assert!(
        regained_with_adjustment(Session::of(ONA, 180)),
        "-10% counts"
    );
    assert!(
        !regained_with_adjustment(Session::of(ONA, 182)),
        "-9% does not"
    );
    assert!(
        !regained_with_adjustment(Session::of(ONA, 200)),
        "the same dose"
    );
}

#[test]
fn a_dose_change_counts_for_the_same_product_only() {
    // 200 ONA units then 500 ABO units: different units, not comparable.
    assert!(!regained_with_adjustment(Session::of(ABO, 500)));
    assert!(!regained_with_adjustment(Session::of(INCO, 300)));
}

#[test]
fn muscles_or_guidance_changes_are_adjustments_whatever_the_product() {
    assert!(regained_with_adjustment(
        Session::of(ONA, 200).guided(Guidance::Ultrasound)
    ));
    assert!(regained_with_adjustment(
        Session::of(ABO, 500).guided(Guidance::None)
    ));
    assert!(regained_with_adjustment(
        Session::of(ONA, 180).plus_trapezius(20)
    ));
}

#[test]
fn the_dose_threshold_is_a_parameter() {
    let mut log = with_onset(Rating::Suboptimal);
    log.cycle(PATIENT, C4, ONA, 230, Rating::Good);
    assert_eq!(log.all().snr.suboptimal.regained_with_adjustment, 1);
    let mut parameters = RuleParameters::default();
    parameters.set("dose_change_min_pct", "20").unwrap();
    let group = log.all_with(parameters).snr.suboptimal;
    assert_eq!(group.regained_without_adjustment, 1);
}

#[test]
fn the_onset_cycle_itself_is_never_adjusted() {
    // O differs from the cycle before it (more units, ultrasound), and the
    // regaining cycle is the same as O: regained without adjustment.
    let mut log = Log::new();
    log.responder(PATIENT);
    let onset = Session::of(ONA, 300).guided(Guidance::Ultrasound);
    log.cycle_session(PATIENT, C3, onset.clone(), Rating::Suboptimal);
    log.cycle_session(PATIENT, C4, onset, Rating::Good);

    let group = log.all().snr.suboptimal;
    assert_eq!(group.regained_without_adjustment, 1);
    let view = log.patient(PATIENT);
    assert!(view.cycles[2].onset && !view.cycles[2].adjusted);
    assert!(!view.cycles[3].adjusted);
}

#[test]
fn the_cycle_before_an_adjusted_one_may_be_any_post_onset_cycle() {
    // O (200), a poor unadjusted cycle (200), then 240 rated good: compared
    // with the cycle just before (200), +20%: adjusted.
    let mut log = with_onset(Rating::Suboptimal);
    log.cycle(PATIENT, C4, ONA, 200, Rating::Suboptimal);
    log.cycle(PATIENT, C5, ONA, 240, Rating::Good);
    let view = log.patient(PATIENT);
    let adjusted: Vec<bool> = view.cycles.iter().map(|c| c.adjusted).collect();
    assert_eq!(adjusted, [false, false, false, false, true]);
    let snr = view.snr.unwrap();
    assert_eq!(snr.regained_on, Some(date(C5)));
    assert!(snr.regained_with_adjustment);
    assert_eq!(snr.first_adjusted_on, Some(date(C5)));
}

#[test]
fn regained_with_adjustment_needs_the_adjustment_at_or_before_the_regaining_cycle() {
    // Adjusted at C4 (poor), unchanged and good at C5: with adjustment.
    let mut log = with_onset(Rating::Suboptimal);
    log.cycle(PATIENT, C4, ONA, 250, Rating::Suboptimal);
    log.cycle(PATIENT, C5, ONA, 250, Rating::Good);
    assert_eq!(log.all().snr.suboptimal.regained_with_adjustment, 1);

    // Good at C4 unchanged, adjusted only later at C5: without adjustment.
    let mut log = with_onset(Rating::Suboptimal);
    log.cycle(PATIENT, C4, ONA, 200, Rating::Good);
    log.cycle(PATIENT, C5, ONA, 300, Rating::Good);
    let group = log.all().snr.suboptimal;
    assert_eq!(
        (
            group.regained_with_adjustment,
            group.regained_without_adjustment
        ),
        (0, 1)
    );
    assert_eq!(group.not_regained, 0);
}

#[test]
fn an_unrated_or_poor_post_onset_cycle_is_not_a_regain() {
    let mut log = with_onset(Rating::None);
    log.inject(PATIENT, C4, ONA, 300);
    log.cycle(PATIENT, C5, ONA, 300, Rating::Suboptimal);
    let group = log.all().snr.no_response;
    assert_eq!((group.not_regained, group.regained_with_adjustment), (1, 0));
}

#[test]
fn a_bont_b_cycle_before_any_good_bont_a_cycle_means_not_regained() {
    let mut log = with_onset(Rating::Suboptimal);
    log.cycle(PATIENT, C4, RIMA, 5000, Rating::Good);
    log.cycle(PATIENT, C5, ONA, 300, Rating::Good);
    let group = log.all().snr.suboptimal;
    assert_eq!(group.not_regained, 1);
    assert_eq!(
        group.regained_with_adjustment + group.regained_without_adjustment,
        0
    );
    assert_eq!(group.switched_to_bont_b, 1);
    assert_eq!(group.not_regained_switched_to_bont_b, 1);

    // A BoNT-B cycle after the regain does not undo it: regained, switched.
    let mut log = with_onset(Rating::Suboptimal);
    log.cycle(PATIENT, C4, ONA, 300, Rating::Good);
    log.cycle(PATIENT, C5, RIMA, 5000, Rating::Good);
    let group = log.all().snr.suboptimal;
    assert_eq!(group.regained_with_adjustment, 1);
    assert_eq!(
        (
            group.switched_to_bont_b,
            group.not_regained_switched_to_bont_b
        ),
        (1, 0)
    );
}

// ---- Post-onset events -----------------------------------------------------

#[test]
fn post_onset_events_go_by_date_on_or_after_the_onset() {
    let mut log = with_onset(Rating::None);
    // Before onset: not counted, whenever typed in.
    log.test_resistance(PATIENT, "2015-07-05", ResistanceResult::Positive);
    log.refer(PATIENT, "2015-07-05", ReferralTarget::Dbs);
    let group = log.all().snr.no_response;
    assert_eq!((group.assessed_for_resistance, group.referred_dbs), (0, 0));

    // On the onset date: counted.
    log.test_resistance(PATIENT, C3, ResistanceResult::Negative);
    log.refer(PATIENT, C3, ReferralTarget::Dbs);
    let group = log.all().snr.no_response;
    assert_eq!(
        (group.assessed_for_resistance, group.resistance_confirmed),
        (1, 0)
    );
    assert_eq!(
        (group.referred_dbs, group.not_regained_referred_dbs),
        (1, 1)
    );

    // A referral to physiotherapy is not a DBS referral.
    let mut log = with_onset(Rating::None);
    log.refer(PATIENT, C4, ReferralTarget::Physiotherapy);
    assert_eq!(log.all().snr.no_response.referred_dbs, 0);
}

#[test]
fn confirmed_resistance_counts_a_positive_test_only() {
    let mut log = with_onset(Rating::None);
    log.test_resistance(PATIENT, C4, ResistanceResult::Equivocal);
    let group = log.all().snr.no_response;
    assert_eq!(
        (group.assessed_for_resistance, group.resistance_confirmed),
        (1, 0)
    );
    log.test_resistance(PATIENT, C5, ResistanceResult::Positive);
    let group = log.all().snr.no_response;
    assert_eq!(
        (group.assessed_for_resistance, group.resistance_confirmed),
        (1, 1)
    );
    let snr = log.patient(PATIENT).snr.unwrap();
    assert_eq!(snr.assessed_for_resistance_on, Some(date(C4)));
    assert_eq!(snr.resistance_confirmed_on, Some(date(C5)));
}

// ---- Standards -------------------------------------------------------------

fn ratio(report: &AuditReport, standard: Standard) -> (u64, u64) {
    let result = report.scopes["all"].standards.get(standard);
    assert_eq!(result.target_pct, 100);
    (result.numerator, result.denominator)
}

#[test]
fn bnn_1_needs_an_adjusted_cycle_strictly_before_the_first_escalation() {
    // Adjusted at C4, switched to BoNT-B at C5: met.
    let mut log = with_onset(Rating::Suboptimal);
    log.cycle(PATIENT, C4, ONA, 300, Rating::Suboptimal);
    log.cycle(PATIENT, C5, RIMA, 5000, Rating::Good);
    assert_eq!(ratio(&log.report(), Standard::Bnn1), (1, 1));

    // A DBS referral on the adjusted cycle's date is the earlier escalation:
    // the adjustment is not strictly before it.
    log.refer(PATIENT, C4, ReferralTarget::Dbs);
    assert_eq!(ratio(&log.report(), Standard::Bnn1), (0, 1));
    let finding = log
        .patient(PATIENT)
        .standards_failed()
        .next()
        .cloned()
        .unwrap();
    assert_eq!(finding.standard, Standard::Bnn1);
    assert!(
        finding.reason.contains("referred for DBS on 2015-10-05"),
        "{}",
        finding.reason
    );

    // Escalation without any adjustment: not met.
    let mut log = with_onset(Rating::Suboptimal);
    log.cycle(PATIENT, C4, RIMA, 5000, Rating::Good);
    assert_eq!(ratio(&log.report(), Standard::Bnn1), (0, 1));
}

#[test]
fn bnn_1_counts_escalated_suboptimal_responders_only() {
    // Suboptimal, not escalated: not in the denominator.
    let mut log = with_onset(Rating::Suboptimal);
    log.cycle(PATIENT, C4, ONA, 300, Rating::Suboptimal);
    assert_eq!(ratio(&log.report(), Standard::Bnn1), (0, 0));
    // Escalated but in the no-response group: not in the denominator.
    let mut log = with_onset(Rating::None);
    log.cycle(PATIENT, C4, RIMA, 5000, Rating::Good);
    assert_eq!(ratio(&log.report(), Standard::Bnn1), (0, 0));
    // Regained and later escalated: in the denominator.
    let mut log = with_onset(Rating::Suboptimal);
    log.cycle(PATIENT, C4, ONA, 300, Rating::Good);
    log.refer(PATIENT, C6, ReferralTarget::Dbs);
    assert_eq!(ratio(&log.report(), Standard::Bnn1), (1, 1));
}

#[test]
fn bnn_2_counts_no_response_patients_assessed_for_resistance() {
    let mut log = with_onset(Rating::None);
    log.register("leeds/L-2");
    log.responder("leeds/L-3");
    log.cycle("leeds/L-3", C3, ONA, 200, Rating::None);
    log.test_resistance("leeds/L-3", C4, ResistanceResult::Negative);
    let mut suboptimal = with_onset(Rating::Suboptimal);
    suboptimal.test_resistance(PATIENT, C4, ResistanceResult::Negative);

    assert_eq!(ratio(&log.report(), Standard::Bnn2), (1, 2));
    assert_eq!(ratio(&suboptimal.report(), Standard::Bnn2), (0, 0));
}

#[test]
fn bnn_3_needs_a_resistance_test_on_or_before_the_first_bont_b_cycle() {
    let switched_after_test_on = |test_on: &str| {
        let mut log = with_onset(Rating::Suboptimal);
        log.test_resistance(PATIENT, test_on, ResistanceResult::Negative);
        log.cycle(PATIENT, C5, RIMA, 5000, Rating::Good);
        ratio(&log.report(), Standard::Bnn3)
    };
    assert_eq!(switched_after_test_on(C4), (1, 1));
    assert_eq!(
        switched_after_test_on(C5),
        (1, 1),
        "on the same date counts"
    );
    assert_eq!(
        switched_after_test_on("2016-01-05"),
        (0, 1),
        "a day after does not"
    );
    assert_eq!(
        switched_after_test_on("2015-07-05"),
        (0, 1),
        "before onset is not post-onset"
    );

    let mut not_switched = with_onset(Rating::None);
    not_switched.test_resistance(PATIENT, C4, ResistanceResult::Positive);
    assert_eq!(ratio(&not_switched.report(), Standard::Bnn3), (0, 0));
}

#[test]
fn bnn_4_needs_a_change_of_management_on_or_after_confirmed_resistance() {
    let changed = |change: &dyn Fn(&mut Log)| {
        let mut log = with_onset(Rating::None);
        log.test_resistance(PATIENT, C4, ResistanceResult::Positive);
        change(&mut log);
        ratio(&log.report(), Standard::Bnn4)
    };
    assert_eq!(changed(&|_| {}), (0, 1));
    assert_eq!(
        changed(&|log| {
            log.cycle(PATIENT, C5, RIMA, 5000, Rating::Good);
        }),
        (1, 1)
    );
    assert_eq!(
        changed(&|log| {
            log.cycle(PATIENT, C5, ABO, 500, Rating::Good);
        }),
        (1, 1)
    );
    assert_eq!(
        changed(&|log| {
            log.cycle(PATIENT, C5, ONA, 300, Rating::Good);
        }),
        (0, 1),
        "same product as O"
    );
    assert_eq!(
        changed(&|log| {
            log.refer(PATIENT, C4, ReferralTarget::Dbs);
        }),
        (1, 1),
        "same date"
    );
    assert_eq!(
        changed(&|log| {
            log.refer(PATIENT, C5, ReferralTarget::PeripheralDenervation);
        }),
        (1, 1)
    );
    assert_eq!(
        changed(&|log| {
            log.refer(PATIENT, C5, ReferralTarget::Psychology);
        }),
        (0, 1)
    );
    assert_eq!(
        changed(&|log| {
            log.discontinue(PATIENT, C5);
        }),
        (1, 1)
    );
    assert_eq!(
        changed(&|log| {
            log.discontinue(PATIENT, "2015-10-04");
        }),
        (0, 1),
        "a day before"
    );

    // Without a positive test the patient is not in the denominator.
    let mut log = with_onset(Rating::None);
    log.test_resistance(PATIENT, C4, ResistanceResult::Negative);
    log.cycle(PATIENT, C5, RIMA, 5000, Rating::Good);
    assert_eq!(ratio(&log.report(), Standard::Bnn4), (0, 0));
}

#[test]
fn int_1_counts_every_patients_consecutive_cycles_at_least_84_days_apart() {
    let mut log = Log::new();
    log.register("leeds/L-1");
    log.inject("leeds/L-1", "2015-01-01", ONA, 200);
    log.inject("leeds/L-1", "2015-03-26", ONA, 200); // 84 days: met
    log.inject("leeds/L-1", "2015-06-17", RIMA, 5000); // 83 days, any product: not met
    log.register("salford-royal/S-1");
    log.inject("salford-royal/S-1", "2016-01-01", ABO, 500);

    let report = log.report();
    assert_eq!(ratio(&report, Standard::Int1), (1, 2));
    assert_eq!(
        report.scopes["salford-royal"].standards.int_1.denominator,
        0
    );

    let mut parameters = RuleParameters::default();
    parameters.set("min_interval_days", "83").unwrap();
    let what_if = log.report_with(parameters);
    assert_eq!(what_if.scopes["all"].standards.int_1.numerator, 2);

    let finding = log
        .patient("leeds/L-1")
        .standards
        .into_iter()
        .find(|finding| finding.standard == Standard::Int1)
        .unwrap();
    assert_eq!((finding.numerator, finding.denominator), (1, 2));
    assert!(
        finding
            .reason
            .contains("2015-03-26 to 2015-06-17 (83 days)"),
        "{}",
        finding.reason
    );
}

#[test]
fn a_standard_with_no_denominator_stays_zero_over_zero() {
    let mut log = Log::new();
    log.responder(PATIENT);
    let json: serde_json::Value = serde_json::from_str(&log.report().to_json()).unwrap();
    assert_eq!(
        json["scopes"]["all"]["standards"]["BNN-1"],
        serde_json::json!({"numerator": 0, "denominator": 0, "target_pct": 100})
    );
}

// ---- Group counts ------------------------------------------------------------

#[test]
fn the_ten_group_counts_follow_their_definitions() {
    let mut log = Log::new();
    // Regained with adjustment.
    log.responder("leeds/A");
    log.cycle("leeds/A", C3, ONA, 200, Rating::Suboptimal);
    log.cycle("leeds/A", C4, ONA, 260, Rating::Good);
    // Not regained, switched to BoNT-B and referred for DBS, tested positive.
    log.responder("leeds/B");
    log.cycle("leeds/B", C3, ONA, 200, Rating::Suboptimal);
    log.test_resistance("leeds/B", C4, ResistanceResult::Positive);
    log.cycle("leeds/B", C5, RIMA, 5000, Rating::Good);
    log.refer("leeds/B", C6, ReferralTarget::Dbs);
    // Regained without adjustment, then referred for DBS anyway.
    log.responder("leeds/C");
    log.cycle("leeds/C", C3, ONA, 200, Rating::Suboptimal);
    log.cycle("leeds/C", C4, ONA, 200, Rating::Good);
    log.refer("leeds/C", C6, ReferralTarget::Dbs);

    let group = log.all().snr.suboptimal;
    assert_eq!(group.n, 3);
    assert_eq!(group.regained_with_adjustment, 1);
    assert_eq!(group.regained_without_adjustment, 1);
    assert_eq!(group.not_regained, 1);
    assert_eq!(group.switched_to_bont_b, 1);
    assert_eq!(group.referred_dbs, 2);
    assert_eq!(group.not_regained_switched_to_bont_b, 1);
    assert_eq!(group.not_regained_referred_dbs, 1);
    assert_eq!(group.assessed_for_resistance, 1);
    assert_eq!(group.resistance_confirmed, 1);
}

// ---- Scopes, the JSON shape, parameters ----------------------------------------

#[test]
fn scopes_are_all_and_each_centre_with_a_registered_patient() {
    let mut log = Log::new();
    log.responder("leeds/P-1");
    log.cycle("leeds/P-1", C3, ONA, 200, Rating::None);
    // The same pseudonym at another centre is another patient.
    log.responder("salford-royal/P-1");

    let report = log.report();
    let names: Vec<&str> = report.scopes.keys().map(String::as_str).collect();
    assert_eq!(names, ["all", "leeds", "salford-royal"]);
    assert_eq!(report.scopes["all"].patients, 2);
    assert_eq!(report.scopes["all"].injections, 5);
    assert_eq!(report.scopes["leeds"].snr.n, 1);
    assert_eq!(report.scopes["salford-royal"].snr.n, 0);
    assert_eq!(report.scopes["salford-royal"].injections, 2);
}

#[test]
fn the_default_report_has_exactly_the_keys_of_the_rules() {
    let log = with_onset(Rating::None);
    let json: serde_json::Value = serde_json::from_str(&log.report().to_json()).unwrap();
    let keys = |value: &serde_json::Value| {
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(&json), ["rule_set", "scopes"]);
    assert_eq!(json["rule_set"], RULE_SET);
    assert_eq!(RULE_SET, "bnn-2016/v1");
    let scope = &json["scopes"]["all"];
    assert_eq!(keys(scope), ["injections", "patients", "snr", "standards"]);
    assert_eq!(keys(&scope["snr"]), ["n", "no_response", "suboptimal"]);
    let group_keys = [
        "assessed_for_resistance",
        "n",
        "not_regained",
        "not_regained_referred_dbs",
        "not_regained_switched_to_bont_b",
        "referred_dbs",
        "regained_with_adjustment",
        "regained_without_adjustment",
        "resistance_confirmed",
        "switched_to_bont_b",
    ];
    assert_eq!(keys(&scope["snr"]["suboptimal"]), group_keys);
    assert_eq!(keys(&scope["snr"]["no_response"]), group_keys);
    assert_eq!(
        keys(&scope["standards"]),
        ["BNN-1", "BNN-2", "BNN-3", "BNN-4", "INT-1"]
    );
    assert_eq!(
        keys(&scope["standards"]["INT-1"]),
        ["denominator", "numerator", "target_pct"]
    );
    assert_eq!(scope["snr"]["no_response"]["n"], 1);
    assert_eq!(keys(&json["scopes"]), ["all", "leeds"]);

    // The JSON reads back as the same report.
    let back: AuditReport = serde_json::from_value(json).unwrap();
    assert_eq!(back, log.report());
}

#[test]
fn a_what_if_report_names_all_its_parameters() {
    let log = with_onset(Rating::None);
    let mut parameters = RuleParameters::default();
    parameters.set("min_good_cycles_before_snr", "3").unwrap();
    let report = log.report_with(parameters);
    assert_eq!(report.scopes["all"].snr.n, 0);
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(
        json["parameters"],
        serde_json::json!({
            "min_good_cycles_before_snr": 3,
            "dose_change_min_pct": 10,
            "min_interval_days": 84
        })
    );
    assert_eq!(report.parameters(), parameters);
}

// ---- The cohort and the patient view --------------------------------------------

#[test]
fn the_patient_view_dates_each_step_and_says_why_standards_fail() {
    let mut log = with_onset(Rating::Suboptimal);
    log.cycle(PATIENT, C4, ONA, 200, Rating::Suboptimal);
    log.cycle(PATIENT, C5, RIMA, 5000, Rating::Suboptimal);
    log.refer(PATIENT, C6, ReferralTarget::Dbs);

    let view = log.patient(PATIENT);
    assert!(view.registered);
    assert_eq!(view.rule_set, RULE_SET);
    let snr = view.snr.clone().unwrap();
    assert_eq!(snr.group, SnrGroup::Suboptimal);
    assert_eq!(snr.first_adjusted_on, None);
    assert_eq!(snr.regained_on, None);
    assert_eq!(snr.switched_to_bont_b_on, Some(date(C5)));
    assert_eq!(snr.referred_dbs_on, Some(date(C6)));
    let failed: Vec<Standard> = view
        .standards_failed()
        .map(|finding| finding.standard)
        .collect();
    assert_eq!(failed, [Standard::Bnn1, Standard::Bnn3]);
    let reasons: Vec<&str> = view.standards.iter().map(|f| f.reason.as_str()).collect();
    assert_eq!(
        reasons[0],
        "switched to BoNT-B on 2016-01-04 with no adjusted cycle after onset"
    );
    assert_eq!(
        reasons[1],
        "switched to BoNT-B on 2016-01-04 with no resistance test"
    );
    // The patient's INT-1 share: four pairs, all 91 days apart.
    assert_eq!(view.standards[2].standard, Standard::Int1);
    assert_eq!(
        (view.standards[2].numerator, view.standards[2].denominator),
        (4, 4)
    );

    // The pure per-patient function agrees with the cohort.
    let alone = assess_patient(&log.events, &RuleParameters::default()).unwrap();
    assert_eq!(alone, view);
}

#[test]
fn the_cohort_knows_only_patients_it_has_seen() {
    let log = with_onset(Rating::None);
    let mut cohort = Cohort::new(RuleParameters::default());
    for event in &log.events {
        cohort.apply(event);
    }
    assert!(cohort.patient(&key("leeds/L-2")).is_none());
    assert!(cohort.patient(&key("york/L-1")).is_none());
    assert_eq!(cohort.patient_keys().collect::<Vec<_>>(), [key(PATIENT)]);
    assert_eq!(cohort.events_applied(), log.events.len() as u64);
}

#[test]
fn a_patient_never_registered_is_not_part_of_the_audit() {
    // Admission refuses such events; the cohort stays consistent if given them.
    let mut log = Log::new();
    log.cycle("leeds/L-9", "2015-01-05", ONA, 200, Rating::Good);
    let report = log.report();
    assert_eq!(report.scopes.keys().collect::<Vec<_>>(), ["all"]);
    assert_eq!(report.scopes["all"].injections, 0);
    assert!(!log.patient("leeds/L-9").registered);
}
