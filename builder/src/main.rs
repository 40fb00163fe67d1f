//! `envd`: the host command of envd-rs. It only parses the command line and dispatches to
//! [`cli`], one module per subcommand.

#![warn(missing_docs)]

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser};

fn main() -> ExitCode {
    // A shell asking for completions (the script `envd completion SHELL` prints sets this
    // variable) gets them and nothing else.
    clap_complete::CompleteEnv::with_factory(cli::Cli::command)
        .var(cli::completion::COMPLETE_VAR)
        .complete();
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
