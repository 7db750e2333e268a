//! Integration tests of the demo data: every line goes through the real
//! import path (NDJSON parsing, admission against the log) and the real
//! audit engine, and the report is checked against the founding audit.

mod import;
mod paper;
mod random;
