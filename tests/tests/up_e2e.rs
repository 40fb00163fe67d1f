//! `envd up` end to end on a real Docker engine: OpenSSH's `ssh NAME.envd` through the entry we
//! write (host key pinned, checking on), agent forwarding with a real ssh-agent, Jupyter with a
//! token rendered by headless Chromium, envd-init restarting a killed Jupyter, `envd ls`, and
//! `envd down` leaving nothing behind, and the interactive shell `envd up` opens in a terminal.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use envd_e2e::agent::SshAgent;
use envd_e2e::{envd, in_terminal, output_text, require_docker, workspace_root, TerminalRun, Then};

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// A project directory named `name` holding `build_envd`.
fn project(name: &str, build_envd: &str) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::Builder::new()
        .prefix("envd-up-test")
        .tempdir()
        .unwrap();
    let dir = root.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("build.envd"), build_envd).unwrap();
    (root, dir)
}

/// `envd ls --format json`, as JSON.
fn ls() -> serde_json::Value {
    let out = envd(&["ls", "--format", "json"]);
    assert!(out.status.success(), "{}", output_text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn service<'a>(
    ls: &'a serde_json::Value,
    env: &str,
    service: &str,
) -> Option<&'a serde_json::Value> {
    ls.as_array()?.iter().find(|e| e["name"] == env)?["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == service)
}

fn http_status(url: &str) -> String {
    let o = run(Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url]));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Removes the environment even when an assertion fails half-way.
struct Down(&'static str);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = envd(&["down", "--name", self.0]);
    }
}

const PROGRAM: &str = r#"# syntax=v1
def build():
    base(image="debian:bookworm", dev=True)
    install.python()
    install.python_packages(name=["numpy"])
    # A free host port: the test must not collide with an environment the machine runs.
    config.jupyter(port=0)
    runtime.daemon(commands=[["python3", "-m", "http.server", "8000", "--bind", "0.0.0.0"]])
    runtime.expose(envd_port=8000, service="files")
    runtime.command(commands={"hello": "echo hello-from-command"})
"#;

fn ssh_config_text() -> String {
    std::fs::read_to_string(envd_e2e::test_config_dir().join("ssh_config")).unwrap_or_default()
}

/// One environment, brought up once; each feature is checked in turn against it.
#[test]
fn up_ssh_agent_jupyter_in_chromium_restart_ls_and_down() {
    require_docker();
    let name = "e2eup";
    let _down = Down(name);
    let _ = envd(&["down", "--name", name]);
    let (_root, dir) = project("e2eup-project", PROGRAM);
    let jupyter_url = up_detached(name, &dir);
    plain_openssh_reaches_it();
    up_in_a_terminal_keeps_it_and_opens_the_shell(name, &dir);
    agent_forwarding_lists_a_local_key();
    jupyter_needs_its_token_and_renders_in_chromium(&jupyter_url);
    a_killed_jupyter_is_restarted(name, &jupyter_url);
    exec_keeps_exit_codes_and_names_unknown_environments(name);
    command_logs_describe_and_loopback_ports(name);
    down_leaves_nothing(name);
}

/// `envd up --detach` prints every endpoint; returns the Jupyter URL.
fn up_detached(name: &str, dir: &std::path::Path) -> String {
    let out = envd(&[
        "up",
        "--path",
        dir.to_str().unwrap(),
        "--name",
        name,
        "--detach",
    ]);
    let log = output_text(&out);
    assert!(out.status.success(), "envd up failed:\n{log}");
    assert!(log.contains("ssh e2eup.envd"), "{log}");
    assert!(
        log.contains("code --remote ssh-remote+e2eup.envd /home/envd/e2eup-project"),
        "{log}"
    );
    let jupyter_url = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("jupyter:"))
        .map(|u| u.trim().to_string())
        .unwrap_or_else(|| panic!("no Jupyter URL printed:\n{log}"));
    assert!(jupyter_url.contains("token="), "{jupyter_url}");

    jupyter_url
}

