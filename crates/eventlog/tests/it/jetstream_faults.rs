//! The JetStream backend when nats-server fails: killed with SIGKILL in the
//! middle of appends, restarted under a live tail, or not there at all.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use eventlog::{
    AppendBatch, AppendOutcome, BatchMode, EventLog, JetStreamLog, LogError, NewRecord,
};
use futures::StreamExt;
use test_support::NatsServer;

use crate::conformance::record;
use crate::jetstream::test_options;

/// Upper bound for one step that waits on the server, so a broken recovery
/// fails the test instead of hanging it.
const STEP_DEADLINE: Duration = Duration::from_secs(60);

fn batch_of(batch: usize) -> Vec<NewRecord> {
    (0..4)
        .map(|n| {
            let key = format!("b{batch}-r{n}");
            record(&key, &format!("leeds.L-{}", batch % 3), &key)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_append_loses_no_acknowledged_record_and_duplicates_none() -> Result<()>
{
    let mut server = NatsServer::start().await?;
    let mut options = test_options(BatchMode::Auto);
    options.request_timeout = Duration::from_secs(2);
    let log = JetStreamLog::connect(&server.url(), options.clone()).await?;

    // The appender tells how many batches were acknowledged; the test kills
    // the server once enough are, while appends keep coming.
    let (acknowledged_sender, mut acknowledged) = tokio::sync::watch::channel(0_usize);
    let appender = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut stored: Vec<(usize, Vec<AppendOutcome>)> = Vec::new();
            let mut failed = Vec::new();
            for batch in 0..10_000 {
                match log.append(AppendBatch::new(batch_of(batch))).await {
                    Ok(outcomes) => {
                        stored.push((batch, outcomes));
                        let _ = acknowledged_sender.send(stored.len());
                    }
                    Err(LogError::Unavailable(_)) => {
                        failed.push(batch);
                        break;
                    }
                    Err(other) => return Err(anyhow::anyhow!("unexpected error {other}")),
                }
            }
            anyhow::Ok((stored, failed))
        })
    };
    tokio::time::timeout(STEP_DEADLINE, acknowledged.wait_for(|count| *count >= 25))
        .await
        .context("appends were not acknowledged in time")??;
    server.kill()?;
    let (stored, failed) = tokio::time::timeout(STEP_DEADLINE, appender)
        .await
        .context("the appender did not notice the dead server")???;
    ensure!(
        failed.len() == 1,
        "the appender stops at its first failure: {failed:?}"
    );

    server.restart().await?;
    let log = JetStreamLog::connect(&server.url(), options).await?;
    let everything = log.read(1, usize::MAX).await?;
    let mut position_of_key: HashMap<&str, u64> = HashMap::new();
    for record in &everything {
        if let Some(earlier) = position_of_key.insert(&record.key, record.position) {
            bail!(
                "key {} stored twice, at {earlier} and {}",
                record.key,
                record.position
            );
        }
    }
    for (batch, outcomes) in &stored {
        for (record, outcome) in batch_of(*batch).iter().zip(outcomes) {
            ensure!(
                position_of_key.get(record.key.as_str()) == Some(&outcome.position()),
                "acknowledged {} at {} is lost",
                record.key,
                outcome.position()
            );
        }
    }
    // The batch whose answer was lost is stored whole or not at all, and a retry
    // settles it without storing anything twice.
    let unknown = failed[0];
    let stored_of_unknown = batch_of(unknown)
        .iter()
        .filter(|record| position_of_key.contains_key(record.key.as_str()))
        .count();
    ensure!(
        stored_of_unknown == 0 || stored_of_unknown == 4,
        "a batch is atomic, but {stored_of_unknown} of 4 records were stored"
    );
    let retried = log.append(AppendBatch::new(batch_of(unknown))).await?;
    let expected_kind_duplicate = stored_of_unknown == 4;
    ensure!(
        retried
            .iter()
            .all(|outcome| matches!(outcome, AppendOutcome::Duplicate { .. })
                == expected_kind_duplicate),
        "retry outcomes {retried:?}"
    );
    let after_retry = log.read(1, usize::MAX).await?;
    let mut keys = BTreeMap::new();
    for record in &after_retry {
        ensure!(
            keys.insert(record.key.clone(), record.position).is_none(),
            "{} twice",
            record.key
        );
    }
    ensure!(
        after_retry.len() == everything.len() + if expected_kind_duplicate { 0 } else { 4 },
        "the retry stored exactly what was missing"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_tail_resumes_after_a_server_restart_without_gap_or_repeat() -> Result<()> {
    let mut server = NatsServer::start().await?;
    let options = test_options(BatchMode::Auto);
    let log = JetStreamLog::connect(&server.url(), options.clone()).await?;
    for batch in 0..3 {
        log.append(AppendBatch::new(batch_of(batch))).await?;
    }
    let mut tail = log.tail(1);
    let mut seen = Vec::new();
    for _ in 0..6 {
        let record = tokio::time::timeout(STEP_DEADLINE, tail.next())
            .await?
            .context("tail ended")??;
        seen.push(record.position);
    }

    server.kill()?;
    server.restart().await?;
    let writer = JetStreamLog::connect(&server.url(), options).await?;
    for batch in 3..6 {
        writer.append(AppendBatch::new(batch_of(batch))).await?;
    }
    while seen.len() < 24 {
        let record = tokio::time::timeout(STEP_DEADLINE, tail.next())
            .await
            .with_context(|| format!("tail stalled after {seen:?}"))?
            .context("tail ended")??;
        seen.push(record.position);
    }
    ensure!(seen == (1..=24).collect::<Vec<u64>>(), "{seen:?}");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_and_named() -> Result<()> {
    let port = test_support::free_port()?;
    let url = format!("nats://127.0.0.1:{port}");
    match JetStreamLog::connect(&url, test_options(BatchMode::Auto)).await {
        Err(LogError::Unavailable(reason)) => {
            ensure!(reason.contains(&url), "the error names the url: {reason}");
        }
        other => bail!("expected unavailable, got {other:?}"),
    }
    let started = std::time::Instant::now();
    let gave_up = JetStreamLog::connect_with_retry(
        &url,
        test_options(BatchMode::Auto),
        Duration::from_millis(50),
        Duration::from_millis(400),
    )
    .await;
    ensure!(
        matches!(gave_up, Err(LogError::Unavailable(_))),
        "{gave_up:?}"
    );
    ensure!(
        started.elapsed() < STEP_DEADLINE,
        "connect_with_retry gives up after max_wait"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_retry_waits_for_a_server_that_comes_up_later() -> Result<()> {
    let mut server = NatsServer::start().await?;
    server.kill()?;
    let url = server.url();
    let connecting = tokio::spawn(async move {
        JetStreamLog::connect_with_retry(
            &url,
            test_options(BatchMode::Auto),
            Duration::from_millis(50),
            STEP_DEADLINE,
        )
        .await
    });
    server.restart().await?;
    let log = connecting.await??;
    let outcomes = log
        .append(AppendBatch::new(vec![record("e-1", "leeds.L-1", "one")]))
        .await?;
    ensure!(outcomes == vec![AppendOutcome::Appended { position: 1 }]);
    Ok(())
}
