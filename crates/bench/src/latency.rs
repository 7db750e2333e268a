//! Phase 4: end-to-end latency at a steady offered load. Events are sent
//! open-loop (a tokio interval fires every `events_per_append / rate` s and
//! each tick starts one `Ingest.Append` without waiting for earlier ones),
//! and a `WatchReport` stream is read at the same time.
//!
//! One exception keeps the client honest: a patient's events depend on each
//! other (no injection before the registration), and two appends in flight
//! at once may reach ingest in either order, which ingest then rightly
//! refuses. So an append carrying a patient of an earlier append that is
//! not answered yet is held until that one is answered, as a clinic's
//! client would; the other appends keep their ticks. How many were held
//! and for how long is reported (`held_back`, `hold`). An event's latency is from
//! its append being acked (the client has the answer) to the first report
//! on the stream whose `as_of_position` covers the event's position.
//!
//! The baseline, measured in the same run, is the same interval up to the
//! moment reporting's projection folded the position (its in-process
//! position watch): what the watch stream adds on top is computing,
//! encoding and sending the push. `folded_to_watch` (printed, not a figure)
//! is that addition alone, event by event.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use domain::{Event, PatientKey};
use eventlog::EventLog;
use proto::v1::GetReportRequest;
use service_kit::DerivedBus;
use tokio::sync::watch;

use crate::{
    measure::{self, Percentiles},
    stack::Stack,
};

/// How long the harness waits for the last event to show up after the load,
/// and for the appends in flight to be answered.
const SETTLE: Duration = Duration::from_secs(10);

/// What one latency run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LatencyFigures {
    pub offered_events_per_second: u32,
    pub events_per_append: usize,
    pub seconds: f64,
    pub sent: usize,
    pub refused: usize,
    /// Appends held past their tick until an earlier append of one of their
    /// patients was answered.
    pub held_back: usize,
    /// Tick → send of the appends held back (none when nothing was held).
    pub hold: Option<Percentiles>,
    /// Ack → visible on `WatchReport`.
    pub watch: Percentiles,
    /// Ack → folded into reporting's projection.
    pub folded: Percentiles,
    /// Send → ack of `Ingest.Append`.
    pub append: Percentiles,
    /// Folded into reporting's projection → visible on `WatchReport`: the
    /// part of the figure the push path adds (a diagnosis, not the figure).
    pub folded_to_watch: Percentiles,
    /// Events visible on the stream before their ack reached the client
    /// (counted as 0 ms).
    pub visible_before_ack: usize,
    pub reports_received: usize,
}

/// For each append (its events' patients, in send order), the earlier
/// appends it must wait for: for each of its patients, the last earlier
/// append that carried that patient (each at most once, ascending).
fn predecessors(patients_per_append: &[Vec<PatientKey>]) -> Vec<Vec<usize>> {
    let mut last_append_of = std::collections::HashMap::new();
    patients_per_append
        .iter()
        .enumerate()
        .map(|(index, patients)| {
            let mut earlier: Vec<usize> = patients
                .iter()
                .filter_map(|patient| last_append_of.get(patient).copied())
                .collect();
            earlier.sort_unstable();
            earlier.dedup();
            for patient in patients {
                last_append_of.insert(patient.clone(), index);
            }
            earlier
        })
        .collect()
}

/// For each (position, acked at), the time until the first of `seen`
/// (position, at; positions non-decreasing) that covers it.
fn delays(
    acks: &[(u64, Instant)],
    seen: &[(u64, Instant)],
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let mut delays = Vec::with_capacity(acks.len());
    let mut early = 0;
    for (position, acked_at) in acks {
        let index = seen.partition_point(|(covered, _)| covered < position);
        let Some((_, visible_at)) = seen.get(index) else {
            bail!("position {position} never became visible");
        };
        if visible_at < acked_at {
            early += 1;
        }
        delays.push(visible_at.saturating_duration_since(*acked_at));
    }
    Ok((delays, early))
}

