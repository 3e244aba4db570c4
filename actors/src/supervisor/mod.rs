//! `SupervisorActor`: the root of the tree and the owner of the ID map.
//!
//! Every connection and session is known here by its ID, with a snapshot of what it is
//! (`List`/`Get`), and every kill is answered from here: the supervisor keeps the reply ports of
//! all callers waiting on a target and answers each exactly once, when the target's actor has
//! stopped (for a connection: after its sessions and its transport are gone, since a connection
//! actor stops only then). Lifecycle [`Event`]s are published on the output port given at spawn.
//!
//! ## Supervision
//!
//! Connection actors are spawned linked and unnamed. `handle_supervisor_evt` is overridden: a
//! connection that stops or fails is removed from the map and its waiters are answered; the
//! supervisor itself never stops because a child did. ractor hands a supervision event over
//! before messages already queued, so the end of a connection goes through this actor's own
//! queue (`NoticeKind::ConnectionEnded`) and is handled after the notices the connection sent
//! before it stopped (its sessions' real ends).
//!
//! ## Layout
//!
//! This file is the actor, its messages and its handlers; what it owns is in files of its own:
//! - `registry`: the ID map (connections and their sessions), snapshots, prefix resolution.
//! - `admission`: the limits' running counts, and who is admitted or refused.
//! - `login_timer`: one timer for every connection still logging in.
//! - `kill_groups`: who waits on a kill, and the kills of many connections at once (one grace
//!   timer each), every one answered exactly once.
//!
//! Architecture Invariant: only this actor writes the map, and it removes an entry only when the
//! entry's actor has terminated (or, for a session that could not be spawned, never existed).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, MessagingErr, OutputPort, RpcReplyPort,
    SupervisionEvent,
};
use tokio::time::Instant;
use tracing::{info, warn, Span};

use crate::connection::{
    ConnectionActor, ConnectionArgs, ConnectionMsg, ConnectionState, Order, Tick,
};
use crate::events::{EndFigures, Event};
use crate::filter::Filter;
use crate::ids::{ConnId, PrefixMatch, SessionId, Target};
use crate::killed_by;
use crate::link::ConnectionLink;
use crate::notice::{ConnOutcome, ConnectionEnd, Notice, NoticeKind, Parent, SessionEnd};
use crate::report::{
    Census, ConnState, ConnectionInfo, Credential, DisconnectCause, KillError, KillReport,
    PendingKill, PtyInfo, Refusal, SessionExit, SessionInfo, SessionKind, TreeStats,
};
use crate::Policy;

mod admission;
mod kill_groups;
mod login_timer;
mod registry;
mod warnings;

pub use admission::AdmissionCounts;
use admission::{Admission, Counts};
use kill_groups::{Ending, KillGroups, Waiter};
use login_timer::Logins;
use registry::{ConnEntry, Registry, SessionEntry};

/// The supervisor actor.
pub struct SupervisorActor;

/// What a supervisor starts with.
pub struct SupervisorArgs {
    /// Where lifecycle events are published; subscribe to it before or after the spawn.
    pub events: Arc<OutputPort<Event>>,
    /// Timeouts and graces applied to connections admitted from now on.
    pub policy: Policy,
}

impl SupervisorArgs {
    /// Default policy and a fresh event port.
    pub fn new() -> Self {
        Self {
            events: Arc::new(OutputPort::default()),
            policy: Policy::default(),
        }
    }
}

impl Default for SupervisorArgs {
    fn default() -> Self {
        Self::new()
    }
}

