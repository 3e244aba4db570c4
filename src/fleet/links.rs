//! The links between nodes: ractor_cluster's `NodeServer` (cookie authentication, process
//! groups across nodes), with the TCP and TLS ends of every link done here.
//!
//! ractor_cluster's own listener runs each TLS handshake inline, one at a time and without a
//! time limit, so one peer that connects and stalls would keep every other node out. Here each
//! accepted connection gets its own task, at most [`MAX_HANDSHAKES`] at once, and
//! [`HANDSHAKE_TIMEOUT`] to finish; only then is the stream handed to the `NodeServer`. The
//! same holds for the links this node opens (`--fleet-join`), which are retried every
//! [`JOIN_RETRY`] while they are down (doubling up to [`JOIN_RETRY_MAX`] while they fail), so a
//! node that returns is joined again without restarting anyone.
//!
//! Every refusal is logged on both sides with its reason: a TLS failure by
//! `tls::explain_handshake_error`, a link closed before authentication as a cookie mismatch
//! (ractor_cluster closes it without saying why).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorId, ActorRef};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{NetworkStream, NodeEventSubscription, NodeServer, NodeServerMessage};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::tls::{explain_handshake_error, server_name, FleetTls};

/// The longest a link's TCP connect and TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Incoming links in their handshake at once; more wait for their turn.
pub const MAX_HANDSHAKES: usize = 64;

/// How often a join target that is not linked is tried.
pub const JOIN_RETRY: Duration = Duration::from_secs(1);

/// The longest wait between two tries of a join target that keeps failing.
pub const JOIN_RETRY_MAX: Duration = Duration::from_secs(5);

/// How the links are made.
#[derive(Clone)]
pub struct LinkOptions {
    /// This node's name.
    pub name: String,
    /// Where to accept links.
    pub listen: SocketAddr,
    /// `HOST:PORT` of the nodes to link to.
    pub join: Vec<String>,
    /// The shared secret of ractor_cluster's authentication.
    pub cookie: String,
    /// The links' TLS; `None` only with `--fleet-insecure` (loopback only).
    pub tls: Option<FleetTls>,
}

/// Why the links could not start.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The fleet address could not be bound.
    #[error(
        "cannot listen for fleet links on {addr}: {source} (pick another with --fleet-listen)"
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        source: std::io::Error,
    },
    /// ractor_cluster's node server did not start.
    #[error("cannot start the fleet's node server: {0}")]
    NodeServer(String),
}

/// The running links.
pub struct Links {
    server: ActorRef<NodeServerMessage>,
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Links {
    /// Binds the fleet address, starts the node server, and starts joining.
    pub async fn start(options: LinkOptions) -> Result<Self, LinkError> {
        let listener =
            TcpListener::bind(options.listen)
                .await
                .map_err(|source| LinkError::Listen {
                    addr: options.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| LinkError::Listen {
            addr: options.listen,
            source,
        })?;
        // The node server's own listener takes no link from outside: it is bound to an
        // ephemeral loopback port, and with TLS it asks for a fleet certificate all the same.
        let encryption = options
            .tls
            .as_ref()
            .map(|tls| ractor_cluster::IncomingEncryptionMode::Tls(tls.acceptor.clone()));
        let node = NodeServer::new(
            0,
            options.cookie.clone(),
            options.name.clone(),
            addr.ip().to_string(),
            encryption,
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(std::net::Ipv4Addr::LOCALHOST.into());
        let (server, _) = Actor::spawn(None, node, ())
            .await
            .map_err(|e| LinkError::NodeServer(e.to_string()))?;
        let watch = Arc::new(LinkWatch::default());
        let _ = server.cast(NodeServerMessage::SubscribeToEvents {
            id: "sshvisor.links".into(),
            subscription: Box::new(Subscriber(watch.clone())),
        });
        let mut tasks = vec![tokio::spawn(accept_loop(
            listener,
            server.clone(),
            options.tls.clone(),
        ))];
        for target in &options.join {
            tasks.push(tokio::spawn(join_loop(
                target.clone(),
                server.clone(),
                options.tls.clone(),
                watch.clone(),
            )));
        }
        info!(%addr, node = %options.name, tls = options.tls.is_some(), joins = ?options.join, "fleet: listening for links");
        Ok(Self {
            server,
            addr,
            tasks,
        })
    }

    /// The fleet address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every link and stops accepting.
    pub fn close(&self) {
        for task in &self.tasks {
            task.abort();
        }
        self.server.stop(None);
    }
}

async fn accept_loop(
    listener: TcpListener,
    server: ActorRef<NodeServerMessage>,
    tls: Option<FleetTls>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "fleet: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let server = server.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let Ok(local) = tcp.local_addr() else { return };
            let stream = match tls {
                None => NetworkStream::Raw {
                    peer_addr: peer,
                    local_addr: local,
                    stream: tcp,
                },
                Some(tls) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => NetworkStream::TlsServer {
                            peer_addr: peer,
                            local_addr: local,
                            stream,
                        },
                        Ok(Err(e)) => {
                            warn!(%peer, why = %explain_handshake_error(&e), "fleet: link refused (TLS)");
                            return;
                        }
                        Err(_) => {
                            warn!(%peer, "fleet: link refused: its TLS handshake did not finish within {}", humantime::format_duration(HANDSHAKE_TIMEOUT));
                            return;
                        }
                    }
                }
            };
            let _ = server.cast(NodeServerMessage::ConnectionOpened {
                stream: Box::new(stream),
                is_server: true,
            });
        });
    }
}

