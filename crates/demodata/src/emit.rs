//! How histories are typed into the log: NDJSON lines in file order, with
//! the noise of a real clinic's data entry: late (backdated) entries,
//! mistakes voided and entered again, the same line sent twice.
//!
//! None of this noise changes an audit number: a voided event is ignored,
//! a backdated cycle keeps its clinical date, its reviews keep their order,
//! and an exact duplicate appends nothing. What it does change is the work
//! an importer has to do, which is the point.
//!
//! Lines are written by hand rather than through a JSON library: the scale
//! generator writes millions per second, and every value written here comes
//! from a closed vocabulary, a number, a date or a fixed ASCII text, none of
//! which needs escaping.

use domain::{
    Guidance, Muscle, MuscleDose, Product, Rating, ResistanceMethod, ResistanceResult, Side,
};

use crate::clinic::{Review, Session};
use crate::history::{Cycle, History, Item};
use crate::seeded::{SeededRandom, mix64};

/// The civil date (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`, exact over the whole i32 range used).
pub(crate) fn civil(days: i32) -> (i32, u32, u32) {
    let z = i64::from(days) + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Years of clinical dates are four-digit; month and day are 1..=12 and
    // 1..=31 by construction, so the narrowing conversions are exact.
    (year as i32, month as u32, day as u32)
}

/// Days since 1970-01-01 of a civil date (Hinnant's `days_from_civil`).
pub(crate) fn days_from_civil(year: i32, month: u32, day: u32) -> i32 {
    let year = i64::from(year) - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // Clinical dates are within a few thousand years of 1970.
    (era * 146_097 + day_of_era - 719_468) as i32
}

pub(crate) fn year_of(days: i32) -> i32 {
    civil(days).0
}

/// Event ids shaped like random (version 4) UUIDs. The low 64 bits are a
/// bijection of a counter keyed by the seed, so no two events of a file ever
/// share an id; the high 64 bits are a hash of the low ones, so ids look as
/// random as a client's would, and files of different seeds can be imported
/// into one log.
#[derive(Debug)]
pub(crate) struct EventIds {
    key: u64,
    counter: u64,
}

/// An event id as its 128 bits; written out by [`push_event_id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct EventIdValue(u128);

impl EventIds {
    pub(crate) fn new(seed: u64, salt: u64) -> Self {
        Self {
            key: mix64(seed ^ mix64(salt)),
            counter: 0,
        }
    }

    pub(crate) fn next_id(&mut self) -> EventIdValue {
        let low = mix64(self.counter ^ self.key);
        self.counter += 1;
        // The UUID version nibble says "random".
        let high = (mix64(low ^ self.key.rotate_left(17)) & !0xF000) | 0x4000;
        EventIdValue((u128::from(high) << 64) | u128::from(low))
    }
}

/// Writes an id in the UUID form `8-4-4-4-12` of lowercase hex digits.
fn push_event_id(bytes: &mut Vec<u8>, id: EventIdValue) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 36];
    let mut position = 0;
    for nibble in (0..32).rev() {
        if matches!(position, 8 | 13 | 18 | 23) {
            text[position] = b'-';
            position += 1;
        }
        text[position] = HEX[((id.0 >> (nibble * 4)) & 0xF) as usize];
        position += 1;
    }
    bytes.extend_from_slice(&text);
}

fn push_number(bytes: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = value;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    bytes.extend_from_slice(&digits[start..]);
}

fn push_date(bytes: &mut Vec<u8>, days: i32) {
    let (year, month, day) = civil(days);
    // Clinical years are 1989..=2025: four digits, positive; month and day
    // are below 100.
    let year = year.unsigned_abs();
    let two = |value: u32| [b'0' + (value / 10 % 10) as u8, b'0' + (value % 10) as u8];
    let [y1, y2] = two(year / 100);
    let [y3, y4] = two(year % 100);
    let [m1, m2] = two(month);
    let [d1, d2] = two(day);
    bytes.extend_from_slice(&[y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2]);
}

/// Builds one line at the end of the arena, envelope first, then body
/// fields in the contract's order.
struct Line<'arena> {
    bytes: &'arena mut Vec<u8>,
    start: usize,
}

impl<'arena> Line<'arena> {
    fn begin(
        bytes: &'arena mut Vec<u8>,
        id: EventIdValue,
        patient: &PatientName<'_>,
        day: i32,
        kind: &str,
    ) -> Self {
        let start = bytes.len();
        bytes.extend_from_slice(b"{\"event_id\":\"");
        push_event_id(bytes, id);
        bytes.extend_from_slice(b"\",\"centre\":\"");
        bytes.extend_from_slice(patient.centre.as_bytes());
        bytes.extend_from_slice(b"\",\"patient\":\"");
        bytes.extend_from_slice(patient.pseudonym.as_bytes());
        bytes.extend_from_slice(b"\",\"occurred_on\":\"");
        push_date(bytes, day);
        bytes.extend_from_slice(b"\",\"type\":\"");
        bytes.extend_from_slice(kind.as_bytes());
        bytes.push(b'"');
        Self { bytes, start }
    }

