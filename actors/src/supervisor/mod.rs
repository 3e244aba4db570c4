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
//! queue (`Notice::ConnectionEnded`) and is handled after the notices the connection sent
//! before it stopped (its sessions' real ends).
//!
//! Architecture Invariant: only this actor writes the map, and it removes an entry only when the
//! entry's actor has terminated (or, for a session that could not be spawned, never existed).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ractor::concurrency::JoinHandle;
use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, MessagingErr, OutputPort, RpcReplyPort,
    SupervisionEvent,
};
use tokio::time::Instant;
use tracing::{info, warn, Span};

use crate::connection::{ConnectionActor, ConnectionArgs, ConnectionMsg, ConnectionState};
use crate::filter::Filter;
use crate::ids::{resolve_prefix, ConnId, PrefixMatch, SessionId, Target};
use crate::link::{ConnectionLink, Traffic};
use crate::report::{
    ConnState, ConnectionInfo, DisconnectCause, Event, KillError, KillReport, PtyInfo, Refusal,
    SessionExit, SessionInfo, SessionKind, TreeStats,
};
use crate::Policy;

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
pub enum SupervisorMsg {
    /// (from the binding) Admit a new transport: spawns its `ConnectionActor`.
    Connect {
        /// The client's address.
        peer: SocketAddr,
        /// The transport.
        link: Box<dyn ConnectionLink>,
        /// The new connection's ID and actor (the binding sends it the transport's events).
        reply: RpcReplyPort<Result<(ConnId, ActorRef<ConnectionMsg>), Refusal>>,
    },
    /// A snapshot of every live connection with its sessions, oldest first.
    List {
        /// The snapshot.
        reply: RpcReplyPort<Vec<ConnectionInfo>>,
    },
    /// A snapshot of one connection.
    Get {
        /// The connection.
        conn: ConnId,
        /// `None` when no such connection is live.
        reply: RpcReplyPort<Option<ConnectionInfo>>,
    },
    /// End a connection (its sessions first, then a disconnect with `reason`, then the
    /// transport) or a single session. The reply comes once everything under the target has
    /// stopped, within `grace` plus a bounded margin, exactly once; `NotFound` at once for an
    /// unknown ID.
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
    /// `Kill` every connection live now; one reply, with one report per connection, once all of
    /// them are gone. Connections admitted afterwards are not part of it: stop admitting first
    /// (the daemon stops its listener) for the tree to be empty at the reply.
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
    /// `Kill` every live connection that `filter` selects (all of them for an empty filter);
    /// one reply, with one report per connection, once all of them are gone.
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
    /// A snapshot of the live connections that `filter` selects (what `KillWhere` would kill).
    Select {
        /// Which connections.
        filter: Filter,
        /// The snapshot, oldest first.
        reply: RpcReplyPort<Vec<ConnectionInfo>>,
    },
    /// Replaces the policy (a configuration reload). New connections get it at once; live ones
    /// get what makes sense for them (see [`ConnectionMsg::SetPolicy`]). Limits govern
    /// admission only: lowering one never ends a live connection or session. Replies once
    /// every live connection has been told.
    SetPolicy {
        /// The new policy.
        policy: Policy,
        /// Sent once applied.
        reply: RpcReplyPort<()>,
    },
    /// The live connection or session whose ID is `text` or starts with it (case-insensitive;
    /// a full ID is found without a scan).
    Resolve {
        /// A full ID or a prefix.
        text: String,
        /// What it names.
        reply: RpcReplyPort<PrefixMatch<Target>>,
    },
    /// How big the tree is: map sizes and live actors (see [`TreeStats`]).
    Stats {
        /// The figures.
        reply: RpcReplyPort<TreeStats>,
    },
    /// The running counts the limits are checked against (see [`AdmissionCounts`]), for
    /// diagnostics and for tests that recount them from the outside.
    Admission {
        /// The counts.
        reply: RpcReplyPort<AdmissionCounts>,
    },
    /// Sent by the tree's own actors; not constructible outside this crate.
    Notice(Notice),
}

