//! One patient's clinical history, built in clinical order: the treatment
//! cycles with their reviews, resistance tests, referrals and stopping.
//!
//! A history is written first as clinical truth (what happened, in what
//! order, with which final ratings); how it is typed into the log (late
//! entries, corrections, duplicates) is `emit`'s business. Keeping the two
//! apart is what lets the noise never move an audit number: the audit reads
//! clinical order and final ratings, and those are fixed here.
//!
//! Each course builder states the audit outcome it produces in its comment;
//! the founding cohort (`paper`) relies on those statements.

use domain::{Product, Rating, ReferralTarget, ResistanceMethod, ResistanceResult, Sex};

use crate::clinic::{self, Posture, Review, Session};
use crate::seeded::SeededRandom;

/// One treatment cycle: the session and its reviews in the order they were
/// made; the last one is the rating that counts, none means unrated.
#[derive(Debug, Clone)]
pub(crate) struct Cycle {
    pub(crate) day: i32,
    pub(crate) session: Session,
    pub(crate) reviews: Vec<(i32, Review)>,
}

/// Something that happened to the patient, dated in days since 1970-01-01
/// once placed (relative to the registration before that).
#[derive(Debug, Clone)]
pub(crate) enum Item {
    Cycle(Cycle),
    ResistanceTest {
        day: i32,
        method: ResistanceMethod,
        result: ResistanceResult,
        /// Laboratory assays report a titre, in tenths of mU/ml.
        titre_tenths: Option<u32>,
    },
    Referral {
        day: i32,
        target: ReferralTarget,
    },
    Discontinued {
        day: i32,
        reason: &'static str,
    },
}

impl Item {
    pub(crate) fn day(&self) -> i32 {
        match self {
            Item::Cycle(cycle) => cycle.day,
            Item::ResistanceTest { day, .. }
            | Item::Referral { day, .. }
            | Item::Discontinued { day, .. } => *day,
        }
    }

    fn last_day(&self) -> i32 {
        match self {
            Item::Cycle(cycle) => cycle
                .reviews
                .iter()
                .map(|(day, _)| *day)
                .max()
                .unwrap_or(cycle.day)
                .max(cycle.day),
            other => other.day(),
        }
    }

    fn shift(&mut self, by: i32) {
        match self {
            Item::Cycle(cycle) => {
                cycle.day += by;
                for (day, _) in &mut cycle.reviews {
                    *day += by;
                }
            }
            Item::ResistanceTest { day, .. }
            | Item::Referral { day, .. }
            | Item::Discontinued { day, .. } => *day += by,
        }
    }
}

/// Registration details; every field is optional in the contract and a few
/// are left out, as real registers do.
#[derive(Debug, Clone)]
pub(crate) struct Registration {
    pub(crate) day: i32,
    pub(crate) birth_year: Option<i32>,
    pub(crate) sex: Option<Sex>,
    pub(crate) onset_year: Option<i32>,
}

/// A patient's whole history, in clinical order.
#[derive(Debug, Clone)]
pub(crate) struct History {
    pub(crate) registration: Registration,
    pub(crate) items: Vec<Item>,
}

impl History {
    /// The last clinical day of the history, relative to registration.
    pub(crate) fn span_days(&self) -> i32 {
        self.items
            .iter()
            .map(Item::last_day)
            .max()
            .unwrap_or(0)
            .max(self.registration.day)
    }

    /// Moves the whole history so it starts on `start` (days since
    /// 1970-01-01) and fills in the demographics that depend on the year.
    pub(crate) fn place(&mut self, start: i32, random: &mut SeededRandom) {
        let by = start - self.registration.day;
        self.registration.day = start;
        for item in &mut self.items {
            item.shift(by);
        }
        let registration_year = crate::emit::year_of(start);
        let birth_year = registration_year - random.between(25, 80) as i32;
        let onset_year = (birth_year + random.between(20, 60) as i32).min(registration_year);
        self.registration.birth_year = random.percent(95).then_some(birth_year);
        self.registration.sex = if random.percent(93) {
            // Cervical dystonia is about twice as common in women.
            Some(if random.percent(66) {
                Sex::Female
            } else {
                Sex::Male
            })
        } else {
            None
        };
        self.registration.onset_year = random.percent(75).then_some(onset_year);
    }
}