/// Messages the supervisor handles.
///
/// Who sends what: `Connect` comes from the binding (the code that accepts transports);
/// the requests (`List` to `Admission`) from an operator's tool or the embedding program;
/// `Notice` only from the tree itself, and it cannot be built outside this crate.
pub enum SupervisorMsg {
    /// Sent by the binding: admit a new transport: spawns its `ConnectionActor`.
    Connect {
        /// The client's address.
        peer: SocketAddr,
        /// The transport.
        link: Box<dyn ConnectionLink>,
        /// The new connection's ID and actor (the binding sends it the transport's events).
        reply: RpcReplyPort<Result<(ConnId, ActorRef<ConnectionMsg>), Refusal>>,
    },
    /// Sent by an operator or the embedding program: a snapshot of every live connection with its
    /// sessions, oldest first.
    List {
        /// The snapshot.
        reply: RpcReplyPort<Vec<ConnectionInfo>>,
    },
    /// Sent by an operator or the embedding program: a snapshot of one connection.
    Get {
        /// The connection.
        conn: ConnId,
        /// `None` when no such connection is live.
        reply: RpcReplyPort<Option<ConnectionInfo>>,
    },
    /// Sent by an operator or the embedding program: end a connection (its sessions first, then a
    /// disconnect with `reason`, then the transport) or a single session. The reply comes once
    /// everything under the target has stopped, within `grace` plus a bounded margin, exactly once;
    /// `NotFound` at once for an unknown ID.
    Kill {
        /// What to end.
        target: Target,
        /// Shown to the client (SSH disconnect text) and in events and logs.
        reason: String,
        /// How long the polite end may take before it is forced.
        grace: Duration,
        /// Who asked, for events and the audit log (`uid 1000 via ctl`, ...).
        by: Option<String>,
        /// The report, once the target is gone.
        reply: RpcReplyPort<Result<KillReport, KillError>>,
    },
    /// Sent by an operator or the embedding program (a drain): `Kill` every connection live now;
    /// one reply, with one report per connection, once all of them are gone. Connections admitted
    /// afterwards are not part of it: stop admitting first (the daemon stops its listener) for the
    /// tree to be empty at the reply.
    KillAll {
        /// Shown to every client.
        reason: String,
        /// How long the polite end may take before it is forced.
        grace: Duration,
        /// Who asked.
        by: Option<String>,
        /// One report per connection.
        reply: RpcReplyPort<Vec<KillReport>>,
    },
    /// Sent by an operator or the embedding program: `Kill` every live connection that `filter`
    /// selects (all of them for an empty filter); one reply, with one report per connection, once
    /// all of them are gone.
    KillWhere {
        /// Which connections.
        filter: Filter,
        /// Shown to every client.
        reason: String,
        /// How long the polite end may take before it is forced.
        grace: Duration,
        /// Who asked.
        by: Option<String>,
        /// One report per connection.
        reply: RpcReplyPort<Vec<KillReport>>,
    },
    /// Sent by an operator or the embedding program: a snapshot of the live connections that
    /// `filter` selects (what `KillWhere` would kill).
    Select {
        /// Which connections.
        filter: Filter,
        /// The snapshot, oldest first.
        reply: RpcReplyPort<Vec<ConnectionInfo>>,
    },
    /// Sent by the embedding program (a configuration reload): replaces the policy. New connections
    /// get it at once; live ones get what makes sense for them (see the connection's `Order::SetPolicy`).
    /// Limits govern admission only: lowering one never ends a live connection or session. Replies
    /// once every live connection has been told.
    SetPolicy {
        /// The new policy.
        policy: Policy,
        /// Sent once applied.
        reply: RpcReplyPort<()>,
    },
    /// Sent by an operator or the embedding program: the live connection or session whose ID is
    /// `text` or starts with it (case-insensitive; a full ID is found without a scan).
    Resolve {
        /// A full ID or a prefix.
        text: String,
        /// What it names.
        reply: RpcReplyPort<PrefixMatch<Target>>,
    },
    /// Sent by an operator or the embedding program: how big the tree is: map sizes and live actors
    /// (see [`TreeStats`]).
    Stats {
        /// The figures.
        reply: RpcReplyPort<TreeStats>,
    },
    /// Sent by a metrics scrape: the live tree counted by state and kind (see [`Census`]); a
    /// walk of the map, no snapshot of any connection.
    Census {
        /// The counts.
        reply: RpcReplyPort<Census>,
    },
    /// Sent by the embedding program or a test: the running counts the limits are checked against
    /// (see [`AdmissionCounts`]), for diagnostics and for tests that recount them from the outside.
    Admission {
        /// The counts.
        reply: RpcReplyPort<AdmissionCounts>,
    },
    /// Sent by an operator or the embedding program: tell the terminals of the connections
    /// `which` selects now that they will be killed after `notice`, list the kill as pending,
    /// and kill at the deadline those still waiting (not cancelled, not gone); `reply` gets
    /// their reports then.
    KillWarned {
        /// Which connections.
        which: Selection,
        /// Shown to the terminals now and to the clients at the kill.
        reason: String,
        /// How long before the kill.
        notice: Duration,
        /// The kill's grace, from the deadline.
        grace: Duration,
        /// Who asked.
        by: Option<String>,
        /// The reports, after the deadline.
        reply: RpcReplyPort<Vec<KillReport>>,
    },
    /// Sent by an operator or the embedding program: withdraws the announced kill `conn`
    /// waits for (its terminals are told); `reply` says whether it waited for one.
    CancelKill {
        /// The connection.
        conn: ConnId,
        /// Who asked (as a kill's `by`), for [`Event::KillCancelled`].
        by: Option<String>,
        /// Whether a kill was withdrawn.
        reply: RpcReplyPort<bool>,
    },
    /// Sent by the tree itself only (its actors' notices, its own timers): a [`Notice`] cannot
    /// be built outside this crate.
    Notice(Notice),
}

