//! Running environments: `envd up`, `ls`, `describe`, `logs`, `exec`, `down`.
//!
//! An environment is one container labelled [`LABEL_NAME`] and [`LABEL_OWNER`] (the host user
//! who brought it up) and named [`container_name`], whose PID 1 is `envd-init`. Each host user
//! sees and acts on their own environments only, so two users can run the same project side by
//! side. Everything the host needs later (ports, tokens, the build context) is read back
//! from the container itself, so there is no state file to drift out of date; the SSH entry and
//! pinned host key live in the user's envd config directory ([`ssh`]).

pub mod commands;
pub mod health;
pub mod ssh;
pub mod up;
pub mod volumes;

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context as _};
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions};
use bollard::Docker;

use crate::contract::{
    API_PORT, ENV_API_TOKEN, ENV_JUPYTER_TOKEN, ENV_VSCODE_PASSWORD, JUPYTER_PORT, LABEL_CONTEXT,
    LABEL_NAME, LABEL_OWNER, LABEL_RUNTIME, SSH_PORT, VSCODE_PORT,
};
use crate::graph::Runtime;

/// The host user acting: their uid (labels) and login name (container names).
pub fn owner() -> (u32, String) {
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    (uid.as_raw(), name)
}

/// The Docker container of this user's environment `name`: `NAME.USER`, so the same project
/// brought up by two host users gives two containers.
pub fn container_name(name: &str) -> String {
    format!("{name}.{}", owner().1)
}

/// A service published on the host.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Endpoint {
    /// What it is: `ssh`, `jupyter`, `api` or the `runtime.expose` service name.
    pub service: String,
    /// Port inside the environment.
    pub container_port: u16,
    /// Host address.
    pub host_ip: String,
    /// Host port.
    pub host_port: u16,
}

/// What the host knows about one environment, read from its container.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Environment {
    /// The environment's name.
    pub name: String,
    /// Container id.
    pub id: String,
    /// Image reference.
    pub image: String,
    /// Docker's state: `running`, `exited`, ...
    pub status: String,
    /// Build context on the host, when started by `envd up`.
    pub context: Option<String>,
    /// Working directory inside.
    pub workdir: String,
    /// Published ports.
    pub endpoints: Vec<Endpoint>,
    /// envd-init's API token.
    #[serde(skip)]
    pub api_token: Option<String>,
    /// Jupyter's token.
    #[serde(skip)]
    pub jupyter_token: Option<String>,
    /// The VS Code server's password.
    #[serde(skip)]
    pub vscode_password: Option<String>,
    /// `runtime.command` entries.
    pub commands: BTreeMap<String, String>,
}

impl Environment {
    /// The host port of a service.
    pub fn port(&self, service: &str) -> Option<u16> {
        self.endpoints
            .iter()
            .find(|e| e.service == service)
            .map(|e| e.host_port)
    }

    /// envd-init's API as `http://127.0.0.1:PORT`.
    pub fn api_url(&self) -> Option<String> {
        self.port("api").map(|p| format!("http://127.0.0.1:{p}"))
    }

    /// The Jupyter URL with its token.
    pub fn jupyter_url(&self) -> Option<String> {
        let port = self.port("jupyter")?;
        let token = self.jupyter_token.as_deref().unwrap_or("");
        Some(format!("http://127.0.0.1:{port}/lab?token={token}"))
    }

    /// The VS Code server's URL (the working directory opened) and its password.
    pub fn vscode_url(&self) -> Option<(String, String)> {
        let port = self.port("vscode")?;
        let password = self.vscode_password.clone().unwrap_or_default();
        Some((
            format!("http://127.0.0.1:{port}/?folder={}", self.workdir),
            password,
        ))
    }

    /// Whether Docker says it runs.
    pub fn running(&self) -> bool {
        self.status == "running"
    }
}

fn env_value(env: &[String], key: &str) -> Option<String> {
    env.iter()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
}

