//! The multi-site deployment of ADR 0006 with real servers: a three-node hub
//! cluster and a leaf node per centre, started from the `deploy/nats/`
//! templates on loopback ports (`test_support::topology`). Each centre's
//! events are appended to its own leaf's JetStream domain through
//! `JetStreamLog`, as its ingest service does; the hub's network stream
//! sources them across the leaf links; the reports are the real audit
//! (`domain::audit::Cohort`) folded from the logs.
//!
//! What is proved: centres keep recording while the hub is down and the
//! network converges to the union afterwards, with nothing lost or
//! duplicated and each centre's order and positions intact; losing one hub
//! node stops nothing; a centre's credentials cannot publish into another
//! centre's subjects; re-sending a batch whose acknowledgement was lost
//! never duplicates an event at the hub. Every wait polls against a deadline.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use async_nats::HeaderMap;
use bytes::Bytes;
use domain::ClinicalDate;
use domain::audit::{Cohort, RuleParameters};
use eventlog::network::{CentreSource, NetworkStreamOptions, ensure_network_stream};
use eventlog::{
    AppendBatch, AppendOutcome, EventLog, JetStreamLog, JetStreamOptions, LogError, NatsAuth,
    NewRecord,
};
use test_support::topology::{
    self, CENTRE_SERVICES_PASSWORD, NETWORK_REPORTING_PASSWORD, Topology,
};

const LEEDS: &str = "leeds";
const SALFORD: &str = "salford-royal";
const CENTRES: [&str; 2] = [LEEDS, SALFORD];
/// How long the hub may take to catch up with the centres.
const CONVERGENCE_DEADLINE: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Records per append, as an import batch.
const BATCH: usize = 200;

/// The topology, the network stream, and each centre's log on its leaf.
struct Network {
    topology: Topology,
    centre_logs: BTreeMap<String, JetStreamLog>,
}

impl Network {
    async fn start() -> anyhow::Result<Network> {
        let topology = Topology::start(&CENTRES).await?;
        let sources = CENTRES
            .iter()
            .map(|centre| CentreSource::new(centre))
            .collect::<Result<Vec<_>, _>>()?;
        let sourced = ensure_network_stream(
            topology.hub_admin_client().await?,
            &NetworkStreamOptions::default(),
            &sources,
        )
        .await
        .context("creating the network stream")?;
        assert_eq!(sourced, vec![LEEDS.to_owned(), SALFORD.to_owned()]);
        let mut centre_logs = BTreeMap::new();
        for centre in CENTRES {
            centre_logs.insert(centre.to_owned(), centre_log(&topology, centre).await?);
        }
        Ok(Network {
            topology,
            centre_logs,
        })
    }

    fn centre(&self, centre: &str) -> &JetStreamLog {
        &self.centre_logs[centre]
    }

