//! Generates the gRPC types of envd-init's API. protoc comes from `protoc-bin-vendored`, so a
//! plain `cargo build` needs no system package.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/grpc/health/v1/health.proto",
            "proto/envd/supervisor/v1/supervisor.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
