//! The cohort projection: every patient's compact log, folded one event at a
//! time, and the running report totals. Applying an event touches only its
//! patient, who is marked dirty; the next report re-assesses the dirty
//! patients alone and moves the totals by the difference, so a live report
//! after each event costs as much as that patient's history, not the whole
//! network's.

use std::{
    collections::{HashMap, hash_map::Entry},
    hash::{BuildHasherDefault, Hasher},
};

use crate::{
    audit::{
        AuditReport, PatientAssessment, RuleParameters,
        assessment::view_of,
        engine::{PatientLog, analyse},
        report::{Tally, build_report},
    },
    event::RecordedEvent,
    ids::{Centre, PatientKey, Pseudonym},
};

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
    tally: Tally,
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
            let tally = Tally::of(&analyse(&patient.log, &self.parameters));
            let totals = &mut self.totals[patient.centre as usize];
            totals.subtract(&patient.tally);
            totals.add(&tally);
            patient.tally = tally;
            patient.dirty = false;
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
            tally: Tally::default(),
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
