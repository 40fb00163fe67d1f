//! `envd`: the host command of envd-rs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use envd_builder::build::{self, Options};
use envd_builder::buildkit::connect::Builder;
use envd_builder::lang::Entry;
use envd_builder::{compile, runtime};

/// envd: reproducible development environments from a build.envd file.
#[derive(Parser)]
#[command(name = "envd", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct BuilderArgs {
    /// BuildKit to use: moby-worker (Docker's embedded BuildKit), unix or tcp.
    #[arg(long, default_value = "moby-worker")]
    builder: String,
    /// unix:///path/to/buildkitd.sock or tcp://host:port (for --builder unix|tcp).
    #[arg(long)]
    builder_address: Option<String>,
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
        #[command(flatten)]
        builder: BuilderArgs,
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("envd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Build {
            path,
            tag,
            from,
            force,
            builder,
        } => {
            let opts = Options {
                path,
                from,
                tag,
                force,
                builder: Builder::parse(&builder.builder, builder.builder_address.as_deref())?,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let outcome = rt.block_on(build::build(&opts, build::print_progress))?;
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
            what: Debug::Llb { path, from },
        } => {
            let graph = envd_builder::lang::evaluate(&path, &from)?;
            let (uid, gid) = build::user_ids();
            let compiled = compile::compile(
                &graph,
                &compile::Context {
                    env_name: build::env_name(&path),
                    uid,
                    gid,
                    runtime_image: Some("envd-rs/runtime:<hash of envd-init and envd-sshd>".into()),
                    program_hash: build::program_hash(
                        &graph,
                        "",
                        &build::env_name(&path),
                        (uid, gid),
                    ),
                    host_ca: build::host_ca_bundle(),
                },
            )?;
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
