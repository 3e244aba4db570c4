//! Lifecycle events: what they are ([`Event`]) and how code that is not an actor hears them.
//!
//! The supervisor publishes every [`Event`] on the output port given at spawn. ractor's
//! `OutputPort` delivers to actors. [`subscribe`] spawns a tiny forwarding actor so a
//! task (a test, the control socket's `watch`, a host's logger) can simply `recv().await` events.
//! The forwarder stops by itself once the receiver is dropped.

use std::net::SocketAddr;

use ractor::{Actor, ActorProcessingErr, ActorRef, OutputPort, SpawnErr};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::ids::{ConnId, SessionId};
use crate::report::{Credential, DisconnectCause, SessionExit, SessionKind};

struct Forwarder;

impl Actor for Forwarder {
    type Msg = Event;
    type State = mpsc::UnboundedSender<Event>;
    type Arguments = mpsc::UnboundedSender<Event>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Event>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle(
        &self,
        myself: ActorRef<Event>,
        event: Event,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if tx.send(event).is_err() {
            myself.stop(None);
        }
        Ok(())
    }
}

/// Subscribes to `port` and returns the events as a channel, in publication order.
pub async fn subscribe(
    port: &OutputPort<Event>,
) -> Result<mpsc::UnboundedReceiver<Event>, SpawnErr> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (actor, _) = Actor::spawn(None, Forwarder, tx).await?;
    port.subscribe(actor, Some);
    Ok(rx)
}

/// A lifecycle event, published on the supervisor's output port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A TCP connection was admitted.
    Connected {
        /// The connection.
        conn: ConnId,
        /// The client's address.
        peer: SocketAddr,
    },
    /// A client authenticated.
    Authenticated {
        /// The connection.
        conn: ConnId,
        /// The user name.
        user: String,
        /// The method (`publickey`, ...).
        method: String,
        /// The key or certificate it logged in with (see [`Credential`]).
        #[serde(default)]
        credential: Option<Credential>,
    },
    /// A session channel was opened.
    SessionOpened {
        /// The connection.
        conn: ConnId,
        /// The new session.
        session: SessionId,
    },
    /// A session started its work (exec, shell, subsystem).
    SessionStarted {
        /// The connection.
        conn: ConnId,
        /// The session.
        session: SessionId,
        /// What it runs.
        kind: SessionKind,
        /// The command or subsystem name.
        command: Option<String>,
        /// Whether it has a terminal.
        #[serde(default)]
        pty: bool,
    },
    /// A session ended and its actor stopped.
    SessionClosed {
        /// The connection.
        conn: ConnId,
        /// The session.
        session: SessionId,
        /// How its work ended.
        exit: SessionExit,
        /// The kill reason, when it was killed.
        killed: Option<String>,
    },
    /// A connection was refused because of a limit.
    Refused {
        /// The client's address.
        peer: SocketAddr,
        /// The limit, by its configuration key.
        reason: String,
        /// The connection, when it was refused after its login (`max_per_user`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conn: Option<ConnId>,
        /// The user it logged in as, when it was refused after its login.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// An announced kill was withdrawn before its deadline
    /// ([`cancel_kill`](crate::SupervisorHandle::cancel_kill)); the connection stays.
    KillCancelled {
        /// The connection that was to be killed.
        conn: ConnId,
        /// Who withdrew it, in the form of a kill's `by`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// A connection ended and every actor under it stopped.
    Disconnected {
        /// The connection.
        conn: ConnId,
        /// Why.
        #[serde(flatten)]
        cause: DisconnectCause,
        /// How it ended, in figures (for metrics; absent in events from older versions).
        #[serde(default)]
        figures: EndFigures,
    },
    /// The supervisor stopped: the last event of its tree. A listener that must have heard
    /// every event before it ends (an audit log) waits for this one.
    Stopped,
}

/// A connection's end in figures, carried by [`Event::Disconnected`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndFigures {
    /// The grace ran out and the end was forced (processes killed, stream cut).
    pub forced: bool,
    /// From the moment it was listed as closing (a kill reached it) to its end, in
    /// microseconds; `None` when no kill ended it.
    pub kill_us: Option<u64>,
    /// Bytes received from the client over its life.
    pub bytes_in: u64,
    /// Bytes sent to the client over its life.
    pub bytes_out: u64,
    /// Sessions closed on the way to its end.
    #[serde(default)]
    pub sessions_closed: usize,
}
