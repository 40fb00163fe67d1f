//! The prompt a user sees: for bash, zsh and fish, a real login shell through envd-sshd (run as
//! an unprivileged user, as in an environment) with the rc files envd-shell generates shows the
//! environment's name, the git branch, the Python virtualenv and a failed command's status.

use std::process::Command;

use envd_e2e::sshd::{stdout, Sshd};
use envd_shell::{home_files, Setup, Shell};

struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
    home: tempfile::TempDir,
}

impl TestUser {
    fn create(shell: Shell) -> TestUser {
        envd_e2e::require_root();
        assert!(
            std::path::Path::new(shell.path()).exists(),
            "{} is not installed; scripts/test installs zsh and fish",
            shell.path()
        );
        let home = tempfile::Builder::new()
            .prefix("envd-shell-home")
            .tempdir()
            .unwrap();
        let name = format!(
            "envdsh{}{}",
            std::process::id() % 100000,
            shell.path().len()
        );
        let _ = Command::new("userdel").arg(&name).output();
        let out = Command::new("useradd")
            .args(["-M", "-U", "-s", shell.path(), "-d"])
            .arg(home.path())
            .arg(&name)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "useradd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let user = nix::unistd::User::from_name(&name).unwrap().unwrap();
        TestUser {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home,
        }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("pkill").args(["-u", &self.name]).output();
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Logs in interactively (python's pty module plays the terminal), waits for the prompt, runs
/// `cd project && false`, waits for the next prompt, exits; returns the whole screen output.
fn interactive_login(s: &Sshd) -> String {
    let mut argv = vec!["ssh".to_string()];
    argv.extend(s.opts());
    argv.extend([
        "-tt".into(),
        "-p".into(),
        s.port.to_string(),
        "127.0.0.1".into(),
    ]);
    let script = r#"
import os, pty, sys, time, json, re
argv = json.loads(sys.argv[1])
pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
out, step, deadline = b"", 0, time.time() + 20
def clean(b):
    return re.sub(rb"\x1b\[[0-9;?]*[a-zA-Z]", b"", b).replace(b"\r", b"")
while time.time() < deadline:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
    text = clean(out)
    if step == 0 and b"[envd:demo]" in text:
        os.write(fd, b"cd project && false\n")
        step = 1
    elif step == 1 and b"x 1 " in text:
        os.write(fd, b"exit\n")
        step = 2
sys.stdout.write(clean(out).decode(errors="replace"))
"#;
    let o = Command::new("python3")
        .args(["-c", script, &serde_json::to_string(&argv).unwrap()])
        .output()
        .unwrap();
    stdout(&o)
}

fn prompt_test(shell: Shell) {
    let user = TestUser::create(shell);
    let home = user.home.path();
    let venv = home.join(".venv");
    run(Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv));
    let setup = Setup {
        env_name: "demo".into(),
        extra_path: vec![],
        env: vec![("GREETING".into(), "hello".into())],
        venv: Some(venv.to_string_lossy().into_owned()),
        conda_env: None,
    };
    for f in home_files(shell, &setup) {
        let path = home.join(&f.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, f.content).unwrap();
    }
    let project = home.join("project");
    std::fs::create_dir(&project).unwrap();
    run(Command::new("git")
        .args(["init", "-q", "-b", "feature-x"])
        .arg(&project));
    run(Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", user.uid, user.gid))
        .arg(home));
    let s = Sshd::start_as(Some((user.uid, user.gid)), &["--shell", shell.path()]);
    let screen = interactive_login(&s);
    for expected in ["[envd:demo] ", "git:feature-x ", "py:.venv ", "x 1 "] {
        assert!(
            screen.contains(expected),
            "{shell:?}: {expected:?} missing from:\n{screen}\n{}",
            s.log()
        );
    }
    // The login environment: the rc file's variables reach commands too (bash -c reads
    // nothing, so check through an interactive login shell's view).
    assert!(
        !screen.contains("command not found"),
        "{shell:?}:\n{screen}"
    );
}

#[test]
fn bash_prompt() {
    prompt_test(Shell::Bash);
}

#[test]
fn zsh_prompt() {
    prompt_test(Shell::Zsh);
}

#[test]
fn fish_prompt() {
    prompt_test(Shell::Fish);
}
