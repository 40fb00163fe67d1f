//! `envd`: the host command of envd-rs. It only parses the command line and dispatches to
//! [`cli`], one module per subcommand.

#![warn(missing_docs)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match cli::Cli::parse().run() {
        Ok(code) => code,
        // `envd logs | head`: the reader went away; end as tools killed by SIGPIPE do.
        Err(e) if envd_builder::print::is_broken_pipe(&e) => {
            ExitCode::from(envd_builder::print::BROKEN_PIPE_STATUS as u8)
        }
        Err(e) => {
            eprintln!("envd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