    fn name(&mut self, name: &str) {
        self.bytes.extend_from_slice(b",\"");
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.extend_from_slice(b"\":");
    }

    fn text(mut self, name: &str, value: &str) -> Self {
        self.name(name);
        self.bytes.push(b'"');
        self.bytes.extend_from_slice(value.as_bytes());
        self.bytes.push(b'"');
        self
    }

    fn event_id(mut self, name: &str, id: EventIdValue) -> Self {
        self.name(name);
        self.bytes.push(b'"');
        push_event_id(self.bytes, id);
        self.bytes.push(b'"');
        self
    }

    fn number(mut self, name: &str, value: u64) -> Self {
        self.name(name);
        push_number(self.bytes, value);
        self
    }

    fn optional_number(self, name: &str, value: Option<u32>) -> Self {
        match value {
            Some(value) => self.number(name, value.into()),
            None => self,
        }
    }

    /// A number with one decimal, given in tenths.
    fn tenths(mut self, name: &str, tenths: u32) -> Self {
        self.name(name);
        push_number(self.bytes, u64::from(tenths / 10));
        self.bytes.push(b'.');
        push_number(self.bytes, u64::from(tenths % 10));
        self
    }

    fn muscles(mut self, muscles: &[MuscleDose]) -> Self {
        self.name("muscles");
        self.bytes.push(b'[');
        for (index, dose) in muscles.iter().enumerate() {
            if index > 0 {
                self.bytes.push(b',');
            }
            self.bytes.extend_from_slice(b"{\"muscle\":\"");
            self.bytes
                .extend_from_slice(dose.muscle.as_str().as_bytes());
            self.bytes.extend_from_slice(b"\",\"side\":\"");
            self.bytes.extend_from_slice(dose.side.as_str().as_bytes());
            self.bytes.extend_from_slice(b"\",\"units\":");
            push_number(self.bytes, dose.units.into());
            self.bytes.push(b'}');
        }
        self.bytes.push(b']');
        self
    }

    /// Closes the line and returns where it is in the arena.
    fn end(self) -> Span {
        self.bytes.push(b'}');
        Span {
            start: self.start,
            end: self.bytes.len(),
        }
    }
}

/// Where a line is in the arena of lines.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// How often each kind of data-entry noise happens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Noise {
    /// An injection entered wrongly, voided, and entered again (per cycle).
    pub(crate) voided_injection_per_mille: u64,
    /// A review entered with the wrong rating, voided, entered again.
    pub(crate) voided_review_per_mille: u64,
    /// A resistance test entered with the wrong method, voided, entered again.
    pub(crate) voided_test_per_mille: u64,
    /// A patient with one cycle typed in late, after the next cycle.
    pub(crate) backdated_cycle_percent: u64,
    /// A line sent twice (an exact duplicate).
    pub(crate) duplicate_line_per_mille: u64,
}

/// A line with its place in file order: entry day, then the patient's
/// number in the file, then the order the patient's lines were typed in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub(crate) entry_day: i32,
    pub(crate) patient: u32,
    pub(crate) sequence: u32,
    /// The line's text in the arena it was written to.
    pub(crate) line: Span,
}

impl Entry {
    pub(crate) fn file_order(&self) -> (i32, u32, u32) {
        (self.entry_day, self.patient, self.sequence)
    }
}

/// Who a history belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PatientName<'name> {
    pub(crate) centre: &'name str,
    pub(crate) pseudonym: &'name str,
    /// The patient's number in the file, the tie-break of file order.
    pub(crate) number: u32,
}

struct PatientWriter<'context> {
    name: PatientName<'context>,
    ids: &'context mut EventIds,
    random: &'context mut SeededRandom,
    noise: Noise,
    /// Where the lines' text goes.
    arena: &'context mut Vec<u8>,
    /// The patient's lines, in the order they were typed in.
    entries: Vec<Entry>,
    /// Typing order; even numbers, so a duplicate (odd) sorts right after
    /// its original when sent the same day.
    sequence: u32,
}

