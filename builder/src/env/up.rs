//! `envd up`: build, create and start the container on envd-init, wait until every service is
//! ready, pin the SSH host key and write the `NAME.envd` entry.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig, PortBinding};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
use bollard::Docker;
use envd_supervisor::proto::supervisor::ServiceStatus;

use super::health::{self, NotReady, Ready};
use super::{container_name, owner, ssh, volumes, Environment};
use crate::build::{self, Options};
use crate::buildkit::solve::Progress;
use crate::contract::{
    API_PORT, AUTHORIZED_KEYS, ENV_API_TOKEN, ENV_JUPYTER_TOKEN, ENV_VSCODE_PASSWORD, HOME,
    HOST_KEY, JUPYTER_PORT, LABEL_CONTEXT, LABEL_NAME, LABEL_OWNER, SSH_PORT, VSCODE_PORT,
};
use crate::graph::Graph;

/// What to bring up.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The build (path, entry, builder, `--force`).
    pub build: Options,
    /// `--volume HOST:CONTAINER[:ro]` mounts.
    pub volumes: Vec<String>,
    /// How long to wait for every service.
    pub timeout: Duration,
    /// Recreate the container even when it runs the current image.
    pub recreate: bool,
}

/// What `envd up` did.
pub struct Up {
    /// The environment as Docker reports it.
    pub env: Environment,
    /// The build's outcome.
    pub build: build::Outcome,
    /// Whether a running container was kept (same image, no `--force`).
    pub reused: bool,
    /// From the container's start to sshd being ready and its entry written.
    pub ssh_ready: Option<Duration>,
    /// From the container's start to every service being ready.
    pub all_ready: Duration,
    /// The services once ready.
    pub services: Vec<ServiceStatus>,
}

/// 128 random bits as hex, for the API and Jupyter tokens.
pub fn random_token() -> anyhow::Result<String> {
    crate::random::hex(16)
}

/// Resolves a host path given in build.envd (`~`, relative to the build context).
fn host_path(context: &Path, p: &str) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/") {
        return crate::host::home_dir().join(rest);
    }
    let path = PathBuf::from(p);
    if path.is_absolute() {
        path
    } else {
        context.join(path)
    }
}

/// Checks a `-v HOST:CONTAINER[:ro|rw]` argument and makes the host side absolute.
pub fn parse_volume(v: &str) -> anyhow::Result<String> {
    let parts: Vec<&str> = v.split(':').collect();
    let (host, ctr, mode) = match parts.as_slice() {
        [h, c] => (*h, *c, None),
        [h, c, m] if *m == "ro" || *m == "rw" => (*h, *c, Some(*m)),
        _ => bail!("-v {v}: expected HOST:CONTAINER or HOST:CONTAINER:ro"),
    };
    if !ctr.starts_with('/') {
        bail!("-v {v}: the path in the environment must be absolute");
    }
    let host = std::path::absolute(host).with_context(|| format!("-v {v}: bad host path"))?;
    if !host.exists() {
        bail!("-v {v}: {} does not exist", host.display());
    }
    Ok(match mode {
        Some(m) => format!("{}:{ctr}:{m}", host.display()),
        None => format!("{}:{ctr}", host.display()),
    })
}

/// A path inside the environment: `~` is the user's home.
pub fn envd_path(p: &str) -> String {
    match p.strip_prefix('~') {
        Some("") => HOME.to_string(),
        Some(rest) if rest.starts_with('/') => format!("{HOME}{rest}"),
        _ => p.to_string(),
    }
}

/// The uid and gid the environment's user takes at start: `config.owner(...)` when the build
/// file sets it, else the host user's, so the project mounted from the host is writable inside
/// and what is made inside belongs to the host user.
pub fn user_ids(graph: &Graph) -> (u32, u32) {
    match graph.config.owner {
        Some((uid, gid)) => (uid as u32, gid as u32),
        None => (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        ),
    }
}

/// Whether a port on 127.0.0.1 is free now.
fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A host port: the build file's choice, or the default (Jupyter's 8888, VS Code's 8080)
/// unless something (another user's environment, say) has it, then a free one.
fn host_port(port: i32, port_given: bool) -> u16 {
    let port = port as u16;
    if !port_given && !port_free(port) {
        0
    } else {
        port
    }
}

fn binding(ip: &str, port: u16) -> Option<Vec<PortBinding>> {
    Some(vec![PortBinding {
        host_ip: Some(ip.to_string()),
        // Empty: Docker picks a free port.
        host_port: Some(if port == 0 {
            String::new()
        } else {
            port.to_string()
        }),
    }])
}

