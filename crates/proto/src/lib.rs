//! toxaudit's wire contract, package `toxaudit.v1`: the code generated from
//! `proto/toxaudit/v1/*.proto`, and the conversions between it and the domain.
//!
//! The conversions live here (not in the domain) so the domain stays free of
//! wire concerns; a proto message becomes a domain event only through the
//! same validation as a line of the interchange file.

#![forbid(unsafe_code)]

pub mod convert;

/// Generated code for package `toxaudit.v1`.
#[allow(clippy::all, missing_debug_implementations)]
pub mod v1 {
    tonic::include_proto!("toxaudit.v1");
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("toxaudit_descriptor");
