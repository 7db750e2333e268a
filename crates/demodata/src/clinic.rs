//! The clinical content of the demo data: what a cervical dystonia clinic
//! injects (muscle patterns per head posture, doses per product), how it
//! adjusts a session after a poor response, and what its reviews record.
//!
//! The audit's notion of an *adjusted cycle* (rules.md) is reproduced here
//! exactly, in [`is_adjusted`], because the generators must know for certain
//! whether a cycle they write counts as an adjustment: the founding numbers
//! depend on it.

use domain::{Guidance, Muscle, MuscleDose, Product, Rating, Serotype, Side};

use crate::seeded::SeededRandom;

/// The audit's default `dose_change_min_pct`.
const DOSE_CHANGE_MIN_PCT: u64 = 10;

/// One treatment session as the clinic records it. `total_units` is always
/// the sum of the muscles' units, so it is computed, never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    pub(crate) product: Product,
    pub(crate) guidance: Guidance,
    /// Distinct (muscle, side) pairs, each with units > 0.
    pub(crate) muscles: Vec<MuscleDose>,
}

impl Session {
    pub(crate) fn total_units(&self) -> u32 {
        self.muscles.iter().map(|dose| dose.units).sum()
    }

    fn has(&self, muscle: Muscle, side: Side) -> bool {
        self.muscles
            .iter()
            .any(|dose| dose.muscle == muscle && dose.side == side)
    }

    fn same_muscle_set(&self, other: &Session) -> bool {
        self.muscles.len() == other.muscles.len()
            && self
                .muscles
                .iter()
                .all(|dose| other.has(dose.muscle, dose.side))
    }
}

/// Whether `current` counts as an adjusted cycle after `previous` under
/// rules.md: another (muscle, side) set, another guidance, or (same product
/// only) a dose change of at least 10% of the previous dose, in exact
/// arithmetic. Whether `current` is BoNT-A is the caller's concern.
pub(crate) fn is_adjusted(previous: &Session, current: &Session) -> bool {
    if !current.same_muscle_set(previous) || current.guidance != previous.guidance {
        return true;
    }
    if current.product != previous.product {
        return false;
    }
    let before = u64::from(previous.total_units());
    let after = u64::from(current.total_units());
    before.abs_diff(after) * 100 >= DOSE_CHANGE_MIN_PCT * before
}

/// The head posture a patient's dystonia pulls into: it decides which
/// muscles are injected. `side` is the direction of the pull.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Posture {
    kind: PostureKind,
    side: Side,
}

#[derive(Debug, Clone, Copy)]
enum PostureKind {
    /// Rotation of the chin (torticollis / torticaput), the commonest.
    Rotation,
    /// Tilt of the head towards the shoulder (laterocollis).
    Tilt,
    /// Head pulled back (retrocollis).
    Extension,
    /// Head pulled forward (anterocollis), usually injected under ultrasound.
    Flexion,
}

/// Which side a muscle of a pattern is on, relative to the pull.
#[derive(Debug, Clone, Copy)]
enum RelativeSide {
    Same,
    Opposite,
    Both,
}

/// One muscle of a pattern: base onabotulinumtoxinA units (low, high) and
/// the percent chance it is part of a given patient's pattern.
type PatternMuscle = (Muscle, RelativeSide, u32, u32, u64);

const ROTATION: &[PatternMuscle] = &[
    (
        Muscle::Sternocleidomastoid,
        RelativeSide::Opposite,
        30,
        60,
        100,
    ),
    (Muscle::SpleniusCapitis, RelativeSide::Same, 50, 100, 100),
    (Muscle::SpleniusCervicis, RelativeSide::Same, 20, 40, 30),
    (
        Muscle::ObliquusCapitisInferior,
        RelativeSide::Same,
        10,
        20,
        15,
    ),
    (Muscle::Trapezius, RelativeSide::Opposite, 25, 50, 30),
];
const TILT: &[PatternMuscle] = &[
    (Muscle::Sternocleidomastoid, RelativeSide::Same, 25, 50, 100),
    (Muscle::LevatorScapulae, RelativeSide::Same, 30, 60, 100),
    (Muscle::SpleniusCapitis, RelativeSide::Same, 30, 60, 80),
    (Muscle::ScalenusMedius, RelativeSide::Same, 15, 30, 40),
    (Muscle::Trapezius, RelativeSide::Same, 25, 50, 40),
];
const EXTENSION: &[PatternMuscle] = &[
    (Muscle::SpleniusCapitis, RelativeSide::Both, 40, 75, 100),
    (Muscle::SemispinalisCapitis, RelativeSide::Both, 25, 50, 80),
    (Muscle::Trapezius, RelativeSide::Both, 20, 40, 40),
];
const FLEXION: &[PatternMuscle] = &[
    (Muscle::Sternocleidomastoid, RelativeSide::Both, 20, 40, 100),
    (Muscle::LongusColli, RelativeSide::Both, 10, 25, 70),
    (Muscle::ScalenusAnterior, RelativeSide::Both, 10, 20, 30),
];

