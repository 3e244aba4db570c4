//! The SSH listener: our own accept loop, one task per connection, each registered with the
//! supervisor before russh sees a byte.
//!
//! Each accepted socket gets nodelay (russh's `run_stream` ignores `Config::nodelay`), is wrapped
//! in a [`CuttableStream`], admitted by the supervisor (`Connect`), and then driven by
//! `russh::server::run_stream` inside its own task, which also waits for the client's banner, so
//! a client that never speaks holds nothing but its own task. When the russh session ends, for
//! whatever reason, the task tells the connection actor (`TransportClosed`).
//!
//! A connection over a limit is refused over SSH (the client prints which limit), in a cuttable
//! stream closed by [`REFUSAL_TIMEOUT`] at the latest, and at most [`MAX_REFUSING`] at once.
//!
//! Before all that, the accept loop asks the per-source [`Penalties`]: a penalized source (or
//! one over its connection rate) gets one line saying why, written without waiting, and the
//! socket is closed: no supervisor, no russh, no key exchange. Each connection's end (failed
//! login, dropped before authenticating) and each limit refusal is counted against its source.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use ractor::ActorRef;
use russh::keys::PrivateKey;
use russh::server::Config;
use russh::MethodKind;
use sshvisor_actors::{ConnectionMsg, HandleError, SupervisorHandle, TransportEnd};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::audit::Audit;
use crate::ssh::activity::Activity;
use crate::ssh::after_goodbye::AfterGoodbye;
use crate::ssh::algorithms::Algorithms;
use crate::ssh::auth::Authenticator;
use crate::ssh::channels::SessionChannels;
use crate::ssh::handler::{HandlerError, SshHandler};
use crate::ssh::link::RusshConnectionLink;
use crate::ssh::penalties::{LoginTally, Offence, Penalties, PenaltyPolicy, Refusal};
use crate::ssh::sessions::{Endpoints, SessionFactory};
use crate::ssh::stream::{CutSwitch, CuttableStream};

/// What the SSH side of the server needs.
pub struct SshOptions {
    /// The address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The host key.
    pub host_key: PrivateKey,
    /// Who may log in: an authorized_keys set (`Arc::new(AuthorizedKeys::read_file(..)?)`) or
    /// an embedding program's own [`Authenticator`].
    pub auth: Arc<dyn Authenticator>,
    /// Keepalive probe interval (none: never) and how many may go unanswered.
    pub keepalive: (Option<Duration>, usize),
    /// What serves session channels: an embedding program's own [`SessionFactory`], or the
    /// default application (`Arc::new(DefaultSessions::new(env))`, see
    /// `session::app::DefaultSessions`: processes, in-process commands and sftp, as its
    /// `ExecEnv` says). Kept across [`SshListener::update`]: what it serves with is its own
    /// business (the daemon's reload gives its `DefaultSessions` the new `ExecEnv`).
    pub sessions: Arc<dyn SessionFactory>,
    /// The algorithms offered: `Algorithms::default()` is the hardened policy (see
    /// [`Algorithms`] to change a list in OpenSSH's syntax). Its host-key algorithms are
    /// ed25519 and RSA: a program with an ECDSA host key adds its curve's
    /// (`.with(Kind::HostKey, "+ecdsa-sha2-nistp256", ..)`), or [`SshListener::bind`] refuses.
    pub algorithms: Algorithms,
    /// Per-source penalties ([`PenaltyPolicy::default`]: on; [`PenaltyPolicy::off`]). Changed
    /// with [`SshListener::penalties`]'s `set_policy`, which keeps the table.
    pub penalties: PenaltyPolicy,
}

