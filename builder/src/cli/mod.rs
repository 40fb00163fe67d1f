//! The `envd` command line: one module per subcommand. Each turns its flags into the library's
//! options, calls the library and prints what happened; none of them decides anything the
//! library should.

pub mod build;
pub mod completion;
pub mod context;
pub mod debug;
pub mod env;
pub mod images;
pub mod kube;
pub mod up;
pub mod version;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use envd_builder::buildkit::connect::Builder;

/// envd: reproducible development environments from a build.envd file.
#[derive(Parser)]
#[command(name = "envd", version = version::VERSION)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the environment's image from build.envd.
    Build(build::Args),
    /// Build the environment and start it: wait until every service is healthy, write the
    /// `NAME.envd` SSH entry, print every endpoint, then open a shell (unless --detach).
    Up(up::Args),
    /// List environments with their services' health and endpoints.
    Ls(env::LsArgs),
    /// Show one environment: endpoints, ports, services, commands.
    Describe(env::DescribeArgs),
    /// Show a service's log (through envd-init), or envd-init's own output without a service.
    Logs(env::LogsArgs),
    /// Run a command in the environment's working directory (no command: the user's login shell).
    Exec(env::ExecArgs),
    /// Remove the environment's container and its SSH entry.
    #[command(alias = "destroy")]
    Down(env::DownArgs),
    /// Manage builder contexts (which BuildKit `envd build` and `envd up` use).
    Context {
        #[command(subcommand)]
        what: context::Command,
    },
    /// Write a commented build.envd for the project here, from its requirements.txt,
    /// pyproject.toml or environment.yml.
    Init(InitArgs),
    /// List the images envd built, with size, age and the environments using them.
    Images(images::ImagesArgs),
    /// Remove your stopped environments and the images and helper images nothing uses (asks
    /// first; --cache also the build cache).
    Prune(images::PruneArgs),
    /// Versions of envd, its runtime binaries, the builder and the Docker engine.
    Version(version::VersionArgs),
    /// Print the script that makes SHELL complete envd's commands, flags and environment names.
    Completion(completion::CompletionArgs),
    /// Write envd's man pages (one per command) into a directory.
    Man(completion::ManArgs),
    /// A language server for build files on stdin/stdout: diagnostics as `envd build` reports
    /// them, completion and docs of the v1 API, go-to-definition (editors start it).
    Lsp(LspArgs),
    /// Developer diagnostics.
    Debug {
        #[command(subcommand)]
        what: debug::Command,
    },
    /// `ssh NAME.envd`'s ProxyCommand for an environment on a cluster.
    #[command(hide = true)]
    KubeProxy(kube::ProxyArgs),
    /// The port forwarder of an environment on a cluster (started by `envd up`).
    #[command(hide = true)]
    KubeForward(kube::ForwardArgs),
}

impl Cli {
    /// Runs the parsed command.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Build(args) => build::run(args),
            Command::Up(args) => up::run(args),
            Command::Ls(args) => env::ls(args),
            Command::Describe(args) => env::describe(args),
            Command::Logs(args) => env::logs(args),
            Command::Exec(args) => env::exec(args),
            Command::Down(args) => env::down(args),
            Command::Context { what } => context::run(what),
            Command::Init(args) => init(args),
            Command::Images(args) => images::run(args),
            Command::Prune(args) => images::prune(args),
            Command::Version(args) => version::run(args),
            Command::Completion(args) => completion::completion(args),
            Command::Man(args) => completion::man(args),
            Command::Lsp(_) => envd_builder::lsp::serve_stdio().map(|clean| {
                if clean {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }),
            Command::Debug { what } => debug::run(what),
            Command::KubeProxy(args) => kube::proxy(args),
            Command::KubeForward(args) => kube::serve(args),
        }
    }
}

/// `envd init`'s flags.
#[derive(clap::Args)]
pub struct InitArgs {
    /// The project directory.
    #[arg(short, long, default_value = ".")]
    path: std::path::PathBuf,
    /// Replace an existing build.envd.
    #[arg(long)]
    force: bool,
}

/// `envd lsp`'s flags.
#[derive(clap::Args)]
pub struct LspArgs {
    /// Accepted for editors that pass it: stdio is the only transport.
    #[arg(long, hide = true)]
    stdio: bool,
}

/// Writes the project's build file and says what it read.
fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    let (path, project) = envd_builder::init::write(&args.path, args.force)?;
    let from = project.source.as_deref().unwrap_or("no package list");
    envd_builder::say!(
        "wrote {} (from {from}); `envd up` starts it",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Which BuildKit to use, shared by `envd build` and `envd up`.
#[derive(clap::Args, Clone)]
pub struct BuilderArgs {
    /// BuildKit to use: moby-worker (Docker's embedded BuildKit), unix or tcp (default: the
    /// current `envd context`).
    #[arg(long)]
    builder: Option<String>,
    /// unix:///path/to/buildkitd.sock or tcp://host:port (for --builder unix|tcp).
    #[arg(long, requires = "builder")]
    builder_address: Option<String>,
    /// HOST[:PORT] of a registry the image goes through from a unix/tcp builder to the engine:
    /// pushed, then pulled, so only changed layers travel (default: the current context's; none:
    /// the image is streamed whole and loaded).
    #[arg(long)]
    registry: Option<String>,
}

impl BuilderArgs {
    /// The builder asked for, else the current context's.
    pub fn resolve(&self) -> anyhow::Result<Builder> {
        match &self.builder {
            Some(b) => Builder::parse(b, self.builder_address.as_deref()),
            None => envd_builder::builders::Contexts::load()?
                .current()
                .to_builder(),
        }
    }

    /// The registry asked for, else the current context's when no builder was asked for.
    pub fn registry(&self) -> anyhow::Result<Option<String>> {
        Ok(match (&self.registry, &self.builder) {
            (Some(r), _) => Some(r.clone()),
            (None, Some(_)) => None,
            (None, None) => envd_builder::builders::Contexts::load()?
                .current()
                .registry
                .clone(),
        })
    }
}

/// The async runtime a command's library calls run on (two workers: the machines are small and
/// the work is waiting on sockets).
pub fn tokio() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