/// Muscles a clinician adds when reviewing a poor response.
const ADDABLE: &[Muscle] = &[
    Muscle::LevatorScapulae,
    Muscle::SemispinalisCapitis,
    Muscle::SemispinalisCervicis,
    Muscle::LongissimusCapitis,
    Muscle::ObliquusCapitisInferior,
    Muscle::ScalenusMedius,
    Muscle::Trapezius,
    Muscle::SpleniusCervicis,
];

impl Posture {
    pub(crate) fn random(random: &mut SeededRandom) -> Self {
        let roll = random.below(100);
        let kind = match roll {
            0..=54 => PostureKind::Rotation,
            55..=79 => PostureKind::Tilt,
            80..=91 => PostureKind::Extension,
            _ => PostureKind::Flexion,
        };
        let side = if random.percent(50) {
            Side::Left
        } else {
            Side::Right
        };
        Self { kind, side }
    }

    fn pattern(self) -> &'static [PatternMuscle] {
        match self.kind {
            PostureKind::Rotation => ROTATION,
            PostureKind::Tilt => TILT,
            PostureKind::Extension => EXTENSION,
            PostureKind::Flexion => FLEXION,
        }
    }

    fn usual_guidance(self, random: &mut SeededRandom) -> Guidance {
        match self.kind {
            PostureKind::Flexion => Guidance::Ultrasound,
            _ => random.pick(&[
                Guidance::None,
                Guidance::None,
                Guidance::Emg,
                Guidance::Emg,
                Guidance::Ultrasound,
            ]),
        }
    }
}

fn opposite(side: Side) -> Side {
    match side {
        Side::Left => Side::Right,
        Side::Right => Side::Left,
    }
}

/// The product's units for a base onabotulinumtoxinA dose, rounded to the
/// step a clinic draws up (conversion ratios as commonly used in practice:
/// about 1:3 for abobotulinumtoxinA, 1:40 for rimabotulinumtoxinB).
fn product_units(product: Product, base_units: u32) -> u32 {
    let (numerator, denominator, step) = match product {
        Product::OnabotulinumtoxinA | Product::IncobotulinumtoxinA => (1, 1, 5),
        Product::DaxibotulinumtoxinA => (1, 1, 5),
        Product::AbobotulinumtoxinA => (3, 1, 10),
        Product::RimabotulinumtoxinB => (40, 1, 250),
    };
    let units = base_units * numerator / denominator;
    (units.div_ceil(step) * step).max(step)
}

/// The step in which a product's doses are changed.
fn dose_step(product: Product) -> u32 {
    product_units(product, 1)
}

/// The most a clinic in the demo gives in one session after a poor response:
/// a little above the label maximum (accepted with a warning), never near
/// the hard one. Routine sessions stay within the label.
fn adjustment_ceiling(product: Product) -> u32 {
    product.label_maximum_units() * 6 / 5
}

/// A first session for a new patient.
pub(crate) fn first_session(
    random: &mut SeededRandom,
    posture: Posture,
    product: Product,
) -> Session {
    let mut muscles = Vec::new();
    for &(muscle, relative, low, high, chance) in posture.pattern() {
        if !random.percent(chance) {
            continue;
        }
        let sides: &[Side] = match relative {
            RelativeSide::Same => &[posture.side],
            RelativeSide::Opposite => &[opposite(posture.side)],
            RelativeSide::Both => &[Side::Left, Side::Right],
        };
        let base = random.between_u32(low, high);
        for &side in sides {
            muscles.push(MuscleDose {
                muscle,
                side,
                units: product_units(product, base),
            });
        }
    }
    let mut session = Session {
        product,
        guidance: posture.usual_guidance(random),
        muscles,
    };
    cap_total(&mut session, product.label_maximum_units());
    session
}