/// How long and how noisy a history is: the founding cohort is a few years
/// per patient, the scale generator decades.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// Good BoNT-A cycles before the onset of SNR.
    pub(crate) good_cycles_before_onset: (u32, u32),
    /// Further cycles once a course has settled (regained, switched, or a
    /// long-term good responder).
    pub(crate) maintenance_cycles: (u32, u32),
    /// No maintenance cycle starts after this many days from registration,
    /// so the whole history fits before the end of the date window.
    pub(crate) day_budget: i32,
    /// Chance, in per mille, that an interval is shorter than 12 weeks.
    pub(crate) short_interval_per_mille: u64,
    /// Chance, in per mille, that a routine cycle is never rated.
    pub(crate) unrated_per_mille: u64,
    /// Chance, in per mille, that a cycle is reviewed twice (the last wins).
    pub(crate) reassessed_per_mille: u64,
}

/// The group a patient's SNR onset falls in (the onset cycle's rating).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    Suboptimal,
    NoResponse,
}

/// What the clinic did for a patient who did not regain a good response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escalation {
    /// Switched to rimabotulinumtoxinB.
    BontB,
    /// Referred for deep brain stimulation.
    Dbs,
    /// Toxin treatment stopped (patient's choice or a toxin holiday).
    Discontinue,
    /// Carried on with the same BoNT-A product, without success.
    Continue,
}

/// The course after SNR onset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Course {
    /// Regained a good response after an adjustment (never without one).
    Regain,
    NotRegained {
        /// Whether an adjusted BoNT-A cycle comes before the escalation
        /// (what BNN-1 asks for); when false no post-onset cycle before the
        /// escalation is an adjustment.
        adjust_first: bool,
        /// A post-onset resistance test before the escalation, with its result.
        test: Option<ResistanceResult>,
        then: Escalation,
    },
}

/// A patient who is not in the SNR cohort by construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonSnr {
    /// Good responses throughout (maybe a poor dose-finding first cycle).
    GoodResponder,
    /// One good BoNT-A cycle, then only poor ones: below the two good
    /// cycles SNR needs.
    OneGoodThenPoor,
    /// Poor from the first cycle on (primary non-response).
    PrimaryNonResponder,
    /// Registered, not yet injected.
    NotYetInjected,
}

/// Builds one history in clinical order.
pub(crate) struct Builder<'random> {
    random: &'random mut SeededRandom,
    shape: Shape,
    items: Vec<Item>,
    /// Day of the latest cycle, if any.
    last_cycle_day: Option<i32>,
    /// Latest day of anything so far (reviews, tests, referrals).
    last_day: i32,
    /// The latest BoNT-A session, what adjustments start from.
    last_bont_a: Option<Session>,
}

impl<'random> Builder<'random> {
    pub(crate) fn new(random: &'random mut SeededRandom, shape: Shape) -> Self {
        Self {
            random,
            shape,
            items: Vec::new(),
            last_cycle_day: None,
            last_day: 0,
            last_bont_a: None,
        }
    }

    fn finish(self) -> History {
        History {
            registration: Registration {
                day: 0,
                birth_year: None,
                sex: None,
                onset_year: None,
            },
            items: self.items,
        }
    }

    fn within_budget(&self) -> bool {
        self.last_day < self.shape.day_budget
    }

    fn next_cycle_day(&mut self) -> i32 {
        let Some(previous) = self.last_cycle_day else {
            // First injection at the first clinic or a few weeks later.
            return self.random.between(0, 42) as i32;
        };
        let interval = if self.random.per_mille(self.shape.short_interval_per_mille) {
            self.random.between(63, 83)
        } else if self.random.percent(5) {
            self.random.between(140, 220)
        } else {
            self.random.between(84, 126)
        } as i32;
        (previous + interval).max(self.last_day + 7)
    }

