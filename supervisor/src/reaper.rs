//! The one owner of `waitpid`.
//!
//! Every child and every adopted orphan is reaped here, on SIGCHLD, looping until nothing is
//! left (SIGCHLDs coalesce). An exit is handed to whoever registered for that pid (a health-check
//! command) or else sent to the supervisor as an event; orphans nobody knows are just reaped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// `exit(code)`.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl ExitKind {
    /// The shell-style status: the code, or 128 + the signal number.
    pub fn as_status(self) -> i32 {
        match self {
            ExitKind::Code(c) => c,
            ExitKind::Signal(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for ExitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitKind::Code(c) => write!(f, "exit code {c}"),
            ExitKind::Signal(s) => {
                let name = nix::sys::signal::Signal::try_from(*s)
                    .map(|s| s.as_str())
                    .unwrap_or("?");
                write!(f, "killed by signal {s} ({name})")
            }
        }
    }
}

/// An exit the supervisor should know about.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// The process that ended.
    pub pid: Pid,
    /// How.
    pub kind: ExitKind,
}

/// Pids whose exit someone awaits directly (health-check commands).
#[derive(Clone, Default)]
pub struct Waiters(Arc<Mutex<HashMap<i32, oneshot::Sender<ExitKind>>>>);

impl Waiters {
    /// Registers interest in `pid`'s exit. Call it right after spawning, before any `.await`.
    pub fn register(&self, pid: Pid) -> oneshot::Receiver<ExitKind> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut map) = self.0.lock() {
            map.insert(pid.as_raw(), tx);
        }
        rx
    }

    fn take(&self, pid: Pid) -> Option<oneshot::Sender<ExitKind>> {
        self.0.lock().ok()?.remove(&pid.as_raw())
    }
}

/// Reaps every exited child now, without blocking. Returns how many were reaped.
pub fn reap_all(waiters: &Waiters, events: &mpsc::UnboundedSender<Exit>) -> usize {
    let mut count = 0;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => {
                count += 1;
                deliver(waiters, events, pid, ExitKind::Code(code));
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                count += 1;
                deliver(waiters, events, pid, ExitKind::Signal(sig as i32));
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return count,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                crate::warn!("waitpid failed: {e}");
                return count;
            }
        }
    }
}

fn deliver(waiters: &Waiters, events: &mpsc::UnboundedSender<Exit>, pid: Pid, kind: ExitKind) {
    if let Some(tx) = waiters.take(pid) {
        let _ = tx.send(kind);
    } else {
        let _ = events.send(Exit { pid, kind });
    }
}

/// Runs forever: reaps on every SIGCHLD.
pub async fn run(waiters: Waiters, events: mpsc::UnboundedSender<Exit>) {
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => s,
        Err(e) => {
            crate::error!("cannot watch SIGCHLD: {e}; children will not be reaped");
            return;
        }
    };
    loop {
        reap_all(&waiters, &events);
        if sigchld.recv().await.is_none() {
            return;
        }
    }
}
