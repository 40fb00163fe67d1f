//! `envd build`.

use std::path::PathBuf;
use std::process::ExitCode;

use envd_builder::build::{self, Options};
use envd_builder::lang::Entry;

/// `envd build`'s flags.
#[derive(clap::Args)]
pub struct Args {
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
    builder: super::BuilderArgs,
}

/// Builds, or says the image is up to date.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = Options {
        path: args.path,
        from: args.from,
        tag: args.tag,
        force: args.force,
        name: None,
        output: args.output,
        builder: args.builder.resolve()?,
        registry: args.builder.registry()?,
    };
    let outcome = super::tokio()?.block_on(build::build(&opts, build::progress_display()))?;
    if outcome.up_to_date {
        envd_builder::say!(
            "{} is up to date (program {}); nothing to build ({:.2}s). Use --force to rebuild.",
            outcome.tag,
            &outcome.program_hash[..12],
            outcome.elapsed.as_secs_f64()
        );
    } else {
        envd_builder::say!(
            "built {} {} in {:.1}s",
            outcome.tag,
            outcome.digest,
            outcome.elapsed.as_secs_f64()
        );
    }
    if let Some(note) = &outcome.output_note {
        envd_builder::say!("{note}");
    }
    Ok(ExitCode::SUCCESS)
}