/// The connections an announced kill is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// One connection.
    One(ConnId),
    /// Every connection a filter selects when the kill is asked.
    Where(Filter),
}

impl From<Notice> for SupervisorMsg {
    fn from(notice: Notice) -> Self {
        SupervisorMsg::Notice(notice)
    }
}

/// The supervisor's state: the ID map and everyone waiting on it.
pub struct SupervisorState {
    /// Where lifecycle events go.
    events: Arc<OutputPort<Event>>,
    /// Applied to connections admitted from now on; replaced by `SetPolicy`.
    policy: Policy,
    /// The ID map.
    registry: Registry,
    /// Running counts for the limits, so that admission costs the same at any size.
    counts: Counts,
    /// Connections logging in, timed by one timer.
    logins: Logins,
    /// Kills of many connections under way.
    groups: KillGroups,
    /// Kills announced ahead, waiting for their deadline.
    warnings: warnings::Warnings,
    /// How connection actors (and their sessions) reach this actor.
    parent: Parent,
    span: Span,
}

impl SupervisorState {
    /// Takes a connection out of the logins, if it is logging in: it is no longer pending for
    /// `max_unauthenticated` nor timed by the login grace. Returns whether it was logging in.
    fn end_login(counts: &mut Counts, logins: &mut Logins, entry: &mut ConnEntry) -> bool {
        if entry.info.state != ConnState::Handshaking {
            return false;
        }
        counts.login_over(entry.admitted, entry.info.id);
        logins.forget(&mut entry.login_deadline, entry.info.id);
        true
    }

    /// Lists a connection as closing (it is no longer logging in); its actor, when it is live.
    fn mark_closing(&mut self, conn: ConnId) -> Option<&ActorRef<ConnectionMsg>> {
        let entry = self.registry.conns.get_mut(&conn)?;
        Self::end_login(&mut self.counts, &mut self.logins, entry);
        entry.info.state = ConnState::Closing;
        entry.closing_since.get_or_insert_with(Instant::now);
        Some(&entry.actor)
    }

    /// `timed_here`: the caller sends the connection `GraceElapsed` when the grace runs out
    /// (see the connection's `Order::Kill`).
    fn kill_connection(
        &mut self,
        conn: ConnId,
        reason: &str,
        grace: Duration,
        by: &Option<String>,
        timed_here: bool,
    ) {
        if let Some(actor) = self.mark_closing(conn) {
            // Every kill goes on: a later one with a shorter grace brings the end closer. If the
            // actor is already gone its termination is queued and answers.
            let _ = actor.cast(ConnectionMsg::order(Order::Kill {
                reason: reason.to_string(),
                grace,
                by: by.clone(),
                timed_by_sender: timed_here,
            }));
        }
    }

