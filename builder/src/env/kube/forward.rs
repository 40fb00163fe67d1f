//! Reaching a cluster environment from this machine, through the API server's port-forward and
//! the cluster's own authentication (nothing is exposed outside the cluster):
//!
//! - `ssh NAME.envd` runs `envd kube-proxy` as its `ProxyCommand`: one port-forward stream to
//!   envd-sshd, relayed over stdin and stdout ([`proxy`]).
//! - envd-init's API, Jupyter, VS Code and `runtime.expose` ports are served on 127.0.0.1 by a
//!   small detached process, `envd kube-forward` ([`serve`]), which opens a port-forward stream per
//!   connection. It records its ports in a state file ([`State`]) the other commands read;
//!   `envd down` stops it, and it stops by itself once the pod is gone.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::env::Endpoint;

/// What a running forwarder serves, kept in [`state_path`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// The forwarder's process id.
    pub pid: u32,
    /// The pod it forwards to.
    pub pod: String,
    /// Its ports on 127.0.0.1.
    pub endpoints: Vec<Endpoint>,
}

/// One port to serve: `SERVICE:CONTAINER_PORT:HOST_PORT` (host port 0: any free one).
#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    /// `api`, `jupyter`, `vscode` or the exposed service's name.
    pub service: String,
    /// The port in the pod.
    pub container_port: u16,
    /// The wanted port on 127.0.0.1; 0 or a taken one gives a free port.
    pub host_port: u16,
}

impl std::str::FromStr for Listen {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let [service, container, host] = parts.as_slice() else {
            bail!("expected SERVICE:CONTAINER_PORT:HOST_PORT, got {s:?}");
        };
        Ok(Listen {
            service: service.to_string(),
            container_port: container.parse().context("container port")?,
            host_port: host.parse().context("host port")?,
        })
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.service, self.container_port, self.host_port
        )
    }
}

/// Where the forwarder of environment `name` in context `context` records itself.
pub fn state_path(context: &str, name: &str) -> PathBuf {
    crate::host::config_dir()
        .join("kube")
        .join(context)
        .join(format!("{name}.json"))
}

/// The forwarder's log.
pub fn log_path(context: &str, name: &str) -> PathBuf {
    state_path(context, name).with_extension("log")
}

/// The state of a forwarder that still runs (its process is alive and is ours).
pub fn running(context: &str, name: &str) -> Option<State> {
    let text = std::fs::read_to_string(state_path(context, name)).ok()?;
    let state: State = serde_json::from_str(&text).ok()?;
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", state.pid)).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    (cmdline.contains("kube-forward") && cmdline.contains(name)).then_some(state)
}

