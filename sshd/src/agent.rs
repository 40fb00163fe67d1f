//! The forwarded agent: a private unix socket (in a 0700 directory) whose connections are
//! relayed to the client's agent over `auth-agent@openssh.com` channels. Removed when the
//! session ends.

use std::path::PathBuf;

use russh::server::Handle;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

/// A session's agent socket; dropping it stops relaying and removes the socket.
pub struct AgentSocket {
    /// The socket path, exported as `SSH_AUTH_SOCK`.
    pub path: PathBuf,
    dir: PathBuf,
    task: JoinHandle<()>,
}

impl AgentSocket {
    /// Creates the socket and starts relaying.
    pub fn start(handle: Handle) -> std::io::Result<AgentSocket> {
        let base = std::env::temp_dir().join("envd-agent-XXXXXX");
        // mkdtemp creates the directory with mode 0700.
        let dir = nix::unistd::mkdtemp(&base)?;
        let path = dir.join("agent.sock");
        let listener = UnixListener::bind(&path)?;
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let handle = handle.clone();
                tokio::spawn(async move {
                    match handle.channel_open_agent().await {
                        Ok(channel) => {
                            let mut stream = channel.into_stream();
                            let _ = tokio::io::copy_bidirectional(&mut conn, &mut stream).await;
                        }
                        Err(e) => tracing::debug!("the client refused an agent channel: {e}"),
                    }
                });
            }
        });
        Ok(AgentSocket { path, dir, task })
    }
}

impl Drop for AgentSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