    /// Admits (or refuses) a new transport from `peer`: spawns its connection actor.
    async fn on_connect(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        peer: SocketAddr,
        link: Box<dyn ConnectionLink>,
        reply: RpcReplyPort<Result<(ConnId, ActorRef<ConnectionMsg>), Refusal>>,
    ) {
        match self
            .counts
            .admission(peer, self.registry.conns.len(), &self.policy.limits)
        {
            Admission::Admit => {}
            Admission::AdmitDropping(victim, reason) => {
                info!(parent: &self.span, %peer, dropped = %victim, reason = %reason, "audit: pending login dropped to admit a new connection");
                let grace = self.policy.kill_grace;
                let by = Some(killed_by::MAX_UNAUTHENTICATED.into());
                self.kill_connection(victim, &reason, grace, &by, false);
            }
            Admission::Refuse(refusal) => {
                info!(parent: &self.span, %peer, reason = %refusal, "audit: connection refused");
                self.events.send(Event::Refused {
                    peer,
                    reason: refusal.to_string(),
                    conn: None,
                    user: None,
                });
                let _ = reply.send(Err(refusal));
                return;
            }
        }
        let id = ConnId::new_random();
        let traffic = link.traffic();
        let args = ConnectionArgs {
            id,
            peer,
            link,
            supervisor: self.parent.clone(),
            policy: self.policy.clone(),
        };
        let actor = match Actor::spawn_linked(None, ConnectionActor, args, myself.get_cell()).await
        {
            Ok((actor, _)) => actor,
            Err(e) => {
                warn!(parent: &self.span, error = %e, %peer, "could not start a connection actor");
                let _ = reply.send(Err(Refusal::SpawnFailed(e.to_string())));
                return;
            }
        };
        let admitted = Instant::now();
        self.counts.admit(peer, id, admitted, &self.policy.limits);
        let login_deadline = self
            .policy
            .login_grace
            .and_then(|grace| admitted.checked_add(grace));
        if let Some(deadline) = login_deadline {
            self.logins.insert(deadline, id);
            self.arm_login_timer(myself);
        }
        self.registry.insert(ConnEntry {
            actor: actor.clone(),
            admitted,
            login_deadline,
            traffic,
            info: ConnectionInfo {
                id,
                user: None,
                peer,
                client_version: None,
                auth_method: None,
                credential: None,
                started: SystemTime::now(),
                state: ConnState::Handshaking,
                idle_ms: None,
                bytes_in: None,
                bytes_out: None,
                pending_kill: None,
                sessions: Vec::new(),
            },
            sessions: Vec::new(),
            waiters: Vec::new(),
            closed_while_closing: 0,
            closing_since: None,
        });
        self.events.send(Event::Connected { conn: id, peer });
        let _ = reply.send(Ok((id, actor)));
    }

    /// Replaces the policy; every live connection is told.
    fn on_set_policy(&mut self, policy: Policy) {
        info!(parent: &self.span, ?policy, "policy replaced");
        for entry in self.registry.conns.values() {
            let _ = entry
                .actor
                .cast(ConnectionMsg::order(Order::SetPolicy(policy.clone())));
        }
        self.policy = policy;
        let peers = self.registry.conns.values().map(|e| &e.info.peer);
        self.counts.recount_prefixes(peers, &self.policy.limits);
    }

    /// A kill of one connection or session; answered once it is gone.
    fn on_kill(
        &mut self,
        target: Target,
        reason: String,
        grace: Duration,
        by: Option<String>,
        reply: RpcReplyPort<Result<KillReport, KillError>>,
    ) {
        let waiter = Waiter::new(reply);
        // Logged once found: a kill of an ID that names nothing is no kill.
        let span = self.span.clone();
        let requested = || info!(parent: &span, %target, reason = %reason, by = by.as_deref(), "kill requested");
        match target {
            Target::Connection(conn) => match self.registry.conns.get_mut(&conn) {
                Some(entry) => {
                    requested();
                    entry.waiters.push(waiter);
                    self.kill_connection(conn, &reason, grace, &by, false);
                }
                None => {
                    let _ = waiter.reply.send(Err(KillError::NotFound(target)));
                }
            },
            Target::Session(session) => {
                let conn = self.registry.sessions.get(&session).copied();
                let found = conn
                    .and_then(|conn| self.registry.conns.get_mut(&conn))
                    .and_then(|entry| {
                        let actor = entry.actor.clone();
                        entry.session_mut(session).map(|s| (actor, s))
                    });
                match found {
                    Some((actor, s)) => {
                        requested();
                        s.waiters.push(waiter);
                        let _ = actor.cast(ConnectionMsg::order(Order::KillSession {
                            session,
                            reason,
                            grace,
                        }));
                    }
                    None => {
                        let _ = waiter.reply.send(Err(KillError::NotFound(target)));
                    }
                }
            }
        }
    }

    /// Kills every connection `filter` selects; `reply` gets one report per connection once
    /// all of them are gone.
    fn on_kill_where(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        filter: &Filter,
        reason: &str,
        grace: Duration,
        by: &Option<String>,
        reply: RpcReplyPort<Vec<KillReport>>,
    ) {
        let pending = self.registry.selected_ids(filter);
        info!(parent: &self.span, connections = pending.len(), ?filter, reason = %reason, by = by.as_deref(), "kill of a set requested");
        self.kill_set(myself, pending, reason, grace, by, reply);
    }

