//! The dashboard's live feed: the most recent events of the log and the
//! findings they led to (a patient entering the SNR cohort, regaining,
//! escalating, a standard becoming met or not met).
//!
//! What a feed item may show is deliberately narrow: the pseudonym, the
//! centre, dates and coded values. Never the author of an entry (a real
//! name), never free text (a discontinuation or void reason may hold
//! anything), never birth year or sex.
//!
//! One follower task reads the log behind the projection (so a finding is
//! computed from a fold that already holds its event) and keeps the last
//! [`FEED_CAPACITY`] items; streams get them from [`Feed::recent`] and then
//! live from a broadcast channel. When the log runs far ahead (an import)
//! the follower skips to the newest records: the feed is about now.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use domain::{
    EventBody, PatientKey, RecordedEvent,
    audit::{PatientAssessment, SnrGroup},
};
use eventlog::EventLog;
use serde::Serialize;
use service_kit::Shutdown;
use tokio::sync::broadcast;

use crate::service::LiveReport;

/// How many items the feed keeps (and replays to a new stream).
pub(crate) const FEED_CAPACITY: usize = 60;

/// How many patients' last findings are remembered to tell what changed.
const REMEMBERED_PATIENTS: usize = 50_000;

/// How many records the follower reads at once.
const READ_BATCH: usize = 256;

/// How long the follower pauses between batches while the log races ahead.
const RACING_PACE: Duration = Duration::from_millis(200);

/// How long the follower waits before reading again after a log error.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// An event or a finding, as the feed shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct FeedItem {
    /// Increases by one per item: streams use it to skip repeats.
    pub sequence: u64,
    /// The log position of the event (of the event behind a finding).
    pub position: u64,
    /// `event` or `finding`.
    pub kind: &'static str,
    pub centre: String,
    /// The patient's pseudonym.
    pub patient: String,
    pub occurred_on: String,
    /// When the log stored the event (RFC 3339, UTC).
    pub recorded_at: String,
    /// What happened, in a few words.
    pub title: String,
    /// Coded details (product, units, rating, why a standard is not met).
    pub detail: String,
    /// For findings: `good`, `bad` or `neutral`, so the page can colour them.
    pub tone: &'static str,
}

#[derive(Debug)]
struct Recent {
    items: VecDeque<Arc<FeedItem>>,
    next_sequence: u64,
}

/// The readers' side of the feed.
#[derive(Debug, Clone)]
pub(crate) struct Feed {
    recent: Arc<Mutex<Recent>>,
    sender: broadcast::Sender<Arc<FeedItem>>,
}

impl Feed {
    /// The feed and the follower that fills it (to be run until shutdown).
    pub fn start(live: LiveReport, log: Arc<dyn EventLog>) -> (Self, Follower) {
        let (sender, _) = broadcast::channel(FEED_CAPACITY * 4);
        let feed = Self {
            recent: Arc::new(Mutex::new(Recent {
                items: VecDeque::with_capacity(FEED_CAPACITY),
                next_sequence: 1,
            })),
            sender,
        };
        let follower = Follower {
            feed: feed.clone(),
            live,
            log,
            last_findings: HashMap::new(),
        };
        (feed, follower)
    }

    /// New items from now on. Subscribe before reading [`Feed::recent`] so
    /// nothing falls between the two; repeats are told apart by sequence.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedItem>> {
        self.sender.subscribe()
    }

    /// The items kept, oldest first.
    pub fn recent(&self) -> Vec<Arc<FeedItem>> {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.items.iter().cloned().collect()
    }

    fn push(&self, mut item: FeedItem) {
        let item = {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            item.sequence = recent.next_sequence;
            recent.next_sequence += 1;
            let item = Arc::new(item);
            if recent.items.len() == FEED_CAPACITY {
                recent.items.pop_front();
            }
            recent.items.push_back(Arc::clone(&item));
            item
        };
        // No subscriber is not an error: nobody is watching.
        let _ = self.sender.send(item);
    }
}

/// What the findings of a patient were last time, to tell what changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Findings {
    snr_group: Option<SnrGroup>,
    regained: bool,
    switched_to_bont_b: bool,
    referred_dbs: bool,
    assessed_for_resistance: bool,
    resistance_confirmed: bool,
    /// Each standard the patient counts in: (id, met, why).
    standards: Vec<(&'static str, bool, String)>,
}

