//! toxaudit's domain: the clinical events of `spec/events.md`, their
//! validation, and the BNN audit rules of `spec/rules.md` as pure folds.
//!
//! This crate does no I/O, no async and reads no clock: "today" is passed in
//! by the caller, so every function here is deterministic and a replay of the
//! same events always gives the same answer.

#![forbid(unsafe_code)]

pub mod admission;
pub mod audit;
pub mod date;
pub mod error;
pub mod event;
pub mod ids;
pub mod ndjson;
pub mod raw;
pub mod snapshot;

pub use date::ClinicalDate;
pub use error::{FieldError, Refusal};
pub use event::*;
pub use ids::{Centre, EventId, PatientKey, Pseudonym};
