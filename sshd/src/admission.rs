//! Who may start a login, and for how long: unauthenticated connections wait in a bounded queue
//! for one of `--max-startups` slots, the login grace time runs from accept to authentication
//! (queueing, version exchange and key exchange included), and a connection over its time is cut
//! at the socket, so a client that stops talking can never keep a slot. While others wait, a slot
//! whose client has said nothing for [`EVICT_AFTER_IDLE`] is taken back: a flood of silent
//! connections delays a real login by seconds, never locks it out.

use std::collections::HashMap;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long an unauthenticated client holding a slot may stay silent while others wait.
pub const EVICT_AFTER_IDLE: Duration = Duration::from_secs(5);

/// `SSH_DISCONNECT_TOO_MANY_CONNECTIONS` (RFC 4253 section 11.1).
pub const TOO_MANY_CONNECTIONS: u32 = 12;

/// The default of `--max-waiting`: connections that may wait for a slot beyond the
/// `--max-startups` being served; past that a connection is refused at once with a reason (each
/// waiting one holds a file descriptor).
pub const DEFAULT_MAX_WAITING: usize = 1024;

/// A second handle on a connection's socket that can cut it whatever its reader is doing.
pub struct Cutter(Option<std::net::TcpStream>);

impl Cutter {
    /// Duplicates the socket's descriptor (the copy refers to the same connection).
    pub fn new(tcp: &TcpStream) -> Cutter {
        let dup = tcp.as_fd().try_clone_to_owned().ok();
        Cutter(dup.map(std::net::TcpStream::from))
    }

    /// Shuts the connection down both ways: the session's reads end and its task finishes.
    pub fn cut(&self) {
        if let Some(s) = &self.0 {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// The unauthenticated connections holding a slot: when they last sent anything, and how to cut
/// them.
#[derive(Default)]
pub struct Slots {
    held: Mutex<HashMap<u64, Holder>>,
}

/// A slot holder: when it last spoke, and how to cut it.
type Holder = (Arc<Activity>, Arc<Cutter>);

impl Slots {
    /// Records that connection `id` holds a slot.
    pub fn hold(&self, id: u64, activity: Arc<Activity>, cutter: Arc<Cutter>) {
        if let Ok(mut m) = self.held.lock() {
            m.insert(id, (activity, cutter));
        }
    }

    /// Connection `id` authenticated or ended.
    pub fn release(&self, id: u64) {
        if let Ok(mut m) = self.held.lock() {
            m.remove(&id);
        }
    }

    /// Cuts the connection silent the longest if it has been silent for `idle`; true if one was.
    pub fn evict_idle(&self, idle: Duration) -> bool {
        let Ok(mut m) = self.held.lock() else {
            return false;
        };
        let victim = m
            .iter()
            .map(|(id, (a, _))| (*id, a.silent_for()))
            .filter(|(_, silent)| *silent >= idle)
            .max_by_key(|(_, silent)| *silent)
            .map(|(id, _)| id);
        match victim.and_then(|id| m.remove(&id)) {
            Some((_, cutter)) => {
                cutter.cut();
                true
            }
            None => false,
        }
    }
}

/// When a connection last delivered bytes.
pub struct Activity {
    epoch: Instant,
    last_millis: AtomicU64,
}

impl Activity {
    /// Activity starting now.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            last_millis: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_millis.store(ms, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_millis.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// A stream that notes in its [`Activity`] each time the client's bytes arrive.
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Tracked { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    // Vectored writes go through as they are: the default would write one buffer at a time.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Our version line and an SSH_MSG_DISCONNECT packet in the clear, which clients print
/// ("Received disconnect from ...: 12: too many connections ...") before key exchange.
pub fn refusal(reason_code: u32, description: &str) -> Vec<u8> {
    let mut payload = vec![1u8]; // SSH_MSG_DISCONNECT
    payload.extend_from_slice(&reason_code.to_be_bytes());
    payload.extend_from_slice(&(description.len() as u32).to_be_bytes());
    payload.extend_from_slice(description.as_bytes());
    payload.extend_from_slice(&0u32.to_be_bytes()); // language tag
                                                    // uint32 length, byte padding length, payload, padding: a multiple of 8, at least 4 padding.
    let mut padding = 8 - (5 + payload.len()) % 8;
    if padding < 4 {
        padding += 8;
    }
    let mut out = b"SSH-2.0-envd_sshd\r\n".to_vec();
    out.extend_from_slice(&((1 + payload.len() + padding) as u32).to_be_bytes());
    out.push(padding as u8);
    out.extend_from_slice(&payload);
    out.extend(std::iter::repeat_n(0u8, padding));
    out
}

/// Refuses a connection with a reason. The client's first bytes are read and dropped for up to
/// a second after it: closing at once would make its own first write fail ("Broken pipe")
/// before it reads the reason.
pub fn refuse(tcp: TcpStream, description: &str) {
    let bytes = refusal(TOO_MANY_CONNECTIONS, description);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tcp;
        if tcp.write_all(&bytes).await.is_err() {
            return;
        }
        let _ = tcp.shutdown().await;
        let mut sink = [0u8; 4096];
        let drain = async {
            while let Ok(n) = tcp.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    });
}

/// Marks every descriptor above stderr close-on-exec, so what a parent left open never reaches
/// the programs sessions run.
pub fn close_inherited_on_exec() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // The directory's own descriptor is gone by now: EBADF, ignored.
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_is_a_well_formed_cleartext_packet() {
        for text in [
            "",
            "x",
            "too many connections waiting to log in",
            &"y".repeat(300),
        ] {
            let bytes = refusal(TOO_MANY_CONNECTIONS, text);
            let packet = &bytes[b"SSH-2.0-envd_sshd\r\n".len()..];
            let len = u32::from_be_bytes(packet[..4].try_into().unwrap()) as usize;
            assert_eq!(packet.len(), 4 + len);
            assert_eq!(packet.len() % 8, 0);
            let padding = packet[4] as usize;
            assert!(padding >= 4);
            assert_eq!(packet[5], 1);
            assert_eq!(&packet[6..10], &TOO_MANY_CONNECTIONS.to_be_bytes());
            let dlen = u32::from_be_bytes(packet[10..14].try_into().unwrap()) as usize;
            assert_eq!(&packet[14..14 + dlen], text.as_bytes());
            assert_eq!(5 + 1 + 4 + 4 + dlen + 4 + padding, packet.len());
        }
    }
}
