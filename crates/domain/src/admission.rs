//! Admission: the checks of `spec/events.md` ("Bad input") that need the
//! state of the log, as a fold over the stored events.
//!
//! A valid [`Event`] (see [`crate::raw`]) is admitted against what is already
//! stored: the same `event_id` with the same content is a duplicate (this
//! check comes before every other), with other content a conflict; then the
//! writer's centre, the patient's registration, and the references of
//! `response_assessed` and `event_voided`. Two facts are accepted with a
//! warning: a dose above the label maximum, and an injection less than 84
//! days after the patient's previous live one.
//!
//! The fold runs over the whole log (millions of events) in every service
//! that writes, so its memory is kept compact: each event id is stored once
//! in one text arena, found through a table of 64-bit hashes; patients are
//! interned as indexes; an event costs about 40 bytes plus its id.
//!
//! The state is checkpointed as an [`AdmissionSnapshot`]: the id arena, the
//! stored events, the patients and the centres' pseudonyms. The hash index
//! of ids is not stored; it is rebuilt on restore, which also proves the
//! snapshot's chains of ids sharing a hash are the ones the fold made.

use std::{
    collections::HashMap,
    fmt,
    hash::{BuildHasherDefault, Hasher},
};

use crate::{
    FieldError, Refusal,
    date::ClinicalDate,
    event::{Event, EventBody, EventType},
    ids::Centre,
    ndjson,
    snapshot::SnapshotError,
};

use serde::{Deserialize, Serialize};

/// Whose events a writer may write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriterScope {
    /// An administrator or an import run by the operator: any centre.
    AnyCentre,
    /// A writer of one centre: only that centre's events.
    Centre(Centre),
}

/// What admission decides about one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Append it; the warnings (possibly none) go back to the writer.
    Accepted { warnings: Vec<FieldError> },
    /// Already stored with the same content: succeed, append nothing.
    Duplicate,
    /// The `event_id` is already stored with other content; the first one
    /// stays. The reason names `event_id`.
    Conflict(FieldError),
    /// Not appended, with every reason.
    Refused(Refusal),
}

impl Verdict {
    /// True for a verdict that succeeds for the writer (accepted or duplicate).
    pub fn is_success(&self) -> bool {
        matches!(self, Verdict::Accepted { .. } | Verdict::Duplicate)
    }
}

/// A line judged whole: the event when it could be read, and the verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct LineVerdict {
    /// The event, when the line is a valid event (whatever the verdict).
    pub event: Option<Event>,
    pub verdict: Verdict,
}

/// The minimum interval between injections (audit standard INT-1), in days.
pub const MINIMUM_INTERVAL_DAYS: i64 = 84;

/// Marks the end of a chain of events whose ids share a hash.
const NO_EVENT: u32 = u32::MAX;

/// What admission remembers of one stored event.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct StoredEvent {
    /// [`content_fingerprint`] of the event, as two halves to keep the
    /// struct 8-byte aligned (and so 40 bytes, not 48).
    fingerprint: [u64; 2],
    /// Where the id starts in the arena.
    id_start: u64,
    /// The patient's index in `patients`.
    patient: u32,
    /// The clinical date, as days since 1970-01-01.
    occurred_on: i32,
    /// The next (earlier) event whose id has the same 64-bit hash.
    next_same_hash: u32,
    /// Length of the id in the arena (at most 64).
    id_length: u8,
    #[serde(with = "crate::snapshot::code")]
    event_type: EventType,
    voided: bool,
}

/// What admission remembers of one patient.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PatientState {
    registered: bool,
    /// Live (not voided) injections: (clinical date in days, event index).
    live_injections: Vec<(i32, u32)>,
}

/// The format of an [`AdmissionSnapshot`]: bumped whenever the stored
/// structs change shape or meaning, so an old snapshot is refused.
///
/// 2: the stored fingerprints are [`content_fingerprint`]s, no longer the
/// xxh3-128 of the canonical line (a format-1 snapshot's fingerprints would
/// turn every duplicate into a conflict, so it is refused and the log
/// refolded).
pub const ADMISSION_SNAPSHOT_FORMAT: u32 = 2;

