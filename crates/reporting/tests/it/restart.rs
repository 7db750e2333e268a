//! The reporting service restarted from its checkpoint: it restores the
//! cohort's snapshot, folds only the records after the checkpoint's position,
//! and its report equals a fold of the whole log from scratch; a checkpoint
//! folded with other rule parameters is refused and the log refolded from 1.

use std::{path::Path, sync::Arc};

use domain::{
    ClinicalDate,
    audit::{AuditReport, Cohort, RuleParameters},
};
use eventlog::{AppendBatch, EmbeddedLog, EmbeddedOptions, EventLog, NewRecord};
use reporting::service::Reporting;
use service_kit::Shutdown;

fn lines(patients: std::ops::Range<u32>) -> Vec<String> {
    let mut lines = Vec::new();
    for patient in patients {
        let id = |step: u32| format!("p{patient}-e{step}");
        let line = |step: u32, on: &str, body: String| {
            format!(
                r#"{{"event_id":"{}","centre":"leeds","patient":"L-{patient}","occurred_on":"{on}",{body}}}"#,
                id(step)
            )
        };
        let injection = r#""type":"injection_administered","product":"onabotulinumtoxinA","total_units":200,"guidance":"emg","muscles":[{"muscle":"trapezius","side":"left","units":200}]"#;
        let rating = |step: u32, rating: &str| {
            format!(
                r#""type":"response_assessed","injection_event_id":"{}","rating":"{rating}""#,
                id(step)
            )
        };
        lines.push(line(
            1,
            "2019-01-07",
            r#""type":"patient_registered""#.to_owned(),
        ));
        lines.push(line(2, "2019-01-07", injection.to_owned()));
        lines.push(line(3, "2019-02-11", rating(2, "good")));
        lines.push(line(4, "2019-04-08", injection.to_owned()));
        lines.push(line(5, "2019-05-13", rating(4, "good")));
        lines.push(line(6, "2019-07-08", injection.to_owned()));
        let last = if patient % 2 == 0 {
            "suboptimal"
        } else {
            "none"
        };
        lines.push(line(7, "2019-08-12", rating(6, last)));
    }
    lines
}

async fn append(log: &dyn EventLog, lines: &[String]) {
    let today = ClinicalDate::from_ymd(2026, 1, 1).unwrap();
    let records = lines
        .iter()
        .map(|line| {
            let event = domain::ndjson::parse_line(line, today).unwrap();
            NewRecord {
                key: event.event_id.to_string(),
                stream: format!("{}.{}", event.centre, event.patient),
                principal: "test".to_owned(),
                payload: proto::convert::encode_event(&event),
            }
        })
        .collect();
    log.append(AppendBatch::new(records)).await.unwrap();
}

/// The report of the whole log folded from scratch.
async fn from_scratch(log: &dyn EventLog, parameters: RuleParameters) -> AuditReport {
    let mut cohort = Cohort::new(parameters);
    for record in log.read(1, 1_000_000).await.unwrap() {
        let recorded = proto::convert::recorded_from_parts(
            record.position,
            record.recorded_at_micros,
            &record.principal,
            &record.payload,
        )
        .unwrap();
        cohort.apply(&recorded);
    }
    cohort.report()
}

/// Runs reporting until it has folded the log's head, stops it gracefully
/// (which saves its checkpoint), and returns (records it folded itself,
/// its report).
async fn run_to_head(
    log: &Arc<dyn EventLog>,
    checkpoints: &Path,
    parameters: RuleParameters,
) -> (u64, AuditReport) {
    let head = log.head().await.unwrap();
    let reporting = Reporting::prepare(Arc::clone(log), checkpoints, false, parameters)
        .await
        .unwrap();
    let live = reporting.live();
    let mut positions = live.positions();
    let (trigger, shutdown) = Shutdown::new();
    let task = tokio::spawn(reporting.run_until_stopped(shutdown));
    positions
        .wait_for(|position| *position >= head)
        .await
        .unwrap();
    let (position, report) = live.report();
    assert_eq!(position, head);
    trigger.trigger();
    task.await.unwrap().unwrap();
    (live.records_folded_here(), report)
}

fn checkpoint_position(checkpoints: &Path) -> u64 {
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(checkpoints.join("checkpoint.json")).unwrap())
            .unwrap();
    marker["position"].as_u64().unwrap()
}

#[tokio::test]
async fn a_restart_folds_only_what_follows_its_checkpoint() {
    let directory = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> = Arc::new(
        EmbeddedLog::open(directory.path().join("log"), EmbeddedOptions::default()).unwrap(),
    );
    let checkpoints = directory.path().join("checkpoints");
    let parameters = RuleParameters::default();
    append(log.as_ref(), &lines(0..6)).await;

    let (folded, report) = run_to_head(&log, &checkpoints, parameters).await;
    assert_eq!(folded, 42);
    assert_eq!(report, from_scratch(log.as_ref(), parameters).await);
    assert_eq!(checkpoint_position(&checkpoints), 42);

    append(log.as_ref(), &lines(6..9)).await;
    let (folded, report) = run_to_head(&log, &checkpoints, parameters).await;
    // Only positions 43..=63: nothing at or before the checkpoint again.
    assert_eq!(folded, 21);
    assert_eq!(report, from_scratch(log.as_ref(), parameters).await);
    assert_eq!(report.scopes["all"].patients, 9);
    assert_eq!(checkpoint_position(&checkpoints), 63);
}

#[tokio::test]
async fn a_checkpoint_of_other_parameters_is_refused_and_the_log_refolded() {
    let directory = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> = Arc::new(
        EmbeddedLog::open(directory.path().join("log"), EmbeddedOptions::default()).unwrap(),
    );
    let checkpoints = directory.path().join("checkpoints");
    append(log.as_ref(), &lines(0..4)).await;
    run_to_head(&log, &checkpoints, RuleParameters::default()).await;

    let mut what_if = RuleParameters::default();
    what_if.set("min_good_cycles_before_snr", "3").unwrap();
    let (folded, report) = run_to_head(&log, &checkpoints, what_if).await;
    assert_eq!(folded, 28, "the refused checkpoint was used");
    assert_eq!(report, from_scratch(log.as_ref(), what_if).await);
    assert_eq!(report.scopes["all"].snr.n, 0);
}

#[tokio::test]
async fn a_damaged_snapshot_is_not_used() {
    let directory = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> = Arc::new(
        EmbeddedLog::open(directory.path().join("log"), EmbeddedOptions::default()).unwrap(),
    );
    let checkpoints = directory.path().join("checkpoints");
    let parameters = RuleParameters::default();
    append(log.as_ref(), &lines(0..3)).await;
    run_to_head(&log, &checkpoints, parameters).await;
    let snapshot = checkpoints.join("snapshot.bin");
    let mut bytes = std::fs::read(&snapshot).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&snapshot, bytes).unwrap();

    let (folded, report) = run_to_head(&log, &checkpoints, parameters).await;
    assert_eq!(folded, 21, "the damaged checkpoint was used");
    assert_eq!(report, from_scratch(log.as_ref(), parameters).await);
}