    /// Records a cycle. `rating` None leaves it unrated; otherwise it may be
    /// reviewed twice, the later review (which counts) giving `rating`.
    fn cycle(&mut self, session: Session, rating: Option<Rating>) {
        let day = self.next_cycle_day();
        let mut reviews = Vec::new();
        if let Some(rating) = rating {
            if self.random.per_mille(self.shape.reassessed_per_mille) {
                // An early telephone review, overridden at the clinic visit.
                let early = match rating {
                    Rating::Good => Rating::Suboptimal,
                    Rating::Suboptimal | Rating::None => Rating::Good,
                };
                let early_day = day + self.random.between(10, 21) as i32;
                reviews.push((early_day, Review::random(self.random, early)));
                let late_day = early_day + self.random.between(14, 28) as i32;
                reviews.push((late_day, Review::random(self.random, rating)));
            } else {
                let review_day = day + self.random.between(28, 49) as i32;
                reviews.push((review_day, Review::random(self.random, rating)));
            }
        }
        self.last_day = reviews
            .iter()
            .map(|(day, _)| *day)
            .max()
            .unwrap_or(day)
            .max(day);
        self.last_cycle_day = Some(day);
        if clinic::is_bont_a(session.product) {
            self.last_bont_a = Some(session.clone());
        }
        self.items.push(Item::Cycle(Cycle {
            day,
            session,
            reviews,
        }));
    }

    /// A routine cycle rated `rating`, or left unrated now and then.
    fn routine_cycle(&mut self, session: Session, rating: Rating) {
        let rating = (!self.random.per_mille(self.shape.unrated_per_mille)).then_some(rating);
        self.cycle(session, rating);
    }

    fn after_last(&mut self, low: i64, high: i64) -> i32 {
        self.last_day + self.random.between(low, high) as i32
    }

    fn resistance_test(&mut self, result: ResistanceResult) {
        let day = self.after_last(7, 28);
        let method = self.random.pick(&[
            ResistanceMethod::Frontalis,
            ResistanceMethod::UnilateralBrow,
            ResistanceMethod::UnilateralBrow,
            ResistanceMethod::Edb,
            ResistanceMethod::Scm,
            ResistanceMethod::Mhda,
            ResistanceMethod::Elisa,
        ]);
        let titre_tenths = matches!(
            method,
            ResistanceMethod::Mhda | ResistanceMethod::Mpa | ResistanceMethod::Elisa
        )
        .then(|| match result {
            ResistanceResult::Positive => self.random.between_u32(10, 200),
            ResistanceResult::Equivocal => self.random.between_u32(5, 10),
            ResistanceResult::Negative => self.random.between_u32(0, 4),
        });
        self.last_day = day;
        self.items.push(Item::ResistanceTest {
            day,
            method,
            result,
            titre_tenths,
        });
    }

    fn referral(&mut self, target: ReferralTarget) {
        let day = self.after_last(3, 45);
        self.last_day = day;
        self.items.push(Item::Referral { day, target });
    }

    fn discontinued(&mut self, reason: &'static str) {
        let day = self.after_last(0, 30);
        self.last_day = day;
        self.items.push(Item::Discontinued { day, reason });
    }

    fn bont_a_session(&self) -> Option<&Session> {
        self.last_bont_a.as_ref()
    }

    fn poor_rating(&mut self, group: Group) -> Rating {
        let usual_percent = 80;
        match (group, self.random.percent(usual_percent)) {
            (Group::Suboptimal, true) | (Group::NoResponse, false) => Rating::Suboptimal,
            (Group::NoResponse, true) | (Group::Suboptimal, false) => Rating::None,
        }
    }

    /// Good cycles, titrated, while within the day budget.
    fn maintenance(&mut self, mut session: Session) {
        let (low, high) = self.shape.maintenance_cycles;
        let count = self.random.between_u32(low, high);
        for _ in 0..count {
            if !self.within_budget() {
                break;
            }
            session = clinic::titrated(self.random, &session);
            self.routine_cycle(session.clone(), Rating::Good);
        }
    }
}

fn first_session(random: &mut SeededRandom, product: Product) -> Session {
    let posture = Posture::random(random);
    clinic::first_session(random, posture, product)
}