impl Findings {
    fn of(assessment: &PatientAssessment) -> Self {
        let snr = assessment.snr.as_ref();
        Self {
            snr_group: snr.map(|snr| snr.group),
            regained: snr.is_some_and(|snr| snr.regained()),
            switched_to_bont_b: snr.is_some_and(|snr| snr.switched_to_bont_b_on.is_some()),
            referred_dbs: snr.is_some_and(|snr| snr.referred_dbs_on.is_some()),
            assessed_for_resistance: snr
                .is_some_and(|snr| snr.assessed_for_resistance_on.is_some()),
            resistance_confirmed: snr.is_some_and(|snr| snr.resistance_confirmed_on.is_some()),
            standards: assessment
                .standards
                .iter()
                .map(|finding| (finding.standard.id(), finding.met(), finding.reason.clone()))
                .collect(),
        }
    }

    /// What is new in `self` since `before`: (title, detail, tone).
    fn changes_since(&self, before: &Findings) -> Vec<(String, String, &'static str)> {
        let mut changes = Vec::new();
        match (before.snr_group, self.snr_group) {
            (None, Some(group)) => changes.push((
                "secondary non-response".to_owned(),
                match group {
                    SnrGroup::Suboptimal => "suboptimal response after good cycles".to_owned(),
                    SnrGroup::NoResponse => "no response after good cycles".to_owned(),
                },
                "bad",
            )),
            (Some(_), None) => changes.push((
                "left the SNR cohort".to_owned(),
                "after a correction".to_owned(),
                "neutral",
            )),
            _ => {}
        }
        let steps = [
            (
                before.regained,
                self.regained,
                "regained a good response",
                "good",
            ),
            (
                before.switched_to_bont_b,
                self.switched_to_bont_b,
                "switched to BoNT-B",
                "neutral",
            ),
            (
                before.referred_dbs,
                self.referred_dbs,
                "referred for DBS",
                "neutral",
            ),
            (
                before.assessed_for_resistance,
                self.assessed_for_resistance,
                "assessed for resistance",
                "neutral",
            ),
            (
                before.resistance_confirmed,
                self.resistance_confirmed,
                "resistance confirmed",
                "bad",
            ),
        ];
        for (was, is, title, tone) in steps {
            if is && !was {
                changes.push((title.to_owned(), String::new(), tone));
            }
        }
        for (id, met, reason) in &self.standards {
            let was = before
                .standards
                .iter()
                .find(|(before_id, _, _)| before_id == id)
                .map(|(_, was_met, _)| *was_met);
            if was != Some(*met) {
                let (title, tone) = if *met {
                    (format!("{id} met"), "good")
                } else {
                    (format!("{id} not met"), "bad")
                };
                changes.push((title, reason.clone(), tone));
            }
        }
        changes
    }
}

/// The title and coded detail of an event, with nothing free-text.
fn describe(body: &EventBody) -> (&'static str, String) {
    match body {
        EventBody::PatientRegistered(_) => ("patient registered", String::new()),
        EventBody::InjectionAdministered(injection) => (
            "injection",
            format!(
                "{} {} units, {} muscle{}, guidance {}",
                injection.product().as_str(),
                injection.total_units(),
                injection.muscles().len(),
                if injection.muscles().len() == 1 {
                    ""
                } else {
                    "s"
                },
                injection.guidance().as_str()
            ),
        ),
        EventBody::ResponseAssessed(response) => (
            "response assessed",
            match response.percent_improvement {
                Some(percent) => {
                    format!("rated {}, {percent}% improvement", response.rating.as_str())
                }
                None => format!("rated {}", response.rating.as_str()),
            },
        ),
        EventBody::ResistanceTested(test) => (
            "resistance test",
            format!("{}: {}", test.method.as_str(), test.result.as_str()),
        ),
        EventBody::ReferralMade(referral) => {
            ("referral", format!("to {}", referral.target.as_str()))
        }
        EventBody::TreatmentDiscontinued(_) => ("treatment discontinued", String::new()),
        EventBody::EventVoided(_) => ("entry voided", String::new()),
    }
}

/// Reads the log behind the projection into the feed.
#[derive(Debug)]
pub(crate) struct Follower {
    feed: Feed,
    live: LiveReport,
    log: Arc<dyn EventLog>,
    last_findings: HashMap<PatientKey, Findings>,
}

