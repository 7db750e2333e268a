//! The JetStream backend against a real nats-server started per test: the
//! shared conformance suite (atomic and sequential batches), the subject
//! scheme, and idempotency for keys older than the server's duplicate window.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use eventlog::{
    AppendBatch, AppendOutcome, BatchMode, EventLog, JetStreamLog, JetStreamOptions, LogError,
};
use test_support::NatsServer;

use crate::conformance::{LogUnderTest, conformance_tests, record};

/// A nats-server of its own; every open after the first restarts it (kill -9,
/// same port and store) so "reopen" really is a restart.
pub struct JetStreamUnderTest {
    pub server: NatsServer,
    pub options: JetStreamOptions,
    opened: bool,
}

#[async_trait::async_trait]
impl LogUnderTest for JetStreamUnderTest {
    async fn open(&mut self) -> Result<Arc<dyn EventLog>> {
        if self.opened {
            self.server.restart().await?;
        }
        self.opened = true;
        Ok(Arc::new(
            JetStreamLog::connect(&self.server.url(), self.options.clone()).await?,
        ))
    }
}

pub fn test_options(batch_mode: BatchMode) -> JetStreamOptions {
    JetStreamOptions {
        prefix: "toxaudit-test".to_owned(),
        stream_name: "EVENTS".to_owned(),
        batch_mode,
        request_timeout: Duration::from_secs(5),
        ..JetStreamOptions::default()
    }
}

pub async fn new_atomic_log() -> Result<JetStreamUnderTest> {
    Ok(JetStreamUnderTest {
        server: NatsServer::start().await?,
        options: test_options(BatchMode::Atomic),
        opened: false,
    })
}

pub async fn new_sequential_log() -> Result<JetStreamUnderTest> {
    Ok(JetStreamUnderTest {
        server: NatsServer::start().await?,
        options: test_options(BatchMode::Sequential),
        opened: false,
    })
}

conformance_tests!(conformance_atomic_batches, crate::jetstream::new_atomic_log);
/// The sequential fallback is not atomic (see the backend's module doc), so
/// it runs the checks that do not need an atomic, contiguous batch under
/// concurrency: all but `concurrent_appenders_get_distinct_gap_free_positions`.
mod conformance_sequential_batches {
    crate::conformance::conformance_tests!(@checks crate::jetstream::new_sequential_log;
        an_empty_log_has_nothing,
        an_empty_batch_stores_nothing,
        positions_are_gap_free_from_one_and_records_read_back_unchanged,
        reads_start_anywhere_and_respect_max,
        a_duplicate_is_answered_with_the_first_position_and_stores_nothing,
        the_same_key_with_other_content_is_a_conflict,
        a_batch_with_a_conflicting_key_writes_nothing,
        keys_repeated_inside_one_batch,
        a_batch_sent_again_is_answered_with_its_positions_even_if_its_expectation_no_longer_holds,
        expected_versions_are_checked_per_stream,
        a_batch_with_a_wrong_expectation_writes_nothing,
        an_invalid_record_is_refused,
        tail_gives_stored_records_then_new_ones_without_gap_or_repeat,
        tail_from_beyond_the_head_starts_at_that_position,
        only_one_of_two_racing_writers_with_the_same_expectation_wins,
        records_keys_and_stream_versions_survive_reopening,
    );
}

async fn raw_jetstream(server: &NatsServer) -> Result<async_nats::jetstream::Context> {
    let client = async_nats::connect(server.url()).await?;
    Ok(async_nats::jetstream::new(client))
}

