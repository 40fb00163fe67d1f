//! The Kubernetes runner: an environment is a bare Pod (envd-init as PID 1) named
//! [`manifest::pod_name`], a Secret with its tokens and the user's public key, and a
//! PersistentVolumeClaim per volume: the working directory (filled once with the build context,
//! never overwritten after) and the same named volumes as on Docker. The image is pushed to the
//! context's registry for the node to pull. Everything is labelled with the environment's name
//! and owner, as Docker's containers are, and reached through the API server's port-forward
//! ([`forward`]).

pub mod forward;
pub mod manifest;
pub mod wait;
mod workdir;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod, Secret};
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde::{Deserialize, Serialize};

use super::runner::{Existing, Runner, Sink};
use super::spec::EnvSpec;
use super::volumes::Volume;
use super::{owner, Environment};
use crate::contract::{
    ENV_API_TOKEN, ENV_JUPYTER_TOKEN, ENV_VSCODE_PASSWORD, HOME, JUPYTER_PORT, LABEL_CONTEXT,
    LABEL_NAME, LABEL_OWNER, LABEL_VOLUME_PATH, SSH_PORT, USER, VSCODE_PORT,
};
use crate::graph::Runtime;
use manifest::{pod_name, selector, workdir_claim, CONTAINER};

/// Where a context's environments run on a cluster (`envd context create --runner kubernetes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KubeTarget {
    /// The kubeconfig; none: `$KUBECONFIG`, else `~/.kube/config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// The namespace; none: the kubeconfig context's, else `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `HOST[:PORT]` of the registry images are pushed to and the nodes pull from.
    pub registry: String,
    /// The storage class of the volume claims; none: the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
}

impl KubeTarget {
    /// The kubeconfig file this target reads.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.kubeconfig
            .clone()
            .or_else(|| std::env::var_os("KUBECONFIG").map(PathBuf::from))
            .unwrap_or_else(|| crate::host::home_dir().join(".kube/config"))
    }
}

/// Environments as pods on a Kubernetes cluster.
pub struct KubeRunner {
    client: Client,
    namespace: String,
    target: KubeTarget,
    /// The context's name (forwarders and `ssh` entries are per context).
    context: String,
    /// The API server's address, for messages.
    server: String,
    kubeconfig: PathBuf,
}

/// How long a new pod may take to run (image pulls included) before `envd up` gives up.
const START_TIMEOUT: Duration = Duration::from_secs(300);

impl KubeRunner {
    /// Reads the kubeconfig and makes a client; the cluster is first called by the first
    /// command, and a failure there names the server and the kubeconfig.
    pub async fn connect(context: &str, target: &KubeTarget) -> anyhow::Result<Self> {
        let path = target.kubeconfig_path();
        if !path.exists() {
            bail!(
                "context {context:?} runs environments on Kubernetes, but there is no kubeconfig at {} (envd context create --kubeconfig PATH, or set KUBECONFIG)",
                path.display()
            );
        }
        let kc = Kubeconfig::read_from(&path)
            .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
        let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .with_context(|| format!("the kubeconfig {} is not usable", path.display()))?;
        config.connect_timeout = Some(Duration::from_secs(5));
        let namespace = target
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config)
            .with_context(|| format!("cannot make a client for {server}"))?;
        Ok(Self {
            client,
            namespace,
            target: target.clone(),
            context: context.to_string(),
            server,
            kubeconfig: path,
        })
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn events(&self) -> Api<Event> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The pods of this namespace, for the forwarder and the SSH proxy.
    pub fn pod_api(&self) -> Api<Pod> {
        self.pods()
    }

    /// Turns a client error into what the user can act on: the API server's own refusal
    /// (RBAC names the verb, the resource and the namespace), or that it cannot be reached.
    fn error(&self, what: &str, e: kube::Error) -> anyhow::Error {
        match e {
            kube::Error::Api(s) if s.code == 403 => anyhow::anyhow!(
                "{what}: the Kubernetes API server at {} refused: {} (RBAC: your user needs that permission in namespace {:?})",
                self.server,
                s.message,
                self.namespace
            ),
            kube::Error::Api(s) => anyhow::anyhow!(
                "{what}: the Kubernetes API server at {} refused: {}",
                self.server,
                s.message
            ),
            other => anyhow::anyhow!(
                "{what}: cannot reach the Kubernetes API server at {} (kubeconfig {}): {}",
                self.server,
                self.kubeconfig.display(),
                error_chain(&other)
            ),
        }
    }

    /// The pod of this user's environment `name`.
    pub fn pod_of(&self, name: &str) -> String {
        pod_name(name, &owner().1)
    }

