//! Port and socket forwarding: `ssh -L`/`-D` (direct-tcpip), `ssh -L PORT:/path.sock`
//! (direct-streamlocal@openssh.com), `ssh -R` (tcpip-forward) and `ssh -R /path:...`
//! (streamlocal-forward@openssh.com).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use russh::server::{ChannelOpenHandle, Handle, Msg};
use russh::{Channel, ChannelOpenFailure};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::AbortHandle;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Relays a channel and a socket both ways without `ChannelStream`'s extra buffering: channel
/// packets already waiting are gathered into one socket write (about 256 KiB at most), and socket reads
/// of up to 64 KiB (one packet) go straight into the channel. EOF is passed on both ways.
pub async fn relay<S>(channel: Channel<Msg>, socket: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    use futures_util::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const MAX_BATCH: usize = 256 * 1024;
    let (mut rx, tx) = channel.split();
    let (mut sock_rd, mut sock_wr) = tokio::io::split(socket);
    let upstream = async move {
        // Grows only as far as the traffic needs: idle forwards (VS Code keeps many) hold nothing.
        let mut batch = Vec::new();
        let mut open = true;
        while open {
            let Some(msg) = rx.wait().await else { break };
            open = gather(msg, &mut batch);
            // One write per wake-up rather than per packet: whatever has arrived meanwhile
            // (`wait` is cancel-safe, so polling it once loses nothing).
            while open && batch.len() < MAX_BATCH {
                match rx.wait().now_or_never() {
                    Some(Some(msg)) => open = gather(msg, &mut batch),
                    Some(None) => open = false,
                    None => break,
                }
            }
            if !batch.is_empty() {
                if sock_wr.write_all(&batch).await.is_err() {
                    break;
                }
                batch.clear();
            }
        }
        let _ = sock_wr.shutdown().await;
    };
    let downstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match sock_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.data(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.eof().await;
        tx
    };
    let (_, tx) = tokio::join!(upstream, downstream);
    let _ = tx.close().await;
}

/// Appends a channel message's data to `batch`; false once the channel's sending side is done.
fn gather(msg: russh::ChannelMsg, batch: &mut Vec<u8>) -> bool {
    match msg {
        russh::ChannelMsg::Data { data } => {
            batch.extend_from_slice(&data);
            true
        }
        russh::ChannelMsg::Eof | russh::ChannelMsg::Close => false,
        _ => true,
    }
}

/// Relays both ways with large buffers (tokio's default of 8 KiB halves forwarding throughput).
pub async fn copy_both<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, 256 * 1024, 256 * 1024).await
}

/// `ssh -L` / `-D`: connect first, then accept the channel (or refuse it with the reason).
pub async fn direct_tcpip(
    channel: Channel<Msg>,
    host: String,
    port: u32,
    reply: ChannelOpenHandle,
) {
    let Ok(port) = u16::try_from(port) else {
        tracing::info!("direct-tcpip to port {port}: not a TCP port; refused");
        reply.reject(ChannelOpenFailure::ConnectFailed).await;
        return;
    };
    let target = (host.as_str(), port);
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            reply.accept().await;
            relay(channel, tcp).await;
        }
        _ => reply.reject(ChannelOpenFailure::ConnectFailed).await,
    }
}

/// `ssh -L PORT:/path.sock`.
pub async fn direct_streamlocal(channel: Channel<Msg>, path: String, reply: ChannelOpenHandle) {
    match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&path)).await {
        Ok(Ok(sock)) => {
            reply.accept().await;
            relay(channel, sock).await;
        }
        _ => reply.reject(ChannelOpenFailure::ConnectFailed).await,
    }
}

/// The remote forwards of one connection, stopped when it ends.
#[derive(Default)]
pub struct RemoteForwards {
    tcp: Mutex<HashMap<(String, u32), AbortHandle>>,
    unix: Mutex<HashMap<String, AbortHandle>>,
}

impl RemoteForwards {
    /// `tcpip-forward`: listens on `address:port` (loopback unless `gateway_ports`) and opens a
    /// forwarded-tcpip channel per connection. Sets `port` when 0 was asked for.
    pub async fn add_tcp(
        &self,
        handle: Handle,
        address: &str,
        port: &mut u32,
        gateway_ports: bool,
    ) -> bool {
        let wildcard = matches!(address, "" | "*" | "0.0.0.0" | "::");
        let bind_addr = if wildcard && gateway_ports {
            "0.0.0.0".to_string()
        } else if wildcard || address == "localhost" {
            "127.0.0.1".to_string()
        } else if gateway_ports {
            address.to_string()
        } else {
            // Without gateway ports only loopback addresses may be bound.
            match address.parse::<std::net::IpAddr>() {
                Ok(ip) if ip.is_loopback() => address.to_string(),
                _ => return false,
            }
        };
        let Ok(port16) = u16::try_from(*port) else {
            tracing::info!("tcpip-forward {address}:{port}: not a TCP port; refused");
            return false;
        };
        let listener = match TcpListener::bind((bind_addr.as_str(), port16)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::info!("tcpip-forward {address}:{port}: {e}");
                return false;
            }
        };
        let bound = listener
            .local_addr()
            .map(|a| a.port() as u32)
            .unwrap_or(*port);
        if *port == 0 {
            *port = bound;
        }
        let requested = address.to_string();
        let task = tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                let handle = handle.clone();
                let requested = requested.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    if let Ok(channel) = handle
                        .channel_open_forwarded_tcpip(
                            requested,
                            bound,
                            peer.ip().to_string(),
                            peer.port() as u32,
                        )
                        .await
                    {
                        relay(channel, tcp).await;
                    }
                });
            }
        });
        if let Ok(mut map) = self.tcp.lock() {
            map.insert((address.to_string(), *port), task.abort_handle());
        }
        true
    }

    /// `cancel-tcpip-forward`.
    pub fn cancel_tcp(&self, address: &str, port: u32) -> bool {
        match self
            .tcp
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&(address.to_string(), port)))
        {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    /// `streamlocal-forward@openssh.com`: a unix socket here, relayed to the client.
    pub fn add_unix(&self, handle: Handle, path: &str) -> bool {
        let listener = match UnixListener::bind(path) {
            Ok(l) => l,
            Err(e) => {
                tracing::info!("streamlocal-forward {path}: {e}");
                return false;
            }
        };
        let socket_path = path.to_string();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let handle = handle.clone();
                let socket_path = socket_path.clone();
                tokio::spawn(async move {
                    if let Ok(channel) =
                        handle.channel_open_forwarded_streamlocal(socket_path).await
                    {
                        relay(channel, conn).await;
                    }
                });
            }
        });
        if let Ok(mut map) = self.unix.lock() {
            map.insert(path.to_string(), task.abort_handle());
        }
        true
    }

    /// `cancel-streamlocal-forward@openssh.com`.
    pub fn cancel_unix(&self, path: &str) -> bool {
        match self.unix.lock().ok().and_then(|mut m| m.remove(path)) {
            Some(task) => {
                task.abort();
                let _ = std::fs::remove_file(path);
                true
            }
            None => false,
        }
    }
}

impl Drop for RemoteForwards {
    fn drop(&mut self) {
        if let Ok(map) = self.tcp.lock() {
            map.values().for_each(AbortHandle::abort);
        }
        if let Ok(map) = self.unix.lock() {
            for (path, task) in map.iter() {
                task.abort();
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
