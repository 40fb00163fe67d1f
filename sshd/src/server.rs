//! The russh handler of one connection, and the listener that runs connections with envd-sshd's
//! limits: a login grace time, a cap on concurrent unauthenticated connections, and a clean stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet, Pty};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::admission;
use crate::forward::{self, RemoteForwards};
use crate::keys::{self, Restrictions};
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
    /// Most connections waiting for one of those slots; past that, refused with a reason.
    pub max_waiting: usize,
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

/// Session channels one connection may have open at once (OpenSSH's `MaxSessions`): with the
/// per-channel input bound in [`session`], this bounds what one connection can make us buffer.
pub const MAX_SESSIONS: usize = 10;

/// The handler of one connection.
pub struct Connection {
    settings: Arc<Settings>,
    peer: SocketAddr,
    local: SocketAddr,
    authenticated: Arc<AtomicBool>,
    startup_permit: Option<OwnedSemaphorePermit>,
    slots: Arc<admission::Slots>,
    id: u64,
    restrictions: Restrictions,
    open_sessions: Arc<AtomicUsize>,
    forwards: Arc<RemoteForwards>,
    ctx: Option<Arc<ConnContext>>,
}

impl Connection {
    /// The restrictions of the authorized_keys line holding `key`, if one does and the login
    /// name is the server's user (OpenSSH logs in only as an existing account; envd-sshd serves
    /// one).
    fn authorized(&self, user: &str, key: &PublicKey) -> Option<Restrictions> {
        if user != self.settings.user.name {
            tracing::info!(
                "{}: login as {user:?} refused: this server serves {:?}",
                self.peer,
                self.settings.user.name
            );
            return None;
        }
        match keys::read_authorized_keys(&self.settings.authorized_keys) {
            Ok(list) => list
                .iter()
                .find(|k| k.key.key_data() == key.key_data())
                .map(|k| k.restrictions),
            Err(e) => {
                tracing::warn!("{e:#}");
                None
            }
        }
    }

    fn may_forward(&self, what: &str) -> bool {
        if self.restrictions.no_port_forwarding {
            tracing::info!(
                "{}: {what} refused: the key has no-port-forwarding",
                self.peer
            );
        }
        !self.restrictions.no_port_forwarding
    }

