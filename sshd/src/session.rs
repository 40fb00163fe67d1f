//! One session channel: collects the client's requests (pty, env, agent), then runs a login
//! shell, a command (with or without a PTY) or the sftp subsystem, and reports how it ended.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelMsg, Pty, Sig};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::agent::AgentSocket;
use crate::pty::{self, Master};

/// The account sessions run as (envd-sshd runs as the environment's user).
#[derive(Debug, Clone)]
pub struct UserInfo {
    /// Login name.
    pub name: String,
    /// Home directory.
    pub home: PathBuf,
    /// Login shell.
    pub shell: PathBuf,
}

impl UserInfo {
    /// The current user, with `shell` overriding the passwd entry's shell. The account `$USER`
    /// names wins when it has our uid: with a root host user, the environment's user shares
    /// uid 0 with root, and sessions must still be `envd` in `/home/envd`.
    pub fn current(shell: Option<PathBuf>) -> UserInfo {
        let uid = nix::unistd::getuid();
        let entry = std::env::var("USER")
            .ok()
            .and_then(|n| nix::unistd::User::from_name(&n).ok().flatten())
            .filter(|u| u.uid == uid)
            .or_else(|| nix::unistd::User::from_uid(uid).ok().flatten());
        let name = entry
            .as_ref()
            .map(|u| u.name.clone())
            .unwrap_or_else(|| uid.to_string());
        let home = entry
            .as_ref()
            .map(|u| u.dir.clone())
            .unwrap_or_else(|| PathBuf::from("/"));
        let shell = shell
            .or_else(|| entry.map(|u| u.shell).filter(|s| s.exists()))
            .unwrap_or_else(|| PathBuf::from("/bin/sh"));
        UserInfo { name, home, shell }
    }
}

/// What every session of one connection shares.
pub struct ConnContext {
    /// The connection's handle (to open agent channels, send exit status).
    pub handle: Handle,
    /// The account.
    pub user: Arc<UserInfo>,
    /// Client address.
    pub peer: SocketAddr,
    /// Our address.
    pub local: SocketAddr,
    /// What the key's authorized_keys options take away.
    pub restrictions: crate::keys::Restrictions,
}

/// Input a client may send on a session before asking for a shell, command or subsystem; a
/// client that sends more is told so and the channel is closed (OpenSSH bounds it with its
/// 2 MiB window; russh widens the window as data arrives, so the bound is ours to keep).
pub const MAX_EARLY_INPUT: usize = 2 * 1024 * 1024;

struct PtyRequest {
    term: String,
    cols: u32,
    rows: u32,
    modes: Vec<(Pty, u32)>,
}

enum Start {
    Shell,
    Exec(String),
    Subsystem(String),
}

/// Client environment variables accepted, as Debian's sshd_config does (`AcceptEnv LANG LC_*`).
fn accepted_env(name: &str) -> bool {
    name == "LANG" || name.starts_with("LC_") || name == "COLORTERM" || name == "NO_COLOR"
}

