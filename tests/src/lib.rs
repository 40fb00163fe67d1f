//! # envd-e2e
//!
//! Helpers for the end-to-end tests in `tests/tests/`: they run our real binaries (the static
//! runtime from `scripts/build-runtime`), real OpenSSH clients and a real Docker engine. A test
//! that needs something missing fails loudly; nothing is skipped silently.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub mod init;
pub mod sshd;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The static runtime directory, building it (dev profile) once if it is missing.
pub fn runtime_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("ENVD_RUNTIME_DIR") {
            return PathBuf::from(d);
        }
        let dir = workspace_root().join("target/runtime");
        if !dir.join("envd-init").exists() || !dir.join("envd-sshd").exists() {
            let status = Command::new(workspace_root().join("scripts/build-runtime"))
                .status()
                .expect("run scripts/build-runtime");
            assert!(status.success(), "scripts/build-runtime failed");
        }
        dir
    })
    .clone()
}

/// Path of one runtime binary.
pub fn runtime_bin(name: &str) -> PathBuf {
    let p = runtime_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing; run scripts/build-runtime",
        p.display()
    );
    p
}

/// Fails the test loudly when not root (PID-1 tests need namespaces).
pub fn require_root() {
    assert!(
        nix::unistd::getuid().is_root(),
        "this test must run as root (it uses PID namespaces); scripts/test runs it so"
    );
}

/// Fails the test loudly when no Docker engine answers.
pub fn require_docker() {
    let ok = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "no Docker engine answers; scripts/test starts dockerd (this test needs it)"
    );
}

/// Runs our `envd` (from the runtime directory, which it also uses for the in-image runtime).
pub fn envd(args: &[&str]) -> Output {
    Command::new(runtime_dir().join("envd"))
        .args(args)
        .env("ENVD_RUNTIME_DIR", runtime_dir())
        .output()
        .expect("run envd")
}

/// A command's stdout and stderr together, for assertion messages.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
