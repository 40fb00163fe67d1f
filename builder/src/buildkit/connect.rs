//! Connecting to BuildKit.
//!
//! - `moby-worker` (default): Docker's embedded BuildKit. `POST /grpc` with `Upgrade: h2c` on
//!   the Docker socket answers `101 Switching Protocols`; from then on the connection speaks
//!   HTTP/2 with prior knowledge, so the upgraded socket is handed to tonic as is.
//! - `unix:///path` and `tcp://host:port`: a standalone buildkitd.

use std::path::PathBuf;

use anyhow::{bail, Context};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

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

/// Does the h2c upgrade on a fresh Docker socket connection and returns the upgraded stream.
pub async fn moby_grpc_stream(socket: &std::path::Path) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(socket).await?;
    s.write_all(
        b"POST /grpc HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n",
    )
    .await?;
    // Read the response head byte by byte: nothing after it may be consumed.
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await? == 0 || head.len() > 16 * 1024 {
            return Err(std::io::Error::other(
                "the Docker daemon closed the /grpc upgrade",
            ));
        }
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head);
    if !status.starts_with("HTTP/1.1 101") {
        return Err(std::io::Error::other(format!(
            "the Docker daemon refused the BuildKit upgrade: {}",
            status.lines().next().unwrap_or("")
        )));
    }
    Ok(s)
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
                async move { moby_grpc_stream(&socket).await.map(TokioIo::new) }
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
