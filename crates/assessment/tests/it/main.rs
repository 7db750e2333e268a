//! Assessment on a real (embedded) log with the in-process bus: given
//! events appended while the service follows the log, then each change of a
//! patient's assessment is published once, with a replay-stable id; given
//! events it catches up on, then it publishes the patient's latest
//! assessment under the id a live follower gave it; and a restart from the
//! checkpoint publishes nothing it published before and folds no record at
//! or before the checkpoint's position.

use std::{sync::Arc, time::Duration};

use domain::{ClinicalDate, audit::RuleParameters};
use eventlog::{AppendBatch, EmbeddedLog, EmbeddedOptions, EventLog, NewRecord};
use futures::{FutureExt, StreamExt};
use proto::v1::{GetPatientRequest, PatientAssessed};
use service_kit::{DerivedBus, JwtSecret, Role, ServiceClient, Shutdown};

const SECRET: &[u8] = b"an assessment test secret, long enough";

fn line(event_id: &str, patient: &str, occurred_on: &str, body: &str) -> String {
    format!(
        r#"{{"event_id":"{event_id}","centre":"leeds","patient":"{patient}","occurred_on":"{occurred_on}",{body}}}"#
    )
}

fn injection(units: u32) -> String {
    format!(
        r#""type":"injection_administered","product":"onabotulinumtoxinA","total_units":{units},"guidance":"emg","muscles":[{{"muscle":"trapezius","side":"left","units":{units}}}]"#
    )
}

