//! The reporting crate's integration tests: golden output of every renderer
//! on small hand-made cohorts (insta snapshots under the crate's
//! `snapshots/`), and the rules every human format keeps.

// Helpers of a test binary are test code too: a failed unwrap is a failed
// test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cohort;
mod paper2019;
mod render;
mod restart;
