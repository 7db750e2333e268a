//! `import` and `report` with `--server URL --token T`, against a real
//! `toxaudit up` on a random port: they behave like their `--data-dir` forms.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command as Process, Stdio},
    time::{Duration, Instant},
};

use predicates::prelude::*;
use serde_json::Value;

use crate::{INJECTED, REGISTERED, toxaudit, write_file};

/// A `toxaudit up` child process on random ports, killed on drop.
struct Up {
    child: Child,
    grpc_url: String,
}

impl Up {
    fn start(data_dir: &std::path::Path, secret_file: &std::path::Path) -> Up {
        let mut child = Process::new(assert_cmd::cargo::cargo_bin("toxaudit"))
            .args([
                "up",
                "--grpc-addr",
                "127.0.0.1:0",
                "--no-http",
                "--data-dir",
            ])
            .arg(data_dir)
            .arg("--jwt-secret-file")
            .arg(secret_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting toxaudit up");
        let stdout = child.stdout.take().expect("piped stdout");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut lines = BufReader::new(stdout).lines();
        let grpc_url = loop {
            assert!(
                Instant::now() < deadline,
                "toxaudit up did not say where it listens"
            );
            let line = lines
                .next()
                .expect("toxaudit up exited before listening")
                .expect("reading toxaudit up's output");
            if let Some(rest) = line.strip_prefix("listening grpc ") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Up { child, grpc_url }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token(secret_file: &std::path::Path, centre: &str, role: &str) -> String {
    let output = toxaudit()
        .args([
            "token",
            "issue",
            "--centre",
            centre,
            "--role",
            role,
            "--jwt-secret-file",
        ])
        .arg(secret_file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn json_report(args: &[&str]) -> Value {
    let output = toxaudit().args(args).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn import_and_report_through_the_server_match_the_offline_forms() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, "a-test-secret-of-at-least-sixteen-bytes").unwrap();
    let file = dir.path().join("paper2019.ndjson");
    let generated = toxaudit()
        .args(["demo-data", "paper2019", "--seed", "3"])
        .output()
        .unwrap();
    std::fs::write(&file, &generated.stdout).unwrap();

    // Offline, on a log of its own.
    let offline = dir.path().join("offline");
    toxaudit()
        .args(["import", "--data-dir"])
        .arg(&offline)
        .arg(&file)
        .assert()
        .success();
    let offline_report = json_report(&[
        "report",
        "--format",
        "json",
        "--data-dir",
        offline.to_str().unwrap(),
    ]);

    // Through the services.
    let up = Up::start(&dir.path().join("served"), &secret);
    let admin = token(&secret, "all", "admin");
    toxaudit()
        .args(["import", "--server", &up.grpc_url, "--token", &admin])
        .arg(&file)
        .assert()
        .success()
        .stderr(predicate::str::contains("refused 0"));
    // Reporting follows the log: wait (bounded) until it has folded everything.
    let deadline = Instant::now() + Duration::from_secs(30);
    let served_report = loop {
        let report = json_report(&[
            "report",
            "--format",
            "json",
            "--server",
            &up.grpc_url,
            "--token",
            &admin,
        ]);
        if report == offline_report || Instant::now() > deadline {
            break report;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(served_report, offline_report);
    assert_eq!(served_report["scopes"]["all"]["snr"]["n"], 68);

    // One centre: the same report offline and through the server, that
    // centre's scope alone (offline used to add an `all` scope holding only
    // that centre's numbers under the network's name).
    let offline_leeds = json_report(&[
        "report",
        "--format",
        "json",
        "--centre",
        "leeds",
        "--data-dir",
        offline.to_str().unwrap(),
    ]);
    let served_leeds = json_report(&[
        "report",
        "--format",
        "json",
        "--centre",
        "leeds",
        "--server",
        &up.grpc_url,
        "--token",
        &admin,
    ]);
    assert_eq!(served_leeds, offline_leeds);
    let scopes: Vec<&String> = offline_leeds["scopes"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(scopes, ["leeds"]);
    assert_eq!(
        offline_leeds["scopes"]["leeds"],
        offline_report["scopes"]["leeds"]
    );

    // Importing the same file again appends nothing.
    toxaudit()
        .args(["import", "--server", &up.grpc_url, "--token", &admin])
        .arg(&file)
        .assert()
        .success()
        .stderr(predicate::str::contains("appended 0"));
}

#[test]
fn a_refused_file_sends_nothing_and_a_clinician_cannot_write_another_centre() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, "a-test-secret-of-at-least-sixteen-bytes").unwrap();
    let up = Up::start(&dir.path().join("served"), &secret);

    let bad = INJECTED.replace("\"guidance\":\"emg\"", "\"guidance\":\"xray\"");
    let file = write_file(dir.path(), "bad.ndjson", &[REGISTERED, &bad]);
    let leeds = token(&secret, "leeds", "clinician");
    toxaudit()
        .args(["import", "--server", &up.grpc_url, "--token", &leeds])
        .arg(&file)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("bad.ndjson:2: guidance:"))
        .stderr(predicate::str::contains("nothing sent"));

    // A server-side refusal (the patient is not registered) names the line too.
    let unregistered = write_file(dir.path(), "unregistered.ndjson", &[INJECTED]);
    toxaudit()
        .args(["import", "--server", &up.grpc_url, "--token", &leeds])
        .arg(&unregistered)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("unregistered.ndjson:1: patient:"));

    let york = token(&secret, "york", "clinician");
    let good = write_file(dir.path(), "good.ndjson", &[REGISTERED, INJECTED]);
    toxaudit()
        .args(["import", "--server", &up.grpc_url, "--token", &york])
        .arg(&good)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("good.ndjson:1: centre:"))
        .stdout(predicate::str::contains("good.ndjson:2: centre:"))
        .stdout(predicate::str::contains("centre 'leeds'"));
    toxaudit()
        .args(["import", "--server", &up.grpc_url, "--token", &leeds])
        .arg(&good)
        .assert()
        .success()
        .stderr(predicate::str::contains("appended 2"));
}

/// events.md: "A writer may only write events of its own centre", and a
/// refused event is named by file line and field. A leeds clinician's file
/// with a line of another centre used to stop with exit code 2 and the
/// server's message alone (no line, the first such event only), and
/// --skip-invalid could not skip it.
#[test]
fn a_line_of_another_centre_is_refused_on_its_line_and_can_be_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, "a-test-secret-of-at-least-sixteen-bytes").unwrap();
    let up = Up::start(&dir.path().join("served"), &secret);
    let salford_line = REGISTERED
        .replace("\"leeds\"", "\"salford-royal\"")
        .replace("e-0001", "s-0001");
    let mixed = write_file(dir.path(), "mixed.ndjson", &[REGISTERED, &salford_line]);
    let leeds = token(&secret, "leeds", "clinician");

    toxaudit()
        .args(["import", "--server", &up.grpc_url, "--token", &leeds])
        .arg(&mixed)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("mixed.ndjson:2: centre:"))
        .stdout(predicate::str::contains("mixed.ndjson:1").not())
        .stderr(predicate::str::contains("appended nothing"));