impl<'context> PatientWriter<'context> {
    fn line(&mut self, id: EventIdValue, day: i32, kind: &str) -> Line<'_> {
        Line::begin(self.arena, id, &self.name, day, kind)
    }

    fn push(&mut self, entry_day: i32, line: Span) {
        self.sequence += 2;
        self.entries.push(Entry {
            entry_day,
            patient: self.name.number,
            sequence: self.sequence,
            line,
        });
    }

    fn registration(&mut self, history: &History) {
        let registration = &history.registration;
        let id = self.ids.next_id();
        let mut line = self.line(id, registration.day, "patient_registered");
        if let Some(year) = registration.birth_year {
            line = line.number("birth_year", year.unsigned_abs().into());
        }
        if let Some(sex) = registration.sex {
            line = line.text("sex", sex.as_str());
        }
        if let Some(year) = registration.onset_year {
            line = line.number("onset_year", year.unsigned_abs().into());
        }
        let span = line.end();
        self.push(registration.day, span);
    }

    fn injection(&mut self, entry_day: i32, day: i32, session: &Session) -> EventIdValue {
        let id = self.ids.next_id();
        let span = self
            .line(id, day, "injection_administered")
            .text("product", session.product.as_str())
            .number("total_units", session.total_units().into())
            .text("guidance", session.guidance.as_str())
            .muscles(&session.muscles)
            .end();
        self.push(entry_day, span);
        id
    }

    fn review(
        &mut self,
        entry_day: i32,
        day: i32,
        injection: EventIdValue,
        review: &Review,
    ) -> EventIdValue {
        let id = self.ids.next_id();
        let span = self
            .line(id, day, "response_assessed")
            .event_id("injection_event_id", injection)
            .text("rating", review.rating.as_str())
            .optional_number("percent_improvement", review.percent_improvement)
            .optional_number("benefit_weeks", review.benefit_weeks)
            .optional_number("twstrs_total", review.twstrs_total)
            .end();
        self.push(entry_day, span);
        id
    }

    fn resistance_test(
        &mut self,
        day: i32,
        method: ResistanceMethod,
        result: ResistanceResult,
        titre_tenths: Option<u32>,
    ) -> EventIdValue {
        let id = self.ids.next_id();
        let mut line = self
            .line(id, day, "resistance_tested")
            .text("method", method.as_str())
            .text("result", result.as_str());
        if let Some(tenths) = titre_tenths {
            line = line.tenths("titre_mu_per_ml", tenths);
        }
        let span = line.end();
        self.push(day, span);
        id
    }

    fn void(&mut self, entry_day: i32, day: i32, target: EventIdValue, reason: &str) {
        let id = self.ids.next_id();
        let span = self
            .line(id, day, "event_voided")
            .event_id("target_event_id", target)
            .text("reason", reason)
            .end();
        self.push(entry_day, span);
    }

    fn cycle(&mut self, cycle: &Cycle, backdated_entry: Option<i32>) {
        let injection_entry = backdated_entry.unwrap_or(cycle.day);
        if self.random.per_mille(self.noise.voided_injection_per_mille) {
            let (mistake, reason) = mistaken(self.random, &cycle.session);
            let wrong = self.injection(injection_entry, cycle.day, &mistake);
            self.void(injection_entry, cycle.day, wrong, reason);
        }
        let injection = self.injection(injection_entry, cycle.day, &cycle.session);

        for (index, (day, review)) in cycle.reviews.iter().enumerate() {
            let entry = backdated_entry.unwrap_or(*day);
            let is_last = index + 1 == cycle.reviews.len();
            if is_last && self.random.per_mille(self.noise.voided_review_per_mille) {
                let mistake = Review {
                    rating: match review.rating {
                        Rating::Good => Rating::None,
                        Rating::Suboptimal | Rating::None => Rating::Good,
                    },
                    ..*review
                };
                let wrong = self.review(entry, *day, injection, &mistake);
                self.void(entry, *day, wrong, "rating entered in error");
            }
            self.review(entry, *day, injection, review);
        }
    }

    fn item(&mut self, item: &Item, backdated_entry: Option<i32>) {
        match item {
            Item::Cycle(cycle) => self.cycle(cycle, backdated_entry),
            Item::ResistanceTest {
                day,
                method,
                result,
                titre_tenths,
            } => {
                if self.random.per_mille(self.noise.voided_test_per_mille) {
                    let wrong_method = if *method == ResistanceMethod::Frontalis {
                        ResistanceMethod::UnilateralBrow
                    } else {
                        ResistanceMethod::Frontalis
                    };
                    let wrong = self.resistance_test(*day, wrong_method, *result, *titre_tenths);
                    self.void(*day, *day, wrong, "wrong test method recorded");
                }
                self.resistance_test(*day, *method, *result, *titre_tenths);
            }
            Item::Referral { day, target } => {
                let id = self.ids.next_id();
                let span = self
                    .line(id, *day, "referral_made")
                    .text("target", target.as_str())
                    .end();
                self.push(*day, span);
            }
            Item::Discontinued { day, reason } => {
                let id = self.ids.next_id();
                let span = self
                    .line(id, *day, "treatment_discontinued")
                    .text("reason", reason)
                    .end();
                self.push(*day, span);
            }
        }
    }
}

