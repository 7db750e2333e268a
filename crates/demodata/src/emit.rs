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

use domain::{Guidance, Muscle, MuscleDose, Product, Rating, Side};

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

impl EventIds {
    pub(crate) fn new(seed: u64, salt: u64) -> Self {
        Self {
            key: mix64(seed ^ mix64(salt)),
            counter: 0,
        }
    }

    pub(crate) fn next_id(&mut self) -> String {
        let low = mix64(self.counter ^ self.key);
        self.counter += 1;
        // The UUID version nibble says "random".
        let high = (mix64(low ^ self.key.rotate_left(17)) & !0xF000) | 0x4000;
        let mut text = String::with_capacity(36);
        push_hex(&mut text, high >> 32, 8);
        text.push('-');
        push_hex(&mut text, high >> 16, 4);
        text.push('-');
        push_hex(&mut text, high, 4);
        text.push('-');
        push_hex(&mut text, low >> 48, 4);
        text.push('-');
        push_hex(&mut text, low, 12);
        text
    }
}

fn push_hex(text: &mut String, value: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for index in (0..digits).rev() {
        text.push(char::from(HEX[((value >> (index * 4)) & 0xF) as usize]));
    }
}

fn push_number(text: &mut String, value: u64) {
    let mut digits = [0u8; 20];
    let mut length = 0;
    let mut rest = value;
    loop {
        digits[length] = b'0' + (rest % 10) as u8;
        length += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for &digit in digits[..length].iter().rev() {
        text.push(char::from(digit));
    }
}

fn push_two_digits(text: &mut String, value: u32) {
    text.push(char::from(b'0' + (value / 10 % 10) as u8));
    text.push(char::from(b'0' + (value % 10) as u8));
}

fn push_date(text: &mut String, days: i32) {
    let (year, month, day) = civil(days);
    // Clinical years are 1989..=2025: four digits, positive.
    push_number(text, year.unsigned_abs().into());
    text.push('-');
    push_two_digits(text, month);
    text.push('-');
    push_two_digits(text, day);
}

/// Builds one line, envelope first, then body fields in the contract's order.
struct Line {
    text: String,
}

impl Line {
    fn begin(id: &str, patient: &PatientName<'_>, day: i32, kind: &str) -> Self {
        let mut text = String::with_capacity(256);
        text.push_str("{\"event_id\":\"");
        text.push_str(id);
        text.push_str("\",\"centre\":\"");
        text.push_str(patient.centre);
        text.push_str("\",\"patient\":\"");
        text.push_str(patient.pseudonym);
        text.push_str("\",\"occurred_on\":\"");
        push_date(&mut text, day);
        text.push_str("\",\"type\":\"");
        text.push_str(kind);
        text.push('"');
        Self { text }
    }

    fn text(mut self, name: &str, value: &str) -> Self {
        self.text.push_str(",\"");
        self.text.push_str(name);
        self.text.push_str("\":\"");
        self.text.push_str(value);
        self.text.push('"');
        self
    }

    fn number(mut self, name: &str, value: u64) -> Self {
        self.text.push_str(",\"");
        self.text.push_str(name);
        self.text.push_str("\":");
        push_number(&mut self.text, value);
        self
    }

    fn optional_number(self, name: &str, value: Option<u32>) -> Self {
        match value {
            Some(value) => self.number(name, value.into()),
            None => self,
        }
    }

    fn muscles(mut self, muscles: &[MuscleDose]) -> Self {
        self.text.push_str(",\"muscles\":[");
        for (index, dose) in muscles.iter().enumerate() {
            if index > 0 {
                self.text.push(',');
            }
            self.text.push_str("{\"muscle\":\"");
            self.text.push_str(dose.muscle.as_str());
            self.text.push_str("\",\"side\":\"");
            self.text.push_str(dose.side.as_str());
            self.text.push_str("\",\"units\":");
            push_number(&mut self.text, dose.units.into());
            self.text.push('}');
        }
        self.text.push(']');
        self
    }

    fn end(mut self) -> String {
        self.text.push('}');
        self.text
    }
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
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) entry_day: i32,
    pub(crate) patient: u32,
    pub(crate) sequence: u32,
    pub(crate) line: String,
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
    entries: Vec<Entry>,
    /// Lines that must not be sent twice (voided mistakes; harmless, but a
    /// duplicate of a voided line would only muddle the demo).
    sequence: u32,
}

