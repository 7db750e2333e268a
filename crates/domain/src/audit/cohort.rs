//! The cohort projection: every patient's compact log, folded one event at a
//! time, and the running report totals. Applying an event touches only its
//! patient, who is marked dirty; the next report re-assesses the dirty
//! patients alone and moves the totals by the difference, so a live report
//! after each event costs as much as that patient's history, not the whole
//! network's.
//!
//! A cohort is checkpointed as a [`CohortSnapshot`]: the interned centres
//! and each patient's compact log, with the rule set and parameters they
//! were folded with. The report totals are not stored: a restored cohort
//! marks every patient changed, so its first report re-assesses them all
//! and equals a fold from scratch by construction.

use std::{collections::HashMap, hash::BuildHasher};

use hashbrown::HashTable;
use serde::{Deserialize, Serialize};

use crate::{
    audit::{
        AuditReport, PatientAssessment, PatientSummary, RULE_SET, RuleParameters,
        assessment::{summary_of_analysis, view_of},
        engine::{PatientLog, analyse},
        report::{Share, Tally, build_report},
    },
    event::RecordedEvent,
    ids::{Centre, PatientKey, Pseudonym},
    snapshot::SnapshotError,
};

/// The format of a [`CohortSnapshot`]: bumped whenever the compact structs
/// it holds change shape or meaning, so an old snapshot is refused (and the
/// service rebuilds) rather than misread.
pub const COHORT_SNAPSHOT_FORMAT: u32 = 2;

/// A cohort's whole state as a plain serde value (see [`Cohort::snapshot`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CohortSnapshot {
    format: u32,
    rule_set: String,
    parameters: RuleParameters,
    /// Centres in interned order.
    centres: Vec<String>,
    /// Patients in interned order.
    patients: Vec<PatientSnapshot>,
    events_applied: u64,
}

impl CohortSnapshot {
    /// The parameters the snapshot's cohort was folded with.
    pub fn parameters(&self) -> &RuleParameters {
        &self.parameters
    }