/// A patient who develops SNR in `group` and then follows `course`.
///
/// Audit outcome: onset at the cycle rated by `group` (at least two good
/// BoNT-A cycles come before it, no poor one after the second good); then
/// - `Regain`: regained with adjustment (the first post-onset cycle is an
///   adjusted one, and no good cycle comes before it), no BoNT-B, no DBS, no
///   resistance test;
/// - `NotRegained`: every post-onset BoNT-A cycle poor or unrated, BoNT-A
///   always O's product; switched to BoNT-B exactly when `then` is `BontB`,
///   referred for DBS exactly when `Dbs`; assessed for resistance exactly
///   when `test` is set, confirmed when it is positive; the test and any
///   adjusted cycle dated strictly before the escalation. With a positive
///   test, a change of management (BNN-4) follows exactly when `then` is not
///   `Continue`.
pub(crate) fn snr(
    random: &mut SeededRandom,
    shape: Shape,
    group: Group,
    course: Course,
) -> History {
    let product = clinic::random_bont_a(random);
    let mut session = first_session(random, product);
    let mut builder = Builder::new(random, shape);

    // Before onset: maybe a poor dose-finding first cycle (no good cycle
    // before it, so not an onset), then good cycles; a poor one may come
    // after the first good (one good is not enough for onset).
    if builder.random.percent(15) {
        let rating = builder.poor_rating(group);
        builder.cycle(session.clone(), Some(rating));
        session = clinic::adjusted(builder.random, &session);
    }
    let (low, high) = shape.good_cycles_before_onset;
    let good_cycles = builder.random.between_u32(low.max(2), high.max(2));
    for index in 0..good_cycles {
        if index > 0 {
            session = clinic::titrated(builder.random, &session);
        }
        if index == 1 && builder.random.percent(8) {
            builder.cycle(session.clone(), Some(Rating::Suboptimal));
        }
        if builder.random.per_mille(shape.unrated_per_mille) {
            builder.cycle(session.clone(), None);
        }
        builder.cycle(session.clone(), Some(Rating::Good));
    }

    // The onset cycle O, a routine repeat.
    let onset = clinic::routine_repeat(builder.random, &session);
    let onset_rating = match group {
        Group::Suboptimal => Rating::Suboptimal,
        Group::NoResponse => Rating::None,
    };
    builder.cycle(onset.clone(), Some(onset_rating));

    match course {
        Course::Regain => {
            let first_try = clinic::adjusted(builder.random, &onset);
            let regained_on = if builder.random.percent(40) {
                // The first adjustment was not enough: poor (or unrated),
                // then a second try that works.
                let rating = builder.poor_rating(group);
                let rating = (!builder.random.percent(15)).then_some(rating);
                builder.cycle(first_try.clone(), rating);
                if builder.random.percent(60) {
                    clinic::adjusted(builder.random, &first_try)
                } else {
                    clinic::routine_repeat(builder.random, &first_try)
                }
            } else {
                first_try
            };
            builder.cycle(regained_on.clone(), Some(Rating::Good));
            builder.maintenance(regained_on);
        }
        Course::NotRegained {
            adjust_first,
            test,
            then,
        } => {
            let mut last = onset.clone();
            if adjust_first {
                last = clinic::adjusted(builder.random, &last);
                let rating = builder.poor_rating(group);
                builder.cycle(last.clone(), Some(rating));
                if builder.random.percent(40) {
                    last = clinic::adjusted(builder.random, &last);
                    let rating = builder.poor_rating(group);
                    builder.routine_cycle(last.clone(), rating);
                }
            } else if builder.random.percent(50) {
                last = clinic::routine_repeat(builder.random, &last);
                let rating = builder.poor_rating(group);
                builder.cycle(last.clone(), Some(rating));
            }
            if let Some(result) = test {
                builder.resistance_test(result);
            }
            match then {
                Escalation::BontB => {
                    let mut bont_b = clinic::switched_to_bont_b(builder.random, &last);
                    let rating = if builder.random.percent(65) {
                        Rating::Good
                    } else {
                        Rating::Suboptimal
                    };
                    builder.cycle(bont_b.clone(), Some(rating));
                    let (low, high) = shape.maintenance_cycles;
                    for _ in 0..builder.random.between_u32(low, high) {
                        if !builder.within_budget() {
                            break;
                        }
                        bont_b = clinic::titrated(builder.random, &bont_b);
                        let rating = if builder.random.percent(80) {
                            Rating::Good
                        } else {
                            Rating::Suboptimal
                        };
                        builder.routine_cycle(bont_b.clone(), rating);
                    }
                }
                Escalation::Dbs => {
                    builder.referral(ReferralTarget::Dbs);
                    // Injections go on while waiting for surgery.
                    for _ in 0..builder.random.between_u32(0, 2) {
                        last = clinic::routine_repeat(builder.random, &last);
                        let rating = builder.poor_rating(group);
                        builder.routine_cycle(last.clone(), rating);
                    }
                }
                Escalation::Discontinue => {
                    let reason = builder.random.pick(&[
                        "toxin holiday after loss of response",
                        "no useful benefit; patient chose to stop injections",
                        "stopped at patient request",
                    ]);
                    builder.discontinued(reason);
                }
                Escalation::Continue => {
                    if builder.random.percent(40) {
                        builder.referral(ReferralTarget::Physiotherapy);
                    }
                    let (low, high) = shape.maintenance_cycles;
                    for _ in 0..builder.random.between_u32(low.max(1), high.max(1)) {
                        if !builder.within_budget() {
                            break;
                        }
                        last = if builder.random.percent(30) {
                            clinic::adjusted(builder.random, &last)
                        } else {
                            clinic::routine_repeat(builder.random, &last)
                        };
                        let rating = builder.poor_rating(group);
                        builder.routine_cycle(last.clone(), rating);
                    }
                }
            }
        }
    }
    builder.finish()
}

