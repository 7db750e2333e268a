//! Helpers shared by tests: real servers on random ports, never fixed ones,
//! and fixtures. Used only as a dev-dependency.

#![forbid(unsafe_code)]

pub mod nats;
pub mod topology;

pub use nats::{NatsServer, ServerPorts, free_port, nats_server_binary};
