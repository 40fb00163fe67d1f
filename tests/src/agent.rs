//! A real `ssh-agent` for the agent-forwarding tests, used only once it answers.
//!
//! `ssh-agent -a SOCK` creates the socket file when it binds and accepts only after it listens,
//! so waiting for the file is not enough: a client in between is refused ("Error connecting to
//! agent: Connection refused", seen on a loaded CI machine). The agent is ready when
//! `ssh-add -l` reaches it: exit 1 ("no identities"), not 2 ("cannot connect").

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::output_text;

/// How the agent and its clients are started: `Command::new` for this user, or a wrapper that
/// runs the program as another user (its first argument is the program's name).
pub type Launcher<'a> = &'a dyn Fn(&str) -> Command;

/// A running `ssh-agent -D` on its own socket; stopped (SIGTERM, then reaped) when dropped.
pub struct SshAgent {
    child: Child,
    sock: PathBuf,
}

impl SshAgent {
    /// Starts an agent listening on `sock` and waits (at most 10 s) until it answers.
    pub fn start(sock: &Path, launch: Launcher) -> SshAgent {
        let child = launch("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(sock)
            .spawn()
            .expect("start ssh-agent");
        let agent = SshAgent {
            child,
            sock: sock.to_path_buf(),
        };
        agent.wait_until_it_answers(launch);
        agent
    }

    /// The socket to put in `SSH_AUTH_SOCK`.
    pub fn sock(&self) -> &Path {
        &self.sock
    }

    /// `env SSH_AUTH_SOCK=… PROGRAM`: a client of this agent, started by `launch`.
    pub fn client(&self, launch: Launcher, program: &str) -> Command {
        let mut c = launch("env");
        c.arg(format!("SSH_AUTH_SOCK={}", self.sock.display()))
            .arg(program);
        c
    }

    /// Makes a new ed25519 key at `key` with `comment` and adds it to the agent.
    pub fn add_new_key(&self, key: &Path, comment: &str, launch: Launcher) {
        let o = launch("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(key)
            .output()
            .expect("run ssh-keygen");
        assert!(o.status.success(), "ssh-keygen: {}", output_text(&o));
        let o = self
            .client(launch, "ssh-add")
            .arg(key)
            .output()
            .expect("run ssh-add");
        assert!(o.status.success(), "ssh-add: {}", output_text(&o));
    }

    fn wait_until_it_answers(&self, launch: Launcher) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let o = self
                .client(launch, "ssh-add")
                .arg("-l")
                .output()
                .expect("run ssh-add -l");
            // 0: identities listed, 1: none; both mean the agent answered.
            if matches!(o.status.code(), Some(0 | 1)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ssh-agent on {} did not answer within 10 s: {}",
                self.sock.display(),
                output_text(&o)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        // SIGTERM rather than SIGKILL: a `runuser` wrapper passes it on to the agent, where
        // SIGKILL would leave the agent behind.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}
