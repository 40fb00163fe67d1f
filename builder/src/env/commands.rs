//! `envd ls`, `describe`, `logs`, `exec` and `down`, and the Docker calls they share with `up`.

use std::io::Write;

use anyhow::{bail, Context as _};
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::{LogsOptions, RemoveContainerOptions};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{health, ssh, Environment};

use crate::contract::{HOME, USER};

/// The environment of an exec: the user's, and our `TERM` with a terminal. Docker derives
/// `HOME` from the uid, which is root's when a root host user gave `envd` uid 0.
fn exec_env(tty: bool) -> Vec<String> {
    let user = USER;
    let mut env = vec![
        format!("USER={user}"),
        format!("LOGNAME={user}"),
        format!("HOME={}", HOME),
    ];
    if tty {
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        env.push(format!("TERM={term}"));
    }
    env
}

/// Runs `cmd` in the container as the environment's user; returns exit code, stdout, stderr.
pub async fn exec_capture(
    docker: &Docker,
    id: &str,
    cmd: &[&str],
) -> anyhow::Result<(i64, String, String)> {
    crate::docker::exec_capture(docker, id, cmd, USER, &exec_env(false), None).await
}

/// `envd exec`: runs a command in the environment's working directory with this process's stdin,
/// stdout and stderr, and returns its exit code. With `tty`, the command gets a terminal of its
/// own (like `docker exec -it`): this terminal is put in raw mode for the duration, its size is
/// passed on and follows resizes, and `TERM` goes with it.
pub async fn exec(env: &Environment, cmd: Vec<String>, tty: bool) -> anyhow::Result<i64> {
    if !env.running() {
        bail!(
            "{} is not running (status: {}); start it with envd up",
            env.name,
            env.status
        );
    }
    let docker = crate::docker::connect().await?;
    let exec = docker
        .create_exec(
            &env.id,
            CreateExecOptions {
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(tty),
                env: Some(exec_env(tty)),
                cmd: Some(cmd),
                working_dir: Some(env.workdir.clone()),
                user: Some(USER.to_string()),
                ..Default::default()
            },
        )
        .await
        .context("cannot create the exec")?;
    let started = docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                tty,
                ..Default::default()
            }),
        )
        .await?;
    // Raw mode from here until the guard drops (also on errors), so keys such as ^C reach the
    // command instead of killing envd.
    let _raw = if tty { RawTerminal::enter() } else { None };
    if let StartExecResults::Attached {
        mut output,
        mut input,
    } = started
    {
        if tty {
            tokio::spawn(follow_terminal_size(docker.clone(), exec.id.clone()));
        }
        // stdin is read by a plain thread: tokio's stdin cannot be cancelled and would keep the
        // process alive after the command ended, until the next key press.
        let mut stdin = stdin_chunks();
        let feed = tokio::spawn(async move {
            while let Some(chunk) = stdin.recv().await {
                if input.write_all(&chunk).await.is_err() || input.flush().await.is_err() {
                    return;
                }
            }
            let _ = input.shutdown().await;
        });
        while let Some(chunk) = output.next().await {
            match chunk? {
                bollard::container::LogOutput::StdErr { message } => {
                    let mut e = std::io::stderr().lock();
                    e.write_all(&message)?;
                    e.flush()?;
                }
                other => {
                    let mut o = std::io::stdout().lock();
                    o.write_all(&other.into_bytes())?;
                    o.flush()?;
                }
            }
        }
        feed.abort();
    }
    Ok(docker.inspect_exec(&exec.id).await?.exit_code.unwrap_or(-1))
}

