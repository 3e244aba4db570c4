//! The four small traits through which the tree reaches the outside world.
//!
//! The tree knows nothing of russh or sockets. A [`ConnectionLink`] is what a `ConnectionActor`
//! may do to its transport, and its [`Traffic`] the counters read for listings; a
//! [`SessionLink`] is what a `SessionActor` may do to its channel and the work running behind
//! it, and its [`StdinSink`] (if it gives one) where the binding writes the client's bytes
//! without a hop through the actor. The russh binding implements them for production; the
//! actor harness implements them with fakes that record every call.
//!
//! Architecture Invariant: no link method blocks. Anything that may wait on the network (a full
//! send queue, a client that stopped reading) happens in the link's own tasks, never inside an
//! actor's handler.

use std::sync::Arc;

use crate::ids::SessionId;
use crate::report::{SessionExit, SessionKind};

/// What a `ConnectionActor` may do to its transport.
pub trait ConnectionLink: Send + Sync + 'static {
    /// Queues SSH_MSG_DISCONNECT (reason "by application") carrying `reason`, after which the
    /// transport should end by itself. Returns at once.
    fn disconnect(&self, reason: &str);

    /// Cuts the transport now, without waiting for the peer: the forced path. After this the
    /// binding must report the end of the transport promptly
    /// (`ConnectionMsg::TransportClosed`). Returns at once.
    fn abort(&self);

    /// How long no channel data has moved either way (for the idle timeout); `None` when the
    /// link does not know.
    fn idle_for(&self) -> Option<std::time::Duration> {
        self.traffic().map(|t| t.idle_for())
    }

    /// A shared view of the connection's traffic, kept by the supervisor for listings; `None`
    /// when the link does not count.
    fn traffic(&self) -> Option<std::sync::Arc<dyn Traffic>> {
        None
    }
}

/// A connection's traffic counters, readable from any thread at any time.
pub trait Traffic: Send + Sync + 'static {
    /// How long no channel data has moved either way.
    fn idle_for(&self) -> std::time::Duration;
    /// Channel bytes received from the client.
    fn bytes_in(&self) -> u64;
    /// Channel bytes sent to the client.
    fn bytes_out(&self) -> u64;
}

/// Why a transport ended, as the binding saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportEnd {
    /// The peer closed the connection (clean SSH disconnect or TCP end of stream).
    Closed,
    /// The transport failed: protocol error, I/O error, a bad banner, a timeout.
    Error(String),
    /// The transport was cut through [`ConnectionLink::abort`].
    Aborted,
}

/// What the client asked a session to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRequest {
    /// Run one command (`exec`).
    Exec {
        /// The command line, as the client sent it.
        command: String,
    },
    /// An interactive shell (`shell`).
    Shell,
    /// A named subsystem such as `sftp`.
    Subsystem {
        /// The subsystem name, as the client sent it.
        name: String,
    },
}

impl SessionRequest {
    /// The kind shown in listings.
    pub fn kind(&self) -> SessionKind {
        match self {
            SessionRequest::Exec { .. } => SessionKind::Exec,
            SessionRequest::Shell => SessionKind::Shell,
            SessionRequest::Subsystem { .. } => SessionKind::Subsystem,
        }
    }

    /// The command (exec) or subsystem name shown in listings.
    pub fn command(&self) -> Option<&str> {
        match self {
            SessionRequest::Exec { command } => Some(command),
            SessionRequest::Shell => None,
            SessionRequest::Subsystem { name } => Some(name),
        }
    }
}

/// A terminal the client asked for (`pty-req`), as sent; the link validates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtySpec {
    /// The terminal type (`TERM`).
    pub term: String,
    /// Width in characters.
    pub cols: u32,
    /// Height in rows.
    pub rows: u32,
    /// Width in pixels.
    pub pix_width: u32,
    /// Height in pixels.
    pub pix_height: u32,
    /// Terminal modes (RFC 4254 opcode, value).
    pub modes: Vec<(u8, u32)>,
}

/// Whether a session's work is still winding down after [`SessionLink::terminate`] or
/// [`SessionLink::force`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winding {
    /// Nothing runs any more and the channel is closed on our side: the session may stop now.
    Done,
    /// Work is still ending; the link will call [`SessionEvents::finished`] when it is gone.
    Pending,
}

/// Who closes the channel when a session ends on request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndScope {
    /// Only this session ends: the link sends CLOSE on its channel once the work is over.
    Session,
    /// The whole connection ends: the link delivers the output, the exit status and EOF, but
    /// leaves the channel to the connection's SSH_MSG_DISCONNECT, which closes every channel at
    /// once. (OpenSSH stops reading when its last channel closes: a CLOSE sent before the
    /// disconnect would keep the person from ever seeing the reason.)
    Connection,
}

