//! `envd`: the host command of envd-rs.

use clap::{Parser, Subcommand};
use envd_builder::runtime;

/// envd: reproducible development environments from a build.envd file.
#[derive(Parser)]
#[command(name = "envd", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        path: std::path::PathBuf,
        /// FILE:FUNCTION to evaluate.
        #[arg(short, long, default_value = "build.envd:build")]
        from: envd_builder::lang::Entry,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Debug {
            what: Debug::Graph { path, from },
        } => match envd_builder::lang::evaluate(&path, &from) {
            Ok(graph) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&graph).unwrap_or_default()
                );
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("envd: {e}");
                std::process::ExitCode::FAILURE
            }
        },
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
            if ok {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