/// Runs one session channel to its end.
pub async fn run(mut channel: Channel<Msg>, ctx: Arc<ConnContext>) {
    let mut pty_req: Option<PtyRequest> = None;
    let mut client_env: Vec<(String, String)> = Vec::new();
    let mut agent: Option<AgentSocket> = None;
    let mut early_input: Vec<u8> = Vec::new();
    let mut early_eof = false;
    let start = loop {
        match channel.wait().await {
            None | Some(ChannelMsg::Close) => return,
            Some(ChannelMsg::RequestPty { .. }) if ctx.restrictions.no_pty => {}
            Some(ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                terminal_modes,
                ..
            }) => {
                pty_req = Some(PtyRequest {
                    term,
                    cols: col_width,
                    rows: row_height,
                    modes: terminal_modes,
                })
            }
            Some(ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            }) => {
                if let Some(p) = &mut pty_req {
                    p.cols = col_width;
                    p.rows = row_height;
                }
            }
            Some(ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            }) => {
                if accepted_env(&variable_name) {
                    client_env.push((variable_name, variable_value));
                }
            }
            Some(ChannelMsg::AgentForward { .. }) => {
                if agent.is_none() && !ctx.restrictions.no_agent_forwarding {
                    match AgentSocket::start(ctx.handle.clone()) {
                        Ok(a) => agent = Some(a),
                        Err(e) => tracing::warn!("agent forwarding unavailable: {e}"),
                    }
                }
            }
            Some(ChannelMsg::RequestShell { .. }) => break Start::Shell,
            Some(ChannelMsg::Exec { command, .. }) => {
                break Start::Exec(String::from_utf8_lossy(&command).into_owned())
            }
            Some(ChannelMsg::RequestSubsystem { name, .. }) => break Start::Subsystem(name),
            Some(ChannelMsg::Data { data }) => {
                if early_input.len() + data.len() > MAX_EARLY_INPUT {
                    tracing::info!(
                        "{}: more than {MAX_EARLY_INPUT} bytes before a command; channel closed",
                        ctx.peer
                    );
                    let msg = "envd-sshd: too much input before a command was requested\r\n";
                    let _ = channel.extended_data(1, msg.as_bytes()).await;
                    let _ = channel.close().await;
                    return;
                }
                early_input.extend_from_slice(&data)
            }
            Some(ChannelMsg::Eof) => early_eof = true,
            Some(_) => {}
        }
    };

    let command = match start {
        Start::Subsystem(name) => {
            if name == "sftp" {
                // russh-sftp runs on one end of an in-memory pipe so we see when it ends and can
                // report an exit status, as OpenSSH does for its sftp-server (scp checks it).
                let id = channel.id();
                let (mut ours, theirs) = tokio::io::duplex(256 * 1024);
                crate::sftp::serve(theirs, ctx.user.home.clone()).await;
                let mut stream = channel.into_stream();
                let _ = crate::forward::copy_both(&mut ours, &mut stream).await;
                let _ = ctx.handle.exit_status_request(id, 0).await;
                let _ = ctx.handle.close(id).await;
            } else {
                let _ = channel.close().await;
            }
            return;
        }
        Start::Shell => None,
        Start::Exec(cmd) => Some(cmd),
    };

    let mut env = base_env(&ctx);
    for (k, v) in client_env {
        env.insert(k, v);
    }
    if let Some(a) = &agent {
        env.insert(
            "SSH_AUTH_SOCK".into(),
            a.path.to_string_lossy().into_owned(),
        );
    }
    // As OpenSSH: a home directory that does not exist means starting in `/`.
    let cwd = std::env::var_os("ENVD_WORKDIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .or_else(|| Some(ctx.user.home.clone()).filter(|h| h.is_dir()))
        .unwrap_or_else(|| PathBuf::from("/"));
    let shell = ctx.user.shell.clone();
    let shell_name = shell
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sh".into());
    let mut cmd = tokio::process::Command::new(&shell);
    match &command {
        // A login shell, as OpenSSH starts it: argv[0] "-bash".
        None => {
            cmd.arg0(format!("-{shell_name}"));
        }
        Some(c) => {
            cmd.arg("-c").arg(c);
        }
    }
    cmd.env_clear().current_dir(&cwd);

    let result = match pty_req {
        Some(p) => {
            env.insert("TERM".into(), p.term.clone());
            run_pty(channel, &ctx, cmd, env, p, early_input).await
        }
        None => run_pipes(channel, &ctx, cmd, env, early_input, early_eof).await,
    };
    if let Err(e) = result {
        tracing::warn!("session failed: {e}");
    }
    drop(agent);
}

fn base_env(ctx: &ConnContext) -> BTreeMap<String, String> {
    // The container's environment (image ENV such as PATH and ENVD_WORKDIR), then what OpenSSH
    // sets for a session.
    let mut env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| !k.starts_with("SSH_") && k != "TERM")
        .collect();
    let user = &ctx.user;
    env.insert("USER".into(), user.name.clone());
    env.insert("LOGNAME".into(), user.name.clone());
    env.insert("HOME".into(), user.home.to_string_lossy().into_owned());
    env.insert("SHELL".into(), user.shell.to_string_lossy().into_owned());
    env.entry("PATH".into())
        .or_insert_with(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    env.insert(
        "SSH_CONNECTION".into(),
        format!(
            "{} {} {} {}",
            ctx.peer.ip(),
            ctx.peer.port(),
            ctx.local.ip(),
            ctx.local.port()
        ),
    );
    env.insert(
        "SSH_CLIENT".into(),
        format!("{} {} {}", ctx.peer.ip(), ctx.peer.port(), ctx.local.port()),
    );
    env
}

