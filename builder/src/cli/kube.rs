//! The two commands `envd` runs for itself to reach environments on a cluster: `kube-proxy`
//! (`ssh`'s ProxyCommand) and `kube-forward` (the detached port forwarder). Hidden from help.

use std::process::ExitCode;

use envd_builder::builders::Contexts;
use envd_builder::env::kube::{forward, KubeRunner};
use envd_builder::env::runner::{runner_of, AnyRunner};

/// `envd kube-proxy`'s flags.
#[derive(clap::Args)]
pub struct ProxyArgs {
    /// The context the environment runs in.
    #[arg(long)]
    context: String,
    /// The environment.
    #[arg(long)]
    name: String,
}

/// `envd kube-forward`'s flags.
#[derive(clap::Args)]
pub struct ForwardArgs {
    /// The context the environment runs in.
    #[arg(long)]
    context: String,
    /// The environment.
    #[arg(long)]
    name: String,
    /// Its pod.
    #[arg(long)]
    pod: String,
    /// SERVICE:CONTAINER_PORT:HOST_PORT, once per port.
    #[arg(long)]
    listen: Vec<forward::Listen>,
}

async fn kube_runner(context: &str) -> anyhow::Result<KubeRunner> {
    let contexts = Contexts::load()?;
    let Some(c) = contexts.get(context) else {
        anyhow::bail!("there is no context named {context:?}");
    };
    match runner_of(c).await? {
        AnyRunner::Kube(k) => Ok(*k),
        AnyRunner::Docker(_) => anyhow::bail!("context {context:?} does not run on Kubernetes"),
    }
}

/// Relays stdin and stdout to the environment's sshd.
pub fn proxy(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    super::tokio()?.block_on(async {
        let runner = kube_runner(&args.context).await?;
        let pod = runner.pod_of(&args.name);
        forward::proxy(runner.pod_api(), &pod, envd_builder::contract::SSH_PORT).await
    })?;
    // stdin's reader thread may still wait for input: leave without it.
    std::process::exit(0)
}

/// Serves the environment's ports on 127.0.0.1 until the pod is gone or SIGTERM.
pub fn serve(args: ForwardArgs) -> anyhow::Result<ExitCode> {
    super::tokio()?.block_on(async {
        let runner = kube_runner(&args.context).await?;
        forward::serve(
            runner.pod_api(),
            &args.context,
            &args.name,
            &args.pod,
            &args.listen,
        )
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}