/// Notices from connection and session actors to the supervisor.
#[doc(hidden)]
pub enum Notice {
    Closing {
        conn: ConnId,
    },
    SessionPty {
        conn: ConnId,
        session: SessionId,
        pty: Option<PtyInfo>,
    },
    Authenticated {
        conn: ConnId,
        user: String,
        method: String,
        client_version: Option<String>,
        verdict: Option<RpcReplyPort<Result<(), String>>>,
    },
    SessionOpened {
        conn: ConnId,
        session: SessionId,
    },
    SessionStarted {
        conn: ConnId,
        session: SessionId,
        kind: SessionKind,
        command: Option<String>,
    },
    SessionEnded {
        conn: ConnId,
        session: SessionId,
        exit: SessionExit,
        killed: Option<String>,
        forced: bool,
        processes_left: usize,
    },
    /// Sent by the supervisor to itself when the earliest login grace runs out.
    LoginTimer,
    /// Sent by the supervisor to itself when a kill group's grace ran out.
    GroupGraceElapsed {
        group: u64,
    },
    /// Sent by the supervisor to itself when a connection actor has terminated, so that it is
    /// handled after every notice the connection cast before it stopped.
    ConnectionEnded {
        actor: ActorId,
        end: ConnectionEnd,
    },
}

/// How a connection actor ended, as read from its supervision event.
#[doc(hidden)]
pub struct ConnectionEnd {
    outcome: Option<crate::connection::ConnOutcome>,
    failure: Option<String>,
}

struct Waiter {
    reply: RpcReplyPort<Result<KillReport, KillError>>,
    since: Instant,
}

struct SessionEntry {
    info: SessionInfo,
    waiters: Vec<Waiter>,
}

struct ConnEntry {
    actor: ActorRef<ConnectionMsg>,
    admitted: Instant,
    /// When its login grace runs out, while it is logging in (its key in `logins`).
    login_deadline: Option<Instant>,
    traffic: Option<Arc<dyn Traffic>>,
    info: ConnectionInfo,
    sessions: Vec<SessionEntry>,
    waiters: Vec<Waiter>,
    /// Sessions that ended while it was closing: its report's count should its actor crash
    /// before it tells its own.
    closed_while_closing: usize,
}

/// A message to the supervisor itself, sent later (`send_after`); aborted when not needed.
type Timer = JoinHandle<Result<(), MessagingErr<SupervisorMsg>>>;

struct Group {
    id: u64,
    pending: HashSet<ConnId>,
    reports: Vec<KillReport>,
    since: Instant,
    reply: RpcReplyPort<Vec<KillReport>>,
    /// The one timer of the kill's grace, for all its connections; stopped once all are gone.
    grace_timer: Timer,
}

/// The supervisor's state: the ID map and everyone waiting on it.
pub struct SupervisorState {
    events: Arc<OutputPort<Event>>,
    policy: Policy,
    conns: HashMap<ConnId, ConnEntry>,
    /// Running counts for the limits, so that admission costs the same at any size.
    counts: Counts,
    by_actor: HashMap<ActorId, ConnId>,
    sessions: HashMap<SessionId, ConnId>,
    groups: Vec<Group>,
    /// The last kill group's ID.
    next_group: u64,
    /// Connections logging in, by when their login grace runs out: one timer for all of them
    /// (`login_timer`, armed for the earliest), not a timer task per connection.
    logins: BTreeSet<(Instant, ConnId)>,
    login_timer: Option<(Instant, Timer)>,
    span: Span,
}

impl SupervisorState {
    /// Whether `filter` selects `entry`, without a full snapshot unless idle time matters.
    fn selects(filter: &Filter, entry: &ConnEntry, now: SystemTime) -> bool {
        if filter.is_empty() {
            true
        } else if filter.idle_over.is_none() {
            filter.matches(&entry.info, now)
        } else {
            filter.matches(&SupervisorState::snapshot(entry), now)
        }
    }

    fn snapshot(entry: &ConnEntry) -> ConnectionInfo {
        let mut info = entry.info.clone();
        if let Some(t) = &entry.traffic {
            info.idle_ms = Some(t.idle_for().as_millis() as u64);
            info.bytes_in = Some(t.bytes_in());
            info.bytes_out = Some(t.bytes_out());
        }
        info.sessions = entry.sessions.iter().map(|s| s.info.clone()).collect();
        info
    }