#[tokio::test]
async fn records_go_to_one_subject_per_patient_even_when_the_pseudonym_has_dots() -> Result<()> {
    let server = NatsServer::start().await?;
    let log = JetStreamLog::connect(&server.url(), test_options(BatchMode::Auto)).await?;
    ensure!(
        log.is_atomic(),
        "nats-server 2.12+ is expected to give atomic batches"
    );
    log.append(AppendBatch::new(vec![
        record("e-1", "leeds.J.Smith", "one"),
        record("e-2", "leeds.J", "two"),
        record("e-3", "leeds.J.Smith", "three"),
    ]))
    .await?;
    ensure!(log.stream_version("leeds.J.Smith").await? == 3);
    ensure!(log.stream_version("leeds.J").await? == 2);

    let stream = raw_jetstream(&server).await?.get_stream("EVENTS").await?;
    let first = stream.get_raw_message(1).await?;
    ensure!(
        first.subject.as_str() == "toxaudit-test.events.leeds.J_2ESmith",
        "{}",
        first.subject
    );
    ensure!(
        first.headers.get("Nats-Msg-Id").map(|value| value.as_str()) == Some("e-1"),
        "the key is the message id"
    );
    let second = stream.get_raw_message(2).await?;
    ensure!(second.subject.as_str() == "toxaudit-test.events.leeds.J");
    let read = log.read(1, 10).await?;
    ensure!(read[0].stream == "leeds.J.Smith" && read[0].principal == "clinician@leeds");
    Ok(())
}