/// Keeps a link to `target` while this node runs.
async fn join_loop(
    target: String,
    server: ActorRef<NodeServerMessage>,
    tls: Option<FleetTls>,
    watch: Arc<LinkWatch>,
) {
    let mut wait = JOIN_RETRY;
    let mut last_error = String::new();
    loop {
        if watch.linked(&target) {
            wait = JOIN_RETRY;
            last_error.clear();
        } else {
            match open_link(&target, &server, tls.as_ref(), &watch).await {
                Ok(()) => {
                    wait = JOIN_RETRY;
                    last_error.clear();
                }
                Err(e) => {
                    if e != last_error {
                        warn!(target = %target, error = %e, "fleet: cannot link to the node; retrying");
                        last_error = e;
                    }
                    wait = (wait * 2).min(JOIN_RETRY_MAX);
                }
            }
        }
        tokio::time::sleep(wait).await;
    }
}

/// Opens one link to `target` and waits until it is authenticated (or refused).
async fn open_link(
    target: &str,
    server: &ActorRef<NodeServerMessage>,
    tls: Option<&FleetTls>,
    watch: &LinkWatch,
) -> Result<(), String> {
    let timed = |what: &str| {
        format!(
            "{what} did not finish within {}",
            humantime::format_duration(HANDSHAKE_TIMEOUT)
        )
    };
    let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(target))
        .await
        .map_err(|_| timed("the TCP connect"))?
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let peer = tcp.peer_addr().map_err(|e| e.to_string())?;
    let local = tcp.local_addr().map_err(|e| e.to_string())?;
    watch.expect(peer, target);
    let stream = match tls {
        None => NetworkStream::Raw {
            peer_addr: peer,
            local_addr: local,
            stream: tcp,
        },
        Some(tls) => {
            let host = target.rsplit_once(':').map_or(target, |(host, _)| host);
            let name = server_name(host).map_err(|e| e.to_string())?;
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connector.connect(name, tcp))
                .await
                .map_err(|_| timed("the TLS handshake"))?
                .map_err(|e| format!("TLS: {}", explain_handshake_error(&e)))?;
            NetworkStream::TlsClient {
                peer_addr: peer,
                local_addr: local,
                stream,
            }
        }
    };
    server
        .cast(NodeServerMessage::ConnectionOpened {
            stream: Box::new(stream),
            is_server: false,
        })
        .map_err(|e| format!("the node server is gone: {e}"))?;
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        match watch.outcome(peer) {
            Some(Ok(())) => return Ok(()),
            Some(Err(e)) => return Err(e),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    Err(timed("the cookie authentication"))
}

/// What the node server says of its sessions: which join target is which node, which links
/// are up, and why one closed.
#[derive(Default)]
struct LinkWatch {
    state: Mutex<WatchState>,
}

#[derive(Default)]
struct WatchState {
    /// The join target each outgoing peer address was dialled as.
    dialled: HashMap<String, String>,
    /// Per join target: the node name learned when its link authenticated.
    names: HashMap<String, String>,
    /// Sessions open now: peer address, whether authenticated, the peer's node name.
    sessions: HashMap<ActorId, Session>,
    /// Per dialled peer address: how its last attempt ended.
    outcomes: HashMap<String, Result<(), String>>,
}

struct Session {
    peer_addr: String,
    is_server: bool,
    name: Option<String>,
}

impl LinkWatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expect(&self, peer: SocketAddr, target: &str) {
        let mut state = self.lock();
        state.dialled.insert(peer.to_string(), target.to_string());
        state.outcomes.remove(&peer.to_string());
    }

    fn outcome(&self, peer: SocketAddr) -> Option<Result<(), String>> {
        self.lock().outcomes.get(&peer.to_string()).cloned()
    }

    /// Whether a link (either way) is up with the node `target` was last found to be.
    fn linked(&self, target: &str) -> bool {
        let state = self.lock();
        let Some(name) = state.names.get(target) else {
            return false;
        };
        state
            .sessions
            .values()
            .any(|s| s.name.as_deref() == Some(name.as_str()))
    }
}

fn peer_name(ses: &NodeServerSessionInformation) -> Option<String> {
    ses.peer_name.as_ref().map(|n| n.name.clone())
}

/// The node server's subscriber: records into the shared [`LinkWatch`].
struct Subscriber(Arc<LinkWatch>);

impl NodeEventSubscription for Subscriber {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        self.0.lock().sessions.insert(
            ses.actor.get_id(),
            Session {
                peer_addr: ses.peer_addr.clone(),
                is_server: ses.is_server,
                name: None,
            },
        );
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        let name = peer_name(&ses);
        let mut state = self.0.lock();
        if let Some(session) = state.sessions.get_mut(&ses.actor.get_id()) {
            session.name = name.clone();
        }
        if !ses.is_server {
            if let Some(target) = state.dialled.get(&ses.peer_addr).cloned() {
                if let Some(name) = &name {
                    state.names.insert(target, name.clone());
                }
                state.outcomes.insert(ses.peer_addr.clone(), Ok(()));
            }
        }
        drop(state);
        info!(peer = %ses.peer_addr, node = name.as_deref(), incoming = ses.is_server, "fleet: link authenticated");
    }

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let mut state = self.0.lock();
        let Some(session) = state.sessions.remove(&ses.actor.get_id()) else {
            return;
        };
        match session.name {
            Some(name) => {
                drop(state);
                info!(peer = %session.peer_addr, node = %name, "fleet: link closed");
            }
            None => {
                let why = "closed before it was authenticated: the two nodes' cookies differ (compare their --fleet-cookie-file), or the other node refused it (see its log)";
                if !session.is_server {
                    state
                        .outcomes
                        .insert(session.peer_addr.clone(), Err(format!("the link {why}")));
                }
                drop(state);
                warn!(peer = %session.peer_addr, incoming = session.is_server, "fleet: link refused: {why}");
            }
        }
    }
}
