//! The in-container runtime is statically linked (ELF without an interpreter), stripped, found
//! by the host `envd`, and runs in a real container, even one with nothing else in it.

use std::process::Command;

use envd_builder::runtime::{check_static, elf_has_interpreter};
use envd_e2e::{require_docker, runtime_bin, runtime_dir};

#[test]
fn runtime_binaries_are_static_elf_without_interpreter() {
    for bin in ["envd-init", "envd-sshd"] {
        let path = runtime_bin(bin);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            elf_has_interpreter(&bytes),
            Some(false),
            "{} has an ELF interpreter (dynamically linked)",
            path.display()
        );
        check_static(&path).unwrap();
        // A second opinion from binutils' readelf: an ELF with program headers and no
        // interpreter request, and no symbol table.
        let headers = Command::new("readelf")
            .arg("-lW")
            .arg(&path)
            .output()
            .unwrap();
        let headers = String::from_utf8_lossy(&headers.stdout);
        assert!(headers.contains("Program Headers:"), "{headers}");
        assert!(
            !headers.contains("INTERP"),
            "{} asks for an interpreter:\n{headers}",
            path.display()
        );
        let symbols = Command::new("readelf")
            .arg("-SW")
            .arg(&path)
            .output()
            .unwrap();
        assert!(!String::from_utf8_lossy(&symbols.stdout).contains(".symtab"));
        // Stripped: no .symtab section name left in the file.
        assert!(
            !bytes.windows(8).any(|w| w == b".symtab\0"),
            "{} is not stripped",
            path.display()
        );
    }
}

#[test]
fn host_envd_finds_the_runtime_through_envd_runtime_dir() {
    let envd = runtime_dir().join("envd");
    let out = Command::new(&envd)
        .args(["debug", "runtime"])
        .env("ENVD_RUNTIME_DIR", runtime_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("envd-init:") && text.contains("(static)"),
        "{text}"
    );
    // And refuses a dynamically linked impostor.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/true", dir.path().join("envd-init")).unwrap();
    std::fs::copy("/bin/true", dir.path().join("envd-sshd")).unwrap();
    let out = Command::new(&envd)
        .args(["debug", "runtime"])
        .env("ENVD_RUNTIME_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dynamically linked"));
}

#[test]
fn envd_init_is_pid_1_of_a_real_container_built_from_nothing() {
    require_docker();
    // An image whose only file is envd-init: no libc, no shell.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(runtime_bin("envd-init"), dir.path().join("envd-init")).unwrap();
    std::fs::create_dir(dir.path().join("services")).unwrap();
    let tag = "envd-rs-test/static-init:latest";
    let tar = Command::new("tar")
        .arg("-C")
        .arg(dir.path())
        .args(["-c", "."])
        .output()
        .unwrap();
    assert!(tar.status.success());
    let mut import = Command::new("docker")
        .args(["import", "-", tag])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    import.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    assert!(import.wait().unwrap().success());
    let out = Command::new("docker")
        .args([
            "run",
            "--rm",
            tag,
            "/envd-init",
            "--services",
            "/services",
            "--check",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 services OK"));
    // `--check` exits before anything runs as PID 1: now envd-init is PID 1 of that image and
    // runs a main command (the only program there is: envd-init itself, checking), passing its
    // exit code through, 0 and then a failure's.
    for (services, ok) in [("/services", true), ("/nonexistent", false)] {
        let out = Command::new("docker")
            .args([
                "run",
                "--rm",
                tag,
                "/envd-init",
                "--services",
                "/services",
                "--",
            ])
            .args(["/envd-init", "--services", services, "--check"])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.success(), ok, "{services}: {text}");
        if ok {
            assert!(text.contains("0 services OK"), "{text}");
        } else {
            assert!(
                out.status.code().is_some_and(|c| c != 0 && c < 128),
                "{text}"
            );
        }
    }
}

#[test]
fn envd_init_passes_exit_codes_as_pid_1_in_debian() {
    require_docker();
    let status = Command::new("docker")
        .args(["image", "inspect", "debian:bookworm"])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "debian:bookworm is missing; scripts/test creates it"
    );
    let mount = format!("{}:/envd:ro", runtime_dir().display());
    for (script, code) in [("exit 42", 42), ("kill -TERM $$", 143), ("exit 0", 0)] {
        let out = Command::new("docker")
            .args(["run", "--rm", "-v", &mount, "debian:bookworm"])
            .args([
                "/envd/envd-init",
                "--services",
                "/tmp",
                "--",
                "/bin/sh",
                "-c",
                script,
            ])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
