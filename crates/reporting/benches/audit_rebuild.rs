//! Rebuild benchmark of the audit projection: folds a synthetic network of
//! patients (about 100 events each, patients interleaved as in a real log)
//! into a `domain::audit::Cohort`, then renders the report. Prints events
//! per second and the process's peak memory, the two targets of a rebuild
//! (>= 1M events/s, <= 1 GiB for 10M events over 100k patients).
//!
//! `cargo bench -p reporting --bench audit_rebuild` runs 100k patients;
//! `AUDIT_BENCH_PATIENTS=N` changes the size. Events are generated in
//! batches outside the timed section, so the time is the fold's alone and
//! the peak memory is dominated by the cohort, not the generator.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use domain::{
    ClinicalDate, Event, EventBody, EventId, InjectionAdministered, RecordedEvent,
    audit::{Cohort, RuleParameters},
    event::{
        Guidance, Muscle, MuscleDose, PatientRegistered, Product, Rating, ReferralMade,
        ReferralTarget, ResistanceMethod, ResistanceResult, ResistanceTested, ResponseAssessed,
        Side,
    },
    ids::{Centre, Pseudonym},
};

/// A small deterministic generator (SplitMix64), so every run folds the same
/// events.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// One patient's synthetic history, in log order (~100 events).
fn patient_events(patient: u64, centres: &[Centre], random: &mut SplitMix) -> Vec<Event> {
    let centre = centres[(patient % centres.len() as u64) as usize].clone();
    let pseudonym = Pseudonym::parse(&format!("P-{patient:07}")).unwrap();
    let mut day = ClinicalDate::from_ymd(1995, 1, 1)
        .unwrap()
        .days_since_epoch()
        + random.below(3_000) as i32;
    let mut events = Vec::with_capacity(120);
    let mut sequence = 0u32;
    let mut next_id = || {
        sequence += 1;
        EventId::parse(&format!("e-{patient}-{sequence}")).unwrap()
    };
    let event = |event_id, day: i32, body| Event {
        event_id,
        centre: centre.clone(),
        patient: pseudonym.clone(),
        occurred_on: ClinicalDate::from_days_since_epoch(day).unwrap(),
        body,
    };
    events.push(event(
        next_id(),
        day,
        EventBody::PatientRegistered(PatientRegistered::default()),
    ));
    let poor_from = 2 + random.below(40);
    let mut units = 150 + 10 * random.below(10) as u32;
    for cycle in 0..48u64 {
        day += 70 + random.below(40) as i32;
        if random.below(8) == 0 {
            units = 150 + 10 * random.below(10) as u32;
        }
        let injection_id = next_id();
        let muscles = vec![
            MuscleDose {
                muscle: Muscle::SpleniusCapitis,
                side: Side::Left,
                units: units / 2,
            },
            MuscleDose {
                muscle: Muscle::Sternocleidomastoid,
                side: Side::Right,
                units: units - units / 2,
            },
        ];
        let product = if cycle > poor_from + 3 && patient.is_multiple_of(5) {
            Product::RimabotulinumtoxinB
        } else {
            Product::OnabotulinumtoxinA
        };
        let units_of_product = if product == Product::RimabotulinumtoxinB {
            units * 20
        } else {
            units
        };
        let muscles = if product == Product::RimabotulinumtoxinB {
            muscles
                .into_iter()
                .map(|dose| MuscleDose {
                    units: dose.units * 20,
                    ..dose
                })
                .collect()
        } else {
            muscles
        };
        let injection =
            InjectionAdministered::new(product, units_of_product, Guidance::Emg, muscles).unwrap();
        events.push(event(
            injection_id.clone(),
            day,
            EventBody::InjectionAdministered(injection),
        ));
        let rating = match (cycle >= poor_from, random.below(3)) {
            (false, _) | (true, 0) => Rating::Good,
            (true, 1) => Rating::Suboptimal,
            (true, _) => Rating::None,
        };
        events.push(event(
            next_id(),
            day + 35,
            EventBody::ResponseAssessed(ResponseAssessed {
                injection_event_id: injection_id,
                rating,
                percent_improvement: None,
                benefit_weeks: None,
                twstrs_total: None,
            }),
        ));
        if cycle == poor_from + 1 {
            events.push(event(
                next_id(),
                day + 40,
                EventBody::ResistanceTested(ResistanceTested {
                    method: ResistanceMethod::Frontalis,
                    result: if patient.is_multiple_of(3) {
                        ResistanceResult::Positive
                    } else {
                        ResistanceResult::Negative
                    },
                    titre_mu_per_ml: None,
                }),
            ));
            events.push(event(
                next_id(),
                day + 41,
                EventBody::ReferralMade(ReferralMade {
                    target: ReferralTarget::Dbs,
                }),
            ));
        }
    }
    events
}