fn plain_openssh_reaches_it() {
    // Plain OpenSSH through the user's ssh config's Include (this test's own: -F); host-key checking stays on (BatchMode
    // would fail on an unknown key).
    let o = run(envd_e2e::ssh().args([
        "-o",
        "BatchMode=yes",
        "e2eup.envd",
        "python3 -c 'import numpy; print(numpy.__name__)'; pwd",
    ]));
    assert!(o.status.success(), "ssh failed: {}", output_text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "numpy\n/home/envd/e2eup-project"
    );
    assert!(ssh_config_text().contains("StrictHostKeyChecking yes"));
    // The pin is what OpenSSH checks: another key in its place is refused.
    let known = envd_e2e::test_config_dir().join("known_hosts");
    let pinned = std::fs::read_to_string(&known).unwrap();
    let other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK9u8bGvtVaJ0JJmEXvWoJ6x4fNwF9ojTY5HsIhKf0uX";
    let forged: String = pinned
        .lines()
        .map(|l| match l.starts_with("e2eup.envd ") {
            true => format!("e2eup.envd {other}\n"),
            false => format!("{l}\n"),
        })
        .collect();
    assert_ne!(forged, pinned, "no e2eup.envd line in {}", known.display());
    std::fs::write(&known, forged).unwrap();
    let o = run(envd_e2e::ssh().args(["-o", "BatchMode=yes", "e2eup.envd", "true"]));
    std::fs::write(&known, pinned).unwrap();
    assert!(
        !o.status.success() && output_text(&o).contains("Host key verification failed"),
        "a wrong pinned key was not refused: {}",
        output_text(&o)
    );
}

fn up_in_a_terminal_keeps_it_and_opens_the_shell(name: &str, dir: &std::path::Path) {
    // Without --detach, in a terminal, `envd up` keeps the running container and opens the
    // shell: the prompt names the environment, typed commands run inside, exit ends envd up.
    let envd_bin = envd_e2e::runtime_dir().join("envd");
    let TerminalRun { screen, code, .. } = in_terminal(
        &[
            envd_bin.to_str().unwrap(),
            "up",
            "--path",
            dir.to_str().unwrap(),
            "--name",
            name,
        ],
        &[(
            "[envd:e2eup]",
            Then::Type("echo inside-$((6*7)) $PWD; exit 3\n"),
        )],
        180,
    );
    assert!(
        screen.contains("kept the running container"),
        "envd up recreated the container:\n{screen}"
    );
    assert!(
        screen.contains("inside-42 /home/envd/e2eup-project"),
        "the shell did not run the typed command:\n{screen}"
    );
    assert_eq!(
        code,
        Some(3),
        "the shell's exit code is not envd up's:\n{screen}"
    );

    // envd exec without a command opens the login shell on a terminal of our size; -T gives no
    // terminal, and either way envd exits with the command, without waiting for a key press.
    let TerminalRun { screen, code, .. } = in_terminal(
        &[envd_bin.to_str().unwrap(), "exec", "--name", name],
        &[("[envd:e2eup]", Then::Type("stty size; tty; exit 5\n"))],
        60,
    );
    assert!(
        screen.contains("24 80\n/dev/pts/"),
        "exec's terminal:\n{screen}"
    );
    assert_eq!(code, Some(5), "{screen}");
    let TerminalRun { screen, code, .. } = in_terminal(
        &[
            envd_bin.to_str().unwrap(),
            "exec",
            "-T",
            "--name",
            name,
            "--",
            "tty",
        ],
        &[],
        30,
    );
    assert!(screen.contains("not a tty"), "{screen}");
    assert_eq!(code, Some(1), "{screen}");
}

