//! The three services as real processes (`toxaudit serve …` over a
//! nats-server the test starts, and `toxaudit up` on the embedded log),
//! driven through gRPC with real tokens.
//!
//! What is proved: the reporting service's report equals the offline
//! `toxaudit report` of the same events; a `kill -9` of assessment in the
//! middle of its work publishes, after restart, exactly the derived events a
//! clean run would, none twice; a restarted reporting service resumes from
//! its checkpoint (its log says from where) and converges; a clinician's
//! token is confined to its centre and no token is UNAUTHENTICATED; a gRPC
//! client that is not ours (Python grpcio) lists the services by reflection,
//! checks health and reads the report.
//!
//! Every wait is on an event (a line on stdout, a pushed report) or polls
//! against a deadline; none is a fixed sleep.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use domain::ClinicalDate;
use futures::StreamExt;
use proto::v1::{GetReportRequest, ListFindingsRequest, PatientAssessed};
use service_kit::ServiceClient;
use test_support::NatsServer;

use super::toxaudit;

const SECRET: &str = "an end-to-end test secret, long enough";
/// How long a service may take to start or to catch up.
const DEADLINE: Duration = Duration::from_secs(90);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Events per Ingest.Append call, as an import would send them.
const BATCH: usize = 250;

/// A token signed with the test secret, through `toxaudit token issue`.
fn token(centre: &str, role: &str) -> anyhow::Result<String> {
    let output = Command::new(toxaudit())
        .args(["token", "issue", "--centre", centre, "--role", role])
        .env("TOXAUDIT_JWT_SECRET", SECRET)
        .output()
        .context("running toxaudit token issue")?;
    ensure!(
        output.status.success(),
        "token issue failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// A toxaudit service process; killed when dropped.
pub(super) struct ServiceProcess {
    child: Child,
    url: String,
    log_path: PathBuf,
    arguments: Vec<String>,
}

impl ServiceProcess {
    /// Starts `toxaudit <arguments>` and waits for its `listening grpc URL` line.
    pub(super) fn start(arguments: &[String], log_path: PathBuf) -> anyhow::Result<ServiceProcess> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .context("opening the service log")?;
        let mut child = Command::new(toxaudit())
            .args(arguments)
            .env("TOXAUDIT_JWT_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting toxaudit {}", arguments.join(" ")))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (sender, receiver) = std::sync::mpsc::channel();
        // Reads stdout until the process ends; it only forwards lines.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let started = Instant::now();
        let url = loop {
            let left = DEADLINE.saturating_sub(started.elapsed());
            match receiver.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("listening grpc ") {
                        break rest
                            .split_whitespace()
                            .next()
                            .context("no url after 'listening grpc'")?
                            .to_owned();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    bail!(
                        "toxaudit {} did not start: {}",
                        arguments.join(" "),
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
            }
        };
        Ok(ServiceProcess {
            child,
            url,
            log_path,
            arguments: arguments.to_vec(),
        })
    }

    /// What the service logged, without terminal colour codes.
    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let mut plain = String::with_capacity(text.len());
        let mut in_escape = false;
        for character in text.chars() {
            match (in_escape, character) {
                (false, '\u{1b}') => in_escape = true,
                (false, other) => plain.push(other),
                (true, 'm') => in_escape = false,
                (true, _) => {}
            }
        }
        plain
    }

    /// SIGKILL: no shutdown, no final checkpoint.
    fn kill_9(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("sending SIGKILL")?;
        self.child
            .wait()
            .context("waiting for the killed service")?;
        Ok(())
    }

    /// Starts the same command again (after a kill).
    fn restart(&mut self) -> anyhow::Result<()> {
        // The old process is dead already; dropping it only reaps it.
        *self = ServiceProcess::start(&self.arguments, self.log_path.clone())?;
        Ok(())
    }

    async fn client(&self, token: &str) -> anyhow::Result<ServiceClient> {
        Ok(ServiceClient::connect(&self.url, token, None).await?)
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `serve SERVICE --nats URL` with its own data directory, on a free port.
fn serve(service: &str, nats: &str, directory: &Path) -> anyhow::Result<ServiceProcess> {
    let data = directory.join(service);
    ServiceProcess::start(
        &[
            "serve".to_owned(),
            service.to_owned(),
            "--nats".to_owned(),
            nats.to_owned(),
            "--data-dir".to_owned(),
            data.display().to_string(),
            "--grpc-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
        ],
        directory.join(format!("{service}.log")),
    )
}

fn today() -> ClinicalDate {
    ClinicalDate::from_date(time::OffsetDateTime::now_utc().date())
}

/// The paper2019 cohort as proto events, in file order.
fn paper2019() -> anyhow::Result<(Vec<String>, Vec<proto::v1::Event>)> {
    let lines = demodata::paper2019_lines(7);
    let today = today();
    let events = lines
        .iter()
        .map(|line| {
            domain::ndjson::parse_line(line, today)
                .map(|event| proto::v1::Event::from(&event))
                .map_err(|refusal| anyhow::anyhow!("demo line refused: {refusal}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((lines, events))
}

/// Appends `events` through Ingest.Append in batches; returns the log head.
async fn append_all(client: &ServiceClient, events: &[proto::v1::Event]) -> anyhow::Result<u64> {
    let mut head = 0;
    for batch in events.chunks(BATCH) {
        let response = client
            .append(batch.to_vec())
            .await
            .context("Ingest.Append")?;
        head = head.max(response.head);
    }
    Ok(head)
}

/// The offline report: import `lines` into a fresh data directory with
/// `toxaudit import`, then `toxaudit report --format json`.
fn offline_report(lines: &[String], directory: &Path) -> anyhow::Result<serde_json::Value> {
    let file = directory.join("events.ndjson");
    std::fs::write(&file, lines.join("\n") + "\n")?;
    let data = directory.join("offline");
    let import = Command::new(toxaudit())
        .args(["import", "--data-dir"])
        .arg(&data)
        .arg(&file)
        .output()?;
    ensure!(
        import.status.success(),
        "offline import failed: {}",
        String::from_utf8_lossy(&import.stderr)
    );
    let report = Command::new(toxaudit())
        .args(["report", "--format", "json", "--data-dir"])
        .arg(&data)
        .output()?;
    ensure!(
        report.status.success(),
        "offline report failed: {}",
        String::from_utf8_lossy(&report.stderr)
    );
    Ok(serde_json::from_slice(&report.stdout)?)
}

/// Waits, on WatchReport's pushes, for the report as of `head`.
async fn report_at(client: &ServiceClient, head: u64) -> anyhow::Result<serde_json::Value> {
    let mut pushes = client
        .reporting()
        .watch_report(GetReportRequest {
            scope: "all".to_owned(),
        })
        .await?
        .into_inner();
    let wait = async {
        while let Some(report) = pushes.next().await {
            let report = report?;
            if report.as_of_position >= head {
                return Ok::<_, anyhow::Error>(serde_json::from_str(&report.json)?);
            }
        }
        bail!("the report stream ended before position {head}")
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .with_context(|| format!("no report as of position {head} in time"))?
}

/// Every derived event on the bus so far, in stream order.
async fn derived_events(nats: &str) -> anyhow::Result<Vec<PatientAssessed>> {
    let client = async_nats::connect(nats).await?;
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream.get_stream("TOXAUDIT_DERIVED").await?;
    let count = stream.info().await?.state.messages;
    let mut events = Vec::new();
    for sequence in 1..=count {
        let message = stream.get_raw_message(sequence).await?;
        events.push(prost::Message::decode(message.payload.as_ref())?);
    }
    Ok(events)
}

/// The derived events a clean assessment run publishes for `lines`: the
/// same rule (publish the summary when a patient's whole assessment, its
/// detail included, changes; ADR 0011), computed here.
fn expected_derived_events(stored: &[domain::RecordedEvent]) -> Vec<PatientAssessed> {
    let mut cohort = domain::audit::Cohort::new(domain::audit::RuleParameters::default());
    let mut last = std::collections::HashMap::new();
    let mut expected = Vec::new();
    for recorded in stored {
        cohort.apply(recorded);
        let key = recorded.event.patient_key();
        let Some(view) = cohort.patient(&key) else {
            continue;
        };
        if !view.registered {
            continue;
        }
        let current = assessment::patient_assessed_in_detail(&view, 0);
        if last.get(&key) != Some(&current) {
            last.insert(key, current);
            expected.push(assessment::patient_assessed(&view, recorded.position));
        }
    }
    expected
}

/// Checks derived events against the rule's record-by-record events
/// (`expected`): no id twice; each published event is the rule's event of
/// that id (a follower catching up publishes only a patient's latest
/// assessment per chunk of records, whose chunking is timing, so which
/// intermediate ones appear is not fixed); and each patient's last
/// published event is the rule's last.
fn assert_published_by_the_rule(published: &[PatientAssessed], expected: &[PatientAssessed]) {
    let ids: HashSet<_> = published
        .iter()
        .map(service_kit::bus::derived_event_id)
        .collect();
    assert_eq!(
        ids.len(),
        published.len(),
        "a derived event was stored twice"
    );
    let by_id: std::collections::HashMap<_, _> = expected
        .iter()
        .map(|event| (service_kit::bus::derived_event_id(event), event))
        .collect();
    for event in published {
        assert_eq!(
            by_id.get(&service_kit::bus::derived_event_id(event)),
            Some(&event),
            "published, but not the rule's event of that id"
        );
    }
    let last = |events: &[PatientAssessed]| {
        let mut last = std::collections::BTreeMap::new();
        for event in events {
            last.insert((event.centre.clone(), event.patient.clone()), event.clone());
        }
        last
    };
    assert_eq!(
        last(published),
        last(expected),
        "a patient's latest assessment"
    );
}

/// The ids of each patient's last derived event among `events`.
fn latest_ids(events: &[PatientAssessed]) -> HashSet<String> {
    let mut latest = std::collections::HashMap::new();
    for event in events {
        latest.insert(
            (event.centre.clone(), event.patient.clone()),
            service_kit::bus::derived_event_id(event),
        );
    }
    latest.into_values().collect()
}

/// Waits until the bus holds every patient's latest derived event of
/// `expected` (assessment's position moves on before its chunk's events are
/// stored), then returns every derived event stored.
async fn all_latest_stored(
    nats: &str,
    expected: &[PatientAssessed],
) -> anyhow::Result<Vec<PatientAssessed>> {
    let wanted = latest_ids(expected);
    eventually("every patient's latest assessment is stored", || {
        let wanted = &wanted;
        async move {
            let stored: HashSet<String> = derived_events(nats)
                .await?
                .iter()
                .map(service_kit::bus::derived_event_id)
                .collect();
            Ok(wanted.is_subset(&stored))
        }
    })
    .await?;
    derived_events(nats).await
}

/// The log as recorded events, read from JetStream.
async fn read_log(nats: &str) -> anyhow::Result<Vec<domain::RecordedEvent>> {
    use eventlog::EventLog;
    let log = eventlog::JetStreamLog::connect(nats, eventlog::JetStreamOptions::default()).await?;
    let mut stored = Vec::new();
    loop {
        let records = log.read(stored.len() as u64 + 1, 1000).await?;
        if records.is_empty() {
            return Ok(stored);
        }
        for record in records {
            stored.push(proto::convert::recorded_from_parts(
                record.position,
                record.recorded_at_micros,
                &record.principal,
                &record.payload,
            )?);
        }
    }
}

/// Counts the derived events stored on the bus, cheaply (stream info).
struct DerivedCounter {
    jetstream: async_nats::jetstream::Context,
}

impl DerivedCounter {
    async fn connect(nats: &str) -> anyhow::Result<DerivedCounter> {
        let client = async_nats::connect(nats).await?;
        Ok(DerivedCounter {
            jetstream: async_nats::jetstream::new(client),
        })
    }

    async fn count(&self) -> anyhow::Result<u64> {
        match self.jetstream.get_stream("TOXAUDIT_DERIVED").await {
            Ok(mut stream) => Ok(stream.info().await?.state.messages),
            // Not created yet: the assessment service creates it at start.
            Err(_) => Ok(0),
        }
    }
}

/// Polls until `done` holds or the deadline passes.
async fn eventually<F, Fut>(what: &str, done: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    eventually_every(POLL_INTERVAL, what, done).await
}

/// Polls every `interval` until `done` holds or the deadline passes.
async fn eventually_every<F, Fut>(interval: Duration, what: &str, mut done: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let started = Instant::now();
    loop {
        if done().await? {
            return Ok(());
        }
        if started.elapsed() > DEADLINE {
            bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(interval).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_services_over_nats_report_what_the_offline_report_says() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let directory = tempfile::tempdir()?;
    let ingest = serve("ingest", &nats.url(), directory.path())?;
    let assessment = serve("assessment", &nats.url(), directory.path())?;
    let reporting = serve("reporting", &nats.url(), directory.path())?;
    let admin = token("leeds", "admin")?;
    let auditor = token("all", "auditor")?;

    let (lines, events) = paper2019()?;
    let head = append_all(&ingest.client(&admin).await?, &events).await?;
    let served = report_at(&reporting.client(&auditor).await?, head).await?;
    let offline = offline_report(&lines, directory.path())?;
    assert_eq!(
        served, offline,
        "gRPC report differs from the offline report"
    );

    // Assessment followed the same log: its derived events are exactly
    // those of the rule, none twice.
    let assessment_client = assessment.client(&auditor).await?;
    eventually("assessment reaches the head", || {
        let client = assessment_client.clone();
        async move {
            let findings = client
                .assessment()
                .list_findings(ListFindingsRequest {
                    centre: "leeds".to_owned(),
                })
                .await?
                .into_inner();
            Ok(findings.as_of_position >= head)
        }
    })
    .await?;
    let stored = read_log(&nats.url()).await?;
    let expected = expected_derived_events(&stored);
    assert_published_by_the_rule(&all_latest_stored(&nats.url(), &expected).await?, &expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assessment_killed_mid_stream_publishes_nothing_twice() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let directory = tempfile::tempdir()?;
    let ingest = serve("ingest", &nats.url(), directory.path())?;
    let admin = token("leeds", "admin")?;
    let (_, events) = paper2019()?;
    let head = append_all(&ingest.client(&admin).await?, &events).await?;

    let stored = read_log(&nats.url()).await?;
    let expected = expected_derived_events(&stored);
    let counter = DerivedCounter::connect(&nats.url()).await?;
    let mut assessment = serve("assessment", &nats.url(), directory.path())?;
    // Mid-stream: killed as soon as its first derived events are stored.
    eventually_every(
        Duration::from_millis(2),
        "assessment has published something",
        || {
            let counter = &counter;
            async move { Ok(counter.count().await? > 0) }
        },
    )
    .await?;
    assessment.kill_9()?;
    let stored_before_kill = derived_events(&nats.url()).await?;
    let published_before_kill = stored_before_kill.len();
    let stored_ids: HashSet<String> = stored_before_kill
        .iter()
        .map(service_kit::bus::derived_event_id)
        .collect();
    assert!(
        !latest_ids(&expected).is_subset(&stored_ids),
        "assessment had finished before it was killed: not mid-stream"
    );
    assessment.restart()?;

    let client = assessment.client(&admin).await?;
    eventually("the restarted assessment reaches the head", || {
        let client = client.clone();
        async move {
            let findings = client
                .assessment()
                .list_findings(ListFindingsRequest {
                    centre: "leeds".to_owned(),
                })
                .await?
                .into_inner();
            Ok(findings.as_of_position >= head)
        }
    })
    .await?;
    let published = all_latest_stored(&nats.url(), &expected).await?;
    eprintln!(
        "derived events: {published_before_kill} stored before the kill, {} after the restart, {} expected",
        published.len(),
        expected.len()
    );
    assert_published_by_the_rule(&published, &expected);
    Ok(())
}

/// The bus already holds each patient's latest assessment (as after a
/// process killed between publishing and checkpointing) when assessment
/// starts without a checkpoint and folds the log in two windows: it never
/// stores a patient's older state after the latest one, so each patient's
/// last derived event stays the rule's latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assessment_never_stores_an_older_state_after_the_latest() -> anyhow::Result<()> {
    let admin = token("leeds", "admin")?;
    let (_, events) = paper2019()?;
    let half = events.len() / 2;
    // The rule's events, from the same events appended to a first log.
    let expected = {
        let nats = NatsServer::start().await?;
        let directory = tempfile::tempdir()?;
        let ingest = serve("ingest", &nats.url(), directory.path())?;
        append_all(&ingest.client(&admin).await?, &events).await?;
        expected_derived_events(&read_log(&nats.url()).await?)
    };
    let latest_of = |events: &[PatientAssessed]| {
        let mut latest = std::collections::BTreeMap::new();
        for event in events {
            latest.insert((event.centre.clone(), event.patient.clone()), event.clone());
        }
        latest
    };
    let latest = latest_of(&expected);

    let nats = NatsServer::start().await?;
    let directory = tempfile::tempdir()?;
    let bus = service_kit::DerivedBus::connect_nats(&nats.url(), "toxaudit").await?;
    for event in latest.values() {
        bus.publish(event.clone()).await?;
    }
    let ingest = serve("ingest", &nats.url(), directory.path())?;
    let assessment = serve("assessment", &nats.url(), directory.path())?;
    let ingest_client = ingest.client(&admin).await?;
    let assessment_client = assessment.client(&admin).await?;
    let reaches = |head: u64| {
        let client = assessment_client.clone();
        async move {
            let findings = client
                .assessment()
                .list_findings(ListFindingsRequest {
                    centre: "leeds".to_owned(),
                })
                .await?
                .into_inner();
            Ok(findings.as_of_position >= head)
        }
    };
    let first_head = append_all(&ingest_client, &events[..half]).await?;
    eventually("assessment folds the first half", || reaches(first_head)).await?;
    let head = append_all(&ingest_client, &events[half..]).await?;
    eventually("assessment reaches the head", || reaches(head)).await?;
    assert_eq!(
        expected,
        expected_derived_events(&read_log(&nats.url()).await?),
        "the two logs differ"
    );
    // Folds run one after the other, each publishing its window before the
    // next starts: at the head, whatever was published before the last
    // window is stored, and the last window holds each patient's latest.
    let published = all_latest_stored(&nats.url(), &expected).await?;
    let mut seen = std::collections::HashMap::new();
    for event in &published {
        let key = (event.centre.clone(), event.patient.clone());
        if let Some(before) = seen.insert(key, event.source_position) {
            assert!(
                event.source_position > before,
                "{} stored after {before}",
                service_kit::bus::derived_event_id(event)
            );
        }
    }
    assert_published_by_the_rule(&published, &expected);
    Ok(())
}

/// The checkpoint position written in a service's data directory.
fn checkpoint_position(data: &Path) -> anyhow::Result<u64> {
    let path = data
        .join("checkpoints")
        .join("reporting")
        .join("checkpoint.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let marker: serde_json::Value = serde_json::from_slice(&bytes)?;
            Ok(marker["position"].as_u64().unwrap_or(0))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(error.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reporting_restarts_from_its_checkpoint_and_converges() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let directory = tempfile::tempdir()?;
    let ingest = serve("ingest", &nats.url(), directory.path())?;
    let mut reporting = serve("reporting", &nats.url(), directory.path())?;
    let admin = token("leeds", "admin")?;
    let (lines, events) = paper2019()?;
    let half = events.len() / 2;
    let ingest_client = ingest.client(&admin).await?;
    let first_head = append_all(&ingest_client, &events[..half]).await?;
    report_at(&reporting.client(&admin).await?, first_head).await?;
    let data = directory.path().join("reporting");
    eventually("reporting checkpoints the first half", || {
        let data = data.clone();
        async move { Ok(checkpoint_position(&data)? >= first_head) }
    })
    .await?;

    reporting.kill_9()?;
    let checkpoint = checkpoint_position(&data)?;
    let head = append_all(&ingest_client, &events[half..]).await?;
    reporting.restart()?;
    let served = report_at(&reporting.client(&admin).await?, head).await?;

    let log = reporting.log();
    let resumed = log
        .lines()
        .rfind(|line| line.contains("following the event log"))
        .context("no 'following the event log' line")?
        .to_owned();
    eprintln!("reporting checkpoint at {checkpoint} of {head}; restarted with: {resumed}");
    assert!(checkpoint > 1, "the first run checkpointed nothing");
    assert!(
        resumed.contains(&format!("from_position={}", checkpoint + 1)),
        "the restart did not resume after its checkpoint {checkpoint}: {resumed}"
    );
    assert_eq!(served, offline_report(&lines, directory.path())?);
    Ok(())
}

/// `toxaudit up` on the embedded log, in a fresh data directory.
fn up(directory: &Path) -> anyhow::Result<ServiceProcess> {
    ServiceProcess::start(
        &[
            "up".to_owned(),
            "--data-dir".to_owned(),
            directory.join("data").display().to_string(),
            "--grpc-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--no-http".to_owned(),
        ],
        directory.join("up.log"),
    )
}

fn registration(event_id: &str, centre: &str, patient: &str) -> proto::v1::Event {
    proto::v1::Event {
        event_id: event_id.to_owned(),
        centre: centre.to_owned(),
        patient: patient.to_owned(),
        occurred_on: "2020-01-06".to_owned(),
        body: Some(proto::v1::event::Body::PatientRegistered(
            proto::v1::PatientRegistered::default(),
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clinician_token_is_confined_to_its_centre() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let service = up(directory.path())?;
    let leeds = service.client(&token("leeds", "clinician")?).await?;
    let auditor = service.client(&token("all", "auditor")?).await?;

    // Its own centre: allowed.
    let appended = leeds
        .append(vec![registration("e-1", "leeds", "L-1")])
        .await?;
    assert_eq!(appended.outcomes[0].position, 1);
    leeds.get_report("leeds").await?;

    // Another centre: neither write nor read.
    let refused = leeds
        .append(vec![registration("e-2", "salford-royal", "S-1")])
        .await
        .expect_err("a leeds clinician wrote salford-royal");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    for scope in ["salford-royal", "all"] {
        let refused = leeds
            .get_report(scope)
            .await
            .expect_err("read another centre");
        assert_eq!(
            refused.code(),
            tonic::Code::PermissionDenied,
            "scope {scope}"
        );
    }
    let refused = leeds
        .assessment()
        .list_findings(ListFindingsRequest {
            centre: "salford-royal".to_owned(),
        })
        .await
        .expect_err("listed another centre's findings");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    // An auditor reads everything and writes nothing.
    auditor.get_report("all").await?;
    let refused = auditor
        .append(vec![registration("e-3", "leeds", "L-3")])
        .await
        .expect_err("an auditor wrote");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    // No token, or a token signed with another secret: unauthenticated.
    let anonymous =
        proto::v1::reporting_client::ReportingClient::connect(service.url.clone()).await?;
    let refused = anonymous
        .clone()
        .get_report(GetReportRequest {
            scope: "all".to_owned(),
        })
        .await
        .expect_err("no token was accepted");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let forged = service_kit::JwtSecret::from_bytes(b"some other secret entirely")?.issue(
        "mallory",
        "leeds",
        service_kit::Role::Admin,
        Duration::from_secs(60),
    )?;
    let refused = service
        .client(&forged)
        .await?
        .get_report("all")
        .await
        .expect_err("a forged token was accepted");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // A refused event: every reason, per event and field, in the details.
    let mut bad = registration("e-4", "leeds", "L-1");
    bad.occurred_on = "1980-01-01".to_owned();
    let refused = leeds
        .append(vec![bad])
        .await
        .expect_err("a bad event was accepted");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let details = service_kit::client::refused_events(&refused).context("no details")?;
    let fields: Vec<_> = details.events[0]
        .reasons
        .iter()
        .map(|reason| reason.field.as_str())
        .collect();
    assert!(fields.contains(&"occurred_on"), "{fields:?}");
    assert!(
        refused.message().contains("occurred_on"),
        "{}",
        refused.message()
    );

    // The same id with other content: a conflict.
    let mut conflicting = registration("e-1", "leeds", "L-9");
    conflicting.occurred_on = "2020-01-07".to_owned();
    let refused = leeds
        .append(vec![conflicting])
        .await
        .expect_err("a conflicting event was accepted");
    assert_eq!(refused.code(), tonic::Code::AlreadyExists);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grpc_client_lists_services_checks_health_and_reads_the_report()
-> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let service = up(directory.path())?;
    let admin = token("leeds", "admin")?;
    let client = service.client(&admin).await?;
    client
        .append(vec![registration("e-1", "leeds", "L-1")])
        .await?;
    // Reporting has folded the event before the probe asks.
    report_at(&client, 1).await?;
    // This test target belongs to crates/cli: the workspace root is two up.
    let probe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/grpc_probe.py");
    let target = service.url.trim_start_matches("http://").to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(probe)
            .args(["--target", &target, "--token", &admin])
            .output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "grpc_probe.py failed (is grpcio installed? make deps): {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for service_name in [
        "toxaudit.v1.Ingest",
        "toxaudit.v1.Assessment",
        "toxaudit.v1.Reporting",
        "grpc.health.v1.Health",
    ] {
        assert!(
            stdout.contains(service_name),
            "{service_name} not listed: {stdout}"
        );
    }
    assert!(stdout.contains("health SERVING"), "{stdout}");
    let report_line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("report "))
        .context("no report line")?;
    let report: serde_json::Value = serde_json::from_str(report_line)?;
    assert_eq!(report["scopes"]["leeds"]["patients"], 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_up_gracefully_with_its_checkpoints_committed() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let mut service = up(directory.path())?;
    let admin = token("leeds", "admin")?;
    service
        .client(&admin)
        .await?
        .append(vec![
            registration("e-1", "leeds", "L-1"),
            registration("e-2", "leeds", "L-2"),
        ])
        .await?;
    // Wait until reporting and assessment have folded both events, so the
    // checkpoint committed on SIGTERM is at position 2 for every projection.
    let client = service.client(&admin).await?;
    eventually("reporting and assessment fold position 2", || {
        let client = client.clone();
        async move {
            let report = client.get_report("all").await?;
            let findings = client
                .assessment()
                .list_findings(ListFindingsRequest {
                    centre: "leeds".to_owned(),
                })
                .await?
                .into_inner();
            Ok(report.as_of_position >= 2 && findings.as_of_position >= 2)
        }
    })
    .await?;
    let sent = Command::new("kill")
        .args(["-TERM", &service.child.id().to_string()])
        .status()?;
    ensure!(sent.success(), "kill -TERM failed");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = service.child.try_wait()? {
            break status;
        }
        ensure!(started.elapsed() < DEADLINE, "up did not stop on SIGTERM");
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    assert!(status.success(), "up exited with {status}");
    assert!(
        service.log().contains("sigterm received"),
        "{}",
        service.log()
    );

    // Every projection committed what it had folded: the restart resumes
    // after position 2, for all three.
    service.restart()?;
    let log = service.log();
    let resumed = log
        .lines()
        .filter(|line| line.contains("projection resumed from checkpoint"))
        .filter(|line| line.contains("checkpoint_position=2"))
        .count();
    assert_eq!(resumed, 3, "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_grpc_over_tls_when_configured() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let certificate = directory.path().join("cert.pem");
    let private_key = directory.path().join("key.pem");
    std::fs::write(&certificate, certified.cert.pem())?;
    std::fs::write(&private_key, certified.signing_key.serialize_pem())?;
    let service = ServiceProcess::start(
        &[
            "up".to_owned(),
            "--data-dir".to_owned(),
            directory.path().join("data").display().to_string(),
            "--grpc-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--no-http".to_owned(),
            "--tls-cert".to_owned(),
            certificate.display().to_string(),
            "--tls-key".to_owned(),
            private_key.display().to_string(),
        ],
        directory.path().join("up.log"),
    )?;
    let port = service
        .url
        .rsplit(':')
        .next()
        .context("no port in the url")?;
    assert!(service.url.starts_with("https://"), "{}", service.url);
    let admin = token("leeds", "admin")?;
    let client = ServiceClient::connect(
        &format!("https://localhost:{port}"),
        &admin,
        Some(&certificate),
    )
    .await?;
    client
        .append(vec![registration("e-1", "leeds", "L-1")])
        .await?;
    let report = report_at(&client, 1).await?;
    assert_eq!(report["scopes"]["leeds"]["patients"], 1);

    // Plain HTTP/2 to the TLS port gets nowhere.
    let plain = ServiceClient::connect(&format!("http://127.0.0.1:{port}"), &admin, None).await;
    let refused = match plain {
        Err(_) => true,
        Ok(client) => client.get_report("all").await.is_err(),
    };
    assert!(refused, "a plaintext call to the tls port succeeded");
    Ok(())
}
