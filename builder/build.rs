//! Generates BuildKit's gRPC types from our own subset of its protocol (`proto/`). protoc comes
//! from `protoc-bin-vendored`, so a plain `cargo build` needs no system package. Maps are
//! BTreeMaps so an op's bytes, and so its digest, are deterministic.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .btree_map(".")
        .build_server(false)
        .compile_protos(
            &[
                "proto/llb.proto",
                "proto/control.proto",
                "proto/gateway.proto",
            ],
            &["proto"],
        )?;
    // The session's services are served by envd-rs (buildkitd calls them).
    tonic_prost_build::configure()
        .btree_map(".")
        .build_client(false)
        .compile_protos(&["proto/filesync.proto"], &["proto"])?;
    Ok(())
}
