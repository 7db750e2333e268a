//! The shape of a validation failure: every reason at once, each naming the
//! field it is about, so a clinician can fix a whole line in one go.

use std::fmt;

/// One reason an event was refused, naming the field it is about
/// (`muscles[1].units`, `occurred_on`, …) or `event` for the whole line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// The field path, as it is spelled in the interchange file.
    pub field: String,
    /// Why the value is refused, lowercase, no trailing period.
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Every reason an event was refused. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event refused: {}", .reasons.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct Refusal {
    pub reasons: Vec<FieldError>,
}

impl Refusal {
    pub fn single(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            reasons: vec![FieldError::new(field, reason)],
        }
    }
}

impl From<Vec<FieldError>> for Refusal {
    fn from(reasons: Vec<FieldError>) -> Self {
        Self { reasons }
    }
}
