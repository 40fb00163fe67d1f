//! The russh handler of one connection, and the listener that runs connections with envd-sshd's
//! limits: a login grace time, a cap on concurrent unauthenticated connections, and a clean stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet, Pty};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::forward::{self, RemoteForwards};
use crate::keys;
use crate::session::{self, ConnContext, UserInfo};

/// What the server needs beyond russh's config.
pub struct Settings {
    /// The authorized_keys file (re-read at each attempt, so the host can update it).
    pub authorized_keys: PathBuf,
    /// The account sessions run as.
    pub user: Arc<UserInfo>,
    /// Let `ssh -R` bind non-loopback addresses.
    pub gateway_ports: bool,
    /// Time an unauthenticated connection may take.
    pub login_grace: Duration,
    /// Most unauthenticated connections at once.
    pub max_startups: usize,
}

/// The russh config envd-sshd uses: public-key auth only, ssh-audit-clean algorithms, and
/// window and packet sizes that keep bulk transfers near OpenSSH's speed.
pub fn russh_config(host_key: russh::keys::PrivateKey) -> russh::server::Config {
    use russh::{cipher, kex, mac};
    use std::borrow::Cow;
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    russh::server::Config {
        methods,
        keys: vec![host_key],
        auth_rejection_time: Duration::from_secs(1),
        auth_rejection_time_initial: Some(Duration::from_millis(0)),
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(60)),
        keepalive_max: 3,
        nodelay: true,
        window_size: 8 * 1024 * 1024,
        maximum_packet_size: 65535,
        channel_buffer_size: 256,
        event_buffer_size: 64,
        max_auth_attempts: 6,
        preferred: russh::Preferred {
            kex: Cow::Borrowed(&[
                kex::MLKEM768X25519_SHA256,
                kex::CURVE25519,
                kex::CURVE25519_PRE_RFC_8731,
                kex::EXTENSION_SUPPORT_AS_SERVER,
                kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
            ]),
            cipher: Cow::Borrowed(&[
                cipher::CHACHA20_POLY1305,
                cipher::AES_256_GCM,
                cipher::AES_128_GCM,
                cipher::AES_256_CTR,
                cipher::AES_128_CTR,
            ]),
            mac: Cow::Borrowed(&[mac::HMAC_SHA512_ETM, mac::HMAC_SHA256_ETM]),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The handler of one connection.
pub struct Connection {
    settings: Arc<Settings>,
    peer: SocketAddr,
    local: SocketAddr,
    authenticated: Arc<AtomicBool>,
    startup_permit: Option<OwnedSemaphorePermit>,
    forwards: Arc<RemoteForwards>,
    ctx: Option<Arc<ConnContext>>,
}

impl Connection {
    fn authorized(&self, key: &PublicKey) -> bool {
        match keys::read_authorized_keys(&self.settings.authorized_keys) {
            Ok(list) => list.iter().any(|k| k.key_data() == key.key_data()),
            Err(e) => {
                tracing::warn!("{e:#}");
                false
            }
        }
    }

    fn ctx(&mut self, session: &Session) -> Arc<ConnContext> {
        self.ctx
            .get_or_insert_with(|| {
                Arc::new(ConnContext {
                    handle: session.handle(),
                    user: self.settings.user.clone(),
                    peer: self.peer,
                    local: self.local,
                })
            })
            .clone()
    }
}

fn reject() -> Auth {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    Auth::Reject {
        proceed_with_methods: Some(methods),
        partial_success: false,
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(reject())
    }

    async fn auth_password(&mut self, _user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(reject())
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.authorized(offer.public_key) {
            Auth::Accept
        } else {
            reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.authorized(key.public_key) {
            Auth::Accept
        } else {
            reject()
        })
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        self.authenticated.store(true, Ordering::SeqCst);
        self.startup_permit = None;
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ctx = self.ctx(session);
        reply.accept().await;
        tokio::spawn(session::run(channel, ctx));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        tokio::spawn(forward::direct_tcpip(
            channel,
            host_to_connect.to_string(),
            port_to_connect,
            reply,
        ));
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        tokio::spawn(forward::direct_streamlocal(
            channel,
            socket_path.to_string(),
            reply,
        ));
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(self
            .forwards
            .add_tcp(session.handle(), address, port, self.settings.gateway_ports)
            .await)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(self.forwards.cancel_tcp(address, port))
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(self.forwards.add_unix(session.handle(), socket_path))
    }

    async fn cancel_streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(self.forwards.cancel_unix(socket_path))
    }
}

/// Accepts connections until `stop` resolves, then disconnects every client.
pub async fn serve(
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    settings: Arc<Settings>,
    stop: impl std::future::Future<Output = ()>,
) {
    let startups = Arc::new(Semaphore::new(settings.max_startups));
    let sessions: SessionMap = Arc::default();
    let mut next_id = 0u64;
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = startups.clone().try_acquire_owned() else {
            tracing::info!("{peer}: too many unauthenticated connections; dropped");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().unwrap_or(peer);
        let authenticated = Arc::new(AtomicBool::new(false));
        let handler = Connection {
            settings: settings.clone(),
            peer,
            local,
            authenticated: authenticated.clone(),
            startup_permit: Some(permit),
            forwards: Arc::default(),
            ctx: None,
        };
        let config = config.clone();
        let grace = settings.login_grace;
        let sessions = sessions.clone();
        next_id += 1;
        let id = next_id;
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            // The grace time covers the version exchange too: a silent client is dropped.
            let running =
                match tokio::time::timeout(grace, russh::server::run_stream(config, tcp, handler))
                    .await
                {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        tracing::debug!("{peer}: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::info!("{peer}: no SSH handshake within {grace:?}; dropped");
                        return;
                    }
                };
            let handle = running.handle();
            if let Ok(mut list) = sessions.lock() {
                list.insert(id, handle.clone());
            }
            let forget = ForgetOnDrop(sessions.clone(), id);
            tokio::pin!(running);
            tokio::select! {
                r = &mut running => {
                    if let Err(e) = r { tracing::debug!("{peer}: {e}"); }
                    return;
                }
                _ = tokio::time::sleep_until(started + grace) => {}
            }
            if !authenticated.load(Ordering::SeqCst) {
                tracing::info!("{peer}: not authenticated within {grace:?}; disconnecting");
                let _ = handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "login grace time exceeded".into(),
                        String::new(),
                    )
                    .await;
                return;
            }
            if let Err(e) = running.await {
                tracing::debug!("{peer}: {e}");
            }
            drop(forget);
        });
    }
    let handles: Vec<_> = sessions
        .lock()
        .map(|l| l.values().cloned().collect())
        .unwrap_or_default();
    for h in handles {
        let _ = h
            .disconnect(
                russh::Disconnect::ByApplication,
                "server shutting down".into(),
                String::new(),
            )
            .await;
    }
}

type SessionMap = Arc<std::sync::Mutex<std::collections::HashMap<u64, russh::server::Handle>>>;

/// Removes a finished connection from the list disconnected at shutdown.
struct ForgetOnDrop(SessionMap, u64);

impl Drop for ForgetOnDrop {
    fn drop(&mut self) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&self.1);
        }
    }
}