fn rating(injection: &str, rating: &str) -> String {
    format!(r#""type":"response_assessed","injection_event_id":"{injection}","rating":"{rating}""#)
}

/// A patient who has two good cycles and then a poor one: in the SNR cohort.
fn secondary_non_responder() -> Vec<String> {
    vec![
        line("e-1", "L-1", "2019-01-07", r#""type":"patient_registered""#),
        line("e-2", "L-1", "2019-01-07", &injection(200)),
        line("e-3", "L-1", "2019-02-11", &rating("e-2", "good")),
        line("e-4", "L-1", "2019-04-08", &injection(200)),
        line("e-5", "L-1", "2019-05-13", &rating("e-4", "good")),
        line("e-6", "L-1", "2019-07-08", &injection(200)),
        line("e-7", "L-1", "2019-08-12", &rating("e-6", "suboptimal")),
    ]
}

async fn append(log: &dyn EventLog, lines: &[String]) -> anyhow::Result<()> {
    let today = ClinicalDate::from_ymd(2026, 1, 1).ok_or_else(|| anyhow::anyhow!("not a date"))?;
    let records = lines
        .iter()
        .map(|line| {
            let event = domain::ndjson::parse_line(line, today)?;
            Ok(NewRecord {
                key: event.event_id.to_string(),
                stream: format!("{}.{}", event.centre, event.patient),
                principal: "test".to_owned(),
                payload: proto::convert::encode_event(&event),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    log.append(AppendBatch::new(records)).await?;
    Ok(())
}

/// Runs assessment until it has folded `head`, collecting what it publishes
/// and counting the records it folded itself; with GetPatient's last answer
/// for leeds/L-1.
async fn run_until(
    log: Arc<dyn EventLog>,
    checkpoints: &std::path::Path,
    head: u64,
) -> anyhow::Result<(Vec<PatientAssessed>, u64, PatientAssessed)> {
    let bus = DerivedBus::in_process();
    let mut published = bus.follow().await?;
    let secret = Arc::new(JwtSecret::from_bytes(SECRET)?);
    let application = assessment::build(assessment::AssessmentConfig {
        log,
        bus,
        secret: Arc::clone(&secret),
        grpc_address: "127.0.0.1:0".to_owned(),
        tls: None,
        checkpoint_directory: checkpoints.to_owned(),
        rebuild: false,
        parameters: RuleParameters::default(),
    })
    .await?;
    let url = format!("http://{}", application.local_addr());
    let progress = application.progress();
    let (trigger, shutdown) = Shutdown::new();
    let task = tokio::spawn(application.run_until_stopped(shutdown));
    let token = secret.issue("auditor", "all", Role::Auditor, Duration::from_secs(60))?;
    let client = ServiceClient::connect(&url, &token, None).await?;
    // The service answers GetPatient as of the position it has folded.
    let mut waited = 0;
    let answer = loop {
        let patient = client
            .assessment()
            .get_patient(GetPatientRequest {
                centre: "leeds".to_owned(),
                patient: "L-1".to_owned(),
            })
            .await;
        if let Ok(answer) = patient
            && answer.get_ref().source_position >= head
        {
            break answer.into_inner();
        }
        waited += 1;
        anyhow::ensure!(waited < 2000, "assessment never reached position {head}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    trigger.trigger();
    task.await??;
    // Everything published is in the channel by now (published before the
    // position moved on); take it without waiting.
    let mut events = Vec::new();
    while let Some(Some(event)) = published.next().now_or_never() {
        events.push(event?);
    }
    Ok((events, progress.records_folded_here(), answer))
}

/// Starts assessment on `log`, then appends `lines` one at a time, each once
/// the service has published the derived event of the one before (every
/// line here changes the assessment): a live follower, one record per chunk.
async fn run_live(
    log: Arc<dyn EventLog>,
    checkpoints: &std::path::Path,
    lines: &[String],
) -> anyhow::Result<Vec<PatientAssessed>> {
    let bus = DerivedBus::in_process();
    let mut published = bus.follow().await?;
    let secret = Arc::new(JwtSecret::from_bytes(SECRET)?);
    let application = assessment::build(assessment::AssessmentConfig {
        log: Arc::clone(&log),
        bus,
        secret,
        grpc_address: "127.0.0.1:0".to_owned(),
        tls: None,
        checkpoint_directory: checkpoints.to_owned(),
        rebuild: false,
        parameters: RuleParameters::default(),
    })
    .await?;
    let (trigger, shutdown) = Shutdown::new();
    let task = tokio::spawn(application.run_until_stopped(shutdown));
    let mut events = Vec::new();
    for line in lines {
        append(log.as_ref(), std::slice::from_ref(line)).await?;
        let next = tokio::time::timeout(Duration::from_secs(20), published.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the bus closed"))??;
        events.push(next);
    }
    trigger.trigger();
    task.await??;
    Ok(events)
}

#[tokio::test]
async fn each_change_is_published_once_and_a_restart_publishes_nothing_again() -> anyhow::Result<()>
{
    let directory = tempfile::tempdir()?;
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(
        directory.path().join("log"),
        EmbeddedOptions::default(),
    )?);
    let checkpoints = directory.path().join("checkpoint");
    let lines = secondary_non_responder();

    let first = run_live(Arc::clone(&log), &checkpoints, &lines).await?;
    // Registration, each cycle and each rating changes the assessment.
    let positions: Vec<_> = first.iter().map(|event| event.source_position).collect();
    assert_eq!(positions, vec![1, 2, 3, 4, 5, 6, 7]);
    let last = first.last().expect("events were published");
    assert_eq!(last.classification, "suboptimal");
    assert_eq!(last.rule_set, "bnn-2016/v1");
    assert_eq!(last.injections, 3);
    assert_eq!(first[0].classification, "not_snr");

    // A restart resumes from the checkpoint: nothing new, nothing again.
    let (second, folded, asked) = run_until(Arc::clone(&log), &checkpoints, 7).await?;
    assert!(second.is_empty(), "{second:?}");
    assert_eq!(folded, 0, "the restart refolded records of its checkpoint");

    // The bus carries the summary; GetPatient adds the whole assessment.
    assert!(first.iter().all(|event| event.detail_json.is_empty()));
    assert_eq!(asked.classification, "suboptimal");
    assert_eq!(asked.findings, last.findings);
    let detail: serde_json::Value = serde_json::from_str(&asked.detail_json)?;
    assert_eq!(detail["patient"], "L-1");
    assert_eq!(detail["cycles"].as_array().map(Vec::len), Some(3));
    assert_eq!(detail["snr"]["group"], "suboptimal");

    // A re-assessment with the same rating changes nothing: not published.
    // One that changes the rating is, once.
    append(
        log.as_ref(),
        &[line(
            "e-8",
            "L-1",
            "2019-08-19",
            &rating("e-6", "suboptimal"),
        )],
    )
    .await?;
    append(
        log.as_ref(),
        &[line("e-9", "L-1", "2019-08-26", &rating("e-6", "good"))],
    )
    .await?;
    let (third, folded, _) = run_until(Arc::clone(&log), &checkpoints, 9).await?;
    assert_eq!(folded, 2, "only positions 8 and 9 are new");
    let positions: Vec<_> = third.iter().map(|event| event.source_position).collect();
    assert_eq!(positions, vec![9]);
    assert_eq!(third[0].classification, "not_snr");
    Ok(())
}

#[tokio::test]
async fn a_catch_up_publishes_the_latest_assessment_under_the_live_id() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let checkpoints = directory.path().join("checkpoint");
    let mut lines = secondary_non_responder();
    // Changes nothing (a resistance test before the SNR onset, then the
    // same rating again): the latest assessment is still that of 7.
    lines.push(line(
        "e-8",
        "L-1",
        "2019-05-20",
        r#""type":"resistance_tested","method":"frontalis","result":"negative""#,
    ));
    lines.push(line(
        "e-9",
        "L-1",
        "2019-08-19",
        &rating("e-6", "suboptimal"),
    ));

    let live_log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(
        directory.path().join("live"),
        EmbeddedOptions::default(),
    )?);
    let live = run_live(
        Arc::clone(&live_log),
        &checkpoints.join("live"),
        &lines[..7],
    )
    .await?;
    append(live_log.as_ref(), &lines[7..]).await?;
    let (after, _, _) = run_until(live_log, &checkpoints.join("live"), 9).await?;
    assert!(after.is_empty(), "{after:?}");

    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(
        directory.path().join("log"),
        EmbeddedOptions::default(),
    )?);
    append(log.as_ref(), &lines).await?;
    let (caught_up, folded, _) = run_until(log, &checkpoints.join("catch-up"), 9).await?;
    assert_eq!(folded, 9);
    // However the nine records were chunked, what is published is what the
    // live follower published under the same ids, ending with position 7.
    assert!(!caught_up.is_empty());
    for event in &caught_up {
        let same_id = live
            .iter()
            .find(|published| published.source_position == event.source_position);
        assert_eq!(Some(event), same_id);
    }
    assert_eq!(caught_up.last(), live.last());
    assert_eq!(caught_up.last().map(|event| event.source_position), Some(7));
    Ok(())
}
