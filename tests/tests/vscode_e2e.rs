//! VS Code in the environment, end to end on a real Docker engine: `config.vscode_server()`
//! builds code-server from the npm registry into the image, envd-init supervises it as the
//! service `vscode`, and real Chromium (playwright-core) logs in with the password `envd up`
//! printed, opens a file of the project, edits and saves it (seen on the host), and runs a
//! command in the integrated terminal (as `envd`, in the working directory, with the
//! environment's Python). The same workbench through an `ssh -L` tunnel to the unpublished inner
//! port; requests without the password get the login page; a killed server is restarted.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use envd_e2e::{envd, output_text, require_docker, workspace_root};

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Removes the environment even when an assertion fails half-way.
struct Down(&'static str);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = envd(&["down", "--name", self.0, "--volumes"]);
    }
}

const NAME: &str = "e2evscode";

const PROGRAM: &str = r#"# syntax=v1
def build():
    base(image="debian:bookworm", dev=True)
    install.python()
    # A free host port: the test must not collide with an environment the machine runs.
    config.vscode_server(port=0)
    # A local extension from the build context, installed offline.
    install.vscode_extensions(["hello.vsix"])
"#;

/// A minimal extension packed as VS Code does (a zip with `extension/package.json`), made with
/// Python's zipfile.
fn make_vsix(dir: &Path) {
    let src = dir.join("vsix-src/extension");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("package.json"),
        r#"{"name": "hello-envd", "publisher": "envdtest", "version": "0.0.1", "engines": {"vscode": "^1.50.0"}}"#,
    )
    .unwrap();
    let o = run(Command::new("python3")
        .current_dir(dir.join("vsix-src"))
        .args(["-m", "zipfile", "-c", "../hello.vsix", "extension"]));
    assert!(o.status.success(), "{}", output_text(&o));
    std::fs::remove_dir_all(dir.join("vsix-src")).unwrap();
}

