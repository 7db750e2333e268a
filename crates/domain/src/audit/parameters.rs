//! The parameters of the BNN rule set (`spec/rules.md`, "Parameters"): their
//! defaults, which a rule set version fixes, and the one place a what-if
//! value (`--param NAME=VALUE`) is parsed and checked.

use serde::{Deserialize, Serialize};

/// The rule set these rules implement. A report names it so a reader knows
/// which definitions produced its numbers.
pub const RULE_SET: &str = "bnn-2016/v1";

/// The tunable thresholds of the audit. `Default` gives the rule set's values;
/// any other value makes a what-if report, which names the values it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RuleParameters {
    /// Good BoNT-A cycles needed before a poor one counts as SNR.
    pub min_good_cycles_before_snr: u32,
    /// A dose change smaller than this percentage (same product) is not an
    /// adjustment.
    pub dose_change_min_pct: u32,
    /// The injection interval standard, in calendar days (12 weeks).
    pub min_interval_days: u32,
}

impl Default for RuleParameters {
    fn default() -> Self {
        Self {
            min_good_cycles_before_snr: 2,
            dose_change_min_pct: 10,
            min_interval_days: 84,
        }
    }
}

impl RuleParameters {
    /// Every parameter name, in the order of `rules.md`.
    pub const NAMES: [&'static str; 3] = [
        "min_good_cycles_before_snr",
        "dose_change_min_pct",
        "min_interval_days",
    ];

    /// True when every value is the rule set's default.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Every parameter as (name, value), in the order of `rules.md`.
    pub fn named_values(&self) -> [(&'static str, u32); 3] {
        [
            (Self::NAMES[0], self.min_good_cycles_before_snr),
            (Self::NAMES[1], self.dose_change_min_pct),
            (Self::NAMES[2], self.min_interval_days),
        ]
    }

    /// Sets one parameter from its name and textual value, as given on the
    /// command line (`--param dose_change_min_pct=20`). The error says what
    /// was wrong and what is allowed.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let (slot, lowest, highest) = match name {
            "min_good_cycles_before_snr" => (&mut self.min_good_cycles_before_snr, 0, 1_000),
            // A 0% threshold would count an unchanged dose as an adjustment.
            "dose_change_min_pct" => (&mut self.dose_change_min_pct, 1, 1_000),
            "min_interval_days" => (&mut self.min_interval_days, 0, 3_650),
            other => {
                return Err(format!(
                    "unknown parameter '{other}'; the parameters are {}",
                    Self::NAMES.join(", ")
                ));
            }
        };
        let parsed: u32 = value.trim().parse().map_err(|_| {
            format!("parameter {name}: '{value}' is not a whole number from {lowest} to {highest}")
        })?;
        if !(lowest..=highest).contains(&parsed) {
            return Err(format!(
                "parameter {name}: {parsed} is outside the allowed range {lowest} to {highest}"
            ));
        }
        *slot = parsed;
        Ok(())
    }

    /// Applies a `NAME=VALUE` assignment (the `--param` argument form).
    pub fn set_assignment(&mut self, assignment: &str) -> Result<(), String> {
        let (name, value) = assignment.split_once('=').ok_or_else(|| {
            format!(
                "'{assignment}' is not of the form NAME=VALUE (for example dose_change_min_pct=20)"
            )
        })?;
        self.set(name.trim(), value)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_rule_set_values() {
        let parameters = RuleParameters::default();
        assert_eq!(parameters.min_good_cycles_before_snr, 2);
        assert_eq!(parameters.dose_change_min_pct, 10);
        assert_eq!(parameters.min_interval_days, 84);
        assert!(parameters.is_default());
    }

    #[test]
    fn set_changes_one_value_and_refuses_nonsense() {
        let mut parameters = RuleParameters::default();
        parameters.set("dose_change_min_pct", "20").unwrap();
        assert_eq!(parameters.dose_change_min_pct, 20);
        assert!(!parameters.is_default());
        parameters.set_assignment("min_interval_days=70").unwrap();
        assert_eq!(parameters.min_interval_days, 70);

        let unknown = parameters.set("min_good_cycles", "2").unwrap_err();
        assert!(
            unknown.contains("unknown parameter 'min_good_cycles'"),
            "{unknown}"
        );
        let not_a_number = parameters.set("min_interval_days", "12w").unwrap_err();
        assert!(
            not_a_number.contains("not a whole number"),
            "{not_a_number}"
        );
        let negative = parameters.set("min_interval_days", "-1").unwrap_err();
        assert!(negative.contains("not a whole number"), "{negative}");
        let zero_pct = parameters.set("dose_change_min_pct", "0").unwrap_err();
        assert!(zero_pct.contains("outside the allowed range"), "{zero_pct}");
        assert!(parameters.set_assignment("min_interval_days").is_err());
        // A refused value leaves the parameter as it was.
        assert_eq!(parameters.min_interval_days, 70);
    }
}
