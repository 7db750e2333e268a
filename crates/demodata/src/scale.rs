//! Random cohorts at scale, streamed: the benchmark's data (100k patients
//! make about 10M events) and a soak for the importer.
//!
//! Patients are generated in blocks; a block's lines are interleaved by the
//! day they were typed in, as a clinic's export would be, and written before
//! the next block is made, so memory stays that of one block whatever the
//! size of the file.

use std::collections::VecDeque;

use domain::ResistanceResult;

use crate::emit::{self, Entry, EventIds, Noise, PatientName};
use crate::history::{self, Course, Escalation, Group, NonSnr, Shape};
use crate::seeded::SeededRandom;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomSpec {
    /// Number of registered patients.
    pub patients: u64,
    /// Number of centres the patients are spread over (0 is taken as 1).
    pub centres: u32,
    /// The same seed always gives the same file.
    pub seed: u64,
}

/// Patients per block: enough to interleave, small enough to stay in cache.
const BLOCK_PATIENTS: u64 = 64;

/// Salt of this generator's event ids, so they differ from the demo's.
const ID_SALT: u64 = 0x5CA1E;

const SHAPE: Shape = Shape {
    good_cycles_before_onset: (4, 40),
    maintenance_cycles: (8, 60),
    day_budget: 10_000,
    short_interval_per_mille: 50,
    unrated_per_mille: 40,
    reassessed_per_mille: 30,
};

const NOISE: Noise = Noise {
    voided_injection_per_mille: 5,
    voided_review_per_mille: 5,
    voided_test_per_mille: 50,
    backdated_cycle_percent: 10,
    duplicate_line_per_mille: 3,
};

/// Centre names of a network; past the list, numbered ones.
const CENTRE_NAMES: [&str; 20] = [
    "leeds",
    "salford-royal",
    "sheffield",
    "newcastle",
    "queen-square",
    "kings-college",
    "birmingham",
    "bristol",
    "cardiff",
    "glasgow",
    "edinburgh",
    "nottingham",
    "oxford",
    "cambridge",
    "liverpool-walton",
    "southampton",
    "plymouth",
    "hull",
    "preston",
    "stoke",
];

fn centre_name(index: u32) -> String {
    match CENTRE_NAMES.get(index as usize) {
        Some(name) => (*name).to_owned(),
        None => format!("centre-{}", index + 1),
    }
}

/// Clinical dates of the scale files: from 1990 to 2025.
fn date_window() -> (i32, i32) {
    (
        emit::days_from_civil(1990, 1, 1),
        emit::days_from_civil(2025, 12, 31),
    )
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Snr(Group, Course),
    Bystander(NonSnr),
}

fn random_kind(random: &mut SeededRandom) -> Kind {
    match random.below(100) {
        0..=61 => Kind::Bystander(NonSnr::GoodResponder),
        62..=68 => Kind::Bystander(NonSnr::OneGoodThenPoor),
        69..=73 => Kind::Bystander(NonSnr::PrimaryNonResponder),
        74..=77 => Kind::Bystander(NonSnr::NotYetInjected),
        _ => {
            let group = if random.percent(54) {
                Group::Suboptimal
            } else {
                Group::NoResponse
            };
            let regain_percent = match group {
                Group::Suboptimal => 57,
                Group::NoResponse => 19,
            };
            if random.percent(regain_percent) {
                return Kind::Snr(group, Course::Regain);
            }
            let test_percent = match group {
                Group::Suboptimal => 20,
                Group::NoResponse => 75,
            };
            let test = random.percent(test_percent).then(|| {
                random.pick(&[
                    ResistanceResult::Positive,
                    ResistanceResult::Negative,
                    ResistanceResult::Negative,
                    ResistanceResult::Equivocal,
                ])
            });
            let then = random.pick(&[
                Escalation::BontB,
                Escalation::BontB,
                Escalation::Dbs,
                Escalation::Dbs,
                Escalation::Discontinue,
                Escalation::Continue,
            ]);
            let course = Course::NotRegained {
                adjust_first: random.percent(70),
                test,
                then,
            };
            Kind::Snr(group, course)
        }
    }
}

