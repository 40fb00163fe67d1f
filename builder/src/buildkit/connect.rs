//! Connecting to BuildKit.
//!
//! - `moby-worker` (default): Docker's embedded BuildKit. `POST /grpc` with `Upgrade: h2c` on
//!   the Docker socket answers `101 Switching Protocols`; from then on the connection speaks
//!   HTTP/2 with prior knowledge, so the upgraded socket is handed to tonic as is.
//! - `unix:///path` and `tcp://host:port`: a standalone buildkitd.

use std::path::PathBuf;

use anyhow::{bail, Context};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::proto::moby::buildkit::v1 as control;

/// Where BuildKit is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Builder {
    /// Docker's embedded BuildKit, through this Docker socket.
    Moby(PathBuf),
    /// buildkitd on a unix socket.
    Unix(PathBuf),
    /// buildkitd on TCP (`host:port`).
    Tcp(String),
}

impl Builder {
    /// Parses `moby-worker`, `moby-worker://SOCKET`, `unix:///path` or `tcp://host:port`.
    pub fn parse(kind: &str, address: Option<&str>) -> anyhow::Result<Builder> {
        Ok(match kind {
            "moby-worker" | "docker" => Builder::Moby(PathBuf::from(
                address
                    .map(|a| a.trim_start_matches("unix://").to_string())
                    .unwrap_or_else(docker_socket),
            )),
            "unix" => Builder::Unix(PathBuf::from(
                address
                    .context(
                        "a unix builder needs --builder-address unix:///path/to/buildkitd.sock",
                    )?
                    .trim_start_matches("unix://"),
            )),
            "tcp" => Builder::Tcp(
                address
                    .context("a tcp builder needs --builder-address tcp://host:port")?
                    .trim_start_matches("tcp://")
                    .to_string(),
            ),
            other => bail!("unknown builder {other:?}; use moby-worker, unix or tcp"),
        })
    }
}

/// The Docker socket: `$DOCKER_HOST` when it is a unix socket, else /var/run/docker.sock.
pub fn docker_socket() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".into())
}

/// Asks the Docker daemon to turn a fresh connection into HTTP/2 for its BuildKit (`POST /grpc`
/// with `Upgrade: h2c`, answered `101 Switching Protocols`) and returns the upgraded connection.
/// HTTP and the upgrade are hyper's.
pub async fn moby_grpc_stream(socket: &std::path::Path) -> std::io::Result<Upgraded> {
    use hyper::header::{CONNECTION, HOST, UPGRADE};
    let io_error = |e: hyper::Error| std::io::Error::other(e);
    let stream = UnixStream::connect(socket).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io_error)?;
    tokio::spawn(connection.with_upgrades());
    let request = hyper::Request::post("/grpc")
        .header(HOST, "docker")
        .header(CONNECTION, "Upgrade")
        .header(UPGRADE, "h2c")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(std::io::Error::other)?;
    let response = sender.send_request(request).await.map_err(io_error)?;
    if response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        return Err(std::io::Error::other(format!(
            "the Docker daemon refused the BuildKit upgrade: {}",
            response.status()
        )));
    }
    hyper::upgrade::on(response).await.map_err(io_error)
}

/// Opens a gRPC channel to the builder.
pub async fn connect(builder: &Builder) -> anyhow::Result<Channel> {
    // The URI is required by tonic but the connectors below decide where to dial.
    let endpoint = Endpoint::try_from("http://buildkit.invalid")?
        .http2_adaptive_window(true)
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(8 * 1024 * 1024));
    let channel = match builder.clone() {
        Builder::Moby(socket) => endpoint
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move { moby_grpc_stream(&socket).await }
            }))
            .await
            .with_context(|| format!("cannot reach Docker's BuildKit on {}", docker_socket()))?,
        Builder::Unix(path) => endpoint
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { UnixStream::connect(path).await.map(TokioIo::new) }
            }))
            .await
            .context("cannot reach buildkitd on its unix socket")?,
        Builder::Tcp(addr) => Endpoint::try_from(format!("http://{addr}"))?
            .connect()
            .await
            .with_context(|| format!("cannot reach buildkitd on tcp://{addr}"))?,
    };
    Ok(channel)
}

/// Whether to build independent parts as merged layers: on a standalone buildkitd with MergeOp
/// (BuildKit >= 0.10, asked through `Control.Info`, which BuildKit has from 0.11 on). Not on
/// Docker's embedded BuildKit, even where it has MergeOp: on Engine 26 (overlay2 graph driver)
/// the merged build was 1.4x slower cold and 11x slower for one more Python package than the
/// linear chain (docs/BENCHMARKS.md). A builder that cannot say (older, or unreachable: the
/// build will name the problem) gets the linear chain every BuildKit runs. `ENVD_MERGE=off`
/// asks for the linear chain on any builder, `ENVD_MERGE=on` for merged layers on Docker's
/// BuildKit too (Docker 23+, the first to embed BuildKit 0.11; Debian's Engine 26 says its
/// BuildKit is `v0.0.0+unknown`, so the engine's version tells).
pub async fn has_merge_op(builder: &Builder) -> bool {
    let asked = std::env::var("ENVD_MERGE").ok();
    match (asked.as_deref(), builder) {
        (Some("off"), _) => false,
        (Some("on"), Builder::Moby(_)) => engine_major().await.is_some_and(|m| m >= 23),
        (_, Builder::Moby(_)) => false,
        _ => buildkit_version(builder)
            .await
            .is_some_and(|v| v != (0, 0) && v >= (0, 10)),
    }
}

/// BuildKit's (major, minor), when it answers `Control.Info`.
async fn buildkit_version(builder: &Builder) -> Option<(u64, u64)> {
    major_minor(&buildkit_version_text(builder).await?)
}

/// BuildKit's version as it says it (`v0.13.2`), when it answers `Control.Info` within 10 s.
pub async fn buildkit_version_text(builder: &Builder) -> Option<String> {
    let channel = connect(builder).await.ok()?;
    let mut control = control::control_client::ControlClient::new(channel);
    let ask = control.info(control::InfoRequest {});
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), ask)
        .await
        .ok()?
        .ok()?;
    Some(answer.into_inner().buildkit_version?.version)
}

/// The Docker engine's major version.
async fn engine_major() -> Option<u64> {
    let docker = crate::docker::connect().await.ok()?;
    let version = docker.version().await.ok()?.version?;
    major_minor(&version).map(|(major, _)| major)
}

/// `v0.13.2`, `0.25.2-dev` or `26.1.5+dfsg1` as (major, minor).
fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.trim_start_matches('v').split(['.', '-', '+']);
    let mut next = || parts.next().and_then(|p| p.parse::<u64>().ok());
    Some((next()?, next()?))
}

#[cfg(test)]
mod tests {
    use super::major_minor;

    #[test]
    fn versions_read_as_major_and_minor() {
        assert_eq!(major_minor("v0.13.2"), Some((0, 13)));
        assert_eq!(major_minor("0.25.2-dev"), Some((0, 25)));
        assert_eq!(major_minor("v0.0.0+unknown"), Some((0, 0)));
        assert_eq!(major_minor("26.1.5+dfsg1"), Some((26, 1)));
        assert_eq!(major_minor("20.10.24+dfsg1"), Some((20, 10)));
        assert_eq!(major_minor(""), None);
        assert_eq!(major_minor("unknown"), None);
    }
}
