//! The founding audit reproduced: for every seed, the `all` scope of the
//! report has the founding numbers, amid noise that must not move them.

use std::collections::{BTreeSet, HashMap};

use domain::{
    EventBody,
    audit::{ALL_SCOPE, GroupReport, StandardResult},
};

use crate::import::import;

const SEEDS: [u64; 8] = [0, 1, 2, 7, 99, 2019, 123_456_789, u64::MAX];

fn group(counts: [u64; 10]) -> GroupReport {
    let [
        n,
        regained_with_adjustment,
        regained_without_adjustment,
        not_regained,
        switched_to_bont_b,
        referred_dbs,
        not_regained_switched_to_bont_b,
        not_regained_referred_dbs,
        assessed_for_resistance,
        resistance_confirmed,
    ] = counts;
    GroupReport {
        n,
        regained_with_adjustment,
        regained_without_adjustment,
        not_regained,
        switched_to_bont_b,
        referred_dbs,
        not_regained_switched_to_bont_b,
        not_regained_referred_dbs,
        assessed_for_resistance,
        resistance_confirmed,
    }
}

fn standard(numerator: u64, denominator: u64) -> StandardResult {
    StandardResult {
        numerator,
        denominator,
        target_pct: 100,
    }
}

#[test]
fn every_seed_reproduces_the_founding_audit() {
    for seed in SEEDS {
        let lines = demodata::paper2019_lines(seed);
        let imported = import(lines.iter().map(String::as_str)).unwrap();
        let report = imported.report();
        let all = report.scopes[ALL_SCOPE];

        // The founding audit's numbers (rules.md, "Background").
        assert_eq!(all.snr.n, 68, "seed {seed}");
        let suboptimal = all.snr.suboptimal;
        let no_response = all.snr.no_response;
        assert_eq!(suboptimal.n, 37, "seed {seed}");
        assert_eq!(suboptimal.regained_with_adjustment, 21, "seed {seed}");
        assert_eq!(suboptimal.regained_without_adjustment, 0, "seed {seed}");
        assert_eq!(suboptimal.not_regained, 16, "seed {seed}");
        assert_eq!(suboptimal.not_regained_switched_to_bont_b, 6, "seed {seed}");
        assert_eq!(suboptimal.not_regained_referred_dbs, 7, "seed {seed}");
        assert_eq!(no_response.n, 31, "seed {seed}");
        assert_eq!(no_response.regained_with_adjustment, 6, "seed {seed}");
        assert_eq!(no_response.assessed_for_resistance, 22, "seed {seed}");
        assert_eq!(no_response.resistance_confirmed, 8, "seed {seed}");

        // The rest of the cohort as the generator designs it.
        assert_eq!(
            suboptimal,
            group([37, 21, 0, 16, 6, 7, 6, 7, 3, 1]),
            "seed {seed}"
        );
        assert_eq!(
            no_response,
            group([31, 6, 0, 25, 8, 3, 8, 3, 22, 8]),
            "seed {seed}"
        );
        assert_eq!(all.standards.bnn_1, standard(9, 13), "seed {seed}");
        assert_eq!(all.standards.bnn_2, standard(22, 31), "seed {seed}");
        assert_eq!(all.standards.bnn_3, standard(10, 14), "seed {seed}");
        assert_eq!(all.standards.bnn_4, standard(8, 9), "seed {seed}");
        let interval = all.standards.int_1;
        assert!(
            interval.numerator < interval.denominator
                && interval.numerator * 100 >= interval.denominator * 85,
            "INT-1 should be high but not perfect, got {interval:?} for seed {seed}"
        );

        // Two centres, each with a share of the cohort and patients beyond it.
        let centres: BTreeSet<&str> = report
            .scopes
            .keys()
            .map(String::as_str)
            .filter(|scope| *scope != ALL_SCOPE)
            .collect();
        assert_eq!(centres, BTreeSet::from(["leeds", "salford-royal"]));
        for centre in centres {
            let scope = report.scopes[centre];
            assert!(
                scope.snr.n >= 15,
                "{centre} has {} SNR patients",
                scope.snr.n
            );
        }
        assert!(
            all.patients >= 68 + 50,
            "seed {seed}: {} patients",
            all.patients
        );
    }
}

