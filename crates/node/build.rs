// Compiles proto/raft.proto (node-to-node) with a vendored protoc, so the build needs no system
// protobuf. The public API's proto is compiled once in crates/api (feature `grpc`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/raft.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
