//! Health as envd-init reports it over its token-protected gRPC API on a published port: the
//! wait in `envd up` (driven by `grpc.health.v1.Health/Watch`), the services column of `envd ls`,
//! and service logs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use envd_supervisor::client::{self, Clients};
use envd_supervisor::proto::health::HealthCheckRequest;
use envd_supervisor::proto::supervisor::{
    ListServicesRequest, LogsRequest, ServiceState, ServiceStatus,
};
use futures_util::StreamExt;

use super::Environment;

/// Connects to the environment's envd-init.
pub async fn connect(env: &Environment) -> anyhow::Result<Clients> {
    let url = env
        .api_url()
        .with_context(|| format!("{} does not publish envd-init's API", env.name))?;
    client::connect_tcp(&url, env.api_token.as_deref()).await
}

/// The services of a running environment.
pub async fn services(env: &Environment) -> anyhow::Result<Vec<ServiceStatus>> {
    let mut c = connect(env).await?;
    Ok(c.supervisor
        .list_services(ListServicesRequest {})
        .await
        .context("envd-init's API refused ListServices")?
        .into_inner()
        .services)
}

/// Whether a service counts as ready (the same rule envd-init's health service applies).
pub fn ready(s: &ServiceStatus) -> bool {
    envd_supervisor::api::serving(s)
}

/// One word for a service's state and health, as `envd ls` and `envd up` show it (envd-init's
/// own words, [`envd_supervisor::api::status_word`]).
pub fn describe(s: &ServiceStatus) -> String {
    envd_supervisor::api::status_word(s).to_string()
}

/// The last `tail` log lines of a service, as text.
pub async fn last_lines(
    clients: &mut Clients,
    service: &str,
    tail: u32,
) -> anyhow::Result<Vec<String>> {
    let mut stream = clients
        .supervisor
        .logs(LogsRequest {
            service: service.to_string(),
            tail,
            follow: false,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(line) = stream.next().await {
        out.push(String::from_utf8_lossy(&line?.line).trim_end().to_string());
    }
    Ok(out)
}

/// Waits until one service serves, on `grpc.health.v1.Health/Watch(service)`.
pub async fn wait_serving(
    env: &Environment,
    service: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    use envd_supervisor::proto::health::health_check_response::ServingStatus;
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = async {
            let mut c = connect(env).await?;
            let mut stream = c
                .health
                .watch(HealthCheckRequest {
                    service: service.to_string(),
                })
                .await?
                .into_inner();
            while let Some(msg) = stream.next().await {
                if msg?.status == ServingStatus::Serving as i32 {
                    return anyhow::Ok(true);
                }
            }
            anyhow::Ok(false)
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, attempt).await {
            Ok(Ok(true)) => return Ok(()),
            Err(_) => bail!("{service} was not ready within {timeout:?}"),
            // Not listening yet, or the stream ended: try again shortly.
            Ok(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
        if Instant::now() >= deadline {
            bail!("{service} was not ready within {timeout:?}");
        }
    }
}

/// Why the wait ended without every service ready.
#[derive(Debug)]
pub struct NotReady {
    /// What went wrong, in words, with the failing services' last log lines.
    pub report: String,
}

/// What the wait saw.
pub struct Ready {
    /// The services once all were ready.
    pub services: Vec<ServiceStatus>,
}

/// Waits until every service is ready, calling `show` whenever a service changes. Fails early
/// when a service has failed for good, and at the deadline; both report the last log lines of
/// the services that are not ready.
pub async fn wait_ready(
    env: &Environment,
    timeout: Duration,
    mut show: impl FnMut(&ServiceStatus, Duration),
) -> anyhow::Result<Result<Ready, NotReady>> {
    let started = Instant::now();
    let deadline = started + timeout;
    // envd-init needs a few milliseconds to listen, and Docker's port proxy accepts connections
    // before anything listens inside: retry until a call succeeds.
    let mut clients = loop {
        let attempt = async {
            let mut c = connect(env).await?;
            c.supervisor.list_services(ListServicesRequest {}).await?;
            anyhow::Ok(c)
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(c)) => break c,
            Ok(Err(e)) if Instant::now() >= deadline => {
                bail!("envd-init's API did not answer within {timeout:?}: {e:#}")
            }
            _ if Instant::now() >= deadline => {
                bail!("envd-init's API did not answer within {timeout:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    };
    let mut watch = clients
        .health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .context("envd-init's API refused Watch")?
        .into_inner();
    let mut last: HashMap<String, String> = HashMap::new();
    loop {
        let services = clients
            .supervisor
            .list_services(ListServicesRequest {})
            .await
            .context("envd-init's API refused ListServices")?
            .into_inner()
            .services;
        for s in &services {
            let word = describe(s);
            if last.get(&s.name) != Some(&word) {
                show(s, started.elapsed());
                last.insert(s.name.clone(), word);
            }
        }
        if !services.is_empty() && services.iter().all(ready) {
            return Ok(Ok(Ready { services }));
        }
        let failed: Vec<&ServiceStatus> = services
            .iter()
            .filter(|s| s.state == ServiceState::Failed as i32)
            .collect();
        let timed_out = Instant::now() >= deadline;
        if !failed.is_empty() || timed_out {
            let culprits: Vec<&ServiceStatus> = if failed.is_empty() {
                services.iter().filter(|s| !ready(s)).collect()
            } else {
                failed
            };
            let mut report = if timed_out {
                format!("not every service was ready after {timeout:?}:\n")
            } else {
                "a service failed and will not be restarted:\n".to_string()
            };
            for s in culprits {
                report.push_str(&format!(
                    "  {}: {}{}\n",
                    s.name,
                    describe(s),
                    if s.detail.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", s.detail)
                    }
                ));
                let lines = last_lines(&mut clients, &s.name, 20)
                    .await
                    .unwrap_or_default();
                if !lines.is_empty() {
                    report.push_str(&format!("  last lines of {}'s log:\n", s.name));
                    for l in lines {
                        report.push_str(&format!("    | {l}\n"));
                    }
                }
            }
            return Ok(Err(NotReady { report }));
        }
        // Watch says when the whole environment's health flips; the short tick shows the
        // per-service steps in between (e.g. sshd healthy while Jupyter still starts).
        let tick =
            Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now()));
        tokio::select! {
            msg = watch.next() => if msg.is_none() {
                bail!("envd-init closed the Watch stream (did the container stop?)");
            },
            _ = tokio::time::sleep(tick) => {}
        }
    }
}
