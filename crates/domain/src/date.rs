//! The clinical date of an event (`YYYY-MM-DD`). The allowed range depends on
//! "today", which the caller passes in: the domain never reads a clock.

use std::fmt;
use time::{Date, Month, macros::format_description};

/// The earliest clinical date the contract accepts.
pub const EARLIEST: ClinicalDate = ClinicalDate(time::macros::date!(1989 - 01 - 01));

/// A calendar date in `YYYY-MM-DD` form, as written in the interchange file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClinicalDate(Date);

impl ClinicalDate {
    /// Parses `YYYY-MM-DD` (exactly that form: four-digit year, zero-padded).
    pub fn parse(text: &str) -> Result<Self, String> {
        let format = format_description!("[year]-[month]-[day]");
        if text.len() != 10 {
            return Err(format!("'{text}' is not a date in YYYY-MM-DD form"));
        }
        Date::parse(text, &format)
            .map(Self)
            .map_err(|_| format!("'{text}' is not a date in YYYY-MM-DD form"))
    }

    /// Parses and checks the contract's range: 1989-01-01 to today + 1 day.
    pub fn parse_clinical(text: &str, today: ClinicalDate) -> Result<Self, String> {
        let date = Self::parse(text)?;
        let latest = today.next_day();
        if date < EARLIEST || date > latest {
            return Err(format!(
                "{date} is outside the allowed range {EARLIEST} to {latest}"
            ));
        }
        Ok(date)
    }

    pub fn from_ymd(year: i32, month: u8, day: u8) -> Option<Self> {
        let month = Month::try_from(month).ok()?;
        Date::from_calendar_date(year, month, day).ok().map(Self)
    }

    pub fn from_date(date: Date) -> Self {
        Self(date)
    }

    pub fn as_date(self) -> Date {
        self.0
    }

    pub fn year(self) -> i32 {
        self.0.year()
    }

    /// Whole days since 1970-01-01, a compact form for storage and arithmetic.
    pub fn days_since_epoch(self) -> i32 {
        self.0.to_julian_day() - UNIX_EPOCH_JULIAN_DAY
    }

    pub fn from_days_since_epoch(days: i32) -> Option<Self> {
        Date::from_julian_day(days + UNIX_EPOCH_JULIAN_DAY)
            .ok()
            .map(Self)
    }

    /// Calendar days from `self` to `later` (negative when `later` is earlier).
    pub fn days_until(self, later: ClinicalDate) -> i64 {
        (later.0 - self.0).whole_days()
    }

    /// The day after, saturating at the end of the supported calendar.
    pub fn next_day(self) -> Self {
        Self(self.0.next_day().unwrap_or(self.0))
    }
}

/// Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i32 = 2_440_588;

impl fmt::Display for ClinicalDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}",
            self.0.year(),
            u8::from(self.0.month()),
            self.0.day()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_same_text() {
        let date = ClinicalDate::parse("2017-02-01").unwrap();
        assert_eq!(date.to_string(), "2017-02-01");
        assert_eq!(
            ClinicalDate::from_days_since_epoch(date.days_since_epoch()),
            Some(date)
        );
    }

    #[test]
    fn refuses_other_forms() {
        for text in ["2017-2-01", "17-02-01", "2017/02/01", "2017-02-30", ""] {
            assert!(ClinicalDate::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn range_is_1989_to_tomorrow_inclusive() {
        let today = ClinicalDate::parse("2026-11-25").unwrap();
        assert!(ClinicalDate::parse_clinical("1989-01-01", today).is_ok());
        assert!(ClinicalDate::parse_clinical("1988-12-31", today).is_err());
        assert!(ClinicalDate::parse_clinical("2026-11-26", today).is_ok());
        assert!(ClinicalDate::parse_clinical("2026-11-27", today).is_err());
    }
}
