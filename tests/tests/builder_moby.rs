//! `envd build` against Docker's embedded BuildKit (and the same BuildKit over TCP through a
//! loopback relay): a real dev image from debian:bookworm with apt and pip packages, run for
//! real; no rebuild when nothing changed; the cache when one package is added; a failing step.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use envd_e2e::{envd, output_text, require_docker, runtime_dir};

fn project(name: &str, build_envd: &str) -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("envd-build-test")
        .tempdir()
        .unwrap();
    let dir = root.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("build.envd"), build_envd).unwrap();
    root
}

/// The health of the `sshd` service in `envd-init ctl status --json`, not any service's.
fn sshd_health(status_json: &str) -> Option<String> {
    let services: serde_json::Value = serde_json::from_str(status_json).ok()?;
    let sshd = services.as_array()?.iter().find(|s| s["name"] == "sshd")?;
    sshd["health"].as_str().map(str::to_string)
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("docker")
}

const PROGRAM: &str = r#"# syntax=v1
def build():
    base(image="debian:bookworm", dev=True)
    install.python()
    install.apt_packages(name=["jq"])
    install.python_packages(name=["six"])
"#;

#[test]
fn dev_image_with_apt_and_pip_packages_builds_and_runs() {
    require_docker();
    let root = project("e2ebuild", PROGRAM);
    let dir = root.path().join("e2ebuild");
    let tag = "envd-e2e/build:test";
    let out = envd(&[
        "build",
        "--path",
        dir.to_str().unwrap(),
        "-t",
        tag,
        "--force",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    let o = docker(&[
        "run",
        "--rm",
        "--entrypoint",
        "/opt/envd/venv/bin/python",
        tag,
        "-c",
        "import six; print('six-ok')",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "six-ok",
        "{}",
        output_text(&o)
    );
    let o = docker(&["run", "--rm", "--entrypoint", "jq", tag, "--version"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("jq-"),
        "{}",
        output_text(&o)
    );
    // The image runs envd-init as PID 1, which starts envd-sshd and reports it healthy.
    let o = docker(&["run", "-d", tag]);
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(o.status.success(), "{}", output_text(&o));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = String::new();
    while Instant::now() < deadline {
        let o = docker(&[
            "exec",
            &id,
            "/usr/local/bin/envd-init",
            "ctl",
            "status",
            "--json",
        ]);
        status = String::from_utf8_lossy(&o.stdout).into_owned();
        if sshd_health(&status).as_deref() == Some("healthy") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // envd-init starts as root and drops to the image's user for good.
    let user = docker(&["exec", &id, "ps", "-o", "user=", "-p", "1"]);
    let _ = docker(&["rm", "-f", &id]);
    assert_eq!(sshd_health(&status).as_deref(), Some("healthy"), "{status}");
    assert_eq!(String::from_utf8_lossy(&user.stdout).trim(), "envd");
}

#[test]
fn unchanged_program_is_not_rebuilt_and_one_more_package_reuses_the_cache() {
    require_docker();
    // Steps of its own (one more apt package than the other tests' program): BuildKit runs a
    // step again when a build asks for it while another build that shares it is still going
    // (seen on BuildKit 0.8 and 0.13, docs/builder.md), which is not what this test is about.
    // JupyterLab (config.jupyter) is installed by a step of its own that one more package of
    // the program leaves cached.
    let program = PROGRAM.replace("[\"jq\"]", "[\"jq\", \"tree\"]") + "    config.jupyter()\n";
    let root = project("e2ecache", &program);
    let dir = root.path().join("e2ecache");
    let path = dir.to_str().unwrap();
    let tag = "envd-e2e/cache:test";
    // --force: an image left by an earlier run would make this build a no-op, and the cache it
    // should fill could have been pruned since.
    let out = envd(&["build", "--path", path, "-t", tag, "--force"]);
    assert!(out.status.success(), "{}", output_text(&out));
    // `envd debug llb` plans exactly as the build did: the program hash it prints is the one
    // the image is labelled with.
    let llb = output_text(&envd(&["debug", "llb", "--path", path]));
    let printed = llb.lines().find_map(|l| l.strip_prefix("program: "));
    let label = docker(&[
        "image",
        "inspect",
        "-f",
        "{{index .Config.Labels \"ai.tensorchord.envd.build.digest\"}}",
        tag,
    ]);
    assert_eq!(
        printed,
        Some(String::from_utf8_lossy(&label.stdout).trim()),
        "{llb}"
    );
    // Comments and blank lines do not count.
    std::fs::write(
        dir.join("build.envd"),
        format!("{program}\n\n# a comment\n"),
    )
    .unwrap();
    let t = Instant::now();
    let out = envd(&["build", "--path", path, "-t", tag]);
    let took = t.elapsed();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("up to date"),
        "{}",
        output_text(&out)
    );
    assert!(
        took < Duration::from_secs(1),
        "no-change rebuild took {took:?}"
    );
    // One more pip package: the apt step comes from the cache, pip runs again. The version
    // exclusion is unique to this run, so BuildKit's cache from an earlier run on the same
    // engine cannot answer the pip step.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::fs::write(
        dir.join("build.envd"),
        program.replace("[\"six\"]", &format!("[\"six\", \"idna!=0.0.{nonce}\"]")),
    )
    .unwrap();
    let out = envd(&["build", "--path", path, "-t", tag]);
    let log = output_text(&out);
    assert!(out.status.success(), "{log}");
    // Cached, not only "not started here": a step another build runs shows as done, not run.
    assert!(
        log.contains("[cached] apt-get install") && !log.contains("[run]    apt-get install"),
        "apt ran again:\n{log}"
    );
    assert!(
        log.contains("[run]    uv pip install six idna"),
        "pip did not run:\n{log}"
    );
    // The venv is a step of its own: a changed package list does not make it again, nor
    // reinstalls JupyterLab.
    assert!(
        log.contains("[cached] python3 -m venv /opt/envd/venv"),
        "the venv was made again:\n{log}"
    );
    assert!(
        log.contains("[cached] uv pip install jupyterlab")
            && !log.contains("[run]    uv pip install jupyterlab"),
        "JupyterLab was installed again:\n{log}"
    );
    // Docker's BuildKit builds one chain: v0.8 has no MergeOp, and on Engine 26 merged layers
    // were slower (docs/BENCHMARKS.md). `ENVD_MERGE=on` asks for them there (checked below).
    assert!(
        !log.contains("merge the environment's layers"),
        "merged on Docker's BuildKit:\n{log}"
    );
    let o = docker(&[
        "run",
        "--rm",
        "--entrypoint",
        "/opt/envd/venv/bin/python",
        tag,
        "-c",
        "import idna, six, jupyterlab",
    ]);
    assert!(o.status.success(), "{}", output_text(&o));
}

#[test]
fn merged_layers_on_docker_buildkit_only_when_asked_and_only_from_engine_23() {
    require_docker();
    let root = project(
        "e2emerge",
        "def build():\n    base(image=\"debian:bookworm\", dev=True)\n    run([\"echo merge-test\"])\n",
    );
    let dir = root.path().join("e2emerge");
    let out = envd_e2e::isolated(&mut Command::new(runtime_dir().join("envd")))
        .env("ENVD_MERGE", "on")
        .args([
            "build",
            "--path",
            dir.to_str().unwrap(),
            "-t",
            "envd-e2e/merge:test",
        ])
        .arg("--force")
        .output()
        .unwrap();
    let log = output_text(&out);
    assert!(out.status.success(), "{log}");
    let engine = docker(&["version", "--format", "{{.Server.Version}}"]);
    let engine = String::from_utf8_lossy(&engine.stdout).trim().to_string();
    // Engine 20.10's BuildKit (v0.8) has no MergeOp; Engine 26's has, and merges when asked.
    assert_eq!(
        log.contains("merge the environment's layers"),
        !engine.starts_with("20."),
        "engine {engine}:\n{log}"
    );
    let o = docker(&[
        "run",
        "--rm",
        "--entrypoint",
        "ls",
        "envd-e2e/merge:test",
        "/usr/local/bin",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("envd-init"),
        "{}",
        output_text(&o)
    );
    let _ = docker(&["rmi", "envd-e2e/merge:test"]);
}

#[test]
fn a_registry_with_docker_buildkit_is_refused_by_name() {
    let root = project("e2ereg", PROGRAM);
    let dir = root.path().join("e2ereg");
    let out = envd(&[
        "build",
        "--path",
        dir.to_str().unwrap(),
        "--registry",
        "127.0.0.1:5999",
    ]);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("--registry 127.0.0.1:5999 is for a unix or tcp builder"),
        "{text}"
    );
}

#[test]
fn a_failing_step_reports_its_command_and_output() {
    require_docker();
    let root = project(
        "e2efail",
        "def build():\n    base(image=\"debian:bookworm\")\n    run([\"echo this-is-the-failing-output\", \"exit 3\"])\n",
    );
    let dir = root.path().join("e2efail");
    let out = envd(&[
        "build",
        "--path",
        dir.to_str().unwrap(),
        "-t",
        "envd-e2e/fail:test",
        "--force",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exit code: 3"), "{err}");
    assert!(err.contains("this-is-the-failing-output"), "{err}");
}

#[test]
fn bad_build_file_is_located() {
    let root = project(
        "e2ebad",
        "def build():\n    base(dev=True)\n    install.pythn_packages(name=[\"x\"])\n",
    );
    let dir = root.path().join("e2ebad");
    let out = envd(&["build", "--path", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("build.envd:3:5") && err.contains("python_packages"),
        "{err}"
    );
}

/// A loopback TCP relay to Docker's BuildKit: each connection does the /grpc upgrade on the
/// Docker socket and then copies bytes both ways, standing in for a buildkitd on tcp://.
fn relay_to_docker_buildkit() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                // The engine the test runs against (DOCKER_HOST: Engine 26 beside 20.10).
                let socket = std::env::var("DOCKER_HOST")
                    .ok()
                    .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
                    .unwrap_or_else(|| "/var/run/docker.sock".into());
                let mut docker = UnixStream::connect(socket).unwrap();
                docker
                    .write_all(b"POST /grpc HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n")
                    .unwrap();
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if docker.read(&mut b).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let (mut tcp_r, mut dock_w) =
                    (conn.try_clone().unwrap(), docker.try_clone().unwrap());
                let t = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut tcp_r, &mut dock_w);
                    let _ = dock_w.shutdown(std::net::Shutdown::Write);
                });
                let mut conn_w = conn;
                let _ = std::io::copy(&mut docker, &mut conn_w);
                let _ = conn_w.shutdown(std::net::Shutdown::Write);
                let _ = t.join();
            });
        }
    });
    port
}

