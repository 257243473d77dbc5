// With the `grpc` feature: compile proto/ticketledger.proto with a vendored protoc (no system
// protobuf needed), and keep its file descriptor set for gRPC reflection. Without it the
// crate is the serde types alone and this script does nothing.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    #[cfg(feature = "grpc")]
    {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
        let mut config = prost_build::Config::new();
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
        tonic_prost_build::configure()
            .file_descriptor_set_path(out.join("ticketledger_descriptor.bin"))
            .compile_with_config(config, &["proto/ticketledger.proto"], &["proto"])?;
    }
    Ok(())
}
