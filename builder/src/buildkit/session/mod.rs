//! A BuildKit session: how a standalone buildkitd reads the client's files and hands an exported
//! archive back, the way BuildKit's own clients (buildctl, docker buildx, envd) do it.
//!
//! The client opens `Control.Session`, a bidirectional stream of byte chunks ([`tunnel`]) that
//! carries an HTTP/2 connection the other way round: buildkitd is the gRPC client and envd-rs
//! serves, on that connection,
//! - `moby.filesync.v1.FileSync/DiffCopy` ([`filesync`]): the directories a build reads through
//!   `local://NAME` sources (the build context's files, the runtime binaries), in fsutil's
//!   protocol, so there is no request-size limit and no engine in between;
//! - `moby.filesync.v1.FileSend/DiffCopy` ([`filesend`]): the archive of the `docker`/`oci`
//!   exporters, streamed to where the caller wants it (a file, or `docker load`);
//! - `moby.filesync.v1.Auth/Credentials` ([`auth`]): the client's registry logins, when a push
//!   or a pull needs one;
//! - `grpc.health.v1.Health`: buildkitd checks a session every 5 s and drops one that does not
//!   answer within 15 s.
//!
//! The methods offered are announced in the `Control.Session` call's headers, as BuildKit's Go
//! client does (`X-Docker-Expose-Session-*`).

mod auth;
mod filesend;
mod filesync;
mod tunnel;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Server};

pub use filesync::{Content, LocalDir, LocalEntry};

use super::proto::moby::filesync::v1::{auth_server, file_send_server, file_sync_server};

/// Chunks of an exported archive, in order; an error ends a transfer that broke off.
pub type ArchiveChunks = mpsc::Sender<std::io::Result<Bytes>>;

/// An open session; buildkitd can reach what it offers until it is dropped.
pub struct Session {
    id: String,
    tasks: Vec<JoinHandle<()>>,
}

impl Session {
    /// Opens a session on `channel` offering `dirs` (by the names the LLB's `local://` sources
    /// use) and, when `archive` is given, receiving an exporter's archive into it.
    pub async fn open(
        channel: Channel,
        dirs: BTreeMap<String, LocalDir>,
        archive: Option<ArchiveChunks>,
    ) -> anyhow::Result<Session> {
        let id = crate::random::hex(16)?;
        let mut methods = vec![
            "/grpc.health.v1.Health/Check".to_string(),
            "/grpc.health.v1.Health/Watch".to_string(),
            "/moby.filesync.v1.FileSync/DiffCopy".to_string(),
            "/moby.filesync.v1.Auth/Credentials".to_string(),
        ];
        if archive.is_some() {
            methods.push("/moby.filesync.v1.FileSend/DiffCopy".to_string());
        }
        let headers = tunnel::Headers {
            id: id.clone(),
            name: "envd".into(),
            // The key BuildKit uses to reuse an earlier transfer of the same directories.
            shared_key: "envd-rs".into(),
            methods,
        };
        let (connection, mut tasks) = tunnel::open(channel, headers).await?;

        let (_, health) = tonic_health::server::health_reporter();
        let sync = file_sync_server::FileSyncServer::new(filesync::FileSync::new(Arc::new(dirs)));
        let send =
            archive.map(|a| file_send_server::FileSendServer::new(filesend::FileSend::new(a)));
        let router = Server::builder()
            .add_service(health)
            .add_service(sync)
            .add_service(auth_server::AuthServer::new(auth::Auth))
            .add_optional_service(send);
        let incoming = futures_util::stream::iter([Ok::<_, std::io::Error>(connection)]);
        // A session that breaks shows as the build's error (buildkitd names the transfer).
        tasks.push(tokio::spawn(async move {
            let _ = router.serve_with_incoming(incoming).await;
        }));
        Ok(Session { id, tasks })
    }

    /// The id builds name in `SolveRequest.Session`.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Session {
    /// Ends the stream: buildkitd sees the session close.
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
