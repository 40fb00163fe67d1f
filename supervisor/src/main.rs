//! `envd-init`: the PID 1 of an envd environment. See the crate docs of `envd_supervisor`.

#![warn(missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use envd_supervisor::api::{self, Api};
use envd_supervisor::proto::supervisor::{
    ListServicesRequest, LogsRequest, ServiceRequest, ServiceStatus,
};
use envd_supervisor::supervisor::{self, Options};
use envd_supervisor::{client, config, guard, identity, DEFAULT_API_SOCKET};

/// envd-init: supervises an envd environment's services as PID 1 and reports their health.
#[derive(Parser)]
#[command(name = "envd-init", version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// A directory of service files (*.toml); may be repeated. Default: /etc/envd/services,
    /// plus /etc/horust/services when it exists.
    #[arg(long = "services", value_name = "DIR")]
    services: Vec<PathBuf>,

    /// The API's unix socket (mode 0600).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_API_SOCKET)]
    api_socket: PathBuf,

    /// Also serve the API on TCP; every call then needs `authorization: Bearer TOKEN`.
    #[arg(long, value_name = "ADDR")]
    api_listen: Option<SocketAddr>,

    /// File holding the API token (otherwise the ENVD_API_TOKEN environment variable).
    #[arg(long, value_name = "FILE")]
    api_token_file: Option<PathBuf>,

    /// Check the service files and exit.
    #[arg(long)]
    check: bool,

    /// Run as this account: envd-init starts as root, gives the account `--user-ids` and what it
    /// owned, then drops to it for good before anything else starts.
    #[arg(long, value_name = "NAME")]
    user: Option<String>,

    /// The host user's `UID:GID` for `--user` (so the bind-mounted project is writable inside
    /// and what is made inside belongs to the host user).
    #[arg(long, value_name = "UID:GID", requires = "user", value_parser = identity::parse_ids)]
    user_ids: Option<(u32, u32)>,

    /// A path (a named volume) whose files `--user` owned in the image; may be repeated.
    #[arg(long, value_name = "PATH", requires = "user")]
    own: Vec<PathBuf>,

    /// The main command (tini's contract): its exit code becomes envd-init's.
    #[arg(last = true, value_name = "MAIN_CMD")]
    main_cmd: Vec<String>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Talk to a running envd-init.
    Ctl {
        /// The API's unix socket.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_API_SOCKET)]
        api_socket: PathBuf,
        #[command(subcommand)]
        action: CtlAction,
    },
}

#[derive(Subcommand)]
enum CtlAction {
    /// Every service's state, health, pid, restarts and last exit.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A service's recent output.
    Logs {
        /// The service.
        name: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// How many recent lines (0 = all kept).
        #[arg(long, default_value_t = 100)]
        tail: u32,
    },
    /// Restart a service.
    Restart {
        /// The service.
        name: String,
    },
    /// Stop a service (it stays stopped until restarted).
    Stop {
        /// The service.
        name: String,
    },
}

fn main() -> ExitCode {
    // Before any thread: secrets leave the environment services and sessions inherit.
    config::take_secrets_from_env();
    envd_supervisor::spawn::close_inherited_on_exec();
    guard::install_panic_hook();
    let cli = Cli::parse();
    envd_supervisor::diagnostics::init_from_env();
    // Before the runtime's threads and before the service files are read (they expand ${USER}).
    if let Some(user) = &cli.user {
        let request = identity::Request {
            user: user.clone(),
            ids: cli.user_ids,
            own: cli.own.clone(),
        };
        match identity::adopt(&request) {
            Ok(0) => {}
            Ok(n) => envd_supervisor::info!("{user} took its ids; {n} files changed owner"),
            Err(e) => {
                eprintln!("envd-init: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("envd-init: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = match cli.command {
        Some(Command::Ctl { api_socket, action }) => runtime.block_on(ctl(api_socket, action)),
        None => runtime.block_on(init(cli)),
    };
    envd_supervisor::console::drain(std::time::Duration::from_secs(1));
    ExitCode::from(code.clamp(0, 255) as u8)
}

async fn init(cli: Cli) -> i32 {
    let dirs: Vec<(PathBuf, bool)> = if cli.services.is_empty() {
        vec![
            (PathBuf::from("/etc/envd/services"), true),
            (PathBuf::from("/etc/horust/services"), true),
        ]
    } else {
        cli.services.iter().map(|d| (d.clone(), false)).collect()
    };
    let specs = match config::load(&dirs) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("envd-init: not starting: fix the service files above");
            return 2;
        }
    };
    if cli.check {
        println!("{} services OK", specs.len());
        return 0;
    }
    let token = match (&cli.api_listen, api_token(cli.api_token_file.as_ref())) {
        (Some(_), Err(e)) => {
            eprintln!("envd-init: --api-listen needs a token: {e}");
            return 2;
        }
        (_, t) => t.ok(),
    };
    let main_cmd = (!cli.main_cmd.is_empty()).then_some(cli.main_cmd);
    let socket = cli.api_socket;
    let listen = cli.api_listen;
    supervisor::run(
        specs,
        Options {
            service_dirs: dirs,
            main_cmd,
        },
        move |shared| {
            let api = Api::new(shared);
            let unix_api = api.clone();
            guard::spawn_restarting("the API socket", move || {
                let (socket, api) = (socket.clone(), unix_api.clone());
                async move {
                    if let Err(e) = api::serve_unix(&socket, api).await {
                        envd_supervisor::warn!("API socket {} unavailable: {e}", socket.display());
                    }
                }
            });
            if let (Some(addr), Some(token)) = (listen, token) {
                guard::spawn_restarting("the TCP API", move || {
                    let (token, api) = (token.clone(), api.clone());
                    async move {
                        if let Err(e) = api::serve_tcp(addr, token, api).await {
                            envd_supervisor::warn!("API on {addr} unavailable: {e}");
                        }
                    }
                });
            }
        },
    )
    .await
}

fn api_token(file: Option<&PathBuf>) -> Result<String, String> {
    let token = match file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| format!("cannot read {}: {e}", f.display()))?
            .trim()
            .to_string(),
        None => config::secret_or_env("ENVD_API_TOKEN")
            .ok_or_else(|| "set ENVD_API_TOKEN or --api-token-file".to_string())?,
    };
    if token.len() < 16 {
        return Err("the API token must be at least 16 characters".into());
    }
    Ok(token)
}

