//! Integration tests of the `toxaudit` binary: real processes on a real
//! embedded log in a temporary directory.

// Helpers outside #[test] functions panic with a message on purpose too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit;
mod import_export;
mod server;

use std::path::Path;

use assert_cmd::Command;

/// The toxaudit binary built for these tests.
pub fn toxaudit() -> Command {
    Command::cargo_bin("toxaudit").expect("the toxaudit binary is built for its own tests")
}

/// Writes `lines` as an NDJSON file and returns its path.
pub fn write_file(dir: &Path, name: &str, lines: &[&str]) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(&path, text).expect("writing a test file");
    path
}

pub const REGISTERED: &str = r#"{"event_id":"e-0001","centre":"leeds","patient":"L-0001","occurred_on":"2017-01-09","type":"patient_registered","birth_year":1961,"sex":"female"}"#;
pub const INJECTED: &str = r#"{"event_id":"e-0002","centre":"leeds","patient":"L-0001","occurred_on":"2017-02-01","type":"injection_administered","product":"onabotulinumtoxinA","total_units":200,"guidance":"emg","muscles":[{"muscle":"splenius_capitis","side":"left","units":80},{"muscle":"sternocleidomastoid","side":"right","units":60},{"muscle":"trapezius","side":"left","units":60}]}"#;
pub const ASSESSED: &str = r#"{"event_id":"e-0003","centre":"leeds","patient":"L-0001","occurred_on":"2017-03-10","type":"response_assessed","injection_event_id":"e-0002","rating":"good","percent_improvement":60,"benefit_weeks":11}"#;
