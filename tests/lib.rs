//! Cross-process end-to-end tests live in `e2e/`; this library is empty.
//!
//! They are built as the `e2e` test target of the `cli` package
//! (`crates/cli/Cargo.toml`), so that Cargo builds the toxaudit binary
//! they run first: `cargo test -p cli --test e2e` runs them alone, and
//! `cargo test --workspace` (`make test`) runs them with everything else.
