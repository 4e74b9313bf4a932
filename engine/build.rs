//! Compiles the etcd v3 protocol definitions in `proto/` into Rust messages (no services) with
//! `protox` (a pure-Rust protobuf compiler, so no system `protoc` is needed) and `prost-build`.
//! The encoded descriptor set is written next to the generated code for the gateway's JSON codec.

use std::path::PathBuf;

/// Every .proto file, relative to `proto/` (the include root).
const PROTOS: &[&str] = &[
    "mvccpb/kv.proto",
    "authpb/auth.proto",
    "etcdserverpb/rpc.proto",
    "etcdserverpb/raft_internal.proto",
    "v3electionpb/v3election.proto",
    "v3lockpb/v3lock.proto",
    "grpc/health/v1/health.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(PROTOS.iter().copied())?;
    let descriptors = compiler.encode_file_descriptor_set();
    std::fs::write(out_dir.join("ringkv_descriptor.bin"), &descriptors)?;

    let mut config = prost_build::Config::new();
    // Every `bytes` field is `bytes::Bytes`, so keys and values move between the network, the
    // read buffer and the backend without copies.
    config.bytes(["."]);
    // `prost::Name` gives every message its full protobuf name (for the gateway's JSON codec).
    config.enable_type_names();
    config.compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