/// A patient outside the SNR cohort (see [`NonSnr`] for why each kind is).
pub(crate) fn non_snr(random: &mut SeededRandom, shape: Shape, kind: NonSnr) -> History {
    let product = clinic::random_bont_a(random);
    let mut session = first_session(random, product);
    let mut builder = Builder::new(random, shape);
    match kind {
        NonSnr::GoodResponder => {
            if builder.random.percent(15) {
                builder.cycle(session.clone(), Some(Rating::Suboptimal));
                session = clinic::adjusted(builder.random, &session);
            }
            builder.routine_cycle(session.clone(), Rating::Good);
            let (low, high) = shape.maintenance_cycles;
            let (low, high) = (low + 2, high + shape.good_cycles_before_onset.1);
            for _ in 0..builder.random.between_u32(low, high) {
                if !builder.within_budget() {
                    break;
                }
                session = clinic::titrated(builder.random, &session);
                builder.routine_cycle(session.clone(), Rating::Good);
            }
        }
        NonSnr::OneGoodThenPoor => {
            builder.cycle(session.clone(), Some(Rating::Good));
            for _ in 0..builder.random.between_u32(1, 4) {
                session = clinic::adjusted(builder.random, &session);
                let rating = builder.poor_rating(Group::Suboptimal);
                builder.routine_cycle(session.clone(), rating);
            }
            stop_or_switch(&mut builder);
        }
        NonSnr::PrimaryNonResponder => {
            let rating = builder.poor_rating(Group::NoResponse);
            builder.cycle(session.clone(), Some(rating));
            for _ in 0..builder.random.between_u32(1, 3) {
                session = clinic::adjusted(builder.random, &session);
                let rating = builder.poor_rating(Group::NoResponse);
                builder.routine_cycle(session.clone(), rating);
            }
            if builder.random.percent(40) {
                builder.resistance_test(ResistanceResult::Negative);
            }
            stop_or_switch(&mut builder);
        }
        NonSnr::NotYetInjected => {
            if builder.random.percent(30) {
                builder.referral(ReferralTarget::Physiotherapy);
            }
        }
    }
    builder.finish()
}

/// The end of a poor responder's BoNT-A treatment: BoNT-B (cycles the SNR
/// walk skips), a referral, or stopping. Never another BoNT-A cycle.
fn stop_or_switch(builder: &mut Builder<'_>) {
    match builder.random.below(4) {
        0 => {
            if let Some(last) = builder.bont_a_session().cloned() {
                let mut bont_b = clinic::switched_to_bont_b(builder.random, &last);
                for _ in 0..builder.random.between_u32(1, 4) {
                    let rating = builder.random.pick(&[Rating::Good, Rating::Suboptimal]);
                    builder.routine_cycle(bont_b.clone(), rating);
                    bont_b = clinic::titrated(builder.random, &bont_b);
                }
            }
        }
        1 => {
            let target = builder.random.pick(&[
                ReferralTarget::Dbs,
                ReferralTarget::PeripheralDenervation,
                ReferralTarget::Psychology,
                ReferralTarget::Other,
            ]);
            builder.referral(target);
        }
        _ => builder.discontinued("no useful benefit from botulinum toxin"),
    }
}
