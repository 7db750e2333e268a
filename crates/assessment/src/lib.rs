//! toxaudit's assessment service (work in progress).

#![forbid(unsafe_code)]
