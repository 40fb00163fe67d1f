//! Health checks: `http-endpoint` (any 2xx), `tcp` (a connection is accepted), `file-path`
//! (the file exists) and `command` (exits 0). All configured checks must pass.
//!
//! One task per running service instance. It reports only changes: healthy once the checks
//! first pass, unhealthy after `max-failed` consecutive failures (failures during
//! `start-period` do not count). Command checks are spawned like services and their exit comes
//! from the reaper, so their status can never be stolen.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::config::HealthSpec;
use crate::reaper::{ExitKind, Waiters};
use crate::spawn::{self, Identity, SpawnRequest};

/// A change in a service instance's health.
#[derive(Debug, Clone)]
pub struct HealthReport {
    /// The service.
    pub service: String,
    /// Which start of it the report is about (stale reports are ignored).
    pub generation: u64,
    /// Healthy or not.
    pub healthy: bool,
    /// The failing check's message, when unhealthy.
    pub detail: String,
}

/// Everything one service's checks need.
pub struct CheckContext {
    /// The service.
    pub service: String,
    /// Its start generation.
    pub generation: u64,
    /// The checks.
    pub spec: HealthSpec,
    /// Environment for command checks.
    pub env: Arc<BTreeMap<String, String>>,
    /// Identity for command checks.
    pub identity: Option<Identity>,
    /// For command checks' exits.
    pub waiters: Waiters,
}

/// Before the first pass, checks are retried at least this often (so readiness is seen fast),
/// while failures still count only once per `interval`.
const STARTUP_RETRY: Duration = Duration::from_millis(100);

/// Runs the checks until the task is aborted.
pub async fn run(ctx: CheckContext, reports: mpsc::UnboundedSender<HealthReport>) {
    let started = Instant::now();
    let mut healthy = false;
    let mut failures = 0u32;
    let mut last_counted: Option<Instant> = None;
    loop {
        let result = check_once(&ctx).await;
        match result {
            Ok(()) => {
                failures = 0;
                if !healthy {
                    healthy = true;
                    let _ = reports.send(HealthReport {
                        service: ctx.service.clone(),
                        generation: ctx.generation,
                        healthy: true,
                        detail: String::new(),
                    });
                }
            }
            Err(detail) => {
                let in_start_period = !healthy && started.elapsed() < ctx.spec.start_period;
                let due = last_counted
                    .is_none_or(|t| t.elapsed() + STARTUP_RETRY / 2 >= ctx.spec.interval);
                if !in_start_period && (healthy || due) {
                    failures += 1;
                    last_counted = Some(Instant::now());
                }
                if failures >= ctx.spec.max_failed {
                    let _ = reports.send(HealthReport {
                        service: ctx.service.clone(),
                        generation: ctx.generation,
                        healthy: false,
                        detail: format!("{failures} consecutive health-check failures: {detail}"),
                    });
                    return;
                }
            }
        }
        let pause = if healthy {
            ctx.spec.interval
        } else {
            ctx.spec.interval.min(STARTUP_RETRY)
        };
        tokio::time::sleep(pause).await;
    }
}

/// Runs every configured check once, within the timeout.
pub async fn check_once(ctx: &CheckContext) -> Result<(), String> {
    let spec = &ctx.spec;
    if let Some(path) = &spec.file_path {
        if !path.exists() {
            return Err(format!("{} does not exist", path.display()));
        }
    }
    if let Some(addr) = &spec.tcp {
        match tokio::time::timeout(spec.timeout, TcpStream::connect(addr.as_str())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("tcp {addr}: {e}")),
            Err(_) => return Err(format!("tcp {addr}: no answer within {:?}", spec.timeout)),
        }
    }
    if let Some(url) = &spec.http_endpoint {
        match tokio::time::timeout(spec.timeout, http_status(url)).await {
            Ok(Ok(code)) if (200..300).contains(&code) => {}
            Ok(Ok(code)) => return Err(format!("{url} answered HTTP {code}")),
            Ok(Err(e)) => return Err(format!("{url}: {e}")),
            Err(_) => return Err(format!("{url}: no answer within {:?}", spec.timeout)),
        }
    }
    if let Some(argv) = &spec.command {
        let pid = spawn::spawn(SpawnRequest {
            argv,
            env: &ctx.env,
            cwd: None,
            identity: ctx.identity.as_ref(),
            stdout: Stdio::null(),
            stderr: Stdio::null(),
            cgroup: None,
        })
        .map_err(|e| format!("cannot run {:?}: {e}", argv[0]))?;
        // Registered before any await: the reaper cannot have seen this exit yet.
        let exit = ctx.waiters.register(pid);
        match tokio::time::timeout(spec.timeout, exit).await {
            Ok(Ok(ExitKind::Code(0))) => {}
            Ok(Ok(kind)) => return Err(format!("health command {kind}")),
            Ok(Err(_)) => return Err("health command status lost".into()),
            Err(_) => {
                let _ = killpg(pid, Signal::SIGKILL);
                return Err(format!(
                    "health command took longer than {:?}",
                    spec.timeout
                ));
            }
        }
    }
    Ok(())
}

/// A minimal HTTP/1.0 GET: returns the status code.
async fn http_status(url: &str) -> Result<u16, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut stream = TcpStream::connect(addr.as_str())
        .await
        .map_err(|e| e.to_string())?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: envd-init\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP answer: {:?}",
                line.lines().next().unwrap_or("")
            )
        })
}