    /// `timed_here`: the caller sends the connection `GraceElapsed` when the grace runs out
    /// (see [`ConnectionMsg::Kill`]).
    fn kill_connection(
        &mut self,
        conn: ConnId,
        reason: &str,
        grace: Duration,
        by: &Option<String>,
        timed_here: bool,
    ) {
        if let Some(entry) = self.conns.get_mut(&conn) {
            if entry.info.state == ConnState::Handshaking {
                self.counts.pending.remove(&(entry.admitted, conn));
                forget_login(&mut self.logins, entry, conn);
            }
            entry.info.state = ConnState::Closing;
            // Every kill goes on: a later one with a shorter grace brings the end closer. If the
            // actor is already gone its termination is queued and answers.
            let _ = entry.actor.cast(ConnectionMsg::Kill {
                reason: reason.to_string(),
                grace,
                by: by.clone(),
                timed_by_sender: timed_here,
            });
        }
    }

    fn resolve(&self, text: &str) -> PrefixMatch<Target> {
        if let Ok(conn) = text.trim().parse::<ConnId>() {
            if self.conns.contains_key(&conn) {
                return PrefixMatch::One(Target::Connection(conn));
            }
            let session = SessionId(conn.0);
            if self.sessions.contains_key(&session) {
                return PrefixMatch::One(Target::Session(session));
            }
        }
        let candidates = self.conns.values().flat_map(|e| {
            std::iter::once((e.info.id.to_string(), Target::Connection(e.info.id))).chain(
                e.sessions
                    .iter()
                    .map(|s| (s.info.id.to_string(), Target::Session(s.info.id))),
            )
        });
        resolve_prefix(text, candidates)
    }

    /// Whether a new connection from `peer` may come in, and at whose expense.
    fn admission(&self, peer: SocketAddr) -> Admission {
        if let Some(refusal) = self.over_hard_limit(peer) {
            return Admission::Refuse(refusal);
        }
        let max = self.policy.limits.max_unauthenticated;
        if self.counts.pending.len() < max {
            return Admission::Admit;
        }
        let text = format!("max_unauthenticated ({max}) reached");
        match self.counts.pending.first() {
            Some((admitted, id)) if admitted.elapsed() >= crate::MIN_PENDING_AGE => {
                Admission::AdmitDropping(
                    *id,
                    format!("{text}: the oldest pending login was dropped"),
                )
            }
            _ => Admission::Refuse(Refusal::Limit(text)),
        }
    }

    /// The limit a new connection from `peer` would break, if any, other than
    /// `max_unauthenticated`.
    fn over_hard_limit(&self, peer: SocketAddr) -> Option<Refusal> {
        let limits = &self.policy.limits;
        if self.conns.len() >= limits.max_connections {
            return Some(Refusal::Limit(format!(
                "max_connections ({}) reached",
                limits.max_connections
            )));
        }
        let ip = peer.ip().to_canonical();
        let from_peer = self.counts.per_source.get(&ip).copied().unwrap_or(0);
        if from_peer >= limits.max_per_source {
            return Some(Refusal::Limit(format!(
                "max_per_source ({}) reached for {ip}",
                limits.max_per_source
            )));
        }
        let net = network_of(ip, limits.prefix_v4, limits.prefix_v6);
        let from_net = self.counts.per_prefix.get(&net).copied().unwrap_or(0);
        if from_net >= limits.max_per_prefix {
            return Some(Refusal::Limit(format!(
                "max_per_prefix ({}) reached for {}/{}",
                limits.max_per_prefix, net.0, net.1
            )));
        }
        None
    }

    /// Kills every connection `filter` selects; `reply` gets one report per connection once
    /// all of them are gone.
    fn kill_group(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        filter: &Filter,
        reason: &str,
        grace: Duration,
        by: &Option<String>,
        reply: RpcReplyPort<Vec<KillReport>>,
    ) {
        let now = SystemTime::now();
        let pending: HashSet<ConnId> = self
            .conns
            .iter()
            .filter(|(_, e)| SupervisorState::selects(filter, e, now))
            .map(|(id, _)| *id)
            .collect();
        info!(parent: &self.span, connections = pending.len(), ?filter, reason = %reason, by = by.as_deref(), "kill of a set requested");
        if pending.is_empty() {
            let _ = reply.send(Vec::new());
            return;
        }
        for conn in &pending {
            self.kill_connection(*conn, reason, grace, by, true);
        }
        self.next_group += 1;
        let id = self.next_group;
        let grace_timer = myself.send_after(grace, move || {
            SupervisorMsg::Notice(Notice::GroupGraceElapsed { group: id })
        });
        self.groups.push(Group {
            id,
            reports: Vec::with_capacity(pending.len()),
            pending,
            since: Instant::now(),
            reply,
            grace_timer,
        });
    }

