//! Random cohorts: every line importable, a realistic mix, reproducible.

use demodata::RandomSpec;
use domain::audit::ALL_SCOPE;

use crate::import::import;

const SPEC: RandomSpec = RandomSpec {
    patients: 300,
    centres: 4,
    seed: 11,
};

#[test]
fn every_line_of_a_random_cohort_is_accepted() {
    let mut file = Vec::new();
    let written = demodata::write_random(&SPEC, &mut file).unwrap();
    let text = String::from_utf8(file).unwrap();
    assert_eq!(text.lines().count() as u64, written);
    assert!(text.ends_with('\n'));

    let imported = import(text.lines()).unwrap();
    assert_eq!(
        imported.events.len() + imported.duplicates,
        written as usize
    );
    assert!(imported.duplicates > 0);

    let report = imported.report();
    let all = report.scopes[ALL_SCOPE];
    assert_eq!(all.patients, SPEC.patients);
    assert_eq!(report.scopes.len(), 1 + SPEC.centres as usize);
    let per_patient = written / SPEC.patients;
    assert!(
        (70..=140).contains(&per_patient),
        "{per_patient} lines per patient on average"
    );
    // A realistic mix: SNR patients of both groups, and standards that are
    // neither all met nor all failed.
    assert!(
        all.snr.suboptimal.n > 10 && all.snr.no_response.n > 10,
        "{:?}",
        all.snr
    );
    for (id, result) in [
        ("BNN-1", all.standards.bnn_1),
        ("BNN-2", all.standards.bnn_2),
        ("BNN-3", all.standards.bnn_3),
        ("BNN-4", all.standards.bnn_4),
        ("INT-1", all.standards.int_1),
    ] {
        assert!(
            0 < result.numerator && result.numerator < result.denominator,
            "{id}: {result:?}"
        );
    }
}

#[test]
fn random_lines_and_write_random_agree_and_repeat() {
    let spec = RandomSpec {
        patients: 80,
        centres: 25,
        seed: 3,
    };
    let mut file = Vec::new();
    let written = demodata::write_random(&spec, &mut file).unwrap();
    let lines: Vec<String> = demodata::random_lines(&spec).collect();
    assert_eq!(lines.len() as u64, written);
    let joined: String = lines.iter().map(|line| format!("{line}\n")).collect();
    assert_eq!(joined.as_bytes(), file.as_slice());

    let mut again = Vec::new();
    demodata::write_random(&spec, &mut again).unwrap();
    assert_eq!(again, file);
    // Centres past the named ones still make valid, distinct names.
    import(lines.iter().map(String::as_str)).unwrap();
}

#[test]
fn an_empty_spec_writes_nothing() {
    let spec = RandomSpec {
        patients: 0,
        centres: 0,
        seed: 1,
    };
    let mut file = Vec::new();
    assert_eq!(demodata::write_random(&spec, &mut file).unwrap(), 0);
    assert!(file.is_empty());
}