#[test]
fn every_line_is_accepted_and_the_noise_is_there() {
    for seed in SEEDS {
        let lines = demodata::paper2019_lines(seed);
        let imported = import(lines.iter().map(String::as_str)).unwrap();
        assert!(imported.duplicates >= 1, "seed {seed}: no exact duplicate");
        assert!(
            imported.warnings_on("occurred_on", "days after") >= 1,
            "seed {seed}: no short interval warning in {:?}",
            imported.warnings
        );
        assert!(
            imported.warnings_on("total_units", "label") >= 1,
            "seed {seed}: no dose above the label maximum in {:?}",
            imported.warnings
        );

        let mut voids = 0;
        let mut injection_day = HashMap::new();
        let mut latest_injection_of_patient = HashMap::new();
        let mut backdated = 0;
        let mut reviews_per_injection: HashMap<&str, u32> = HashMap::new();
        for recorded in &imported.events {
            let event = &recorded.event;
            let year = event.occurred_on.year();
            assert!((2012..=2025).contains(&year), "{year} in seed {seed}");
            let pseudonym = event.patient.as_str();
            assert!(
                pseudonym.len() == 6
                    && (pseudonym.starts_with("L-") || pseudonym.starts_with("S-"))
                    && pseudonym[2..].bytes().all(|byte| byte.is_ascii_digit()),
                "{pseudonym}"
            );
            match &event.body {
                EventBody::EventVoided(_) => voids += 1,
                EventBody::InjectionAdministered(_) => {
                    injection_day.insert(event.event_id.as_str(), event.occurred_on);
                    let latest = latest_injection_of_patient
                        .entry(event.patient_key())
                        .or_insert(event.occurred_on);
                    if event.occurred_on < *latest {
                        backdated += 1;
                    }
                    *latest = (*latest).max(event.occurred_on);
                }
                EventBody::ResponseAssessed(response) => {
                    *reviews_per_injection
                        .entry(response.injection_event_id.as_str())
                        .or_default() += 1;
                }
                _ => {}
            }
        }
        assert!(voids >= 3, "seed {seed}: {voids} voided events");
        assert!(backdated >= 3, "seed {seed}: {backdated} backdated cycles");
        let reassessed = reviews_per_injection.values().filter(|&&n| n >= 2).count();
        assert!(
            reassessed >= 3,
            "seed {seed}: {reassessed} re-assessed cycles"
        );
        let unrated = injection_day
            .keys()
            .filter(|id| !reviews_per_injection.contains_key(*id))
            .count();
        assert!(unrated >= 3, "seed {seed}: {unrated} unrated cycles");
    }
}

#[test]
fn the_same_seed_gives_the_same_file_and_another_seed_another() {
    let first = demodata::paper2019_lines(42);
    assert_eq!(first, demodata::paper2019_lines(42));
    assert_ne!(first, demodata::paper2019_lines(43));

    let mut written = Vec::new();
    demodata::write_paper2019(42, &mut written).unwrap();
    let expected: String = first.iter().map(|line| format!("{line}\n")).collect();
    assert_eq!(String::from_utf8(written).unwrap(), expected);
}

#[test]
fn event_ids_are_unique_apart_from_exact_duplicates() {
    let lines = demodata::paper2019_lines(3);
    let mut by_id: HashMap<String, &str> = HashMap::new();
    for line in &lines {
        let id = domain::ndjson::event_id_of_line(line).unwrap();
        if let Some(earlier) = by_id.insert(id.clone(), line) {
            assert_eq!(earlier, line, "event id {id} used for two different lines");
        }
    }
}