/// The admission state as a plain serde value (see [`Admission::snapshot`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdmissionSnapshot {
    format: u32,
    id_arena: String,
    events: Vec<StoredEvent>,
    /// Centres in interned order, each with its pseudonyms → patient index.
    centres: Vec<(String, Vec<(String, u32)>)>,
    patients: Vec<PatientState>,
}

impl AdmissionSnapshot {
    /// Number of events the snapshot's state had folded in.
    pub fn event_count(&self) -> usize {
        self.events.len()
    }
}

/// The log state that admission checks against: a fold of stored events.
#[derive(Default)]
pub struct Admission {
    /// Every event id, back to back.
    id_arena: String,
    /// 64-bit hash of an id → index of the latest event with that hash.
    id_index: HashMap<u64, u32, BuildHasherDefault<PassThroughHasher>>,
    events: Vec<StoredEvent>,
    /// Centre → its index in `patient_index`.
    centre_index: HashMap<Box<str>, u32>,
    /// Per centre: pseudonym → patient index.
    patient_index: Vec<HashMap<Box<str>, u32>>,
    patients: Vec<PatientState>,
}

impl fmt::Debug for Admission {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Admission")
            .field("events", &self.events.len())
            .field("patients", &self.patients.len())
            .field("centres", &self.centre_index.len())
            .finish()
    }
}

impl Admission {
    pub fn new() -> Self {
        Self::default()
    }

    /// The whole state as a plain serde value, to be restored by
    /// [`Admission::from_snapshot`]. Copies the state.
    pub fn snapshot(&self) -> AdmissionSnapshot {
        let mut centres = vec![(String::new(), Vec::new()); self.patient_index.len()];
        for (name, index) in &self.centre_index {
            if let Some(entry) = centres.get_mut(*index as usize) {
                let mut patients: Vec<(String, u32)> = self.patient_index[*index as usize]
                    .iter()
                    .map(|(pseudonym, patient)| (pseudonym.to_string(), *patient))
                    .collect();
                patients.sort_unstable_by_key(|(_, patient)| *patient);
                *entry = (name.to_string(), patients);
            }
        }
        AdmissionSnapshot {
            format: ADMISSION_SNAPSHOT_FORMAT,
            id_arena: self.id_arena.clone(),
            events: self.events.clone(),
            centres,
            patients: self.patients.clone(),
        }
    }

    /// Rebuilds the state a snapshot was taken of. Refuses a snapshot of
    /// another format or one whose indices do not hold together.
    pub fn from_snapshot(snapshot: AdmissionSnapshot) -> Result<Self, SnapshotError> {
        let inconsistent = |reason: String| SnapshotError::Inconsistent(reason);
        if snapshot.format != ADMISSION_SNAPSHOT_FORMAT {
            return Err(SnapshotError::Format {
                found: snapshot.format,
                expected: ADMISSION_SNAPSHOT_FORMAT,
            });
        }
        let mut admission = Admission {
            id_arena: snapshot.id_arena,
            events: snapshot.events,
            patients: snapshot.patients,
            ..Admission::default()
        };
        let event_count = admission.events.len();
        if u32::try_from(event_count).is_err() {
            return Err(inconsistent(format!("{event_count} events")));
        }
        for index in 0..event_count {
            let stored = admission.events[index];
            let start = usize::try_from(stored.id_start).unwrap_or(usize::MAX);
            let end = start.saturating_add(usize::from(stored.id_length));
            let Some(event_id) = admission.id_arena.get(start..end) else {
                return Err(inconsistent(format!("event {index}: id outside the arena")));
            };
            if stored.patient as usize >= admission.patients.len() {
                return Err(inconsistent(format!("event {index}: unknown patient")));
            }
            // Fits: event_count was checked to fit a u32 above.
            let position = index as u32;
            let previous = admission
                .id_index
                .insert(hash_id(event_id), position)
                .unwrap_or(NO_EVENT);
            if previous != stored.next_same_hash {
                return Err(inconsistent(format!(
                    "event {index}: its chain of ids sharing a hash is not the fold's"
                )));
            }
        }
        for (index, patient) in admission.patients.iter().enumerate() {
            if let Some((_, injection)) = patient
                .live_injections
                .iter()
                .find(|(_, injection)| *injection as usize >= event_count)
            {
                return Err(inconsistent(format!(
                    "patient {index}: unknown injection {injection}"
                )));
            }
        }
        let mut owned = vec![false; admission.patients.len()];
        for (centre_number, (centre, patients)) in snapshot.centres.into_iter().enumerate() {
            let mut index = HashMap::with_capacity(patients.len());
            for (pseudonym, patient) in patients {
                match owned.get_mut(patient as usize) {
                    Some(taken) if !*taken => *taken = true,
                    _ => {
                        return Err(inconsistent(format!(
                            "centre {centre}: patient {pseudonym} has an unknown or shared index"
                        )));
                    }
                }
                index.insert(pseudonym.into_boxed_str(), patient);
            }
            // Centres number a few dozen: the index fits a u32.
            let centre_index = u32::try_from(centre_number).unwrap_or(u32::MAX);
            if admission
                .centre_index
                .insert(centre.into_boxed_str(), centre_index)
                .is_some()
            {
                return Err(inconsistent("a centre is listed twice".to_owned()));
            }
            admission.patient_index.push(index);
        }
        if owned.iter().any(|taken| !*taken) {
            return Err(inconsistent("a patient belongs to no centre".to_owned()));
        }
        Ok(admission)
    }