    async fn environment(&self, pod: Pod) -> anyhow::Result<Option<Environment>> {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let Some(name) = labels.get(LABEL_NAME).cloned() else {
            return Ok(None);
        };
        if labels.get(LABEL_OWNER) != Some(&owner().0.to_string()) {
            return Ok(None);
        }
        let object = pod.metadata.name.clone().unwrap_or_default();
        let secret = (self.secrets().get_opt(&object).await)
            .map_err(|e| self.error("cannot read the environment's secret", e))?;
        let state = forward::running(&self.context, &name).filter(|s| s.pod == object);
        Ok(Some(to_environment(name, &pod, secret.as_ref(), state)))
    }

    /// Deletes the pod (envd-init gets SIGTERM and `grace` to stop its services) and waits
    /// until it is gone, so a new one of the same name can follow.
    async fn delete_pod(&self, pod: &str, grace: Duration) -> anyhow::Result<()> {
        let dp = DeleteParams {
            grace_period_seconds: Some(grace.as_secs() as u32),
            ..Default::default()
        };
        match self.pods().delete(pod, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(self.error(&format!("cannot delete the pod {pod}"), e)),
        }
        let deadline = std::time::Instant::now() + grace + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            match self.pods().get_opt(pod).await {
                Ok(None) => return Ok(()),
                Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(250)).await,
                Err(e) => return Err(self.error("cannot read the pod", e)),
            }
        }
        bail!("the pod {pod} was still there a minute after its deletion")
    }

    async fn delete_secret(&self, name: &str) -> anyhow::Result<()> {
        match self.secrets().delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(self.error(&format!("cannot delete the secret {name}"), e)),
        }
    }

    /// Creates the claim unless it exists.
    async fn ensure_claim(&self, claim: PersistentVolumeClaim) -> anyhow::Result<()> {
        let name = claim.metadata.name.clone().unwrap_or_default();
        match self.claims().create(&PostParams::default(), &claim).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(self.error(&format!("cannot create the volume claim {name}"), e)),
        }
    }

    /// The ports the forwarder serves: envd-init's API, Jupyter, VS Code and exposed ports,
    /// each on the host port the spec prefers when it is free.
    fn listens(spec: &EnvSpec) -> Vec<forward::Listen> {
        spec.ports
            .iter()
            .filter(|p| p.container_port != SSH_PORT)
            .map(|p| forward::Listen {
                service: super::service_of_port(p.container_port, &spec.runtime),
                container_port: p.container_port,
                host_port: p.host_port,
            })
            .collect()
    }

    /// Runs `cmd` as the environment's user (the pod's exec runs as root: envd-init switched
    /// ids only for itself), with the user's HOME, USER and LOGNAME as `envd exec` on Docker.
    fn as_user(cmd: &[String], tty: bool) -> Vec<String> {
        let mut argv: Vec<String> = [
            "setpriv",
            "--reuid",
            USER,
            "--regid",
            USER,
            "--init-groups",
            "env",
        ]
        .map(String::from)
        .to_vec();
        argv.extend([
            format!("HOME={HOME}"),
            format!("USER={USER}"),
            format!("LOGNAME={USER}"),
        ]);
        if tty {
            let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
            argv.push(format!("TERM={term}"));
        }
        argv.extend(cmd.iter().cloned());
        argv
    }
}

/// A client error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(&format!(": {text}"));
        }
        source = s.source();
    }
    out
}

/// One word for the pod: `running` once its container runs; else its phase, with the
/// container's waiting reason when there is one (`pending (ImagePullBackOff)`).
fn status_word(pod: &Pod) -> String {
    if pod.metadata.deletion_timestamp.is_some() {
        return "terminating".into();
    }
    if wait::container_running(pod) {
        return "running".into();
    }
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or_default().to_lowercase();
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
    match waiting {
        Some(w) => format!("{phase} ({w})"),
        None => phase,
    }
}

fn to_environment(
    name: String,
    pod: &Pod,
    secret: Option<&Secret>,
    state: Option<forward::State>,
) -> Environment {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let secret_value = |key: &str| {
        let data = secret?.data.as_ref()?;
        Some(String::from_utf8_lossy(&data.get(key)?.0).into_owned())
    };
    let runtime: Option<Runtime> = annotations
        .get(manifest::RUNTIME)
        .and_then(|r| serde_json::from_str(r).ok());
    let spec = pod.spec.clone().unwrap_or_default();
    Environment {
        name,
        id: pod.metadata.uid.clone().unwrap_or_default(),
        image: spec.containers[0].image.clone().unwrap_or_default(),
        status: status_word(pod),
        node: spec.node_name.clone(),
        context: annotations.get(LABEL_CONTEXT).cloned(),
        workdir: annotations
            .get(manifest::WORKDIR)
            .cloned()
            .unwrap_or_default(),
        endpoints: state.map(|s| s.endpoints).unwrap_or_default(),
        api_token: secret_value(ENV_API_TOKEN),
        jupyter_token: secret_value(ENV_JUPYTER_TOKEN),
        vscode_password: secret_value(ENV_VSCODE_PASSWORD),
        commands: runtime.map(|r| r.commands).unwrap_or_default(),
    }
}

