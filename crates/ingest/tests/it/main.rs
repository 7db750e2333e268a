//! Ingest over gRPC on a real (embedded) log: given a log, when a batch is
//! appended, then positions, warnings or every reason come back, and the
//! log holds all of the batch or none of it.

use std::{sync::Arc, time::Duration};

use eventlog::{EmbeddedLog, EmbeddedOptions, EventLog};
use proto::v1::{Event, InjectionAdministered, MuscleDose, PatientRegistered, event::Body};
use service_kit::{JwtSecret, Role, ServiceClient, Shutdown, client::refused_events};

const SECRET: &[u8] = b"an ingest test secret, long enough";

struct Running {
    client: ServiceClient,
    log: Arc<dyn EventLog>,
    trigger: service_kit::ShutdownTrigger,
    task: tokio::task::JoinHandle<Result<(), ingest::IngestError>>,
}

impl Running {
    async fn start(
        log: Arc<dyn EventLog>,
        checkpoints: &std::path::Path,
        role: Role,
    ) -> anyhow::Result<Running> {
        let secret = Arc::new(JwtSecret::from_bytes(SECRET)?);
        let application = ingest::build(ingest::IngestConfig {
            log: Arc::clone(&log),
            secret: Arc::clone(&secret),
            grpc_address: "127.0.0.1:0".to_owned(),
            tls: None,
            checkpoint_directory: checkpoints.to_owned(),
            rebuild: false,
        })
        .await?;
        let url = format!("http://{}", application.local_addr());
        let (trigger, shutdown) = Shutdown::new();
        let task = tokio::spawn(application.run_until_stopped(shutdown));
        let token = secret.issue("dr-test", "leeds", role, Duration::from_secs(300))?;
        let client = ServiceClient::connect(&url, &token, None).await?;
        Ok(Running {
            client,
            log,
            trigger,
            task,
        })
    }

    /// Ingest on a new embedded log in `directory` (checkpoints beside it).
    async fn embedded(directory: &std::path::Path, role: Role) -> anyhow::Result<Running> {
        Running::start(embedded(directory)?, &directory.join("checkpoint"), role).await
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.trigger.trigger();
        self.task.await??;
        Ok(())
    }
}

fn registered(event_id: &str, patient: &str) -> Event {
    Event {
        event_id: event_id.to_owned(),
        centre: "leeds".to_owned(),
        patient: patient.to_owned(),
        occurred_on: "2020-01-06".to_owned(),
        body: Some(Body::PatientRegistered(PatientRegistered::default())),
    }
}

fn injected(event_id: &str, patient: &str, occurred_on: &str, units: u32) -> Event {
    Event {
        event_id: event_id.to_owned(),
        centre: "leeds".to_owned(),
        patient: patient.to_owned(),
        occurred_on: occurred_on.to_owned(),
        body: Some(Body::InjectionAdministered(InjectionAdministered {
            product: "onabotulinumtoxinA".to_owned(),
            total_units: units,
            guidance: "emg".to_owned(),
            muscles: vec![MuscleDose {
                muscle: "sternocleidomastoid".to_owned(),
                side: "left".to_owned(),
                units,
            }],
        })),
    }
}

fn embedded(directory: &std::path::Path) -> anyhow::Result<Arc<dyn EventLog>> {
    Ok(Arc::new(EmbeddedLog::open(
        directory.join("log"),
        EmbeddedOptions::default(),
    )?))
}

#[tokio::test]
async fn a_batch_is_checked_as_if_each_event_were_appended_before_the_next() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let running = Running::embedded(directory.path(), Role::Clinician).await?;
    // The injection needs the registration of the same batch.
    let response = running
        .client
        .append(vec![
            registered("e-1", "L-1"),
            injected("e-2", "L-1", "2020-02-01", 400),
        ])
        .await?;
    let positions: Vec<_> = response.outcomes.iter().map(|o| o.position).collect();
    assert_eq!(positions, vec![1, 2]);
    // 400 units is above the label maximum: accepted with a warning.
    assert_eq!(response.outcomes[1].warnings[0].field, "total_units");

    // Sent again: duplicates, nothing new.
    let again = running
        .client
        .append(vec![
            registered("e-1", "L-1"),
            injected("e-2", "L-1", "2020-02-01", 400),
        ])
        .await?;
    assert!(again.outcomes.iter().all(|outcome| outcome.duplicate));
    assert_eq!(running.log.head().await?, 2);

    // The same event twice in one batch: stored once, the second a duplicate.
    let twice = running
        .client
        .append(vec![registered("e-3", "L-3"), registered("e-3", "L-3")])
        .await?;
    let outcomes: Vec<_> = twice
        .outcomes
        .iter()
        .map(|outcome| (outcome.position, outcome.duplicate))
        .collect();
    assert_eq!(outcomes, vec![(3, false), (3, true)]);
    assert_eq!(running.log.head().await?, 3);
    running.stop().await
}

