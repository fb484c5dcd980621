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

/// The wiring point for the standard gRPC services every crossgate server
/// offers beside its own, so that standard tooling (grpcurl, grpc_health_probe)
/// works against it.
pub mod standard {
    pub use tonic_health::ServingStatus;
    pub use tonic_health::pb as health_pb;
    pub use tonic_health::server::{HealthReporter, health_reporter};
    pub use tonic_reflection::server::Error as ReflectionError;

    /// Why a crossgate server stopped or could not start.
    #[derive(Debug, thiserror::Error)]
    pub enum ServeError {
        #[error("gRPC transport: {0}")]
        Transport(#[from] tonic::transport::Error),
        #[error("server reflection: {0}")]
        Reflection(#[from] ReflectionError),
        #[error("cannot listen on {address} for health checks: {source}")]
        HealthListen {
            address: std::net::SocketAddr,
            source: std::io::Error,
        },
    }

    /// Server reflection (v1) over crossgate's contract and the health service.
    pub fn reflection() -> Result<
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::Error,
    > {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
    }
}