/// Reads an environment from its container's inspect data.
fn from_inspect(c: bollard::models::ContainerInspectResponse) -> Option<Environment> {
    let config = c.config.unwrap_or_default();
    let labels = config.labels.clone().unwrap_or_default();
    let name = labels.get(LABEL_NAME)?.clone();
    let env = config.env.clone().unwrap_or_default();
    let runtime: Option<Runtime> = labels
        .get(LABEL_RUNTIME)
        .and_then(|r| serde_json::from_str(r).ok());
    let mut service_of: HashMap<u16, String> = HashMap::from([
        (SSH_PORT, "ssh".to_string()),
        (JUPYTER_PORT, "jupyter".to_string()),
        (API_PORT, "api".to_string()),
        (VSCODE_PORT, "vscode".to_string()),
    ]);
    if let Some(rt) = &runtime {
        for e in &rt.expose {
            let service = if e.service.is_empty() {
                format!("port-{}", e.envd_port)
            } else {
                e.service.clone()
            };
            service_of.insert(e.envd_port as u16, service);
        }
    }
    let mut endpoints = Vec::new();
    let ports = c.network_settings.and_then(|n| n.ports).unwrap_or_default();
    for (key, bindings) in ports {
        let Some(port) = key.strip_suffix("/tcp").and_then(|p| p.parse::<u16>().ok()) else {
            continue;
        };
        for b in bindings.unwrap_or_default() {
            let Some(host_port) = b.host_port.as_deref().and_then(|p| p.parse().ok()) else {
                continue;
            };
            endpoints.push(Endpoint {
                service: service_of
                    .get(&port)
                    .cloned()
                    .unwrap_or_else(|| format!("port-{port}")),
                container_port: port,
                host_ip: b.host_ip.clone().unwrap_or_default(),
                host_port,
            });
        }
    }
    endpoints.sort_by_key(|e| (e.container_port, e.host_ip.clone()));
    endpoints.dedup_by_key(|e| e.container_port);
    Some(Environment {
        name,
        id: c.id.unwrap_or_default(),
        image: config.image.clone().unwrap_or_default(),
        status: c
            .state
            .and_then(|s| s.status)
            .map(|s| s.to_string())
            .unwrap_or_default(),
        context: labels.get(LABEL_CONTEXT).cloned(),
        workdir: config.working_dir.clone().unwrap_or_default(),
        endpoints,
        api_token: env_value(&env, ENV_API_TOKEN),
        jupyter_token: env_value(&env, ENV_JUPYTER_TOKEN),
        vscode_password: env_value(&env, ENV_VSCODE_PASSWORD),
        commands: runtime.map(|r| r.commands).unwrap_or_default(),
    })
}

/// Finds an environment by name; a clear error when there is none.
pub async fn find(docker: &Docker, name: &str) -> anyhow::Result<Environment> {
    match lookup(docker, name).await? {
        Some(e) => Ok(e),
        None => {
            let known: Vec<String> = list(docker).await?.into_iter().map(|e| e.name).collect();
            let names: Vec<&str> = known.iter().map(String::as_str).collect();
            let hint = match envd_supervisor::config::closest(name, &names) {
                Some(c) => format!(" Did you mean {c:?}?"),
                None if known.is_empty() => {
                    " There are no environments; start one with `envd up`.".into()
                }
                None => format!(" Environments: {}.", known.join(", ")),
            };
            bail!("there is no environment named {name:?}.{hint}")
        }
    }
}

/// Looks this user's environment up by name.
pub async fn lookup(docker: &Docker, name: &str) -> anyhow::Result<Option<Environment>> {
    let uid = owner().0.to_string();
    match docker
        .inspect_container(&container_name(name), None::<InspectContainerOptions>)
        .await
    {
        Ok(c) => {
            let labels = c
                .config
                .as_ref()
                .and_then(|c| c.labels.clone())
                .unwrap_or_default();
            let mine = labels.get(LABEL_OWNER) == Some(&uid);
            Ok(from_inspect(c).filter(|e| e.name == name && mine))
        }
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(e).context("cannot inspect the container"),
    }
}

/// Every environment of this user on this engine, running or not, sorted by name.
pub async fn list(docker: &Docker) -> anyhow::Result<Vec<Environment>> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![
            LABEL_NAME.to_string(),
            format!("{LABEL_OWNER}={}", owner().0),
        ],
    )]);
    let summaries = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .context("cannot list containers")?;
    let mut out = Vec::new();
    for s in summaries {
        let Some(id) = s.id else { continue };
        match docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => out.extend(from_inspect(c)),
            // Removed between the list and the inspect.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(e).context("cannot inspect a container"),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