    /// Kills every connection of `pending`; `reply` gets one report per connection once all
    /// of them are gone.
    fn kill_set(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        pending: HashSet<ConnId>,
        reason: &str,
        grace: Duration,
        by: &Option<String>,
        reply: RpcReplyPort<Vec<KillReport>>,
    ) {
        if pending.is_empty() {
            let _ = reply.send(Vec::new());
            return;
        }
        for conn in &pending {
            self.kill_connection(*conn, reason, grace, by, true);
        }
        let group = self.groups.next_id();
        let grace_timer = myself.send_after(grace, move || {
            SupervisorMsg::Notice(Notice(NoticeKind::GroupGraceElapsed { group }))
        });
        self.groups.add(pending, reply, grace_timer.abort_handle());
    }

    /// Announces a kill to the terminals of the connections `which` selects, lists it as
    /// pending, and arms its deadline (see [`SupervisorMsg::KillWarned`]).
    #[allow(clippy::too_many_arguments)]
    fn on_kill_warned(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        which: Selection,
        reason: String,
        notice: Duration,
        grace: Duration,
        by: Option<String>,
        reply: RpcReplyPort<Vec<KillReport>>,
    ) {
        let conns = match &which {
            Selection::One(conn) if self.registry.conns.contains_key(conn) => vec![*conn],
            Selection::One(_) => Vec::new(),
            Selection::Where(filter) => self.registry.selected_ids(filter).into_iter().collect(),
        };
        info!(parent: &self.span, connections = conns.len(), ?which, reason = %reason, notice = %humantime::format_duration(notice), by = by.as_deref(), "kill announced");
        if conns.is_empty() {
            let _ = reply.send(Vec::new());
            return;
        }
        let at = SystemTime::now() + notice;
        let text = format!(
            "*** sshvisor: this connection will be closed in {}: {reason} ***",
            humantime::format_duration(Duration::from_secs(notice.as_secs_f64().round() as u64))
        );
        for conn in &conns {
            if let Some(entry) = self.registry.conns.get_mut(conn) {
                entry.info.pending_kill = Some(PendingKill {
                    at,
                    reason: reason.clone(),
                });
                let _ = entry
                    .actor
                    .cast(ConnectionMsg::order(Order::Notify(text.clone())));
            }
        }
        let number = self.warnings.add(warnings::Warning {
            conns,
            reason,
            grace,
            by,
            reply,
        });
        myself.send_after(notice, move || {
            SupervisorMsg::Notice(Notice(NoticeKind::WarningDue { number }))
        });
    }

    /// Withdraws the announced kill `conn` waits for, and tells its terminals.
    fn on_cancel_kill(&mut self, conn: ConnId, by: Option<String>, reply: RpcReplyPort<bool>) {
        let withdrawn = self.warnings.cancel(conn);
        let cancelled = withdrawn.is_some();
        if let Some(Some(emptied)) = withdrawn {
            // Nothing left to kill at its deadline: its caller is answered now.
            let _ = emptied.reply.send(Vec::new());
        }
        if let (true, Some(entry)) = (cancelled, self.registry.conns.get_mut(&conn)) {
            entry.info.pending_kill = None;
            let text = "*** sshvisor: the announced close of this connection is cancelled ***";
            let _ = entry
                .actor
                .cast(ConnectionMsg::order(Order::Notify(text.to_string())));
        }
        if cancelled {
            // Also when the connection has ended meanwhile: a kill was withdrawn all the same.
            info!(parent: &self.span, %conn, "announced kill cancelled");
            self.events.send(Event::KillCancelled { conn, by });
        }
        let _ = reply.send(cancelled);
    }

    /// An announced kill's deadline: its connections still waiting are killed as one set.
    fn on_warning_due(&mut self, myself: &ActorRef<SupervisorMsg>, number: u64) {
        let Some(warning) = self.warnings.due(number) else {
            return;
        };
        let live: HashSet<ConnId> = warning
            .conns
            .into_iter()
            .filter(|conn| self.registry.conns.contains_key(conn))
            .collect();
        for conn in &live {
            if let Some(entry) = self.registry.conns.get_mut(conn) {
                entry.info.pending_kill = None;
            }
        }
        self.kill_set(
            myself,
            live,
            &warning.reason,
            warning.grace,
            &warning.by,
            warning.reply,
        );
    }

    /// How big the tree is.
    fn stats(&self, myself: &ActorRef<SupervisorMsg>) -> TreeStats {
        let children = myself.get_children();
        TreeStats {
            connections: self.registry.conns.len(),
            sessions: self.registry.sessions.len(),
            connection_actors: children.len(),
            session_actors: children.iter().map(|c| c.get_children().len()).sum(),
            waiting_kills: self.registry.waiting_kills() + self.groups.len() + self.warnings.len(),
        }
    }

