//! # envd-e2e
//!
//! Helpers for the end-to-end tests in `tests/tests/`: they run our real binaries (the static
//! runtime from `scripts/build-runtime`), real OpenSSH clients and a real Docker engine. A test
//! that needs something missing fails loudly; nothing is skipped silently.

#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub mod agent;
pub mod fuzz;
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

/// This test process's own envd configuration directory (contexts, key pair, `NAME.envd`
/// entries, pinned host keys), so tests never touch the machine user's `~/.config/envd` or
/// `~/.ssh/config`, nor each other's.
pub fn test_config_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("envd-test-config-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test config directory");
        dir
    })
    .clone()
}

/// The OpenSSH client configuration `envd` adds its `Include` to for this test process.
pub fn ssh_config_path() -> PathBuf {
    test_config_dir().join("ssh_config_of_user")
}

/// OpenSSH's `ssh` reading this test process's configuration (where `NAME.envd` is).
pub fn ssh() -> Command {
    let mut c = Command::new("ssh");
    c.arg("-F").arg(ssh_config_path());
    c
}

/// Points a command (envd, or a shell that runs it) at this test process's envd configuration
/// and the runtime directory.
pub fn isolated(cmd: &mut Command) -> &mut Command {
    cmd.env("ENVD_CONFIG_DIR", test_config_dir())
        .env("ENVD_SSH_CONFIG", ssh_config_path())
        .env("ENVD_RUNTIME_DIR", runtime_dir())
}

/// Runs our `envd` (from the runtime directory, which it also uses for the in-image runtime)
/// with this test process's own configuration.
pub fn envd(args: &[&str]) -> Output {
    isolated(&mut Command::new(runtime_dir().join("envd")))
        .args(args)
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

/// What a program run by [`in_terminal`] showed and how it ended.
pub struct TerminalRun {
    /// Everything it wrote to the terminal, without escape sequences and carriage returns.
    pub screen: String,
    /// Its exit code, or `None` when it was still running at the deadline (it is then killed).
    pub code: Option<i32>,
    /// The first step's text that never appeared, when the run ended before all did.
    pub unmet: Option<String>,
}

/// What [`in_terminal`] does once a step's text has appeared on the screen.
pub enum Then<'a> {
    /// Type this.
    Type(&'a str),
    /// Resize the terminal and send SIGWINCH, as a terminal emulator does.
    Resize(u16, u16),
}

/// Runs `argv` in a real terminal of 24x80 with IUTF8 set (python's pty module plays it, as a
/// terminal emulator would). Each step is `(wait_for, then)`, done once `wait_for` appears on
/// the screen after what the previous step waited for. Ends when the program does, or after
/// `timeout_s`.
pub fn in_terminal(argv: &[&str], steps: &[(&str, Then)], timeout_s: u64) -> TerminalRun {
    let script = r#"
import os, pty, sys, time, json, re, fcntl, termios, struct, select
argv, steps, timeout = json.loads(sys.argv[1])
pid, fd = pty.fork()
if pid == 0:
    attrs = termios.tcgetattr(0)
    attrs[0] |= getattr(termios, "IUTF8", 0o40000)
    termios.tcsetattr(0, termios.TCSANOW, attrs)
    os.execvp(argv[0], argv)
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
def clean(b):
    return re.sub(rb"\x1b\[[0-9;?]*[a-zA-Z]|\x1b\][^\x07]*\x07", b"", b).replace(b"\r", b"")
out, pos, deadline = b"", 0, time.time() + timeout
while time.time() < deadline:
    # Wait for output no longer than the deadline: a silent program must not hang the test.
    ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.time()))
    if not ready:
        break
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
    while steps:
        at = clean(out).find(steps[0][0].encode(), pos)
        if at < 0:
            break
        pos = at + len(steps[0][0])
        step = steps.pop(0)
        if step[1] == "type":
            os.write(fd, step[2].encode())
        else:
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", step[2], step[3], 0, 0))
            os.kill(pid, 28)  # SIGWINCH
code = None
for _ in range(100):
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        code = os.waitstatus_to_exitcode(status)
        break
    time.sleep(0.1)
if code is None:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
unmet = steps[0][0] if steps else None
print(json.dumps([clean(out).decode(errors="replace"), code, unmet]))
"#;
    let steps: Vec<serde_json::Value> = steps
        .iter()
        .map(|(wait_for, then)| match then {
            Then::Type(text) => serde_json::json!([wait_for, "type", text]),
            Then::Resize(rows, cols) => serde_json::json!([wait_for, "resize", rows, cols]),
        })
        .collect();
    let arg = serde_json::json!([argv, steps, timeout_s]).to_string();
    let o = isolated(&mut Command::new("python3"))
        .args(["-c", script, &arg])
        .output()
        .expect("run python3 (the terminal driver)");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("terminal driver failed ({e}): {}", output_text(&o)));
    TerminalRun {
        screen: v[0].as_str().unwrap_or_default().to_string(),
        code: v[1].as_i64().map(|c| c as i32),
        unmet: v[2].as_str().map(str::to_string),
    }
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
