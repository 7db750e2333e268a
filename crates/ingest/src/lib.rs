//! toxaudit's ingest service (work in progress).

#![forbid(unsafe_code)]
