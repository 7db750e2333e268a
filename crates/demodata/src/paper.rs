//! The founding audit's cohort (two UK regional neuroscience centres, 68
//! patients with secondary non-response), reproduced as an import file.
//!
//! The 68 SNR patients are a fixed table of (group, course): the founding
//! numbers follow from it whatever the seed. The seed only chooses the
//! details (dates, doses, muscles, which centre, how many bystanders, where
//! the data-entry noise falls), so every seed gives the same headline report.
//!
//! Expected `all` scope (rules.md definitions): suboptimal 37 (regained with
//! adjustment 21, without 0, not regained 16, switched to BoNT-B 6, DBS 7,
//! both among the not regained, assessed for resistance 3, confirmed 1);
//! no response 31 (regained with adjustment 6, without 0, not regained 25,
//! switched to BoNT-B 8, DBS 3, both among the not regained, assessed 22,
//! confirmed 8). Standards: BNN-1 9/13, BNN-2 22/31, BNN-3 10/14, BNN-4 8/9;
//! INT-1 depends on the seed (a few short intervals every time).

use domain::ResistanceResult;

use crate::emit::{self, Entry, EventIds, Noise, PatientName};
use crate::history::{self, Course, Escalation, Group, History, NonSnr, Shape};
use crate::seeded::SeededRandom;

/// The two centres of the founding audit and their pseudonym prefixes.
const CENTRES: [(&str, &str); 2] = [("leeds", "L"), ("salford-royal", "S")];

/// Chance, in percent, that a patient of the demo is seen in the first centre.
const FIRST_CENTRE_PERCENT: u64 = 55;

/// Salt of this file's event ids, so they differ from the scale generator's.
const ID_SALT: u64 = 2019;

const SHAPE: Shape = Shape {
    good_cycles_before_onset: (2, 6),
    maintenance_cycles: (1, 5),
    day_budget: 3300,
    short_interval_per_mille: 50,
    unrated_per_mille: 60,
    reassessed_per_mille: 60,
};

const NOISE: Noise = Noise {
    voided_injection_per_mille: 20,
    voided_review_per_mille: 15,
    voided_test_per_mille: 100,
    backdated_cycle_percent: 12,
    duplicate_line_per_mille: 8,
};

/// The dates of the demo: clinical dates from 2012 to 2025.
fn date_window() -> (i32, i32) {
    (
        emit::days_from_civil(2012, 1, 2),
        emit::days_from_civil(2025, 12, 31),
    )
}

/// What kind of patient one row of the cohort is.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Snr(Group, Course),
    Bystander(NonSnr),
}

fn not_regained(adjust_first: bool, test: Option<ResistanceResult>, then: Escalation) -> Course {
    Course::NotRegained {
        adjust_first,
        test,
        then,
    }
}

/// The 68 SNR patients. Suboptimal group: 21 regain after adjustment; of the
/// other 16, 6 switch to BoNT-B (4 after an adjustment, 3 after a resistance
/// test, one positive), 7 are referred for DBS (5 after an adjustment), 3
/// carry on or stop. No-response group: 6 regain after adjustment; 22 of
/// the other 25 are tested, 8 positive (5 then switch to BoNT-B, 1 to DBS,
/// 1 takes a toxin holiday, 1 carries on unchanged), 14 negative or
/// equivocal (2 switch to BoNT-B anyway, 2 go to DBS, 4 stop, 6 carry on);
/// of the 3 never tested, 1 switches to BoNT-B, 1 stops, 1 carries on.
fn snr_patients(random: &mut SeededRandom) -> Vec<Kind> {
    use Escalation::{BontB, Continue, Dbs, Discontinue};
    use ResistanceResult::{Equivocal, Negative, Positive};
    let mut kinds = Vec::new();
    let suboptimal = |course| Kind::Snr(Group::Suboptimal, course);
    kinds.extend((0..21).map(|_| suboptimal(Course::Regain)));
    for course in [
        not_regained(true, Some(Negative), BontB),
        not_regained(true, Some(Positive), BontB),
        not_regained(true, None, BontB),
        not_regained(true, Some(Equivocal), BontB),
        not_regained(false, None, BontB),
        not_regained(false, None, BontB),
        not_regained(true, None, Dbs),
        not_regained(true, None, Dbs),
        not_regained(true, None, Dbs),
        not_regained(true, None, Dbs),
        not_regained(true, None, Dbs),
        not_regained(false, None, Dbs),
        not_regained(false, None, Dbs),
        not_regained(true, None, Discontinue),
        not_regained(true, None, Continue),
        not_regained(false, None, Continue),
    ] {
        kinds.push(suboptimal(course));
    }

    // In the no-response group adjustments are not audited (BNN-1 is about
    // suboptimal responders), so the seed decides who had one.
    let no_response = |random: &mut SeededRandom, test, then| {
        let adjust_first = random.percent(50);
        Kind::Snr(Group::NoResponse, not_regained(adjust_first, test, then))
    };
    kinds.extend((0..6).map(|_| Kind::Snr(Group::NoResponse, Course::Regain)));
    let negative_or_equivocal = |random: &mut SeededRandom| {
        if random.percent(75) {
            Negative
        } else {
            Equivocal
        }
    };
    let plans: [(u32, Option<ResistanceResult>, Escalation); 7] = [
        (5, Some(Positive), BontB),
        (1, Some(Positive), Dbs),
        (1, Some(Positive), Discontinue),
        (1, Some(Positive), Continue),
        (1, None, BontB),
        (1, None, Discontinue),
        (1, None, Continue),
    ];
    for (count, test, then) in plans {
        for _ in 0..count {
            kinds.push(no_response(random, test, then));
        }
    }
    for (count, then) in [(2, BontB), (2, Dbs), (4, Discontinue), (6, Continue)] {
        for _ in 0..count {
            let result = if then == BontB || then == Dbs {
                Negative
            } else {
                negative_or_equivocal(random)
            };
            kinds.push(no_response(random, Some(result), then));
        }
    }
    kinds
}

