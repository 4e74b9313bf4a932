//! Generates the tonic services (server and client) of the etcd v3 API from the engine's
//! `proto/` directory with `protox` (no system `protoc`). The messages are not generated here:
//! `extern_path` points every package at `ringkv_engine::pb`, so the front end and the engine
//! share one set of message types.

/// Files that declare services, relative to `engine/proto/`.
const PROTOS: &[&str] = &[
    "etcdserverpb/rpc.proto",
    "v3electionpb/v3election.proto",
    "v3lockpb/v3lock.proto",
    "grpc/health/v1/health.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let include = "../engine/proto";
    println!("cargo:rerun-if-changed={include}");
    let files: Vec<String> = PROTOS.iter().map(|p| format!("{include}/{p}")).collect();
    let fds = protox::compile(&files, [include])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Every method is implemented explicitly, so every error comes from the error table.
        .generate_default_stubs(false)
        .extern_path(".etcdserverpb", "::ringkv_engine::pb::etcdserverpb")
        .extern_path(".mvccpb", "::ringkv_engine::pb::mvccpb")
        .extern_path(".authpb", "::ringkv_engine::pb::authpb")
        .extern_path(".v3electionpb", "::ringkv_engine::pb::v3electionpb")
        .extern_path(".v3lockpb", "::ringkv_engine::pb::v3lockpb")
        .extern_path(".grpc.health.v1", "::ringkv_engine::pb::grpc::health::v1")
        .compile_fds(fds)?;
    Ok(())
}
