//! The runner seam: everything `envd up`, `ls`, `describe`, `logs`, `exec` and `down` need from
//! whatever runs environments. Docker ([`super::docker_runner::DockerRunner`]) is the default and
//! today the only implementation; a cluster runner implements the same trait. Reaching a running
//! environment goes through the host ports it reports in [`Environment::endpoints`]: envd-init's
//! API, sshd, Jupyter and VS Code alike.

use std::time::Duration;

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
    /// What holds the environment's place now, if anything.
    async fn existing(&self, name: &str) -> anyhow::Result<Option<Existing>>;
    /// Makes and starts the environment; on failure nothing of it is left.
    async fn create(&self, spec: &EnvSpec) -> anyhow::Result<()>;
    /// Stops the environment (envd-init stops its services in order, within `grace`) and
    /// removes it. Its volumes stay.
    async fn remove(&self, env: &Environment, grace: Duration) -> anyhow::Result<()>;
    /// Removes whatever holds the environment's place at once (a stale or failed instance).
    async fn discard(&self, name: &str) -> anyhow::Result<()>;
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

/// The runner environments use: Docker, the default.
pub async fn default_runner() -> anyhow::Result<super::docker_runner::DockerRunner> {
    super::docker_runner::DockerRunner::connect().await
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