    /// Number of events folded in.
    pub fn event_count(&self) -> usize {
        self.events.len()
    }

    /// True when an event with this id is stored.
    pub fn contains_event_id(&self, event_id: &str) -> bool {
        self.find_event(event_id).is_some()
    }

    /// True when the (centre, patient) pair is registered.
    pub fn is_registered(&self, centre: &str, patient: &str) -> bool {
        self.find_patient(centre, patient)
            .is_some_and(|index| self.patients[index as usize].registered)
    }

    /// Folds a stored (accepted) event into the state. An id already folded
    /// in is ignored: the log never holds one twice, and the first one stays.
    pub fn apply(&mut self, event: &Event) {
        let event_id = event.event_id.as_str();
        if self.contains_event_id(event_id) {
            return;
        }
        let Ok(index) = u32::try_from(self.events.len()) else {
            // Four billion events is beyond what one fold is built for; the
            // remaining events are not admitted rather than misindexed.
            return;
        };
        if index == NO_EVENT {
            return;
        }
        let patient = self.intern_patient(event.centre.as_str(), event.patient.as_str());
        let occurred_on = event.occurred_on.days_since_epoch();
        match &event.body {
            EventBody::PatientRegistered(_) => {
                self.patients[patient as usize].registered = true;
            }
            EventBody::InjectionAdministered(_) => {
                self.patients[patient as usize]
                    .live_injections
                    .push((occurred_on, index));
            }
            EventBody::EventVoided(void) => {
                if let Some(target) = self.find_event(void.target_event_id.as_str()) {
                    let stored = &mut self.events[target as usize];
                    stored.voided = true;
                    if stored.event_type == EventType::InjectionAdministered {
                        let owner = stored.patient as usize;
                        self.patients[owner]
                            .live_injections
                            .retain(|(_, injection)| *injection != target);
                    }
                }
            }
            _ => {}
        }
        let fingerprint = content_fingerprint(event);
        let hash = hash_id(event_id);
        let next_same_hash = self.id_index.insert(hash, index).unwrap_or(NO_EVENT);
        let id_start = self.id_arena.len() as u64;
        self.id_arena.push_str(event_id);
        self.events.push(StoredEvent {
            // Splitting a u128 into its two u64 halves: the casts keep
            // exactly the bits of each half.
            fingerprint: [(fingerprint >> 64) as u64, fingerprint as u64],
            id_start,
            patient,
            occurred_on,
            next_same_hash,
            // An EventId is at most 64 characters, all ASCII.
            id_length: u8::try_from(event_id.len()).unwrap_or(u8::MAX),
            event_type: event.event_type(),
            voided: false,
        });
    }

