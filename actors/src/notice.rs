//! Notices: what the supervisor hears from inside the tree.
//!
//! Connection and session actors tell the supervisor what changed (a session opened, a login,
//! an end) so that it alone writes the ID map; the supervisor also sends itself its own timers
//! and the ends of its connection actors this way. Children reach the supervisor through a
//! `Parent`, which is all they know of it: this module imports no actor, so no child imports
//! its parent.
//!
//! Architecture Invariant: a [`Notice`] cannot be built or read outside this crate (its field is
//! private and its kinds are crate-private): nobody outside the tree can forge what the tree
//! tells itself.

use std::sync::Arc;

use ractor::{ActorId, RpcReplyPort};

use crate::ids::{ConnId, SessionId};
use crate::report::{Credential, DisconnectCause, PtyInfo, SessionExit, SessionKind};

/// A message the tree sends its supervisor itself. Opaque: only this crate builds or reads one.
pub struct Notice(pub(crate) NoticeKind);

/// What a [`Notice`] says.
pub(crate) enum NoticeKind {
    /// (connection) It is closing: listed as such, no longer logging in.
    Closing { conn: ConnId },
    /// (session) Its terminal, once allocated or resized.
    SessionPty {
        conn: ConnId,
        session: SessionId,
        pty: Option<PtyInfo>,
    },
    /// (connection) The client authenticated; `verdict` is told whether a limit refuses it.
    Authenticated {
        conn: ConnId,
        user: String,
        method: String,
        client_version: Option<String>,
        credential: Option<Credential>,
        verdict: Option<RpcReplyPort<Result<(), String>>>,
    },
    /// (connection) A session is about to be spawned: registered before it exists.
    SessionOpened { conn: ConnId, session: SessionId },
    /// (session) It started its work.
    SessionStarted {
        conn: ConnId,
        session: SessionId,
        kind: SessionKind,
        command: Option<String>,
    },
    /// (connection) A session's actor has stopped (or could not be spawned).
    SessionEnded(SessionEnd),
    /// (supervisor, to itself) The earliest login grace ran out.
    LoginTimer,
    /// (supervisor, to itself) An announced kill's deadline came.
    WarningDue { number: u64 },
    /// (supervisor, to itself) A kill group's grace ran out.
    GroupGraceElapsed { group: u64 },
    /// (supervisor, to itself) A connection actor has terminated: queued so that it is handled
    /// after every notice the connection cast before it stopped.
    ConnectionEnded { actor: ActorId, end: ConnectionEnd },
}

/// How a session ended, as its connection tells the supervisor.
pub(crate) struct SessionEnd {
    pub(crate) conn: ConnId,
    pub(crate) session: SessionId,
    pub(crate) exit: SessionExit,
    /// The kill reason, when it was killed.
    pub(crate) killed: Option<String>,
    /// Its end had to be forced.
    pub(crate) forced: bool,
    /// Its processes still running after the last SIGKILL.
    pub(crate) processes_left: usize,
}

/// How a connection actor ended, as read from its supervision event.
pub(crate) struct ConnectionEnd {
    /// What the actor recorded before stopping; `None` when it crashed or was killed.
    pub(crate) outcome: Option<ConnOutcome>,
    /// Why it failed, when it did.
    pub(crate) failure: Option<String>,
}

/// How a connection ended, read by the supervisor from the actor's final state.
#[derive(Debug, Clone)]
pub(crate) struct ConnOutcome {
    pub(crate) cause: DisconnectCause,
    pub(crate) sessions_closed: usize,
    pub(crate) forced: bool,
    pub(crate) processes_left: usize,
}

/// How a child reaches the supervisor: it can only tell it notices, never call it (a parent
/// waiting on its child would deadlock).
#[derive(Clone)]
pub(crate) struct Parent(Arc<dyn Fn(Notice) + Send + Sync>);

impl Parent {
    /// A parent that hands every notice to `tell`.
    pub(crate) fn new(tell: impl Fn(Notice) + Send + Sync + 'static) -> Self {
        Self(Arc::new(tell))
    }

    /// Tells the supervisor; a supervisor already gone has nobody left to tell.
    pub(crate) fn tell(&self, kind: NoticeKind) {
        (self.0)(Notice(kind));
    }
}