fn main() {
    let patients: u64 = std::env::var("AUDIT_BENCH_PATIENTS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(100_000);
    let centres: Vec<Centre> = (0..12)
        .map(|index| Centre::parse(&format!("centre-{index:02}")).unwrap())
        .collect();
    let resident_at_start = resident_memory_kib();
    let mut random = SplitMix(2019);
    let mut cohort = Cohort::new(RuleParameters::default());
    let mut folding = Duration::ZERO;
    let mut position = 0u64;
    // Patients arrive in groups of 1,000 whose events interleave round-robin,
    // as concurrent clinics write them.
    let group_size = 1_000u64;
    let mut first = 0;
    while first < patients {
        let last = (first + group_size).min(patients);
        let histories: Vec<Vec<Event>> = (first..last)
            .map(|patient| patient_events(patient, &centres, &mut random))
            .collect();
        let longest = histories.iter().map(Vec::len).max().unwrap_or(0);
        let mut batch = Vec::with_capacity(histories.iter().map(Vec::len).sum());
        for step in 0..longest {
            for history in &histories {
                if let Some(event) = history.get(step) {
                    position += 1;
                    batch.push(RecordedEvent {
                        position,
                        recorded_at_micros: 0,
                        recorded_by: Default::default(),
                        event: event.clone(),
                    });
                }
            }
        }
        drop(histories);
        let started = Instant::now();
        for recorded in &batch {
            cohort.apply(recorded);
        }
        folding += started.elapsed();
        first = last;
    }
    let started = Instant::now();
    let report = cohort.report();
    let reporting = started.elapsed();
    let rendered = reporting::render::render(&report, reporting::render::Format::Table);

    let events = cohort.events_applied();
    let total = folding + reporting;
    println!(
        "{}",
        rendered.lines().take(12).collect::<Vec<_>>().join("\n")
    );
    println!("audit rebuild: {patients} patients, {events} events");
    println!(
        "  fold {:.2?}, first report {:.2?}: {:.2} M events/s (target >= 1 M events/s)",
        folding,
        reporting,
        events as f64 / total.as_secs_f64() / 1e6
    );
    if let Some(peak) = peak_memory_kib() {
        println!(
            "  peak memory {:.1} MiB (target <= 1024 MiB for 10M events)",
            peak as f64 / 1024.0
        );
    }
    // Every batch is dropped by now: what the process holds above its start
    // is the cohort (and whatever the allocator has not given back).
    if let (Some(start), Some(end)) = (resident_at_start, resident_memory_kib()) {
        let held = end.saturating_sub(start) as f64 * 1024.0;
        println!(
            "  resident after the fold {:.1} MiB above the start: {:.0} bytes per patient, {:.1} per event",
            held / 1024.0 / 1024.0,
            held / patients.max(1) as f64,
            held / events.max(1) as f64
        );
    }
}

/// The process's resident memory now (VmRSS), on Linux.
fn resident_memory_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The process's peak resident memory (VmHWM), on Linux.
fn peak_memory_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