#[test]
fn tcp_builder_through_a_loopback_relay() {
    require_docker();
    let port = relay_to_docker_buildkit();
    let root = project("e2etcp", "def build():\n    base(image=\"debian:bookworm\")\n    run([\"echo tcp-built > /tcp-marker\"])\n");
    let dir = root.path().join("e2etcp");
    let addr = format!("tcp://127.0.0.1:{port}");
    let out = envd(&[
        "build",
        "--path",
        dir.to_str().unwrap(),
        "-t",
        "envd-e2e/tcp:test",
        "--force",
        "--builder",
        "tcp",
        "--builder-address",
        &addr,
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    let o = docker(&["run", "--rm", "envd-e2e/tcp:test", "cat", "/tcp-marker"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "tcp-built",
        "{}",
        output_text(&o)
    );
}

/// The same program gives the same LLB whatever CA bundle the host trusts: the bundle is a
/// mounted source with one name (engine image or session directory), not bytes in the LLB.
fn the_host_ca_does_not_change_the_llb(dir: &std::path::Path) {
    let bundles = tempfile::tempdir().unwrap();
    let llb_with = |ca: &str, extra: &[&str]| {
        let o = std::process::Command::new(envd_e2e::runtime_dir().join("envd"))
            .args(["debug", "llb", "--path", dir.to_str().unwrap()])
            .args(extra)
            .env("ENVD_RUNTIME_DIR", envd_e2e::runtime_dir())
            .env("ENVD_HOST_CA", ca)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", output_text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let (a, b) = (bundles.path().join("a.crt"), bundles.path().join("b.crt"));
    std::fs::write(&a, "one host's bundle\n").unwrap();
    std::fs::write(&b, "another host's bundle, with a proxy's CA\n").unwrap();
    for (extra, source) in [
        (&[][..], "envd-rs/host-ca:current"),
        (&["--session"][..], "local://envd-host-ca"),
    ] {
        let first = llb_with(a.to_str().unwrap(), extra);
        assert!(first.contains(source), "{first}");
        assert_eq!(first, llb_with(b.to_str().unwrap(), extra));
        let without = llb_with("none", extra);
        assert!(!without.contains("host-ca"), "{without}");
    }
    // A bundle named but missing is an error that says so, not a silent fallback.
    let o = std::process::Command::new(envd_e2e::runtime_dir().join("envd"))
        .args(["debug", "llb", "--path", dir.to_str().unwrap()])
        .env("ENVD_RUNTIME_DIR", envd_e2e::runtime_dir())
        .env("ENVD_HOST_CA", "/no/such/bundle.crt")
        .output()
        .unwrap();
    assert!(
        !o.status.success()
            && output_text(&o).contains("ENVD_HOST_CA=/no/such/bundle.crt: no such file"),
        "{}",
        output_text(&o)
    );
}

#[test]
fn debug_llb_prints_ops_and_config_without_building() {
    let root = project("e2ellb", PROGRAM);
    let dir = root.path().join("e2ellb");
    let out = envd(&["debug", "llb", "--path", dir.to_str().unwrap()]);
    let t = output_text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("source docker-image://docker.io/library/debian:bookworm"),
        "{t}"
    );
    assert!(
        t.contains("pip install") && t.contains("\"Entrypoint\""),
        "{t}"
    );
    // A reader that goes away early ends envd quietly with SIGPIPE's status, as other tools.
    // The listing is made larger than a pipe's buffer, so envd is still writing when `head`
    // has gone.
    let big = project(
        "e2ellbpipe",
        "# syntax=v1\ndef build():\n    base(image=\"debian:bookworm\", dev=False)\n    run(commands=[\"echo \" + \"x\" * 300000])\n",
    );
    let piped = std::process::Command::new("bash")
        .arg("-c")
        .arg(r#""$0" debug llb --path "$1" | head -1 >/dev/null; echo "${PIPESTATUS[0]}""#)
        .arg(envd_e2e::runtime_dir().join("envd"))
        .arg(big.path().join("e2ellbpipe"))
        .env("ENVD_RUNTIME_DIR", envd_e2e::runtime_dir())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&piped.stdout).trim(),
        "141",
        "{}",
        output_text(&piped)
    );
    the_host_ca_does_not_change_the_llb(&dir);
    let out = envd(&["debug", "llb", "--path", dir.to_str().unwrap(), "--dot"]);
    let dot = output_text(&out);
    assert!(
        out.status.success() && dot.starts_with("digraph llb {"),
        "{dot}"
    );
    assert!(
        dot.contains(" -> ") && dot.trim_end().ends_with('}'),
        "{dot}"
    );
}

#[test]
fn build_context_files_requirements_copy_mount_host_and_http() {
    require_docker();
    let program = r#"# syntax=v1
def build():
    base(image="debian:bookworm", dev=True)
    install.python()
    install.python_packages(requirements="requirements.txt")
    io.copy(source="data", target="/opt/data")
    io.http(
        url="https://files.pythonhosted.org/packages/d9/5a/e7c31adbe875f2abbb91bd84cf2dc52d792b5a01506781dbcf25c91daf11/six-1.16.0-py2.py3-none-any.whl",
        checksum="sha256:8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254",
        filename="six.whl",
    )
    run(commands=["cp from-host.txt /tmp/seen.txt"], mount_host=True)
"#;
    let root = project("e2ectx", program);
    let dir = root.path().join("e2ectx");
    std::fs::write(dir.join("requirements.txt"), "six==1.16.0\n").unwrap();
    std::fs::create_dir_all(dir.join("data/nested")).unwrap();
    std::fs::write(dir.join("data/nested/hello.txt"), "hello from data\n").unwrap();
    std::fs::write(dir.join("from-host.txt"), "mounted\n").unwrap();
    let path = dir.to_str().unwrap();
    let tag = "envd-e2e/ctx:test";
    let out = envd(&["build", "--path", path, "-t", tag]);
    assert!(out.status.success(), "{}", output_text(&out));
    let check = "set -e; cat /opt/data/nested/hello.txt /tmp/seen.txt; \
                 /opt/envd/venv/bin/python -c 'import six; print(six.__version__)'; \
                 sha256sum /home/envd/extra_source/six.whl | cut -c1-12; stat -c %U /opt/data/nested/hello.txt";
    let o = docker(&["run", "--rm", "--entrypoint", "/bin/sh", tag, "-c", check]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "hello from data\nmounted\n1.16.0\n8abb2f1d8689\nenvd\n",
        "{}",
        output_text(&o)
    );
    // The context's content is part of the program: an edit rebuilds, no edit does not.
    let out = envd(&["build", "--path", path, "-t", tag]);
    assert!(
        output_text(&out).contains("up to date"),
        "{}",
        output_text(&out)
    );
    std::fs::write(dir.join("data/nested/hello.txt"), "changed\n").unwrap();
    let out = envd(&["build", "--path", path, "-t", tag]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        !output_text(&out).contains("up to date"),
        "{}",
        output_text(&out)
    );
    let o = docker(&[
        "run",
        "--rm",
        "--entrypoint",
        "cat",
        tag,
        "/opt/data/nested/hello.txt",
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "changed\n");
    // A missing file is named.
    std::fs::remove_file(dir.join("requirements.txt")).unwrap();
    let out = envd(&["build", "--path", path, "-t", tag]);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("requirements.txt")
            && output_text(&out).contains("missing from the build context"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn envd_context_chooses_the_builder() {
    require_docker();
    let config = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(runtime_dir().join("envd"))
            .args(args)
            .env("ENVD_RUNTIME_DIR", runtime_dir())
            .env("ENVD_CONFIG_DIR", config.path())
            .output()
            .expect("run envd")
    };
    let relay = relay_to_docker_buildkit();
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let root = project("e2ectxsel", "def build():\n    base(image=\"debian:bookworm\")\n    run([\"echo ctx > /ctx-marker\"])\n");
    let dir = root.path().join("e2ectxsel");
    let path = dir.to_str().unwrap();
    let build = || {
        run(&[
            "build",
            "--path",
            path,
            "-t",
            "envd-e2e/ctxsel:test",
            "--force",
        ])
    };
    for (name, port) in [("relay", relay), ("dead", dead)] {
        let addr = format!("tcp://127.0.0.1:{port}");
        let o = run(&[
            "context",
            "create",
            "--name",
            name,
            "--builder",
            "tcp",
            "--builder-address",
            &addr,
        ]);
        assert!(o.status.success(), "{}", output_text(&o));
    }
    let o = run(&["context", "use", "--name", "dead"]);
    assert!(o.status.success(), "{}", output_text(&o));
    let o = build();
    assert!(!o.status.success());
    assert!(
        output_text(&o).contains(&format!("cannot reach buildkitd on tcp://127.0.0.1:{dead}")),
        "{}",
        output_text(&o)
    );
    let o = run(&["context", "use", "--name", "relay"]);
    assert!(o.status.success(), "{}", output_text(&o));
    let o = build();
    assert!(o.status.success(), "{}", output_text(&o));
    let o = run(&["context", "ls"]);
    assert!(output_text(&o).contains("* relay"), "{}", output_text(&o));
    let o = run(&["context", "rm", "--name", "relay"]);
    assert!(
        output_text(&o).contains("is the current context"),
        "{}",
        output_text(&o)
    );
    let o = run(&["context", "use", "--name", "default"]);
    assert!(o.status.success());
    let o = build();
    assert!(o.status.success(), "{}", output_text(&o));
}

#[test]
fn uv_and_nodejs_toolchains_build_and_run() {
    require_docker();
    let root = project(
        "e2etools",
        "def build():\n    base(image=\"debian:bookworm\", dev=True)\n    install.uv()\n    install.python_packages(name=[\"six\"])\n    install.nodejs()\n",
    );
    let dir = root.path().join("e2etools");
    let tag = "envd-e2e/tools:test";
    // --force: an image left by an earlier run on this engine would skip the build (and the
    // step line this test looks for).
    let out = envd(&[
        "build",
        "--path",
        dir.to_str().unwrap(),
        "-t",
        tag,
        "--force",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("uv pip install six"),
        "{}",
        output_text(&out)
    );
    let o = docker(&[
        "run",
        "--rm",
        "--entrypoint",
        "/bin/bash",
        tag,
        "-c",
        "set -e; uv --version | cut -d' ' -f1; node -e 'console.log(1 + 1)'; python -c 'import six; print(six.__name__)'",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "uv\n2\nsix\n",
        "{}",
        output_text(&o)
    );
}
