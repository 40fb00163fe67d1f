//! The Docker runner: an environment is one container named [`container_name`] and labelled with
//! its name and owner, whose PID 1 is envd-init; its volumes are Docker volumes. Everything the
//! host needs later (ports, tokens, the build context) is read back from the container itself,
//! so there is no state file to drift out of date.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::VolumeCreateRequest;
use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, ListVolumesOptions,
    LogsOptions, RemoveContainerOptions, RemoveVolumeOptions, StopContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::runner::{Existing, Runner, Sink};
use super::spec::{EnvSpec, MountSource};
use super::terminal::{self, RawTerminal};
use super::volumes::{self, Volume};
use super::{container_name, owner, Endpoint, Environment};
use crate::contract::{
    ENV_API_TOKEN, ENV_JUPYTER_TOKEN, ENV_VSCODE_PASSWORD, HOME, LABEL_CONTEXT, LABEL_NAME,
    LABEL_OWNER, LABEL_RUNTIME, LABEL_VOLUME_PATH, USER,
};
use crate::graph::Runtime;

/// Environments as Docker containers on the local engine.
pub struct DockerRunner {
    docker: Docker,
}

impl DockerRunner {
    /// Connects to the engine (see [`crate::docker::connect`]).
    pub async fn connect() -> anyhow::Result<Self> {
        Ok(Self {
            docker: crate::docker::connect().await?,
        })
    }
}

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
    let runtime = runtime.unwrap_or_default();
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
                service: super::service_of_port(port, &runtime),
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
        node: None,
        context: labels.get(LABEL_CONTEXT).cloned(),
        workdir: config.working_dir.clone().unwrap_or_default(),
        endpoints,
        api_token: env_value(&env, ENV_API_TOKEN),
        jupyter_token: env_value(&env, ENV_JUPYTER_TOKEN),
        vscode_password: env_value(&env, ENV_VSCODE_PASSWORD),
        commands: runtime.commands,
    })
}

