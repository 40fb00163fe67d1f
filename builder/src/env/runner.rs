//! The runner seam: everything `envd up`, `ls`, `describe`, `logs`, `exec` and `down` need from
//! whatever runs environments. Docker ([`super::docker_runner::DockerRunner`]) is the default;
//! a context made with `--runner kubernetes` runs them on a cluster
//! ([`super::kube::KubeRunner`]). Reaching a running environment goes through the host ports it
//! reports in [`Environment::endpoints`] (envd-init's API, Jupyter, VS Code), and SSH through
//! [`Runner::ssh_route`].

use std::time::{Duration, Instant};

use super::spec::EnvSpec;
use super::volumes::Volume;
use super::Environment;

/// What a container `envd up` would replace, as far as deciding goes.
pub struct Existing {
    /// Whether it is this user's environment of this name (not someone else's object).
    pub ours: bool,
    /// Whether it runs.
    pub running: bool,
    /// The image it was made from.
    pub image_id: String,
}

/// Where a command's output goes.
pub type Sink<'a> = &'a mut (dyn std::io::Write + Send);

/// What a runner of environments does. All of it acts on the calling host user's environments
/// only.
#[allow(async_fn_in_trait)]
pub trait Runner {
    /// Every environment, running or not, sorted by name.
    async fn list(&self) -> anyhow::Result<Vec<Environment>>;
    /// One environment, or None.
    async fn lookup(&self, name: &str) -> anyhow::Result<Option<Environment>>;
    /// The id of an image the runner can start.
    async fn image_id(&self, image: &str) -> anyhow::Result<String>;
    /// Makes the locally built image available to the runner; returns the reference to run
    /// (Docker: the image itself; a cluster: pushed to its registry).
    async fn publish(&self, image: &str) -> anyhow::Result<String> {
        Ok(image.to_string())
    }
    /// What holds the environment's place now, if anything.
    async fn existing(&self, name: &str) -> anyhow::Result<Option<Existing>>;
    /// Makes and starts the environment; returns when its envd-init started (as near as the
    /// runner can tell). On failure nothing of it is left but its volumes.
    async fn create(&self, spec: &EnvSpec) -> anyhow::Result<Instant>;
    /// Stops the environment (envd-init stops its services in order, within `grace`) and
    /// removes it. Its volumes stay.
    async fn remove(&self, env: &Environment, grace: Duration) -> anyhow::Result<()>;
    /// Removes whatever holds the environment's place at once (a stale or failed instance).
    async fn discard(&self, name: &str) -> anyhow::Result<()>;
    /// Forgets what this machine keeps about an environment that is gone (a cluster runner's
    /// port forwarder).
    async fn forget(&self, _name: &str) -> anyhow::Result<()> {
        Ok(())
    }
    /// The environment, reachable from this machine: a cluster runner restarts its port
    /// forwarder when it is not running.
    async fn ready_to_reach(&self, env: &Environment) -> anyhow::Result<Environment> {
        Ok(env.clone())
    }
    /// How `ssh NAME.envd` reaches the environment's sshd.
    fn ssh_route(&self, env: &Environment) -> anyhow::Result<super::ssh::Route> {
        let port = env
            .port("ssh")
            .ok_or_else(|| anyhow::anyhow!("{} publishes no SSH port", env.name))?;
        Ok(super::ssh::Route::Port(port))
    }
    /// Resolves once the environment is no longer running, with why and its last output.
    async fn stopped(&self, env: &Environment) -> anyhow::Error;
    /// Runs `cmd` as the environment's user; returns exit code, stdout and stderr.
    async fn exec_capture(
        &self,
        env: &Environment,
        cmd: &[&str],
    ) -> anyhow::Result<(i64, String, String)>;
    /// Runs `cmd` with this process's stdin, stdout and stderr (and a terminal with `tty`);
    /// returns its exit code.
    async fn exec(&self, env: &Environment, cmd: Vec<String>, tty: bool) -> anyhow::Result<i64>;
    /// Writes the environment's own output (envd-init's log): the last `tail` lines (0: all),
    /// then more as it comes with `follow`.
    async fn output(
        &self,
        env: &Environment,
        follow: bool,
        tail: u32,
        sink: Sink<'_>,
    ) -> anyhow::Result<()>;
    /// Makes the environment's named volume `key`, mounted at `path`, unless it exists;
    /// returns its name.
    async fn ensure_volume(&self, env: &str, key: &str, path: &str) -> anyhow::Result<String>;
    /// The environment's volumes, with their sizes when `sizes` is asked (slower).
    async fn volumes(&self, env: &str, sizes: bool) -> anyhow::Result<Vec<Volume>>;
    /// Removes the environment's volumes; returns their names.
    async fn remove_volumes(&self, env: &str) -> anyhow::Result<Vec<String>>;
}

