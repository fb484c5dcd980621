//! crossgate's wire contract: messages and gRPC clients/servers generated from
//! `proto/crossgate/v1/`. See the comments in the `.proto` files for the
//! meaning of every call and field.
#![forbid(unsafe_code)]

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("crossgate.v1");
}

/// The encoded `FileDescriptorSet` of the contract, for gRPC server reflection
/// (`tonic_reflection::server::Builder::register_encoded_file_descriptor_set`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/crossgate_descriptor.bin"));

pub use v1::*;
