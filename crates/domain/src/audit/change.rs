//! Whether one event changed its patient's assessment, told without
//! re-assessing the patient when the event's kind makes it certain.
//!
//! A follower that publishes a patient's assessment whenever it changes
//! (the assessment service) needs, for every event, "did this change the
//! assessment?". Re-assessing the patient's whole history after each event
//! costs O(events²) per patient. Most events settle the question from the
//! compact log alone:
//!
//! - a patient's first registration makes them part of the audit: changed;
//! - an injection adds a live cycle (the cycle count is part of the
//!   assessment): changed;
//! - an assessment of a live injection changes that cycle's current rating
//!   exactly when its rating differs from the current one (the last live
//!   assessment of that injection before it); an assessment of a voided
//!   injection, or one the log does not take, changes nothing. This is read
//!   backwards from the tail of the packed log, from the response back to
//!   its injection (usually a few events), not by decoding the whole log:
//!   a rating costs the same however long the history;
//! - a second registration changes nothing.
//!
//! Voids, resistance tests, referrals and discontinuations can change the
//! SNR findings or not depending on dates and the rest of the history: for
//! those (a few per SNR patient) the patient's log is analysed before and
//! after and the two analyses compared, which tells exactly whether the
//! assessments differ without building them (see `judged_by_analyses`).

use crate::{
    audit::{
        Cohort, PatientNumber,
        engine::{Analysis, Detail, PatientLog, analyse},
    },
    event::{EventBody, Rating, RecordedEvent},
};

/// What one event did to its patient's assessment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssessmentChange {
    /// The patient is not registered: they have no assessment to publish.
    NotRegistered,
    /// The assessment is exactly what it was before the event.
    Unchanged,
    /// The assessment differs from what it was before the event (for a
    /// first registration: the patient now has one).
    Changed,
}

/// The kinds of event whose effect on the assessment the compact log alone
/// cannot tell.
fn needs_assessing(body: &EventBody) -> bool {
    !matches!(
        body,
        EventBody::PatientRegistered(_)
            | EventBody::InjectionAdministered(_)
            | EventBody::ResponseAssessed(_)
    )
}

/// The current rating of the injection at `injection` among `events`: the
/// last live assessment naming it. Assessments always follow the injection
/// they name, and events are stored in log (so position) order.
fn current_rating(events: &[crate::audit::engine::CompactEvent], injection: u32) -> Option<Rating> {
    let after_injection = events.get(injection as usize + 1..)?;
    after_injection
        .iter()
        .rev()
        .find_map(|event| match event.detail {
            Detail::Response {
                injection: named,
                rating,
            } if named == injection => Some(rating),
            _ => None,
        })
}

/// For an event the compact log can judge (registration, injection,
/// response) of a patient registered before it: did it change the
/// assessment? `length_before` is the log's length before the event.
fn judged_from_log(body: &EventBody, log: &PatientLog, length_before: usize) -> AssessmentChange {
    if log.len() == length_before {
        // Not stored (a second registration, an assessment naming no
        // injection of this patient): the log, so the assessment, is as
        // it was.
        return AssessmentChange::Unchanged;
    }
    if !matches!(body, EventBody::ResponseAssessed(_)) {
        // A stored injection is a new live cycle. (A registration is never
        // stored; were anything else judged here, "changed" would publish
        // an assessment equal to the last one, never lose a change.)
        return AssessmentChange::Changed;
    }
    // Read from the tail of the packed log: the response, its injection and
    // the injection's earlier assessments, a few events back.
    match log.last_response_changes_rating() {
        Some(true) => AssessmentChange::Changed,
        Some(false) => AssessmentChange::Unchanged,
        None => judged_by_decoding(log),
    }
}

/// [`judged_from_log`] for a response, from the whole decoded log: what the
/// tail read answers, kept for a log it cannot read (never one built by
/// `apply` or restored and checked) and as its reference in tests.
fn judged_by_decoding(log: &PatientLog) -> AssessmentChange {
    let events = log.decode();
    let Some((last, earlier)) = events.split_last() else {
        return AssessmentChange::Unchanged;
    };
    let Detail::Response { injection, rating } = last.detail else {
        return AssessmentChange::Changed;
    };
    let live_injection = matches!(
        earlier.get(injection as usize).map(|event| event.detail),
        Some(Detail::Injection { .. })
    );
    if live_injection && current_rating(earlier, injection) != Some(rating) {
        AssessmentChange::Changed
    } else {
        AssessmentChange::Unchanged
    }
}

/// For an event the compact log cannot judge, of a patient registered
/// before and after it: did the assessment change, given the analyses of
/// the log before and after? The view (`assessment::view_of_analysis`) is a function
/// of the analysis, and the analysis one of the view: with the key, the
/// registration and the parameters the same on both sides,
///
/// - each cycle's facts are shown as they are (a day as its date, the
///   muscle set as its pairs: both one to one for the values a log holds,
///   which `PatientLog::check_restored` also demands of a restored one),
///   and the onset's index by which cycle is flagged the onset;
/// - of the SNR facts, the group, the good cycles before onset and every
///   date are shown; the regained cycle (and whether with adjustment) and
///   the first BoNT-B cycle follow from the cycles and the onset; the BNN-1
///   numerator from those and the DBS referral's date; the BNN-3 numerator
///   is "the first post-onset test is on or before the first BoNT-B
///   cycle", both dates shown; the interval pairs follow from the cycles.
///
/// So two analyses are equal exactly when their views are, and comparing
/// them answers what comparing the views answers without building either
/// (building them was ~half of `Cohort::apply_with` in the assessment
/// service). `tests/it/change.rs` checks the verdict against comparing
/// whole assessments for every event of generated logs.
fn judged_by_analyses(before: &Analysis, after: &Analysis) -> AssessmentChange {
    if before == after {
        AssessmentChange::Unchanged
    } else {
        AssessmentChange::Changed
    }
}

/// Applies `recorded` to `cohort` and tells what it did to the patient's
/// assessment ([`crate::audit::PatientAssessment`], all of it: "unchanged" means equal).
/// The patient is looked up once, and their log judged before and after.
pub fn apply_and_compare(cohort: &mut Cohort, recorded: &RecordedEvent) -> AssessmentChange {
    apply_and_compare_numbered(cohort, recorded).1
}

/// [`apply_and_compare`], telling the number of the event's patient too
/// (for a follower that keeps per-patient state by number).
pub fn apply_and_compare_numbered(
    cohort: &mut Cohort,
    recorded: &RecordedEvent,
) -> (PatientNumber, AssessmentChange) {
    let event = &recorded.event;
    cohort.apply_with(recorded, |log, parameters| {
        let (registered_before, length_before) = (log.registered, log.len());
        let before =
            (registered_before && needs_assessing(&event.body)).then(|| analyse(log, parameters));
        let changed = log.apply(recorded);
        let verdict = if !log.registered {
            AssessmentChange::NotRegistered
        } else if !registered_before {
            AssessmentChange::Changed
        } else {
            match before {
                Some(before) => judged_by_analyses(&before, &analyse(log, parameters)),
                None => judged_from_log(&event.body, log, length_before),
            }
        };
        (changed, verdict)
    })
}
