//! `envd version`: this client, the runtime binaries it puts in images, the current context's
//! builder and the engine that runs environments; each part says when it cannot be reached
//! rather than failing the whole command.

use std::process::ExitCode;

use envd_builder::buildkit::connect::{self, Builder};
use serde::Serialize;

/// `envd --version` and `envd version`'s first line: the version and the commit it was built
/// from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("ENVD_COMMIT"),
    ")"
);

/// `envd version`'s flags.
#[derive(clap::Args)]
pub struct VersionArgs {
    /// text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    format: String,
}

/// What `envd version` reports; `None` where a part did not answer.
#[derive(Serialize)]
struct Versions {
    client: String,
    commit: String,
    runtime: Vec<RuntimeBinary>,
    context: String,
    builder: String,
    buildkit: Option<String>,
    engine: Option<String>,
}

/// One runtime binary: where it is and what it says of itself.
#[derive(Serialize)]
struct RuntimeBinary {
    name: String,
    path: Option<String>,
    version: Option<String>,
}

/// Prints the versions.
pub fn run(args: VersionArgs) -> anyhow::Result<ExitCode> {
    let contexts = envd_builder::builders::Contexts::load()?;
    let current = contexts.current();
    let builder = current.to_builder()?;
    let (buildkit, engine) = super::tokio()?.block_on(async {
        tokio::join!(connect::buildkit_version_text(&builder), engine_version())
    });
    let buildkit = describe_buildkit(&builder, buildkit, engine.is_some());
    let v = Versions {
        client: env!("CARGO_PKG_VERSION").into(),
        commit: env!("ENVD_COMMIT").into(),
        runtime: envd_builder::runtime::RUNTIME_BINARIES
            .iter()
            .map(|name| runtime_binary(name))
            .collect(),
        context: current.name.clone(),
        builder: describe(&builder),
        buildkit,
        engine,
    };
    if args.format == "json" {
        envd_builder::say!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "not reachable".into());
    envd_builder::say!("envd {VERSION}");
    for r in &v.runtime {
        let version = r.version.as_deref().unwrap_or("not found");
        let path = r.path.as_deref().unwrap_or("-");
        envd_builder::say!("{}: {version} ({path})", r.name);
    }
    envd_builder::say!("context: {} (builder {})", v.context, v.builder);
    envd_builder::say!("BuildKit: {}", or_none(&v.buildkit));
    envd_builder::say!("Docker Engine: {}", or_none(&v.engine));
    Ok(ExitCode::SUCCESS)
}

fn describe(builder: &Builder) -> String {
    match builder {
        Builder::Moby(_) => "moby-worker, the Docker engine's BuildKit".into(),
        Builder::Unix(path) => format!("unix://{}", path.display()),
        Builder::Tcp(addr) => format!("tcp://{addr}"),
    }
}

/// `envd-init --version`'s answer, run from where envd finds it.
fn runtime_binary(name: &str) -> RuntimeBinary {
    let path = envd_builder::runtime::locate(name).ok();
    let version = path.as_ref().and_then(|p| {
        let out = std::process::Command::new(p)
            .arg("--version")
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        out.status.success().then_some(text)
    });
    RuntimeBinary {
        name: name.into(),
        path: path.map(|p| p.display().to_string()),
        version,
    }
}

/// BuildKit's version as it says it, or why it says none.
fn describe_buildkit(builder: &Builder, said: Option<String>, engine: bool) -> Option<String> {
    let unsaid = "embedded in the engine, which does not say its version";
    match said {
        // Docker's embedded BuildKit may not know its version (Debian's Engine 26), or predate
        // Control.Info (BuildKit < 0.11, e.g. Engine 20.10's v0.8).
        Some(v) if v == "v0.0.0+unknown" || v.is_empty() => Some(unsaid.into()),
        Some(v) => Some(v),
        None if matches!(builder, Builder::Moby(_)) && engine => Some(unsaid.into()),
        None => None,
    }
}

async fn engine_version() -> Option<String> {
    let docker = envd_builder::docker::connect().await.ok()?;
    let v = tokio::time::timeout(std::time::Duration::from_secs(5), docker.version())
        .await
        .ok()?
        .ok()?;
    Some(format!(
        "{} (API {})",
        v.version.unwrap_or_default(),
        v.api_version.unwrap_or_default()
    ))
}