fn agent_forwarding_lists_a_local_key() {
    // Agent forwarding: a key held by a real ssh-agent on this side is listed inside.
    let agent_dir = tempfile::tempdir().unwrap();
    let launch = |program: &str| Command::new(program);
    let agent = SshAgent::start(&agent_dir.path().join("agent.sock"), &launch);
    agent.add_new_key(&agent_dir.path().join("id_agent"), "agent-key-e2e", &launch);
    let o = run(envd_e2e::ssh()
        .args(["-A", "-o", "BatchMode=yes", "e2eup.envd", "ssh-add -l"])
        .env("SSH_AUTH_SOCK", agent.sock()));
    drop(agent);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("agent-key-e2e"),
        "the forwarded agent is not listed inside: {}",
        output_text(&o)
    );
}

fn jupyter_needs_its_token_and_renders_in_chromium(jupyter_url: &str) {
    // Jupyter answers with the token and refuses without it.
    assert_eq!(http_status(jupyter_url), "200");
    let api = jupyter_url.replace("/lab?token=", "/api/contents?token=");
    assert_eq!(http_status(&api), "200");
    assert_eq!(http_status(api.split('?').next().unwrap()), "403");

    // JupyterLab reads its news and update checks as off (it would otherwise ask on first
    // open whether to fetch news from the internet): its settings API, as the page reads it.
    let settings = jupyter_url.replace(
        "/lab?token=",
        "/lab/api/settings/@jupyterlab/apputils-extension:notification?token=",
    );
    let o = run(Command::new("curl").args(["-sf", &settings]));
    let answer: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", output_text(&o)));
    assert_eq!(answer["settings"]["fetchNews"], "false", "{answer}");
    assert_eq!(answer["settings"]["checkForUpdates"], false, "{answer}");

    // Headless Chromium renders JupyterLab: the page title, the lab shell and the project's
    // build.envd in the file browser (fetched with the token by the page's own scripts).
    let chromium_args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--virtual-time-budget=20000",
        "--window-size=1280,800",
    ];
    let o = run(Command::new("chromium")
        .args(chromium_args)
        .arg("--dump-dom")
        .arg(jupyter_url));
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(
        dom.contains("<title>JupyterLab</title>"),
        "title missing: {}",
        output_text(&o)
    );
    assert!(dom.contains("jp-LabShell"), "JupyterLab did not render");
    assert!(
        dom.contains("build.envd"),
        "the file browser does not list build.envd"
    );
    let artifacts = workspace_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("jupyterlab.png");
    let _ = std::fs::remove_file(&shot);
    let o = run(Command::new("chromium")
        .args(chromium_args)
        .arg(format!("--screenshot={}", shot.display()))
        .arg(jupyter_url));
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "no screenshot ({size} bytes): {}",
        output_text(&o)
    );
}

