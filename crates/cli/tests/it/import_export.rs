//! Import, export and validate through the binary: the round trip, a refused
//! file that appends nothing, and duplicates that append nothing twice.

use predicates::prelude::*;
use serde_json::Value;

use crate::{ASSESSED, INJECTED, REGISTERED, toxaudit, write_file};

fn export(data_dir: &std::path::Path) -> Vec<Value> {
    let output = toxaudit()
        .args(["export", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("running toxaudit export");
    assert!(output.status.success(), "export failed: {output:?}");
    String::from_utf8(output.stdout)
        .expect("export prints UTF-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("export prints JSON lines"))
        .collect()
}

/// The event as the client sent it: the export less the server's fields.
fn without_server_fields(mut exported: Value) -> Value {
    let object = exported
        .as_object_mut()
        .expect("an exported event is an object");
    for field in ["position", "recorded_at", "recorded_by"] {
        assert!(object.remove(field).is_some(), "export lacks {field}");
    }
    exported
}

#[test]
fn export_after_import_gives_back_every_event_with_positions_1_to_n() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "events.ndjson",
        &[REGISTERED, "", INJECTED, ASSESSED],
    );
    let data = dir.path().join("data");

    toxaudit()
        .args(["import", "--data-dir"])
        .arg(&data)
        .arg(&file)
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "appended 3, duplicates 0, refused 0",
        ));

    let exported = export(&data);
    let positions: Vec<u64> = exported
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, vec![1, 2, 3]);
    for value in &exported {
        let recorded_at = value["recorded_at"].as_str().unwrap();
        assert!(
            recorded_at.ends_with('Z'),
            "recorded_at is UTC: {recorded_at}"
        );
        assert!(value["recorded_by"].as_str().unwrap().starts_with("cli:"));
    }
    let sent: Vec<Value> = [REGISTERED, INJECTED, ASSESSED]
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let back: Vec<Value> = exported.into_iter().map(without_server_fields).collect();
    assert_eq!(back, sent);
}

#[test]
fn a_file_with_one_bad_line_is_refused_with_its_line_number_and_nothing_appended() {
    let dir = tempfile::tempdir().unwrap();
    let bad = INJECTED.replace("\"total_units\":200", "\"total_units\":200.0");
    let file = write_file(dir.path(), "events.ndjson", &[REGISTERED, &bad, ASSESSED]);
    let data = dir.path().join("data");

    toxaudit()
        .args(["import", "--data-dir"])
        .arg(&data)
        .arg(&file)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("events.ndjson:2: total_units:"))
        // The assessment names an injection that was refused, so it is refused too.
        .stdout(predicate::str::contains(
            "events.ndjson:3: injection_event_id:",
        ))
        .stderr(predicate::str::contains("nothing appended"));

    assert!(export(&data).is_empty(), "a refused file appends nothing");
}

#[test]
fn skip_invalid_appends_the_good_lines() {
    let dir = tempfile::tempdir().unwrap();
    let unregistered = INJECTED
        .replace("L-0001", "L-0002")
        .replace("e-0002", "e-0099");
    let file = write_file(
        dir.path(),
        "events.ndjson",
        &[REGISTERED, &unregistered, INJECTED],
    );
    let data = dir.path().join("data");

    toxaudit()
        .args(["import", "--skip-invalid", "--data-dir"])
        .arg(&data)
        .arg(&file)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("events.ndjson:2: patient:"))
        .stderr(predicate::str::contains(
            "appended 2, duplicates 0, refused 1",
        ));
    assert_eq!(export(&data).len(), 2);
}

#[test]
fn duplicates_append_nothing_and_conflicts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = write_file(dir.path(), "first.ndjson", &[REGISTERED, INJECTED]);
    toxaudit()
        .args(["import", "--data-dir"])
        .arg(&data)
        .arg(&first)
        .assert()
        .success();

    // The same file again, plus an exact duplicate line inside the new file,
    // with keys in another order: all duplicates.
    let reordered = r#"{"type":"patient_registered","sex":"female","birth_year":1961,"occurred_on":"2017-01-09","patient":"L-0001","centre":"leeds","event_id":"e-0001"}"#;
    let again = write_file(
        dir.path(),
        "again.ndjson",
        &[reordered, INJECTED, ASSESSED, ASSESSED],
    );
    toxaudit()
        .args(["import", "--data-dir"])
        .arg(&data)
        .arg(&again)
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "appended 1, duplicates 3, refused 0",
        ));

    // The same event id with other content is a conflict; the first one stays.
    let conflicting = ASSESSED.replace("\"rating\":\"good\"", "\"rating\":\"none\"");
    let conflict = write_file(dir.path(), "conflict.ndjson", &[&conflicting]);
    toxaudit()
        .args(["import", "--data-dir"])
        .arg(&data)
        .arg(&conflict)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("conflict.ndjson:1: event_id:"));
    let exported = export(&data);
    assert_eq!(exported.len(), 3);
    assert_eq!(exported[2]["rating"], "good");
}

#[test]
fn validate_reports_every_reason_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = r#"{"event_id":"e 1","centre":"all","patient":"L-1","occurred_on":"2017-02-30","type":"patient_registered","colour":"blue"}"#;
    let file = write_file(dir.path(), "bad.ndjson", &[REGISTERED, bad]);
    toxaudit()
        .arg("validate")
        .arg(&file)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("bad.ndjson:2: event_id:"))
        .stdout(predicate::str::contains("bad.ndjson:2: centre:"))
        .stdout(predicate::str::contains("bad.ndjson:2: occurred_on:"))
        .stdout(predicate::str::contains("bad.ndjson:2: colour:"))
        .stdout(predicate::str::contains("bad.ndjson:1").not());
}

/// A line that is not UTF-8 (a Latin-1 "café" from an older system) is bad
/// input on that line, like any other: it used to stop `validate` and
/// `import` with exit code 2 and "stream did not contain valid UTF-8", with
/// no line number (validate) and no way to skip it.
#[test]
fn a_line_that_is_not_utf8_is_refused_on_its_line_and_the_rest_is_still_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.ndjson");
    let not_utf8: &[u8] = b"{\"event_id\":\"e-0009\",\"centre\":\"leeds\",\"patient\":\"L-0001\",\"occurred_on\":\"2017-03-10\",\"type\":\"treatment_discontinued\",\"reason\":\"caf\xe9\"}";
    let bad_guidance = INJECTED.replace("\"guidance\":\"emg\"", "\"guidance\":\"xray\"");
    let mut bytes = Vec::new();
    for line in [REGISTERED.as_bytes(), not_utf8, bad_guidance.as_bytes()] {
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
    }
    std::fs::write(&path, &bytes).unwrap();

    toxaudit()
        .arg("validate")
        .arg(&path)
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "latin1.ndjson:2: line: is not UTF-8",
        ))
        .stdout(predicate::str::contains("latin1.ndjson:3: guidance:"));

    let data = dir.path().join("data");
    toxaudit()
        .args(["import", "--data-dir"])
        .arg(&data)
        .arg(&path)
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "latin1.ndjson:2: line: is not UTF-8",
        ))
        .stdout(predicate::str::contains("latin1.ndjson:3: guidance:"))
        .stderr(predicate::str::contains("nothing appended"));
    assert!(export(&data).is_empty(), "a refused file appends nothing");

    toxaudit()
        .args(["import", "--skip-invalid", "--data-dir"])
        .arg(&data)
        .arg(&path)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "appended 1, duplicates 0, refused 2",
        ));
    assert_eq!(export(&data).len(), 1);
}
