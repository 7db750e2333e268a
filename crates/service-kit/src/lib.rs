//! What the three toxaudit services (ingest, assessment, reporting) share, so
//! that they never depend on one another: bearer-token auth and the access
//! rules, the one mapping of error kinds to gRPC codes and HTTP statuses, the
//! gRPC server plumbing (health, reflection, TLS, graceful shutdown),
//! projection checkpoints (snapshots of a projection's state), the bus of derived events, and a client.
//!
//! Why a crate of its own: see `docs/adr/0005-service-kit.md`.

#![forbid(unsafe_code)]

pub mod auth;
pub mod bus;
pub mod checkpoint;
pub mod client;
pub mod error;
pub mod follow;
pub mod server;

pub use auth::{AuthInterceptor, JwtSecret, Principal, ReadScope, Role};
pub use bus::DerivedBus;
pub use checkpoint::CheckpointStore;
pub use client::ServiceClient;
pub use error::ServiceError;
pub use server::{GrpcServer, Shutdown, ShutdownTrigger, TlsFiles};
