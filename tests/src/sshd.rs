//! Running `envd-sshd` (the static runtime binary) on a free loopback port and talking to it
//! with the real OpenSSH client tools.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::runtime_bin;

/// A running envd-sshd with its own client key, authorized_keys and known_hosts.
pub struct Sshd {
    /// Scratch directory: `id_ed25519`, `authorized_keys`, `host_key`, `known_hosts`, `sshd.log`.
    pub dir: TempDir,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
    run_as: Option<(u32, u32)>,
}

pub use crate::free_port;

/// Creates a key pair with ssh-keygen.
pub fn keygen(path: &Path, kind: &str) {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-N", "", "-t", kind, "-f"]).arg(path);
    if kind == "rsa" {
        cmd.args(["-b", "3072"]);
    }
    let out = cmd
        .output()
        .expect("ssh-keygen (package openssh-client) must be installed");
    assert!(
        out.status.success(),
        "ssh-keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Sshd {
    /// Starts envd-sshd with an ed25519 client key authorized, plus `extra` arguments.
    pub fn start(extra: &[&str]) -> Sshd {
        Self::start_as(None, extra)
    }

    /// Like [`Sshd::start`], but the server runs as `uid:gid` (its files are chowned to it), as
    /// it runs as the environment's user in a real container.
    pub fn start_as(run_as: Option<(u32, u32)>, extra: &[&str]) -> Sshd {
        let dir = tempfile::Builder::new()
            .prefix("envd-sshd-test")
            .tempdir()
            .expect("tempdir");
        keygen(&dir.path().join("id_ed25519"), "ed25519");
        std::fs::copy(
            dir.path().join("id_ed25519.pub"),
            dir.path().join("authorized_keys"),
        )
        .expect("authorized_keys");
        if let Some((uid, gid)) = run_as {
            let st = Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(st.success());
        }
        let mut s = Sshd {
            dir,
            port: free_port(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            run_as,
        };
        s.launch();
        s
    }

    /// (Re)starts the server process on the same port, key files and directory.
    pub fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("sshd.log"))
            .expect("log");
        let mut cmd = match self.run_as {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--init-groups")
                    .arg(runtime_bin("envd-sshd"));
                c
            }
            None => Command::new(runtime_bin("envd-sshd")),
        };
        let child = cmd
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--authorized-keys")
            .arg(self.path("authorized_keys"))
            .arg("--host-key")
            .arg(self.path("host_key"))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn envd-sshd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "envd-sshd did not listen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM and waits; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// A path in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("sshd.log")).unwrap_or_default()
    }

    /// Common OpenSSH options: our key only, our known_hosts (host key pinned on first use and
    /// checked after), no user or system config.
    pub fn opts(&self) -> Vec<String> {
        self.opts_for(&self.user_name())
    }

    /// [`Sshd::opts`] logging in as `user` (OpenSSH keeps the first `User` it is given, so
    /// `-l` after these options would not change it).
    pub fn opts_for(&self, user: &str) -> Vec<String> {
        vec![
            "-F".into(),
            "/dev/null".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.path("known_hosts").display()),
            "-o".into(),
            "StrictHostKeyChecking=accept-new".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            format!("IdentityFile={}", self.path("id_ed25519").display()),
            "-o".into(),
            "LogLevel=ERROR".into(),
            "-o".into(),
            format!("User={user}"),
        ]
    }

    /// The account the server runs as: the only one it lets log in.
    pub fn user_name(&self) -> String {
        let uid = self
            .run_as
            .map(|(uid, _)| uid)
            .unwrap_or_else(|| nix::unistd::getuid().as_raw());
        user_name_of(uid).unwrap_or_else(|| uid.to_string())
    }

    /// Runs `ssh -tt` to this server (a login shell, or `remote`) in a real terminal with
    /// [`crate::in_terminal`]'s steps; returns the screen.
    pub fn in_terminal(&self, remote: Option<&str>, steps: &[(&str, crate::Then)]) -> String {
        let port = self.port.to_string();
        let mut argv: Vec<String> = vec!["ssh".into()];
        argv.extend(self.opts());
        argv.extend(["-tt".into(), "-p".into(), port, "127.0.0.1".into()]);
        argv.extend(remote.map(String::from));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let run = crate::in_terminal(&argv, steps, 20);
        assert!(
            run.unmet.is_none(),
            "{:?} never appeared within 20 s; the screen held:\n{}",
            run.unmet,
            run.screen
        );
        run.screen
    }

    /// An `ssh` command to this server; add options and the remote command.
    pub fn ssh(&self) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.opts()).args(["-p", &self.port.to_string()]);
        c
    }

    /// Runs `ssh [args] 127.0.0.1 [remote...]` with stdin closed.
    pub fn run(&self, args: &[&str], remote: &str) -> Output {
        self.ssh()
            .args(args)
            .arg("127.0.0.1")
            .arg(remote)
            .stdin(Stdio::null())
            .output()
            .expect("run ssh")
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// stdout as a string.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as a string.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A russh client that accepts any host key: for sending what OpenSSH's client never would.
pub struct RawClient;

impl russh::client::Handler for RawClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

impl Sshd {
    /// Logs in with this server's client key as `user` over a russh client.
    pub async fn raw_login(&self, user: &str) -> russh::client::Handle<RawClient> {
        let config = std::sync::Arc::new(russh::client::Config::default());
        let mut handle = russh::client::connect(config, ("127.0.0.1", self.port), RawClient)
            .await
            .expect("connect");
        let key = russh::keys::load_secret_key(self.path("id_ed25519"), None).expect("key");
        let key = russh::keys::PrivateKeyWithHashAlg::new(std::sync::Arc::new(key), None);
        let auth = handle
            .authenticate_publickey(user, key)
            .await
            .expect("auth");
        assert!(
            auth.success(),
            "raw login as {user} failed:\n{}",
            self.log()
        );
        handle
    }
}

/// The login name of the account the tests run as (what envd-sshd serves when started by them).
pub fn current_user_name() -> String {
    user_name_of(nix::unistd::getuid().as_raw()).unwrap_or_else(|| "root".into())
}

/// The account name of `uid`, if it has one.
fn user_name_of(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}
