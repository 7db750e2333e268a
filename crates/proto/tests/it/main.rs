//! The proto crate's integration tests: the conversions between the domain
//! and `toxaudit.v1`, over the same generated events as the domain's tests.

// Helpers of a test binary are test code too: a failed unwrap is a failed
// test with its message (clippy.toml allows it only inside #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod roundtrip;
#[path = "../../../domain/tests/it/strategies.rs"]
mod strategies;