    /// Decides whether `event` may be appended now, by `writer`. Does not
    /// change the state: call [`Admission::apply`] once it is stored, or use
    /// [`Admission::check_and_apply`].
    pub fn check(&self, event: &Event, writer: &WriterScope) -> Verdict {
        let event_id = event.event_id.as_str();
        if let Some(stored) = self.find_event(event_id) {
            // The content identity is computed only here: a new id (the
            // common case) never pays for it until it is applied.
            let fingerprint = content_fingerprint(event);
            let stored = &self.events[stored as usize];
            let same = stored.fingerprint == [(fingerprint >> 64) as u64, fingerprint as u64];
            return if same {
                Verdict::Duplicate
            } else {
                Verdict::Conflict(conflict_reason(event_id))
            };
        }

        let mut reasons = Vec::new();
        if let WriterScope::Centre(own) = writer
            && own != &event.centre
        {
            reasons.push(FieldError::new(
                "centre",
                format!(
                    "a writer for centre {own} may only write events of its own centre, not {}",
                    event.centre
                ),
            ));
        }

        let patient = self.find_patient(event.centre.as_str(), event.patient.as_str());
        let registered = patient.is_some_and(|index| self.patients[index as usize].registered);
        let patient_key = event.patient_key();
        match &event.body {
            EventBody::PatientRegistered(_) if registered => {
                reasons.push(FieldError::new(
                    "patient",
                    format!("patient {patient_key} is already registered"),
                ));
            }
            EventBody::PatientRegistered(_) => {}
            _ if !registered => {
                reasons.push(FieldError::new(
                    "patient",
                    format!(
                        "patient {patient_key} is not registered: a patient_registered event must come first"
                    ),
                ));
            }
            _ => {}
        }

        match &event.body {
            EventBody::ResponseAssessed(response) => {
                self.check_response(
                    event,
                    response.injection_event_id.as_str(),
                    patient,
                    &mut reasons,
                );
            }
            EventBody::EventVoided(void) => {
                self.check_void(void.target_event_id.as_str(), patient, &mut reasons);
            }
            _ => {}
        }

        if !reasons.is_empty() {
            return Verdict::Refused(Refusal::from(reasons));
        }
        Verdict::Accepted {
            warnings: self.warnings(event, patient),
        }
    }

    fn check_response(
        &self,
        event: &Event,
        injection_event_id: &str,
        patient: Option<u32>,
        reasons: &mut Vec<FieldError>,
    ) {
        const FIELD: &str = "injection_event_id";
        let Some(target) = self.find_event(injection_event_id) else {
            reasons.push(FieldError::new(
                FIELD,
                format!("no event {injection_event_id} is in the log"),
            ));
            return;
        };
        let target = &self.events[target as usize];
        if target.event_type != EventType::InjectionAdministered {
            reasons.push(FieldError::new(
                FIELD,
                format!(
                    "event {injection_event_id} is a {}, not an injection_administered",
                    target.event_type
                ),
            ));
        } else if Some(target.patient) != patient {
            reasons.push(FieldError::new(
                FIELD,
                format!("injection {injection_event_id} is of another patient"),
            ));
        } else if target.voided {
            reasons.push(FieldError::new(
                FIELD,
                format!("injection {injection_event_id} was voided"),
            ));
        } else if event.occurred_on.days_since_epoch() < target.occurred_on {
            let injected_on = ClinicalDate::from_days_since_epoch(target.occurred_on)
                .map_or_else(String::new, |date| format!(" ({date})"));
            reasons.push(FieldError::new(
                "occurred_on",
                format!(
                    "is before the date of the assessed injection {injection_event_id}{injected_on}"
                ),
            ));
        }
    }

    fn check_void(
        &self,
        target_event_id: &str,
        patient: Option<u32>,
        reasons: &mut Vec<FieldError>,
    ) {
        const FIELD: &str = "target_event_id";
        let Some(target) = self.find_event(target_event_id) else {
            reasons.push(FieldError::new(
                FIELD,
                format!("no event {target_event_id} is in the log"),
            ));
            return;
        };
        let target = &self.events[target as usize];
        let reason = if Some(target.patient) != patient {
            format!("event {target_event_id} is of another patient")
        } else if target.event_type == EventType::PatientRegistered {
            format!("event {target_event_id} is a patient_registered, which cannot be voided")
        } else if target.event_type == EventType::EventVoided {
            format!("event {target_event_id} is an event_voided, which cannot be voided")
        } else if target.voided {
            format!("event {target_event_id} is already voided")
        } else {
            return;
        };
        reasons.push(FieldError::new(FIELD, reason));
    }

