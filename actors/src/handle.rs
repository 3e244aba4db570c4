//! The door into the tree: [`SupervisorHandle`], typed async methods over the supervisor's
//! requests.
//!
//! Everything outside the tree (the SSH listener, the daemon's control socket, an embedding
//! program) talks to the supervisor through a handle, never by building a [`SupervisorMsg`] and
//! a reply port by hand. Each method owns its error and its timeout:
//!
//! - Errors: one type, [`HandleError`], whose messages say what failed and what to do.
//! - Queries (`list`, `get`, `select`, `resolve`, `stats`, `admission`, `set_policy`): bounded
//!   by the handle's timeout, [`DEFAULT_TIMEOUT`] unless set with
//!   [`with_timeout`](SupervisorHandle::with_timeout).
//! - Kills (`kill`, `kill_where`, `kill_all`, `drain`): bounded by the kill's grace plus
//!   [`KILL_MARGIN`]. The tree itself answers within the grace plus about three seconds (the
//!   forced path); the margin is there for a loaded machine, not for the normal case.
//! - Admission (`connect`): unbounded. The supervisor answers every admission at once, and if
//!   it is gone the reply port drops with its mailbox, which ends the wait; a timer per
//!   connection would cost more than it could ever save.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorCell, ActorRef, OutputPort, RpcReplyPort};
use tokio::sync::mpsc;

use crate::connection::ConnectionMsg;
use crate::events::Event;
use crate::filter::Filter;
use crate::ids::{ConnId, PrefixMatch, Target};
use crate::link::ConnectionLink;
use crate::report::{Census, ConnectionInfo, KillError, KillReport, Refusal, TreeStats};
use crate::supervisor::{AdmissionCounts, Selection, SupervisorArgs, SupervisorMsg};
use crate::Policy;

/// How long a query waits for the supervisor's answer unless the handle says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a kill waits for its reports beyond its grace.
pub const KILL_MARGIN: Duration = Duration::from_secs(30);

/// The reason a drain gives every client it cuts off.
pub const DRAIN_REASON: &str = "the server is shutting down";

/// Why a request through a [`SupervisorHandle`] did not get its answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// No live connection or session has this ID (it never existed, or it already ended).
    #[error("no live {0}")]
    NotFound(Target),
    /// The supervisor refused to admit a new connection.
    #[error("connection refused: {0}")]
    Refused(Refusal),
    /// The supervisor did not answer within the bound.
    #[error(
        "the supervisor did not answer {what} within {}: it is overloaded or stuck; try again, and see the server's log if it persists",
        humantime::format_duration(*within)
    )]
    NotAnswering {
        /// What was asked (`"list"`, `"kill"`, ...).
        what: &'static str,
        /// How long it was waited for.
        within: Duration,
    },
    /// The supervisor stopped before it answered (or was not running at all).
    #[error("the supervisor is not running, so {what} was not answered: the server is shutting down or its tree failed; see the server's log")]
    Gone {
        /// What was asked.
        what: &'static str,
    },
    /// The supervisor (or an event forwarder) could not be spawned.
    #[error("cannot start {what}: {why}")]
    Spawn {
        /// What was being started.
        what: &'static str,
        /// ractor's reason.
        why: String,
    },
    /// [`subscribe`](SupervisorHandle::subscribe) on a handle that does not know the event port.
    #[error("this handle has no event port to subscribe to: make it with SupervisorHandle::spawn, or give the port with with_events")]
    NoEvents,
}

/// A new connection's ID and actor, as admitted by the supervisor; the binding sends the actor
/// the transport's events.
pub type Admitted = (ConnId, ActorRef<ConnectionMsg>);

/// The door into a running tree: cheap to clone (an actor reference, the event port, a
/// timeout), usable from any task.
#[derive(Clone)]
pub struct SupervisorHandle {
    /// The supervisor.
    actor: ActorRef<SupervisorMsg>,
    /// Where the tree publishes lifecycle events, when known.
    events: Option<Arc<OutputPort<Event>>>,
    /// The bound of queries.
    timeout: Duration,
}

