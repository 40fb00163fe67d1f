//! Starting processes: in their own process group, as their user (uid, gid and supplementary
//! groups), with the environment the service file asks for, in a cgroup when limits are set.
//!
//! Nothing here waits for a child: [`crate::reaper`] is the only caller of `waitpid`. This is
//! safe only because envd-init runs on a single-threaded runtime: a spawn and the registration
//! of its pid happen without an `.await` between them, so the reaper cannot see the exit first.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::unistd::{Gid, Pid, Uid, User};

use crate::config::{ResourceLimit, ServiceSpec};

/// The identity a service runs as.
#[derive(Debug, Clone)]
pub struct Identity {
    /// User id.
    pub uid: Uid,
    /// Primary group id.
    pub gid: Gid,
    /// Supplementary groups (from /etc/group).
    pub groups: Vec<Gid>,
    /// Login name.
    pub name: String,
    /// Home directory.
    pub home: PathBuf,
}

/// Resolves a `user` value (a name or a numeric uid) through /etc/passwd and /etc/group.
pub fn resolve_user(user: &str) -> Result<Identity, String> {
    let entry = if let Ok(uid) = user.parse::<u32>() {
        User::from_uid(Uid::from_raw(uid)).map_err(|e| format!("cannot look up uid {uid}: {e}"))?
    } else {
        User::from_name(user).map_err(|e| format!("cannot look up user {user:?}: {e}"))?
    };
    let Some(entry) = entry else {
        if let Ok(uid) = user.parse::<u32>() {
            // A uid without a passwd entry still works, with the same number as its group.
            return Ok(Identity {
                uid: Uid::from_raw(uid),
                gid: Gid::from_raw(uid),
                groups: vec![Gid::from_raw(uid)],
                name: uid.to_string(),
                home: PathBuf::from("/"),
            });
        }
        return Err(format!("no user named {user:?} in /etc/passwd"));
    };
    let cname = CString::new(entry.name.clone()).map_err(|e| e.to_string())?;
    let groups = nix::unistd::getgrouplist(&cname, entry.gid).unwrap_or_else(|_| vec![entry.gid]);
    Ok(Identity {
        uid: entry.uid,
        gid: entry.gid,
        groups,
        name: entry.name,
        home: entry.dir,
    })
}

/// The identity envd-init itself runs as.
pub fn current_identity() -> Identity {
    let uid = nix::unistd::getuid();
    let user = crate::identity::current_user();
    Identity {
        uid,
        gid: nix::unistd::getgid(),
        groups: Vec::new(),
        name: user
            .as_ref()
            .map(|u| u.name.clone())
            .unwrap_or_else(|| uid.to_string()),
        home: user.map(|u| u.dir).unwrap_or_else(|| PathBuf::from("/")),
    }
}

/// Builds a service's environment: Horust's rules (USER, HOME, HOSTNAME and PATH always set),
/// then `keep-env`, `re-export` and `additional`.
pub fn service_env(spec: &ServiceSpec, who: &Identity) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if spec.env.keep_env {
        env.extend(std::env::vars());
    }
    for name in &spec.env.re_export {
        if let Ok(v) = std::env::var(name) {
            env.insert(name.clone(), v);
        }
    }
    env.insert("USER".into(), who.name.clone());
    env.insert("HOME".into(), who.home.to_string_lossy().into_owned());
    if !env.contains_key("HOSTNAME") {
        if let Ok(h) = nix::unistd::gethostname() {
            env.insert("HOSTNAME".into(), h.to_string_lossy().into_owned());
        }
    }
    if !env.contains_key("PATH") {
        env.insert(
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            }),
        );
    }
    for (k, v) in &spec.env.additional {
        env.insert(k.clone(), v.clone());
    }
    env
}

/// What to start.
pub struct SpawnRequest<'a> {
    /// Program and arguments.
    pub argv: &'a [String],
    /// The complete environment.
    pub env: &'a BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<&'a Path>,
    /// Identity to switch to (None: stay as we are).
    pub identity: Option<&'a Identity>,
    /// Standard output.
    pub stdout: Stdio,
    /// Standard error.
    pub stderr: Stdio,
    /// cgroup v2 `cgroup.procs` file to join before exec.
    pub cgroup: Option<File>,
}