fn to_sig(sig: &Sig) -> Option<Signal> {
    let name = match sig {
        Sig::ABRT => "SIGABRT",
        Sig::ALRM => "SIGALRM",
        Sig::FPE => "SIGFPE",
        Sig::HUP => "SIGHUP",
        Sig::ILL => "SIGILL",
        Sig::INT => "SIGINT",
        Sig::KILL => "SIGKILL",
        Sig::PIPE => "SIGPIPE",
        Sig::QUIT => "SIGQUIT",
        Sig::SEGV => "SIGSEGV",
        Sig::TERM => "SIGTERM",
        Sig::USR1 => "SIGUSR1",
        Sig::Custom(n) => return format!("SIG{n}").parse().ok(),
    };
    name.parse().ok()
}

fn from_signal(sig: i32) -> Sig {
    match Signal::try_from(sig) {
        Ok(Signal::SIGABRT) => Sig::ABRT,
        Ok(Signal::SIGALRM) => Sig::ALRM,
        Ok(Signal::SIGFPE) => Sig::FPE,
        Ok(Signal::SIGHUP) => Sig::HUP,
        Ok(Signal::SIGILL) => Sig::ILL,
        Ok(Signal::SIGINT) => Sig::INT,
        Ok(Signal::SIGKILL) => Sig::KILL,
        Ok(Signal::SIGPIPE) => Sig::PIPE,
        Ok(Signal::SIGQUIT) => Sig::QUIT,
        Ok(Signal::SIGSEGV) => Sig::SEGV,
        Ok(Signal::SIGTERM) => Sig::TERM,
        Ok(Signal::SIGUSR1) => Sig::USR1,
        Ok(other) => Sig::Custom(other.as_str().trim_start_matches("SIG").to_string()),
        Err(_) => Sig::Custom(sig.to_string()),
    }
}

async fn report_exit(ctx: &ConnContext, id: russh::ChannelId, status: std::process::ExitStatus) {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        let _ = ctx
            .handle
            .exit_signal_request(
                id,
                from_signal(sig),
                status.core_dumped(),
                String::new(),
                String::new(),
            )
            .await;
    } else {
        let code = status.code().unwrap_or(255) as u32;
        let _ = ctx.handle.exit_status_request(id, code).await;
    }
    let _ = ctx.handle.eof(id).await;
    let _ = ctx.handle.close(id).await;
}

async fn report_spawn_failure(ctx: &ConnContext, channel: &Channel<Msg>, e: &std::io::Error) {
    let id = channel.id();
    let msg = format!("envd-sshd: cannot start the shell: {e}\r\n");
    let _ = channel.extended_data(1, msg.as_bytes()).await;
    let _ = ctx.handle.exit_status_request(id, 127).await;
    let _ = ctx.handle.eof(id).await;
    let _ = ctx.handle.close(id).await;
}

/// Bytes read at once from a child's output: one full packet (64 KiB) per read;
/// tokio's `copy` reads 8 KiB at a time, so russh would send eight times as many packets.
const CHUNK: usize = 64 * 1024;

/// Copies a child's output into the channel in large chunks.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.flush().await;
}