impl Follower {
    pub async fn run_until_stopped(mut self, shutdown: Shutdown) {
        let mut positions = self.live.positions();
        let stopped = shutdown.wait();
        tokio::pin!(stopped);
        // Start with the last records already folded, so a fresh page has
        // something to show.
        let folded = *positions.borrow_and_update();
        let mut next = folded.saturating_sub(FEED_CAPACITY as u64) + 1;
        loop {
            let target = tokio::select! {
                () = &mut stopped => return,
                reached = positions.wait_for(|position| *position >= next) => match reached {
                    Ok(position) => *position,
                    Err(_) => return,
                },
            };
            // Far behind (an import): only the newest records matter, and
            // the feed's work is paced so it never competes with the fold.
            let racing = target - next >= FEED_CAPACITY as u64;
            if racing {
                next = target + 1 - FEED_CAPACITY as u64;
            }
            let wanted = usize::try_from(target - next + 1)
                .unwrap_or(READ_BATCH)
                .min(READ_BATCH);
            match self.log.read(next, wanted).await {
                Ok(records) => {
                    for record in records {
                        next = record.position + 1;
                        match proto::convert::recorded_from_parts(
                            record.position,
                            record.recorded_at_micros,
                            &record.principal,
                            &record.payload,
                        ) {
                            Ok(recorded) => self.add(&recorded),
                            Err(error) => {
                                tracing::warn!(position = record.position, %error, "feed skips an unreadable record");
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "reading the log for the feed failed");
                    tokio::select! {
                        () = &mut stopped => return,
                        () = tokio::time::sleep(RETRY_AFTER_ERROR) => {}
                    }
                }
            }
            if racing {
                tokio::select! {
                    () = &mut stopped => return,
                    () = tokio::time::sleep(RACING_PACE) => {}
                }
            }
        }
    }

    fn add(&mut self, recorded: &RecordedEvent) {
        let event = &recorded.event;
        let recorded_at = domain::ndjson::rfc3339_from_micros(recorded.recorded_at_micros);
        let item = |kind, title: String, detail: String, tone| FeedItem {
            sequence: 0,
            position: recorded.position,
            kind,
            centre: event.centre.as_str().to_owned(),
            patient: event.patient.as_str().to_owned(),
            occurred_on: event.occurred_on.to_string(),
            recorded_at: recorded_at.clone(),
            title,
            detail,
            tone,
        };
        let (title, detail) = describe(&event.body);
        self.feed
            .push(item("event", title.to_owned(), detail, "neutral"));

        let key = event.patient_key();
        let Some(assessment) = self.live.patient(&key) else {
            return;
        };
        let now = Findings::of(&assessment);
        let before = match self.last_findings.get(&key) {
            Some(before) => before.clone(),
            // A registration starts from nothing; any other first sight of
            // a patient (the feed started mid-log) is only a baseline.
            None if matches!(event.body, EventBody::PatientRegistered(_)) => Findings::default(),
            None => now.clone(),
        };
        for (title, detail, tone) in now.changes_since(&before) {
            self.feed.push(item("finding", title, detail, tone));
        }
        if self.last_findings.len() >= REMEMBERED_PATIENTS && !self.last_findings.contains_key(&key)
        {
            self.last_findings.clear();
        }
        self.last_findings.insert(key, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_report_only_what_changed() {
        let before = Findings::default();
        let now = Findings {
            snr_group: Some(SnrGroup::NoResponse),
            standards: vec![("BNN-2", false, "not assessed".to_owned())],
            ..Findings::default()
        };
        let changes = now.changes_since(&before);
        let titles: Vec<&str> = changes.iter().map(|(title, _, _)| title.as_str()).collect();
        assert_eq!(titles, ["secondary non-response", "BNN-2 not met"]);
        assert!(now.changes_since(&now).is_empty());
        let later = Findings {
            assessed_for_resistance: true,
            standards: vec![("BNN-2", true, "assessed".to_owned())],
            ..now.clone()
        };
        let titles: Vec<String> = later
            .changes_since(&now)
            .into_iter()
            .map(|(title, _, _)| title)
            .collect();
        assert_eq!(titles, ["assessed for resistance", "BNN-2 met"]);
    }
}
