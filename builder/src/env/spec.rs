//! What an environment is, before any runner makes it: [`EnvSpec`], built from the evaluated
//! build file, the project directory and the flags of `envd up`. A runner turns it into its own
//! objects (Docker: a container; a cluster: a pod) and needs nothing else.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use super::owner;
use crate::build;
use crate::contract::{
    API_PORT, AUTHORIZED_KEYS, ENV_API_TOKEN, ENV_JUPYTER_TOKEN, ENV_VSCODE_PASSWORD, HOME,
    HOST_CA, HOST_CA_VARIABLES, JUPYTER_PORT, LABEL_CONTEXT, LABEL_NAME, LABEL_OWNER, SSH_PORT,
    VSCODE_PORT,
};
use crate::graph::Graph;

/// One environment as every runner must make it.
#[derive(Debug, Clone)]
pub struct EnvSpec {
    /// The environment's name (also its hostname).
    pub name: String,
    /// The image, envd-init as its entrypoint.
    pub image: String,
    /// envd-init's arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE` variables (tokens and passwords among them).
    pub env: Vec<String>,
    /// The working directory: the project, mounted.
    pub workdir: String,
    /// Labels the runner keeps with the environment, to find it again.
    pub labels: HashMap<String, String>,
    /// Ports the host reaches.
    pub ports: Vec<Port>,
    /// Files and volumes mounted in.
    pub mounts: Vec<Mount>,
    /// `/dev/shm`'s size in bytes, when the build file sets one.
    pub shm_bytes: Option<i64>,
    /// GPUs asked for (`config.gpu`).
    pub gpus: Option<i64>,
    /// CPUs it may use (`envd up --cpus`, e.g. `1.5`).
    pub cpus: Option<String>,
    /// Memory it may use in bytes (`envd up --memory`).
    pub memory_bytes: Option<i64>,
    /// The build file's `runtime.*` (commands, exposed ports).
    pub runtime: crate::graph::Runtime,
}

/// A port of the environment published to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The port inside.
    pub container_port: u16,
    /// The host address it listens on (127.0.0.1 unless the build file says otherwise).
    pub host_ip: String,
    /// The host port; 0 lets the runner pick a free one.
    pub host_port: u16,
}

/// What a mount brings in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A host file or directory.
    Host(PathBuf),
    /// One of the environment's named volumes.
    Volume(String),
}

/// A mount of the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// What is mounted.
    pub source: MountSource,
    /// Where, inside.
    pub target: String,
    /// Read-only.
    pub read_only: bool,
}

impl Mount {
    fn host(path: impl Into<PathBuf>, target: impl Into<String>) -> Self {
        Mount {
            source: MountSource::Host(path.into()),
            target: target.into(),
            read_only: false,
        }
    }
}

/// 128 random bits as hex, for the API and Jupyter tokens.
pub fn random_token() -> anyhow::Result<String> {
    crate::random::hex(16)
}

/// Resolves a host path given in build.envd (`~`, relative to the build context).
fn host_path(context: &Path, p: &str) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/") {
        return crate::host::home_dir().join(rest);
    }
    let path = PathBuf::from(p);
    if path.is_absolute() {
        path
    } else {
        context.join(path)
    }
}

/// Checks a `-v HOST:CONTAINER[:ro|rw]` argument and makes the host side absolute.
pub fn parse_volume(v: &str) -> anyhow::Result<Mount> {
    let parts: Vec<&str> = v.split(':').collect();
    let (host, target, mode) = match parts.as_slice() {
        [h, c] => (*h, *c, None),
        [h, c, m] if *m == "ro" || *m == "rw" => (*h, *c, Some(*m)),
        _ => bail!("-v {v}: expected HOST:CONTAINER or HOST:CONTAINER:ro"),
    };
    if !target.starts_with('/') {
        bail!("-v {v}: the path in the environment must be absolute");
    }
    let host = std::path::absolute(host).with_context(|| format!("-v {v}: bad host path"))?;
    if !host.exists() {
        bail!("-v {v}: {} does not exist", host.display());
    }
    Ok(Mount {
        read_only: mode == Some("ro"),
        ..Mount::host(host, target)
    })
}

/// A path inside the environment: `~` is the user's home.
pub fn envd_path(p: &str) -> String {
    match p.strip_prefix('~') {
        Some("") => HOME.to_string(),
        Some(rest) if rest.starts_with('/') => format!("{HOME}{rest}"),
        _ => p.to_string(),
    }
}

/// The uid and gid the environment's user takes at start: `config.owner(...)` when the build
/// file sets it, else the host user's, so the project mounted from the host is writable inside
/// and what is made inside belongs to the host user.
pub fn user_ids(graph: &Graph) -> (u32, u32) {
    match graph.config.owner {
        Some((uid, gid)) => (uid as u32, gid as u32),
        None => (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        ),
    }
}

/// Whether a port on 127.0.0.1 is free now.
fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A host port: the build file's choice, or the default (Jupyter's 8888, VS Code's 8080)
/// unless something (another user's environment, say) has it, then a free one.
fn host_port(port: i32, port_given: bool) -> u16 {
    let port = port as u16;
    if !port_given && !port_free(port) {
        0
    } else {
        port
    }
}

fn local(container_port: u16, host_port: u16) -> Port {
    Port {
        container_port,
        host_ip: "127.0.0.1".into(),
        host_port,
    }
}