async fn ctl(socket: PathBuf, action: CtlAction) -> i32 {
    match ctl_inner(&socket, action).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("envd-init ctl: {e:#}");
            1
        }
    }
}

async fn ctl_inner(socket: &std::path::Path, action: CtlAction) -> anyhow::Result<i32> {
    let mut c = client::connect_unix(socket)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", socket.display()))?;
    match action {
        CtlAction::Status { json } => {
            let list = c
                .supervisor
                .list_services(ListServicesRequest {})
                .await?
                .into_inner()
                .services;
            if json {
                let items: Vec<serde_json::Value> = list.iter().map(status_json).collect();
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                println!(
                    "{:<20} {:<9} {:<10} {:>7} {:>8}  {:<22} DETAIL",
                    "NAME", "STATE", "HEALTH", "PID", "RESTARTS", "LAST EXIT"
                );
                for s in &list {
                    println!(
                        "{:<20} {:<9} {:<10} {:>7} {:>8}  {:<22} {}",
                        s.name,
                        api::state_word(s.state),
                        api::health_word(s.health),
                        if s.pid == 0 {
                            "-".into()
                        } else {
                            s.pid.to_string()
                        },
                        s.restarts,
                        last_exit(s),
                        s.detail
                    );
                }
            }
            Ok(0)
        }
        CtlAction::Logs { name, follow, tail } => {
            let mut stream = c
                .supervisor
                .logs(LogsRequest {
                    service: name,
                    tail,
                    follow,
                })
                .await?
                .into_inner();
            use std::io::Write;
            while let Some(line) = stream.message().await? {
                let mut out = std::io::stdout().lock();
                out.write_all(&line.line)?;
                out.write_all(b"\n")?;
                out.flush()?;
            }
            Ok(0)
        }
        CtlAction::Restart { name } => {
            let s = c
                .supervisor
                .restart(ServiceRequest { service: name })
                .await?
                .into_inner();
            println!("{}: {}", s.name, api::state_word(s.state));
            Ok(0)
        }
        CtlAction::Stop { name } => {
            let s = c
                .supervisor
                .stop(ServiceRequest { service: name })
                .await?
                .into_inner();
            println!("{}: {}", s.name, api::state_word(s.state));
            Ok(0)
        }
    }
}

fn last_exit(s: &ServiceStatus) -> String {
    match &s.last_exit {
        None => "-".into(),
        Some(e) => match (e.code, e.signal) {
            (Some(c), _) => format!("code {c}"),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => "-".into(),
        },
    }
}

fn status_json(s: &ServiceStatus) -> serde_json::Value {
    serde_json::json!({
        "name": s.name,
        "state": api::state_word(s.state),
        "health": api::health_word(s.health),
        "pid": s.pid,
        "restarts": s.restarts,
        "last_exit": s.last_exit.as_ref().map(|e| serde_json::json!({
            "code": e.code, "signal": e.signal, "at": e.at
        })),
        "since": s.since,
        "detail": s.detail,
    })
}