#[tokio::test]
async fn a_refused_batch_appends_nothing_and_names_every_reason() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let running = Running::embedded(directory.path(), Role::Admin).await?;
    // The first two would be accepted; the third (unregistered patient) and
    // the fourth (bad date, bad units) are not: nothing is appended.
    let status = running
        .client
        .append(vec![
            registered("e-1", "L-1"),
            injected("e-2", "L-1", "2020-02-01", 200),
            injected("e-3", "L-2", "2020-02-01", 200),
            injected("e-4", "L-1", "1980-13-01", 0),
        ])
        .await
        .expect_err("a batch with refused events was appended");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let details = refused_events(&status).expect("refusal details");
    let refused: Vec<_> = details.events.iter().map(|event| event.index).collect();
    assert_eq!(refused, vec![2, 3]);
    let fields: Vec<_> = details.events[1]
        .reasons
        .iter()
        .map(|reason| reason.field.as_str())
        .collect();
    assert!(fields.contains(&"occurred_on"), "{fields:?}");
    assert!(fields.contains(&"total_units"), "{fields:?}");
    assert_eq!(running.log.head().await?, 0);

    // The refused batch left nothing behind in the admission state either:
    // e-1 and e-2 were never stored, so they are accepted now, not
    // duplicates, and L-2 is still unknown.
    let response = running
        .client
        .append(vec![
            registered("e-1", "L-1"),
            injected("e-2", "L-1", "2020-02-01", 200),
        ])
        .await?;
    assert!(response.outcomes.iter().all(|outcome| !outcome.duplicate));
    let status = running
        .client
        .append(vec![injected("e-3", "L-2", "2020-02-01", 200)])
        .await
        .expect_err("an unregistered patient was accepted");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // The same id with other content: a conflict, the first one stays.
    let status = running
        .client
        .append(vec![injected("e-2", "L-1", "2020-02-02", 200)])
        .await
        .expect_err("a conflict was accepted");
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    assert_eq!(running.log.head().await?, 2);
    running.stop().await
}

#[tokio::test]
async fn a_restart_resumes_from_the_checkpoint() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let checkpoints = directory.path().join("checkpoint");
    let log = embedded(directory.path())?;
    let running = Running::start(Arc::clone(&log), &checkpoints, Role::Admin).await?;
    running
        .client
        .append(vec![registered("e-1", "L-1")])
        .await?;
    running.stop().await?;
    let marker = std::fs::read_to_string(checkpoints.join("checkpoint.json"))?;
    assert!(marker.contains("\"position\":1"), "{marker}");

    // After the restart the admission state still knows L-1 (from the
    // checkpoint) and e-1.
    let running = Running::start(log, &checkpoints, Role::Admin).await?;
    let response = running
        .client
        .append(vec![
            registered("e-1", "L-1"),
            injected("e-2", "L-1", "2020-02-01", 200),
        ])
        .await?;
    assert!(response.outcomes[0].duplicate);
    assert_eq!(response.outcomes[1].position, 2);
    running.stop().await
}