/// This process's stdin in chunks, read on a thread of its own that never holds up exit; the
/// channel closes at end of input.
fn stdin_chunks() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// The size of the terminal on stdout (rows, columns), if it is one.
fn terminal_size() -> Option<(u16, u16)> {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct it is given, which lives on our stack.
    let r = unsafe { nix::libc::ioctl(1, nix::libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Gives the exec's terminal our size now and after every SIGWINCH.
async fn follow_terminal_size(docker: Docker, exec_id: String) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut winch = signal(SignalKind::window_change()).ok();
    loop {
        if let Some((height, width)) = terminal_size() {
            let _ = docker
                .resize_exec(&exec_id, bollard::exec::ResizeExecOptions { height, width })
                .await;
        }
        match winch.as_mut() {
            Some(w) => {
                if w.recv().await.is_none() {
                    return;
                }
            }
            None => return,
        }
    }
}

/// The terminal on stdin in raw mode; the saved settings come back on drop.
struct RawTerminal(nix::sys::termios::Termios);

impl RawTerminal {
    fn enter() -> Option<Self> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(Self(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.0);
    }
}

/// The lines `envd up` and `envd describe` print about how to reach an environment.
pub fn endpoint_lines(env: &Environment) -> Vec<String> {
    let alias = ssh::host_alias(&env.name);
    let mut lines = vec![format!("ssh:      ssh {alias}")];
    if let Some(url) = env.jupyter_url() {
        lines.push(format!("jupyter:  {url}"));
    }
    if let Some((url, password)) = env.vscode_url() {
        lines.push(format!("vscode:   {url}  (password {password})"));
    }
    for e in &env.endpoints {
        if ["ssh", "jupyter", "api", "vscode"].contains(&e.service.as_str()) {
            continue;
        }
        lines.push(format!(
            "{:<9} http://{}:{} (port {} inside)",
            format!("{}:", e.service),
            e.host_ip,
            e.host_port,
            e.container_port
        ));
    }
    lines.push(format!(
        "desktop:  code --remote ssh-remote+{alias} {}",
        env.workdir
    ));
    lines
}

/// One environment's row for `envd ls`.
#[derive(serde::Serialize)]
pub struct Row {
    /// The environment.
    #[serde(flatten)]
    pub env: Environment,
    /// Each service and its state (empty when the environment is not running).
    pub services: Vec<ServiceRow>,
    /// Why the services are unknown, if they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services_error: Option<String>,
    /// `ssh NAME.envd`.
    pub ssh: String,
    /// Jupyter's URL with its token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jupyter: Option<String>,
    /// The VS Code server's URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vscode: Option<String>,
}

/// A service in `envd ls`.
#[derive(serde::Serialize)]
pub struct ServiceRow {
    /// Its name.
    pub name: String,
    /// `healthy`, `starting`, `restarting`, `failed`, ...
    pub state: String,
    /// How often it was restarted.
    pub restarts: u32,
}

/// Every environment with its services' states.
pub async fn rows() -> anyhow::Result<Vec<Row>> {
    let docker = crate::docker::connect().await?;
    let mut rows = Vec::new();
    for env in super::list(&docker).await? {
        let (services, services_error) = if env.running() {
            match health::services(&env).await {
                Ok(s) => (
                    s.iter()
                        .map(|s| ServiceRow {
                            name: s.name.clone(),
                            state: health::describe(s),
                            restarts: s.restarts,
                        })
                        .collect(),
                    None,
                ),
                Err(e) => (Vec::new(), Some(format!("{e:#}"))),
            }
        } else {
            (Vec::new(), None)
        };
        rows.push(Row {
            ssh: format!("ssh {}", ssh::host_alias(&env.name)),
            jupyter: env.jupyter_url(),
            vscode: env.vscode_url().map(|(url, _)| url),
            env,
            services,
            services_error,
        });
    }
    Ok(rows)
}

/// `envd ls` as a table.
pub fn print_table(rows: &[Row]) {
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let services = if let Some(e) = &r.services_error {
                format!("unknown ({e})")
            } else {
                r.services
                    .iter()
                    .map(|s| {
                        if s.restarts > 0 {
                            format!("{}:{}({} restarts)", s.name, s.state, s.restarts)
                        } else {
                            format!("{}:{}", s.name, s.state)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let mut endpoints = vec![r.ssh.clone()];
            if let Some(j) = &r.jupyter {
                endpoints.push(j.clone());
            }
            [
                r.env.name.clone(),
                r.env.status.clone(),
                services,
                endpoints.join(" "),
                r.env.image.clone(),
            ]
        })
        .collect();
    let header = ["NAME", "STATUS", "SERVICES", "ENDPOINTS", "IMAGE"];
    let mut width = header.map(str::len);
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cols: [&str; 5]| {
        let mut s = String::new();
        for (i, c) in cols.iter().enumerate() {
            if i == 4 {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header);
    for row in &cells {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
}

/// `envd describe`.
pub async fn describe(name: &str) -> anyhow::Result<()> {
    let docker = crate::docker::connect().await?;
    let env = super::find(&docker, name).await?;
    println!("name:     {}", env.name);
    println!("status:   {}", env.status);
    println!("image:    {}", env.image);
    println!("id:       {}", &env.id[..12.min(env.id.len())]);
    if let Some(c) = &env.context {
        println!("context:  {c} (at {})", env.workdir);
    }
    for l in endpoint_lines(&env) {
        println!("{l}");
    }
    println!("ports:");
    for e in &env.endpoints {
        println!(
            "  {:<10} {}:{} -> {}",
            e.service, e.host_ip, e.host_port, e.container_port
        );
    }
    let volumes = super::volumes::list(&docker, &env.name, true).await?;
    if !volumes.is_empty() {
        println!("volumes (kept by envd down; envd down --volumes removes them):");
        for v in &volumes {
            println!(
                "  {:<28} {:<24} {}",
                v.name,
                v.path,
                v.size
                    .map(super::volumes::human_size)
                    .unwrap_or_else(|| "?".into())
            );
        }
    }
    if !env.commands.is_empty() {
        println!("commands (envd exec --name {} --command NAME):", env.name);
        for (k, v) in &env.commands {
            println!("  {k}: {v}");
        }
    }
    if env.running() {
        println!("services:");
        for s in health::services(&env).await? {
            println!(
                "  {:<12} {:<10} pid {:<6} restarts {}{}",
                s.name,
                health::describe(&s),
                s.pid,
                s.restarts,
                if s.detail.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", s.detail)
                }
            );
        }
    }
    Ok(())
}

/// `envd logs`: a service's log through envd-init, or (without a service) the container's
/// output, which is envd-init's own log.
pub async fn logs(
    name: &str,
    service: Option<&str>,
    follow: bool,
    tail: u32,
) -> anyhow::Result<()> {
    let docker = crate::docker::connect().await?;
    let env = super::find(&docker, name).await?;
    if let Some(service) = service {
        if !env.running() {
            bail!("{name} is not running; service logs come from its envd-init");
        }
        let mut c = health::connect(&env).await?;
        let mut stream = c
            .supervisor
            .logs(envd_supervisor::proto::supervisor::LogsRequest {
                service: service.to_string(),
                tail,
                follow,
            })
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {}", e.message()))?
            .into_inner();
        while let Some(line) = stream.next().await {
            let line = line?;
            let mut out = std::io::stdout().lock();
            out.write_all(&line.line)?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
        return Ok(());
    }
    let mut stream = docker.logs(
        &env.id,
        Some(LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            tail: if tail == 0 {
                "all".into()
            } else {
                tail.to_string()
            },
            ..Default::default()
        }),
    );
    while let Some(chunk) = stream.next().await {
        let mut out = std::io::stdout().lock();
        out.write_all(&chunk?.into_bytes())?;
        out.flush()?;
    }
    Ok(())
}

/// `envd down`: removes the container and its SSH entry, and with `volumes` its named volumes.
/// Returns the names of the volumes kept.
pub async fn down(name: &str, volumes: bool) -> anyhow::Result<Vec<String>> {
    let docker = crate::docker::connect().await?;
    let env = match super::find(&docker, name).await {
        Ok(env) => env,
        Err(e) => {
            // A leftover entry or volumes of a container removed by other means still go.
            let left = super::volumes::list(&docker, name, false).await?;
            if ssh::has_entry(name) || (volumes && !left.is_empty()) {
                ssh::remove_environment(name)?;
                println!("{name}: no container; removed its SSH entry");
                return finish_volumes(&docker, name, volumes).await;
            }
            return Err(e);
        }
    };
    // A stop first: envd-init gets SIGTERM and stops every service in order; the removal
    // alone would kill it outright.
    if env.running() {
        let _ = docker
            .stop_container(
                &env.id,
                Some(bollard::query_parameters::StopContainerOptions {
                    t: Some(10),
                    signal: None,
                }),
            )
            .await;
    }
    docker
        .remove_container(
            &env.id,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
        .context("cannot remove the container")?;
    ssh::remove_environment(name)?;
    finish_volumes(&docker, name, volumes).await
}

/// Removes the volumes (`remove`) or names the ones kept.
async fn finish_volumes(docker: &Docker, name: &str, remove: bool) -> anyhow::Result<Vec<String>> {
    if remove {
        for v in super::volumes::remove_all(docker, name).await? {
            println!("removed the volume {v}");
        }
        return Ok(Vec::new());
    }
    Ok(super::volumes::list(docker, name, false)
        .await?
        .into_iter()
        .map(|v| v.name)
        .collect())
}
