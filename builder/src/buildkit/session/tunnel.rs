//! `Control.Session` as a byte stream: each `BytesMessage` is a chunk of the HTTP/2 connection
//! buildkitd opens back to us. The two directions are pumped between the gRPC call and one end
//! of an in-memory pipe; the other end is the connection the session's server serves.

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::buildkit::proto::moby::buildkit::v1 as control;

/// What the `Control.Session` call announces.
pub struct Headers {
    /// The session id.
    pub id: String,
    /// A name for logs.
    pub name: String,
    /// The shared key (transfers of the same directories under one key are incremental).
    pub shared_key: String,
    /// The gRPC methods served, as `/package.Service/Method`.
    pub methods: Vec<String>,
}

/// Bytes per chunk sent up the stream (BuildKit's own client uses 32 KiB reads).
const CHUNK: usize = 32 * 1024;
/// Room in the in-memory pipe: a few chunks in flight each way.
const PIPE: usize = 256 * 1024;

/// Opens the session's stream; returns the connection to serve and the pump tasks.
pub async fn open(
    channel: Channel,
    headers: Headers,
) -> anyhow::Result<(DuplexStream, Vec<JoinHandle<()>>)> {
    let (served, pumped) = tokio::io::duplex(PIPE);
    let (up, up_rx) = mpsc::channel::<control::BytesMessage>(8);
    let mut request = tonic::Request::new(ReceiverStream::new(up_rx));
    let meta = request.metadata_mut();
    meta.insert(
        "x-docker-expose-session-uuid",
        MetadataValue::try_from(&headers.id)?,
    );
    meta.insert(
        "x-docker-expose-session-name",
        MetadataValue::try_from(&headers.name)?,
    );
    meta.insert(
        "x-docker-expose-session-sharedkey",
        MetadataValue::try_from(&headers.shared_key)?,
    );
    for m in &headers.methods {
        meta.append(
            "x-docker-expose-session-grpc-method",
            MetadataValue::try_from(m)?,
        );
    }
    let (mut from_pipe, mut to_pipe) = tokio::io::split(pumped);
    let upward = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        while let Ok(n) = from_pipe.read(&mut buf).await {
            let message = control::BytesMessage {
                data: buf[..n].to_vec(),
            };
            if n == 0 || up.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut client = control::control_client::ControlClient::new(channel);
    let mut down = client
        .session(request)
        .await
        .context("buildkitd refused the session (Control.Session)")?
        .into_inner();
    let downward = tokio::spawn(async move {
        while let Ok(Some(message)) = down.message().await {
            if to_pipe.write_all(&message.data).await.is_err() {
                break;
            }
        }
        let _ = to_pipe.shutdown().await;
    });
    Ok((served, vec![upward, downward]))
}