    /// Arms the login timer for the earliest login deadline, unless it is armed for that or
    /// earlier already (a timer that finds nothing due re-arms for what is left).
    fn arm_login_timer(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let Some(&(first, _)) = self.logins.first() else {
            return;
        };
        if let Some((at, _)) = &self.login_timer {
            if *at <= first {
                return;
            }
        }
        let delay = first.saturating_duration_since(Instant::now());
        let timer = myself.send_after(delay, || SupervisorMsg::Notice(Notice::LoginTimer));
        if let Some((_, earlier)) = self.login_timer.replace((first, timer)) {
            earlier.abort();
        }
    }

    /// The login timer went off: every login past its grace is told so; the timer is armed
    /// again for the next one.
    fn login_timer(&mut self, myself: &ActorRef<SupervisorMsg>) {
        self.login_timer = None;
        let now = Instant::now();
        while let Some(&(deadline, conn)) = self.logins.first() {
            if deadline > now {
                break;
            }
            self.logins.pop_first();
            if let Some(entry) = self.conns.get_mut(&conn) {
                entry.login_deadline = None;
                let _ = entry.actor.cast(ConnectionMsg::LoginGraceElapsed);
            }
        }
        self.arm_login_timer(myself);
    }

    /// A kill group's grace ran out: its connections still alive are told so.
    fn group_grace_elapsed(&self, group: u64) {
        let Some(group) = self.groups.iter().find(|g| g.id == group) else {
            return;
        };
        for conn in &group.pending {
            if let Some(entry) = self.conns.get(conn) {
                let _ = entry.actor.cast(ConnectionMsg::GraceElapsed);
            }
        }
    }

    fn session_ended(
        &mut self,
        conn: ConnId,
        session: SessionId,
        exit: SessionExit,
        killed: Option<String>,
        forced: bool,
        processes_left: usize,
    ) {
        self.sessions.remove(&session);
        let Some(entry) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(pos) = entry.sessions.iter().position(|s| s.info.id == session) else {
            return;
        };
        let removed = entry.sessions.remove(pos);
        if matches!(entry.info.state, ConnState::Closing) {
            entry.closed_while_closing += 1;
        }
        for waiter in removed.waiters {
            let _ = waiter.reply.send(Ok(KillReport {
                target: Target::Session(session),
                sessions_closed: 1,
                elapsed: waiter.since.elapsed(),
                forced,
                processes_left,
            }));
        }
        self.events.send(Event::SessionClosed {
            conn,
            session,
            exit,
            killed,
        });
    }

    fn connection_ended(
        &mut self,
        actor: ActorId,
        outcome: Option<crate::connection::ConnOutcome>,
        failure: Option<String>,
    ) {
        let Some(conn) = self.by_actor.remove(&actor) else {
            return;
        };
        let Some(mut entry) = self.conns.remove(&conn) else {
            return;
        };
        forget_login(&mut self.logins, &mut entry, conn);
        self.counts.release(&entry, &self.policy.limits);
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
            self.sessions.remove(&session.info.id);
            for waiter in session.waiters {
                let _ = waiter.reply.send(Ok(KillReport {
                    target: Target::Session(session.info.id),
                    sessions_closed: 1,
                    elapsed: waiter.since.elapsed(),
                    forced: true,
                    processes_left: 0,
                }));
            }
            self.events.send(Event::SessionClosed {
                conn,
                session: session.info.id,
                exit: SessionExit::Failed("its connection ended".into()),
                killed: None,
            });
        }
        info!(parent: &self.span, conn_id = %conn, ?cause, sessions_closed, forced, "connection gone");
        for waiter in entry.waiters {
            let _ = waiter.reply.send(Ok(KillReport {
                target: Target::Connection(conn),
                sessions_closed,
                elapsed: waiter.since.elapsed(),
                forced,
                processes_left,
            }));
        }
        let report = |since: Instant| KillReport {
            target: Target::Connection(conn),
            sessions_closed,
            elapsed: since.elapsed(),
            forced,
            processes_left,
        };
        let mut i = 0;
        while i < self.groups.len() {
            if self.groups[i].pending.remove(&conn) {
                let since = self.groups[i].since;
                self.groups[i].reports.push(report(since));
                if self.groups[i].pending.is_empty() {
                    let group = self.groups.swap_remove(i);
                    group.grace_timer.abort();
                    let _ = group.reply.send(group.reports);
                    continue;
                }
            }
            i += 1;
        }
        self.events.send(Event::Disconnected { conn, cause });
    }
}

