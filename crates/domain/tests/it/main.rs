//! The domain's integration tests: one binary, one module per area, each
//! reading as given events / when / then.

// Helpers of a test binary are test code too: a failed unwrap is a failed
// test with its message (clippy.toml allows it only inside #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admission;
mod audit;
mod audit_builder;
mod audit_properties;
mod audit_reference;
mod change;
mod fingerprint;
mod ndjson;
mod roundtrip;
mod snapshots;
mod strategies;
mod support;
mod validation;