    /// What the tree tells itself.
    fn on_notice(&mut self, myself: &ActorRef<SupervisorMsg>, notice: NoticeKind) {
        match notice {
            NoticeKind::SessionPty { conn, session, pty } => {
                self.on_session_pty(conn, session, pty)
            }
            NoticeKind::Closing { conn } => {
                self.mark_closing(conn);
            }
            NoticeKind::Authenticated {
                conn,
                user,
                method,
                client_version,
                credential,
                verdict,
            } => self.on_authenticated(conn, user, method, (client_version, credential), verdict),
            NoticeKind::SessionOpened { conn, session } => self.on_session_opened(conn, session),
            NoticeKind::SessionStarted {
                conn,
                session,
                kind,
                command,
            } => self.on_session_started(conn, session, kind, command),
            NoticeKind::SessionEnded(end) => self.on_session_ended(end),
            NoticeKind::GroupGraceElapsed { group } => self.on_group_grace_elapsed(group),
            NoticeKind::LoginTimer => self.on_login_timer(myself),
            NoticeKind::WarningDue { number } => self.on_warning_due(myself, number),
            NoticeKind::ConnectionEnded { actor, end } => {
                self.on_connection_ended(actor, end.outcome, end.failure)
            }
        }
    }

    fn on_session_pty(&mut self, conn: ConnId, session: SessionId, pty: Option<PtyInfo>) {
        if let Some(s) = self.registry.session_mut(conn, session) {
            s.info.pty = pty;
        }
    }

    /// A client authenticated: counted by user, and refused when its user is over the limit.
    fn on_authenticated(
        &mut self,
        conn: ConnId,
        user: String,
        method: String,
        (client_version, credential): (Option<String>, Option<Credential>),
        verdict: Option<RpcReplyPort<Result<(), String>>>,
    ) {
        let max = self.policy.limits.max_per_user;
        let Some(entry) = self.registry.conns.get_mut(&conn) else {
            // Already gone: no limit to tell the client about, it ends anyway.
            if let Some(verdict) = verdict {
                let _ = verdict.send(Ok(()));
            }
            return;
        };
        if Self::end_login(&mut self.counts, &mut self.logins, entry) {
            entry.info.state = ConnState::Authenticated;
        }
        let before = entry.info.user.take();
        let same_user = self.counts.authenticated(before.as_deref(), &user);
        entry.info.user = Some(user.clone());
        entry.info.auth_method = Some(method.clone());
        entry.info.client_version = client_version;
        entry.info.credential = credential.clone();
        let peer = entry.info.peer;
        self.events.send(Event::Authenticated {
            conn,
            user: user.clone(),
            method,
            credential,
        });
        if same_user >= max {
            let reason = format!("max_per_user ({max}) reached for {user}");
            info!(parent: &self.span, conn_id = %conn, reason = %reason, "audit: connection refused");
            self.events.send(Event::Refused {
                peer,
                reason: reason.clone(),
                conn: Some(conn),
                user: Some(user.clone()),
            });
            if let Some(verdict) = verdict {
                let _ = verdict.send(Err(reason.clone()));
            }
            let grace = self.policy.kill_grace;
            self.kill_connection(
                conn,
                &reason,
                grace,
                &Some(killed_by::MAX_PER_USER.into()),
                false,
            );
        } else if let Some(verdict) = verdict {
            let _ = verdict.send(Ok(()));
        }
    }

    fn on_session_opened(&mut self, conn: ConnId, session: SessionId) {
        if let Some(entry) = self.registry.conns.get_mut(&conn) {
            entry.sessions.push(SessionEntry {
                info: SessionInfo {
                    id: session,
                    kind: SessionKind::Pending,
                    command: None,
                    started: SystemTime::now(),
                    pty: None,
                    processes: None,
                },
                waiters: Vec::new(),
            });
            self.registry.sessions.insert(session, conn);
            self.events.send(Event::SessionOpened { conn, session });
        }
    }

    fn on_session_started(
        &mut self,
        conn: ConnId,
        session: SessionId,
        kind: SessionKind,
        command: Option<String>,
    ) {
        if let Some(s) = self.registry.session_mut(conn, session) {
            s.info.kind = kind;
            s.info.command = command.clone();
            self.events.send(Event::SessionStarted {
                conn,
                session,
                kind,
                command,
                pty: s.info.pty.is_some(),
            });
        }
    }