/// The container's definition. `named` are the environment's volumes: `(Docker name, path)`.
fn container_body(
    name: &str,
    image: &str,
    context: &Path,
    graph: &Graph,
    volumes: &[String],
    named: &[(String, String)],
) -> anyhow::Result<ContainerCreateBody> {
    // The same directory name the compiler gives `run(mount_host=True)` steps.
    let workdir = format!("{HOME}/{}", build::workdir_name(context));
    let mut env = vec![
        format!("{ENV_API_TOKEN}={}", random_token()?),
        format!("ENVD_WORKDIR={workdir}"),
    ];
    let mut ports: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    ports.insert(format!("{SSH_PORT}/tcp"), binding("127.0.0.1", 0));
    ports.insert(format!("{API_PORT}/tcp"), binding("127.0.0.1", 0));
    if let Some(j) = &graph.config.jupyter {
        let token = if j.token.is_empty() {
            random_token()?
        } else {
            j.token.clone()
        };
        env.push(format!("{ENV_JUPYTER_TOKEN}={token}"));
        ports.insert(
            format!("{JUPYTER_PORT}/tcp"),
            binding("127.0.0.1", host_port(j.port, j.port_given)),
        );
    }
    if let Some(v) = &graph.config.vscode {
        env.push(format!("{ENV_VSCODE_PASSWORD}={}", random_token()?));
        ports.insert(
            format!("{VSCODE_PORT}/tcp"),
            binding("127.0.0.1", host_port(v.port, v.port_given)),
        );
    }
    for e in &graph.runtime.expose {
        let ip = if e.listen_addr.is_empty() {
            "127.0.0.1"
        } else {
            e.listen_addr.as_str()
        };
        ports.insert(
            format!("{}/tcp", e.envd_port),
            binding(ip, e.host_port.max(0) as u16),
        );
    }
    let public_key = crate::host::key_path().with_extension("pub");
    let mut binds = vec![
        format!("{}:{workdir}", context.display()),
        format!("{}:{AUTHORIZED_KEYS}:ro", public_key.display()),
    ];
    for m in graph.runtime.mounts.iter().filter(|m| m.volume.is_empty()) {
        let host = host_path(context, &m.host_path);
        if !host.exists() {
            bail!(
                "runtime.mount(host_path={:?}): {} does not exist",
                m.host_path,
                host.display()
            );
        }
        binds.push(format!("{}:{}", host.display(), envd_path(&m.envd_path)));
    }
    binds.extend(named.iter().map(|(v, path)| format!("{v}:{path}")));
    binds.extend(volumes.iter().cloned());
    // envd-init gives the user the host user's ids and the named volumes (see
    // envd_supervisor::identity), then serves its API.
    let (uid, gid) = user_ids(graph);
    let mut cmd = vec!["--user-ids".to_string(), format!("{uid}:{gid}")];
    for (_, path) in named {
        cmd.extend(["--own".to_string(), path.clone()]);
    }
    cmd.extend(["--api-listen".to_string(), format!("0.0.0.0:{API_PORT}")]);
    let device_requests = graph.config.gpu.filter(|n| *n != 0).map(|n| {
        vec![DeviceRequest {
            driver: Some("nvidia".into()),
            count: Some(n as i64),
            capabilities: Some(vec![vec!["gpu".into()]]),
            ..Default::default()
        }]
    });
    Ok(ContainerCreateBody {
        image: Some(image.to_string()),
        hostname: Some(name.to_string()),
        cmd: Some(cmd),
        env: Some(env),
        working_dir: Some(workdir),
        labels: Some(HashMap::from([
            (LABEL_NAME.to_string(), name.to_string()),
            (LABEL_CONTEXT.to_string(), context.display().to_string()),
            (LABEL_OWNER.to_string(), owner().0.to_string()),
        ])),
        exposed_ports: Some(ports.keys().cloned().collect()),
        host_config: Some(HostConfig {
            port_bindings: Some(ports),
            binds: Some(binds),
            shm_size: graph.config.shm_size.map(|mb| mb as i64 * 1024 * 1024),
            device_requests,
            ..Default::default()
        }),
        ..Default::default()
    })
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

/// Runs a command in the container and returns its stdout; fails with its output otherwise.
pub async fn exec_output(docker: &Docker, id: &str, cmd: &[&str]) -> anyhow::Result<String> {
    let (code, out, err) = super::commands::exec_capture(docker, id, cmd).await?;
    if code != 0 {
        bail!("{} exited with {code}: {}", cmd.join(" "), err.trim());
    }
    Ok(out)
}

/// Brings the environment up. `progress` sees the build; `show` sees each service change.
pub async fn up(
    opts: &UpOptions,
    name: &str,
    progress: impl FnMut(Progress) + Send,
    mut show: impl FnMut(&ServiceStatus, Duration),
) -> anyhow::Result<Up> {
    let docker = crate::docker::connect().await?;
    let context = opts
        .build
        .path
        .canonicalize()
        .with_context(|| format!("no such directory: {}", opts.build.path.display()))?;
    let mut build_opts = opts.build.clone();
    build_opts.path = context.clone();
    build_opts.name = Some(name.to_string());
    if build_opts.tag.is_none() {
        build_opts.tag = Some(format!("{name}:dev"));
    }
    let outcome = build::build(&build_opts, progress).await?;
    if !outcome.graph.dev {
        bail!("envd up needs a development image: base(..., dev=True) in build.envd");
    }
    let image_id = crate::docker::image_id(&docker, &outcome.tag).await?;
    let container = container_name(name);

    // Keep a running container of the current image; replace anything else of ours.
    let mut reused = false;
    if let Some(c) = crate::docker::container_info(&docker, &container).await? {
        let ours = c.labels.get(LABEL_NAME).map(String::as_str) == Some(name)
            && c.labels.get(LABEL_OWNER) == Some(&owner().0.to_string());
        if !ours {
            bail!(
                "a container named {container:?} exists and is not your envd environment {name:?}; remove it or use --name"
            );
        }
        if c.running && c.image_id == image_id && !opts.recreate {
            reused = true;
        } else {
            docker
                .remove_container(
                    &container,
                    Some(RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await
                .context("cannot remove the old container")?;
        }
    }
    let started = Instant::now();
    if !reused {
        // The key envd-sshd accepts is mounted from here, never baked into the image.
        crate::host::ensure_user_key()?;
        let mut named = Vec::new();
        for (key, path) in volumes::wanted(&outcome.graph) {
            named.push((volumes::ensure(&docker, name, &key, &path).await?, path));
        }
        let body = container_body(
            name,
            &outcome.tag,
            &context,
            &outcome.graph,
            &opts.volumes,
            &named,
        )?;
        docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(container.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .context("cannot create the container")?;
        if let Err(e) = docker.start_container(&container, None).await {
            let _ = docker
                .remove_container(
                    &container,
                    Some(RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await;
            return Err(start_error(e));
        }
    }
    let env = super::find(&docker, name).await?;
    // The SSH entry is written as soon as sshd is ready, not when the slowest service is:
    // `ssh NAME.envd` works while Jupyter still starts.
    let ssh_entry = async {
        health::wait_serving(&env, "sshd", opts.timeout).await?;
        let ready_at = started.elapsed();
        let host_key = exec_output(&docker, &env.id, &["cat", &format!("{HOST_KEY}.pub")])
            .await
            .context("cannot read the environment's SSH host key")?;
        let port = env
            .port("ssh")
            .context("the container publishes no SSH port")?;
        ssh::add_environment(name, port, &host_key)?;
        anyhow::Ok(ready_at)
    };
    let waits =
        async { tokio::join!(health::wait_ready(&env, opts.timeout, &mut show), ssh_entry) };
    let (ready, ssh_ready) = tokio::select! {
        both = waits => both,
        stopped = stopped_while_starting(&docker, &env.id, name) => return Err(stopped),
    };
    let ready = ready?;
    let Ready { services, .. } = match ready {
        Ok(r) => r,
        Err(NotReady { report }) => bail!(
            "{name} is not ready. {report}The container is left running for inspection: envd logs --name {name}; envd down --name {name}"
        ),
    };
    let ssh_ready = ssh_ready?;
    Ok(Up {
        env,
        build: outcome,
        reused,
        ssh_ready: Some(ssh_ready),
        all_ready: started.elapsed(),
        services,
    })
}

/// Resolves once the container is no longer running, with its exit code and last output:
/// envd-init refusing its service files exits at once, and `envd up` must say why within a
/// second instead of waiting out its timeout.
async fn stopped_while_starting(docker: &Docker, id: &str, name: &str) -> anyhow::Error {
    use bollard::query_parameters::{InspectContainerOptions, LogsOptions};
    use futures_util::StreamExt;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_checked() {
        assert!(parse_volume("/tmp:/data").unwrap().ends_with("/tmp:/data"));
        assert!(parse_volume("/tmp:/data:ro").unwrap().ends_with(":ro"));
        let e = parse_volume("/tmp:data").unwrap_err().to_string();
        assert!(e.contains("must be absolute"), "{e}");
        let e = parse_volume("/no/such/dir:/x").unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        assert!(parse_volume("/tmp").is_err());
    }

    #[test]
    fn paths_inside_expand_the_home() {
        assert_eq!(envd_path("~/.codex"), "/home/envd/.codex");
        assert_eq!(envd_path("~"), "/home/envd");
        assert_eq!(envd_path("/data"), "/data");
        assert_eq!(envd_path("~other/x"), "~other/x");
    }

    #[test]
    fn tokens_are_random_and_long() {
        let a = random_token().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, random_token().unwrap());
    }
}
