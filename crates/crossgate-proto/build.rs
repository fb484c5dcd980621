//! Compiles `proto/crossgate/v1/*.proto` with protox (pure Rust), so building
//! needs no `protoc`. Also writes the descriptor set for gRPC server reflection.

use std::path::PathBuf;

const FILES: &[&str] = &[
    "crossgate/v1/record.proto",
    "crossgate/v1/broker.proto",
    "crossgate/v1/department.proto",
    "crossgate/v1/audit.proto",
    "crossgate/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    for file in FILES {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let fds = protox::compile(FILES, [&root])?;
    std::fs::write(
        out.join("crossgate_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
