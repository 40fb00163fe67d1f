//! `envd ls`, `describe`, `logs`, `exec` and `down`, and the Docker calls they share with `up`.

use std::io::Write;

use anyhow::bail;
use futures_util::StreamExt;

use super::runner::{default_runner, find, Runner};
use super::{health, ssh, Environment};

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
    let runner = default_runner().await?;
    let mut rows = Vec::new();
    for env in runner.list().await? {
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
                match &r.env.node {
                    Some(node) => format!("{} on {node}", r.env.status),
                    None => r.env.status.clone(),
                },
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
        crate::say!("{}", s.trim_end());
    };
    line(header);
    for row in &cells {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
}

/// `envd describe`.
pub async fn describe(name: &str) -> anyhow::Result<()> {
    let runner = default_runner().await?;
    let env = find(&runner, name).await?;
    crate::say!("name:     {}", env.name);
    crate::say!("status:   {}", env.status);
    crate::say!("image:    {}", env.image);
    crate::say!("id:       {}", &env.id[..12.min(env.id.len())]);
    if let Some(c) = &env.context {
        crate::say!("context:  {c} (at {})", env.workdir);
    }
    for l in endpoint_lines(&env) {
        crate::say!("{l}");
    }
    crate::say!("ports:");
    for e in &env.endpoints {
        crate::say!(
            "  {:<10} {}:{} -> {}",
            e.service,
            e.host_ip,
            e.host_port,
            e.container_port
        );
    }
    let volumes = runner.volumes(&env.name, true).await?;
    if !volumes.is_empty() {
        crate::say!("volumes (kept by envd down; envd down --volumes removes them):");
        for v in &volumes {
            crate::say!(
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
        crate::say!("commands (envd exec --name {} --command NAME):", env.name);
        for (k, v) in &env.commands {
            crate::say!("  {k}: {v}");
        }
    }
    if env.running() {
        crate::say!("services:");
        for s in health::services(&env).await? {
            crate::say!(
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
    let runner = default_runner().await?;
    let env = find(&runner, name).await?;
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
    let mut stdout = std::io::stdout();
    runner.output(&env, follow, tail, &mut stdout).await?;
    Ok(())
}

/// `envd down`: removes the container and its SSH entry, and with `volumes` its named volumes.
/// Returns the names of the volumes kept.
pub async fn down(name: &str, volumes: bool) -> anyhow::Result<Vec<String>> {
    let runner = default_runner().await?;
    let env = match find(&runner, name).await {
        Ok(env) => env,
        Err(e) => {
            // A leftover entry or volumes of an environment removed by other means still go.
            let left = runner.volumes(name, false).await?;
            runner.forget(name).await?;
            if ssh::has_entry(name) || (volumes && !left.is_empty()) {
                ssh::remove_environment(name)?;
                crate::say!("{name}: it was already gone; removed its SSH entry");
                return finish_volumes(&runner, name, volumes).await;
            }
            return Err(e);
        }
    };
    runner.remove(&env, STOP_GRACE).await?;
    ssh::remove_environment(name)?;
    finish_volumes(&runner, name, volumes).await
}

/// How long envd-init gets to stop every service before the environment is killed.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Removes the volumes (`remove`) or names the ones kept.
async fn finish_volumes(
    runner: &impl Runner,
    name: &str,
    remove: bool,
) -> anyhow::Result<Vec<String>> {
    if remove {
        for v in runner.remove_volumes(name).await? {
            crate::say!("removed the volume {v}");
        }
        return Ok(Vec::new());
    }
    let kept = runner.volumes(name, false).await?;
    Ok(kept.into_iter().map(|v| v.name).collect())
}
