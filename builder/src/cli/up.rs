//! `envd up`.

use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

use envd_builder::build::{self, Options};
use envd_builder::env;
use envd_builder::lang::Entry;

/// `envd up`'s flags.
#[derive(clap::Args)]
pub struct Args {
    /// The build context (the directory holding the build file).
    #[arg(short, long, default_value = ".")]
    path: PathBuf,
    /// The environment's name (default: the directory's name).
    #[arg(long)]
    name: Option<String>,
    /// FILE:FUNCTION to build.
    #[arg(short, long, default_value = "build.envd:build")]
    from: Entry,
    /// Do not open a shell once the environment is up.
    #[arg(short, long)]
    detach: bool,
    /// Rebuild the image and recreate the container.
    #[arg(long)]
    force: bool,
    /// Extra mounts, HOST:CONTAINER[:ro].
    #[arg(short, long = "volume")]
    volume: Vec<String>,
    /// How long to wait for every service to be healthy.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
    /// CPUs the environment may use (e.g. 1.5).
    #[arg(long, value_parser = parse_cpus)]
    cpus: Option<String>,
    /// Memory the environment may use: bytes, or with a unit (512Mi, 4Gi, 2G).
    #[arg(long, value_parser = parse_memory)]
    memory: Option<i64>,
    #[command(flatten)]
    builder: super::BuilderArgs,
}

fn parse_cpus(s: &str) -> Result<String, String> {
    match s.parse::<f64>() {
        Ok(c) if c > 0.0 && c.is_finite() => Ok(s.to_string()),
        _ => Err(format!(
            "expected a positive number of CPUs such as 2 or 0.5, got {s:?}"
        )),
    }
}

/// `4Gi`, `512Mi`, `2G`, `1000` (bytes).
fn parse_memory(s: &str) -> Result<i64, String> {
    let units = [
        ("Ki", 1i64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1000),
        ("K", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (number, factor) = units
        .iter()
        .find_map(|(u, f)| s.strip_suffix(u).map(|n| (n, *f)))
        .unwrap_or((s, 1));
    match number.parse::<i64>() {
        Ok(n) if n > 0 => n
            .checked_mul(factor)
            .ok_or_else(|| format!("{s:?} is too large")),
        _ => Err(format!(
            "expected a size such as 4Gi, 512Mi or 2G, got {s:?}"
        )),
    }
}

/// Builds, starts, prints the endpoints, then opens `ssh NAME.envd` unless detached.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let volumes = args
        .volume
        .iter()
        .map(|v| env::spec::parse_volume(v))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let name = args.name.unwrap_or_else(|| build::env_name(&args.path));
    let opts = env::up::UpOptions {
        build: Options {
            path: args.path,
            from: args.from,
            tag: None,
            force: args.force,
            name: None,
            output: Default::default(),
            builder: args.builder.resolve()?,
            registry: args.builder.registry()?,
        },
        volumes,
        timeout: args.timeout,
        recreate: args.force,
        cpus: args.cpus,
        memory_bytes: args.memory,
    };
    let show_service = |s: &envd_supervisor::proto::supervisor::ServiceStatus,
                        at: std::time::Duration| {
        let state = env::health::describe(s);
        envd_builder::say!("[{:>5.1}s] {:<12} {state}", at.as_secs_f64(), s.name)
    };
    let up = super::tokio()?.block_on(env::up::up(
        &opts,
        &name,
        build::progress_display(),
        show_service,
    ))?;
    print_summary(&name, &up);
    if args.detach {
        return Ok(ExitCode::SUCCESS);
    }
    if !std::io::stdin().is_terminal() {
        envd_builder::say!("(stdin is not a terminal: not opening a shell; use ssh {name}.envd)");
        return Ok(ExitCode::SUCCESS);
    }
    let mut ssh = std::process::Command::new("ssh");
    // The configuration envd wrote the entry's Include into, when it is not OpenSSH's default.
    if let Some(config) = std::env::var_os("ENVD_SSH_CONFIG") {
        ssh.arg("-F").arg(config);
    }
    let err = ssh.arg(env::ssh::host_alias(&name)).exec();
    anyhow::bail!("cannot run ssh: {err}")
}

/// What was built, how the start went, and every endpoint.
fn print_summary(name: &str, up: &env::up::Up) {
    envd_builder::say!();
    if up.build.up_to_date {
        envd_builder::say!("image {}: up to date, nothing built", up.build.tag);
    } else {
        let secs = up.build.elapsed.as_secs_f64();
        envd_builder::say!("image {}: built in {secs:.1}s", up.build.tag);
    }
    let container = if up.reused {
        "kept the running container"
    } else {
        "new container"
    };
    let sshd = up
        .ssh_ready
        .map(|d| format!(", sshd after {:.2}s", d.as_secs_f64()))
        .unwrap_or_default();
    envd_builder::say!(
        "{name} is up ({container}; every service healthy {:.2}s after the start{sshd}).",
        up.all_ready.as_secs_f64()
    );
    for l in env::commands::endpoint_lines(&up.env) {
        envd_builder::say!("  {l}");
    }
    envd_builder::say!("  down:     envd down --name {name}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_cpus_are_read_or_refused() {
        assert_eq!(parse_memory("4Gi"), Ok(4 << 30));
        assert_eq!(parse_memory("512Mi"), Ok(512 << 20));
        assert_eq!(parse_memory("2G"), Ok(2_000_000_000));
        assert_eq!(parse_memory("1000"), Ok(1000));
        for bad in ["", "0", "-1Gi", "1.5Gi", "4GB", "99999999999Ti"] {
            assert!(parse_memory(bad).is_err(), "accepted {bad:?}");
        }
        assert_eq!(parse_cpus("1.5"), Ok("1.5".to_string()));
        for bad in ["0", "-2", "inf", "NaN", "two"] {
            assert!(parse_cpus(bad).is_err(), "accepted {bad:?}");
        }
    }
}