/// Lowers the largest muscles until the session is within `ceiling`.
fn cap_total(session: &mut Session, ceiling: u32) {
    let step = dose_step(session.product);
    while session.total_units() > ceiling {
        let Some(largest) = session.muscles.iter_mut().max_by_key(|dose| dose.units) else {
            return;
        };
        if largest.units <= step {
            return;
        }
        largest.units -= step;
    }
}

/// Scales every muscle's dose by `percent` / 100, to the nearest of the
/// product's steps, then caps the session at `ceiling`.
fn scale(session: &mut Session, percent: u32, ceiling: u32) {
    let step = dose_step(session.product);
    for dose in &mut session.muscles {
        let scaled = dose.units * percent / 100;
        dose.units = ((scaled + step / 2) / step * step).max(step);
    }
    cap_total(session, ceiling);
}

/// The same session with a small dose change that the audit does not count
/// as an adjustment (under 10%), or unchanged: a routine repeat.
pub(crate) fn routine_repeat(random: &mut SeededRandom, previous: &Session) -> Session {
    let mut next = previous.clone();
    if random.percent(30) {
        let step = dose_step(next.product);
        let more = random.percent(50);
        if let Some(dose) = next.muscles.first_mut() {
            if more {
                dose.units += step;
            } else if dose.units > step {
                dose.units -= step;
            }
        }
        if is_adjusted(previous, &next)
            || next.total_units()
                > previous
                    .total_units()
                    .max(next.product.label_maximum_units())
        {
            next = previous.clone();
        }
    }
    next
}

/// A session free to differ in any way from the previous one: titration
/// while a patient is doing well (not audited as an adjustment).
pub(crate) fn titrated(random: &mut SeededRandom, previous: &Session) -> Session {
    let mut next = previous.clone();
    let label = next.product.label_maximum_units();
    match random.below(10) {
        0 => scale(&mut next, 110 + random.between_u32(0, 20), label),
        1 => scale(&mut next, 80 + random.between_u32(0, 12), label),
        _ => return routine_repeat(random, previous),
    }
    next
}

/// The clinic's answer to a poor response: change dose, muscles and/or
/// guidance. The result is guaranteed to count as an adjusted cycle.
pub(crate) fn adjusted(random: &mut SeededRandom, previous: &Session) -> Session {
    let mut next = previous.clone();
    let ceiling = adjustment_ceiling(next.product);
    if random.percent(70) {
        scale(&mut next, random.between_u32(115, 150), ceiling);
    }
    if random.percent(45) {
        add_muscle(random, &mut next, ceiling);
    }
    if random.percent(35) {
        next.guidance = match next.guidance {
            Guidance::None => random.pick(&[Guidance::Emg, Guidance::Ultrasound]),
            Guidance::Emg | Guidance::Ultrasound => Guidance::EmgUltrasound,
            Guidance::EmgUltrasound => Guidance::Emg,
        };
    }
    if !is_adjusted(previous, &next) {
        add_muscle(random, &mut next, ceiling);
    }
    if !is_adjusted(previous, &next) {
        // Every (muscle, side) pair can be injected, so a session without
        // all thirty of them always has one to add; with all of them, one
        // is dropped instead.
        drop_muscle(&mut next);
    }
    next
}

fn add_muscle(random: &mut SeededRandom, session: &mut Session, ceiling: u32) {
    let step = dose_step(session.product);
    let start = random.below(ADDABLE.len() as u64) as usize;
    let side = if random.percent(50) {
        Side::Left
    } else {
        Side::Right
    };
    let candidates = ADDABLE
        .iter()
        .cycle()
        .skip(start)
        .take(ADDABLE.len())
        .copied()
        .chain(Muscle::ALL.iter().copied());
    for muscle in candidates {
        for side in [side, opposite(side)] {
            if !session.has(muscle, side) {
                session.muscles.push(MuscleDose {
                    muscle,
                    side,
                    units: step * random.between_u32(3, 6),
                });
                cap_total(session, ceiling);
                return;
            }
        }
    }
}

fn drop_muscle(session: &mut Session) {
    if session.muscles.len() > 1 {
        session.muscles.pop();
    }
}