    toxaudit()
        .args([
            "import",
            "--skip-invalid",
            "--server",
            &up.grpc_url,
            "--token",
            &leeds,
        ])
        .arg(&mixed)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("mixed.ndjson:2: centre:"))
        .stderr(predicate::str::contains(
            "appended 1, duplicates 0, refused 1",
        ));

    // Neither import stored the salford line: salford's own writer appends it now.
    let salford = token(&secret, "salford-royal", "clinician");
    let own = write_file(dir.path(), "salford.ndjson", &[&salford_line]);
    toxaudit()
        .args(["import", "--server", &up.grpc_url, "--token", &salford])
        .arg(&own)
        .assert()
        .success()
        .stderr(predicate::str::contains("appended 1, duplicates 0"));
}

/// events.md, "Bad input": an import file is checked whole first, and if
/// any line is refused nothing is appended. Through the server a file used
/// to go in requests of 1000 events, so a refusal on line 1501 left the
/// first 1000 stored (exit 1, "1000 event(s) appended by earlier
/// requests"); now the whole file is one `Ingest.Import`.
#[test]
fn a_file_of_more_than_1000_events_refused_on_its_last_line_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, "a-test-secret-of-at-least-sixteen-bytes").unwrap();
    let demo = toxaudit()
        .args(["demo-data", "paper2019", "--seed", "1"])
        .output()
        .unwrap();
    assert!(demo.status.success(), "{demo:?}");
    let demo = String::from_utf8(demo.stdout).unwrap();
    let good: Vec<&str> = demo.lines().take(1500).collect();
    assert_eq!(good.len(), 1500);
    let unregistered = INJECTED.replace("L-0001", "L-NOBODY");
    let mut refused_lines = good.clone();
    refused_lines.push(&unregistered);
    let refused = write_file(dir.path(), "refused.ndjson", &refused_lines);
    let fixed = write_file(dir.path(), "fixed.ndjson", &good);

    // What the fixed file appends to an empty log, offline.
    let offline = toxaudit()
        .args(["import", "--data-dir"])
        .arg(dir.path().join("offline"))
        .arg(&fixed)
        .output()
        .unwrap();
    assert!(offline.status.success(), "{offline:?}");
    let offline_summary = String::from_utf8(offline.stderr)
        .unwrap()
        .lines()
        .find(|line| line.starts_with("appended "))
        .unwrap()
        .to_owned();

    let up = Up::start(&dir.path().join("served"), &secret);
    let admin = token(&secret, "all", "admin");
    toxaudit()
        .args(["import", "--server", &up.grpc_url, "--token", &admin])
        .arg(&refused)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("refused.ndjson:1501: "))
        .stderr(predicate::str::contains("appended nothing"))
        .stderr(predicate::str::contains("appended by earlier").not());
    // Nothing of the refused file was stored: the fixed one appends exactly
    // what it appends to an empty log.
    toxaudit()
        .args(["import", "--server", &up.grpc_url, "--token", &admin])
        .arg(&fixed)
        .assert()
        .success()
        .stderr(predicate::str::contains(offline_summary));
}