    fn warnings(&self, event: &Event, patient: Option<u32>) -> Vec<FieldError> {
        let mut warnings = Vec::new();
        let EventBody::InjectionAdministered(injection) = &event.body else {
            return warnings;
        };
        if injection.exceeds_label_maximum() {
            warnings.push(FieldError::new(
                "total_units",
                format!(
                    "{} units is above the label maximum of {} for {}",
                    injection.total_units(),
                    injection.product().label_maximum_units(),
                    injection.product()
                ),
            ));
        }
        // The new injection comes last in log order, so among the patient's
        // live injections on or before its date, the latest date is the
        // previous one in clinical order.
        let occurred_on = event.occurred_on.days_since_epoch();
        let previous = patient.and_then(|patient| {
            self.patients[patient as usize]
                .live_injections
                .iter()
                .filter(|(date, _)| *date <= occurred_on)
                .max_by_key(|(date, index)| (*date, *index))
                .copied()
        });
        if let Some((previous_date, previous_index)) = previous {
            let days = i64::from(occurred_on) - i64::from(previous_date);
            if days < MINIMUM_INTERVAL_DAYS {
                warnings.push(FieldError::new(
                    "occurred_on",
                    format!(
                        "only {days} days after the patient's previous injection {}; the standard is at least {MINIMUM_INTERVAL_DAYS} days",
                        self.event_id_at(previous_index)
                    ),
                ));
            }
        }
        warnings
    }

    /// Checks `event` and, when it is accepted, folds it in: a file is
    /// checked "as if each accepted line had been appended before the next".
    pub fn check_and_apply(&mut self, event: &Event, writer: &WriterScope) -> Verdict {
        let verdict = self.check(event, writer);
        if matches!(verdict, Verdict::Accepted { .. }) {
            self.apply(event);
        }
        verdict
    }

    /// Decides about an input that may not have been a valid event.
    ///
    /// The duplicate and conflict check comes before every other, so an
    /// input that validation refused still gets a conflict (not a refusal)
    /// when its `event_id` (as peeked by [`ndjson::event_id_of_line`], or
    /// read from a gRPC message) is already stored: a stored event is valid,
    /// so an input that is not cannot have the same content. Otherwise a
    /// refused input stays refused, and a valid one goes through
    /// [`Admission::check`].
    pub fn check_parsed(
        &self,
        event_id: Option<&str>,
        parsed: &Result<Event, Refusal>,
        writer: &WriterScope,
    ) -> Verdict {
        match parsed {
            Ok(event) => self.check(event, writer),
            Err(refusal) => match event_id {
                Some(event_id) if self.contains_event_id(event_id) => {
                    Verdict::Conflict(conflict_reason(event_id))
                }
                _ => Verdict::Refused(refusal.clone()),
            },
        }
    }

    /// Reads and judges one line of an interchange file (see
    /// [`Admission::check_parsed`]), without folding it in.
    pub fn check_line(&self, line: &str, today: ClinicalDate, writer: &WriterScope) -> LineVerdict {
        let parsed = ndjson::parse_line(line, today);
        let verdict = match &parsed {
            Ok(event) => self.check(event, writer),
            Err(_) => {
                let event_id = ndjson::event_id_of_line(line);
                self.check_parsed(event_id.as_deref(), &parsed, writer)
            }
        };
        LineVerdict {
            event: parsed.ok(),
            verdict,
        }
    }

    /// Like [`Admission::check_line`], and folds the event in when it is
    /// accepted, so the next line is checked as if this one were appended.
    pub fn check_line_and_apply(
        &mut self,
        line: &str,
        today: ClinicalDate,
        writer: &WriterScope,
    ) -> LineVerdict {
        let outcome = self.check_line(line, today, writer);
        if let (Verdict::Accepted { .. }, Some(event)) = (&outcome.verdict, &outcome.event) {
            self.apply(event);
        }
        outcome
    }