/// Stops the forwarder of an environment, if one runs, and forgets its state.
pub fn stop(context: &str, name: &str) {
    if let Some(state) = running(context, name) {
        let pid = nix::unistd::Pid::from_raw(state.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..50 {
            if nix::sys::signal::kill(pid, None).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_file(state_path(context, name));
}

/// Starts a detached forwarder (its own session, so it outlives `envd up`) and waits until it
/// serves; returns its state.
pub fn spawn(context: &str, name: &str, pod: &str, listen: &[Listen]) -> anyhow::Result<State> {
    use std::os::unix::process::CommandExt;
    stop(context, name);
    let log = log_path(context, name);
    std::fs::create_dir_all(log.parent().expect("a state file has a directory"))?;
    let out =
        std::fs::File::create(&log).with_context(|| format!("cannot write {}", log.display()))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args([
        "kube-forward",
        "--context",
        context,
        "--name",
        name,
        "--pod",
        pod,
    ]);
    for l in listen {
        cmd.arg("--listen").arg(l.to_string());
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().context("cannot start envd kube-forward")?;
    for _ in 0..500 {
        if let Some(state) = running(context, name).filter(|s| s.pid == child.id()) {
            // Reaped by nobody: it runs on in its own session after envd exits.
            std::mem::forget(child);
            return Ok(state);
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            bail!(
                "the port forwarder for {name} exited ({status}): {}",
                text.trim()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    bail!(
        "the port forwarder for {name} did not start within 10 s (log: {})",
        log.display()
    )
}

/// Binds 127.0.0.1:`port`, or any free port when it is 0 or taken (Jupyter's default port may
/// be another environment's).
async fn bind(port: u16) -> anyhow::Result<TcpListener> {
    if port != 0 {
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)).await {
            return Ok(l);
        }
    }
    Ok(TcpListener::bind(("127.0.0.1", 0)).await?)
}

/// One port-forward stream to `port` of the pod.
pub async fn stream(
    pods: &Api<Pod>,
    pod: &str,
    port: u16,
) -> anyhow::Result<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> {
    let mut pf = pods
        .portforward(pod, &[port])
        .await
        .with_context(|| format!("port-forward to {pod}:{port} refused"))?;
    let stream = pf
        .take_stream(port)
        .context("the port-forward has no stream")?;
    // The forward's task ends with the stream; nothing waits on it.
    tokio::spawn(async move {
        let _ = pf.join().await;
    });
    Ok(stream)
}

/// Relays one accepted connection to the pod's port.
async fn relay(pods: Api<Pod>, pod: String, port: u16, mut conn: tokio::net::TcpStream) {
    match stream(&pods, &pod, port).await {
        Ok(mut remote) => {
            let _ = tokio::io::copy_bidirectional(&mut conn, &mut remote).await;
        }
        Err(e) => eprintln!("kube-forward: {e:#}"),
    }
}

/// The forwarder's body: binds every port, records them, relays connections until the pod is
/// gone (checked every few seconds) or SIGTERM.
pub async fn serve(
    pods: Api<Pod>,
    context: &str,
    name: &str,
    pod: &str,
    listen: &[Listen],
) -> anyhow::Result<()> {
    let mut endpoints = Vec::new();
    for l in listen {
        let listener = bind(l.host_port).await?;
        let host_port = listener.local_addr()?.port();
        endpoints.push(Endpoint {
            service: l.service.clone(),
            container_port: l.container_port,
            host_ip: "127.0.0.1".into(),
            host_port,
        });
        let (pods, pod, port) = (pods.clone(), pod.to_string(), l.container_port);
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(relay(pods.clone(), pod.clone(), port, conn));
            }
        });
    }
    let state = State {
        pid: std::process::id(),
        pod: pod.to_string(),
        endpoints,
    };
    crate::host::write_file(
        &state_path(context, name),
        serde_json::to_string(&state)?.as_bytes(),
        0o600,
    )?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut missing = 0;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        // Gone twice in a row (not one failed call): the environment is down.
        match pods.get_opt(pod).await {
            Ok(None) => missing += 1,
            _ => missing = 0,
        }
        if missing >= 2 {
            eprintln!("kube-forward: the pod {pod} is gone; stopping");
            break;
        }
    }
    if running(context, name).is_some_and(|s| s.pid == std::process::id()) {
        let _ = std::fs::remove_file(state_path(context, name));
    }
    Ok(())
}

/// `ssh`'s `ProxyCommand`: relays stdin and stdout to envd-sshd through one port-forward stream.
pub async fn proxy(pods: Api<Pod>, pod: &str, port: u16) -> anyhow::Result<()> {
    let remote = stream(&pods, pod, port).await?;
    let (mut from_remote, mut to_remote) = tokio::io::split(remote);
    let upstream = async {
        let mut stdin = tokio::io::stdin();
        let _ = tokio::io::copy(&mut stdin, &mut to_remote).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut to_remote).await;
        // Stay until the other direction ends: ssh closes stdin before the last reply.
        std::future::pending::<()>().await
    };
    let downstream = async {
        let mut stdout = tokio::io::stdout();
        tokio::io::copy(&mut from_remote, &mut stdout).await?;
        tokio::io::AsyncWriteExt::flush(&mut stdout).await?;
        anyhow::Ok(())
    };
    tokio::select! {
        r = downstream => r,
        _ = upstream => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_specs_round_trip() {
        let l: Listen = "jupyter:8888:8888".parse().unwrap();
        assert_eq!(l.container_port, 8888);
        assert_eq!(l.to_string().parse::<Listen>().unwrap(), l);
        assert!("jupyter:8888".parse::<Listen>().is_err());
        assert!("x:notaport:1".parse::<Listen>().is_err());
    }
}