    fn ctx(&mut self, session: &Session) -> Arc<ConnContext> {
        self.ctx
            .get_or_insert_with(|| {
                Arc::new(ConnContext {
                    handle: session.handle(),
                    user: self.settings.user.clone(),
                    peer: self.peer,
                    local: self.local,
                    restrictions: self.restrictions,
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
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(match self.authorized(user, offer.public_key) {
            Some(_) => Auth::Accept,
            None => reject(),
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        // ssh-rsa signs with SHA-1, which OpenSSH 8.8 and later refuse too.
        if matches!(key.algorithm, russh::keys::Algorithm::Rsa { hash: None }) {
            tracing::info!("{}: ssh-rsa (SHA-1) signature refused", self.peer);
            return Ok(reject());
        }
        Ok(match self.authorized(user, key.public_key) {
            Some(r) => {
                self.restrictions = r;
                Auth::Accept
            }
            None => reject(),
        })
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        self.authenticated.store(true, Ordering::SeqCst);
        self.slots.release(self.id);
        self.startup_permit = None;
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let open = self.open_sessions.clone();
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_SESSIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            tracing::info!("{}: more than {MAX_SESSIONS} sessions; refused", self.peer);
            reply
                .reject(russh::ChannelOpenFailure::ResourceShortage)
                .await;
            return Ok(());
        }
        let ctx = self.ctx(session);
        reply.accept().await;
        tokio::spawn(async move {
            session::run(channel, ctx).await;
            open.fetch_sub(1, Ordering::SeqCst);
        });
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
        if !self.may_forward("direct-tcpip") {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
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
        if !self.may_forward("direct-streamlocal") {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
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
        if self.restrictions.no_pty {
            return session.channel_failure(channel);
        }
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
        Ok(!self.restrictions.no_agent_forwarding)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if !self.may_forward("tcpip-forward") {
            return Ok(false);
        }
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
        if !self.may_forward("streamlocal-forward") {
            return Ok(false);
        }
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
    let slots: Arc<admission::Slots> = Arc::default();
    let waiting = Arc::new(AtomicUsize::new(0));
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
        let full = startups.available_permits() == 0;
        if full && waiting.load(Ordering::SeqCst) >= settings.max_waiting {
            tracing::info!("{peer}: too many connections waiting to log in; refused");
            admission::refuse(
                tcp,
                "too many connections waiting to log in; try again later",
            );
            continue;
        }
        next_id += 1;
        let login = Login {
            tcp,
            peer,
            config: config.clone(),
            settings: settings.clone(),
            startups: startups.clone(),
            slots: slots.clone(),
            waiting: WaitingGuard::new(waiting.clone()),
            sessions: sessions.clone(),
            id: next_id,
        };
        tokio::spawn(login.run());
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

/// One accepted connection on its way through the login: wait for a slot, handshake,
/// authenticate, all within the grace time; then the session runs to its end.
struct Login {
    tcp: TcpStream,
    peer: SocketAddr,
    config: Arc<russh::server::Config>,
    settings: Arc<Settings>,
    startups: Arc<Semaphore>,
    slots: Arc<admission::Slots>,
    waiting: WaitingGuard,
    sessions: SessionMap,
    id: u64,
}

impl Login {
    async fn run(self) {
        let Login {
            tcp,
            peer,
            config,
            settings,
            startups,
            slots,
            waiting,
            sessions,
            id,
        } = self;
        let grace = settings.login_grace;
        let deadline = tokio::time::Instant::now() + grace;
        let Some(permit) = wait_for_slot(&startups, &slots, deadline).await else {
            tracing::info!("{peer}: no free login slot within {grace:?}; refused");
            admission::refuse(tcp, "too many unauthenticated connections; try again later");
            return;
        };
        drop(waiting);
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().unwrap_or(peer);
        let cutter = Arc::new(admission::Cutter::new(&tcp));
        let activity = admission::Activity::new();
        slots.hold(id, activity.clone(), cutter.clone());
        let _release = ReleaseSlot(slots.clone(), id);
        let tcp = admission::Tracked::new(tcp, activity);
        let authenticated = Arc::new(AtomicBool::new(false));
        let handler = Connection {
            settings,
            peer,
            local,
            authenticated: authenticated.clone(),
            startup_permit: Some(permit),
            slots: slots.clone(),
            id,
            restrictions: Restrictions::default(),
            open_sessions: Arc::new(AtomicUsize::new(0)),
            forwards: Arc::default(),
            ctx: None,
        };
        let started = russh::server::run_stream(config, tcp, handler);
        let running = match tokio::time::timeout_at(deadline, started).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!("{peer}: {e}");
                return;
            }
            Err(_) => {
                tracing::info!("{peer}: no SSH version within {grace:?}; dropped");
                cutter.cut();
                return;
            }
        };
        let handle = running.handle();
        if let Ok(mut list) = sessions.lock() {
            list.insert(id, handle.clone());
        }
        let _forget = ForgetOnDrop(sessions.clone(), id);
        tokio::pin!(running);
        tokio::select! {
            r = &mut running => {
                if let Err(e) = r { tracing::debug!("{peer}: {e}"); }
                return;
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
        if !authenticated.load(Ordering::SeqCst) {
            tracing::info!("{peer}: not authenticated within {grace:?}; disconnecting");
            // Polite first; a client mid-handshake never reads it, so the socket is cut anyway.
            let bye = handle.disconnect(
                russh::Disconnect::ByApplication,
                "login grace time exceeded".into(),
                String::new(),
            );
            let _ = tokio::time::timeout(Duration::from_millis(100), bye).await;
            cutter.cut();
            let _ = tokio::time::timeout(Duration::from_secs(5), running).await;
            return;
        }
        if let Err(e) = running.await {
            tracing::debug!("{peer}: {e}");
        }
    }
}

/// Waits for a login slot until `deadline`, taking back a silent client's slot meanwhile.
async fn wait_for_slot(
    startups: &Arc<Semaphore>,
    slots: &admission::Slots,
    deadline: tokio::time::Instant,
) -> Option<OwnedSemaphorePermit> {
    let acquire = startups.clone().acquire_owned();
    tokio::pin!(acquire);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            p = &mut acquire => return p.ok(),
            _ = tokio::time::sleep_until(deadline) => return None,
            _ = tick.tick() => {
                slots.evict_idle(admission::EVICT_AFTER_IDLE);
            }
        }
    }
}

/// Takes a connection off the list of slot holders when its login ends.
struct ReleaseSlot(Arc<admission::Slots>, u64);

impl Drop for ReleaseSlot {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

/// Counts a connection as waiting for a login slot until dropped.
struct WaitingGuard(Arc<AtomicUsize>);

impl WaitingGuard {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        WaitingGuard(count)
    }
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
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