fn a_killed_jupyter_is_restarted(name: &str, jupyter_url: &str) {
    // Kill Jupyter inside: envd-init restarts it and envd ls shows it healthy again.
    let o = envd(&["exec", "--name", name, "--", "pkill", "-f", "jupyter-lab"]);
    assert!(o.status.success(), "{}", output_text(&o));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let l = ls();
        let j = service(&l, name, "jupyter").cloned().unwrap_or_default();
        if j["restarts"].as_u64().unwrap_or(0) >= 1 && j["state"] == "healthy" {
            break;
        }
        assert!(Instant::now() < deadline, "jupyter not healthy again: {l}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(http_status(jupyter_url), "200");
}

fn exec_keeps_exit_codes_and_names_unknown_environments(name: &str) {
    // exec returns the command's exit code; an unknown environment is a clear error.
    let o = envd(&["exec", "--name", name, "--", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", output_text(&o));
    let o = envd(&["exec", "--name", "e2eupp", "--", "true"]);
    assert!(
        output_text(&o).contains("no environment named \"e2eupp\". Did you mean \"e2eup\"?"),
        "{}",
        output_text(&o)
    );
}

fn command_logs_describe_and_loopback_ports(name: &str) {
    // A runtime.command by its name.
    let o = envd(&["exec", "--name", name, "--command", "hello"]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "hello-from-command"
    );
    // A service's log, from envd-init.
    let o = envd(&["logs", "--name", name, "jupyter"]);
    assert!(o.status.success(), "{}", output_text(&o));
    let log = String::from_utf8_lossy(&o.stdout).to_lowercase();
    assert!(
        log.contains("jupyter"),
        "envd logs shows no Jupyter output:\n{log}"
    );
    // describe: the image, every port on 127.0.0.1, the named command, the services.
    let o = envd(&["describe", "--name", name]);
    let text = output_text(&o);
    assert!(o.status.success(), "{text}");
    for needle in [
        ":dev\n",
        "hello: echo hello-from-command",
        "sshd",
        "jupyter",
        "files",
    ] {
        assert!(
            text.contains(needle),
            "{needle:?} missing from describe:\n{text}"
        );
    }
    // What the engine publishes: every binding on 127.0.0.1, none on all interfaces.
    let id = run(Command::new("docker").args([
        "ps",
        "-q",
        "--filter",
        &format!("label=ai.tensorchord.envd.name={name}"),
    ]));
    let id = String::from_utf8_lossy(&id.stdout).trim().to_string();
    let o = run(Command::new("docker").args([
        "inspect",
        "-f",
        "{{json .HostConfig.PortBindings}}",
        &id,
    ]));
    let bindings: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ips: Vec<&str> = bindings
        .as_object()
        .unwrap()
        .values()
        .flat_map(|b| b.as_array().unwrap())
        .map(|b| b["HostIp"].as_str().unwrap_or_default())
        .collect();
    assert!(
        ips.len() >= 3,
        "sshd, jupyter and files published: {bindings}"
    );
    assert!(
        ips.iter().all(|ip| *ip == "127.0.0.1"),
        "published beyond 127.0.0.1: {bindings}"
    );
}

fn down_leaves_nothing(name: &str) {
    // down: no container, no SSH entry, ssh no longer resolves the host.
    let o = envd(&["down", "--name", name]);
    assert!(o.status.success(), "{}", output_text(&o));
    let o = run(Command::new("docker").args([
        "ps",
        "-a",
        "--filter",
        "label=ai.tensorchord.envd.name=e2eup",
        "-q",
    ]));
    assert!(o.stdout.is_empty(), "container left behind");
    assert!(
        !ssh_config_text().contains("e2eup.envd"),
        "SSH entry left behind"
    );
    let o = run(envd_e2e::ssh().args([
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=3",
        "e2eup.envd",
        "true",
    ]));
    assert!(!o.status.success());
}

#[test]
fn a_port_in_use_is_named() {
    require_docker();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_root, dir) = project(
        "e2eport",
        &format!(
            "def build():\n    base(image=\"debian:bookworm\", dev=True)\n    runtime.expose(envd_port=9000, host_port={port}, service=\"web\")\n"
        ),
    );
    let _down = Down("e2eport");
    let out = envd(&["up", "--path", dir.to_str().unwrap(), "--detach"]);
    assert!(!out.status.success());
    let log = output_text(&out);
    assert!(
        log.contains(&format!("cannot publish port {port}: it is in use")),
        "{log}"
    );
    let o = run(Command::new("docker").args([
        "ps",
        "-a",
        "--filter",
        "label=ai.tensorchord.envd.name=e2eport",
        "-q",
    ]));
    assert!(o.stdout.is_empty(), "a failed up leaves no container");
}

#[test]
fn ssh_works_before_every_service_is_healthy() {
    // A service that becomes healthy only 8 s after it starts (its health check is a file it
    // makes then): `envd up` waits for it, while the SSH entry is written as soon as sshd
    // answers, so `ssh NAME.envd` works meanwhile.
    require_docker();
    let (_root, dir) = project(
        "e2eearly",
        "def build():\n    base(image=\"debian:bookworm\", dev=True)\n    io.copy(source=\"slow.toml\", target=\"/etc/envd/services/slow.toml\")\n",
    );
    std::fs::write(
        dir.join("slow.toml"),
        "command = \"/bin/sh -c 'rm -f /tmp/slow-ready; sleep 8; touch /tmp/slow-ready; exec sleep infinity'\"\n\n[healthiness]\nfile-path = \"/tmp/slow-ready\"\nstart-period = \"30s\"\n",
    )
    .unwrap();
    let _down = Down("e2eearly");
    let o = envd(&["build", "--path", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", output_text(&o));
    let started = Instant::now();
    let mut up = envd_e2e::isolated(&mut Command::new(envd_e2e::runtime_dir().join("envd")))
        .args(["up", "--path", dir.to_str().unwrap(), "--detach"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ssh_at = loop {
        let o = run(envd_e2e::ssh().args([
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=2",
            "e2eearly.envd",
            "echo in",
        ]));
        if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "in" {
            break started.elapsed();
        }
        if let Some(status) = up.try_wait().unwrap() {
            let out = up.wait_with_output().unwrap();
            panic!(
                "envd up ended ({status}) before ssh ever worked: {}",
                output_text(&out)
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "ssh never worked: {}",
            output_text(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let still_waiting = up.try_wait().unwrap().is_none();
    let out = up.wait_with_output().unwrap();
    let all_at = started.elapsed();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        still_waiting && all_at >= Duration::from_secs(8),
        "ssh worked at {ssh_at:?}, envd up returned at {all_at:?} (still waiting then: {still_waiting})"
    );
}

#[test]
fn a_failing_service_is_reported_with_its_log() {
    require_docker();
    let (_root, dir) = project(
        "e2efailing",
        "def build():\n    base(image=\"debian:bookworm\", dev=True)\n    runtime.init([\"echo init-is-broken >&2; exit 3\"])\n",
    );
    let _down = Down("e2efailing");
    let out = envd(&[
        "up",
        "--path",
        dir.to_str().unwrap(),
        "--detach",
        "--timeout",
        "60s",
    ]);
    let log = output_text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("init_0: failed"), "{log}");
    assert!(
        log.contains("init-is-broken"),
        "the service's log is not shown:\n{log}"
    );
    assert!(log.contains("envd logs --name e2efailing"), "{log}");
}

#[test]
fn a_container_that_exits_at_once_is_reported_within_seconds() {
    // A service file with a typo copied into the image: envd-init refuses to start (exit 2).
    // Before issue 11 `envd up` waited out its whole timeout and blamed the API.
    require_docker();
    let (_root, dir) = project(
        "e2eexits",
        "def build():\n    base(image=\"debian:bookworm\", dev=True)\n    io.copy(source=\"bad.toml\", target=\"/etc/envd/services/bad.toml\")\n",
    );
    std::fs::write(
        dir.join("bad.toml"),
        "command = \"sleep 1\"\nrestrat = \"always\"\n",
    )
    .unwrap();
    let _down = Down("e2eexits");
    let t = Instant::now();
    let out = envd(&[
        "up",
        "--path",
        dir.to_str().unwrap(),
        "--detach",
        "--timeout",
        "300s",
    ]);
    let log = output_text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("stopped while starting (exit code 2)"),
        "{log}"
    );
    assert!(
        log.contains("bad.toml:2"),
        "envd-init's located error is not shown:\n{log}"
    );
    // The build is cached by the test above; the failure itself must show in seconds.
    assert!(
        t.elapsed() < Duration::from_secs(120),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn a_missing_docker_engine_is_named() {
    let o = Command::new(envd_e2e::runtime_dir().join("envd"))
        .args(["ls"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    let t = output_text(&o);
    assert!(!o.status.success());
    assert!(
        t.contains("cannot reach the Docker engine at /nonexistent/docker.sock")
            && t.contains("Is dockerd running"),
        "{t}"
    );
}