/// The russh configuration sshvisor runs with.
pub fn russh_config(
    host_key: PrivateKey,
    keepalive: (Option<Duration>, usize),
    algorithms: &Algorithms,
) -> Config {
    Config {
        server_id: russh::SshId::Standard(
            concat!("SSH-2.0-sshvisor_", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods: russh::MethodSet::from(&[MethodKind::PublicKey][..]),
        // OpenSSH always probes with "none" first: answering that at once saves every login a
        // second, while real rejections stay constant-time.
        auth_rejection_time: Duration::from_millis(500),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        // Idle connections are the operator's business (kill, or an idle policy), not a fixed
        // russh timer's; dead peers are found by keepalives.
        inactivity_timeout: None,
        keepalive_interval: keepalive.0,
        keepalive_max: keepalive.1,
        nodelay: true,
        preferred: algorithms.preferred(),
        ..Default::default()
    }
}

/// A running SSH listener.
pub struct SshListener {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    shared: Arc<Shared>,
}

impl SshListener {
    /// Binds `options.listen` and starts accepting connections into `tree`. Fails with
    /// `InvalidInput` when no host-key algorithm offered fits the host key.
    pub async fn bind(options: SshOptions, tree: SupervisorHandle) -> io::Result<Self> {
        options
            .algorithms
            .check_host_keys(std::slice::from_ref(&options.host_key))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{}: {e}", e.kind)))?;
        let listener = TcpListener::bind(options.listen).await?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            live: RwLock::new(Live {
                config: Arc::new(russh_config(
                    options.host_key.clone(),
                    options.keepalive,
                    &options.algorithms,
                )),
                auth: options.auth,
                sessions: options.sessions,
            }),
            host_key: options.host_key,
            tree,
            refusing: Arc::new(AtomicUsize::new(0)),
            penalties: Arc::new(Penalties::new(options.penalties)),
            audit: std::sync::OnceLock::new(),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stopped));
        info!(%local_addr, "listening for SSH connections");
        Ok(Self {
            local_addr,
            stop,
            task,
            shared,
        })
    }

    /// Replaces who may log in, what serves their sessions, the keepalive and the algorithms
    /// offered, for connections accepted from now on (a configuration reload). Live
    /// connections keep what they have. `algorithms` must fit the host key
    /// ([`Algorithms::check_host_keys`]); if they do not, nothing changes and the error says
    /// why.
    pub fn update(
        &self,
        auth: Arc<dyn Authenticator>,
        sessions: Arc<dyn SessionFactory>,
        keepalive: (Option<Duration>, usize),
        algorithms: &Algorithms,
    ) -> Result<(), crate::ssh::algorithms::AlgorithmError> {
        algorithms.check_host_keys(std::slice::from_ref(&self.shared.host_key))?;
        let live = Live {
            config: Arc::new(russh_config(
                self.shared.host_key.clone(),
                keepalive,
                algorithms,
            )),
            auth,
            sessions,
        };
        *self.shared.live.write().unwrap_or_else(|e| e.into_inner()) = live;
        Ok(())
    }

    /// Records every login, accepted or refused, in `audit` from now on (set once; later
    /// calls are ignored).
    pub fn set_audit(&self, audit: Audit) {
        let _ = self.shared.audit.set(audit);
    }

    /// The listener's per-source penalty table (`ctl penalties`, a reload's new policy).
    pub fn penalties(&self) -> Arc<Penalties> {
        self.shared.penalties.clone()
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and closes the listening socket (the port is free when this returns).
    /// Live connections are not touched.
    pub async fn stop_accepting(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct Shared {
    /// What new connections get; swapped by a reload.
    live: RwLock<Live>,
    host_key: PrivateKey,
    /// The tree connections are admitted into.
    tree: SupervisorHandle,
    /// Refusals in progress (see [`MAX_REFUSING`]).
    refusing: Arc<AtomicUsize>,
    /// Who is refused at the door, and what each connection's end counts against its source.
    penalties: Arc<Penalties>,
    /// Where logins are recorded, once the daemon sets it.
    audit: std::sync::OnceLock<Audit>,
}

#[derive(Clone)]
struct Live {
    config: Arc<Config>,
    auth: Arc<dyn Authenticator>,
    /// What serves session channels: a connection keeps the one in force when it was accepted.
    sessions: Arc<dyn SessionFactory>,
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => break,
        };
        match accepted {
            Ok((socket, peer)) => {
                if let Err(refusal) = shared.penalties.admit(peer.ip(), Instant::now()) {
                    refuse_at_door(socket, &refusal);
                    continue;
                }
                tokio::spawn(serve_socket(shared.clone(), socket, peer));
            }
            Err(e) => {
                // Out of descriptors or a transient network error: back off instead of spinning.
                error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    info!("stopped accepting SSH connections");
}

async fn serve_socket(shared: Arc<Shared>, socket: TcpStream, peer: SocketAddr) {
    if let Err(e) = socket.set_nodelay(true) {
        debug!(%peer, error = %e, "could not set nodelay");
    }
    let live = shared
        .live
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let switch = CutSwitch::new();
    let handle_cell = Arc::new(OnceLock::new());
    let activity = Activity::new();
    let after_goodbye = AfterGoodbye::new();
    let link = RusshConnectionLink::new(
        handle_cell.clone(),
        switch.clone(),
        activity.clone(),
        after_goodbye.clone(),
    );
    // Boxed, like the handshake below: inline, this one-time wait would make the task that
    // lives as long as the connection bigger. No timer on it (see `handler`'s docs for what one
    // costs): the supervisor answers every admission, at once, and if it is gone the reply port
    // is dropped with its mailbox, which ends the wait.
    let admitted = Box::pin(shared.tree.connect(peer, Box::new(link))).await;
    let (conn_id, conn) = match admitted {
        Ok(admitted) => admitted,
        Err(HandleError::Refused(refusal)) => {
            warn!(%peer, reason = %refusal, "connection refused");
            shared
                .penalties
                .offend(peer.ip(), Offence::RefusedByLimit, Instant::now());
            let Some(_slot) = RefusalSlot::take(&shared.refusing) else {
                // A flood of refused clients must not hold the server's descriptors: past the
                // bound, the socket closes without a word.
                debug!(%peer, "too many refusals in progress: closing at once");
                return;
            };
            // Said over SSH, so the client prints why instead of seeing a bare reset.
            Box::pin(refuse(live.config.clone(), socket, refusal.to_string())).await;
            return;
        }
        Err(_) => {
            warn!(%peer, "connection dropped: the supervisor is gone");
            return;
        }
    };
    let ends = Endpoints {
        peer,
        local: socket.local_addr().unwrap_or(peer),
    };
    let sessions = SessionChannels::new(live.sessions.clone(), ends, activity, after_goodbye);
    let tally = Arc::new(LoginTally::default());
    let handler = SshHandler::new(conn.clone(), live.auth.clone(), switch.clone(), sessions)
        .with_tally(tally.clone())
        .with_audit(shared.audit.get().cloned(), conn_id);
    let stream = CuttableStream::new(socket, switch.clone());
    // This task lives as long as the connection: the handshake's future is boxed so that only
    // what waits for the end stays in it. No span of its own either (the connection actor has
    // the connection's): the one event logged here names the connection.
    let started = Box::pin(russh::server::run_stream(
        live.config.clone(),
        stream,
        handler,
    ))
    .await;
    let end = match started {
        Ok(running) => {
            let _ = handle_cell.set(running.handle());
            match running.await {
                Ok(()) => TransportEnd::Closed,
                Err(e) => classify(e, &switch),
            }
        }
        Err(e) => classify(e, &switch),
    };
    debug!(conn_id = %conn_id, %peer, ?end, "transport ended");
    send_end(&conn, end);
    if let Some(offence) = tally.offence() {
        shared.penalties.offend(peer.ip(), offence, Instant::now());
    }
}

/// Tells a refused client why in one line and closes its socket, all without waiting (this runs
/// in the accept loop): a short write onto a fresh socket fits its send buffer, and if it does
/// not, the socket is closed without a word. What the client already sent (its banner) is read
/// off first, so that the close is a FIN after the line rather than a reset that could overtake
/// it.
fn refuse_at_door(socket: TcpStream, refusal: &Refusal) {
    use nix::sys::socket::{recv, send, shutdown, MsgFlags, Shutdown};
    use std::os::fd::AsRawFd;
    debug!(%refusal, "refused at the door");
    let fd = socket.as_raw_fd();
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    if send(fd, refusal.line().as_bytes(), flags).is_ok() {
        let _ = shutdown(fd, Shutdown::Write);
        let mut buf = [0u8; 2048];
        for _ in 0..4 {
            match recv(fd, &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
    }
    drop(socket);
}

/// How long a refused client gets to receive its disconnect message; its socket is closed then
/// at the latest.
pub const REFUSAL_TIMEOUT: Duration = Duration::from_secs(10);

/// How many refused clients may be told why at once. Refused connections are in no map and
/// count against no limit: without a bound, a flood of clients that stall in the key exchange
/// would hold a descriptor each for [`REFUSAL_TIMEOUT`] and starve the listener and the control
/// socket. Past it, a refused socket is closed at once.
pub const MAX_REFUSING: usize = 128;

/// One of the [`MAX_REFUSING`] refusals in progress; given back when dropped.
struct RefusalSlot(Arc<AtomicUsize>);

impl RefusalSlot {
    fn take(refusing: &Arc<AtomicUsize>) -> Option<Self> {
        refusing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_REFUSING).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(refusing.clone()))
    }
}

impl Drop for RefusalSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Completes the key exchange only to send SSH_MSG_DISCONNECT (too many connections) with
/// `reason`, then closes; the socket is closed within [`REFUSAL_TIMEOUT`] whatever the client
/// does.
///
/// `run_stream` runs the session in a task of its own once the client's banner is in: a timeout
/// around it only stops waiting for that task, which would keep the socket until the client
/// leaves (russh holds a DISCONNECT back while the key exchange is unfinished). The stream is
/// cut instead, which ends the task and closes the socket.
async fn refuse(config: Arc<Config>, socket: TcpStream, reason: String) {
    struct Refuser;
    impl russh::server::Handler for Refuser {
        type Error = russh::Error;
    }
    let switch = CutSwitch::new();
    let stream = CuttableStream::new(socket, switch.clone());
    let session = async {
        let running = russh::server::run_stream(config, stream, Refuser).await?;
        let _ = running
            .handle()
            .disconnect(russh::Disconnect::TooManyConnections, reason, "en".into())
            .await;
        running.await
    };
    let timed_out = tokio::time::timeout(REFUSAL_TIMEOUT, session)
        .await
        .is_err();
    // Whatever ended the wait, russh's task (if it started) must not outlive it.
    switch.cut();
    if timed_out {
        debug!("a refused client did not take its disconnect in time: closed");
    }
}

fn classify(error: HandlerError, switch: &CutSwitch) -> TransportEnd {
    if switch.is_cut() {
        return TransportEnd::Aborted;
    }
    match &error {
        HandlerError::Russh(russh::Error::IO(e))
            if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
            ) =>
        {
            TransportEnd::Closed
        }
        HandlerError::Russh(russh::Error::Disconnect) => TransportEnd::Closed,
        _ => TransportEnd::Error(error.to_string()),
    }
}

fn send_end(conn: &ActorRef<ConnectionMsg>, end: TransportEnd) {
    // The actor may already be gone (it crashed): then there is nobody left to tell.
    let _ = conn.cast(ConnectionMsg::TransportClosed { end });
}