/// Starts a process in a new process group (pgid = its pid) with stdin on /dev/null.
pub fn spawn(req: SpawnRequest<'_>) -> std::io::Result<Pid> {
    let mut cmd = Command::new(&req.argv[0]);
    cmd.args(&req.argv[1..])
        .env_clear()
        .envs(req.env)
        .stdin(Stdio::null())
        .stdout(req.stdout)
        .stderr(req.stderr)
        .process_group(0);
    if let Some(cwd) = req.cwd {
        cmd.current_dir(cwd);
    }
    let identity = req.identity.cloned();
    let cgroup_fd = req.cgroup.as_ref().map(|f| f.as_raw_fd());
    if identity.is_some() || cgroup_fd.is_some() {
        // SAFETY: the closure only makes async-signal-safe system calls (write, setgroups,
        // setgid, setuid) on values prepared before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(fd) = cgroup_fd {
                    let _ = nix::unistd::write(std::os::fd::BorrowedFd::borrow_raw(fd), b"0\n");
                }
                if let Some(id) = &identity {
                    if nix::unistd::getuid().is_root() {
                        nix::unistd::setgroups(&id.groups)?;
                    }
                    nix::unistd::setgid(id.gid)?;
                    nix::unistd::setuid(id.uid)?;
                }
                Ok(())
            });
        }
    }
    let child = cmd.spawn()?;
    // Dropping a std Child neither waits nor kills: the reaper owns its exit status.
    Ok(Pid::from_raw(child.id() as i32))
}

/// Marks every descriptor above stderr close-on-exec, once at start: what envd-init's parent
/// left open never reaches a service or an SSH session, and spawning keeps its fast path (no
/// per-spawn hook). Uses close_range (Linux 5.11+), or each descriptor below the open-files limit.
pub fn close_inherited_on_exec() {
    const CLOSE_RANGE_CLOEXEC: nix::libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes descriptor flags.
    let done = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_close_range,
            3 as nix::libc::c_uint,
            nix::libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if !done {
        // SAFETY: sysconf reads a limit.
        let limit =
            unsafe { nix::libc::sysconf(nix::libc::_SC_OPEN_MAX) }.clamp(1024, 65536) as i32;
        for fd in 3..limit {
            let _ = nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
        }
    }
}

/// Creates (or reuses) the cgroup v2 `envd-<name>` beside envd-init's own cgroup, writes the
/// limits and returns its `cgroup.procs` for [`SpawnRequest::cgroup`].
pub fn prepare_cgroup(name: &str, limits: &ResourceLimit) -> Result<Option<File>, String> {
    if limits.cpu.is_none() && limits.memory.is_none() && limits.pids_max.is_none() {
        return Ok(None);
    }
    let root = Path::new("/sys/fs/cgroup");
    if !root.join("cgroup.controllers").exists() {
        return Err("resource limits need cgroup v2 (unified hierarchy); this host has v1".into());
    }
    let dir = root.join(format!("envd-{name}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let write = |file: &str, value: String| {
        let path = dir.join(file);
        std::fs::write(&path, value).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    if let Some(cpu) = limits.cpu {
        write("cpu.max", format!("{} 100000", (cpu * 100_000.0) as u64))?;
    }
    if let Some(mem) = limits.memory {
        write("memory.max", mem.to_string())?;
    }
    if let Some(pids) = limits.pids_max {
        write("pids.max", pids.to_string())?;
    }
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
        .map_err(|e| format!("cannot open cgroup.procs: {e}"))?;
    Ok(Some(procs))
}

/// A pipe whose write end goes to a child and whose read end envd-init reads.
pub fn output_pipe() -> std::io::Result<(OwnedFd, Stdio)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((read, Stdio::from(write)))
}

/// Appends a line to a writer, ignoring errors (used for envd-init's own notes in service logs).
pub fn note(mut w: impl Write, line: &str) {
    let _ = writeln!(w, "{line}");
}
