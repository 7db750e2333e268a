//! The BNN audit of secondary non-responsiveness (`spec/rules.md`, rule set
//! `bnn-2016/v1`) as pure folds over recorded events: no I/O, no clock.
//!
//! - [`RuleParameters`]: the rule set's thresholds and what-if values.
//! - [`assess_patient`]: one patient's assessment from their events.
//! - [`Cohort`]: the whole network, one event at a time, and its
//!   [`AuditReport`] (the JSON shape of `rules.md`).
//!
//! The rules live in one place (`engine`); the report's counts and the
//! patient view are both read from its analysis.

mod assessment;
mod change;
mod cohort;
mod engine;
mod parameters;
mod report;

pub use assessment::{
    CycleView, InjectedMuscle, PatientAssessment, PatientSummary, SnrGroup, SnrView, Standard,
    StandardFinding, assess_patient,
};
pub use change::{AssessmentChange, apply_and_compare, apply_and_compare_numbered};
pub use cohort::{COHORT_SNAPSHOT_FORMAT, Cohort, CohortSnapshot, PatientNumber};
pub use parameters::{RULE_SET, RuleParameters};
pub use report::{
    ALL_SCOPE, AuditReport, GroupReport, ScopeReport, SnrReport, StandardResult, StandardsReport,
};