/// A command without a PTY: stdin, stdout and stderr stay separate; EOF travels both ways.
async fn run_pipes(
    channel: Channel<Msg>,
    ctx: &ConnContext,
    mut cmd: tokio::process::Command,
    env: BTreeMap<String, String>,
    early_input: Vec<u8>,
    early_eof: bool,
) -> std::io::Result<()> {
    cmd.envs(&env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            report_spawn_failure(ctx, &channel, &e).await;
            return Err(e);
        }
    };
    let pgid = child.id().map(|p| Pid::from_raw(p as i32));
    let id = channel.id();
    let (mut rx, tx) = channel.split();
    let (Some(stdout), Some(stderr), Some(mut stdin)) =
        (child.stdout.take(), child.stderr.take(), child.stdin.take())
    else {
        return Err(std::io::Error::other("child pipes missing"));
    };
    let out_writer = tx.make_writer();
    let err_writer = tx.make_writer_ext(Some(1));
    let out_task = tokio::spawn(pump(stdout, out_writer));
    let err_task = tokio::spawn(pump(stderr, err_writer));
    // stdin is written by its own task so a child that does not read can never stall the loop.
    let (in_tx, mut in_rx) = mpsc::channel::<Vec<u8>>(16);
    let in_task = tokio::spawn(async move {
        if !early_input.is_empty() && stdin.write_all(&early_input).await.is_err() {
            return;
        }
        if early_eof {
            return;
        }
        while let Some(chunk) = in_rx.recv().await {
            if stdin.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // Dropping stdin here is the EOF.
    });
    let mut in_tx = Some(in_tx);
    let mut client_gone = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            msg = rx.wait(), if !client_gone => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(t) = &in_tx {
                        if t.send(data.to_vec()).await.is_err() { in_tx = None; }
                    }
                }
                Some(ChannelMsg::Eof) => in_tx = None,
                Some(ChannelMsg::Signal { signal }) => {
                    if let (Some(pg), Some(sig)) = (pgid, to_sig(&signal)) { let _ = killpg(pg, sig); }
                }
                None | Some(ChannelMsg::Close) => {
                    client_gone = true;
                    in_tx = None;
                    if let Some(pg) = pgid { let _ = killpg(pg, Signal::SIGHUP); }
                }
                Some(_) => {}
            }
        }
    };
    drop(in_tx);
    in_task.abort();
    let _ = out_task.await;
    let _ = err_task.await;
    report_exit(ctx, id, status).await;
    Ok(())
}

/// An interactive session on a PTY: the child is a session leader with the PTY as its
/// controlling terminal, so job control, Ctrl-C and SIGWINCH work.
async fn run_pty(
    channel: Channel<Msg>,
    ctx: &ConnContext,
    mut cmd: tokio::process::Command,
    mut env: BTreeMap<String, String>,
    req: PtyRequest,
    early_input: Vec<u8>,
) -> std::io::Result<()> {
    let pair = match pty::open(req.cols, req.rows, &req.modes) {
        Ok(p) => p,
        Err(e) => {
            report_spawn_failure(ctx, &channel, &e).await;
            return Err(e);
        }
    };
    env.insert("SSH_TTY".into(), pair.slave_path.clone());
    let slave: OwnedFd = pair.slave;
    cmd.envs(&env)
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave.try_clone()?));
    // SAFETY: setsid and ioctl(TIOCSCTTY) are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    // The parent's copies of the slave must be closed, or the master never sees EOF.
    drop(cmd);
    drop(slave);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            report_spawn_failure(ctx, &channel, &e).await;
            return Err(e);
        }
    };
    let pgid = child.id().map(|p| Pid::from_raw(p as i32));
    let master = Arc::new(Master::new(pair.master)?);
    let id = channel.id();
    let (mut rx, tx) = channel.split();
    let reader = master.clone();
    let mut out_writer = tx.make_writer();
    let out_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out_writer.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let _ = out_writer.flush().await;
                }
            }
        }
    });
    if !early_input.is_empty() {
        let _ = master.write_all(&early_input).await;
    }
    let mut client_gone = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            msg = rx.wait(), if !client_gone => match msg {
                Some(ChannelMsg::Data { data }) => { let _ = master.write_all(&data).await; }
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    pty::resize(&master.raw().as_raw_fd(), col_width, row_height);
                }
                Some(ChannelMsg::Signal { signal }) => {
                    if let (Some(pg), Some(sig)) = (pgid, to_sig(&signal)) { let _ = killpg(pg, sig); }
                }
                Some(ChannelMsg::Eof) => {}
                None | Some(ChannelMsg::Close) => {
                    client_gone = true;
                    // Like a terminal hang-up.
                    if let Some(pg) = pgid { let _ = killpg(pg, Signal::SIGHUP); }
                }
                Some(_) => {}
            }
        }
    };
    // Drain what the shell printed last; background jobs holding the terminal do not keep the
    // session open.
    let _ = tokio::time::timeout(Duration::from_millis(200), out_task).await;
    report_exit(ctx, id, status).await;
    Ok(())
}
