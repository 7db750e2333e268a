//! End-to-end tests: the toxaudit binary and its services as real processes.

mod dashboard;
mod multisite;
mod services;