#[tokio::test]
async fn a_restart_folds_only_what_others_wrote_after_the_checkpoint() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let checkpoints = directory.path().join("checkpoint");
    let log = embedded(directory.path())?;
    let running = Running::start(Arc::clone(&log), &checkpoints, Role::Admin).await?;
    running
        .client
        .append(vec![registered("e-1", "L-1"), registered("e-2", "L-2")])
        .await?;
    running.stop().await?;

    // Another writer appends after the checkpoint (position 2).
    let today =
        domain::ClinicalDate::from_ymd(2026, 1, 1).ok_or_else(|| anyhow::anyhow!("not a date"))?;
    let other = proto::convert::event_from_proto(registered("e-3", "L-3"), today)
        .map_err(|refusal| anyhow::anyhow!("{refusal:?}"))?;
    log.append(eventlog::AppendBatch::new(vec![eventlog::NewRecord {
        key: "e-3".to_owned(),
        stream: "leeds.L-3".to_owned(),
        principal: "other".to_owned(),
        payload: proto::convert::encode_event(&other),
    }]))
    .await?;

    let secret = Arc::new(JwtSecret::from_bytes(SECRET)?);
    let application = ingest::build(ingest::IngestConfig {
        log: Arc::clone(&log),
        secret: Arc::clone(&secret),
        grpc_address: "127.0.0.1:0".to_owned(),
        tls: None,
        checkpoint_directory: checkpoints.clone(),
        rebuild: false,
    })
    .await?;
    let url = format!("http://{}", application.local_addr());
    let progress = application.progress();
    let (trigger, shutdown) = Shutdown::new();
    let task = tokio::spawn(application.run_until_stopped(shutdown));
    let token = secret.issue("dr-test", "leeds", Role::Admin, Duration::from_secs(300))?;
    let client = ServiceClient::connect(&url, &token, None).await?;
    // A refused batch (L-9 is not registered) makes the state stale; the
    // next batch restores it from the checkpoint, then reads the log.
    let refused = client
        .append(vec![
            registered("e-4", "L-4"),
            injected("e-5", "L-9", "2020-02-01", 200),
        ])
        .await;
    assert!(refused.is_err(), "a batch naming L-9 was accepted");
    let response = client
        .append(vec![
            registered("e-1", "L-1"),
            injected("e-6", "L-3", "2020-02-01", 200),
        ])
        .await?;
    assert!(response.outcomes[0].duplicate, "e-1 was forgotten");
    assert_eq!(response.outcomes[1].position, 4, "{response:?}");
    let folded = progress.records_folded_here().await;
    trigger.trigger();
    task.await??;
    // Only e-3 (position 3, another writer's) was folded, never 1 or 2:
    // once before the refused batch, once after the state was restored
    // from the checkpoint at 2.
    assert_eq!(folded, 2);
    let marker = std::fs::read_to_string(checkpoints.join("checkpoint.json"))?;
    assert!(marker.contains("\"position\":4"), "{marker}");
    Ok(())
}

#[tokio::test]
async fn an_auditor_cannot_write() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let running = Running::embedded(directory.path(), Role::Auditor).await?;
    let status = running
        .client
        .append(vec![registered("e-1", "L-1")])
        .await
        .expect_err("an auditor wrote");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let status = running
        .client
        .import(vec![registered("e-1", "L-1")])
        .await
        .expect_err("an auditor imported");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    running.stop().await
}

/// An import is held in memory before it is checked, so its size is
/// bounded as it arrives: one event more than the most is refused whole.
#[tokio::test]
async fn an_import_of_more_events_than_the_most_is_refused_whole() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let running = Running::embedded(directory.path(), Role::Clinician).await?;
    let events: Vec<Event> = (0..=ingest::MOST_EVENTS_PER_IMPORT)
        .map(|number| registered(&format!("r-{number}"), &format!("L-{number}")))
        .collect();
    let status = running
        .client
        .import(events)
        .await
        .expect_err("an import over the limit was accepted");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("at most"), "{status:?}");
    assert_eq!(running.log.head().await?, 0, "nothing appended");
    running.stop().await
}

#[tokio::test]
async fn a_stream_of_batches_appends_each_in_order() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let running = Running::embedded(directory.path(), Role::Clinician).await?;
    let batches = vec![
        proto::v1::AppendRequest {
            events: vec![registered("e-1", "L-1")],
        },
        proto::v1::AppendRequest {
            events: vec![injected("e-2", "L-1", "2020-02-01", 200)],
        },
    ];
    let response = running
        .client
        .ingest()
        .append_stream(futures::stream::iter(batches))
        .await?
        .into_inner();
    let positions: Vec<_> = response.outcomes.iter().map(|o| o.position).collect();
    assert_eq!(positions, vec![1, 2]);
    assert_eq!(response.head, 2);

    // A refused batch ends the stream; the batches before it stay.
    let batches = vec![
        proto::v1::AppendRequest {
            events: vec![registered("e-3", "L-3")],
        },
        proto::v1::AppendRequest {
            events: vec![injected("e-4", "L-9", "2020-02-01", 200)],
        },
    ];
    let status = running
        .client
        .ingest()
        .append_stream(futures::stream::iter(batches))
        .await
        .expect_err("a refused batch was appended");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        refused_events(&status).expect("details").committed_events,
        1
    );
    assert_eq!(running.log.head().await?, 3);
    running.stop().await
}

