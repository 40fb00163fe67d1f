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
    commit_id();
    Ok(())
}

/// `ENVD_COMMIT` for `envd --version`: the given one (a build from a source archive, e.g. the
/// wheel's), else the checkout's `git rev-parse`, else "unknown". Rerun when HEAD moves.
fn commit_id() {
    println!("cargo:rerun-if-env-changed=ENVD_COMMIT");
    let commit = std::env::var("ENVD_COMMIT").ok().or_else(|| {
        let out = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    let git_dir = std::path::Path::new("../.git");
    for watched in ["HEAD", "refs/heads", "packed-refs"] {
        if git_dir.join(watched).exists() {
            println!("cargo:rerun-if-changed=../.git/{watched}");
        }
    }
    let commit = commit.unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ENVD_COMMIT={commit}");
}
