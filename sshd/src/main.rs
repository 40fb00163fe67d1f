//! `envd-sshd`: the SSH server of an envd environment. See the `envd_sshd` crate docs.

#![warn(missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use envd_sshd::server::{self, Settings};
use envd_sshd::session::UserInfo;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// envd-sshd: the SSH server of an envd environment (public-key auth only).
#[derive(Parser)]
#[command(name = "envd-sshd", version)]
struct Cli {
    /// Address and port to listen on.
    #[arg(long, default_value = "0.0.0.0:2222")]
    listen: String,
    /// Authorized public keys (re-read at every login).
    #[arg(long, default_value = "/var/envd/authorized_keys")]
    authorized_keys: PathBuf,
    /// Host key; an ed25519 key is created there (mode 0600) when missing, then reused.
    #[arg(long, default_value = "/var/envd/ssh_host_ed25519_key")]
    host_key: PathBuf,
    /// Shell for sessions (default: the user's login shell).
    #[arg(long)]
    shell: Option<PathBuf>,
    /// Let `ssh -R` listen on non-loopback addresses.
    #[arg(long)]
    gateway_ports: bool,
    /// Seconds an unauthenticated connection may take.
    #[arg(long, default_value_t = 60)]
    login_grace_time: u64,
    /// Most unauthenticated connections at once; more wait for a slot (within the grace time).
    #[arg(long, default_value_t = 16)]
    max_startups: usize,
    /// Most connections waiting for such a slot; past that, refused with a reason.
    #[arg(long, default_value_t = envd_sshd::admission::DEFAULT_MAX_WAITING)]
    max_waiting: usize,
}

/// mimalloc's `arena_eager_commit` option (index 4 in mimalloc.h's `mi_option_e`).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

fn main() -> std::process::ExitCode {
    // Commit arena memory on use, not up front: an idle server then stays at about 3 MB.
    // SAFETY: plain option setter of the C allocator, called before any thread starts.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
    // Descriptors our parent left open must not reach sessions' programs.
    envd_sshd::admission::close_inherited_on_exec();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .with_max_level(match std::env::var("ENVD_SSHD_LOG").as_deref() {
            Ok("debug") => tracing::Level::DEBUG,
            Ok("warn") => tracing::Level::WARN,
            _ => tracing::Level::INFO,
        })
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("envd-sshd: cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("envd-sshd: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let host_key = envd_sshd::keys::load_or_create_host_key(&cli.host_key)?;
    if let Some(shell) = &cli.shell {
        anyhow::ensure!(
            shell.exists(),
            "the shell {} does not exist",
            shell.display()
        );
    }
    let user = Arc::new(UserInfo::current(cli.shell.clone()));
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    tracing::info!(
        "listening on {} as {} (shell {})",
        listener.local_addr()?,
        user.name,
        user.shell.display()
    );
    let config = Arc::new(server::russh_config(host_key));
    let settings = Arc::new(Settings {
        authorized_keys: cli.authorized_keys,
        user,
        gateway_ports: cli.gateway_ports,
        login_grace: Duration::from_secs(cli.login_grace_time),
        max_startups: cli.max_startups.max(1),
        max_waiting: cli.max_waiting,
    });
    let stop = async {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            }
            _ => std::future::pending::<()>().await,
        }
        tracing::info!("stopping");
    };
    server::serve(listener, config, settings, stop).await;
    Ok(())
}
