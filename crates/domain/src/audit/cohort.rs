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

use std::{
    collections::{HashMap, hash_map::Entry},
    hash::{BuildHasherDefault, Hasher},
};

use serde::{Deserialize, Serialize};

use crate::{
    audit::{
        AuditReport, PatientAssessment, RULE_SET, RuleParameters,
        assessment::view_of,
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

/// A hasher for keys that already are good 64-bit hashes.
#[derive(Debug, Default, Clone, Copy)]
struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed with this hasher; fold anything else in
        // so it would still be correct, just slower.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type HashIndex = HashMap<u64, u32, BuildHasherDefault<PassThroughHasher>>;

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
    centre_index: HashMap<String, u32>,
    patients: Vec<PatientSlot>,
    /// Patient by the hash of (centre index, pseudonym); checked against the
    /// slot, so a hash collision falls back to `colliding_patients`.
    patient_index: HashIndex,
    colliding_patients: HashMap<PatientKey, u32>,
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
            patient_index: HashIndex::default(),
            colliding_patients: HashMap::new(),
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
            let slot = cohort.patient_slot(patient.centre, &pseudonym);
            if slot as usize != index {
                return Err(SnapshotError::Inconsistent(format!(
                    "patient {} is listed twice",
                    patient.patient
                )));
            }
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
        self.events_applied += 1;
        let event = &recorded.event;
        let centre = self.intern_centre(&event.centre);
        let slot = self.patient_slot(centre, &event.patient);
        let patient = &mut self.patients[slot as usize];
        if patient.log.apply(recorded) && !patient.dirty {
            patient.dirty = true;
            self.dirty.push(slot);
        }
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
        let centre = *self.centre_index.get(key.centre.as_str())?;
        let slot = self.find_patient(centre, &key.patient)?;
        let patient = &self.patients[slot as usize];
        Some(view_of(key, &patient.log, &self.parameters))
    }

    /// One patient's compact log, or `None` when the cohort has never seen
    /// an event of theirs (for `audit::change`).
    pub(crate) fn patient_log(&self, centre: &Centre, patient: &Pseudonym) -> Option<&PatientLog> {
        let centre = *self.centre_index.get(centre.as_str())?;
        let slot = self.find_patient(centre, patient)?;
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

    fn patient_hash(centre: u32, patient: &Pseudonym) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(patient.as_str().as_bytes(), u64::from(centre))
    }

    fn find_patient(&self, centre: u32, patient: &Pseudonym) -> Option<u32> {
        let slot = *self
            .patient_index
            .get(&Self::patient_hash(centre, patient))?;
        let found = &self.patients[slot as usize];
        if found.centre == centre && found.patient == *patient {
            return Some(slot);
        }
        let key = PatientKey::new(self.centres[centre as usize].clone(), patient.clone());
        self.colliding_patients.get(&key).copied()
    }

    fn patient_slot(&mut self, centre: u32, patient: &Pseudonym) -> u32 {
        if let Some(slot) = self.find_patient(centre, patient) {
            return slot;
        }
        let slot = self.patients.len() as u32;
        self.patients.push(PatientSlot {
            centre,
            patient: patient.clone(),
            log: PatientLog::default(),
            share: Share::default(),
            dirty: false,
        });
        let hash = Self::patient_hash(centre, patient);
        match self.patient_index.entry(hash) {
            Entry::Vacant(entry) => {
                entry.insert(slot);
            }
            Entry::Occupied(_) => {
                let key = PatientKey::new(self.centres[centre as usize].clone(), patient.clone());
                self.colliding_patients.insert(key, slot);
            }
        }
        slot
    }
}