    /// The network stream, read as reporting at the hub reads it. Opening
    /// is retried while the hub's streams elect leaders (after a start or a
    /// restart they answer "no responders" for a moment).
    async fn hub_log(&self) -> anyhow::Result<JetStreamLog> {
        let client = topology::connect(
            &self
                .topology
                .hub_url_as("network-reporting", NETWORK_REPORTING_PASSWORD),
        )
        .await?;
        let deadline = Instant::now() + CONVERGENCE_DEADLINE;
        loop {
            let opened = JetStreamLog::with_client(
                client.clone(),
                JetStreamOptions {
                    replicas: 3,
                    ..JetStreamOptions::default()
                },
            )
            .await;
            match opened {
                Ok(log) => return Ok(log),
                Err(eventlog::LogError::Unavailable(reason)) if Instant::now() < deadline => {
                    eprintln!("hub not ready yet: {reason}");
                }
                Err(error) => {
                    return Err(error).context("opening the network stream at the hub");
                }
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Appends `records` at `centre` in batches, as an import does.
    async fn append_at(&self, centre: &str, records: &[NewRecord]) -> anyhow::Result<()> {
        for chunk in records.chunks(BATCH) {
            self.centre(centre)
                .append(AppendBatch::new(chunk.to_vec()))
                .await
                .with_context(|| format!("appending at {centre}"))?;
        }
        Ok(())
    }

    /// The records every centre holds, in each centre's position order.
    async fn centre_records(&self) -> anyhow::Result<BTreeMap<String, Vec<eventlog::Record>>> {
        let mut all = BTreeMap::new();
        for (centre, log) in &self.centre_logs {
            all.insert(centre.clone(), read_all(log).await?);
        }
        Ok(all)
    }

    /// Polls the hub until it holds as many records as the centres together,
    /// then checks it holds exactly their union (see [`assert_union`]).
    async fn wait_for_convergence(&self, hub: &JetStreamLog) -> anyhow::Result<()> {
        let centres = self.centre_records().await?;
        let expected: u64 = centres.values().map(|records| records.len() as u64).sum();
        let deadline = Instant::now() + CONVERGENCE_DEADLINE;
        loop {
            // The hub may be electing leaders after a restart: errors are retried.
            if let Ok(head) = hub.head().await {
                ensure!(
                    head <= expected,
                    "the hub holds {head} records, more than the {expected} of the centres"
                );
                if head == expected {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the hub did not reach {expected} records within {CONVERGENCE_DEADLINE:?}; \
                     hub-1 log:\n{}",
                    self.topology.hub[0].log()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        assert_union(&read_hub(hub).await?, &centres)?;
        self.assert_source_positions(hub, &centres).await
    }

    /// Each hub record names, in `Nats-Stream-Source`, the position it holds
    /// in its centre's stream: the same position that centre's log gives it.
    async fn assert_source_positions(
        &self,
        hub: &JetStreamLog,
        centres: &BTreeMap<String, Vec<eventlog::Record>>,
    ) -> anyhow::Result<()> {
        let position_at_centre: BTreeMap<&str, u64> = centres
            .values()
            .flatten()
            .map(|record| (&record.key[..], record.position))
            .collect();
        let jetstream = async_nats::jetstream::new(hub.client().clone());
        let stream = jetstream
            .get_stream("TOXAUDIT_EVENTS")
            .await
            .context("finding the network stream")?;
        for record in read_hub(hub).await? {
            let message = stream
                .get_raw_message(record.position)
                .await
                .with_context(|| format!("reading hub message {}", record.position))?;
            let source = message
                .headers
                .get("Nats-Stream-Source")
                .map(|value| value.as_str().to_owned())
                .with_context(|| format!("hub message {} has no source", record.position))?;
            // "<stream>:<hash> <sequence> <filter> <transform> ..."
            let sequence: u64 = source
                .split(' ')
                .nth(1)
                .and_then(|token| token.parse().ok())
                .with_context(|| format!("no sequence in Nats-Stream-Source {source:?}"))?;
            ensure!(
                Some(&sequence) == position_at_centre.get(&record.key[..]),
                "hub message {} ({}) came from position {sequence}, but its centre holds it at {:?}",
                record.position,
                record.key,
                position_at_centre.get(&record.key[..])
            );
        }
        Ok(())
    }
}

/// A centre's log on its leaf node, as the centre's services user, with the
/// user and password written in the URL (parsed out by eventlog, as async-nats
/// alone would send none).
async fn centre_log(topology: &Topology, centre: &str) -> anyhow::Result<JetStreamLog> {
    let url = topology.leaf_url_as(centre, "services", CENTRE_SERVICES_PASSWORD)?;
    JetStreamLog::connect(&url, JetStreamOptions::default())
        .await
        .with_context(|| format!("opening the {centre} log on its leaf node"))
}

/// The centre services' credentials, as `--nats-user services` with its
/// password file gives them.
fn services_auth() -> NatsAuth {
    NatsAuth::UserPassword {
        user: "services".to_owned(),
        password: CENTRE_SERVICES_PASSWORD.to_owned(),
    }
}

/// `url` without any user or password in it.
fn plain_url(port: u16) -> String {
    format!("nats://127.0.0.1:{port}")
}

/// The founding audit's demo events of one centre, as records in file order.
fn demo_records(centre: &str) -> anyhow::Result<Vec<NewRecord>> {
    let today = ClinicalDate::from_date(time::OffsetDateTime::now_utc().date());
    let mut records = Vec::new();
    for line in demodata::paper2019_lines(1) {
        let event = domain::ndjson::parse_line(&line, today)
            .map_err(|refusal| anyhow::anyhow!("a demo line is refused: {refusal:?}"))?;
        if event.centre.as_str() != centre {
            continue;
        }
        records.push(NewRecord {
            key: event.event_id.as_str().to_owned(),
            stream: format!("{}.{}", event.centre.as_str(), event.patient.as_str()),
            principal: format!("ingest@{centre}"),
            payload: proto::convert::encode_event(&event),
        });
    }
    ensure!(!records.is_empty(), "no demo events for {centre}");
    Ok(records)
}

/// [`read_all`] at the hub, retried while the hub is unavailable (a stream
/// electing a new leader after a node was lost answers nothing for a moment).
async fn read_hub(hub: &JetStreamLog) -> anyhow::Result<Vec<eventlog::Record>> {
    let deadline = Instant::now() + CONVERGENCE_DEADLINE;
    loop {
        match read_all(hub).await {
            Ok(records) => return Ok(records),
            Err(error) if Instant::now() < deadline => {
                eprintln!("hub read failed, retrying: {error:#}");
            }
            Err(error) => return Err(error),
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Every record of a log, read in chunks small enough for the log's batched
/// direct gets, which every replica answers. (A longer read creates an
/// ordered consumer; while any one hub node was down, creating one timed
/// out for 20 to 80 seconds in these tests, leader or not.)
async fn read_all(log: &JetStreamLog) -> anyhow::Result<Vec<eventlog::Record>> {
    const CHUNK: usize = 256;
    let mut records = Vec::new();
    loop {
        let chunk = log.read(records.len() as u64 + 1, CHUNK).await?;
        if chunk.is_empty() {
            return Ok(records);
        }
        records.extend(chunk);
    }
}

/// The hub holds every centre record once, and each centre's records in
/// that centre's order.
fn assert_union(
    hub: &[eventlog::Record],
    centres: &BTreeMap<String, Vec<eventlog::Record>>,
) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    for record in hub {
        ensure!(
            seen.insert(&record.key[..]),
            "the hub holds {} twice",
            record.key
        );
    }
    for (centre, records) in centres {
        let at_hub: Vec<(&str, &Bytes)> = hub
            .iter()
            .filter(|record| record.stream.split('.').next() == Some(centre.as_str()))
            .map(|record| (&record.key[..], &record.payload))
            .collect();
        let at_centre: Vec<(&str, &Bytes)> = records
            .iter()
            .map(|record| (&record.key[..], &record.payload))
            .collect();
        ensure!(
            at_hub == at_centre,
            "the hub's {centre} records differ from {centre}'s own ({} at the hub, {} at the centre)",
            at_hub.len(),
            at_centre.len()
        );
    }
    ensure!(
        hub.len() == centres.values().map(Vec::len).sum::<usize>(),
        "the hub holds records of no centre"
    );
    Ok(())
}

/// The audit report (the rules.md JSON) of some records.
fn report_of<'a>(
    records: impl IntoIterator<Item = &'a eventlog::Record>,
) -> anyhow::Result<String> {
    let mut cohort = Cohort::new(RuleParameters::default());
    for record in records {
        let recorded = proto::convert::recorded_from_parts(
            record.position,
            record.recorded_at_micros,
            &record.principal,
            &record.payload,
        )
        .with_context(|| format!("decoding record {}", record.key))?;
        cohort.apply(&recorded);
    }
    Ok(cohort.report().to_json())
}

fn halves(records: &[NewRecord]) -> (&[NewRecord], &[NewRecord]) {
    records.split_at(records.len() / 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centres_record_while_the_hub_is_down_and_the_network_report_converges_to_the_union()
-> anyhow::Result<()> {
    let mut network = Network::start().await?;
    let leeds = demo_records(LEEDS)?;
    let salford = demo_records(SALFORD)?;
    let (leeds_before, leeds_after) = halves(&leeds);
    let (salford_before, salford_after) = halves(&salford);

    network.append_at(LEEDS, leeds_before).await?;
    network.append_at(SALFORD, salford_before).await?;
    let hub = network.hub_log().await?;
    network.wait_for_convergence(&hub).await?;
    drop(hub);

    // The whole hub goes down: each centre keeps recording, and its own
    // report keeps answering from its leaf.
    for node in &mut network.topology.hub {
        node.kill()?;
    }
    network.append_at(LEEDS, leeds_after).await?;
    network.append_at(SALFORD, salford_after).await?;
    let centres = network.centre_records().await?;
    let leeds_report = report_of(&centres[LEEDS])?;
    assert!(leeds_report.contains("\"leeds\""), "{leeds_report}");
    assert!(!leeds_report.contains("salford-royal"), "{leeds_report}");

    // The hub returns: the network stream catches up with both centres.
    for node in &mut network.topology.hub {
        node.restart().await?;
    }
    network.topology.wait_for_hub_jetstream().await?;
    for centre in CENTRES {
        network.topology.wait_for_leaf_link(centre).await?;
    }
    let hub = network.hub_log().await?;
    network.wait_for_convergence(&hub).await?;

    // The network report is the report of the union of the centres' events.
    let union = report_of(centres.values().flatten())?;
    let network_report = report_of(&read_hub(&hub).await?)?;
    assert_eq!(network_report, union);
    assert!(network_report.contains("\"leeds\"") && network_report.contains("\"salford-royal\""));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_one_hub_node_stops_neither_appends_nor_the_network_report() -> anyhow::Result<()>
{
    let mut network = Network::start().await?;
    let leeds = demo_records(LEEDS)?;
    let salford = demo_records(SALFORD)?;
    let (leeds_before, leeds_after) = halves(&leeds);
    let (salford_before, salford_after) = halves(&salford);
    network.append_at(LEEDS, leeds_before).await?;
    network.append_at(SALFORD, salford_before).await?;
    let hub = network.hub_log().await?;
    network.wait_for_convergence(&hub).await?;

    // Stop the node that leads the network stream: the hardest one to lose.
    let jetstream = async_nats::jetstream::new(network.topology.hub_admin_client().await?);
    let info = jetstream
        .get_stream("TOXAUDIT_EVENTS")
        .await?
        .info()
        .await?
        .clone();
    let cluster = info
        .cluster
        .context("the network stream has no cluster info")?;
    assert_eq!(
        cluster.replicas.len(),
        2,
        "the network stream is not R3: {cluster:?}"
    );
    let leader = cluster.leader.context("the network stream has no leader")?;
    let node = network
        .topology
        .hub
        .iter_mut()
        .find(|node| node.name() == leader)
        .with_context(|| format!("no hub node is called {leader}"))?;
    node.kill()?;

    network.append_at(LEEDS, leeds_after).await?;
    network.append_at(SALFORD, salford_after).await?;
    network.wait_for_convergence(&hub).await?;
    let centres = network.centre_records().await?;
    assert_eq!(
        report_of(&read_hub(&hub).await?)?,
        report_of(centres.values().flatten())?
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_centre_cannot_publish_into_another_centres_subjects() -> anyhow::Result<()> {
    let network = Network::start().await?;
    let salford = demo_records(SALFORD)?;
    network.append_at(SALFORD, &salford[..10]).await?;
    let salford_head = network.centre(SALFORD).head().await?;
    let leeds_head = network.centre(LEEDS).head().await?;

    // Leeds' services user publishes a salford-royal subject on its own leaf:
    // the server refuses it as a permissions violation.
    let (errors_sender, mut errors) = tokio::sync::mpsc::unbounded_channel();
    let leeds_client = async_nats::ConnectOptions::new()
        .user_and_password("services".into(), CENTRE_SERVICES_PASSWORD.into())
        .event_callback(move |event| {
            let errors_sender = errors_sender.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    let _ = errors_sender.send(error.to_string());
                }
            }
        })
        .connect(format!(
            "nats://127.0.0.1:{}",
            network.topology.leaf(LEEDS)?.client_port()
        ))
        .await?;
    let forged = &salford[0];
    leeds_client
        .publish(
            format!("toxaudit.events.{SALFORD}.forged-patient"),
            forged.payload.clone(),
        )
        .await?;
    leeds_client.flush().await?;
    let refusal = tokio::time::timeout(Duration::from_secs(10), errors.recv())
        .await
        .context("the server did not refuse the publish")?
        .context("the error channel closed")?;
    assert!(
        refusal.to_lowercase().contains("permissions violation"),
        "unexpected server error: {refusal}"
    );

    // Nor may it rewrite its own centre's stream: deletes and purges are
    // denied, but an update lowering its message limit would cut the record
    // short just the same.
    let own = async_nats::jetstream::new(leeds_client.clone());
    let mut shrunk = own
        .get_stream("TOXAUDIT_EVENTS")
        .await?
        .info()
        .await?
        .config
        .clone();
    shrunk.max_messages = 1;
    let update = tokio::time::timeout(Duration::from_secs(5), own.update_stream(shrunk)).await;
    assert!(
        !matches!(update, Ok(Ok(_))),
        "leeds' services user updated its own stream: {update:?}"
    );
    assert_eq!(network.centre(LEEDS).head().await?, leeds_head);

    // Nor may it reach salford-royal's JetStream through the hub, which the
    // hub itself can.
    let across = tokio::time::timeout(
        Duration::from_secs(2),
        leeds_client.request(format!("$JS.{SALFORD}.API.INFO"), Bytes::new()),
    )
    .await;
    assert!(
        !matches!(across, Ok(Ok(ref answer)) if answer.status.is_none()),
        "leeds reached salford-royal's jetstream: {across:?}"
    );
    let admin = network.topology.hub_admin_client().await?;
    let from_hub = admin
        .request(format!("$JS.{SALFORD}.API.INFO"), Bytes::new())
        .await?;
    assert!(
        from_hub.status.is_none(),
        "the hub cannot reach salford-royal"
    );

    // The hub may read a centre's stream, never delete or purge it: the leaf
    // refuses those requests at its end of the link.
    for action in ["DELETE", "PURGE"] {
        let refused = tokio::time::timeout(
            Duration::from_secs(2),
            admin.request(
                format!("$JS.{SALFORD}.API.STREAM.{action}.TOXAUDIT_EVENTS"),
                Bytes::new(),
            ),
        )
        .await;
        assert!(
            !matches!(refused, Ok(Ok(ref answer)) if answer.status.is_none()),
            "the hub could {action} salford-royal's stream: {refused:?}"
        );
    }
    assert_eq!(network.centre(SALFORD).head().await?, salford_head);

    // Nothing moved: leeds holds what it held, and the network stream takes
    // from each centre only that centre's subjects.
    assert_eq!(network.centre(LEEDS).head().await?, leeds_head);
    let jetstream = async_nats::jetstream::new(admin);
    let config = jetstream
        .get_stream("TOXAUDIT_EVENTS")
        .await?
        .info()
        .await?
        .config
        .clone();
    for source in config.sources.unwrap_or_default() {
        let api = source.external.map(|external| external.api_prefix);
        let centre = api
            .as_deref()
            .and_then(|api| api.strip_prefix("$JS."))
            .and_then(|api| api.strip_suffix(".API"))
            .context("a source without a centre domain")?
            .to_owned();
        assert_eq!(
            source.filter_subject,
            Some(format!("toxaudit.events.{centre}.>"))
        );
    }
    let hub = network.hub_log().await?;
    network.wait_for_convergence(&hub).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resending_a_batch_after_a_lost_acknowledgement_never_duplicates_at_the_hub()
-> anyhow::Result<()> {
    let mut network = Network::start().await?;
    let leeds = demo_records(LEEDS)?;
    let (first, rest) = leeds.split_at(BATCH);
    let lost = &rest[..BATCH];
    network.append_at(LEEDS, first).await?;

    // The batch reaches the leaf, the acknowledgement never reaches the
    // writer: published as the log publishes it, the answer not awaited.
    let client = topology::connect(&network.topology.leaf_url_as(
        LEEDS,
        "services",
        CENTRE_SERVICES_PASSWORD,
    )?)
    .await?;
    for record in lost {
        let (centre, patient) = record
            .stream
            .split_once('.')
            .context("a stream without a centre")?;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", &record.key[..]);
        headers.insert("Toxaudit-Key", &record.key[..]);
        headers.insert("Toxaudit-Stream", record.stream.as_str());
        headers.insert("Toxaudit-Principal", record.principal.as_str());
        headers.insert("Toxaudit-Recorded-At", "1790000000000000");
        client
            .publish_with_headers(
                format!("toxaudit.events.{centre}.{}", subject_token(patient)),
                headers,
                record.payload.clone(),
            )
            .await?;
    }
    client.flush().await?;
    // The demo holds exact duplicate lines: count what the leaf should hold.
    let distinct = leeds[..2 * BATCH]
        .iter()
        .map(|record| &record.key[..])
        .collect::<HashSet<_>>()
        .len() as u64;
    let deadline = Instant::now() + CONVERGENCE_DEADLINE;
    while network.centre(LEEDS).head().await? < distinct {
        ensure!(
            Instant::now() < deadline,
            "the leaf did not store the batch"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }

    // The writer sends the batch again: nothing new is stored.
    let outcomes = network
        .centre(LEEDS)
        .append(AppendBatch::new(lost.to_vec()))
        .await?;
    assert!(
        outcomes
            .iter()
            .all(|outcome| matches!(outcome, AppendOutcome::Duplicate { .. })),
        "a re-sent record was stored again: {outcomes:?}"
    );
    assert_eq!(network.centre(LEEDS).head().await?, distinct);

    // And again from a fresh connection after the leaf restarted, while the
    // hub may be sourcing: still nothing new, at the centre or at the hub.
    network.topology.leaf_mut(LEEDS)?.restart().await?;
    network.topology.wait_for_leaf_link(LEEDS).await?;
    let reopened = centre_log(&network.topology, LEEDS).await?;
    let outcomes = reopened
        .append(AppendBatch::new(leeds[..2 * BATCH].to_vec()))
        .await?;
    assert!(
        outcomes
            .iter()
            .all(|outcome| matches!(outcome, AppendOutcome::Duplicate { .. }))
    );
    assert_eq!(reopened.head().await?, distinct);
    network.centre_logs.insert(LEEDS.to_owned(), reopened);

    let hub = network.hub_log().await?;
    network.wait_for_convergence(&hub).await?;
    assert_eq!(hub.head().await?, distinct);
    Ok(())
}

/// A patient pseudonym as one subject token, as the JetStream log writes it:
/// bytes outside `[A-Za-z0-9-]` become `_` and two hex digits.
fn subject_token(patient: &str) -> String {
    patient
        .bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || byte == b'-' {
                char::from(byte).to_string()
            } else {
                format!("_{byte:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_credentials_are_refused_and_the_services_with_credentials_work()
-> anyhow::Result<()> {
    let network = Network::start().await?;
    let leeds_url = plain_url(network.topology.leaf(LEEDS)?.client_port());
    let hub_url = plain_url(network.topology.hub[0].client_port());

    // No credentials: both the leaf and the hub refuse the connection, and
    // the log says so instead of retrying.
    for url in [&leeds_url, &hub_url] {
        let refused = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(url.as_str())
            .await;
        assert!(
            matches!(&refused, Err(error) if error.kind() == async_nats::ConnectErrorKind::AuthorizationViolation),
            "{url} admitted a client without credentials: {refused:?}"
        );
        let log = JetStreamLog::connect(url, JetStreamOptions::default()).await;
        assert!(
            matches!(&log, Err(LogError::Configuration(reason)) if reason.contains("refused")),
            "{url}: {:?}",
            log.err()
        );
    }
    // Wrong password: refused too, and the password is in no message.
    let wrong = JetStreamLog::connect(
        &network
            .topology
            .leaf_url_as(LEEDS, "services", "not-the-password")?,
        JetStreamOptions::default(),
    )
    .await;
    let message = wrong
        .err()
        .context("a wrong password was admitted")?
        .to_string();
    assert!(!message.contains("not-the-password"), "{message}");

    // With credentials given as options: the services write at their centre
    // and publish derived events, and reporting at the hub reads the union.
    let leeds = JetStreamLog::connect(
        &leeds_url,
        JetStreamOptions {
            auth: services_auth(),
            ..JetStreamOptions::default()
        },
    )
    .await?;
    let records = demo_records(LEEDS)?;
    leeds
        .append(AppendBatch::new(records[..20].to_vec()))
        .await?;
    let bus = service_kit::DerivedBus::connect_nats_with(&leeds_url, "toxaudit", &services_auth())
        .await
        .context("the derived event bus with credentials")?;
    drop(bus);
    let hub = network.hub_log().await?;
    network.wait_for_convergence(&hub).await?;

    // And the toxaudit binary: `up` at the centre with --nats-user and a
    // password file, `serve reporting` at the hub as network-reporting, both
    // start; without credentials `up` stops with the refusal.
    let directory = tempfile::tempdir()?;
    let services_password = directory.path().join("services.password");
    std::fs::write(&services_password, format!("{CENTRE_SERVICES_PASSWORD}\n"))?;
    let reporting_password = directory.path().join("reporting.password");
    std::fs::write(
        &reporting_password,
        format!("{NETWORK_REPORTING_PASSWORD}\n"),
    )?;
    let up = super::services::ServiceProcess::start(
        &[
            "up".to_owned(),
            "--nats".to_owned(),
            leeds_url.clone(),
            "--nats-user".to_owned(),
            "services".to_owned(),
            "--nats-password-file".to_owned(),
            services_password.display().to_string(),
            "--data-dir".to_owned(),
            directory.path().join("leeds").display().to_string(),
            "--grpc-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--no-http".to_owned(),
        ],
        directory.path().join("up.log"),
    )?;
    let reporting = super::services::ServiceProcess::start(
        &[
            "serve".to_owned(),
            "reporting".to_owned(),
            "--nats".to_owned(),
            hub_url.clone(),
            "--nats-user".to_owned(),
            "network-reporting".to_owned(),
            "--nats-password-file".to_owned(),
            reporting_password.display().to_string(),
            "--data-dir".to_owned(),
            directory.path().join("hub").display().to_string(),
            "--grpc-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
        ],
        directory.path().join("reporting.log"),
    )?;
    drop((up, reporting));
    let without = std::process::Command::new(super::toxaudit())
        .args([
            "up",
            "--nats",
            &leeds_url,
            "--no-http",
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(directory.path().join("without"))
        .env(
            "TOXAUDIT_JWT_SECRET",
            "an end-to-end test secret, long enough",
        )
        .env_remove("TOXAUDIT_NATS_USER")
        .env_remove("TOXAUDIT_NATS_PASSWORD")
        .output()?;
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(!without.status.success(), "up ran without credentials");
    assert!(stderr.contains("refused"), "{stderr}");
    Ok(())
}
