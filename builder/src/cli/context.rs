//! `envd context`: the named builders.

use std::process::ExitCode;

use clap::Subcommand;
use envd_builder::builders::{BuilderContext, Contexts};
use envd_builder::env::kube::KubeTarget;

/// `envd context`'s subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Add a named builder.
    Create {
        /// Its name.
        #[arg(long)]
        name: String,
        /// moby-worker, unix or tcp.
        #[arg(long)]
        builder: String,
        /// unix:///path/to/buildkitd.sock or tcp://host:port.
        #[arg(long)]
        builder_address: Option<String>,
        /// Where environments run: docker (the local engine) or kubernetes.
        #[arg(long, default_value = "docker", value_parser = ["docker", "kubernetes"])]
        runner: String,
        /// The cluster's kubeconfig (default: $KUBECONFIG, else ~/.kube/config).
        #[arg(long, requires = "registry")]
        kubeconfig: Option<std::path::PathBuf>,
        /// The namespace (default: the kubeconfig context's, else `default`).
        #[arg(long, requires = "registry")]
        namespace: Option<String>,
        /// HOST[:PORT] of the registry images are pushed to and the nodes pull from (kubernetes),
        /// or that a unix/tcp builder's images reach the local engine through (docker).
        #[arg(long)]
        registry: Option<String>,
        /// The storage class of the environments' volume claims (default: the cluster's).
        #[arg(long, requires = "registry")]
        storage_class: Option<String>,
        /// Make it the current context.
        #[arg(long = "use")]
        use_it: bool,
    },
    /// List contexts; `*` marks the current one.
    Ls,
    /// Make a context current.
    Use {
        /// The context.
        #[arg(long)]
        name: String,
    },
    /// Remove a context.
    Rm {
        /// The context.
        #[arg(long)]
        name: String,
    },
}

/// Changes or lists the contexts.
pub fn run(what: Command) -> anyhow::Result<ExitCode> {
    let mut all = Contexts::load()?;
    match what {
        Command::Create {
            name,
            builder,
            builder_address,
            runner,
            kubeconfig,
            namespace,
            registry,
            storage_class,
            use_it,
        } => {
            let kube_only = kubeconfig.is_some() || namespace.is_some() || storage_class.is_some();
            let (kubernetes, registry) = match (runner.as_str(), registry) {
                ("kubernetes", Some(registry)) => {
                    let target = KubeTarget {
                        kubeconfig: kubeconfig.map(std::path::absolute).transpose()?,
                        namespace,
                        registry,
                        storage_class,
                    };
                    (Some(target), None)
                }
                ("kubernetes", None) => anyhow::bail!(
                    "--runner kubernetes needs --registry HOST[:PORT]: the cluster's nodes pull the environment's image from there"
                ),
                _ if kube_only => anyhow::bail!("--kubeconfig, --namespace and --storage-class are for --runner kubernetes"),
                (_, Some(_)) if builder == "moby-worker" => anyhow::bail!(
                    "--registry is for a unix or tcp builder: Docker's own BuildKit (moby-worker) writes images into the engine directly"
                ),
                (_, registry) => (None, registry),
            };
            let context = BuilderContext {
                name: name.clone(),
                builder,
                builder_address: builder_address.unwrap_or_default(),
                registry,
                kubernetes,
            };
            all.create(context, use_it)?;
            all.save()?;
            let in_use = if use_it { " and in use" } else { "" };
            envd_builder::say!("context {name:?} created{in_use}");
        }
        Command::Ls => print_table(&all),
        Command::Use { name } => {
            all.use_context(&name)?;
            all.save()?;
            envd_builder::say!("now using context {name:?}");
        }
        Command::Rm { name } => {
            all.remove(&name)?;
            all.save()?;
            envd_builder::say!("context {name:?} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(all: &Contexts) {
    envd_builder::say!(
        "{:<2}{:<16} {:<12} {:<40} RUNNER",
        "",
        "NAME",
        "BUILDER",
        "ADDRESS"
    );
    for c in &all.contexts {
        let mark = if c.name == all.current { "*" } else { "" };
        let address = if c.builder_address.is_empty() && c.builder == "moby-worker" {
            format!(
                "unix://{}",
                envd_builder::buildkit::connect::docker_socket()
            )
        } else {
            c.builder_address.clone()
        };
        let runner = match &c.kubernetes {
            Some(k) => format!(
                "kubernetes ({}, namespace {}, registry {})",
                k.kubeconfig_path().display(),
                k.namespace.as_deref().unwrap_or("from the kubeconfig"),
                k.registry
            ),
            None => match &c.registry {
                Some(r) => format!("docker (images through {r})"),
                None => "docker".to_string(),
            },
        };
        envd_builder::say!(
            "{mark:<2}{:<16} {:<12} {address:<40} {runner}",
            c.name,
            c.builder
        );
    }
}