/// The secrets and ports of the environment's services: fresh API token, Jupyter's token and
/// port, VS Code's password and port, and `runtime.expose`.
fn services(graph: &Graph, env: &mut Vec<String>) -> anyhow::Result<Vec<Port>> {
    env.push(format!("{ENV_API_TOKEN}={}", random_token()?));
    let mut ports = vec![local(SSH_PORT, 0), local(API_PORT, 0)];
    if let Some(j) = &graph.config.jupyter {
        let token = if j.token.is_empty() {
            random_token()?
        } else {
            j.token.clone()
        };
        env.push(format!("{ENV_JUPYTER_TOKEN}={token}"));
        ports.push(local(JUPYTER_PORT, host_port(j.port, j.port_given)));
    }
    if let Some(v) = &graph.config.vscode {
        env.push(format!("{ENV_VSCODE_PASSWORD}={}", random_token()?));
        ports.push(local(VSCODE_PORT, host_port(v.port, v.port_given)));
    }
    for e in &graph.runtime.expose {
        let ip = if e.listen_addr.is_empty() {
            "127.0.0.1"
        } else {
            e.listen_addr.as_str()
        };
        ports.push(Port {
            container_port: e.envd_port as u16,
            host_ip: ip.to_string(),
            host_port: e.host_port.max(0) as u16,
        });
    }
    Ok(ports)
}

/// The project, the user's public key, `runtime.mount`s, named volumes and `-v` mounts.
fn mounts(
    context: &Path,
    workdir: &str,
    graph: &Graph,
    extra: &[Mount],
    named: &[(String, String)],
) -> anyhow::Result<Vec<Mount>> {
    let public_key = crate::host::key_path().with_extension("pub");
    let mut mounts = vec![
        Mount::host(context, workdir),
        Mount {
            read_only: true,
            ..Mount::host(public_key, AUTHORIZED_KEYS)
        },
    ];
    for m in graph.runtime.mounts.iter().filter(|m| m.volume.is_empty()) {
        let host = host_path(context, &m.host_path);
        if !host.exists() {
            bail!(
                "runtime.mount(host_path={:?}): {} does not exist",
                m.host_path,
                host.display()
            );
        }
        mounts.push(Mount::host(host, envd_path(&m.envd_path)));
    }
    mounts.extend(named.iter().map(|(volume, path)| Mount {
        source: MountSource::Volume(volume.clone()),
        target: path.clone(),
        read_only: false,
    }));
    mounts.extend(extra.iter().cloned());
    Ok(mounts)
}

/// The host's CA bundle, mounted read-only, and the variables that point TLS clients at it:
/// what the host trusts (a TLS-intercepting proxy's CA) the environment trusts while it runs,
/// without the image carrying it.
fn host_ca(env: &mut Vec<String>) -> anyhow::Result<Option<Mount>> {
    let Some(bundle) = crate::host::ca_bundle()? else {
        return Ok(None);
    };
    env.extend(HOST_CA_VARIABLES.map(|k| format!("{k}={HOST_CA}")));
    Ok(Some(Mount {
        read_only: true,
        ..Mount::host(bundle, HOST_CA)
    }))
}

/// The environment `name` of image `image` for the project at `context`. `named` are its
/// volumes, `(volume name, path inside)`; `extra` the `-v` mounts.
pub fn spec(
    name: &str,
    image: &str,
    context: &Path,
    graph: &Graph,
    extra: &[Mount],
    named: &[(String, String)],
) -> anyhow::Result<EnvSpec> {
    // The same directory name the compiler gives `run(mount_host=True)` steps.
    let workdir = format!("{HOME}/{}", build::workdir_name(context));
    let mut env = vec![format!("ENVD_WORKDIR={workdir}")];
    let ports = services(graph, &mut env)?;
    // envd-init gives the user the host user's ids and the named volumes (see
    // envd_supervisor::identity), then serves its API.
    let (uid, gid) = user_ids(graph);
    let mut args = vec!["--user-ids".to_string(), format!("{uid}:{gid}")];
    for (_, path) in named {
        args.extend(["--own".to_string(), path.clone()]);
    }
    args.extend(["--api-listen".to_string(), format!("0.0.0.0:{API_PORT}")]);
    let mut mounts = mounts(context, &workdir, graph, extra, named)?;
    mounts.extend(host_ca(&mut env)?);
    Ok(EnvSpec {
        name: name.to_string(),
        image: image.to_string(),
        args,
        env,
        mounts,
        workdir,
        labels: HashMap::from([
            (LABEL_NAME.to_string(), name.to_string()),
            (LABEL_CONTEXT.to_string(), context.display().to_string()),
            (LABEL_OWNER.to_string(), owner().0.to_string()),
        ]),
        ports,
        shm_bytes: graph.config.shm_size.map(|mb| mb as i64 * 1024 * 1024),
        gpus: graph.config.gpu.filter(|n| *n != 0).map(|n| n as i64),
        cpus: None,
        memory_bytes: None,
        runtime: graph.runtime.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_checked() {
        let m = parse_volume("/tmp:/data").unwrap();
        assert_eq!(m, Mount::host("/tmp", "/data"));
        assert!(parse_volume("/tmp:/data:ro").unwrap().read_only);
        let e = parse_volume("/tmp:data").unwrap_err().to_string();
        assert!(e.contains("must be absolute"), "{e}");
        let e = parse_volume("/no/such/dir:/x").unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        assert!(parse_volume("/tmp").is_err());
    }

    #[test]
    fn paths_inside_expand_the_home() {
        assert_eq!(envd_path("~/.codex"), "/home/envd/.codex");
        assert_eq!(envd_path("~"), "/home/envd");
        assert_eq!(envd_path("/data"), "/data");
        assert_eq!(envd_path("~other/x"), "~other/x");
    }

    #[test]
    fn tokens_are_random_and_long() {
        let a = random_token().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, random_token().unwrap());
    }
}