impl Actor for SupervisorActor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        // ractor builds its process-group registry at the first actor stop (and dashmap reads
        // the cgroup CPU quota from files to size it): done here, so that the first kill does
        // not pay for it (about a millisecond).
        let _ = ractor::pg::which_groups();
        Ok(SupervisorState {
            events: args.events,
            policy: args.policy,
            conns: HashMap::new(),
            counts: Counts::default(),
            by_actor: HashMap::new(),
            sessions: HashMap::new(),
            groups: Vec::new(),
            next_group: 0,
            logins: BTreeSet::new(),
            login_timer: None,
            span: tracing::info_span!(parent: None, "supervisor"),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Connect { peer, link, reply } => {
                match state.admission(peer) {
                    Admission::Admit => {}
                    Admission::AdmitDropping(victim, reason) => {
                        info!(parent: &state.span, %peer, dropped = %victim, reason = %reason, "audit: pending login dropped to admit a new connection");
                        let grace = state.policy.kill_grace;
                        state.kill_connection(
                            victim,
                            &reason,
                            grace,
                            &Some("max_unauthenticated".into()),
                            false,
                        );
                    }
                    Admission::Refuse(refusal) => {
                        info!(parent: &state.span, %peer, reason = %refusal, "audit: connection refused");
                        state.events.send(Event::Refused {
                            peer,
                            reason: refusal.to_string(),
                        });
                        let _ = reply.send(Err(refusal));
                        return Ok(());
                    }
                }
                let id = ConnId::new_random();
                let traffic = link.traffic();
                let args = ConnectionArgs {
                    id,
                    peer,
                    link,
                    supervisor: myself.clone(),
                    policy: state.policy.clone(),
                };
                match Actor::spawn_linked(None, ConnectionActor, args, myself.get_cell()).await {
                    Ok((actor, _)) => {
                        state.by_actor.insert(actor.get_id(), id);
                        let admitted = Instant::now();
                        state.counts.admit(peer, id, admitted, &state.policy.limits);
                        let login_deadline = state
                            .policy
                            .login_grace
                            .and_then(|grace| admitted.checked_add(grace));
                        if let Some(deadline) = login_deadline {
                            state.logins.insert((deadline, id));
                            state.arm_login_timer(&myself);
                        }
                        state.conns.insert(
                            id,
                            ConnEntry {
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
                                    started: SystemTime::now(),
                                    state: ConnState::Handshaking,
                                    idle_ms: None,
                                    bytes_in: None,
                                    bytes_out: None,
                                    sessions: Vec::new(),
                                },
                                sessions: Vec::new(),
                                waiters: Vec::new(),
                                closed_while_closing: 0,
                            },
                        );
                        state.events.send(Event::Connected { conn: id, peer });
                        let _ = reply.send(Ok((id, actor)));
                    }
                    Err(e) => {
                        warn!(parent: &state.span, error = %e, %peer, "could not start a connection actor");
                        let _ = reply.send(Err(Refusal::SpawnFailed(e.to_string())));
                    }
                }
            }
            SupervisorMsg::SetPolicy { policy, reply } => {
                info!(parent: &state.span, ?policy, "policy replaced");
                for entry in state.conns.values() {
                    let _ = entry.actor.cast(ConnectionMsg::SetPolicy(policy.clone()));
                }
                state.policy = policy;
                state.counts.per_prefix = state.conns.values().fold(HashMap::new(), |mut m, e| {
                    *m.entry(Counts::net(e.info.peer, &state.policy.limits))
                        .or_insert(0) += 1;
                    m
                });
                let _ = reply.send(());
            }
            SupervisorMsg::List { reply } => {
                let mut all: Vec<ConnectionInfo> = state
                    .conns
                    .values()
                    .map(SupervisorState::snapshot)
                    .collect();
                all.sort_by(|a, b| a.started.cmp(&b.started).then_with(|| a.id.cmp(&b.id)));
                let _ = reply.send(all);
            }
            SupervisorMsg::Get { conn, reply } => {
                let _ = reply.send(state.conns.get(&conn).map(SupervisorState::snapshot));
            }
            SupervisorMsg::Kill {
                target,
                reason,
                grace,
                by,
                reply,
            } => {
                let waiter = Waiter {
                    reply,
                    since: Instant::now(),
                };
                // Logged once found: a kill of an ID that names nothing is no kill.
                let span = state.span.clone();
                let requested = || info!(parent: &span, %target, reason = %reason, by = by.as_deref(), "kill requested");
                match target {
                    Target::Connection(conn) => match state.conns.get_mut(&conn) {
                        Some(entry) => {
                            requested();
                            entry.waiters.push(waiter);
                            state.kill_connection(conn, &reason, grace, &by, false);
                        }
                        None => {
                            let _ = waiter.reply.send(Err(KillError::NotFound(target)));
                        }
                    },
                    Target::Session(session) => {
                        let entry = state
                            .sessions
                            .get(&session)
                            .and_then(|conn| state.conns.get_mut(conn));
                        let found = entry.and_then(|entry| {
                            let actor = entry.actor.clone();
                            entry
                                .sessions
                                .iter_mut()
                                .find(|s| s.info.id == session)
                                .map(|s| (actor, s))
                        });
                        match found {
                            Some((actor, s)) => {
                                requested();
                                s.waiters.push(waiter);
                                let _ = actor.cast(ConnectionMsg::KillSession {
                                    session,
                                    reason,
                                    grace,
                                });
                            }
                            None => {
                                let _ = waiter.reply.send(Err(KillError::NotFound(target)));
                            }
                        }
                    }
                }
            }
            SupervisorMsg::KillAll {
                reason,
                grace,
                by,
                reply,
            } => state.kill_group(&myself, &Filter::default(), &reason, grace, &by, reply),
            SupervisorMsg::KillWhere {
                filter,
                reason,
                grace,
                by,
                reply,
            } => state.kill_group(&myself, &filter, &reason, grace, &by, reply),
            SupervisorMsg::Resolve { text, reply } => {
                let _ = reply.send(state.resolve(&text));
            }
            SupervisorMsg::Stats { reply } => {
                let children = myself.get_children();
                let stats = TreeStats {
                    connections: state.conns.len(),
                    sessions: state.sessions.len(),
                    connection_actors: children.len(),
                    session_actors: children.iter().map(|c| c.get_children().len()).sum(),
                    waiting_kills: state
                        .conns
                        .values()
                        .map(|e| {
                            e.waiters.len()
                                + e.sessions.iter().map(|s| s.waiters.len()).sum::<usize>()
                        })
                        .sum::<usize>()
                        + state.groups.len(),
                };
                let _ = reply.send(stats);
            }
            SupervisorMsg::Admission { reply } => {
                let _ = reply.send(state.counts.snapshot(state.conns.len()));
            }
            SupervisorMsg::Select { filter, reply } => {
                let now = SystemTime::now();
                let mut selected: Vec<ConnectionInfo> = state
                    .conns
                    .values()
                    .filter(|e| SupervisorState::selects(&filter, e, now))
                    .map(SupervisorState::snapshot)
                    .collect();
                selected.sort_by(|a, b| a.started.cmp(&b.started).then_with(|| a.id.cmp(&b.id)));
                let _ = reply.send(selected);
            }
            SupervisorMsg::Notice(notice) => match notice {
                Notice::SessionPty { conn, session, pty } => {
                    if let Some(s) = state
                        .conns
                        .get_mut(&conn)
                        .and_then(|e| e.sessions.iter_mut().find(|s| s.info.id == session))
                    {
                        s.info.pty = pty;
                    }
                }
                Notice::Closing { conn } => {
                    if let Some(entry) = state.conns.get_mut(&conn) {
                        if entry.info.state == ConnState::Handshaking {
                            state.counts.pending.remove(&(entry.admitted, conn));
                            forget_login(&mut state.logins, entry, conn);
                        }
                        entry.info.state = ConnState::Closing;
                    }
                }
                Notice::Authenticated {
                    conn,
                    user,
                    method,
                    client_version,
                    verdict,
                } => {
                    let max = state.policy.limits.max_per_user;
                    let Some(entry) = state.conns.get_mut(&conn) else {
                        // Already gone: no limit to tell the client about, it ends anyway.
                        if let Some(verdict) = verdict {
                            let _ = verdict.send(Ok(()));
                        }
                        return Ok(());
                    };
                    if entry.info.state == ConnState::Handshaking {
                        state.counts.pending.remove(&(entry.admitted, conn));
                        forget_login(&mut state.logins, entry, conn);
                        entry.info.state = ConnState::Authenticated;
                    }
                    if let Some(before) = entry.info.user.take() {
                        Counts::less(&mut state.counts.per_user, &before);
                    }
                    let same_user = state.counts.per_user.get(&user).copied().unwrap_or(0);
                    *state.counts.per_user.entry(user.clone()).or_insert(0) += 1;
                    entry.info.user = Some(user.clone());
                    entry.info.auth_method = Some(method.clone());
                    entry.info.client_version = client_version;
                    let peer = entry.info.peer;
                    state.events.send(Event::Authenticated {
                        conn,
                        user: user.clone(),
                        method,
                    });
                    if same_user >= max {
                        let reason = format!("max_per_user ({max}) reached for {user}");
                        info!(parent: &state.span, conn_id = %conn, reason = %reason, "audit: connection refused");
                        state.events.send(Event::Refused {
                            peer,
                            reason: reason.clone(),
                        });
                        if let Some(verdict) = verdict {
                            let _ = verdict.send(Err(reason.clone()));
                        }
                        let grace = state.policy.kill_grace;
                        state.kill_connection(
                            conn,
                            &reason,
                            grace,
                            &Some("max_per_user".into()),
                            false,
                        );
                    } else if let Some(verdict) = verdict {
                        let _ = verdict.send(Ok(()));
                    }
                }
                Notice::SessionOpened { conn, session } => {
                    if let Some(entry) = state.conns.get_mut(&conn) {
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
                        state.sessions.insert(session, conn);
                        state.events.send(Event::SessionOpened { conn, session });
                    }
                }
                Notice::SessionStarted {
                    conn,
                    session,
                    kind,
                    command,
                } => {
                    if let Some(s) = state
                        .conns
                        .get_mut(&conn)
                        .and_then(|e| e.sessions.iter_mut().find(|s| s.info.id == session))
                    {
                        s.info.kind = kind;
                        s.info.command = command.clone();
                        state.events.send(Event::SessionStarted {
                            conn,
                            session,
                            kind,
                            command,
                        });
                    }
                }
                Notice::SessionEnded {
                    conn,
                    session,
                    exit,
                    killed,
                    forced,
                    processes_left,
                } => state.session_ended(conn, session, exit, killed, forced, processes_left),
                Notice::GroupGraceElapsed { group } => state.group_grace_elapsed(group),
                Notice::LoginTimer => state.login_timer(&myself),
                Notice::ConnectionEnded { actor, end } => {
                    state.connection_ended(actor, end.outcome, end.failure)
                }
            },
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
                    .and_then(|s| s.outcome.clone());
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
        let deferred = SupervisorMsg::Notice(Notice::ConnectionEnded { actor, end });
        if let Err(MessagingErr::SendErr(SupervisorMsg::Notice(Notice::ConnectionEnded {
            actor,
            end,
        }))) = myself.cast(deferred)
        {
            state.connection_ended(actor, end.outcome, end.failure);
        }
        Ok(())
    }
}

