//! `envd debug`: what the builder sees and makes, without building.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use envd_builder::buildkit::llb;
use envd_builder::lang::Entry;
use envd_builder::{build, runtime};

/// `envd debug`'s subcommands.
#[derive(Subcommand)]
pub enum Command {
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
    /// Evaluate and compile build.envd as `envd build` would, and print every LLB op, the image
    /// config and the program hash the image is labelled with.
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
        /// Compile as for a BuildKit with MergeOp (>= 0.10, e.g. a standalone buildkitd or
        /// Docker 23+): the VS Code server, downloads and runtime files as merged layers.
        #[arg(long)]
        merge: bool,
        /// Compile as for a standalone buildkitd: files from the build's session (`local://`).
        #[arg(long)]
        session: bool,
    },
}

/// Runs one diagnostic.
pub fn run(what: Command) -> anyhow::Result<ExitCode> {
    match what {
        Command::Runtime => Ok(check_runtime()),
        Command::Graph { path, from } => {
            let graph = envd_builder::lang::evaluate(&path, &from)?;
            envd_builder::say!("{}", serde_json::to_string_pretty(&graph)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Llb {
            path,
            from,
            dot,
            merge,
            session,
        } => {
            let features = build::BuilderFeatures { session, merge };
            let plan = build::plan(&path, &from, None, features)?;
            let definition = &plan.compiled.definition;
            if dot {
                envd_builder::say_raw!("{}", llb::describe_dot(definition));
                return Ok(ExitCode::SUCCESS);
            }
            envd_builder::say_raw!("{}", llb::describe(definition));
            let config: serde_json::Value = serde_json::from_slice(&plan.compiled.config)?;
            envd_builder::say!("image config: {}", serde_json::to_string_pretty(&config)?);
            envd_builder::say!("program: {}", plan.program_hash);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Locates each runtime binary and checks it is static.
fn check_runtime() -> ExitCode {
    let mut ok = true;
    for bin in runtime::RUNTIME_BINARIES {
        match runtime::locate(bin) {
            Ok(path) => envd_builder::say!("{bin}: {} (static)", path.display()),
            Err(e) => {
                ok = false;
                eprintln!("envd: {e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