/// The lines of a random cohort, made block by block.
#[derive(Debug)]
pub struct RandomLines {
    spec: RandomSpec,
    centres: Vec<(String, String)>,
    next_patient: u64,
    patients_per_centre: Vec<u64>,
    ids: EventIds,
    pending: VecDeque<String>,
    entries: Vec<Entry>,
    /// The current block's text; entries point into it.
    arena: Vec<u8>,
}

impl RandomLines {
    pub fn new(spec: &RandomSpec) -> Self {
        let centres = (0..spec.centres.max(1))
            .map(|index| {
                let name = centre_name(index);
                let prefix = name
                    .split('-')
                    .filter_map(|part| part.chars().next())
                    .collect::<String>()
                    .to_uppercase();
                // Centres with the same initials keep distinct pseudonyms
                // anyway (a patient is the pair centre, pseudonym).
                (name, prefix)
            })
            .collect::<Vec<_>>();
        Self {
            spec: *spec,
            patients_per_centre: vec![0; centres.len()],
            centres,
            next_patient: 0,
            ids: EventIds::new(spec.seed, ID_SALT),
            pending: VecDeque::new(),
            entries: Vec::new(),
            arena: Vec::new(),
        }
    }

    /// Makes the next block of patients into `self.entries`, sorted in file
    /// order; false when every patient has been made.
    fn next_block(&mut self) -> bool {
        if self.next_patient >= self.spec.patients {
            return false;
        }
        let end = (self.next_patient + BLOCK_PATIENTS).min(self.spec.patients);
        let (window_start, window_end) = date_window();
        self.entries.clear();
        self.arena.clear();
        for patient in self.next_patient..end {
            let mut random = SeededRandom::derive(self.spec.seed, patient);
            // Centre sizes are uneven: the first centres are the big ones.
            let centre_count = self.centres.len() as u64;
            let centre = if random.percent(50) {
                random.below(centre_count.div_ceil(3))
            } else {
                random.below(centre_count)
            } as usize;
            let mut history = match random_kind(&mut random) {
                Kind::Snr(group, course) => history::snr(&mut random, SHAPE, group, course),
                Kind::Bystander(kind) => history::non_snr(&mut random, SHAPE, kind),
            };
            let room = (window_end - window_start - history.span_days()).max(0);
            let start = window_start + random.below(room as u64 + 1) as i32;
            history.place(start, &mut random);

            self.patients_per_centre[centre] += 1;
            let (centre_name, prefix) = &self.centres[centre];
            let pseudonym = format!("{prefix}-{:06}", self.patients_per_centre[centre]);
            let name = PatientName {
                centre: centre_name,
                pseudonym: &pseudonym,
                number: (patient - self.next_patient) as u32,
            };
            emit::emit_patient(
                &history,
                name,
                &mut self.ids,
                &mut random,
                NOISE,
                &mut self.arena,
                &mut self.entries,
            );
        }
        self.next_patient = end;
        self.entries.sort_unstable_by_key(Entry::file_order);
        true
    }

    /// Writes every remaining line, one block at a time, each block in one
    /// `write_all`; returns the number of lines written.
    pub fn write_all(mut self, out: &mut dyn std::io::Write) -> std::io::Result<u64> {
        let mut written = 0u64;
        let mut buffer = Vec::with_capacity(1 << 20);
        for line in self.pending.drain(..) {
            buffer.extend_from_slice(line.as_bytes());
            buffer.push(b'\n');
            written += 1;
        }
        out.write_all(&buffer)?;
        while self.next_block() {
            buffer.clear();
            for entry in &self.entries {
                buffer.extend_from_slice(&self.arena[entry.line.start..entry.line.end]);
                buffer.push(b'\n');
            }
            written += self.entries.len() as u64;
            out.write_all(&buffer)?;
        }
        Ok(written)
    }
}

impl Iterator for RandomLines {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        while self.pending.is_empty() {
            if !self.next_block() {
                return None;
            }
            let arena = &self.arena;
            self.pending.extend(
                self.entries
                    .iter()
                    .map(|entry| emit::line_text(arena, entry.line).into_owned()),
            );
        }
        self.pending.pop_front()
    }
}