    /// Arms the login timer for the earliest login deadline, unless it is armed for that or
    /// earlier already.
    fn arm_login_timer(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let Some(at) = self.logins.needs_arming() else {
            return;
        };
        let delay = at.saturating_duration_since(Instant::now());
        let timer = myself.send_after(delay, || {
            SupervisorMsg::Notice(Notice(NoticeKind::LoginTimer))
        });
        self.logins.armed(at, timer.abort_handle());
    }

    /// The login timer went off: every login past its grace is told so; the timer is armed
    /// again for the next one.
    fn on_login_timer(&mut self, myself: &ActorRef<SupervisorMsg>) {
        for conn in self.logins.fired(Instant::now()) {
            if let Some(entry) = self.registry.conns.get_mut(&conn) {
                entry.login_deadline = None;
                let _ = entry
                    .actor
                    .cast(ConnectionMsg::tick(Tick::LoginGraceElapsed));
            }
        }
        self.arm_login_timer(myself);
    }

    /// A kill group's grace ran out: its connections still alive are told so.
    fn on_group_grace_elapsed(&self, group: u64) {
        for conn in self.groups.pending(group) {
            if let Some(entry) = self.registry.conns.get(conn) {
                let _ = entry.actor.cast(ConnectionMsg::tick(Tick::GraceElapsed));
            }
        }
    }

    fn on_session_ended(&mut self, end: SessionEnd) {
        let SessionEnd {
            conn,
            session,
            exit,
            killed,
            forced,
            processes_left,
        } = end;
        self.registry.sessions.remove(&session);
        let Some(entry) = self.registry.conns.get_mut(&conn) else {
            return;
        };
        let Some(pos) = entry.sessions.iter().position(|s| s.info.id == session) else {
            return;
        };
        let removed = entry.sessions.remove(pos);
        if matches!(entry.info.state, ConnState::Closing) {
            entry.closed_while_closing += 1;
        }
        let ending = Ending {
            target: Target::Session(session),
            sessions_closed: 1,
            forced,
            processes_left,
            user: entry.info.user.clone(),
            peer: entry.info.peer,
        };
        Waiter::answer_all(removed.waiters, &ending);
        self.events.send(Event::SessionClosed {
            conn,
            session,
            exit,
            killed,
        });
    }

    /// A connection actor has terminated: out of the map, and everyone waiting on it answered.
    fn on_connection_ended(
        &mut self,
        actor: ActorId,
        outcome: Option<ConnOutcome>,
        failure: Option<String>,
    ) {
        let Some(conn) = self.registry.by_actor.remove(&actor) else {
            return;
        };
        let Some(mut entry) = self.registry.conns.remove(&conn) else {
            return;
        };
        self.logins.forget(&mut entry.login_deadline, conn);
        self.counts.release(
            entry.info.peer,
            entry.info.user.as_deref(),
            conn,
            entry.admitted,
            &self.policy.limits,
        );
        let (cause, sessions_closed, forced, processes_left) = match (outcome, failure) {
            (Some(o), _) => (o.cause, o.sessions_closed, o.forced, o.processes_left),
            (None, message) => (
                DisconnectCause::Error {
                    message: message.unwrap_or_else(|| "the connection actor was killed".into()),
                },
                entry.closed_while_closing + entry.sessions.len(),
                true,
                0,
            ),
        };
        // Sessions still listed here died with their connection (it crashed or was killed).
        for session in entry.sessions {
            self.registry.sessions.remove(&session.info.id);
            let died = Ending {
                target: Target::Session(session.info.id),
                sessions_closed: 1,
                forced: true,
                processes_left: 0,
                user: entry.info.user.clone(),
                peer: entry.info.peer,
            };
            Waiter::answer_all(session.waiters, &died);
            self.events.send(Event::SessionClosed {
                conn,
                session: session.info.id,
                exit: SessionExit::Failed("its connection ended".into()),
                killed: None,
            });
        }
        info!(parent: &self.span, conn_id = %conn, ?cause, sessions_closed, forced, "connection gone");
        let figures = EndFigures {
            forced,
            kill_us: match (&cause, entry.closing_since) {
                (DisconnectCause::Killed { .. }, Some(since)) => {
                    Some(since.elapsed().as_micros() as u64)
                }
                _ => None,
            },
            bytes_in: entry.traffic.as_ref().map_or(0, |t| t.bytes_in()),
            bytes_out: entry.traffic.as_ref().map_or(0, |t| t.bytes_out()),
            sessions_closed,
        };
        let ending = Ending {
            target: Target::Connection(conn),
            sessions_closed,
            forced,
            processes_left,
            user: entry.info.user,
            peer: entry.info.peer,
        };
        Waiter::answer_all(entry.waiters, &ending);
        self.groups.connection_gone(conn, &ending);
        self.events.send(Event::Disconnected {
            conn,
            cause,
            figures,
        });
    }
}