    /// How many events the snapshot's cohort had applied.
    pub fn events_applied(&self) -> u64 {
        self.events_applied
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PatientSnapshot {
    centre: u32,
    patient: String,
    log: PatientLog,
}

fn describe(parameters: &RuleParameters) -> String {
    parameters
        .named_values()
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every patient's slot by (centre, pseudonym), the names themselves
/// hashed: one hash and one probe per event, with no centre interned first.
///
/// The table holds slot indices only; a probe compares the slot's own
/// centre and pseudonym, so two names with one hash are still two patients
/// (no collision can merge them). The hash is xxh3 with a seed drawn at
/// random per cohort, so names chosen to collide cannot be prepared in
/// advance; nothing hashed is ever stored (a restored cohort hashes its
/// names again).
///
/// This replaced, per event, a SipHash of the centre's name into a
/// `HashMap<String, u32>` and then an xxh3 of the pseudonym into a second
/// map (with a third for colliding hashes): about a fifth fewer
/// instructions per `Cohort::apply` (callgrind, `replay_fold` bench).
#[derive(Debug)]
struct PatientIndex {
    slots: HashTable<u32>,
    seed: u64,
}

impl Default for PatientIndex {
    fn default() -> Self {
        Self {
            slots: HashTable::new(),
            seed: std::hash::RandomState::new().hash_one(0_u8),
        }
    }
}

/// The hash of a patient's names: the pseudonym's, seeded with the
/// centre's (xxh3 takes a 64-bit seed; two short inputs cost less than one
/// streamed tuple).
fn names_hash(seed: u64, centre: &str, patient: &str) -> u64 {
    use xxhash_rust::xxh3::xxh3_64_with_seed;
    xxh3_64_with_seed(
        patient.as_bytes(),
        xxh3_64_with_seed(centre.as_bytes(), seed),
    )
}

impl PatientIndex {
    fn hash(&self, centre: &str, patient: &str) -> u64 {
        names_hash(self.seed, centre, patient)
    }

    /// The slot of `patient` at `centre` (whose names hash to `hash`).
    fn find(
        &self,
        hash: u64,
        centre: &str,
        patient: &str,
        patients: &[PatientSlot],
        centres: &[Centre],
    ) -> Option<u32> {
        self.slots
            .find(hash, |&slot| {
                let slot = &patients[slot as usize];
                slot.patient.as_str() == patient && centres[slot.centre as usize].as_str() == centre
            })
            .copied()
    }

    /// Adds `slot`, the last of `patients`, which is not in the index yet.
    fn insert(&mut self, hash: u64, slot: u32, patients: &[PatientSlot], centres: &[Centre]) {
        let seed = self.seed;
        self.slots.insert_unique(hash, slot, |&slot| {
            let slot = &patients[slot as usize];
            names_hash(
                seed,
                centres[slot.centre as usize].as_str(),
                slot.patient.as_str(),
            )
        });
    }
}

/// A patient's number in a cohort: patients are numbered 0, 1, 2, … in
/// order of their first event, and a cohort restored from a snapshot keeps
/// the numbers. Handed out by [`Cohort`] as it folds, so a follower can keep
/// what it tracks per patient in a plain vector instead of hashing the
/// patient's names again for every event (assessment's pending changes).
/// Meaningful only for the cohort that handed it out, or one restored
/// from its snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PatientNumber(u32);

impl PatientNumber {
    /// The number as an index (0 for the first patient).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// One patient in the cohort.
#[derive(Debug)]
struct PatientSlot {
    centre: u32,
    patient: Pseudonym,
    log: PatientLog,
    /// The share last added to the totals.
    share: Share,
    /// Changed since the share was computed.
    dirty: bool,
}

/// The audit of a whole network, kept up to date one event at a time.
///
/// Patients and centres are interned as `u32` indices into `patients` and
/// `centres`/`totals`. Only this struct hands those indices out, right after
/// pushing the entry they name, and nothing is ever removed, so indexing
/// with them cannot fail. (A `u32` holds four billion patients or centres.)
#[derive(Debug)]
pub struct Cohort {
    parameters: RuleParameters,
    /// Interned centres, in order of first appearance.
    centres: Vec<Centre>,
    /// Read only for a patient's first event (the index finds the others).
    centre_index: HashMap<String, u32>,
    patients: Vec<PatientSlot>,
    patient_index: PatientIndex,
    /// Patients changed since the last report.
    dirty: Vec<u32>,
    /// Per centre (by interned index): the sum of its patients' shares.
    totals: Vec<Tally>,
    events_applied: u64,
}

impl Cohort {
    pub fn new(parameters: RuleParameters) -> Self {
        Self {
            parameters,
            centres: Vec::new(),
            centre_index: HashMap::new(),
            patients: Vec::new(),
            patient_index: PatientIndex::default(),
            dirty: Vec::new(),
            totals: Vec::new(),
            events_applied: 0,
        }
    }

    pub fn parameters(&self) -> &RuleParameters {
        &self.parameters
    }

    /// The whole state as a plain serde value, to be restored by
    /// [`Cohort::from_snapshot`]. Copies every patient's compact log.
    pub fn snapshot(&self) -> CohortSnapshot {
        CohortSnapshot {
            format: COHORT_SNAPSHOT_FORMAT,
            rule_set: RULE_SET.to_owned(),
            parameters: self.parameters,
            centres: self
                .centres
                .iter()
                .map(|centre| centre.as_str().to_owned())
                .collect(),
            patients: self
                .patients
                .iter()
                .map(|slot| PatientSnapshot {
                    centre: slot.centre,
                    patient: slot.patient.as_str().to_owned(),
                    log: slot.log.clone(),
                })
                .collect(),
            events_applied: self.events_applied,
        }
    }

    /// Rebuilds the cohort a snapshot was taken of, for a service running
    /// with `parameters`. Refuses a snapshot of another format, rule set or
    /// parameters, or one that does not hold together; the caller then
    /// folds the log from scratch.
    pub fn from_snapshot(
        snapshot: CohortSnapshot,
        parameters: &RuleParameters,
    ) -> Result<Self, SnapshotError> {
        if snapshot.format != COHORT_SNAPSHOT_FORMAT {
            return Err(SnapshotError::Format {
                found: snapshot.format,
                expected: COHORT_SNAPSHOT_FORMAT,
            });
        }
        if snapshot.rule_set != RULE_SET {
            return Err(SnapshotError::RuleSet {
                found: snapshot.rule_set,
                expected: RULE_SET.to_owned(),
            });
        }
        if snapshot.parameters != *parameters {
            return Err(SnapshotError::Parameters {
                found: describe(&snapshot.parameters),
                expected: describe(parameters),
            });
        }
        let mut cohort = Cohort::new(snapshot.parameters);
        for (index, text) in snapshot.centres.iter().enumerate() {
            let centre = Centre::parse(text).map_err(|reason| {
                SnapshotError::Inconsistent(format!("centre {index}: {reason}"))
            })?;
            if cohort.intern_centre(&centre) as usize != index {
                return Err(SnapshotError::Inconsistent(format!(
                    "centre {text} is listed twice"
                )));
            }
        }
        for (index, patient) in snapshot.patients.into_iter().enumerate() {
            if patient.centre as usize >= cohort.centres.len() {
                return Err(SnapshotError::Inconsistent(format!(
                    "patient {index} names centre {}, of {} centres",
                    patient.centre,
                    cohort.centres.len()
                )));
            }
            let pseudonym = Pseudonym::parse(&patient.patient).map_err(|reason| {
                SnapshotError::Inconsistent(format!("patient {index}: {reason}"))
            })?;
            patient.log.check_restored().map_err(|reason| {
                SnapshotError::Inconsistent(format!("patient {}: {reason}", patient.patient))
            })?;
            let centre = cohort.centres[patient.centre as usize].clone();
            let hash = cohort
                .patient_index
                .hash(centre.as_str(), pseudonym.as_str());
            if cohort.find_patient(hash, &centre, &pseudonym).is_some() {
                return Err(SnapshotError::Inconsistent(format!(
                    "patient {} is listed twice",
                    patient.patient
                )));
            }
            let slot = cohort.add_patient(hash, &centre, &pseudonym);
            // Not assessed yet: the first report assesses every patient.
            cohort.patients[index].log = patient.log;
            cohort.patients[index].dirty = true;
            cohort.dirty.push(slot);
        }
        cohort.events_applied = snapshot.events_applied;
        Ok(cohort)
    }

    /// How many events have been applied (every event, whatever it changed).
    pub fn events_applied(&self) -> u64 {
        self.events_applied
    }

    /// Folds one recorded event. Each patient's events must come in that
    /// patient's log order; patients may interleave in any way.
    pub fn apply(&mut self, recorded: &RecordedEvent) {
        self.apply_with(recorded, |log, _| (log.apply(recorded), ()));
    }

    /// [`Cohort::apply`], telling the number of the event's patient (the
    /// numbering's property test; services use `apply_and_compare_numbered`).
    #[cfg(test)]
    fn apply_numbered(&mut self, recorded: &RecordedEvent) -> PatientNumber {
        self.apply_with(recorded, |log, _| (log.apply(recorded), ()))
            .0
    }

    /// Folds one recorded event as [`Cohort::apply`] does, finding its
    /// patient once: `fold` applies it to the patient's log (with the
    /// cohort's parameters) and says whether the log changed; what it
    /// returns besides is handed back, with the patient's number. For
    /// `audit::change`, which looks at the log before and after the event
    /// (added by the assessment work: one patient lookup per record instead
    /// of three).
    pub(crate) fn apply_with<T>(
        &mut self,
        recorded: &RecordedEvent,
        fold: impl FnOnce(&mut PatientLog, &RuleParameters) -> (bool, T),
    ) -> (PatientNumber, T) {
        self.events_applied += 1;
        let event = &recorded.event;
        let hash = self
            .patient_index
            .hash(event.centre.as_str(), event.patient.as_str());
        let slot = match self.find_patient(hash, &event.centre, &event.patient) {
            Some(slot) => slot,
            None => self.add_patient(hash, &event.centre, &event.patient),
        };
        let patient = &mut self.patients[slot as usize];
        let (changed, value) = fold(&mut patient.log, &self.parameters);
        if changed && !patient.dirty {
            patient.dirty = true;
            self.dirty.push(slot);
        }
        (PatientNumber(slot), value)
    }

    /// The report: `all` plus one scope per centre with a registered patient.
    pub fn report(&mut self) -> AuditReport {
        self.refresh();
        build_report(
            &self.parameters,
            self.centres
                .iter()
                .map(Centre::as_str)
                .zip(self.totals.iter()),
        )
    }

    /// One patient's assessment, or `None` when the cohort has never seen an
    /// event of theirs.
    pub fn patient(&self, key: &PatientKey) -> Option<PatientAssessment> {
        let slot = self.slot_of(&key.centre, &key.patient)?;
        let patient = &self.patients[slot as usize];
        Some(view_of(key, &patient.log, &self.parameters))
    }

    /// One patient's assessment without the cycles themselves (what a
    /// derived event carries): [`Cohort::patient`]'s fields, the cycles
    /// counted rather than built.
    pub fn patient_summary(&self, key: &PatientKey) -> Option<PatientSummary> {
        let slot = self.slot_of(&key.centre, &key.patient)?;
        let log = &self.patients[slot as usize].log;
        Some(summary_of_analysis(
            key,
            log.registered,
            &analyse(log, &self.parameters),
            &self.parameters,
        ))
    }

    /// [`Cohort::patient_summary`] of the patient with this number (`None`
    /// for a number this cohort has not handed out).
    pub fn patient_summary_of(&self, number: PatientNumber) -> Option<PatientSummary> {
        let slot = self.patients.get(number.index())?;
        let key = PatientKey::new(
            self.centres[slot.centre as usize].clone(),
            slot.patient.clone(),
        );
        Some(summary_of_analysis(
            &key,
            slot.log.registered,
            &analyse(&slot.log, &self.parameters),
            &self.parameters,
        ))
    }

    /// The number of a patient the cohort has seen an event of.
    pub fn number_of(&self, key: &PatientKey) -> Option<PatientNumber> {
        self.slot_of(&key.centre, &key.patient).map(PatientNumber)
    }

    /// The patient with this number (`None` for a number this cohort has
    /// not handed out).
    pub fn key_of(&self, number: PatientNumber) -> Option<PatientKey> {
        let slot = self.patients.get(number.index())?;
        Some(PatientKey::new(
            self.centres[slot.centre as usize].clone(),
            slot.patient.clone(),
        ))
    }

    /// One patient's compact log, or `None` when the cohort has never seen
    /// an event of theirs (for tests; `audit::change` reaches the log
    /// through [`Cohort::apply_with`]).
    #[cfg(test)]
    pub(crate) fn patient_log(&self, centre: &Centre, patient: &Pseudonym) -> Option<&PatientLog> {
        let slot = self.slot_of(centre, patient)?;
        Some(&self.patients[slot as usize].log)
    }

    /// Every patient the cohort has seen an event of, in order of first event.
    pub fn patient_keys(&self) -> impl Iterator<Item = PatientKey> + '_ {
        self.patients.iter().map(|slot| {
            PatientKey::new(
                self.centres[slot.centre as usize].clone(),
                slot.patient.clone(),
            )
        })
    }

    /// Re-assesses the patients changed since the last report and moves the
    /// totals by the difference.
    fn refresh(&mut self) {
        for slot in std::mem::take(&mut self.dirty) {
            let patient = &mut self.patients[slot as usize];
            patient.dirty = false;
            let share = Share::of(&analyse(&patient.log, &self.parameters));
            if share == patient.share {
                continue;
            }
            let totals = &mut self.totals[patient.centre as usize];
            totals.subtract(&patient.share.tally());
            totals.add(&share.tally());
            patient.share = share;
        }
    }

    fn intern_centre(&mut self, centre: &Centre) -> u32 {
        if let Some(index) = self.centre_index.get(centre.as_str()) {
            return *index;
        }
        let index = self.centres.len() as u32;
        self.centres.push(centre.clone());
        self.centre_index.insert(centre.as_str().to_owned(), index);
        self.totals.push(Tally::default());
        index
    }

    /// The slot of `patient` at `centre`, if the cohort has seen them.
    fn slot_of(&self, centre: &Centre, patient: &Pseudonym) -> Option<u32> {
        let hash = self.patient_index.hash(centre.as_str(), patient.as_str());
        self.find_patient(hash, centre, patient)
    }

    /// The slot of `patient` at `centre`, whose names hash to `hash`.
    fn find_patient(&self, hash: u64, centre: &Centre, patient: &Pseudonym) -> Option<u32> {
        self.patient_index.find(
            hash,
            centre.as_str(),
            patient.as_str(),
            &self.patients,
            &self.centres,
        )
    }

    /// A slot for `patient` at `centre`, who has none yet (their names hash
    /// to `hash`).
    fn add_patient(&mut self, hash: u64, centre: &Centre, patient: &Pseudonym) -> u32 {
        let centre = self.intern_centre(centre);
        let slot = self.patients.len() as u32;
        self.patients.push(PatientSlot {
            centre,
            patient: patient.clone(),
            log: PatientLog::default(),
            share: Share::default(),
            dirty: false,
        });
        self.patient_index
            .insert(hash, slot, &self.patients, &self.centres);
        slot
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;
    use crate::{ClinicalDate, ndjson};

    /// Names some of which read the same when a centre and a pseudonym are
    /// run together ("ab" + "-c-1" and "ab-c" + "-1"): the index must keep
    /// every pair apart.
    const CENTRES: [&str; 3] = ["ab", "ab-c", "a-b"];
    const PATIENTS: [&str; 5] = ["-c-1", "-1", "c-1", "1", "b-c-1"];

    /// A registration or a one-muscle injection of one (centre, patient).
    fn event_of(position: u64, centre: usize, patient: usize, injection: bool) -> RecordedEvent {
        let envelope = format!(
            r#""event_id":"e-{position}","centre":"{}","patient":"{}","occurred_on":"2017-02-{:02}""#,
            CENTRES[centre],
            PATIENTS[patient],
            1 + position % 28,
        );
        let body = if injection {
            r#""type":"injection_administered","product":"onabotulinumtoxinA","total_units":100,"guidance":"emg","muscles":[{"muscle":"splenius_capitis","side":"left","units":100}]"#
        } else {
            r#""type":"patient_registered","sex":"female","birth_year":1961"#
        };
        let today = ClinicalDate::from_ymd(2026, 1, 1).unwrap();
        RecordedEvent {
            position,
            recorded_at_micros: 0,
            recorded_by: Default::default(),
            event: ndjson::parse_line(&format!("{{{envelope},{body}}}"), today).unwrap(),
        }
    }

    /// What one patient's slot must hold: the log of their events alone.
    fn folded_alone(events: &[&RecordedEvent]) -> PatientLog {
        let mut log = PatientLog::default();
        for event in events {
            log.apply(event);
        }
        log
    }

    fn same_log(left: &PatientLog, right: &PatientLog) -> bool {
        // Compared through Debug: the compact events have no PartialEq.
        left.registered == right.registered
            && format!("{:?}", left.decode()) == format!("{:?}", right.decode())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every (centre, pseudonym) pair has its own slot, in order of
        /// first event, holding exactly that pair's events; lookups and a
        /// restored snapshot find the same.
        #[test]
        fn each_patient_has_one_slot_holding_their_events_alone(
            steps in proptest::collection::vec(
                (0..CENTRES.len(), 0..PATIENTS.len(), any::<bool>()),
                1..120,
            )
        ) {
            let events: Vec<RecordedEvent> = steps
                .iter()
                .enumerate()
                .map(|(index, &(centre, patient, injection))| {
                    event_of(index as u64 + 1, centre, patient, injection)
                })
                .collect();
            let mut cohort = Cohort::new(RuleParameters::default());
            for event in &events {
                cohort.apply(event);
            }
            let mut first_seen: Vec<(usize, usize)> = Vec::new();
            for &(centre, patient, _) in &steps {
                if !first_seen.contains(&(centre, patient)) {
                    first_seen.push((centre, patient));
                }
            }
            let keys: Vec<PatientKey> = cohort.patient_keys().collect();
            prop_assert_eq!(keys.len(), first_seen.len());
            let restored =
                Cohort::from_snapshot(cohort.snapshot(), &RuleParameters::default()).unwrap();
            for (key, &(centre, patient)) in keys.iter().zip(&first_seen) {
                prop_assert_eq!(key.centre.as_str(), CENTRES[centre]);
                prop_assert_eq!(key.patient.as_str(), PATIENTS[patient]);
                let own: Vec<&RecordedEvent> = steps
                    .iter()
                    .zip(&events)
                    .filter(|((c, p, _), _)| (*c, *p) == (centre, patient))
                    .map(|(_, event)| event)
                    .collect();
                let expected = folded_alone(&own);
                for folded in [&cohort, &restored] {
                    let log = folded.patient_log(&key.centre, &key.patient).unwrap();
                    prop_assert!(same_log(log, &expected), "{key}");
                }
            }
            // A pair never seen has no slot, even when its names are known.
            for centre in CENTRES {
                for patient in PATIENTS {
                    let centre = Centre::parse(centre).unwrap();
                    let patient = Pseudonym::parse(patient).unwrap();
                    let seen = keys
                        .iter()
                        .any(|key| key.centre == centre && key.patient == patient);
                    prop_assert_eq!(cohort.patient_log(&centre, &patient).is_some(), seen);
                }
            }
            prop_assert_eq!(&restored.patient_keys().collect::<Vec<_>>(), &keys);
            // Numbers follow first events, name the same patients after a
            // restore, and are what `apply_numbered` hands out.
            for (index, key) in keys.iter().enumerate() {
                for folded in [&cohort, &restored] {
                    let number = folded.number_of(key).unwrap();
                    prop_assert_eq!(number.index(), index);
                    prop_assert_eq!(&folded.key_of(number), &Some(key.clone()));
                    prop_assert_eq!(
                        folded.patient_summary_of(number),
                        folded.patient_summary(key)
                    );
                }
            }
            prop_assert!(cohort.key_of(PatientNumber(keys.len() as u32)).is_none());
            let mut numbered = Cohort::new(RuleParameters::default());
            for event in &events {
                let number = numbered.apply_numbered(event);
                prop_assert_eq!(
                    numbered.key_of(number),
                    Some(event.event.patient_key())
                );
            }
        }
    }

    /// A line of the interchange format for one event of (centre 0,
    /// patient 0), with `body` after the envelope.
    fn line_event(position: u64, id: &str, body: &str) -> RecordedEvent {
        let line = format!(
            r#"{{"event_id":"{id}","centre":"{}","patient":"{}","occurred_on":"2017-03-{:02}",{body}}}"#,
            CENTRES[0],
            PATIENTS[0],
            1 + position % 28,
        );
        let today = ClinicalDate::from_ymd(2026, 1, 1).unwrap();
        RecordedEvent {
            position,
            recorded_at_micros: 0,
            recorded_by: Default::default(),
            event: ndjson::parse_line(&line, today).unwrap(),
        }
    }

    /// A snapshot keeps the state it was taken of while the cohort folds on
    /// (new events, and a void that flags an event the snapshot holds): the
    /// logs it shares are copied before they change, never changed under it.
    #[test]
    fn a_snapshot_is_not_changed_by_what_the_cohort_folds_after_it() {
        let injection = r#""type":"injection_administered","product":"onabotulinumtoxinA","total_units":100,"guidance":"emg","muscles":[{"muscle":"splenius_capitis","side":"left","units":100}]"#;
        let mut cohort = Cohort::new(RuleParameters::default());
        cohort.apply(&line_event(1, "r-1", r#""type":"patient_registered""#));
        for position in 2..6 {
            cohort.apply(&line_event(position, &format!("i-{position}"), injection));
        }
        let snapshot = cohort.snapshot();
        let before = serde_json::to_value(&snapshot).unwrap();
        let later = [
            line_event(6, "i-6", injection),
            line_event(
                7,
                "v-7",
                r#""type":"event_voided","target_event_id":"i-3","reason":"typed twice""#,
            ),
            line_event(
                8,
                "a-8",
                r#""type":"response_assessed","injection_event_id":"i-5","rating":"good""#,
            ),
        ];
        for event in &later {
            cohort.apply(event);
        }
        assert_eq!(serde_json::to_value(&snapshot).unwrap(), before);
        let mut restored = Cohort::from_snapshot(snapshot, &RuleParameters::default()).unwrap();
        for event in &later {
            restored.apply(event);
        }
        assert_eq!(restored.report(), cohort.report());
        assert_eq!(
            serde_json::to_value(restored.snapshot()).unwrap(),
            serde_json::to_value(cohort.snapshot()).unwrap()
        );
    }

    /// `patient_summary` is `patient` with the cycles counted instead of
    /// built, after every event of a history that reaches the SNR cohort
    /// and fails a standard.
    #[test]
    fn a_patients_summary_is_their_assessment_without_the_cycles() {
        let injection = r#""type":"injection_administered","product":"onabotulinumtoxinA","total_units":100,"guidance":"emg","muscles":[{"muscle":"splenius_capitis","side":"left","units":100}]"#;
        let rating = |injection: &str, rating: &str| {
            format!(
                r#""type":"response_assessed","injection_event_id":"{injection}","rating":"{rating}""#
            )
        };
        let events = [
            line_event(1, "r-1", r#""type":"patient_registered""#),
            line_event(2, "i-2", injection),
            line_event(3, "a-3", &rating("i-2", "good")),
            line_event(4, "i-4", injection),
            line_event(5, "a-5", &rating("i-4", "good")),
            line_event(6, "i-6", injection),
            line_event(7, "a-7", &rating("i-6", "suboptimal")),
            line_event(
                8,
                "v-8",
                r#""type":"event_voided","target_event_id":"a-3","reason":"typed twice""#,
            ),
        ];
        let mut cohort = Cohort::new(RuleParameters::default());
        let key = events[0].event.patient_key();
        let mut classified = false;
        for event in &events {
            cohort.apply(event);
            let view = cohort.patient(&key).unwrap();
            let summary = cohort.patient_summary(&key).unwrap();
            assert_eq!(summary.centre, view.centre);
            assert_eq!(summary.patient, view.patient);
            assert_eq!(summary.registered, view.registered);
            assert_eq!(summary.rule_set, view.rule_set);
            assert_eq!(summary.cycles, view.cycles.len());
            assert_eq!(summary.snr, view.snr);
            assert_eq!(summary.standards, view.standards);
            classified |= summary.snr.is_some() && !summary.standards.is_empty();
        }
        assert!(classified, "the history never reached the SNR cohort");
        let stranger = PatientKey::new(
            Centre::parse("leeds").unwrap(),
            Pseudonym::parse("X-1").unwrap(),
        );
        assert!(cohort.patient_summary(&stranger).is_none());
    }

    /// Patients whose names hash alike (here: every one to the same hash)
    /// still get, and are found in, their own slots.
    #[test]
    fn patients_with_one_hash_keep_their_own_slots() {
        let centres = vec![Centre::parse("leeds").unwrap()];
        let patients: Vec<PatientSlot> = (0..200)
            .map(|index| PatientSlot {
                centre: 0,
                patient: Pseudonym::parse(&format!("P-{index}")).unwrap(),
                log: PatientLog::default(),
                share: Share::default(),
                dirty: false,
            })
            .collect();
        let mut index = PatientIndex {
            // Room for all: the table never rehashes (which would use the
            // real hash), so every slot keeps the one hash given here.
            slots: HashTable::with_capacity(patients.len()),
            seed: 0,
        };
        for slot in 0..patients.len() {
            index.insert(7, slot as u32, &patients[..=slot], &centres);
        }
        for (slot, patient) in patients.iter().enumerate() {
            let found = index.find(7, "leeds", patient.patient.as_str(), &patients, &centres);
            assert_eq!(found, Some(slot as u32));
        }
        assert_eq!(index.find(7, "leeds", "P-200", &patients, &centres), None);
        assert_eq!(index.find(7, "york", "P-1", &patients, &centres), None);
    }
}
