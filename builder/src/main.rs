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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Debug { what: Debug::Runtime } => {
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
