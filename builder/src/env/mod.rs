//! Running environments: `envd up`, `ls`, `describe`, `logs`, `exec`, `down`.
//!
//! Data flows one way: the evaluated build file becomes an [`spec::EnvSpec`] (what every runner
//! must make), a [`runner::Runner`] makes it and reports it back as an [`Environment`] (its
//! endpoints on the host among it), envd-init's API reports its services' health ([`health`]),
//! and [`ssh`] writes the `NAME.envd` entry. Docker ([`docker_runner`]) is the default runner:
//! one container per environment and host user, named [`container_name`] and labelled with its
//! name and owner, so two users can run the same project side by side. Everything the host
//! needs later is read back from the runner, so there is no state file to drift out of date.

pub mod commands;
pub mod docker_runner;
pub mod health;
pub mod kube;
pub mod runner;
pub mod spec;
pub mod ssh;
mod terminal;
pub mod up;
pub mod volumes;

use std::collections::BTreeMap;

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

/// The service a port of the environment belongs to, as every runner names its endpoints: a
/// `runtime.expose` entry's name (`port-N` when it has none), else the contract's services.
pub fn service_of_port(port: u16, runtime: &crate::graph::Runtime) -> String {
    use crate::contract::{API_PORT, JUPYTER_PORT, SSH_PORT, VSCODE_PORT};
    if let Some(e) = runtime.expose.iter().find(|e| e.envd_port as u16 == port) {
        if !e.service.is_empty() {
            return e.service.clone();
        }
        return format!("port-{port}");
    }
    match port {
        SSH_PORT => "ssh".into(),
        API_PORT => "api".into(),
        JUPYTER_PORT => "jupyter".into(),
        VSCODE_PORT => "vscode".into(),
        _ => format!("port-{port}"),
    }
}

/// A service published on the host.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// Its state: `running`, `exited`, ... (Docker's; a pod's phase on a cluster).
    pub status: String,
    /// The cluster node it runs on (none on Docker).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
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
