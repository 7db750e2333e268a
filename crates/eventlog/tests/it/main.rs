//! The one integration-test binary of the event log: the backend-agnostic
//! conformance suite and each backend's own tests.

mod conformance;
mod embedded;
mod jetstream;
mod jetstream_faults;