/// Patients outside the SNR cohort, in seed-dependent numbers: they fill the
/// register and the INT-1 denominator without moving an SNR count.
fn bystanders(random: &mut SeededRandom) -> Vec<Kind> {
    let mut kinds = Vec::new();
    for (kind, least, extra) in [
        (NonSnr::GoodResponder, 45, 10),
        (NonSnr::OneGoodThenPoor, 5, 3),
        (NonSnr::PrimaryNonResponder, 4, 2),
        (NonSnr::NotYetInjected, 2, 2),
    ] {
        let count = least + random.below(extra + 1);
        kinds.extend((0..count).map(|_| Kind::Bystander(kind)));
    }
    kinds
}

/// The founding cohort's NDJSON lines in file order, without newlines.
pub(crate) fn lines(seed: u64) -> Vec<String> {
    let mut random = SeededRandom::derive(seed, 0);
    let mut kinds = snr_patients(&mut random);
    kinds.extend(bystanders(&mut random));
    random.shuffle(&mut kinds);

    let (window_start, window_end) = date_window();
    let mut patients: Vec<(History, usize, u64)> = Vec::with_capacity(kinds.len());
    for (index, kind) in kinds.iter().enumerate() {
        let mut patient_random = SeededRandom::derive(seed, 1 + index as u64);
        let mut history = match *kind {
            Kind::Snr(group, course) => history::snr(&mut patient_random, SHAPE, group, course),
            Kind::Bystander(kind) => history::non_snr(&mut patient_random, SHAPE, kind),
        };
        let room = (window_end - window_start - history.span_days()).max(0);
        let start = window_start + patient_random.below(room as u64 + 1) as i32;
        history.place(start, &mut patient_random);
        let centre = usize::from(!patient_random.percent(FIRST_CENTRE_PERCENT));
        patients.push((history, centre, patient_random.next_u64()));
    }
    // Pseudonyms are handed out in order of registration, per centre.
    patients.sort_by_key(|(history, _, _)| history.registration.day);

    let mut ids = EventIds::new(seed, ID_SALT);
    let mut numbers = [0u32; CENTRES.len()];
    let mut entries: Vec<Entry> = Vec::new();
    let mut arena = Vec::new();
    for (number, (history, centre, emit_seed)) in patients.iter().enumerate() {
        numbers[*centre] += 1;
        let (centre_name, prefix) = CENTRES[*centre];
        let pseudonym = format!("{prefix}-{:04}", numbers[*centre]);
        let name = PatientName {
            centre: centre_name,
            pseudonym: &pseudonym,
            number: number as u32,
        };
        let mut emit_random = SeededRandom::new(*emit_seed);
        emit::emit_patient(
            history,
            name,
            &mut ids,
            &mut emit_random,
            NOISE,
            &mut arena,
            &mut entries,
        );
    }
    entries.sort_by_key(Entry::file_order);
    entries
        .iter()
        .map(|entry| emit::line_text(&arena, entry.line).into_owned())
        .collect()
}