impl Actor for SupervisorActor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        // ractor builds its process-group registry at the first actor stop (and dashmap reads
        // the cgroup CPU quota from files to size it): done here, so that the first kill does
        // not pay for it (about a millisecond).
        let _ = ractor::pg::which_groups();
        let to_me = myself.clone();
        Ok(SupervisorState {
            events: args.events,
            policy: args.policy,
            registry: Registry::default(),
            counts: Counts::default(),
            logins: Logins::default(),
            groups: KillGroups::default(),
            warnings: Default::default(),
            // A supervisor already gone has nobody left to tell.
            parent: Parent::new(move |notice| {
                let _ = to_me.cast(SupervisorMsg::Notice(notice));
            }),
            span: tracing::info_span!(parent: None, "supervisor"),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // After every other event of the tree: a listener knows it has heard them all.
        state.events.send(Event::Stopped);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Connect { peer, link, reply } => {
                state.on_connect(&myself, peer, link, reply).await
            }
            SupervisorMsg::SetPolicy { policy, reply } => {
                state.on_set_policy(policy);
                let _ = reply.send(());
            }
            SupervisorMsg::List { reply } => {
                let _ = reply.send(state.registry.select(&Filter::default()));
            }
            SupervisorMsg::Get { conn, reply } => {
                let _ = reply.send(state.registry.conns.get(&conn).map(ConnEntry::snapshot));
            }
            SupervisorMsg::Kill {
                target,
                reason,
                grace,
                by,
                reply,
            } => state.on_kill(target, reason, grace, by, reply),
            SupervisorMsg::KillAll {
                reason,
                grace,
                by,
                reply,
            } => state.on_kill_where(&myself, &Filter::default(), &reason, grace, &by, reply),
            SupervisorMsg::KillWhere {
                filter,
                reason,
                grace,
                by,
                reply,
            } => state.on_kill_where(&myself, &filter, &reason, grace, &by, reply),
            SupervisorMsg::Resolve { text, reply } => {
                let _ = reply.send(state.registry.resolve(&text));
            }
            SupervisorMsg::Stats { reply } => {
                let _ = reply.send(state.stats(&myself));
            }
            SupervisorMsg::Census { reply } => {
                let _ = reply.send(state.registry.census());
            }
            SupervisorMsg::Admission { reply } => {
                let _ = reply.send(state.counts.snapshot(state.registry.conns.len()));
            }
            SupervisorMsg::Select { filter, reply } => {
                let _ = reply.send(state.registry.select(&filter));
            }
            SupervisorMsg::KillWarned {
                which,
                reason,
                notice,
                grace,
                by,
                reply,
            } => state.on_kill_warned(&myself, which, reason, notice, grace, by, reply),
            SupervisorMsg::CancelKill { conn, by, reply } => state.on_cancel_kill(conn, by, reply),
            SupervisorMsg::Notice(Notice(notice)) => state.on_notice(&myself, notice),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (actor, end) = match event {
            SupervisionEvent::ActorTerminated(cell, final_state, _) => {
                let outcome = final_state
                    .and_then(|mut s| s.take::<ConnectionState>().ok())
                    .and_then(|s| s.outcome());
                let end = ConnectionEnd {
                    outcome,
                    failure: None,
                };
                (cell.get_id(), end)
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                warn!(parent: &state.span, error = %err, "a connection actor crashed");
                let end = ConnectionEnd {
                    outcome: None,
                    failure: Some(format!("the connection actor crashed: {err}")),
                };
                (cell.get_id(), end)
            }
            _ => return Ok(()),
        };
        // This event may have overtaken the connection's last notices (its sessions' ends) in
        // our queue: handle the end behind them.
        let deferred = SupervisorMsg::Notice(Notice(NoticeKind::ConnectionEnded { actor, end }));
        if let Err(MessagingErr::SendErr(SupervisorMsg::Notice(Notice(
            NoticeKind::ConnectionEnded { actor, end },
        )))) = myself.cast(deferred)
        {
            state.on_connection_ended(actor, end.outcome, end.failure);
        }
        Ok(())
    }
}