/// Runs the browser driver; returns its stdout, failing the test with its output otherwise.
fn workbench(url: &str, password: &str, append: &str, shot: &str, command: Option<&str>) -> String {
    let driver = workspace_root().join("target/peers/browser/node_modules");
    assert!(
        driver.join("playwright-core").exists(),
        "{} missing: scripts/test installs playwright-core (ensure_browser_driver)",
        driver.display()
    );
    let artifacts = workspace_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let mut cmd = Command::new("node");
    cmd.env("NODE_PATH", &driver)
        .arg(workspace_root().join("tests/browser/vscode_workbench.js"))
        .args([url, password, "notes.txt", append])
        .arg(artifacts.join(shot));
    if let Some(c) = command {
        cmd.arg(c);
    }
    let o = run(&mut cmd);
    assert!(
        o.status.success(),
        "the workbench in Chromium: {}",
        output_text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn wait_for_file(path: &Path, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.is_empty() {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Reads `child`'s stdout until `listeningOn==X==` shows, for at most `secs`.
fn listening_on(child: &mut std::process::Child, secs: u64) -> String {
    use std::io::Read;
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut seen = String::new();
    loop {
        if let Some(v) = seen
            .split("listeningOn==")
            .nth(1)
            .and_then(|r| r.split_once("=="))
        {
            return v.0.to_string();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            Err(_) => panic!("no listeningOn== line within {secs} s; the script printed: {seen}"),
        }
    }
}

/// Desktop VS Code's Remote-SSH with `remote.SSH.localServerDownload`: the desktop copies the
/// server tarball over with OpenSSH's `scp` (the sftp subsystem), then pipes a bash script into
/// `ssh -T -D PORT` that unpacks it under `~/.vscode-server`, starts it and prints
/// `listeningOn==...==`; the editor then reaches it through the SOCKS port or a forwarded unix
/// socket. The tarball is this environment's own code-server.
fn remote_ssh_local_server_download(dir: &Path) {
    let host = format!("{NAME}.envd");
    let tarball = dir.join("vscode-server-linux-x64.tar.gz");
    let o = run(Command::new("sh").arg("-c").arg(format!(
        "{} exec -T --name {NAME} -- tar -C /opt/envd -czf - vscode > {}",
        envd_e2e::runtime_dir().join("envd").display(),
        tarball.display()
    )));
    assert!(o.status.success(), "{}", output_text(&o));
    let o = run(envd_e2e::ssh().args(["-o", "BatchMode=yes", &host, "mkdir -p ~/.vscode-server"]));
    assert!(o.status.success(), "{}", output_text(&o));
    let o = run(Command::new("scp")
        .arg("-F")
        .arg(envd_e2e::ssh_config_path())
        .args(["-q", "-o", "BatchMode=yes"])
        .arg(&tarball)
        .arg(format!(
            "{host}:.vscode-server/vscode-server-linux-x64.tar.gz"
        )));
    assert!(o.status.success(), "scp: {}", output_text(&o));
    std::fs::remove_file(&tarball).unwrap();
    let start = |listen: &str, socks: Option<u16>| {
        let script = format!(
            "set -e\ncd ~/.vscode-server\nmkdir -p bin/e2ecommit\n\
             tar -xzf vscode-server-linux-x64.tar.gz -C bin/e2ecommit --strip-components=1\n\
             bin/e2ecommit/node/bin/node bin/e2ecommit/code-server/node_modules/code-server/out/node/entry.js \
             --auth none --disable-telemetry --disable-update-check {listen} > server.log 2>&1 &\n\
             for _ in $(seq 100); do\n\
               where=$(grep -o 'HTTP server listening on [^ ]*' server.log | awk '{{print $5}}' || true)\n\
               if [ -n \"$where\" ]; then where=${{where%/}}; echo \"listeningOn==${{where#http://127.0.0.1:}}==\"; break; fi\n\
               sleep 0.2\n\
             done\nwait\n"
        );
        let mut ssh = envd_e2e::ssh();
        ssh.args(["-T", "-o", "BatchMode=yes"]);
        if let Some(p) = socks {
            ssh.args(["-D", &format!("127.0.0.1:{p}")]);
        }
        let mut child = ssh
            .args([host.as_str(), "bash"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
        drop(child.stdin.take());
        child
    };
    // Through the SOCKS port (direct-tcpip), as Remote-SSH's default.
    let socks = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = start("--bind-addr 127.0.0.1:0", Some(socks));
    let port = listening_on(&mut server, 60);
    let o = run(Command::new("curl").args([
        "-s",
        "--max-time",
        "20",
        "--socks5-hostname",
        &format!("127.0.0.1:{socks}"),
        &format!("http://127.0.0.1:{port}/healthz"),
    ]));
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("status"),
        "through SOCKS: {}",
        output_text(&o)
    );
    // Through a forwarded unix socket (direct-streamlocal).
    let _ = run(envd_e2e::ssh().args([
        "-o",
        "BatchMode=yes",
        &host,
        "pkill -f 'bin/[e]2ecommit/' || true",
    ]));
    let mut server = start("--socket /tmp/e2e-vscode.sock", None);
    let path = listening_on(&mut server, 60);
    assert_eq!(path, "/tmp/e2e-vscode.sock");
    let local = dir.join("local-vscode.sock");
    let mut tunnel = ssh_forward(format!("{}:/tmp/e2e-vscode.sock", local.display()), &host);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !local.exists() {
        assert!(
            Instant::now() < deadline,
            "the unix-socket forward never appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = run(Command::new("curl")
        .args(["-s", "--max-time", "20", "--unix-socket"])
        .arg(&local)
        .arg("http://localhost/healthz"));
    let _ = tunnel.kill();
    let _ = tunnel.wait();
    let _ = server.kill();
    let _ = server.wait();
    let _ = run(envd_e2e::ssh().args([
        "-o",
        "BatchMode=yes",
        &host,
        "pkill -f 'bin/[e]2ecommit/' || true",
    ]));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("status"),
        "through the unix socket: {}",
        output_text(&o)
    );
}

/// `ssh -N -L SPEC HOST`: a forward that fails at once when it cannot listen.
fn ssh_forward(
    spec: impl AsRef<std::ffi::OsStr>,
    host: impl AsRef<std::ffi::OsStr>,
) -> std::process::Child {
    envd_e2e::ssh()
        .args([
            "-N",
            "-o",
            "BatchMode=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
        ])
        .arg(spec)
        .arg(host)
        .spawn()
        .expect("ssh -L")
}

fn vscode_service() -> serde_json::Value {
    let o = envd(&["ls", "--format", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    list.as_array()
        .and_then(|l| l.iter().find(|e| e["name"] == NAME))
        .and_then(|e| e["services"].as_array())
        .and_then(|s| s.iter().find(|s| s["name"] == "vscode"))
        .cloned()
        .unwrap_or_default()
}

#[test]
fn vscode_in_chromium_directly_and_through_ssh_restarted_when_killed() {
    require_docker();
    let _down = Down(NAME);
    let _ = envd(&["down", "--name", NAME, "--volumes"]);
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join(NAME);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("build.envd"), PROGRAM).unwrap();
    std::fs::write(dir.join("notes.txt"), "hello from the host\n").unwrap();
    make_vsix(&dir);

    let o = envd(&["up", "--path", dir.to_str().unwrap(), "--detach"]);
    let log = output_text(&o);
    assert!(o.status.success(), "envd up failed:\n{log}");
    let line = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("vscode:"))
        .unwrap_or_else(|| panic!("no vscode line:\n{log}"))
        .trim()
        .to_string();
    let (url, password) = line
        .split_once("  (password ")
        .map(|(u, p)| (u.to_string(), p.trim_end_matches(')').to_string()))
        .unwrap_or_else(|| panic!("no password on the vscode line: {line}"));
    assert!(
        url.starts_with("http://127.0.0.1:")
            && url.ends_with(&format!("/?folder=/home/envd/{NAME}")),
        "{url}"
    );
    assert!(password.len() >= 32, "{password}");
    assert!(
        log.contains(&format!("code --remote ssh-remote+{NAME}.envd")),
        "{log}"
    );

    // Without the password: the login page, never the workbench.
    let o = run(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        &url,
    ]));
    let answer = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        answer.starts_with("302 ") && answer.contains("login"),
        "{answer}"
    );
    let base = url.split("/?").next().unwrap();
    let o = run(Command::new("curl").args(["-s", &format!("{base}/login")]));
    let page = String::from_utf8_lossy(&o.stdout);
    assert!(page.contains("password") && !page.contains("vscode-workbench-web-configuration"));

    // In Chromium: log in, read the file, edit and save it, run a command in the terminal.
    let command = "echo \"$USER:$(id -u):$PWD:$(command -v python)\" > made-in-terminal.txt";
    let out = workbench(
        &url,
        &password,
        "edited-in-vscode",
        "vscode-workbench.png",
        Some(command),
    );
    assert!(out.contains("EDITOR: hello from the host"), "{out}");
    assert!(out.contains("SAVED"), "{out}");
    let notes = std::fs::read_to_string(dir.join("notes.txt")).unwrap();
    assert!(
        notes.contains("edited-in-vscode"),
        "the edit did not reach the host: {notes:?}"
    );
    let made = wait_for_file(&dir.join("made-in-terminal.txt"), 20);
    assert_eq!(
        made.trim(),
        format!("envd:0:/home/envd/{NAME}:/opt/envd/venv/bin/python"),
        "the terminal's shell"
    );

    // Through SSH: the inner port, not published, reached with ssh -L.
    let local = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut tunnel = ssh_forward(format!("{local}:127.0.0.1:8080"), format!("{NAME}.envd"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", local)).is_err() {
        assert!(Instant::now() < deadline, "the tunnel never listened");
        std::thread::sleep(Duration::from_millis(100));
    }
    let tunnelled = format!("http://127.0.0.1:{local}/?folder=/home/envd/{NAME}");
    let out = workbench(&tunnelled, &password, "", "vscode-through-ssh.png", None);
    let _ = tunnel.kill();
    let _ = tunnel.wait();
    assert!(out.contains("edited-in-vscode"), "through ssh -L: {out}");

    remote_ssh_local_server_download(&dir);

    // The .vsix from the build context is where the server (and desktop Remote-SSH) looks.
    let o = envd(&[
        "exec",
        "--name",
        NAME,
        "--",
        "/opt/envd/vscode/node/bin/node",
        "/opt/envd/vscode/code-server/node_modules/code-server/out/node/entry.js",
        "--extensions-dir",
        "/home/envd/.vscode-server/extensions",
        "--list-extensions",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("envdtest.hello-envd"),
        "the server does not list the extension: {}",
        output_text(&o)
    );

    // Kill the server: envd-init restarts it and envd ls shows it healthy again.
    assert_eq!(vscode_service()["state"], "healthy");
    let o = envd(&[
        "exec",
        "--name",
        NAME,
        "--",
        "pkill",
        "-f",
        "code-server/out/node/entry.js",
    ]);
    assert!(o.status.success(), "{}", output_text(&o));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = vscode_service();
        if s["restarts"].as_u64().unwrap_or(0) >= 1 && s["state"] == "healthy" {
            break;
        }
        assert!(Instant::now() < deadline, "vscode not healthy again: {s}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let o = envd(&["down", "--name", NAME, "--volumes"]);
    assert!(o.status.success(), "{}", output_text(&o));
}
