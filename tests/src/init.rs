//! Running `envd-init` as a real PID 1 in a fresh PID namespace (`unshare --fork --pid
//! --mount-proc`) and talking to it the way a user would: signals, `envd-init ctl`, the API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::runtime_bin;

/// A running envd-init under test.
pub struct Init {
    /// Scratch directory: `services/`, `api.sock`, `init.log` and whatever tests write.
    pub dir: TempDir,
    child: Child,
    exited: Option<i32>,
}

/// A scratch directory with an empty `services/` folder.
pub fn scratch() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("envd-init-test")
        .tempdir()
        .expect("tempdir");
    std::fs::create_dir(dir.path().join("services")).expect("services dir");
    // Services may run as other users (user = "nobody"): let them write their marks here.
    let _ = Command::new("chmod").arg("1777").arg(dir.path()).status();
    dir
}

/// Writes `services/NAME.toml`.
pub fn write_service(dir: &Path, name: &str, toml: &str) {
    std::fs::write(dir.join("services").join(format!("{name}.toml")), toml).expect("write service");
}

impl Init {
    /// Starts envd-init as PID 1 of a new PID namespace with `dir/services`, the API socket at
    /// `dir/api.sock`, `extra` arguments and, when `main` is not empty, `-- main...`.
    pub fn start(dir: TempDir, extra: &[&str], main: &[&str]) -> Init {
        Self::start_env(dir, extra, main, &[])
    }

    /// Like [`Init::start`], with extra environment variables for envd-init.
    pub fn start_env(dir: TempDir, extra: &[&str], main: &[&str], env: &[(&str, &str)]) -> Init {
        let log = std::fs::File::create(dir.path().join("init.log")).expect("log");
        let stdout = log.try_clone().expect("log").into();
        Self::launch(dir, extra, main, stdout, env)
    }

    /// Like [`Init::start`], but envd-init's stdout is a pipe nobody reads (until the returned
    /// read end is read or dropped): a stalled log driver or a paused terminal.
    pub fn start_with_stdout_pipe(
        dir: TempDir,
        extra: &[&str],
        main: &[&str],
    ) -> (Init, std::os::fd::OwnedFd) {
        let (read, write) = nix::unistd::pipe().expect("pipe");
        (
            Self::launch(dir, extra, main, Stdio::from(write), &[]),
            read,
        )
    }

    fn launch(
        dir: TempDir,
        extra: &[&str],
        main: &[&str],
        stdout: Stdio,
        env: &[(&str, &str)],
    ) -> Init {
        crate::require_root();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("init.log"))
            .expect("log");
        let mut cmd = Command::new("unshare");
        // If the test dies without dropping us (a timeout kills it), unshare dies with it and
        // --kill-child takes envd-init and its services along: nothing outlives the test.
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        cmd.args(["--fork", "--pid", "--mount-proc", "--kill-child"])
            .arg(runtime_bin("envd-init"))
            .arg("--services")
            .arg(dir.path().join("services"))
            .arg("--api-socket")
            .arg(dir.path().join("api.sock"))
            .args(extra)
            .envs(env.iter().copied());
        if !main.is_empty() {
            cmd.arg("--").args(main);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .expect("spawn unshare");
        Init {
            dir,
            child,
            exited: None,
        }
    }

    /// The scratch directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// envd-init's own output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("init.log")).unwrap_or_default()
    }

    /// envd-init's pid as the host sees it (the child of `unshare`).
    pub fn host_pid(&self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        let me = self.child.id();
        loop {
            let children = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
                .unwrap_or_default();
            if let Some(pid) = children
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
            {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "envd-init did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Zombies among envd-init's descendants right now.
    pub fn zombies(&self) -> usize {
        let root = self.host_pid();
        let procs = host_processes();
        procs
            .iter()
            .filter(|p| p.state == 'Z' && descends_from(&procs, p.pid, root))
            .count()
    }

    /// envd-init's resident memory in kB.
    pub fn rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.host_pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Host pids of envd-init's descendants (not envd-init itself).
    pub fn descendants(&self) -> Vec<i32> {
        let root = self.host_pid();
        let procs = host_processes();
        procs
            .iter()
            .filter(|p| p.pid != root && descends_from(&procs, p.pid, root))
            .map(|p| p.pid)
            .collect()
    }

    /// Sends a signal to envd-init.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.host_pid()), sig)
            .expect("signal envd-init");
    }

    /// Waits for envd-init to exit; returns its exit code (panics with its log on timeout).
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        if let Some(code) = self.exited {
            return code;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let code = status.code().unwrap_or(-1);
                self.exited = Some(code);
                return code;
            }
            assert!(
                Instant::now() < deadline,
                "envd-init did not exit within {timeout:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs `envd-init ctl --api-socket dir/api.sock ARGS...`.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(runtime_bin("envd-init"))
            .arg("ctl")
            .arg("--api-socket")
            .arg(self.path().join("api.sock"))
            .args(args)
            .output()
            .expect("run ctl")
    }

    /// `ctl status --json`, retried until the API answers.
    pub fn status(&self) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.ctl(&["status", "--json"]);
            if out.status.success() {
                return serde_json::from_slice(&out.stdout).expect("status json");
            }
            assert!(
                Instant::now() < deadline,
                "the API did not answer: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One service's status.
    pub fn service(&self, name: &str) -> serde_json::Value {
        self.status()
            .into_iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    /// Polls the status until `pred` holds (panics with the status and log on timeout).
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.status();
            if pred(&st) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status: {st:#?}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until `path` exists and returns its contents.
pub fn wait_file(path: &Path, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.is_empty() {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A path in the scratch dir as a string, for embedding in service files.
pub fn p(dir: &Path, name: &str) -> String {
    let path: PathBuf = dir.join(name);
    path.to_string_lossy().into_owned()
}

/// One process as the host's /proc shows it.
pub struct HostProcess {
    /// Its pid.
    pub pid: i32,
    /// Its parent's pid.
    pub ppid: i32,
    /// R, S, Z ...
    pub state: char,
}

/// Every process on the host.
pub fn host_processes() -> Vec<HostProcess> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) S ppid ...": comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        out.push(HostProcess { pid, ppid, state });
    }
    out
}

fn descends_from(procs: &[HostProcess], pid: i32, root: i32) -> bool {
    let mut cur = pid;
    for _ in 0..64 {
        if cur == root {
            return true;
        }
        match procs.iter().find(|p| p.pid == cur) {
            Some(p) if p.ppid > 1 => cur = p.ppid,
            _ => return false,
        }
    }
    false
}
