//! `envd completion SHELL` and `envd man`: shell completion and man pages, both made from the
//! one CLI definition ([`super::Cli`]) by clap's generators.
//!
//! Completion is dynamic: the script a shell sources calls `envd` back (with `ENVD_COMPLETE`
//! set, see `main`) for each completion, so subcommands and flags are always those of the
//! installed `envd`, and `--name` offers the environments there are now.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::engine::CompletionCandidate;
use clap_complete::env::EnvCompleter as _;

/// The variable that turns a run of `envd` into a completion request.
pub const COMPLETE_VAR: &str = "ENVD_COMPLETE";

/// Shells with a completion script.
#[derive(clap::ValueEnum, Clone, Copy)]
pub enum Shell {
    /// `source <(envd completion bash)` in ~/.bashrc.
    Bash,
    /// `source <(envd completion zsh)` in ~/.zshrc.
    Zsh,
    /// `envd completion fish | source` in ~/.config/fish/config.fish.
    Fish,
    /// `eval (envd completion elvish | slurp)` in rc.elv.
    Elvish,
    /// `envd completion powershell | Out-String | Invoke-Expression` in $PROFILE.
    Powershell,
}

/// `envd completion`'s flags.
#[derive(clap::Args)]
pub struct CompletionArgs {
    /// The shell to print the script for.
    shell: Shell,
}

/// `envd man`'s flags.
#[derive(clap::Args)]
pub struct ManArgs {
    /// Where to write `envd.1` and one page per subcommand (`envd-up.1`, `envd-context-create.1`).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

/// Prints the script that registers `envd`'s completion in `shell`.
pub fn completion(args: CompletionArgs) -> anyhow::Result<ExitCode> {
    use clap_complete::env::{Bash, Elvish, Fish, Powershell, Zsh};
    // The script calls this very binary back, so it completes even when envd is not on PATH.
    let me = std::env::current_exe().context("cannot find envd's own path")?;
    let me = me.to_string_lossy();
    let mut script = Vec::new();
    let (var, name, bin) = (COMPLETE_VAR, "envd", "envd");
    match args.shell {
        Shell::Bash => Bash.write_registration(var, name, bin, &me, &mut script),
        Shell::Zsh => Zsh.write_registration(var, name, bin, &me, &mut script),
        Shell::Fish => Fish.write_registration(var, name, bin, &me, &mut script),
        Shell::Elvish => Elvish.write_registration(var, name, bin, &me, &mut script),
        Shell::Powershell => Powershell.write_registration(var, name, bin, &me, &mut script),
    }?;
    envd_builder::say_raw!("{}", String::from_utf8_lossy(&script));
    Ok(ExitCode::SUCCESS)
}

/// Writes the man pages into `args.dir`.
pub fn man(args: ManArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let mut cli = super::Cli::command();
    cli.build();
    let written = write_pages(&cli, "envd", &args.dir)?;
    envd_builder::say!("wrote {written} man pages into {}", args.dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Writes `name.1` for `cmd` and a page for each visible subcommand below it; returns how many.
fn write_pages(cmd: &clap::Command, name: &str, dir: &Path) -> anyhow::Result<usize> {
    let page = cmd.clone().name(name.to_string());
    let path = dir.join(format!("{name}.1"));
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
    let mut written = 1;
    // clap's own `help` subcommand has no page: `envd help X` is `envd X --help`.
    let documented = |s: &&clap::Command| !s.is_hide_set() && s.get_name() != "help";
    for sub in cmd.get_subcommands().filter(documented) {
        let sub_name = format!("{name}-{}", sub.get_name());
        written += write_pages(sub, &sub_name, dir)?;
    }
    Ok(written)
}

/// The names of the environments of the current context, for `--name`. A completion must not
/// hang or print errors: an engine or cluster that does not answer within 3 s gives none.
pub fn environment_names() -> Vec<CompletionCandidate> {
    let list = async {
        use envd_builder::env::runner::Runner as _;
        let runner = envd_builder::env::runner::default_runner().await?;
        runner.list().await
    };
    let Ok(runtime) = super::tokio() else {
        return Vec::new();
    };
    let limit = std::time::Duration::from_secs(3);
    let timed = runtime.block_on(async { tokio::time::timeout(limit, list).await });
    match timed {
        Ok(Ok(envs)) => envs
            .into_iter()
            .map(|e| CompletionCandidate::new(e.name).help(Some(e.image.into())))
            .collect(),
        _ => Vec::new(),
    }
}
