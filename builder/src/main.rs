//! `envd`: the host command of envd-rs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use envd_builder::build::{self, Options};
use envd_builder::buildkit::connect::Builder;
use envd_builder::lang::Entry;
use envd_builder::{compile, env, runtime};
use std::io::IsTerminal;
use std::os::unix::process::CommandExt;

/// envd: reproducible development environments from a build.envd file.
#[derive(Parser)]
#[command(name = "envd", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct BuilderArgs {
    /// BuildKit to use: moby-worker (Docker's embedded BuildKit), unix or tcp (default: the
    /// current `envd context`).
    #[arg(long)]
    builder: Option<String>,
    /// unix:///path/to/buildkitd.sock or tcp://host:port (for --builder unix|tcp).
    #[arg(long, requires = "builder")]
    builder_address: Option<String>,
}

impl BuilderArgs {
    /// The builder asked for, else the current context's.
    fn resolve(&self) -> anyhow::Result<Builder> {
        match &self.builder {
            Some(b) => Builder::parse(b, self.builder_address.as_deref()),
            None => envd_builder::contexts::Contexts::load()?
                .current()
                .to_builder(),
        }
    }
}

#[derive(Subcommand)]
enum ContextCommand {
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

#[derive(Subcommand)]
enum Command {
    /// Build the environment's image from build.envd.
    Build {
        /// The build context (the directory holding the build file).
        #[arg(short, long, default_value = ".")]
        path: PathBuf,
        /// Image tag (default: NAME:dev, NAME being the directory's name).
        #[arg(short, long)]
        tag: Option<String>,
        /// FILE:FUNCTION to build.
        #[arg(short, long, default_value = "build.envd:build")]
        from: Entry,
        /// Build even when the image already matches the program.
        #[arg(long)]
        force: bool,
        /// Where the image goes: type=image[,name=N][,push=true] (default),
        /// type=docker,dest=FILE[,name=N] or type=oci,dest=FILE[,name=N].
        #[arg(short, long, default_value = "type=image")]
        output: envd_builder::output::Output,
        #[command(flatten)]
        builder: BuilderArgs,
    },
    /// Build the environment and start it: wait until every service is healthy, write the
    /// `NAME.envd` SSH entry, print every endpoint, then open a shell (unless --detach).
    Up {
        /// The build context (the directory holding the build file).
        #[arg(short, long, default_value = ".")]
        path: PathBuf,
        /// The environment's name (default: the directory's name).
        #[arg(long)]
        name: Option<String>,
        /// FILE:FUNCTION to build.
        #[arg(short, long, default_value = "build.envd:build")]
        from: Entry,
        /// Do not open a shell once the environment is up.
        #[arg(short, long)]
        detach: bool,
        /// Rebuild the image and recreate the container.
        #[arg(long)]
        force: bool,
        /// Extra mounts, HOST:CONTAINER[:ro].
        #[arg(short, long = "volume")]
        volume: Vec<String>,
        /// How long to wait for every service to be healthy.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        #[command(flatten)]
        builder: BuilderArgs,
    },
    /// List environments with their services' health and endpoints.
    Ls {
        /// table or json.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Show one environment: endpoints, ports, services, commands.
    Describe {
        /// The environment.
        #[arg(short, long)]
        name: String,
    },
    /// Show a service's log (through envd-init), or envd-init's own output without a service.
    Logs {
        /// The environment.
        #[arg(short, long)]
        name: String,
        /// The service (sshd, jupyter, daemon_0, ...).
        service: Option<String>,
        /// Keep following.
        #[arg(short, long)]
        follow: bool,
        /// Lines from the end (0: all that is kept).
        #[arg(long, default_value_t = 100)]
        tail: u32,
    },
    /// Run a command in the environment's working directory (no command: the user's login shell).
    Exec {
        /// The environment.
        #[arg(short, long)]
        name: String,
        /// Run this runtime.command from build.envd instead.
        #[arg(long, conflicts_with = "cmd")]
        command: Option<String>,
        /// Give the command a terminal (the default when stdin and stdout are terminals).
        #[arg(short = 't', long, conflicts_with = "no_tty")]
        tty: bool,
        /// Never give the command a terminal.
        #[arg(short = 'T', long)]
        no_tty: bool,
        /// The command and its arguments.
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// Remove the environment's container and its SSH entry.
    #[command(alias = "destroy")]
    Down {
        /// The environment.
        #[arg(short, long, conflicts_with = "path")]
        name: Option<String>,
        /// The build context whose environment goes (its name is the directory's).
        #[arg(short, long)]
        path: Option<PathBuf>,
        /// Also remove the environment's named volumes (its caches, `runtime.mount(volume=...)`),
        /// which are otherwise kept for the next `envd up`.
        #[arg(long)]
        volumes: bool,
    },
    /// Manage builder contexts (which BuildKit `envd build` and `envd up` use).
    Context {
        #[command(subcommand)]
        what: ContextCommand,
    },
    /// Developer diagnostics.
    Debug {
        #[command(subcommand)]
        what: Debug,
    },
}

#[derive(Subcommand)]
enum Debug {
    /// Show where the in-container runtime (envd-init, envd-sshd) is and check it is static.
    Runtime,
    /// Evaluate build.envd and print the resulting graph as JSON (no BuildKit involved).
    Graph {
        /// The build context (the directory holding the build file).
        #[arg(short, long, default_value = ".")]
        path: PathBuf,
        /// FILE:FUNCTION to evaluate.
        #[arg(short, long, default_value = "build.envd:build")]
        from: Entry,
    },
    /// Evaluate and compile build.envd, and print every LLB op and the image config.
    Llb {
        /// The build context.
        #[arg(short, long, default_value = ".")]
        path: PathBuf,
        /// FILE:FUNCTION to compile.
        #[arg(short, long, default_value = "build.envd:build")]
        from: Entry,
        /// Print a Graphviz graph of the ops instead of the listing.
        #[arg(long)]
        dot: bool,
    },
}

fn main() -> ExitCode {
    // `envd ... | head` ends quietly, as other command-line tools do. SIGPIPE stays ignored (a
    // peer closing a socket must be an error, not death: Docker's port proxy does that while a
    // container starts), so a closed stdout shows up as println!'s panic, turned here into the
    // exit status a shell expects.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to std") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info)
    }));
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("envd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn tokio() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up {
            path,
            name,
            from,
            detach,
            force,
            volume,
            timeout,
            builder,
        } => {
            let volumes = volume
                .iter()
                .map(|v| env::up::parse_volume(v))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let name = match name {
                Some(n) => n,
                None => build::env_name(&path),
            };
            let opts = env::up::UpOptions {
                build: Options {
                    path,
                    from,
                    tag: None,
                    force,
                    name: None,
                    output: Default::default(),
                    builder: builder.resolve()?,
                },
                volumes,
                timeout,
                recreate: force,
            };
            let up = tokio()?.block_on(env::up::up(
                &opts,
                &name,
                build::progress_display(),
                |s, at| {
                    println!(
                        "[{:>5.1}s] {:<12} {}",
                        at.as_secs_f64(),
                        s.name,
                        env::health::describe(s)
                    )
                },
            ))?;
            println!();
            if up.build.up_to_date {
                println!("image {}: up to date, nothing built", up.build.tag);
            } else {
                println!(
                    "image {}: built in {:.1}s",
                    up.build.tag,
                    up.build.elapsed.as_secs_f64()
                );
            }
            println!(
                "{name} is up ({}; every service healthy {:.2}s after the start{}).",
                if up.reused {
                    "kept the running container"
                } else {
                    "new container"
                },
                up.all_ready.as_secs_f64(),
                up.ssh_ready
                    .map(|d| format!(", sshd after {:.2}s", d.as_secs_f64()))
                    .unwrap_or_default()
            );
            for l in env::commands::endpoint_lines(&up.env) {
                println!("  {l}");
            }
            println!("  down:     envd down --name {name}");
            if detach {
                return Ok(ExitCode::SUCCESS);
            }
            if !std::io::stdin().is_terminal() {
                println!("(stdin is not a terminal: not opening a shell; use ssh {name}.envd)");
                return Ok(ExitCode::SUCCESS);
            }
            let err = std::process::Command::new("ssh")
                .arg(env::ssh::host_alias(&name))
                .exec();
            anyhow::bail!("cannot run ssh: {err}")
        }
        Command::Context { what } => {
            use envd_builder::contexts::{Context, Contexts};
            let mut all = Contexts::load()?;
            match what {
                ContextCommand::Create {
                    name,
                    builder,
                    builder_address,
                    use_it,
                } => {
                    all.create(
                        Context {
                            name: name.clone(),
                            builder,
                            builder_address: builder_address.unwrap_or_default(),
                        },
                        use_it,
                    )?;
                    all.save()?;
                    println!(
                        "context {name:?} created{}",
                        if use_it { " and in use" } else { "" }
                    );
                }
                ContextCommand::Ls => {
                    println!("{:<2}{:<16} {:<12} ADDRESS", "", "NAME", "BUILDER");
                    for c in &all.contexts {
                        let mark = if c.name == all.current { "*" } else { "" };
                        let address = if c.builder_address.is_empty() && c.builder == "moby-worker"
                        {
                            format!(
                                "unix://{}",
                                envd_builder::buildkit::connect::docker_socket()
                            )
                        } else {
                            c.builder_address.clone()
                        };
                        println!("{mark:<2}{:<16} {:<12} {address}", c.name, c.builder);
                    }
                }
                ContextCommand::Use { name } => {
                    all.use_context(&name)?;
                    all.save()?;
                    println!("now using context {name:?}");
                }
                ContextCommand::Rm { name } => {
                    all.remove(&name)?;
                    all.save()?;
                    println!("context {name:?} removed");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ls { format } => {
            let rows = tokio()?.block_on(env::commands::rows())?;
            if format == "json" {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                env::commands::print_table(&rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Describe { name } => {
            tokio()?.block_on(env::commands::describe(&name))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs {
            name,
            service,
            follow,
            tail,
        } => {
            tokio()?.block_on(env::commands::logs(&name, service.as_deref(), follow, tail))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec {
            name,
            command,
            tty,
            no_tty,
            cmd,
        } => {
            let tty = tty
                || (!no_tty && std::io::stdin().is_terminal() && std::io::stdout().is_terminal());
            let rt = tokio()?;
            let code = rt.block_on(async {
                let docker = env::docker().await?;
                let e = env::find(&docker, &name).await?;
                let argv = match command {
                    Some(c) => {
                        let Some(script) = e.commands.get(&c) else {
                            let names: Vec<&str> = e.commands.keys().map(String::as_str).collect();
                            anyhow::bail!(
                                "{name} has no runtime.command named {c:?}{}",
                                if names.is_empty() {
                                    " (build.envd defines none)".to_string()
                                } else {
                                    format!("; it has: {}", names.join(", "))
                                }
                            );
                        };
                        vec!["/bin/bash".into(), "-lc".into(), script.clone()]
                    }
                    // The login shell of the container's user, as `ssh NAME.envd` would give.
                    None if cmd.is_empty() => vec![
                        "/bin/sh".into(),
                        "-c".into(),
                        r#"s=$(getent passwd "$USER" | cut -d: -f7); exec "${s:-/bin/sh}" -l"#
                            .into(),
                    ],
                    None => cmd,
                };
                env::commands::exec(&e, argv, tty).await
            })?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Command::Down {
            name,
            path,
            volumes,
        } => {
            let name = match (name, path) {
                (Some(n), _) => n,
                (None, Some(p)) => build::env_name(&p),
                (None, None) => build::env_name(std::path::Path::new(".")),
            };
            let kept = tokio()?.block_on(env::commands::down(&name, volumes))?;
            println!("{name} is down: container and SSH entry removed");
            if !kept.is_empty() {
                println!(
                    "kept its volumes for the next envd up ({}); envd down --name {name} --volumes removes them",
                    kept.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Build {
            path,
            tag,
            from,
            force,
            output,
            builder,
        } => {
            let opts = Options {
                path,
                from,
                tag,
                force,
                name: None,
                output,
                builder: builder.resolve()?,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let outcome = rt.block_on(build::build(&opts, build::progress_display()))?;
            if outcome.up_to_date {
                println!(
                    "{} is up to date (program {}); nothing to build ({:.2}s). Use --force to rebuild.",
                    outcome.tag,
                    &outcome.program_hash[..12],
                    outcome.elapsed.as_secs_f64()
                );
            } else {
                println!(
                    "built {} {} in {:.1}s",
                    outcome.tag,
                    outcome.digest,
                    outcome.elapsed.as_secs_f64()
                );
            }
            if let Some(note) = &outcome.output_note {
                println!("{note}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Debug {
            what: Debug::Graph { path, from },
        } => {
            let graph = envd_builder::lang::evaluate(&path, &from)?;
            println!("{}", serde_json::to_string_pretty(&graph)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Debug {
            what: Debug::Llb { path, from, dot },
        } => {
            let graph = envd_builder::lang::evaluate(&path, &from)?;
            let context = envd_builder::context::collect(&path, &graph)?;
            let compiled = compile::compile(
                &graph,
                &compile::Context {
                    env_name: build::env_name(&path),
                    runtime_image: Some("envd-rs/runtime:<hash of envd-init and envd-sshd>".into()),
                    program_hash: build::program_hash(&graph, "", &build::env_name(&path)),
                    host_ca: build::host_ca_bundle(),
                    context_image: (!context.is_empty()).then(|| context.image()),
                    workdir_name: build::workdir_name(&path),
                },
            )?;
            if dot {
                print!(
                    "{}",
                    envd_builder::buildkit::llb::describe_dot(&compiled.definition)
                );
                return Ok(ExitCode::SUCCESS);
            }
            print!(
                "{}",
                envd_builder::buildkit::llb::describe(&compiled.definition)
            );
            let config: serde_json::Value = serde_json::from_slice(&compiled.config)?;
            println!("image config: {}", serde_json::to_string_pretty(&config)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Debug {
            what: Debug::Runtime,
        } => {
            let mut ok = true;
            for bin in runtime::RUNTIME_BINARIES {
                match runtime::locate(bin) {
                    Ok(path) => println!("{bin}: {} (static)", path.display()),
                    Err(e) => {
                        ok = false;
                        eprintln!("envd: {e}");
                    }
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
