//! `envd`: the host command of envd-rs. It only parses the command line and dispatches to
//! [`cli`], one module per subcommand.

#![warn(missing_docs)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    exit_quietly_on_closed_stdout();
    match cli::Cli::parse().run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("envd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `envd ... | head` ends quietly, as other command-line tools do. SIGPIPE stays ignored (a
/// peer closing a socket must be an error, not death: Docker's port proxy does that while a
/// container starts), so a closed stdout shows up as println!'s panic, turned here into the
/// exit status a shell expects.
fn exit_quietly_on_closed_stdout() {
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
}