/// Returns once a message id stored before the call has certainly left the
/// server's duplicate window of `window`: a scratch stream with the same
/// window is probed (polled, with a deadline) until a fresh id it stored has
/// expired, twice in a row, because the server purges expired ids on a timer
/// that may run up to one window late.
async fn wait_out_the_duplicate_window(server: &NatsServer, window: Duration) -> Result<()> {
    let jetstream = raw_jetstream(server).await?;
    jetstream
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "SCRATCH".to_owned(),
            subjects: vec!["scratch".to_owned()],
            duplicate_window: window,
            ..Default::default()
        })
        .await?;
    let deadline = std::time::Instant::now() + window * 20;
    for round in 0..2 {
        let probe = format!("probe-{round}");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", probe.as_str());
        jetstream
            .publish_with_headers("scratch", headers.clone(), Bytes::new())
            .await?
            .await?;
        loop {
            let ack = jetstream
                .publish_with_headers("scratch", headers.clone(), Bytes::new())
                .await?
                .await?;
            if !ack.duplicate {
                break;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "the duplicate window never expired"
            );
            // Polling the server's clock-driven state; nothing else to wait on.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_key_older_than_the_duplicate_window_is_still_a_duplicate_or_a_conflict() -> Result<()> {
    for batch_mode in [BatchMode::Atomic, BatchMode::Sequential] {
        let server = NatsServer::start().await?;
        let window = Duration::from_secs(1);
        let options = JetStreamOptions {
            duplicate_window: window,
            ..test_options(batch_mode)
        };
        let log = JetStreamLog::connect(&server.url(), options.clone()).await?;
        log.append(AppendBatch::new(vec![
            record("e-0", "leeds.L-1", "zero"),
            record("e-old", "leeds.L-1", "old"),
        ]))
        .await?;
        wait_out_the_duplicate_window(&server, window).await?;

        // Both the instance that appended and one that connects later must
        // recognise the key now that only the key index remembers it.
        let later = JetStreamLog::connect(&server.url(), options).await?;
        for instance in [&log, &later] {
            let again = instance
                .append(AppendBatch::new(vec![record("e-old", "leeds.L-1", "old")]))
                .await?;
            ensure!(
                again == vec![AppendOutcome::Duplicate { position: 2 }],
                "{batch_mode:?}: {again:?}"
            );
            let conflict = instance
                .append(AppendBatch::new(vec![
                    record("e-new", "leeds.L-1", "new"),
                    record("e-old", "leeds.L-1", "other"),
                ]))
                .await;
            ensure!(
                matches!(&conflict, Err(LogError::KeyConflict { key, position: 2 }) if key == "e-old"),
                "{batch_mode:?}: {conflict:?}"
            );
        }
        ensure!(
            later.head().await? == 2,
            "{batch_mode:?}: nothing more was stored"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_batch_larger_than_an_atomic_batch_may_hold_is_refused_whole() -> Result<()> {
    let server = NatsServer::start().await?;
    let log = JetStreamLog::connect(&server.url(), test_options(BatchMode::Atomic)).await?;
    ensure!(log.most_records_per_append() == Some(eventlog::jetstream::MAX_ATOMIC_BATCH));
    let records = (0..=eventlog::jetstream::MAX_ATOMIC_BATCH)
        .map(|n| record(&format!("e-{n}"), "leeds.L-1", "x"))
        .collect();
    let refused = log.append(AppendBatch::new(records)).await;
    ensure!(matches!(refused, Err(LogError::Invalid(_))), "{refused:?}");
    ensure!(log.head().await? == 0);
    let full: Vec<_> = (0..eventlog::jetstream::MAX_ATOMIC_BATCH)
        .map(|n| record(&format!("e-{n}"), "leeds.L-1", "x"))
        .collect();
    let outcomes = log.append(AppendBatch::new(full)).await?;
    ensure!(outcomes.last().map(|outcome| outcome.position()) == Some(1000));
    Ok(())
}

#[tokio::test]
async fn a_stream_of_another_deployment_prefix_is_left_alone() -> Result<()> {
    let server = NatsServer::start().await?;
    let first = JetStreamLog::connect(&server.url(), test_options(BatchMode::Auto)).await?;
    first
        .append(AppendBatch::new(vec![record("e-1", "leeds.L-1", "one")]))
        .await?;
    let other = JetStreamLog::connect(
        &server.url(),
        JetStreamOptions {
            prefix: "site-b".to_owned(),
            stream_name: "SITE_B".to_owned(),
            ..test_options(BatchMode::Auto)
        },
    )
    .await?;
    ensure!(other.head().await? == 0);
    let outcomes = other
        .append(AppendBatch::new(vec![record("e-1", "leeds.L-1", "other")]))
        .await?;
    ensure!(outcomes == vec![AppendOutcome::Appended { position: 1 }]);
    let first_read = first
        .read(1, 10)
        .await
        .context("reading the first deployment")?;
    ensure!(first_read.len() == 1 && first_read[0].payload == Bytes::from_static(b"one"));
    Ok(())
}

#[tokio::test]
async fn a_retried_full_batch_is_answered_from_the_key_index() -> Result<()> {
    let server = NatsServer::start().await?;
    let log = JetStreamLog::connect(&server.url(), test_options(BatchMode::Atomic)).await?;
    let batch: Vec<_> = (1..=eventlog::jetstream::MAX_ATOMIC_BATCH)
        .map(|n| {
            record(
                &format!("e-{n}"),
                &format!("leeds.L-{}", n % 13),
                &format!("{n}"),
            )
        })
        .collect();
    log.append(AppendBatch::new(batch.clone())).await?;
    // As if the duplicate window had passed: only the index can answer now.
    log.catch_up_key_index().await?;
    let again = log.append(AppendBatch::new(batch)).await?;
    let expected: Vec<_> = (1..=eventlog::jetstream::MAX_ATOMIC_BATCH as u64)
        .map(|position| AppendOutcome::Duplicate { position })
        .collect();
    ensure!(
        again == expected,
        "every record is a duplicate at its own position"
    );

    let conflicting = log
        .append(AppendBatch::new(vec![
            record("e-7", "leeds.L-7", "7"),
            record("e-7", "leeds.L-7", "seven"),
        ]))
        .await;
    ensure!(
        matches!(&conflicting, Err(LogError::KeyConflict { key, position: 7 }) if key == "e-7"),
        "a key repeated with other content names where it is stored: {conflicting:?}"
    );
    ensure!(log.head().await? == 1000);
    Ok(())
}

/// Regression (issue 3): an append whose expectation holds must not be
/// refused because the server still marks the writer's own previous
/// conditional write to the same subject as in flight. nats-server clears that
/// mark only after it has sent the previous batch's acknowledgement, and in
/// that gap it answers a new expectation on the subject with 10164 ("wrong last
/// sequence", no number) without comparing anything; the backend used to
/// report that as `WrongExpectedVersion` "expected at N but is at N". Each
/// writer here appends to its own patient right after the acknowledgement of
/// its last append, as ingest does, several writers at once so the server is
/// busy between acknowledging and clearing.
#[tokio::test]
async fn an_append_right_after_the_last_one_on_its_stream_is_not_refused() -> Result<()> {
    const WRITERS: usize = 4;
    const ROUNDS: usize = 150;
    let server = NatsServer::start().await?;
    let log = JetStreamLog::connect(&server.url(), test_options(BatchMode::Atomic)).await?;
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let log = log.clone();
        writers.push(tokio::spawn(async move {
            let stream = format!("leeds.W-{writer}");
            let other = format!("leeds.X-{writer}");
            let mut version = 0;
            let mut other_version = 0;
            for round in 0..ROUNDS {
                let expected = |version: u64| {
                    if version == 0 {
                        eventlog::ExpectedVersion::Empty
                    } else {
                        eventlog::ExpectedVersion::At(version)
                    }
                };
                // Two records of the patient and one of another, as an ingest
                // batch holds: several messages of one subject in the batch.
                let batch = AppendBatch::new(vec![
                    record(&format!("w{writer}-r{round}-a"), &stream, "a"),
                    record(&format!("w{writer}-r{round}-x"), &other, "x"),
                    record(&format!("w{writer}-r{round}-b"), &stream, "b"),
                ])
                .expect(stream.as_str(), expected(version))
                .expect(other.as_str(), expected(other_version));
                let outcomes = log
                    .append(batch)
                    .await
                    .with_context(|| format!("writer {writer}, round {round}"))?;
                ensure!(outcomes.len() == 3);
                version = outcomes[2].position();
                other_version = outcomes[1].position();
            }
            anyhow::Ok(())
        }));
    }
    for writer in writers {
        writer.await??;
    }
    ensure!(log.head().await? == (WRITERS * ROUNDS * 3) as u64);
    Ok(())
}

/// The principal and the append time travel in an envelope in front of the
/// payload now; records appended with the one header of session 2 or the two
/// headers of session 1 (as a hub may still hold, and as another writer may
/// publish) still read with their principal, time and untouched payload.
#[tokio::test]
async fn records_read_back_their_principal_and_time_in_every_format_ever_written() -> Result<()> {
    use futures::StreamExt;
    let server = NatsServer::start().await?;
    let log = JetStreamLog::connect(&server.url(), test_options(BatchMode::Atomic)).await?;
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let mut new = record("e-new", "leeds.L-1", "new\npayload");
    new.principal = "Dr J. Smith@leeds".to_owned();
    log.append(AppendBatch::new(vec![new.clone()])).await?;
    let after = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;

    let client = async_nats::connect(server.url()).await?;
    let jetstream = async_nats::jetstream::new(client);
    let mut two_headers = async_nats::HeaderMap::new();
    two_headers.insert("Nats-Msg-Id", "e-old");
    two_headers.insert("Toxaudit-Principal", "old%20hand@leeds");
    two_headers.insert("Toxaudit-Recorded-At", "1790000000000000");
    let mut one_header = async_nats::HeaderMap::new();
    one_header.insert("Nats-Msg-Id", "e-session-2");
    one_header.insert("Toxaudit-Recorded", "1790000000000001 second%20hand@leeds");
    for (headers, payload) in [
        (two_headers, "old"),
        (one_header, "1 2 looks like an envelope\n"),
    ] {
        jetstream
            .publish_with_headers(
                "toxaudit-test.events.leeds.L-1",
                headers,
                Bytes::from_static(payload.as_bytes()),
            )
            .await?
            .await?;
    }

    let read = log.read(1, 10).await?;
    ensure!(read.len() == 3, "{read:?}");
    ensure!(
        read[0].principal == new.principal && read[0].payload == new.payload,
        "{:?}",
        read[0]
    );
    let micros = |duration: Duration| i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
    ensure!(
        (micros(before)..=micros(after)).contains(&read[0].recorded_at_micros),
        "{:?}",
        read[0]
    );
    ensure!(
        read[1].principal == "old hand@leeds"
            && read[1].recorded_at_micros == 1_790_000_000_000_000
            && read[1].payload.as_ref() == b"old",
        "{:?}",
        read[1]
    );
    ensure!(
        read[2].principal == "second hand@leeds"
            && read[2].recorded_at_micros == 1_790_000_000_000_001
            && read[2].payload.as_ref() == b"1 2 looks like an envelope\n",
        "{:?}",
        read[2]
    );
    let stored = jetstream
        .get_stream("EVENTS")
        .await?
        .get_raw_message(1)
        .await?;
    ensure!(
        stored.headers.get("Toxaudit-Recorded").is_none()
            && stored.headers.get("Toxaudit-Principal").is_none()
            && stored.headers.get("Toxaudit-Recorded-At").is_none(),
        "no metadata header: {:?}",
        stored.headers
    );
    let line = format!("1 {} Dr%20J.%20Smith@leeds\n", read[0].recorded_at_micros);
    ensure!(
        stored.payload.as_ref() == [line.as_bytes(), b"new\npayload"].concat().as_slice(),
        "the envelope's line, then the payload: {:?}",
        stored.payload
    );
    // The long read (an ordered consumer) and the tail read every format alike.
    ensure!(log.read(1, 1000).await? == read);
    let tailed: Vec<_> = log.tail(1).take(3).collect().await;
    ensure!(
        tailed.into_iter().collect::<Result<Vec<_>, _>>()? == read,
        "the tail reads what read reads"
    );
    Ok(())
}

/// An instance indexes its own appends from their acknowledgements and reads
/// only the records other writers put between them; once the server's
/// duplicate window has passed, both kinds of key are still found.
#[tokio::test]
async fn own_keys_and_other_writers_keys_between_them_are_both_indexed() -> Result<()> {
    let server = NatsServer::start().await?;
    let window = Duration::from_secs(1);
    let options = JetStreamOptions {
        duplicate_window: window,
        ..test_options(BatchMode::Atomic)
    };
    let first = JetStreamLog::connect(&server.url(), options.clone()).await?;
    let second = JetStreamLog::connect(&server.url(), options).await?;
    let batch = |from: usize, stream: &str| -> Vec<eventlog::NewRecord> {
        (from..from + 3)
            .map(|n| record(&format!("e-{n}"), stream, &format!("{n}")))
            .collect()
    };
    first
        .append(AppendBatch::new(batch(1, "leeds.L-1")))
        .await?;
    second
        .append(AppendBatch::new(batch(4, "leeds.L-2")))
        .await?;
    first
        .append(AppendBatch::new(batch(7, "leeds.L-1")))
        .await?;
    second
        .append(AppendBatch::new(batch(10, "leeds.L-2")))
        .await?;
    wait_out_the_duplicate_window(&server, window).await?;
    // Reads positions 4-6 and 10-12 (the other writer's) for the first
    // instance, 1-3 and 7-9 for the second.
    first.catch_up_key_index().await?;
    second.catch_up_key_index().await?;
    for log in [&first, &second] {
        let again = log
            .append(AppendBatch::new(
                [batch(1, "leeds.L-1"), batch(4, "leeds.L-2")].concat(),
            ))
            .await?;
        let expected: Vec<_> = (1..=6)
            .map(|position| AppendOutcome::Duplicate { position })
            .collect();
        ensure!(again == expected, "{again:?}");
        let conflict = log
            .append(AppendBatch::new(vec![record("e-11", "leeds.L-2", "other")]))
            .await;
        ensure!(
            matches!(&conflict, Err(LogError::KeyConflict { key, position: 11 }) if key == "e-11"),
            "{conflict:?}"
        );
        let conflict = log
            .append(AppendBatch::new(vec![record("e-8", "leeds.L-1", "other")]))
            .await;
        ensure!(
            matches!(&conflict, Err(LogError::KeyConflict { key, position: 8 }) if key == "e-8"),
            "{conflict:?}"
        );
    }
    ensure!(first.head().await? == 12, "nothing more was stored");
    Ok(())
}
