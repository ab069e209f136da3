//! Generated gRPC types and services of `proto/ravel.proto` (package `ravel.v1`).
//!
//! Besides the generated code only [`transport`] lives here: what a failed call says about its
//! request. Conversions to domain types belong to the crates that use them.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("ravel.v1");
}

pub use v1::*;

pub mod transport;