/// A clinician's batch holding events of another centre is refused whole as
/// PERMISSION_DENIED, and the status names every such event by its index,
/// with the reason on `centre` (events.md: every reason, each naming the
/// field), so a client can point at the lines (and skip them if asked).
/// It used to name only the first, in the message, with no details at all.
#[tokio::test]
async fn every_event_of_another_centre_is_named_on_its_centre() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let running = Running::embedded(directory.path(), Role::Clinician).await?;
    let mut salford = registered("e-2", "S-1");
    salford.centre = "salford-royal".to_owned();
    let mut york = registered("e-3", "Y-1");
    york.centre = "york".to_owned();
    let status = running
        .client
        .append(vec![registered("e-1", "L-1"), salford, york])
        .await
        .expect_err("a leeds clinician wrote other centres");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let refused = refused_events(&status).expect("the status names the refused events");
    let named: Vec<_> = refused
        .events
        .iter()
        .map(|event| {
            (
                event.index,
                event.event_id.as_str(),
                event.reasons[0].field.as_str(),
            )
        })
        .collect();
    assert_eq!(named, vec![(1, "e-2", "centre"), (2, "e-3", "centre")]);
    assert!(
        refused.events[1].reasons[0].reason.contains("york"),
        "{refused:?}"
    );
    assert_eq!(running.log.head().await?, 0, "nothing is appended");
    running.stop().await
}

/// `count` events for patients `L-0` to `L-<patients - 1>`: each patient's
/// registration, then injections dealt round the patients 90 days apart
/// from 2000 on (so one patient's events are spread over every part of a
/// long import, and every date is in the past).
fn cohort(count: usize, patients: usize) -> Vec<Event> {
    let mut events: Vec<Event> = (0..patients)
        .map(|patient| Event {
            occurred_on: "1999-12-01".to_owned(),
            ..registered(&format!("r-{patient}"), &format!("L-{patient}"))
        })
        .collect();
    let start =
        time::Date::from_calendar_date(2000, time::Month::January, 3).unwrap_or(time::Date::MIN);
    let mut dose = 0;
    while events.len() < count {
        let patient = dose % patients;
        let occurred_on = start + time::Duration::days(90 * (dose / patients) as i64);
        events.push(injected(
            &format!("i-{dose}"),
            &format!("L-{patient}"),
            &occurred_on.to_string(),
            200,
        ));
        dose += 1;
    }
    events
}

/// An injection of a patient never registered: refused on its `patient`.
fn unregistered_injection() -> Event {
    injected("bad-1", "L-NOBODY", "2020-03-01", 200)
}

/// Imports `events` and an unregistered patient's injection after them:
/// refused on that event alone (its index counted over the whole stream),
/// nothing appended; then `events` alone: every one appended, at 1 to n in
/// order; then again: every one a duplicate.
async fn refused_whole_then_imported(running: &Running, events: &[Event]) -> anyhow::Result<()> {
    let mut refused_file = events.to_vec();
    refused_file.push(unregistered_injection());
    let refused = running.client.import(refused_file).await;
    let status = refused
        .err()
        .ok_or_else(|| anyhow::anyhow!("the import was accepted"))?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let details = refused_events(&status).ok_or_else(|| anyhow::anyhow!("no details"))?;
    let indexes: Vec<u32> = details.events.iter().map(|event| event.index).collect();
    assert_eq!(
        indexes,
        vec![u32::try_from(events.len())?],
        "counted over the whole stream"
    );
    assert_eq!(running.log.head().await?, 0, "nothing appended");

    let count = u64::try_from(events.len())?;
    let response = running.client.import(events.to_vec()).await?;
    let positions: Vec<u64> = response.outcomes.iter().map(|o| o.position).collect();
    assert_eq!(positions, (1..=count).collect::<Vec<u64>>());
    assert_eq!(response.head, count);
    let again = running.client.import(events.to_vec()).await?;
    assert!(again.outcomes.iter().all(|outcome| outcome.duplicate));
    assert_eq!(running.log.head().await?, count);
    Ok(())
}