/// What `SupervisorState::admission` decided.
enum Admission {
    Admit,
    /// Admit, and end this pending login (with this reason) to make room.
    AdmitDropping(ConnId, String),
    Refuse(Refusal),
}

/// The network `ip` belongs to for `max_per_prefix`: its address masked to the prefix length,
/// and that length.
fn network_of(ip: IpAddr, v4_bits: u8, v6_bits: u8) -> (IpAddr, u8) {
    match ip {
        IpAddr::V4(v4) => {
            let bits = v4_bits.min(32);
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            (IpAddr::V4((u32::from(v4) & mask).into()), bits)
        }
        IpAddr::V6(v6) => {
            let bits = v6_bits.min(128);
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            (IpAddr::V6((u128::from(v6) & mask).into()), bits)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::network_of;
    use std::net::IpAddr;

    fn net(ip: &str, v4: u8, v6: u8) -> String {
        let (addr, bits) = network_of(ip.parse::<IpAddr>().unwrap(), v4, v6);
        format!("{addr}/{bits}")
    }

    #[test]
    fn prefixes_mask_the_host_bits() {
        assert_eq!(net("10.1.2.3", 24, 64), "10.1.2.0/24");
        assert_eq!(net("10.1.2.3", 16, 64), "10.1.0.0/16");
        assert_eq!(net("10.1.2.3", 32, 64), "10.1.2.3/32");
        assert_eq!(net("10.1.2.3", 0, 64), "0.0.0.0/0");
        assert_eq!(net("10.1.2.3", 40, 64), "10.1.2.3/32");
        assert_eq!(net("2001:db8:1:2:3:4:5:6", 24, 64), "2001:db8:1:2::/64");
        assert_eq!(net("2001:db8:1:2:3:4:5:6", 24, 48), "2001:db8:1::/48");
        assert_eq!(net("::1", 24, 128), "::1/128");
        assert_eq!(net("::1", 24, 0), "::/0");
    }
}

/// Running counts of live connections by what the limits count.
#[derive(Default)]
struct Counts {
    per_source: HashMap<IpAddr, usize>,
    per_prefix: HashMap<(IpAddr, u8), usize>,
    per_user: HashMap<String, usize>,
    /// Connections still in the handshake, oldest first.
    pending: std::collections::BTreeSet<(Instant, ConnId)>,
}

impl Counts {
    fn net(peer: SocketAddr, limits: &crate::Limits) -> (IpAddr, u8) {
        network_of(peer.ip().to_canonical(), limits.prefix_v4, limits.prefix_v6)
    }

    fn admit(&mut self, peer: SocketAddr, id: ConnId, admitted: Instant, limits: &crate::Limits) {
        *self.per_source.entry(peer.ip().to_canonical()).or_insert(0) += 1;
        *self
            .per_prefix
            .entry(Counts::net(peer, limits))
            .or_insert(0) += 1;
        self.pending.insert((admitted, id));
    }

    fn release(&mut self, entry: &ConnEntry, limits: &crate::Limits) {
        let peer = entry.info.peer;
        Counts::less(&mut self.per_source, &peer.ip().to_canonical());
        Counts::less(&mut self.per_prefix, &Counts::net(peer, limits));
        if let Some(user) = &entry.info.user {
            Counts::less(&mut self.per_user, user);
        }
        self.pending.remove(&(entry.admitted, entry.info.id));
    }

    fn less<K, Q>(map: &mut HashMap<K, usize>, key: &Q)
    where
        K: std::hash::Hash + Eq + std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        if let Some(n) = map.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                map.remove(key);
            }
        }
    }
}