impl std::fmt::Debug for SupervisorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorHandle")
            .field("actor", &self.actor.get_id())
            .field("events", &self.events.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SupervisorHandle {
    /// Spawns the supervisor, unnamed, linked under `parent` when given (the embedding
    /// program's own supervisor: the tree becomes part of its supervision tree) or standalone,
    /// and returns its handle (with `args.events` as its event port).
    pub async fn spawn(
        parent: Option<ActorCell>,
        args: SupervisorArgs,
    ) -> Result<Self, HandleError> {
        let events = args.events.clone();
        let actor =
            crate::spawn_supervisor(parent, args)
                .await
                .map_err(|e| HandleError::Spawn {
                    what: "the supervisor",
                    why: e.to_string(),
                })?;
        Ok(Self::attach(actor).with_events(events))
    }

    /// A handle to a supervisor spawned elsewhere. It has no event port until
    /// [`with_events`](Self::with_events) gives it one.
    pub fn attach(actor: ActorRef<SupervisorMsg>) -> Self {
        Self {
            actor,
            events: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same handle, subscribing to `events` (the port given in [`SupervisorArgs`]).
    pub fn with_events(mut self, events: Arc<OutputPort<Event>>) -> Self {
        self.events = Some(events);
        self
    }

    /// The same handle, with queries bounded by `timeout` instead of [`DEFAULT_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The bound of queries.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The supervisor's actor, to link or monitor it (not to send it requests: use the
    /// methods).
    pub fn actor(&self) -> &ActorRef<SupervisorMsg> {
        &self.actor
    }

    /// The event port, when the handle knows it.
    pub fn events(&self) -> Option<&Arc<OutputPort<Event>>> {
        self.events.as_ref()
    }

    /// Sends a request and waits for its answer, for at most `within` (`None`: until the
    /// supervisor answers or is gone).
    async fn ask<T: Send + 'static>(
        &self,
        what: &'static str,
        within: Option<Duration>,
        msg: impl FnOnce(RpcReplyPort<T>) -> SupervisorMsg,
    ) -> Result<T, HandleError> {
        match self.actor.call(msg, within).await {
            Ok(CallResult::Success(answer)) => Ok(answer),
            Ok(CallResult::Timeout) => Err(HandleError::NotAnswering {
                what,
                within: within.unwrap_or_default(),
            }),
            Ok(CallResult::SenderError) | Err(_) => Err(HandleError::Gone { what }),
        }
    }

    /// The bound of a kill with `grace`.
    fn kill_bound(grace: Duration) -> Option<Duration> {
        Some(grace.saturating_add(KILL_MARGIN))
    }

    /// Admits a new transport from `peer`: spawns its connection actor. Unbounded (see the
    /// module's docs). `Refused` says which limit, or why, in words for the client.
    pub async fn connect(
        &self,
        peer: SocketAddr,
        link: Box<dyn ConnectionLink>,
    ) -> Result<Admitted, HandleError> {
        self.ask("the admission", None, |reply| SupervisorMsg::Connect {
            peer,
            link,
            reply,
        })
        .await?
        .map_err(HandleError::Refused)
    }

    /// Every live connection with its sessions, oldest first.
    pub async fn list(&self) -> Result<Vec<ConnectionInfo>, HandleError> {
        self.ask("the listing", Some(self.timeout), |reply| {
            SupervisorMsg::List { reply }
        })
        .await
    }

    /// One live connection; `NotFound` when it is not (or no longer) live.
    pub async fn get(&self, conn: ConnId) -> Result<ConnectionInfo, HandleError> {
        self.ask("the lookup", Some(self.timeout), |reply| {
            SupervisorMsg::Get { conn, reply }
        })
        .await?
        .ok_or(HandleError::NotFound(Target::Connection(conn)))
    }

    /// The live connections `filter` selects (what [`kill_where`](Self::kill_where) would kill),
    /// oldest first.
    pub async fn select(&self, filter: Filter) -> Result<Vec<ConnectionInfo>, HandleError> {
        self.ask("the selection", Some(self.timeout), |reply| {
            SupervisorMsg::Select { filter, reply }
        })
        .await
    }

    /// The live connection or session whose ID is `text` or starts with it (case-insensitive;
    /// a full ID is found without a scan): one, none, or the ambiguous ones.
    pub async fn resolve(&self, text: &str) -> Result<PrefixMatch<Target>, HandleError> {
        let text = text.to_string();
        self.ask("the ID lookup", Some(self.timeout), |reply| {
            SupervisorMsg::Resolve { text, reply }
        })
        .await
    }

    /// Ends a connection (its sessions first, then a disconnect with `reason`, then the
    /// transport) or one session, and returns its report once everything under it has
    /// stopped: within `grace` plus about three seconds, waited for up to `grace` +
    /// [`KILL_MARGIN`]. `by` names who asked, for events and audit logs.
    pub async fn kill(
        &self,
        target: Target,
        reason: impl Into<String>,
        grace: Duration,
        by: Option<String>,
    ) -> Result<KillReport, HandleError> {
        let reason = reason.into();
        self.ask("the kill", Self::kill_bound(grace), |reply| {
            SupervisorMsg::Kill {
                target,
                reason,
                grace,
                by,
                reply,
            }
        })
        .await?
        .map_err(|KillError::NotFound(target)| HandleError::NotFound(target))
    }

    /// Kills every live connection `filter` selects (all of them for an empty filter); one
    /// report per connection once all of them are gone. Bounded as [`kill`](Self::kill).
    pub async fn kill_where(
        &self,
        filter: Filter,
        reason: impl Into<String>,
        grace: Duration,
        by: Option<String>,
    ) -> Result<Vec<KillReport>, HandleError> {
        let reason = reason.into();
        self.ask("the kill", Self::kill_bound(grace), |reply| {
            SupervisorMsg::KillWhere {
                filter,
                reason,
                grace,
                by,
                reply,
            }
        })
        .await
    }

    /// Announces a kill to the terminals of the connections `which` selects (a line each, at
    /// once), lists it as pending (`ConnectionInfo::pending_kill`), and kills those still
    /// waiting after `notice` (see [`cancel_kill`](Self::cancel_kill)); one report per
    /// connection killed. Bounded by `notice` plus the grace plus [`KILL_MARGIN`].
    pub async fn kill_warned(
        &self,
        which: Selection,
        reason: impl Into<String>,
        notice: Duration,
        grace: Duration,
        by: Option<String>,
    ) -> Result<Vec<KillReport>, HandleError> {
        let reason = reason.into();
        self.ask(
            "the announced kill",
            Some(notice + grace + KILL_MARGIN),
            |reply| SupervisorMsg::KillWarned {
                which,
                reason,
                notice,
                grace,
                by,
                reply,
            },
        )
        .await
    }

    /// Withdraws the announced kill `conn` waits for (its terminals are told, and
    /// [`Event::KillCancelled`] names `by`); whether it waited for one.
    pub async fn cancel_kill(&self, conn: ConnId, by: Option<String>) -> Result<bool, HandleError> {
        self.ask("the cancel", Some(self.timeout), |reply| {
            SupervisorMsg::CancelKill { conn, by, reply }
        })
        .await
    }

    /// Kills every connection live now; one report per connection once all of them are gone.
    /// Connections admitted meanwhile are not part of it. Bounded as [`kill`](Self::kill).
    pub async fn kill_all(
        &self,
        reason: impl Into<String>,
        grace: Duration,
        by: Option<String>,
    ) -> Result<Vec<KillReport>, HandleError> {
        // The empty filter selects every connection: the supervisor treats `KillAll` and an
        // empty `KillWhere` alike, so one request path serves both.
        self.kill_where(Filter::default(), reason, grace, by).await
    }

    /// Empties the tree: [`kill_all`](Self::kill_all) with [`DRAIN_REASON`].
    ///
    /// At the tree's level that is all a drain is: the supervisor keeps admitting what it is
    /// given. Stopping new connections is the listener's business (`SshListener::
    /// stop_accepting` in the sshvisor crate): stop it first, then drain, and the tree is empty
    /// at the reply.
    pub async fn drain(
        &self,
        grace: Duration,
        by: Option<String>,
    ) -> Result<Vec<KillReport>, HandleError> {
        self.kill_all(DRAIN_REASON, grace, by).await
    }

    /// How big the tree is: map sizes and live actors.
    pub async fn stats(&self) -> Result<TreeStats, HandleError> {
        self.ask("the stats", Some(self.timeout), |reply| {
            SupervisorMsg::Stats { reply }
        })
        .await
    }

    /// The live tree counted by connection state and session kind, with the live connections'
    /// bytes: a walk of the map, cheaper than [`list`](Self::list) (metrics ask it each scrape).
    pub async fn census(&self) -> Result<Census, HandleError> {
        self.ask("the census", Some(self.timeout), |reply| {
            SupervisorMsg::Census { reply }
        })
        .await
    }

    /// The running counts the limits are checked against.
    pub async fn admission(&self) -> Result<AdmissionCounts, HandleError> {
        self.ask("the admission counts", Some(self.timeout), |reply| {
            SupervisorMsg::Admission { reply }
        })
        .await
    }

    /// Replaces the tree's policy (a configuration reload): new connections get it at once,
    /// live ones what makes sense for them; returns once every live connection has been told.
    pub async fn set_policy(&self, policy: Policy) -> Result<(), HandleError> {
        self.ask("the new policy", Some(self.timeout), |reply| {
            SupervisorMsg::SetPolicy { policy, reply }
        })
        .await
    }

    /// The tree's lifecycle events from now on, in publication order, as a channel; the
    /// forwarder behind it stops once the receiver is dropped.
    pub async fn subscribe(&self) -> Result<mpsc::UnboundedReceiver<Event>, HandleError> {
        let events = self.events.as_ref().ok_or(HandleError::NoEvents)?;
        crate::events::subscribe(events)
            .await
            .map_err(|e| HandleError::Spawn {
                what: "the event forwarder",
                why: e.to_string(),
            })
    }

    /// Stops the supervisor (its children with it) and waits up to `within` for it to be gone.
    /// Kill or drain first for a polite end: this one is abrupt.
    pub async fn stop(&self, within: Duration) {
        // An error means it was stopping or gone already: either way it is what was asked.
        let _ = self.actor.stop_and_wait(None, Some(within)).await;
    }
}