/// The exit code in a finished exec's status (`NonZeroExitCode` carries it as a cause).
fn exit_code(status: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>) -> i64 {
    let Some(s) = status else { return -1 };
    if s.status.as_deref() == Some("Success") {
        return 0;
    }
    s.details
        .and_then(|d| d.causes)
        .into_iter()
        .flatten()
        .find(|c| c.reason.as_deref() == Some("ExitCode"))
        .and_then(|c| c.message?.parse().ok())
        .unwrap_or(-1)
}

impl Runner for KubeRunner {
    async fn list(&self) -> anyhow::Result<Vec<Environment>> {
        let lp = ListParams::default().labels(&format!("{LABEL_NAME},{LABEL_OWNER}={}", owner().0));
        let pods = (self.pods().list(&lp).await)
            .map_err(|e| self.error("cannot list the environments' pods", e))?;
        let mut out = Vec::new();
        for pod in pods.items {
            out.extend(self.environment(pod).await?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn lookup(&self, name: &str) -> anyhow::Result<Option<Environment>> {
        let pod = (self.pods().get_opt(&self.pod_of(name)).await)
            .map_err(|e| self.error("cannot read the environment's pod", e))?;
        match pod {
            Some(p) => Ok(self.environment(p).await?.filter(|e| e.name == name)),
            None => Ok(None),
        }
    }

    /// The reference the pod runs: published images are named by their id, so it is the id.
    async fn image_id(&self, image: &str) -> anyhow::Result<String> {
        Ok(image.to_string())
    }

    /// Tags the local image by its id in the context's registry and pushes it there. The tag
    /// is removed here afterwards: the node pulls from the registry, even when it shares this
    /// machine's engine (as the test cluster's does), so what works here works on a real cluster.
    async fn publish(&self, image: &str) -> anyhow::Result<String> {
        let docker = crate::docker::connect_for_transfers().await?;
        let id = crate::docker::image_id(&docker, image).await?;
        let short = id.trim_start_matches("sha256:");
        let repo = image.split(':').next().unwrap_or(image);
        let reference = format!("{}/envd/{repo}:{}", self.target.registry, &short[..12]);
        let started = std::time::Instant::now();
        crate::docker::push(&docker, image, &reference).await?;
        crate::docker::untag(&docker, &reference).await?;
        crate::say!(
            "pushed {reference} in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(reference)
    }

    async fn existing(&self, name: &str) -> anyhow::Result<Option<Existing>> {
        let pod = (self.pods().get_opt(&self.pod_of(name)).await)
            .map_err(|e| self.error("cannot read the environment's pod", e))?;
        Ok(pod.map(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            Existing {
                ours: labels.get(LABEL_NAME).map(String::as_str) == Some(name)
                    && labels.get(LABEL_OWNER) == Some(&owner().0.to_string()),
                running: wait::container_running(&p) && p.metadata.deletion_timestamp.is_none(),
                image_id: p.spec.unwrap_or_default().containers[0]
                    .image
                    .clone()
                    .unwrap_or_default(),
            }
        }))
    }

    async fn create(&self, spec: &EnvSpec) -> anyhow::Result<std::time::Instant> {
        let (uid, name) = (owner().0, spec.name.as_str());
        let pod = self.pod_of(name);
        let runtime = serde_json::to_string(&spec.runtime)?;
        let manifest = manifest::pod(spec, uid, &pod, &runtime)?;
        let key = crate::host::ensure_user_key()?;
        let host_ca = manifest::host_ca_bundle(spec)?;
        self.delete_secret(&pod).await?;
        (self.secrets())
            .create(
                &PostParams::default(),
                &manifest::secret(spec, uid, &pod, &key, host_ca.as_deref()),
            )
            .await
            .map_err(|e| self.error("cannot create the environment's secret", e))?;
        let work = workdir_claim(&pod);
        let storage_class = self.target.storage_class.as_deref();
        let claim = manifest::claim(&work, name, uid, &spec.workdir, storage_class);
        self.ensure_claim(claim).await?;
        (self.pods().create(&PostParams::default(), &manifest).await)
            .map_err(|e| self.error("cannot create the environment's pod", e))?;
        let mut claim_names = vec![work.clone()];
        claim_names.extend(spec.mounts.iter().filter_map(|m| match &m.source {
            super::spec::MountSource::Volume(v) => Some(v.clone()),
            _ => None,
        }));
        let running = wait::until_running(
            &self.pods(),
            &self.claims(),
            &self.events(),
            &pod,
            &claim_names,
            START_TIMEOUT,
        )
        .await;
        if let Err(e) = running {
            let _ = self.delete_pod(&pod, Duration::ZERO).await;
            return Err(e);
        }
        let started = std::time::Instant::now();
        workdir::fill_once(self, spec, &pod, &work).await?;
        forward::spawn(&self.context, name, &pod, &Self::listens(spec))?;
        Ok(started)
    }

    async fn remove(&self, env: &Environment, grace: Duration) -> anyhow::Result<()> {
        forward::stop(&self.context, &env.name);
        let pod = self.pod_of(&env.name);
        self.delete_pod(&pod, grace).await?;
        self.delete_secret(&pod).await
    }

    async fn discard(&self, name: &str) -> anyhow::Result<()> {
        forward::stop(&self.context, name);
        let pod = self.pod_of(name);
        self.delete_pod(&pod, Duration::ZERO).await?;
        self.delete_secret(&pod).await
    }

    async fn forget(&self, name: &str) -> anyhow::Result<()> {
        forward::stop(&self.context, name);
        Ok(())
    }

    async fn ready_to_reach(&self, env: &Environment) -> anyhow::Result<Environment> {
        if env.endpoints.is_empty() && env.running() {
            self.reach_again(env).await?;
        }
        super::runner::find(self, &env.name).await
    }

    fn ssh_route(&self, env: &Environment) -> anyhow::Result<super::ssh::Route> {
        let exe = std::env::current_exe()?;
        let mut command = String::new();
        if let Some(dir) = std::env::var_os("ENVD_CONFIG_DIR") {
            command.push_str(&format!(
                "env ENVD_CONFIG_DIR={} ",
                shlex::try_quote(&dir.to_string_lossy())?
            ));
        }
        command.push_str(&format!(
            "{} kube-proxy --context {} --name {}",
            shlex::try_quote(&exe.to_string_lossy())?,
            shlex::try_quote(&self.context)?,
            shlex::try_quote(&env.name)?
        ));
        Ok(super::ssh::Route::Proxy(command))
    }

    async fn stopped(&self, env: &Environment) -> anyhow::Error {
        let pod = self.pod_of(&env.name);
        let mut first_restarts = None;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let p = match self.pods().get_opt(&pod).await {
                Ok(Some(p)) => p,
                Ok(None) => return anyhow::anyhow!("{} disappeared while starting", env.name),
                Err(_) => continue,
            };
            let status = p.status.clone().unwrap_or_default();
            let c = status.container_statuses.unwrap_or_default();
            let restarts = c.first().map(|c| c.restart_count).unwrap_or(0);
            let first = *first_restarts.get_or_insert(restarts);
            if restarts == first && wait::container_running(&p) {
                continue;
            }
            let lp = LogParams {
                container: Some(CONTAINER.into()),
                previous: restarts > first,
                tail_lines: Some(20),
                ..Default::default()
            };
            let output = self.pods().logs(&pod, &lp).await.unwrap_or_default();
            let output: String = output.lines().map(|l| format!("  {l}\n")).collect();
            return anyhow::anyhow!(
                "{} stopped while starting (its pod {pod} is {}). Its last output:\n{output}The pod is kept for inspection: envd logs --name {}; envd down --name {}",
                env.name,
                status_word(&p),
                env.name,
                env.name
            );
        }
    }

    async fn exec_capture(
        &self,
        env: &Environment,
        cmd: &[&str],
    ) -> anyhow::Result<(i64, String, String)> {
        let argv = Self::as_user(
            &cmd.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            false,
        );
        let ap = kube::api::AttachParams::default()
            .container(CONTAINER)
            .stdout(true)
            .stderr(true);
        let mut proc = (self.pods().exec(&self.pod_of(&env.name), argv, &ap).await)
            .map_err(|e| self.error("cannot run a command in the environment", e))?;
        let (mut out, mut err) = (
            proc.stdout().context("no stdout")?,
            proc.stderr().context("no stderr")?,
        );
        let status = proc.take_status().context("no status")?;
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let (r1, r2) = tokio::join!(
            tokio::io::AsyncReadExt::read_to_end(&mut out, &mut o),
            tokio::io::AsyncReadExt::read_to_end(&mut err, &mut e)
        );
        r1?;
        r2?;
        let code = exit_code(status.await);
        let _ = proc.join().await;
        Ok((
            code,
            String::from_utf8_lossy(&o).into_owned(),
            String::from_utf8_lossy(&e).into_owned(),
        ))
    }

    async fn exec(&self, env: &Environment, cmd: Vec<String>, tty: bool) -> anyhow::Result<i64> {
        if !env.running() {
            bail!(
                "{} is not running (status: {}); start it with envd up",
                env.name,
                env.status
            );
        }
        let ap = kube::api::AttachParams::default()
            .container(CONTAINER)
            .stdin(true)
            .stdout(true)
            .stderr(!tty)
            .tty(tty);
        let proc = (self
            .pods()
            .exec(&self.pod_of(&env.name), Self::as_user(&cmd, tty), &ap)
            .await)
            .map_err(|e| self.error("cannot run a command in the environment", e))?;
        workdir::attach(proc, tty).await
    }

    async fn output(
        &self,
        env: &Environment,
        follow: bool,
        tail: u32,
        sink: Sink<'_>,
    ) -> anyhow::Result<()> {
        use futures_util::AsyncBufReadExt;
        let lp = LogParams {
            container: Some(CONTAINER.into()),
            follow,
            tail_lines: (tail > 0).then_some(tail as i64),
            ..Default::default()
        };
        let stream = (self.pods().log_stream(&self.pod_of(&env.name), &lp).await)
            .map_err(|e| self.error("cannot read the environment's output", e))?;
        let mut lines = stream.lines();
        use futures_util::StreamExt;
        while let Some(line) = lines.next().await {
            writeln!(sink, "{}", line?)?;
            sink.flush()?;
        }
        Ok(())
    }

    async fn ensure_volume(&self, env: &str, key: &str, path: &str) -> anyhow::Result<String> {
        let claim = manifest::object_name(&[&self.pod_of(env), key]);
        let storage_class = self.target.storage_class.as_deref();
        let made = manifest::claim(&claim, env, owner().0, path, storage_class);
        self.ensure_claim(made).await?;
        Ok(claim)
    }

    /// The claims of this user's environment (the working directory's among them). The sizes
    /// are what each claim asked for: the cluster does not say what is used.
    async fn volumes(&self, env: &str, _sizes: bool) -> anyhow::Result<Vec<Volume>> {
        let lp = ListParams::default().labels(&selector(env, owner().0));
        let claims = (self.claims().list(&lp).await)
            .map_err(|e| self.error("cannot list the environment's volume claims", e))?;
        let mut out: Vec<Volume> = claims
            .items
            .into_iter()
            .map(|c| Volume {
                name: c.metadata.name.clone().unwrap_or_default(),
                path: (c.metadata.annotations.unwrap_or_default())
                    .get(LABEL_VOLUME_PATH)
                    .cloned()
                    .unwrap_or_default(),
                size: None,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn remove_volumes(&self, env: &str) -> anyhow::Result<Vec<String>> {
        let mut removed = Vec::new();
        for v in self.volumes(env, false).await? {
            match self
                .claims()
                .delete(&v.name, &DeleteParams::default())
                .await
            {
                Ok(_) => removed.push(v.name),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(self.error(&format!("cannot delete the claim {}", v.name), e)),
            }
        }
        Ok(removed)
    }
}

impl KubeRunner {
    async fn reach_again(&self, env: &Environment) -> anyhow::Result<()> {
        let pod = (self.pods().get_opt(&self.pod_of(&env.name)).await)
            .map_err(|e| self.error("cannot read the environment's pod", e))?
            .context("the environment's pod is gone")?;
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let runtime: Runtime = annotations
            .get(manifest::RUNTIME)
            .and_then(|r| serde_json::from_str(r).ok())
            .unwrap_or_default();
        let ports = pod.spec.unwrap_or_default().containers[0]
            .ports
            .clone()
            .unwrap_or_default();
        let listen: Vec<forward::Listen> = ports
            .iter()
            .map(|p| p.container_port as u16)
            .filter(|p| *p != SSH_PORT)
            .map(|p| forward::Listen {
                service: super::service_of_port(p, &runtime),
                container_port: p,
                host_port: if p == JUPYTER_PORT || p == VSCODE_PORT {
                    p
                } else {
                    0
                },
            })
            .collect();
        forward::spawn(&self.context, &env.name, &self.pod_of(&env.name), &listen)?;
        Ok(())
    }
}
