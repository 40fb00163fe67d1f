//! `envd context`: the named builders.

use std::process::ExitCode;

use clap::Subcommand;
use envd_builder::builders::{BuilderContext, Contexts};

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
            use_it,
        } => {
            let context = BuilderContext {
                name: name.clone(),
                builder,
                builder_address: builder_address.unwrap_or_default(),
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
    envd_builder::say!("{:<2}{:<16} {:<12} ADDRESS", "", "NAME", "BUILDER");
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
        envd_builder::say!("{mark:<2}{:<16} {:<12} {address}", c.name, c.builder);
    }
}