    fn event_id_at(&self, index: u32) -> &str {
        let stored = &self.events[index as usize];
        // `id_start` and `id_length` were taken from this arena when the id
        // was pushed, at character boundaries (ids are ASCII).
        let start = usize::try_from(stored.id_start).unwrap_or(usize::MAX);
        self.id_arena
            .get(start..start.saturating_add(usize::from(stored.id_length)))
            .unwrap_or("")
    }

    fn find_event(&self, event_id: &str) -> Option<u32> {
        let mut candidate = *self.id_index.get(&hash_id(event_id))?;
        while candidate != NO_EVENT {
            if self.event_id_at(candidate) == event_id {
                return Some(candidate);
            }
            candidate = self.events[candidate as usize].next_same_hash;
        }
        None
    }

    fn find_patient(&self, centre: &str, patient: &str) -> Option<u32> {
        let centre = *self.centre_index.get(centre)?;
        self.patient_index[centre as usize].get(patient).copied()
    }

    fn intern_patient(&mut self, centre: &str, patient: &str) -> u32 {
        if let Some(index) = self.find_patient(centre, patient) {
            return index;
        }
        let centre_index = match self.centre_index.get(centre) {
            Some(index) => *index,
            None => {
                // Centres number a few dozen: an index of u32 cannot run out.
                let index = u32::try_from(self.patient_index.len()).unwrap_or(u32::MAX);
                self.centre_index.insert(centre.into(), index);
                self.patient_index.push(HashMap::new());
                index
            }
        };
        // Patients number far below four billion; see `apply` for events.
        let index = u32::try_from(self.patients.len()).unwrap_or(u32::MAX);
        self.patients.push(PatientState::default());
        self.patient_index[centre_index as usize].insert(patient.into(), index);
        index
    }
}

fn conflict_reason(event_id: &str) -> FieldError {
    FieldError::new(
        "event_id",
        format!("event id {event_id} is already stored with other content; the first one stays"),
    )
}

/// The content identity of an event, as admission stores and compares it:
/// the same `event_id` with the same fingerprint is a duplicate, with another
/// one a conflict.
///
/// It is the xxh3-128 (default seed, so the same on every run and machine:
/// it is persisted in [`AdmissionSnapshot`]) of the event's fields written one
/// after another, in the canonical line's order ([`ndjson::to_line`]): each string
/// with its length before it, each integer at a fixed width, each optional
/// value behind a presence byte and the muscles behind their count. That
/// encoding is injective, so two events have the same fingerprint exactly
/// when their canonical lines are equal (up to a 128-bit collision), as the
/// fingerprint of the canonical line ([`ndjson::fingerprint`]) had; it is
/// built without formatting the line, which cost about a third of ingest's
/// own time. Changing what is fed in changes stored fingerprints: bump
/// [`ADMISSION_SNAPSHOT_FORMAT`].
pub fn content_fingerprint(event: &Event) -> u128 {
    let mut hasher = FieldHasher(Vec::with_capacity(256));
    // Names what is hashed, so the fingerprint of another kind of content
    // can never be mistaken for an event's.
    hasher.text("toxaudit.event.v1");
    hasher.text(event.event_id.as_str());
    hasher.text(event.centre.as_str());
    hasher.text(event.patient.as_str());
    hasher.integer(i64::from(event.occurred_on.days_since_epoch()));
    hasher.text(event.event_type().as_str());
    match &event.body {
        EventBody::PatientRegistered(body) => {
            hasher.optional_integer(body.birth_year.map(i64::from));
            hasher.optional_text(body.sex.map(|sex| sex.as_str()));
            hasher.optional_integer(body.onset_year.map(i64::from));
        }
        EventBody::InjectionAdministered(body) => {
            hasher.text(body.product().as_str());
            hasher.integer(i64::from(body.total_units()));
            hasher.text(body.guidance().as_str());
            // A slice's length fits an i64 on every supported target.
            hasher.integer(i64::try_from(body.muscles().len()).unwrap_or(i64::MAX));
            for dose in body.muscles() {
                hasher.text(dose.muscle.as_str());
                hasher.text(dose.side.as_str());
                hasher.integer(i64::from(dose.units));
            }
        }
        EventBody::ResponseAssessed(body) => {
            hasher.text(body.injection_event_id.as_str());
            hasher.text(body.rating.as_str());
            hasher.optional_integer(body.percent_improvement.map(i64::from));
            hasher.optional_integer(body.benefit_weeks.map(i64::from));
            hasher.optional_integer(body.twstrs_total.map(i64::from));
        }
        EventBody::ResistanceTested(body) => {
            hasher.text(body.method.as_str());
            hasher.text(body.result.as_str());
            // The line writes -0.0 and 0.0 alike (validation keeps one of
            // them anyway); every other finite titre has its own bits and
            // its own shortest decimal.
            hasher.optional_integer(body.titre_mu_per_ml.map(|titre| {
                let titre = if titre == 0.0 { 0.0 } else { titre };
                // The bits, as an integer: a reinterpretation, not a cast.
                i64::from_ne_bytes(titre.to_bits().to_ne_bytes())
            }));
        }
        EventBody::ReferralMade(body) => hasher.text(body.target.as_str()),
        EventBody::TreatmentDiscontinued(body) => hasher.text(&body.reason),
        EventBody::EventVoided(body) => {
            hasher.text(body.target_event_id.as_str());
            hasher.text(&body.reason);
        }
    }
    xxhash_rust::xxh3::xxh3_128(&hasher.0)
}

