//! Seeded demo and benchmark data for toxaudit, as NDJSON import files
//! (`spec/events.md`).
//!
//! - [`paper2019_lines`] / [`write_paper2019`]: the founding audit's cohort
//!   (two UK centres, 68 patients with secondary non-response) amid realistic
//!   noise; its audit report (`spec/rules.md`) reproduces the founding
//!   numbers for every seed.
//! - [`write_random`] / [`random_lines`]: random cohorts of any size,
//!   streamed, about 100 events per patient, for benchmarks and soak tests.
//!
//! Every line of every file is accepted by import (some as exact duplicates,
//! some with warnings: short intervals, doses above the label maximum). The
//! same seed always gives the same bytes, on every platform: the generator
//! carries its own random source (`seeded`) rather than a library's.
//!
//! The crate writes lines; it never reads a clock (all dates are 1990..2025)
//! and does no I/O of its own beyond the writer it is handed.

#![forbid(unsafe_code)]

mod clinic;
mod emit;
mod history;
mod paper;
mod scale;
mod seeded;

pub use scale::{RandomLines, RandomSpec};

/// The founding audit's cohort as NDJSON lines in file order (no trailing
/// newlines). Same seed, same lines.
pub fn paper2019_lines(seed: u64) -> Vec<String> {
    paper::lines(seed)
}

/// Writes [`paper2019_lines`] to `out`, one line each, newline-terminated.
pub fn write_paper2019(seed: u64, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let mut text = String::new();
    for line in paper2019_lines(seed) {
        text.push_str(&line);
        text.push('\n');
    }
    out.write_all(text.as_bytes())
}

/// Writes a random cohort to `out`, streamed block by block (one
/// `write_all` per block of patients, so an unbuffered writer is fine too),
/// and returns the number of lines written.
pub fn write_random(spec: &RandomSpec, out: &mut dyn std::io::Write) -> std::io::Result<u64> {
    RandomLines::new(spec).write_all(out)
}

/// The lines of [`write_random`]'s file, one at a time, without newlines.
pub fn random_lines(spec: &RandomSpec) -> RandomLines {
    RandomLines::new(spec)
}