/// The container's definition of an environment.
fn container_body(spec: &EnvSpec) -> ContainerCreateBody {
    let mut ports: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &spec.ports {
        let binding = PortBinding {
            host_ip: Some(p.host_ip.clone()),
            // Empty: Docker picks a free port.
            host_port: Some(if p.host_port == 0 {
                String::new()
            } else {
                p.host_port.to_string()
            }),
        };
        ports.insert(format!("{}/tcp", p.container_port), Some(vec![binding]));
    }
    let binds = spec.mounts.iter().map(|m| {
        let source = match &m.source {
            MountSource::Host(path) => path.display().to_string(),
            MountSource::Volume(name) => name.clone(),
        };
        let mode = if m.read_only { ":ro" } else { "" };
        format!("{source}:{}{mode}", m.target)
    });
    let device_requests = spec.gpus.map(|n| {
        vec![DeviceRequest {
            driver: Some("nvidia".into()),
            count: Some(n),
            capabilities: Some(vec![vec!["gpu".into()]]),
            ..Default::default()
        }]
    });
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        hostname: Some(spec.name.clone()),
        cmd: Some(spec.args.clone()),
        env: Some(spec.env.clone()),
        working_dir: Some(spec.workdir.clone()),
        labels: Some(spec.labels.clone()),
        exposed_ports: Some(ports.keys().cloned().collect()),
        host_config: Some(HostConfig {
            port_bindings: Some(ports),
            binds: Some(binds.collect()),
            shm_size: spec.shm_bytes,
            nano_cpus: spec
                .cpus
                .as_deref()
                .and_then(|c| c.parse::<f64>().ok())
                .map(|c| (c * 1e9) as i64),
            memory: spec.memory_bytes,
            device_requests,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Turns Docker's start errors into what the user can act on.
fn start_error(e: bollard::errors::Error) -> anyhow::Error {
    let text = e.to_string();
    if text.contains("port is already allocated") || text.contains("address already in use") {
        let port = text
            .split("0.0.0.0:")
            .nth(1)
            .or_else(|| text.split("127.0.0.1:").nth(1))
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .unwrap_or("?");
        anyhow::anyhow!(
            "cannot publish port {port}: it is in use on the host. Free it or choose another port in build.envd (config.jupyter(port=...), config.vscode_server(port=...), runtime.expose(host_port=...)). Docker said: {text}"
        )
    } else {
        anyhow::anyhow!("cannot start the container: {text}")
    }
}

/// Gives the exec's terminal our size now and after every SIGWINCH.
async fn follow_terminal_size(docker: Docker, exec_id: String) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut winch = signal(SignalKind::window_change()).ok();
    loop {
        if let Some((height, width)) = terminal::terminal_size() {
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

/// Every volume's size from `GET /system/df`. Read as JSON rather than through bollard's
/// models, which know only the newest engines' layout (`VolumeUsage.Items`); Engine 20.10 (API
/// 1.41) answers with a top-level `Volumes` list.
async fn volume_sizes() -> anyhow::Result<HashMap<String, i64>> {
    Ok(volumes::sizes_from_df(
        &crate::docker::get_json("/system/df?type=volume").await?,
    ))
}

impl Runner for DockerRunner {
    /// Every environment of this user on this engine, running or not, sorted by name.
    async fn list(&self) -> anyhow::Result<Vec<Environment>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                LABEL_NAME.to_string(),
                format!("{LABEL_OWNER}={}", owner().0),
            ],
        )]);
        let summaries = self
            .docker
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
            match self
                .docker
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

    /// Looks this user's environment up by name.
    async fn lookup(&self, name: &str) -> anyhow::Result<Option<Environment>> {
        let uid = owner().0.to_string();
        match self
            .docker
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

    async fn image_id(&self, image: &str) -> anyhow::Result<String> {
        crate::docker::image_id(&self.docker, image).await
    }

    async fn existing(&self, name: &str) -> anyhow::Result<Option<Existing>> {
        let Some(c) = crate::docker::container_info(&self.docker, &container_name(name)).await?
        else {
            return Ok(None);
        };
        let ours = c.labels.get(LABEL_NAME).map(String::as_str) == Some(name)
            && c.labels.get(LABEL_OWNER) == Some(&owner().0.to_string());
        Ok(Some(Existing {
            ours,
            running: c.running,
            image_id: c.image_id,
        }))
    }

    async fn create(&self, spec: &EnvSpec) -> anyhow::Result<std::time::Instant> {
        let container = container_name(&spec.name);
        let options = CreateContainerOptions {
            name: Some(container.clone()),
            ..Default::default()
        };
        (self
            .docker
            .create_container(Some(options), container_body(spec))
            .await)
            .context("cannot create the container")?;
        if let Err(e) = self.docker.start_container(&container, None).await {
            let _ = self.discard(&spec.name).await;
            return Err(start_error(e));
        }
        Ok(std::time::Instant::now())
    }

    async fn remove(&self, env: &Environment, grace: Duration) -> anyhow::Result<()> {
        // A stop first: envd-init gets SIGTERM and stops every service in order; the removal
        // alone would kill it outright.
        if env.running() {
            let stop = StopContainerOptions {
                t: Some(grace.as_secs() as i32),
                signal: None,
            };
            let _ = self.docker.stop_container(&env.id, Some(stop)).await;
        }
        let force = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        (self.docker.remove_container(&env.id, Some(force)).await)
            .context("cannot remove the container")
    }

    async fn discard(&self, name: &str) -> anyhow::Result<()> {
        let force = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        (self
            .docker
            .remove_container(&container_name(name), Some(force))
            .await)
            .context("cannot remove the old container")
    }

    /// Resolves once the container is no longer running, with its exit code and last output:
    /// envd-init refusing its service files exits at once, and `envd up` must say why within a
    /// second instead of waiting out its timeout.
    async fn stopped(&self, env: &Environment) -> anyhow::Error {
        let (docker, id, name) = (&self.docker, env.id.as_str(), env.name.as_str());
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let state = match docker
                .inspect_container(id, None::<InspectContainerOptions>)
                .await
            {
                Ok(info) => info.state.unwrap_or_default(),
                Err(e) => return anyhow::anyhow!("{name} disappeared while starting: {e}"),
            };
            if state.running == Some(true) {
                continue;
            }
            let code = state.exit_code.unwrap_or(-1);
            let mut output = String::new();
            let mut logs = docker.logs(
                id,
                Some(LogsOptions {
                    stdout: true,
                    stderr: true,
                    tail: "20".into(),
                    ..Default::default()
                }),
            );
            while let Some(Ok(chunk)) = logs.next().await {
                output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
            let output: String = output.lines().map(|l| format!("  {l}\n")).collect();
            return anyhow::anyhow!(
                "{name} stopped while starting (exit code {code}). Its last output:\n{output}The container is kept for inspection: envd logs --name {name}; envd down --name {name}"
            );
        }
    }

    async fn exec_capture(
        &self,
        env: &Environment,
        cmd: &[&str],
    ) -> anyhow::Result<(i64, String, String)> {
        let user_env = exec_env(false);
        crate::docker::exec_capture(&self.docker, &env.id, cmd, USER, &user_env, None).await
    }

    async fn exec(&self, env: &Environment, cmd: Vec<String>, tty: bool) -> anyhow::Result<i64> {
        if !env.running() {
            bail!(
                "{} is not running (status: {}); start it with envd up",
                env.name,
                env.status
            );
        }
        let docker = &self.docker;
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
            let mut stdin = terminal::stdin_chunks();
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

    async fn output(
        &self,
        env: &Environment,
        follow: bool,
        tail: u32,
        sink: Sink<'_>,
    ) -> anyhow::Result<()> {
        let tail = if tail == 0 {
            "all".into()
        } else {
            tail.to_string()
        };
        let options = LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            tail,
            ..Default::default()
        };
        // A followed log lasts as long as the user watches: not under the 120 s request limit.
        let docker = self
            .docker
            .clone()
            .with_timeout(std::time::Duration::from_secs(24 * 3600));
        let mut stream = docker.logs(&env.id, Some(options));
        while let Some(chunk) = stream.next().await {
            sink.write_all(&chunk?.into_bytes())?;
            sink.flush()?;
        }
        Ok(())
    }

    /// Creates the volume unless it exists (Docker's create is idempotent for the same name).
    async fn ensure_volume(&self, env: &str, key: &str, path: &str) -> anyhow::Result<String> {
        let name = volumes::volume_name(env, key);
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.clone()),
                labels: Some(HashMap::from([
                    (LABEL_NAME.to_string(), env.to_string()),
                    (LABEL_OWNER.to_string(), owner().0.to_string()),
                    (LABEL_VOLUME_PATH.to_string(), path.to_string()),
                ])),
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create the volume {name}"))?;
        Ok(name)
    }

    /// This user's volumes of environment `env`, with sizes when `sizes` is asked (slower: the
    /// engine walks them).
    async fn volumes(&self, env: &str, sizes: bool) -> anyhow::Result<Vec<Volume>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_NAME}={env}"),
                format!("{LABEL_OWNER}={}", owner().0),
            ],
        )]);
        let listed = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(filters),
            }))
            .await
            .context("cannot list volumes")?;
        let usage = if sizes {
            volume_sizes().await?
        } else {
            HashMap::new()
        };
        let mut out: Vec<Volume> = listed
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| Volume {
                size: usage.get(&v.name).copied().filter(|s| *s >= 0),
                path: v.labels.get(LABEL_VOLUME_PATH).cloned().unwrap_or_default(),
                name: v.name,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes every volume of this user's environment `env`; returns their names.
    async fn remove_volumes(&self, env: &str) -> anyhow::Result<Vec<String>> {
        let mut removed = Vec::new();
        for v in self.volumes(env, false).await? {
            self.docker
                .remove_volume(&v.name, Some(RemoveVolumeOptions { force: false }))
                .await
                .with_context(|| format!("cannot remove the volume {}", v.name))?;
            removed.push(v.name);
        }
        Ok(removed)
    }
}
