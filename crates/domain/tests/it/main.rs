//! The domain's integration tests: one binary, one module per area, each
//! reading as given events / when / then.

mod admission;
mod ndjson;
mod roundtrip;
mod strategies;
mod support;
mod validation;
