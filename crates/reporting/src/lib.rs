//! toxaudit's reporting: the BNN audit report shown to people and programs.
//!
//! [`render`] turns a [`domain::audit::AuditReport`] into json, a terminal
//! table, GitHub markdown, csv or a self-contained html page, and a patient's
//! assessment into a readable timeline. The numbers are the domain's; this
//! crate only lays them out, so every format shows the same ones.

#![forbid(unsafe_code)]

pub mod http;
pub mod render;
pub mod service;