/// A plausible data-entry mistake in a session, and the reason it is voided.
/// The mistaken session is still within the product's hard maximum.
fn mistaken(random: &mut SeededRandom, session: &Session) -> (Session, &'static str) {
    let mut wrong = session.clone();
    if session.product == Product::OnabotulinumtoxinA && random.percent(30) {
        wrong.product = Product::AbobotulinumtoxinA;
        return (wrong, "wrong product recorded");
    }
    if random.percent(50)
        && let Some(first) = wrong.muscles.first().copied()
    {
        let flipped = match first.side {
            Side::Left => Side::Right,
            Side::Right => Side::Left,
        };
        if !wrong
            .muscles
            .iter()
            .any(|dose| dose.muscle == first.muscle && dose.side == flipped)
        {
            wrong.muscles[0].side = flipped;
            return (wrong, "muscle recorded on the wrong side");
        }
    }
    if let Some(first) = wrong.muscles.first_mut() {
        // Five dose steps more: below the hard maximum for every product,
        // since adjustments stop at 120% of the label maximum.
        let step = match session.product {
            Product::AbobotulinumtoxinA => 10,
            Product::RimabotulinumtoxinB => 250,
            _ => 5,
        };
        first.units += 5 * step;
    } else {
        wrong.guidance = Guidance::None;
        wrong.muscles.push(MuscleDose {
            muscle: Muscle::SpleniusCapitis,
            side: Side::Left,
            units: 50,
        });
    }
    (wrong, "wrong dose recorded")
}

/// Writes one patient's lines into `arena` and their places in file order
/// into `out` (appended; the caller sorts by [`Entry::file_order`]).
pub(crate) fn emit_patient(
    history: &History,
    name: PatientName<'_>,
    ids: &mut EventIds,
    random: &mut SeededRandom,
    noise: Noise,
    arena: &mut Vec<u8>,
    out: &mut Vec<Entry>,
) {
    let mut writer = PatientWriter {
        name,
        ids,
        random,
        noise,
        arena,
        entries: std::mem::take(out),
        sequence: 0,
    };
    let first_entry = writer.entries.len();
    writer.registration(history);

    // A cycle typed in late: after the next cycle was already entered.
    let mut cycle_positions = history
        .items
        .iter()
        .enumerate()
        .filter(|(_, item)| matches!(item, Item::Cycle(_)))
        .map(|(position, _)| position);
    let cycle_count = cycle_positions.clone().count();
    let mut backdated: Option<(usize, i32)> = None;
    if cycle_count >= 2 && writer.random.percent(noise.backdated_cycle_percent) {
        let which = writer.random.below(cycle_count as u64 - 1) as usize;
        if let (Some(late), Some(next)) = (cycle_positions.nth(which), cycle_positions.next()) {
            let entered = history.items[next].day() + writer.random.between(1, 40) as i32;
            backdated = Some((late, entered));
        }
    }
    for (position, item) in history.items.iter().enumerate() {
        let backdated_entry = backdated
            .filter(|(late, _)| *late == position)
            .map(|(_, entered)| entered);
        writer.item(item, backdated_entry);
    }

    // Exact duplicates: the same line sent again, later.
    for index in first_entry..writer.entries.len() {
        if writer.random.per_mille(noise.duplicate_line_per_mille) {
            let original = writer.entries[index];
            writer.entries.push(Entry {
                entry_day: original.entry_day + writer.random.between(0, 30) as i32,
                sequence: original.sequence + 1,
                ..original
            });
        }
    }
    *out = writer.entries;
}

/// The text of a line written by [`emit_patient`]. Lines are ASCII by
/// construction, so the lossy conversion never replaces anything.
pub(crate) fn line_text(arena: &[u8], span: Span) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(&arena[span.start..span.end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_the_domain_calendar() {
        let first = domain::ClinicalDate::parse("1989-01-01")
            .map(domain::ClinicalDate::days_since_epoch)
            .unwrap_or_default();
        for days in (first..first + 40 * 366).step_by(3) {
            let (year, month, day) = civil(days);
            let expected = domain::ClinicalDate::from_days_since_epoch(days)
                .map(|date| date.to_string())
                .unwrap_or_default();
            let mut text = Vec::new();
            push_date(&mut text, days);
            assert_eq!(String::from_utf8(text).unwrap(), expected);
            assert_eq!(days_from_civil(year, month, day), days);
        }
    }

    #[test]
    fn event_ids_are_unique_and_valid() {
        let mut ids = EventIds::new(42, 1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let mut text = Vec::new();
            push_event_id(&mut text, ids.next_id());
            let id = String::from_utf8(text).unwrap();
            assert!(domain::EventId::parse(&id).is_ok(), "{id}");
            assert_eq!(id.len(), 36);
            assert!(seen.insert(id));
        }
    }
}
