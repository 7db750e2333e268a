//! The audit through the binary: the founding audit's demo cohort imported
//! and reported, as `make demo` does it.

use serde_json::Value;

use crate::toxaudit;

#[test]
fn paper2019_demo_reproduces_the_founding_audit() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("paper2019.ndjson");
    let data = dir.path().join("data");
    let generated = toxaudit()
        .args(["demo-data", "paper2019", "--seed", "1"])
        .output()
        .unwrap();
    assert!(generated.status.success());
    std::fs::write(&file, &generated.stdout).unwrap();
    toxaudit()
        .args(["import", "--data-dir"])
        .arg(&data)
        .arg(&file)
        .assert()
        .success();

    let output = toxaudit()
        .args(["report", "--format", "json", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(output.status.success());
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["rule_set"], "bnn-2016/v1");
    let snr = &report["scopes"]["all"]["snr"];
    assert_eq!(snr["n"], 68);
    let suboptimal = &snr["suboptimal"];
    assert_eq!(suboptimal["n"], 37);
    assert_eq!(suboptimal["regained_with_adjustment"], 21);
    assert_eq!(suboptimal["regained_without_adjustment"], 0);
    assert_eq!(suboptimal["not_regained"], 16);
    assert_eq!(suboptimal["not_regained_switched_to_bont_b"], 6);
    assert_eq!(suboptimal["not_regained_referred_dbs"], 7);
    let no_response = &snr["no_response"];
    assert_eq!(no_response["n"], 31);
    assert_eq!(no_response["regained_with_adjustment"], 6);
    assert_eq!(no_response["assessed_for_resistance"], 22);
    assert_eq!(no_response["resistance_confirmed"], 8);

    let table = toxaudit()
        .args(["report", "--format", "table", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.contains("6/16 (38%)"), "{table}");
    assert!(table.contains("7/16 (44%)"), "{table}");
    assert!(table.contains("22/31 (71%)"), "{table}");
    assert!(table.contains("8/22 (36%)"), "{table}");
}

#[test]
fn as_of_a_position_shows_the_log_as_it_stood_then() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = crate::write_file(
        dir.path(),
        "e.ndjson",
        &[crate::REGISTERED, crate::INJECTED],
    );
    toxaudit()
        .args(["import", "--data-dir"])
        .arg(&data)
        .arg(&file)
        .assert()
        .success();
    let report = |as_of: &str| -> Value {
        let output = toxaudit()
            .args(["report", "--format", "json", "--as-of", as_of, "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice(&output.stdout).unwrap()
    };
    assert_eq!(report("1")["scopes"]["all"]["injections"], 0);
    assert_eq!(report("2")["scopes"]["all"]["injections"], 1);
    assert_eq!(report("1")["scopes"]["all"]["patients"], 1);
}
