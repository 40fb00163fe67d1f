//! The commands on a running environment: `envd ls`, `describe`, `logs`, `exec`, `down`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::engine::ArgValueCandidates;
use envd_builder::env::runner::Runner;
use envd_builder::{build, env};

/// `envd ls`'s flags.
#[derive(clap::Args)]
pub struct LsArgs {
    /// table or json.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
}

/// `envd describe`'s flags.
#[derive(clap::Args)]
pub struct DescribeArgs {
    /// The environment.
    #[arg(short, long, add = ArgValueCandidates::new(super::completion::environment_names))]
    name: String,
}

/// `envd logs`'s flags.
#[derive(clap::Args)]
pub struct LogsArgs {
    /// The environment.
    #[arg(short, long, add = ArgValueCandidates::new(super::completion::environment_names))]
    name: String,
    /// The service (sshd, jupyter, daemon_0, ...).
    service: Option<String>,
    /// Keep following.
    #[arg(short, long)]
    follow: bool,
    /// Lines from the end (0: all that is kept).
    #[arg(long, default_value_t = 100)]
    tail: u32,
}

/// `envd exec`'s flags.
#[derive(clap::Args)]
pub struct ExecArgs {
    /// The environment.
    #[arg(short, long, add = ArgValueCandidates::new(super::completion::environment_names))]
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
}

/// `envd down`'s flags.
#[derive(clap::Args)]
pub struct DownArgs {
    /// The environment.
    #[arg(short, long, conflicts_with = "path", add = ArgValueCandidates::new(super::completion::environment_names))]
    name: Option<String>,
    /// The build context whose environment goes (its name is the directory's).
    #[arg(short, long)]
    path: Option<PathBuf>,
    /// Also remove the environment's named volumes (its caches, `runtime.mount(volume=...)`),
    /// which are otherwise kept for the next `envd up`.
    #[arg(long)]
    volumes: bool,
}

/// Lists the caller's environments.
pub fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let rows = super::tokio()?.block_on(env::commands::rows())?;
    if args.format == "json" {
        envd_builder::say!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        env::commands::print_table(&rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// Shows one environment.
pub fn describe(args: DescribeArgs) -> anyhow::Result<ExitCode> {
    super::tokio()?.block_on(env::commands::describe(&args.name))?;
    Ok(ExitCode::SUCCESS)
}

/// Shows (or follows) a log.
pub fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let service = args.service.as_deref();
    super::tokio()?.block_on(env::commands::logs(
        &args.name,
        service,
        args.follow,
        args.tail,
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs a command, a named `runtime.command` or the login shell; exits with its code.
pub fn exec(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let terminals = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let tty = args.tty || (!args.no_tty && terminals);
    let code = super::tokio()?.block_on(async {
        let runner = env::runner::default_runner().await?;
        let e = env::runner::find(&runner, &args.name).await?;
        let argv = exec_argv(&e, args.command, args.cmd)?;
        runner.exec(&e, argv, tty).await
    })?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// What `envd exec` runs: the named command's script, the given argv, or the login shell of the
/// container's user (as `ssh NAME.envd` would give).
fn exec_argv(
    e: &env::Environment,
    command: Option<String>,
    cmd: Vec<String>,
) -> anyhow::Result<Vec<String>> {
    let Some(c) = command else {
        if !cmd.is_empty() {
            return Ok(cmd);
        }
        let login_shell = r#"s=$(getent passwd "$USER" | cut -d: -f7); exec "${s:-/bin/sh}" -l"#;
        return Ok(vec!["/bin/sh".into(), "-c".into(), login_shell.into()]);
    };
    let Some(script) = e.commands.get(&c) else {
        let names: Vec<&str> = e.commands.keys().map(String::as_str).collect();
        let has = if names.is_empty() {
            " (build.envd defines none)".to_string()
        } else {
            format!("; it has: {}", names.join(", "))
        };
        anyhow::bail!("{} has no runtime.command named {c:?}{has}", e.name);
    };
    Ok(vec!["/bin/bash".into(), "-lc".into(), script.clone()])
}

/// Stops and removes the environment; says which volumes were kept.
pub fn down(args: DownArgs) -> anyhow::Result<ExitCode> {
    let name = match (args.name, args.path) {
        (Some(n), _) => n,
        (None, Some(p)) => build::env_name(&p),
        (None, None) => build::env_name(Path::new(".")),
    };
    let kept = super::tokio()?.block_on(env::commands::down(&name, args.volumes))?;
    envd_builder::say!("{name} is down: removed, with its SSH entry");
    if !kept.is_empty() {
        envd_builder::say!(
            "kept its volumes for the next envd up ({}); envd down --name {name} --volumes removes them",
            kept.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