impl PatientWriter<'_> {
    fn push(&mut self, entry_day: i32, line: String) {
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
        let mut line = Line::begin(&id, &self.name, registration.day, "patient_registered");
        if let Some(year) = registration.birth_year {
            line = line.number("birth_year", year.unsigned_abs().into());
        }
        if let Some(sex) = registration.sex {
            line = line.text("sex", sex.as_str());
        }
        if let Some(year) = registration.onset_year {
            line = line.number("onset_year", year.unsigned_abs().into());
        }
        self.push(registration.day, line.end());
    }

    fn injection_line(&self, id: &str, day: i32, session: &Session) -> String {
        Line::begin(id, &self.name, day, "injection_administered")
            .text("product", session.product.as_str())
            .number("total_units", session.total_units().into())
            .text("guidance", session.guidance.as_str())
            .muscles(&session.muscles)
            .end()
    }

    fn void(&mut self, entry_day: i32, day: i32, target: &str, reason: &str) {
        let id = self.ids.next_id();
        let line = Line::begin(&id, &self.name, day, "event_voided")
            .text("target_event_id", target)
            .text("reason", reason)
            .end();
        self.push(entry_day, line);
    }

    fn cycle(&mut self, cycle: &Cycle, backdated_entry: Option<i32>) {
        let injection_entry = backdated_entry.unwrap_or(cycle.day);
        if self.random.per_mille(self.noise.voided_injection_per_mille) {
            let (mistake, reason) = mistaken(self.random, &cycle.session);
            let wrong_id = self.ids.next_id();
            let line = self.injection_line(&wrong_id, cycle.day, &mistake);
            self.push(injection_entry, line);
            self.void(injection_entry, cycle.day, &wrong_id, reason);
        }
        let injection_id = self.ids.next_id();
        let line = self.injection_line(&injection_id, cycle.day, &cycle.session);
        self.push(injection_entry, line);

        for (index, (day, review)) in cycle.reviews.iter().enumerate() {
            let entry = backdated_entry.unwrap_or(*day);
            let is_last = index + 1 == cycle.reviews.len();
            if is_last && self.random.per_mille(self.noise.voided_review_per_mille) {
                let wrong = Review {
                    rating: match review.rating {
                        Rating::Good => Rating::None,
                        Rating::Suboptimal | Rating::None => Rating::Good,
                    },
                    ..*review
                };
                let wrong_id = self.ids.next_id();
                let line = review_line(&wrong_id, &self.name, *day, &injection_id, &wrong);
                self.push(entry, line);
                self.void(entry, *day, &wrong_id, "rating entered in error");
            }
            let id = self.ids.next_id();
            let line = review_line(&id, &self.name, *day, &injection_id, review);
            self.push(entry, line);
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
                let line_for = |id: &str, method: domain::ResistanceMethod, this: &Self| {
                    let mut line = Line::begin(id, &this.name, *day, "resistance_tested")
                        .text("method", method.as_str())
                        .text("result", result.as_str());
                    if let Some(tenths) = titre_tenths {
                        line.text.push_str(",\"titre_mu_per_ml\":");
                        push_number(&mut line.text, u64::from(tenths / 10));
                        line.text.push('.');
                        push_number(&mut line.text, u64::from(tenths % 10));
                    }
                    line.end()
                };
                if self.random.per_mille(self.noise.voided_test_per_mille) {
                    let wrong_method = if *method == domain::ResistanceMethod::Frontalis {
                        domain::ResistanceMethod::UnilateralBrow
                    } else {
                        domain::ResistanceMethod::Frontalis
                    };
                    let wrong_id = self.ids.next_id();
                    let line = line_for(&wrong_id, wrong_method, self);
                    self.push(*day, line);
                    self.void(*day, *day, &wrong_id, "wrong test method recorded");
                }
                let id = self.ids.next_id();
                let line = line_for(&id, *method, self);
                self.push(*day, line);
            }
            Item::Referral { day, target } => {
                let id = self.ids.next_id();
                let line = Line::begin(&id, &self.name, *day, "referral_made")
                    .text("target", target.as_str())
                    .end();
                self.push(*day, line);
            }
            Item::Discontinued { day, reason } => {
                let id = self.ids.next_id();
                let line = Line::begin(&id, &self.name, *day, "treatment_discontinued")
                    .text("reason", reason)
                    .end();
                self.push(*day, line);
            }
        }
    }
}