/// An event's fields in an injective, fixed (little-endian) encoding, in
/// one buffer hashed at once (faster than xxh3's streaming state for inputs
/// this short, and the same hash); see [`content_fingerprint`].
struct FieldHasher(Vec<u8>);

impl FieldHasher {
    fn integer(&mut self, value: i64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn text(&mut self, value: &str) {
        // A string's length fits an i64 on every supported target.
        self.integer(i64::try_from(value.len()).unwrap_or(i64::MAX));
        self.0.extend_from_slice(value.as_bytes());
    }

    fn optional_integer(&mut self, value: Option<i64>) {
        match value {
            Some(value) => {
                self.0.push(1);
                self.integer(value);
            }
            None => self.0.push(0),
        }
    }

    fn optional_text(&mut self, value: Option<&str>) {
        match value {
            Some(value) => {
                self.0.push(1);
                self.text(value);
            }
            None => self.0.push(0),
        }
    }
}

/// The 64-bit hash of an event id that keys the id index. Ids sharing a hash
/// are chained, so a collision (chance or crafted) costs time, never
/// correctness.
fn hash_id(event_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(event_id.as_bytes())
}

/// A hasher for keys that already are well-mixed 64-bit hashes.
#[derive(Debug, Default, Clone, Copy)]
struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; other input is still mixed in.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_event_stays_forty_bytes() {
        assert_eq!(std::mem::size_of::<StoredEvent>(), 40);
    }

    #[test]
    fn ids_with_the_same_hash_are_told_apart() {
        // Force a chain by pushing two entries under one hash by hand.
        let mut admission = Admission::new();
        let line = |id: &str| {
            format!(
                r#"{{"event_id":"{id}","centre":"leeds","patient":"L-1","occurred_on":"2020-01-01","type":"patient_registered"}}"#
            )
        };
        let today = ClinicalDate::from_ymd(2026, 11, 25).unwrap();
        let first = ndjson::parse_line(&line("a"), today).unwrap();
        admission.apply(&first);
        // Re-key "a" under the hash of "b" so "b" must walk the chain.
        let index = admission.id_index.remove(&hash_id("a")).unwrap();
        admission.id_index.insert(hash_id("b"), index);
        let mut second = ndjson::parse_line(&line("b"), today).unwrap();
        second.patient = crate::ids::Pseudonym::parse("L-2").unwrap();
        admission.apply(&second);
        assert_eq!(admission.find_event("b"), Some(1));
        assert_eq!(admission.events[1].next_same_hash, 0);
        assert_eq!(admission.event_id_at(0), "a");
    }
}
