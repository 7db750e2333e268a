//! End-to-end tests: the toxaudit binary and its services as real processes.
//!
//! This test target belongs to the `cli` package (declared in
//! `crates/cli/Cargo.toml`), not to `tests`: Cargo builds a package's
//! binaries before its integration tests and names them in
//! `CARGO_BIN_EXE_<name>`, so the binary every test here runs is always the
//! one of this build, whether it is `cargo test --workspace` (`make test`)
//! or `cargo test -p cli --test e2e` alone, and with no second build.

mod dashboard;
mod multisite;
mod services;

/// The toxaudit binary of this build (Cargo built it before this test).
fn toxaudit() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_toxaudit"))
}
