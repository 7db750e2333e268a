//! Phases 1 and 2: ingest through gRPC (the real `Ingest.Append`, batches of
//! 1000, each answered after the log made it durable) against the raw
//! backend underneath with no gRPC, no validation and no admission: the
//! embedded log's own `append`, and a plain async JetStream publish of the
//! same payloads awaiting every ack.

use std::{path::Path, sync::Arc, time::Instant};

use anyhow::{Context, ensure};
use bytes::Bytes;
use domain::Event;
use eventlog::{AppendBatch, AppendOutcome, EventLog, JetStreamLog, JetStreamOptions};

use crate::{data, stack::Stack};

/// Events per `Ingest.Append` call and per raw append.
pub const BATCH: usize = 1000;

/// What one ingest comparison measured.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct IngestFigures {
    pub events: usize,
    pub grpc_seconds: f64,
    pub raw_seconds: f64,
}

impl IngestFigures {
    pub fn grpc_events_per_second(&self) -> f64 {
        self.events as f64 / self.grpc_seconds
    }

    pub fn raw_events_per_second(&self) -> f64 {
        self.events as f64 / self.raw_seconds
    }
}

/// Appends `events` through a fresh ingest service over `log`, one
/// `Ingest.Append` of [`BATCH`] events at a time; returns the seconds taken
/// and how many events were newly stored.
async fn through_grpc(
    log: Arc<dyn EventLog>,
    directory: &Path,
    events: &[Event],
) -> anyhow::Result<(f64, usize)> {
    let stack = Stack::ingest_only(log, directory).await?;
    let client = stack.admin_client().await?;
    let batches: Vec<Vec<proto::v1::Event>> = events
        .chunks(BATCH)
        .map(|chunk| chunk.iter().map(proto::v1::Event::from).collect())
        .collect();
    let started = Instant::now();
    let mut appended = 0;
    for batch in batches {
        let response = client
            .append(batch)
            .await
            .context("ingest refused a batch of demo events")?;
        appended += response
            .outcomes
            .iter()
            .filter(|outcome| !outcome.duplicate)
            .count();
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(client);
    stack.stop().await?;
    Ok((seconds, appended))
}

/// Appends the records import would write for `events` straight into `log`.
async fn raw_log_append(log: &dyn EventLog, events: &[Event]) -> anyhow::Result<(f64, usize)> {
    let batches: Vec<AppendBatch> = events
        .chunks(BATCH)
        .map(|chunk| {
            AppendBatch::new(
                chunk
                    .iter()
                    .map(|event| data::record_of(event, data::PRINCIPAL))
                    .collect(),
            )
        })
        .collect();
    let started = Instant::now();
    let mut appended = 0;
    for batch in batches {
        let outcomes = log.append(batch).await.context("raw append")?;
        appended += outcomes
            .iter()
            .filter(|outcome| matches!(outcome, AppendOutcome::Appended { .. }))
            .count();
    }
    Ok((started.elapsed().as_secs_f64(), appended))
}

/// Phase 1: gRPC ingest into the embedded log vs raw embedded append.
pub async fn embedded(work: &Path, events: &[Event]) -> anyhow::Result<IngestFigures> {
    let raw_log = crate::stack::open_embedded(&work.join("raw-log")).await?;
    let (raw_seconds, raw_appended) = raw_log_append(&raw_log, events).await?;
    drop(raw_log);
    let log: Arc<dyn EventLog> =
        Arc::new(crate::stack::open_embedded(&work.join("grpc-log")).await?);
    let (grpc_seconds, grpc_appended) =
        through_grpc(log, &work.join("grpc-services"), events).await?;
    ensure!(
        raw_appended == grpc_appended,
        "the raw baseline stored {raw_appended} events but ingest stored {grpc_appended}: they did not do the same work"
    );
    Ok(IngestFigures {
        events: events.len(),
        grpc_seconds,
        raw_seconds,
    })
}

/// A plain async JetStream publish of every payload, one subject per
/// stream, awaiting the acks of each batch of [`BATCH`] before the next.
async fn raw_jetstream_publish(url: &str, events: &[Event]) -> anyhow::Result<f64> {
    let client = async_nats::connect(url)
        .await
        .context("connecting the raw publisher")?;
    let jetstream = async_nats::jetstream::new(client);
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "BENCH_RAW".to_owned(),
            subjects: vec!["benchraw.>".to_owned()],
            ..Default::default()
        })
        .await
        .context("creating the raw baseline stream")?;
    let batches: Vec<Vec<(String, Bytes)>> = events
        .chunks(BATCH)
        .map(|chunk| {
            chunk
                .iter()
                .map(|event| {
                    let record = data::record_of(event, data::PRINCIPAL);
                    (format!("benchraw.{}", record.stream), record.payload)
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    for batch in batches {
        let mut acks = Vec::with_capacity(batch.len());
        for (subject, payload) in batch {
            acks.push(
                jetstream
                    .publish(subject, payload)
                    .await
                    .context("raw jetstream publish")?,
            );
        }
        for ack in acks {
            ack.await.context("raw jetstream ack")?;
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Phase 2: gRPC ingest into the JetStream log vs raw JetStream publish, on
/// a nats-server of its own (random port, temporary store).
pub async fn jetstream(work: &Path, events: &[Event]) -> anyhow::Result<IngestFigures> {
    let server = test_support::NatsServer::start().await.context(
        "starting nats-server (set NATS_SERVER_BIN or run scripts/ensure-nats-server.sh)",
    )?;
    let raw_seconds = raw_jetstream_publish(&server.url(), events).await?;
    let log: Arc<dyn EventLog> = Arc::new(
        JetStreamLog::connect(&server.url(), JetStreamOptions::default())
            .await
            .context("connecting the jetstream log")?,
    );
    let (grpc_seconds, grpc_appended) =
        through_grpc(log, &work.join("nats-grpc-services"), events).await?;
    ensure!(
        grpc_appended > 0,
        "ingest stored nothing on jetstream: the comparison would be empty"
    );
    Ok(IngestFigures {
        events: events.len(),
        grpc_seconds,
        raw_seconds,
    })
}