fn review_line(
    id: &str,
    name: &PatientName<'_>,
    day: i32,
    injection_id: &str,
    review: &Review,
) -> String {
    Line::begin(id, name, day, "response_assessed")
        .text("injection_event_id", injection_id)
        .text("rating", review.rating.as_str())
        .optional_number("percent_improvement", review.percent_improvement)
        .optional_number("benefit_weeks", review.benefit_weeks)
        .optional_number("twstrs_total", review.twstrs_total)
        .end()
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
        // since the clinic's ceiling is 120% of the label maximum.
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

/// Writes one patient's lines, in the order they were typed in, into
/// `out` (appended, each carrying its file-order key).
pub(crate) fn emit_patient(
    history: &History,
    name: PatientName<'_>,
    ids: &mut EventIds,
    random: &mut SeededRandom,
    noise: Noise,
    out: &mut Vec<Entry>,
) {
    let mut writer = PatientWriter {
        name,
        ids,
        random,
        noise,
        entries: Vec::new(),
        sequence: 0,
    };
    writer.registration(history);

    // A cycle typed in late: after the next cycle was already entered.
    let cycle_positions: Vec<usize> = history
        .items
        .iter()
        .enumerate()
        .filter(|(_, item)| matches!(item, Item::Cycle(_)))
        .map(|(position, _)| position)
        .collect();
    let mut backdated: Option<(usize, i32)> = None;
    if cycle_positions.len() >= 2 && writer.random.percent(noise.backdated_cycle_percent) {
        let which = writer.random.below(cycle_positions.len() as u64 - 1) as usize;
        let next_day = history.items[cycle_positions[which + 1]].day();
        let entered = next_day + writer.random.between(1, 40) as i32;
        backdated = Some((cycle_positions[which], entered));
    }
    for (position, item) in history.items.iter().enumerate() {
        let backdated_entry = backdated
            .filter(|(which, _)| *which == position)
            .map(|(_, entered)| entered);
        writer.item(item, backdated_entry);
    }

    // Exact duplicates: the same line sent again, later.
    let mut duplicates = Vec::new();
    for entry in &writer.entries {
        if writer.random.per_mille(noise.duplicate_line_per_mille) {
            duplicates.push(Entry {
                entry_day: entry.entry_day + writer.random.between(0, 30) as i32,
                patient: entry.patient,
                sequence: entry.sequence + 1,
                line: entry.line.clone(),
            });
        }
    }
    writer.entries.extend(duplicates);
    out.append(&mut writer.entries);
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
            let mut text = String::new();
            push_date(&mut text, days);
            assert_eq!(text, expected);
            assert_eq!(days_from_civil(year, month, day), days);
        }
    }

    #[test]
    fn event_ids_are_unique_and_valid() {
        let mut ids = EventIds::new(42, 1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = ids.next_id();
            assert!(domain::EventId::parse(&id).is_ok(), "{id}");
            assert_eq!(id.len(), 36);
            assert!(seen.insert(id));
        }
    }
}