/// What a `SessionActor` may do to its channel and the work behind it.
///
/// Calls come from the actor only (but [`stdin`](Self::stdin), made by the binding before the
/// actor has the link), one at a time, in this order: [`start`](Self::start) at most
/// once, then any number of [`data`](Self::data) and [`eof`](Self::eof), then
/// [`terminate`](Self::terminate) and possibly [`force`](Self::force). Dropping the link must
/// release everything it holds (end processes, close the channel): a session actor that is
/// killed outright never gets to call `force`.
pub trait SessionLink: Send + 'static {
    /// Starts the work the client asked for. On success the link must call
    /// [`SessionEvents::finished`] exactly once when the work has ended by itself (all output
    /// delivered, exit status sent, channel closed). On failure nothing was started and the
    /// error text is shown to the client.
    fn start(&mut self, request: &SessionRequest, events: SessionEvents) -> Result<(), String>;

    /// The client asks for a terminal before starting. `Ok` holds what will be used (sizes may
    /// be clamped); `Err` says why not.
    fn pty(&mut self, pty: &PtySpec) -> Result<PtySpec, String> {
        let _ = pty;
        Err("terminals are not supported here".into())
    }

    /// The client asks for an environment variable before starting.
    fn env(&mut self, name: &str, value: &str) -> Result<(), String> {
        let _ = (name, value);
        Err(format!("{name} is not accepted"))
    }

    /// The client's terminal changed size, as the client sent it. Returns the size used
    /// (`cols`, `rows`), clamped to what the link's terminal takes (listings show it); by
    /// default as asked.
    fn resize(&mut self, cols: u32, rows: u32, pix_width: u32, pix_height: u32) -> (u32, u32) {
        let _ = (pix_width, pix_height);
        (cols, rows)
    }

    /// The client sends a signal (name without `SIG`) to the running work.
    fn signal(&mut self, name: &str) -> Result<(), String> {
        Err(format!("signal {name} cannot be delivered here"))
    }

    /// The fast way in for the client's bytes: a [`StdinSink`] the binding writes to straight
    /// from its transport, without a hop through the session actor. Called by the binding
    /// once, when the session opens, before the link is handed to its actor (the one call that
    /// does not come from the actor). `None` (the default): every byte arrives through
    /// [`data`](Self::data).
    fn stdin(&mut self) -> Option<Box<dyn StdinSink>> {
        None
    }

    /// Bytes the client sent on the channel (stdin) that reached the session actor
    /// (`SessionMsg::Data`); with a [`stdin`](Self::stdin) sink, the client's bytes go there.
    fn data(&mut self, data: Vec<u8>);

    /// Shows `text` (one line, no line ends) to the person at this session's terminal, as a
    /// `wall` message would: an operator's warning before a kill, or before the idle cut. A
    /// session without a terminal shows nothing (the default).
    fn notify(&mut self, text: &str) {
        let _ = text;
    }

    /// The client sent EOF on the channel.
    fn eof(&mut self);

    /// How long no data has moved on the channel either way (for the session idle timeout);
    /// `None` when the link does not know, and then the session counts as idle since it
    /// started.
    fn idle_for(&self) -> Option<std::time::Duration> {
        None
    }

    /// Ends the session politely: the work is asked to stop (for a process: SIGHUP to its
    /// process group), pending output is delivered, then the exit status and EOF go to the
    /// client, and CLOSE when `scope` is [`EndScope::Session`].
    fn terminate(&mut self, scope: EndScope) -> Winding;

    /// Ends the session now: the work is killed (SIGKILL), pending output is dropped, and the
    /// channel is closed (per the scope given to `terminate`) without waiting for the client.
    fn force(&mut self) -> Winding;
}

/// The writing end of a session's stdin, handed to the binding by [`SessionLink::stdin`].
///
/// The binding calls it inside its transport's loop, for every packet the client sends: it must
/// never wait (the work may itself be waiting for that loop to send its output). What it cannot
/// hold it refuses, and the session then decides its own fate ([`StdinRefusal`]).
pub trait StdinSink: Send + Sync + 'static {
    /// Queues `data` for the work's stdin.
    fn push(&self, data: &[u8]) -> Result<(), StdinRefusal>;

    /// The client's terminal changed size: queued with the data, in order, so that a command
    /// typed right after a resize sees the new size. Ignored by default.
    fn resize(&self, cols: u32, rows: u32, pix_width: u32, pix_height: u32) {
        let _ = (cols, rows, pix_width, pix_height);
    }
}

/// Why a [`StdinSink`] did not take the client's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StdinRefusal {
    /// Nothing reads the session's stdin any more: the data is dropped.
    Closed,
    /// The session cannot go on (its work leaves too much input unread): the binding drops the
    /// sink, tells the client `reason` on stderr, and ends the session
    /// (`SessionMsg::Terminate` with this reason and grace, scope [`EndScope::Session`]).
    EndSession {
        /// What the client is told.
        reason: String,
        /// How long the work gets to end.
        grace: std::time::Duration,
    },
}

/// Given to a [`SessionLink`] when its work starts, so it can say when the work has ended.
#[derive(Clone)]
pub struct SessionEvents {
    session: SessionId,
    /// Tells the session actor (it may already be gone: killed outright, nothing waits then).
    finished: Arc<dyn Fn(SessionExit, usize) + Send + Sync>,
}

impl SessionEvents {
    /// Events of `session`, told through `finished(exit, processes_left)`.
    pub(crate) fn new(
        session: SessionId,
        finished: impl Fn(SessionExit, usize) + Send + Sync + 'static,
    ) -> Self {
        Self {
            session,
            finished: Arc::new(finished),
        }
    }

    /// The session this link serves (e.g. to mark its processes).
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// The work has ended and the channel is closed on our side. Extra calls are ignored.
    pub fn finished(&self, exit: SessionExit) {
        self.finished_leaving(exit, 0);
    }

    /// The work has ended, but `processes_left` of its processes still ran after the last
    /// SIGKILL (reported in the kill's [`KillReport`](crate::KillReport)).
    pub fn finished_leaving(&self, exit: SessionExit, processes_left: usize) {
        (self.finished)(exit, processes_left);
    }
}
