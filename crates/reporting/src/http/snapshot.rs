//! The latest report, computed once for every reader of the HTTP side (the
//! page, the API, each event stream, `/metrics`), with the projection lag.
//!
//! One publisher task waits for the projection to fold something, computes
//! the report, and publishes it on a watch channel: readers always get the
//! newest one and a burst of appends costs one report, not one per reader
//! or per event. It publishes at most [`SNAPSHOTS_PER_SECOND`] times a
//! second, and once a second anyway so the lag in seconds stays current.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use domain::audit::AuditReport;
use eventlog::EventLog;
use service_kit::Shutdown;
use tokio::sync::watch;

use crate::service::LiveReport;

/// The most snapshots published per second: what changes in between is
/// coalesced into the next one. Five keeps the dashboard within a second of
/// an append while a bulk import does not recompute the report per event.
pub const SNAPSHOTS_PER_SECOND: u64 = 5;

/// How often the lag is refreshed when nothing is folded.
const LAG_REFRESH: Duration = Duration::from_secs(1);

/// The report as of one log position, and how far behind the log it is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Snapshot {
    /// The last log position folded into `report`.
    pub position: u64,
    pub report: Arc<AuditReport>,
    /// The log's last position when the snapshot was taken.
    pub log_head: u64,
    pub lag: Lag,
}

/// How far the projection is behind the log.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Lag {
    /// Records stored but not yet folded.
    pub events: u64,
    /// Age of the oldest record not yet folded (0 when caught up).
    pub seconds: f64,
}

impl Lag {
    /// The lag as a reader sees it, e.g. `caught up` or `12 events, 0.4 s`.
    pub fn shown(&self) -> String {
        if self.events == 0 {
            "caught up".to_owned()
        } else {
            format!(
                "{} event{} behind, {:.1} s",
                self.events,
                if self.events == 1 { "" } else { "s" },
                self.seconds
            )
        }
    }
}

/// The readers' side: the newest snapshot, and a way to wait for the next.
#[derive(Debug, Clone)]
pub(crate) struct Snapshots {
    receiver: watch::Receiver<Arc<Snapshot>>,
}

impl Snapshots {
    /// Takes the first snapshot now and returns the publisher that keeps it
    /// current (to be run until shutdown).
    pub async fn start(live: LiveReport, log: Arc<dyn EventLog>) -> (Self, Publisher) {
        // A first report over a large checkpoint takes a while: off the
        // async threads. Should that task fail, start from an empty report;
        // the publisher replaces it at once.
        let for_report = live.clone();
        let (position, report) = tokio::task::spawn_blocking(move || for_report.shared_report())
            .await
            .unwrap_or_else(|_| {
                (
                    0,
                    Arc::new(AuditReport {
                        rule_set: domain::audit::RULE_SET.to_owned(),
                        parameters: None,
                        scopes: Default::default(),
                    }),
                )
            });
        let first = Snapshot {
            position,
            report,
            log_head: position,
            lag: Lag::default(),
        };
        let (sender, receiver) = watch::channel(Arc::new(first));
        (Self { receiver }, Publisher { live, log, sender })
    }

    pub fn latest(&self) -> Arc<Snapshot> {
        Arc::clone(&self.receiver.borrow())
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.receiver.clone()
    }
}

/// Keeps [`Snapshots`] current.
#[derive(Debug)]
pub(crate) struct Publisher {
    live: LiveReport,
    log: Arc<dyn EventLog>,
    sender: watch::Sender<Arc<Snapshot>>,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX)
        })
}

impl Publisher {
    pub async fn run_until_stopped(self, shutdown: Shutdown) {
        let mut positions = self.live.positions();
        let pace = Duration::from_millis(1000 / SNAPSHOTS_PER_SECOND);
        let stopped = shutdown.wait();
        tokio::pin!(stopped);
        loop {
            let started = Instant::now();
            self.publish().await;
            // Bounded rate: whatever is folded during the pause goes into
            // the next snapshot. A report holds the projection's lock while
            // it is computed, so when that is slow (a large cohort during an
            // import) the pause grows to keep the fold at least four fifths
            // of the time.
            let pause = pace.max(started.elapsed().saturating_mul(4));
            tokio::select! {
                () = &mut stopped => return,
                () = tokio::time::sleep(pause) => {}
            }
            tokio::select! {
                () = &mut stopped => return,
                changed = positions.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(LAG_REFRESH) => {}
            }
        }
    }

    async fn publish(&self) {
        let live = self.live.clone();
        // The report is shared with the `WatchReport` streams: when one of
        // them has computed it for this position, this costs nothing.
        let Ok((position, report)) =
            tokio::task::spawn_blocking(move || live.shared_report()).await
        else {
            tracing::warn!("computing the dashboard report failed");
            return;
        };
        let (log_head, lag) = self.lag(position).await;
        let previous = self.sender.borrow().clone();
        let report = if *previous.report == *report {
            Arc::clone(&previous.report)
        } else {
            report
        };
        let snapshot = Snapshot {
            position,
            report,
            log_head,
            lag,
        };
        if *previous != snapshot {
            self.sender.send_replace(Arc::new(snapshot));
        }
    }

    /// The log head and the lag of a projection at `position`. When the log
    /// cannot be read the lag is reported as none rather than guessed.
    async fn lag(&self, position: u64) -> (u64, Lag) {
        let head = match self.log.head().await {
            Ok(head) => head.max(position),
            Err(error) => {
                tracing::warn!(%error, "reading the log head for the lag failed");
                return (position, Lag::default());
            }
        };
        if head == position {
            return (head, Lag::default());
        }
        let seconds = match self.log.read(position + 1, 1).await {
            Ok(records) => records.first().map_or(0.0, |oldest| {
                let micros = now_micros()
                    .saturating_sub(oldest.recorded_at_micros)
                    .max(0);
                // Microseconds fit an f64 exactly for any realistic lag.
                micros as f64 / 1_000_000.0
            }),
            Err(error) => {
                tracing::warn!(%error, "reading the oldest unfolded record failed");
                0.0
            }
        };
        (
            head,
            Lag {
                events: head - position,
                seconds,
            },
        )
    }
}
