//! `envd up`: build, create and start the container on envd-init, wait until every service is
//! ready, pin the SSH host key and write the `NAME.envd` entry.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use envd_supervisor::proto::supervisor::ServiceStatus;

use super::health::{self, NotReady, Ready};
use super::runner::{self, Runner};
use super::spec::{self, Mount};
use super::{container_name, ssh, volumes, Environment};
use crate::build::{self, Options};
use crate::buildkit::solve::Progress;
use crate::contract::HOST_KEY;

/// What to bring up.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The build (path, entry, builder, `--force`).
    pub build: Options,
    /// `--volume HOST:CONTAINER[:ro]` mounts.
    pub volumes: Vec<Mount>,
    /// How long to wait for every service.
    pub timeout: Duration,
    /// Recreate the container even when it runs the current image.
    pub recreate: bool,
    /// CPUs (`--cpus`, e.g. `1.5`).
    pub cpus: Option<String>,
    /// Memory in bytes (`--memory`).
    pub memory_bytes: Option<i64>,
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

/// Runs a command in the environment and returns its stdout; fails with its output otherwise.
pub async fn exec_output(
    runner: &impl Runner,
    env: &Environment,
    cmd: &[&str],
) -> anyhow::Result<String> {
    let (code, out, err) = runner.exec_capture(env, cmd).await?;
    if code != 0 {
        bail!("{} exited with {code}: {}", cmd.join(" "), err.trim());
    }
    Ok(out)
}

/// Brings the environment up on the default runner. `progress` sees the build; `show` sees
/// each service change.
pub async fn up(
    opts: &UpOptions,
    name: &str,
    progress: impl FnMut(Progress) + Send,
    show: impl FnMut(&ServiceStatus, Duration),
) -> anyhow::Result<Up> {
    let runner = runner::default_runner().await?;
    let context = opts
        .build
        .path
        .canonicalize()
        .with_context(|| format!("no such directory: {}", opts.build.path.display()))?;
    let mut build_opts = opts.build.clone();
    build_opts.path = context.clone();
    build_opts.name = Some(name.to_string());
    build_opts.tag.get_or_insert_with(|| format!("{name}:dev"));
    let outcome = build::build(&build_opts, progress).await?;
    if !outcome.graph.dev {
        bail!("envd up needs a development image: base(..., dev=True) in build.envd");
    }
    let image = runner.publish(&outcome.tag).await?;
    let reused = keep_or_clear(&runner, opts, name, &image).await?;
    let started = if reused {
        Instant::now()
    } else {
        create(&runner, opts, name, &context, &outcome, &image).await?
    };
    let env = runner::find(&runner, name).await?;
    let env = runner.ready_to_reach(&env).await?;
    let (services, ssh_ready) =
        wait_until_ready(&runner, &env, opts.timeout, started, show).await?;
    Ok(Up {
        env,
        build: outcome,
        reused,
        ssh_ready: Some(ssh_ready),
        all_ready: started.elapsed(),
        services,
    })
}

/// Keeps a running environment of the current image (unless `--force`); clears anything else of
/// ours in its place. Returns whether it was kept.
async fn keep_or_clear(
    runner: &impl Runner,
    opts: &UpOptions,
    name: &str,
    image: &str,
) -> anyhow::Result<bool> {
    let Some(existing) = runner.existing(name).await? else {
        return Ok(false);
    };
    if !existing.ours {
        let container = container_name(name);
        bail!(
            "a container named {container:?} exists and is not your envd environment {name:?}; remove it or use --name"
        );
    }
    let image_id = runner.image_id(image).await?;
    if existing.running && existing.image_id == image_id && !opts.recreate {
        return Ok(true);
    }
    runner.discard(name).await?;
    Ok(false)
}

/// Makes the environment's volumes and the environment itself, and starts it.
async fn create(
    runner: &impl Runner,
    opts: &UpOptions,
    name: &str,
    context: &Path,
    outcome: &build::Outcome,
    image: &str,
) -> anyhow::Result<Instant> {
    // The key envd-sshd accepts is mounted from here, never baked into the image.
    crate::host::ensure_user_key()?;
    let mut named = Vec::new();
    for (key, path) in volumes::wanted(&outcome.graph) {
        named.push((runner.ensure_volume(name, &key, &path).await?, path));
    }
    let graph = &outcome.graph;
    let mut spec = spec::spec(name, image, context, graph, &opts.volumes, &named)?;
    spec.cpus = opts.cpus.clone();
    spec.memory_bytes = opts.memory_bytes;
    runner.create(&spec).await
}

/// Waits until every service is ready, writing the SSH entry as soon as sshd is, not when the
/// slowest service is (`ssh NAME.envd` works while Jupyter still starts). Returns the services
/// and when sshd was ready; fails at once when the environment stops while starting.
async fn wait_until_ready(
    runner: &impl Runner,
    env: &Environment,
    timeout: Duration,
    started: Instant,
    mut show: impl FnMut(&ServiceStatus, Duration),
) -> anyhow::Result<(Vec<ServiceStatus>, Duration)> {
    let name = &env.name;
    let ssh_entry = async {
        health::wait_serving(env, "sshd", timeout).await?;
        let ready_at = started.elapsed();
        let host_key = exec_output(runner, env, &["cat", &format!("{HOST_KEY}.pub")])
            .await
            .context("cannot read the environment's SSH host key")?;
        ssh::add_environment(name, &runner.ssh_route(env)?, &host_key)?;
        anyhow::Ok(ready_at)
    };
    let waits = async { tokio::join!(health::wait_ready(env, timeout, &mut show), ssh_entry) };
    let (ready, ssh_ready) = tokio::select! {
        both = waits => both,
        stopped = runner.stopped(env) => return Err(stopped),
    };
    let Ready { services, .. } = match ready? {
        Ok(r) => r,
        Err(NotReady { report }) => bail!(
            "{name} is not ready. {report}The container is left running for inspection: envd logs --name {name}; envd down --name {name}"
        ),
    };
    Ok((services, ssh_ready?))
}