/// For each acked position, the time from the first of `folded` that
/// covers it to the first of `seen` that does (both non-decreasing).
fn push_delays(
    acks: &[(u64, Instant)],
    folded: &[(u64, Instant)],
    seen: &[(u64, Instant)],
) -> anyhow::Result<Vec<Duration>> {
    let (from_ack_to_fold, _) = delays(acks, folded)?;
    let (from_ack_to_seen, _) = delays(acks, seen)?;
    let at_fold = acks
        .iter()
        .zip(&from_ack_to_fold)
        .map(|((_, acked_at), delay)| *acked_at + *delay);
    let at_seen = acks
        .iter()
        .zip(&from_ack_to_seen)
        .map(|((_, acked_at), delay)| *acked_at + *delay);
    Ok(at_fold
        .zip(at_seen)
        .map(|(folded_at, seen_at)| seen_at.saturating_duration_since(folded_at))
        .collect())
}

/// Runs ingest, assessment and reporting over `log` (derived events on
/// `bus`) and offers `events` at `rate` per second for `duration`.
pub async fn run(
    log: Arc<dyn EventLog>,
    bus: DerivedBus,
    work: &std::path::Path,
    events: Vec<Event>,
    rate: u32,
    events_per_append: usize,
    duration: Duration,
) -> anyhow::Result<LatencyFigures> {
    let events_per_append = events_per_append.max(1);
    let stack = Stack::all_services(log, bus, work).await?;
    let live = stack.live.clone().context("reporting is not running")?;
    let client = stack.admin_client().await?;

    // What the projection folded, as it folds.
    let mut positions = live.positions();
    let folding = tokio::spawn(async move {
        let mut seen = Vec::new();
        while positions.changed().await.is_ok() {
            let position = *positions.borrow_and_update();
            seen.push((position, Instant::now()));
        }
        seen
    });

    // What the watch stream shows, as it arrives.
    let mut stream = client
        .reporting()
        .watch_report(GetReportRequest {
            scope: "all".to_owned(),
        })
        .await
        .context("opening WatchReport")?
        .into_inner();
    let (shown_sender, mut shown) = watch::channel(0_u64);
    let watched = Arc::new(Mutex::new(Vec::new()));
    let watching = tokio::spawn({
        let watched = Arc::clone(&watched);
        async move {
            while let Ok(Some(report)) = stream.message().await {
                let at = Instant::now();
                watched
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((report.as_of_position, at));
                shown_sender.send_replace(report.as_of_position);
            }
        }
    });
    // The first push (the empty report) says the stream is live.
    shown.changed().await.context("WatchReport sent nothing")?;

    let total = (f64::from(rate) * duration.as_secs_f64()) as usize;
    ensure!(
        events.len() >= total,
        "{} events for a load of {total}",
        events.len()
    );
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(
        events_per_append as f64 / f64::from(rate),
    ));
    // Open loop: a late tick is made up at once, the offered load stays put.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut in_flight = Vec::with_capacity(total);
    let messages: Vec<proto::v1::Event> = events
        .iter()
        .take(total)
        .map(proto::v1::Event::from)
        .collect();
    let patients_per_append: Vec<Vec<PatientKey>> = events[..total]
        .chunks(events_per_append)
        .map(|chunk| chunk.iter().map(Event::patient_key).collect())
        .collect();
    let waits_per_append = predecessors(&patients_per_append);
    // Each append's "answered" flag, for the later appends that wait on it.
    let mut answered_flags: Vec<watch::Receiver<bool>> = Vec::with_capacity(total);
    for (chunk, waits) in messages.chunks(events_per_append).zip(waits_per_append) {
        ticker.tick().await;
        let due_at = Instant::now();
        let client = client.clone();
        let batch = chunk.to_vec();
        let mut earlier: Vec<watch::Receiver<bool>> = waits
            .iter()
            .filter_map(|index| answered_flags.get(*index).cloned())
            .collect();
        let (answered, answered_flag) = watch::channel(false);
        answered_flags.push(answered_flag);
        in_flight.push(tokio::spawn(async move {
            let held = earlier.iter().any(|flag| !*flag.borrow());
            for flag in &mut earlier {
                // An error means that append's task is gone: not in flight either.
                let _ = flag.wait_for(|answered| *answered).await;
            }
            let sent_at = Instant::now();
            let outcome = client.append(batch).await;
            let acked_at = Instant::now();
            answered.send_replace(true);
            let hold = held.then(|| sent_at - due_at);
            (hold, sent_at, acked_at, outcome)
        }));
    }
    let offered_seconds = started.elapsed().as_secs_f64();
    let mut acks = Vec::with_capacity(total);
    let mut append_times = Vec::with_capacity(total);
    let mut refused = 0;
    let mut holds = Vec::new();
    let answered = async {
        for task in in_flight {
            let (hold, sent_at, acked_at, outcome) =
                task.await.context("an append task panicked")?;
            holds.extend(hold);
            match outcome {
                Ok(response) => {
                    append_times.push(acked_at - sent_at);
                    acks.extend(
                        response
                            .outcomes
                            .iter()
                            .map(|outcome| (outcome.position, acked_at)),
                    );
                }
                Err(error) => {
                    // A refusal under steady load is a defect to chase: say why.
                    if refused == 0 {
                        eprintln!("  first refused append: {error:#}");
                    }
                    refused += events_per_append;
                }
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(SETTLE, answered)
        .await
        .with_context(|| {
            format!(
                "appends were still unanswered {SETTLE:?} after the load: ingest cannot keep up with {rate} events/s in appends of {events_per_append}"
            )
        })??;
    let last = acks
        .iter()
        .map(|(position, _)| *position)
        .max()
        .unwrap_or(0);
    tokio::time::timeout(SETTLE, shown.wait_for(|position| *position >= last))
        .await
        .context("the watch stream did not reach the last appended position in time")?
        .context("the watch stream ended")?;
    // The watch stream never ends on its own: close it (and the client's
    // connection) so the server's graceful shutdown has nothing to wait for.
    watching.abort();
    drop(client);
    stack.stop().await?;
    // The fold watch ends when the projection is gone: this is its last handle.
    drop(live);
    let watched = std::mem::take(&mut *watched.lock().unwrap_or_else(PoisonError::into_inner));
    let folded = folding.await.context("the fold watch task panicked")?;
    let (watch_delays, visible_before_ack) = delays(&acks, &watched)?;
    let (fold_delays, _) = delays(&acks, &folded)?;
    let none = || anyhow::anyhow!("no event was appended");
    let folded_to_watch =
        measure::percentiles(push_delays(&acks, &folded, &watched)?).ok_or_else(none)?;
    eprintln!(
        "  folded -> WatchReport received: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        folded_to_watch.p50_ms, folded_to_watch.p99_ms, folded_to_watch.max_ms
    );
    Ok(LatencyFigures {
        offered_events_per_second: rate,
        events_per_append,
        seconds: offered_seconds,
        sent: total,
        refused,
        held_back: holds.len(),
        hold: measure::percentiles(holds),
        watch: measure::percentiles(watch_delays).ok_or_else(none)?,
        folded: measure::percentiles(fold_delays).ok_or_else(none)?,
        append: measure::percentiles(append_times).ok_or_else(none)?,
        folded_to_watch,
        visible_before_ack,
        reports_received: watched.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_visible_at_the_first_report_that_covers_it() {
        let zero = Instant::now();
        let at = |ms| zero + Duration::from_millis(ms);
        let acks = [(1, at(0)), (2, at(10)), (3, at(30))];
        let seen = [(0, at(1)), (2, at(20)), (5, at(25))];
        let (found, early) = delays(&acks, &seen).unwrap();
        assert_eq!(
            found,
            vec![
                Duration::from_millis(20),
                Duration::from_millis(10),
                Duration::ZERO
            ]
        );
        assert_eq!(early, 1);
        assert!(delays(&[(9, at(0))], &seen).is_err());
    }

    #[test]
    fn an_append_waits_for_the_last_earlier_append_of_each_of_its_patients() {
        let patient = |name: &str| {
            PatientKey::new(
                domain::Centre::parse("leeds").unwrap(),
                domain::Pseudonym::parse(name).unwrap(),
            )
        };
        let (a, b, c) = (patient("A"), patient("B"), patient("C"));
        let appends = [
            vec![a.clone(), b.clone()],
            vec![c.clone()],
            vec![a.clone(), a.clone(), c.clone()],
            vec![b.clone(), a.clone()],
            vec![patient("D")],
        ];
        assert_eq!(
            predecessors(&appends),
            vec![vec![], vec![], vec![0, 1], vec![0, 2], vec![]]
        );
    }
}