/// A connection leaves the logins (authenticated, closing or gone): its login grace is over.
fn forget_login(logins: &mut BTreeSet<(Instant, ConnId)>, entry: &mut ConnEntry, conn: ConnId) {
    if let Some(deadline) = entry.login_deadline.take() {
        logins.remove(&(deadline, conn));
    }
}

/// The running counts admission is decided by, as the supervisor holds them: what a recount of
/// the live connections must give.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdmissionCounts {
    /// Connections in the map (`max_connections`).
    pub connections: usize,
    /// Live connections by source address (`max_per_source`).
    pub per_source: std::collections::BTreeMap<IpAddr, usize>,
    /// Live connections by network, `addr/bits` (`max_per_prefix`).
    pub per_prefix: std::collections::BTreeMap<String, usize>,
    /// Live connections by the user they authenticated as (`max_per_user`).
    pub per_user: std::collections::BTreeMap<String, usize>,
    /// Connections still logging in and not being killed (`max_unauthenticated`).
    pub unauthenticated: usize,
}

impl Counts {
    fn snapshot(&self, connections: usize) -> AdmissionCounts {
        AdmissionCounts {
            connections,
            per_source: self.per_source.iter().map(|(k, v)| (*k, *v)).collect(),
            per_prefix: self
                .per_prefix
                .iter()
                .map(|((addr, bits), v)| (format!("{addr}/{bits}"), *v))
                .collect(),
            per_user: self.per_user.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            unauthenticated: self.pending.len(),
        }
    }
}
