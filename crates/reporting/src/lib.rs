//! toxaudit's reporting: the BNN audit report shown to people and programs.
//!
//! [`render`] turns a [`domain::audit::AuditReport`] into json, a terminal
//! table, GitHub markdown, csv or a self-contained html page, and a patient's
//! assessment into a readable timeline. The numbers are the domain's; this
//! crate only lays them out, so every format shows the same ones.
//!
//! [`service`] follows the log into the audit and serves it over gRPC;
//! [`http`] serves the same projection to browsers and Prometheus: the live
//! dashboard, the report as JSON and Server-Sent Events, and `/metrics`.

#![forbid(unsafe_code)]

pub mod http;
pub mod render;
pub mod service;