/// The runner of the current `envd context`: Docker (the default) or a Kubernetes cluster.
pub enum AnyRunner {
    /// The local Docker engine.
    Docker(super::docker_runner::DockerRunner),
    /// A cluster.
    Kube(Box<super::kube::KubeRunner>),
}

/// The runner environments use: the current context's (`envd context use`).
pub async fn default_runner() -> anyhow::Result<AnyRunner> {
    let contexts = crate::builders::Contexts::load()?;
    runner_of(contexts.current()).await
}

/// The runner of a named context.
pub async fn runner_of(context: &crate::builders::BuilderContext) -> anyhow::Result<AnyRunner> {
    Ok(match &context.kubernetes {
        Some(target) => AnyRunner::Kube(Box::new(
            super::kube::KubeRunner::connect(&context.name, target).await?,
        )),
        None => AnyRunner::Docker(super::docker_runner::DockerRunner::connect().await?),
    })
}

/// Calls the same method on whichever runner it is.
macro_rules! each {
    ($self:ident, $r:ident => $call:expr) => {
        match $self {
            AnyRunner::Docker($r) => $call,
            AnyRunner::Kube($r) => $call,
        }
    };
}

impl Runner for AnyRunner {
    async fn list(&self) -> anyhow::Result<Vec<Environment>> {
        each!(self, r => r.list().await)
    }
    async fn lookup(&self, name: &str) -> anyhow::Result<Option<Environment>> {
        each!(self, r => r.lookup(name).await)
    }
    async fn image_id(&self, image: &str) -> anyhow::Result<String> {
        each!(self, r => r.image_id(image).await)
    }
    async fn publish(&self, image: &str) -> anyhow::Result<String> {
        each!(self, r => r.publish(image).await)
    }
    async fn existing(&self, name: &str) -> anyhow::Result<Option<Existing>> {
        each!(self, r => r.existing(name).await)
    }
    async fn create(&self, spec: &EnvSpec) -> anyhow::Result<Instant> {
        each!(self, r => r.create(spec).await)
    }
    async fn remove(&self, env: &Environment, grace: Duration) -> anyhow::Result<()> {
        each!(self, r => r.remove(env, grace).await)
    }
    async fn discard(&self, name: &str) -> anyhow::Result<()> {
        each!(self, r => r.discard(name).await)
    }
    async fn forget(&self, name: &str) -> anyhow::Result<()> {
        each!(self, r => r.forget(name).await)
    }
    async fn ready_to_reach(&self, env: &Environment) -> anyhow::Result<Environment> {
        each!(self, r => r.ready_to_reach(env).await)
    }
    fn ssh_route(&self, env: &Environment) -> anyhow::Result<super::ssh::Route> {
        each!(self, r => r.ssh_route(env))
    }
    async fn stopped(&self, env: &Environment) -> anyhow::Error {
        each!(self, r => r.stopped(env).await)
    }
    async fn exec_capture(
        &self,
        env: &Environment,
        cmd: &[&str],
    ) -> anyhow::Result<(i64, String, String)> {
        each!(self, r => r.exec_capture(env, cmd).await)
    }
    async fn exec(&self, env: &Environment, cmd: Vec<String>, tty: bool) -> anyhow::Result<i64> {
        each!(self, r => r.exec(env, cmd, tty).await)
    }
    async fn output(
        &self,
        env: &Environment,
        follow: bool,
        tail: u32,
        sink: Sink<'_>,
    ) -> anyhow::Result<()> {
        each!(self, r => r.output(env, follow, tail, sink).await)
    }
    async fn ensure_volume(&self, env: &str, key: &str, path: &str) -> anyhow::Result<String> {
        each!(self, r => r.ensure_volume(env, key, path).await)
    }
    async fn volumes(&self, env: &str, sizes: bool) -> anyhow::Result<Vec<Volume>> {
        each!(self, r => r.volumes(env, sizes).await)
    }
    async fn remove_volumes(&self, env: &str) -> anyhow::Result<Vec<String>> {
        each!(self, r => r.remove_volumes(env).await)
    }
}

/// Finds an environment by name; a clear error naming the closest one when there is none.
pub async fn find(runner: &impl Runner, name: &str) -> anyhow::Result<Environment> {
    if let Some(e) = runner.lookup(name).await? {
        return Ok(e);
    }
    let known: Vec<String> = runner.list().await?.into_iter().map(|e| e.name).collect();
    let names: Vec<&str> = known.iter().map(String::as_str).collect();
    let hint = match envd_supervisor::suggest::closest(name, &names) {
        Some(c) => format!(" Did you mean {c:?}?"),
        None if known.is_empty() => " There are no environments; start one with `envd up`.".into(),
        None => format!(" Environments: {}.", known.join(", ")),
    };
    anyhow::bail!("there is no environment named {name:?}.{hint}")
}