/// The patient's usual BoNT-A session converted to rimabotulinumtoxinB,
/// as done at a switch to BoNT-B.
pub(crate) fn switched_to_bont_b(random: &mut SeededRandom, previous: &Session) -> Session {
    let mut next = previous.clone();
    let from_units_to_base = |product: Product, units: u32| match product {
        Product::AbobotulinumtoxinA => units / 3,
        Product::RimabotulinumtoxinB => units / 40,
        _ => units,
    };
    for dose in &mut next.muscles {
        let base = from_units_to_base(previous.product, dose.units);
        dose.units = product_units(Product::RimabotulinumtoxinB, base);
    }
    next.product = Product::RimabotulinumtoxinB;
    if random.percent(40) && next.guidance == Guidance::None {
        next.guidance = Guidance::Emg;
    }
    cap_total(
        &mut next,
        Product::RimabotulinumtoxinB.label_maximum_units(),
    );
    next
}

/// What a review records for a rating: the clinician's rating and the
/// patient's own account, consistent with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Review {
    pub(crate) rating: Rating,
    pub(crate) percent_improvement: Option<u32>,
    pub(crate) benefit_weeks: Option<u32>,
    pub(crate) twstrs_total: Option<u32>,
}

impl Review {
    pub(crate) fn random(random: &mut SeededRandom, rating: Rating) -> Self {
        let (improvement, weeks, twstrs) = match rating {
            Rating::Good => ((50, 90), (8, 12), (10, 30)),
            Rating::Suboptimal => ((15, 45), (3, 7), (25, 45)),
            Rating::None => ((0, 10), (0, 2), (35, 60)),
        };
        Self {
            rating,
            percent_improvement: random
                .percent(85)
                .then(|| random.between_u32(improvement.0, improvement.1)),
            benefit_weeks: random
                .percent(70)
                .then(|| random.between_u32(weeks.0, weeks.1)),
            twstrs_total: random
                .percent(35)
                .then(|| random.between_u32(twstrs.0, twstrs.1)),
        }
    }
}

/// A BoNT-A product as a UK clinic uses them: mostly Botox and Dysport.
pub(crate) fn random_bont_a(random: &mut SeededRandom) -> Product {
    match random.below(100) {
        0..=54 => Product::OnabotulinumtoxinA,
        55..=89 => Product::AbobotulinumtoxinA,
        90..=97 => Product::IncobotulinumtoxinA,
        _ => Product::DaxibotulinumtoxinA,
    }
}

pub(crate) fn is_bont_a(product: Product) -> bool {
    product.serotype() == Serotype::A
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dose(muscle: Muscle, side: Side, units: u32) -> MuscleDose {
        MuscleDose {
            muscle,
            side,
            units,
        }
    }

    fn session(units: u32) -> Session {
        Session {
            product: Product::OnabotulinumtoxinA,
            guidance: Guidance::Emg,
            muscles: vec![dose(Muscle::SpleniusCapitis, Side::Left, units)],
        }
    }

    #[test]
    fn ten_percent_is_an_adjustment_and_nine_is_not() {
        assert!(is_adjusted(&session(200), &session(220)));
        assert!(is_adjusted(&session(200), &session(180)));
        assert!(!is_adjusted(&session(200), &session(218)));
        assert!(!is_adjusted(&session(200), &session(200)));
    }

    #[test]
    fn adjusted_sessions_always_count_and_routine_repeats_never_do() {
        let mut random = SeededRandom::new(11);
        for _ in 0..2000 {
            let posture = Posture::random(&mut random);
            let product = random_bont_a(&mut random);
            let first = first_session(&mut random, posture, product);
            let changed = adjusted(&mut random, &first);
            assert!(is_adjusted(&first, &changed), "{first:?} -> {changed:?}");
            let repeat = routine_repeat(&mut random, &changed);
            assert!(!is_adjusted(&changed, &repeat));
            for candidate in [&first, &changed, &repeat] {
                assert!(!candidate.muscles.is_empty());
                assert!(candidate.total_units() <= candidate.product.hard_maximum_units());
                assert!(candidate.muscles.iter().all(|dose| dose.units > 0));
            }
            let bont_b = switched_to_bont_b(&mut random, &changed);
            assert!(bont_b.total_units() <= Product::RimabotulinumtoxinB.hard_maximum_units());
        }
    }
}