/// events.md, "Bad input": a file is checked whole first; if any line is
/// refused nothing is appended. `toxaudit import --server` used to send a
/// file in requests of 1000, so a refusal at line 1501 left 1000 events
/// stored; `Import` admits the whole stream as one.
#[tokio::test]
async fn an_import_is_checked_whole_and_appends_nothing_when_any_event_is_refused()
-> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let running = Running::embedded(directory.path(), Role::Clinician).await?;
    refused_whole_then_imported(&running, &cohort(1500, 40)).await?;
    running.stop().await
}

/// On NATS an atomic batch holds at most 1000 records: an import larger than
/// that is still admitted whole (a refusal appends nothing), then appended
/// in parts, each patient's stream expected where the part before left it.
#[tokio::test]
async fn an_import_larger_than_an_atomic_batch_goes_into_jetstream_in_parts() -> anyhow::Result<()>
{
    let server = test_support::NatsServer::start().await?;
    let log: Arc<dyn EventLog> = Arc::new(
        eventlog::JetStreamLog::connect(
            &server.url(),
            eventlog::JetStreamOptions {
                prefix: "ingest-test".to_owned(),
                stream_name: "INGEST_EVENTS".to_owned(),
                ..eventlog::JetStreamOptions::default()
            },
        )
        .await?,
    );
    assert_eq!(log.most_records_per_append(), Some(1000));
    let directory = tempfile::tempdir()?;
    let running = Running::start(
        Arc::clone(&log),
        &directory.path().join("checkpoint"),
        Role::Clinician,
    )
    .await?;

    let events = cohort(2500, 30);
    refused_whole_then_imported(&running, &events).await?;
    let stored = log.read(1, 3000).await?;
    let keys: Vec<&str> = stored.iter().map(|record| &*record.key).collect();
    let sent: Vec<&str> = events.iter().map(|event| event.event_id.as_str()).collect();
    assert_eq!(keys, sent, "stored whole, in order");
    for patient in ["L-0", "L-29"] {
        let last = stored
            .iter()
            .rev()
            .find(|record| &*record.stream == format!("leeds.{patient}").as_str())
            .map(|record| record.position);
        assert_eq!(
            Some(log.stream_version(&format!("leeds.{patient}")).await?),
            last
        );
    }
    running.stop().await
}

/// A refusal of many events still reaches the client as a status it can
/// read: the reasons travel in HTTP/2 trailers, which clients cap (16 KiB
/// for tonic, 8 KiB by default for gRPC's C core), so the details hold as
/// many refused events as fit and the message says how many there were.
/// A leeds clinician's import of 1165 lines of another centre used to end
/// in an "h2 protocol error" on the client.
#[tokio::test]
async fn a_refusal_of_many_events_fits_the_clients_trailers() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let running = Running::embedded(directory.path(), Role::Clinician).await?;
    let foreign: Vec<Event> = (0..1500)
        .map(|number| Event {
            centre: "salford-royal".to_owned(),
            ..registered(
                &format!("s-{number:05}-with-a-long-event-id"),
                &format!("S-{number:05}"),
            )
        })
        .collect();
    let status = running
        .client
        .import(foreign)
        .await
        .expect_err("another centre's events were imported");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let details = refused_events(&status).ok_or_else(|| anyhow::anyhow!("no details"))?;
    assert!(!details.events.is_empty());
    assert!(status.message().contains("of 1500"), "{}", status.message());

    let unregistered: Vec<Event> = (0..1500)
        .map(|number| {
            injected(
                &format!("i-{number:05}-with-a-long-event-id"),
                &format!("L-NOBODY-{number:05}"),
                "2020-03-01",
                200,
            )
        })
        .collect();
    let status = running
        .client
        .import(unregistered)
        .await
        .expect_err("injections of unregistered patients were imported");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let details = refused_events(&status).ok_or_else(|| anyhow::anyhow!("no details"))?;
    assert!(!details.events.is_empty());
    assert!(status.message().contains("of 1500"), "{}", status.message());
    assert_eq!(running.log.head().await?, 0);
    running.stop().await
}
