//! `envd build` and `envd up` on a standalone buildkitd (BuildKit v0.13.2, as envd's default
//! builder), started by `scripts/buildkitd-up` (built once from Debian's sources and cached; its
//! docker.io mirror is a docker-registry on 127.0.0.1). Nothing reaches buildkitd through the
//! Docker engine: the build context's files and the runtime binaries travel in the build's
//! session, and the image comes back through it (loaded into the engine, or an archive).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use envd_e2e::{envd, output_text, require_docker, workspace_root};

/// Long enough for a cold build of buildkitd (about 2 minutes) on a loaded machine.
const BUILDKITD_UP_DEADLINE_S: u32 = 600;

/// The running buildkitd: (builder address, its docker.io mirror HOST:PORT).
fn buildkitd() -> &'static (String, String) {
    static BUILDKITD: OnceLock<(String, String)> = OnceLock::new();
    BUILDKITD.get_or_init(|| {
        require_docker();
        let o = Command::new("timeout")
            .arg(BUILDKITD_UP_DEADLINE_S.to_string())
            .arg(workspace_root().join("scripts/buildkitd-up"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/buildkitd-up");
        assert!(
            o.status.code() != Some(124),
            "scripts/buildkitd-up did not finish within {BUILDKITD_UP_DEADLINE_S} s"
        );
        assert!(
            o.status.success(),
            "scripts/buildkitd-up failed: {}",
            output_text(&o)
        );
        let address = String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .unwrap()
            .to_string();
        let state = Path::new(address.trim_start_matches("unix://"))
            .parent()
            .unwrap();
        let registry = std::fs::read_to_string(state.join("registry")).unwrap();
        (address, registry.trim().to_string())
    })
}

/// `envd ARGS --builder unix --builder-address ...`.
fn envd_on_buildkitd(args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend([
        "--builder",
        "unix",
        "--builder-address",
        buildkitd().0.as_str(),
    ]);
    envd(&all)
}

fn envd_ok(args: &[&str]) -> String {
    let o = envd_on_buildkitd(args);
    assert!(o.status.success(), "envd {args:?}:\n{}", output_text(&o));
    output_text(&o)
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("docker")
}

/// A project that reads the build context every way a build file can.
fn project(name: &str, six: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(name);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(
        dir.join("build.envd"),
        "def build():\n    base(image=\"debian:bookworm\", dev=True)\n    install.python()\n    \
         install.python_packages(requirements=\"requirements.txt\")\n    \
         io.copy(\"data/hello.txt\", \"/home/envd/hello.txt\")\n    \
         run([\"cp data/hello.txt /tmp/seen-by-mount-host\"], mount_host=True)\n",
    )
    .unwrap();
    std::fs::write(dir.join("requirements.txt"), format!("six=={six}\n")).unwrap();
    std::fs::write(dir.join("data/hello.txt"), format!("hello from {name}\n")).unwrap();
    root
}

/// A number unique to this run, for a comment that keeps an earlier run's BuildKit cache out.
fn nonce() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn in_image(tag: &str, script: &str) -> String {
    let o = docker(&["run", "--rm", "--entrypoint", "sh", tag, "-c", script]);
    assert!(o.status.success(), "{script}: {}", output_text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn a_dev_image_with_context_files_comes_up_and_answers_ssh() {
    let root = project("bkup", "1.16.0");
    let dir = root.path().join("bkup");
    let path = dir.to_str().unwrap();
    let text = envd_ok(&["up", "--path", path, "--detach"]);
    assert!(text.contains("ssh bkup.envd"), "{text}");
    let o = envd_e2e::ssh()
        .args(["-o", "BatchMode=yes", "bkup.envd"])
        .arg("cat ~/hello.txt /tmp/seen-by-mount-host; python -c 'import six; print(six.__version__)'")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        said.trim(),
        "hello from bkup\nhello from bkup\n1.16.0",
        "{}",
        output_text(&o)
    );
    // The binaries in the image are the ones on this host, sent through the session.
    let sshd = docker(&[
        "run",
        "--rm",
        "--entrypoint",
        "cat",
        "bkup:dev",
        "/usr/local/bin/envd-sshd",
    ]);
    let host = std::fs::read(envd_e2e::runtime_bin("envd-sshd")).unwrap();
    assert!(
        sshd.stdout == host,
        "envd-sshd in the image differs from the host's"
    );
    let o = envd(&["down", "--name", "bkup", "--volumes"]);
    assert!(o.status.success(), "{}", output_text(&o));
}

#[test]
fn a_changed_requirements_file_of_the_same_size_reruns_pip_and_keeps_apt_cached() {
    let root = project("bkcache", "1.16.0");
    let dir = root.path().join("bkcache");
    let path = dir.to_str().unwrap();
    let tag = "envd-e2e/bkcache:test";
    envd_ok(&["build", "--path", path, "-t", tag]);
    assert_eq!(
        in_image(
            tag,
            "/opt/envd/venv/bin/python -c 'import six; print(six.__version__)'"
        ),
        "1.16.0"
    );
    // Same size, same name: buildkitd must not keep the earlier transfer's file.
    // A comment unique to this run keeps BuildKit's cache from an earlier run out of it.
    let nonce = nonce();
    std::fs::write(
        dir.join("requirements.txt"),
        format!("six==1.16.0 # {nonce}\n"),
    )
    .unwrap();
    envd_ok(&["build", "--path", path, "-t", tag]);
    std::fs::write(
        dir.join("requirements.txt"),
        format!("six==1.15.0 # {nonce}\n"),
    )
    .unwrap();
    let text = envd_ok(&["build", "--path", path, "-t", tag]);
    assert!(
        text.contains("[cached] apt-get install"),
        "apt was not cached:\n{text}"
    );
    assert!(
        text.contains("[run]    uv pip install -r requirements.txt"),
        "{text}"
    );
    // BuildKit 0.13 has MergeOp: the runtime files are a layer of their own, merged, and not
    // rebuilt when pip runs again.
    assert!(
        text.contains("[run]    merge the environment's layers"),
        "{text}"
    );
    assert!(
        text.contains("[cached] envd's runtime: envd-init, envd-sshd"),
        "{text}"
    );
    assert_eq!(
        in_image(
            tag,
            "/opt/envd/venv/bin/python -c 'import six; print(six.__version__)'"
        ),
        "1.15.0"
    );
    // Nothing changed: the same image, every step from the cache.
    let text = envd_ok(&["build", "--path", path, "-t", tag, "--force"]);
    assert!(!text.contains("[run]    uv pip"), "{text}");
    let _ = docker(&["rmi", tag]);
}

/// The layers of `tag` in the engine.
fn layer_count(tag: &str) -> usize {
    let o = docker(&["image", "inspect", "-f", "{{len .RootFS.Layers}}", tag]);
    assert!(o.status.success(), "{}", output_text(&o));
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

#[test]
fn through_a_registry_only_the_changed_layers_reach_the_engine() {
    let registry = &buildkitd().1;
    let root = project("bkreg", "1.16.0");
    let dir = root.path().join("bkreg");
    let path = dir.to_str().unwrap();
    let tag = "envd-e2e/bkreg:test";
    let via = format!("{registry}/envd/bkreg:test");
    let text = envd_ok(&["build", "--path", path, "-t", tag, "--registry", registry]);
    assert!(
        text.contains(&format!("[done]   pulling {via} into the engine")),
        "{text}"
    );
    let python = "/opt/envd/venv/bin/python -c 'import six; print(six.__version__)'";
    assert_eq!(in_image(tag, python), "1.16.0");
    // A comment unique to this run keeps BuildKit's cache from an earlier run out of it.
    let nonce = nonce();
    std::fs::write(
        dir.join("requirements.txt"),
        format!("six==1.15.0 # {nonce}\n"),
    )
    .unwrap();
    let text = envd_ok(&["build", "--path", path, "-t", tag, "--registry", registry]);
    assert_eq!(in_image(tag, python), "1.15.0");
    // The packages' layer and the layers above it travel; the base, apt, user and venv do not.
    let new: usize = text
        .lines()
        .find_map(|l| l.trim().strip_suffix(" new layers")?.parse().ok())
        .unwrap_or_else(|| panic!("no count of new layers:\n{text}"));
    let all = layer_count(tag);
    assert!(
        (1..all - 3).contains(&new),
        "{new} of {all} layers pulled:\n{text}"
    );
    // The registry's names (tag and digest) are gone: they would keep old builds alive.
    let o = docker(&[
        "images",
        "-q",
        "--filter",
        &format!("reference={registry}/envd/bkreg"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "",
        "left in the engine"
    );
    let _ = docker(&["rmi", tag]);
}

#[test]
fn archives_and_a_push_come_from_buildkitd_itself() {
    let root = project("bkout", "1.16.0");
    let dir = root.path().join("bkout");
    let path = dir.to_str().unwrap();
    let out = tempfile::tempdir().unwrap();
    let oci = out.path().join("image.oci.tar");
    let archive = out.path().join("image.docker.tar");
    let registry = &buildkitd().1;

    let dest = format!("type=oci,dest={},name=bkout:oci", oci.display());
    envd_ok(&["build", "--path", path, "--output", &dest, "--force"]);
    let names = Command::new("tar").arg("tf").arg(&oci).output().unwrap();
    let names = String::from_utf8_lossy(&names.stdout);
    assert!(
        names.lines().any(|l| l == "index.json") && names.contains("oci-layout"),
        "{names}"
    );

    let dest = format!(
        "type=docker,dest={},name=envd-e2e/bkout:archive",
        archive.display()
    );
    envd_ok(&["build", "--path", path, "--output", &dest, "--force"]);
    let _ = docker(&["rmi", "envd-e2e/bkout:archive"]);
    let o = docker(&["load", "-i", archive.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("envd-e2e/bkout:archive"),
        "{}",
        output_text(&o)
    );
    assert_eq!(
        in_image("envd-e2e/bkout:archive", "cat /home/envd/hello.txt"),
        "hello from bkout"
    );

    let name = format!("{registry}/envd-e2e/bkout:pushed");
    let dest = format!("type=image,name={name},push=true");
    envd_ok(&["build", "--path", path, "--output", &dest, "--force"]);
    let tags = Command::new("curl")
        .args([
            "-sf",
            &format!("http://{registry}/v2/envd-e2e/bkout/tags/list"),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&tags.stdout).contains("\"pushed\""),
        "{}",
        output_text(&tags)
    );
    let _ = docker(&["rmi", "envd-e2e/bkout:archive"]);
}

/// The registry of `scripts/buildkitd-up` that wants a login: (HOST:PORT, user, password).
fn login_registry() -> (String, String, String) {
    let state = Path::new(buildkitd().0.trim_start_matches("unix://"))
        .parent()
        .unwrap();
    let line = std::fs::read_to_string(state.join("registry-login")).unwrap();
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(parts.len(), 3, "registry-login: {line}");
    (parts[0].into(), parts[1].into(), parts[2].into())
}

/// `envd build` on buildkitd with the docker client configuration `docker_config`.
fn envd_build_with_config(docker_config: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(envd_e2e::runtime_dir().join("envd"));
    envd_e2e::isolated(&mut cmd).env("DOCKER_CONFIG", docker_config);
    cmd.args(args)
        .args(["--builder", "unix", "--builder-address", &buildkitd().0])
        .output()
        .expect("run envd")
}

#[test]
fn a_registry_that_wants_a_login_gets_the_clients_docker_login() {
    let (registry, user, password) = login_registry();
    // The docker CLI's own `docker login` writes the configuration envd-rs reads.
    let config = tempfile::tempdir().unwrap();
    let dir = config.path().to_str().unwrap();
    let mut login = Command::new("docker")
        .args([
            "--config",
            dir,
            "login",
            "-u",
            &user,
            "--password-stdin",
            &registry,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    login
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    let o = login.wait_with_output().unwrap();
    assert!(o.status.success(), "docker login: {}", output_text(&o));
    // The base image comes from that registry: buildkitd pulls it with the login, pushes the
    // result to it, and the engine pulls it from there.
    let base = format!("{registry}/library/debian:bookworm");
    assert!(docker(&["tag", "debian:bookworm", &base]).status.success());
    let o = docker(&["--config", dir, "push", &base]);
    assert!(o.status.success(), "{}", output_text(&o));
    let _ = docker(&["rmi", &base]);
    let root = tempfile::tempdir().unwrap();
    let project = root.path().join("bklogin");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("build.envd"),
        format!(
            "def build():\n    base(image=\"{base}\", dev=False)\n    run([\"echo {} > /hello\"])\n",
            nonce()
        ),
    )
    .unwrap();
    let path = project.to_str().unwrap();
    let tag = "envd-e2e/bklogin:test";
    let args = ["build", "--path", path, "-t", tag, "--registry", &registry];

    let nobody = tempfile::tempdir().unwrap();
    let o = envd_build_with_config(nobody.path(), &args);
    let text = output_text(&o);
    assert!(!o.status.success(), "built without a login:\n{text}");
    assert!(
        text.contains(&format!("the registry {registry} wants a login"))
            && text.contains(&format!("docker login {registry}"))
            && text.contains("401"),
        "the refusal is not named:\n{text}"
    );

    let o = envd_build_with_config(config.path(), &args);
    let text = output_text(&o);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "[done]   pulling {registry}/envd/bklogin:test into the engine"
        )),
        "{text}"
    );
    assert!(!in_image(tag, "cat /hello").is_empty());
    let _ = docker(&["rmi", tag]);
}
