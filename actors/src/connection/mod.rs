//! `ConnectionActor`: one per TCP connection, a child of the `SupervisorActor`.
//!
//! It owns the connection's [`ConnectionLink`] (the transport) and its session actors, and runs
//! the kill sequence: every session closes first, then SSH_MSG_DISCONNECT with the reason, then
//! the transport ends, and only then does the actor stop. When the grace runs out, sessions force
//! their own end, the disconnect gets one last chance to leave, and the transport is cut
//! ([`CUT_DELAY`] later). If even that does not wind everything down within [`GIVE_UP_MARGIN`],
//! the remaining children are killed outright and the actor stops. A connection that has not
//! logged in has nothing to wind down: its transport is cut [`CUT_DELAY`] after the disconnect
//! (login grace, a pending login dropped, a kill), whatever the grace.
//!
//! Where a connection is in that sequence is one `Phase` value, moved on only by a pure
//! transition function (`connection::phase`, unit-tested without actors or time); this file
//! carries out what each transition asks.
//!
//! ## Supervision
//!
//! Sessions are spawned linked and unnamed. `handle_supervisor_evt` is overridden: a session that
//! stops or fails is reported to the supervisor (`SessionEnded`) and never stops this actor. The
//! actor stops itself only once it has no sessions left and its transport has ended, so its
//! children's `post_stop` always runs before its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument, Span};

use crate::idle::IdleClock;
use crate::ids::{ConnId, SessionId};
use crate::killed_by;
use crate::link::{ConnectionLink, EndScope, SessionLink, TransportEnd};
use crate::notice::{ConnOutcome, NoticeKind, Parent, SessionEnd};
use crate::report::{Credential, SessionExit};
use crate::session::{SessionActor, SessionArgs, SessionMsg, SessionOutcome, SessionState};
use crate::timers::Timers;
use crate::Policy;

mod phase;

use phase::{Action, Input, KillOrder, Phase, Timed};
pub use phase::{CUT_DELAY, GIVE_UP_MARGIN};

/// The connection actor. Spawned by `SupervisorActor` only.
pub struct ConnectionActor;

/// What a connection actor starts with.
pub struct ConnectionArgs {
    /// Its ID, chosen by the supervisor.
    pub id: ConnId,
    /// The client's address.
    pub peer: SocketAddr,
    /// The transport.
    pub link: Box<dyn ConnectionLink>,
    /// Its supervisor, for notices.
    pub(crate) supervisor: Parent,
    /// The policy in force when it was admitted.
    pub policy: Policy,
}

/// Messages a connection actor handles.
///
/// Who sends what: `Authenticated`, `OpenSession` and `TransportClosed` come from the binding
/// (the code that runs the transport); `Internal` only from the tree itself: the supervisor's
/// orders (kill the connection or one session, a new policy: an embedding program asks the
/// supervisor, which keeps the map right and times the kill) and the timers.
pub enum ConnectionMsg {
    /// Sent by the binding: the client authenticated.
    Authenticated {
        /// The user name it authenticated as.
        user: String,
        /// The method that succeeded (`publickey`, ...).
        method: String,
        /// The client's SSH version string.
        client_version: Option<String>,
        /// The key or certificate it proved it holds, when the method was a public key.
        credential: Option<Credential>,
        /// Told whether the login may go on, or why not (a limit such as `max_per_user`): the
        /// binding can then refuse it before the client opens anything. The connection is
        /// killed with that reason either way.
        verdict: Option<RpcReplyPort<Result<(), String>>>,
    },
    /// Sent by the binding: the client opened a session channel; spawn its session actor.
    OpenSession {
        /// The channel and the work behind it.
        link: Box<dyn SessionLink>,
        /// The new session's ID and actor, or a refusal text fit for the client.
        reply: RpcReplyPort<Result<(SessionId, ActorRef<SessionMsg>), String>>,
    },
    /// Sent by the binding: the transport has ended.
    TransportClosed {
        /// How it ended.
        end: TransportEnd,
    },
    /// Sent by the tree itself only (the supervisor's orders, its login and kill timers, this
    /// actor's own timers): an [`Internal`] cannot be built outside this crate.
    Internal(Internal),
}

/// A message the tree sends a connection actor itself. Opaque: only this crate builds one.
pub struct Internal(pub(crate) Inner);

/// What an [`Internal`] says.
pub(crate) enum Inner {
    /// An order from the supervisor.
    Order(Order),
    /// A timer ran out.
    Tick(Tick),
}

/// What the supervisor orders a connection; only it does, so that a kill is always in the map
/// and always timed (a forged kill would have no grace timer to force it).
pub(crate) enum Order {
    /// End this connection and everything under it.
    Kill {
        /// Shown to the client in the disconnect message.
        reason: String,
        /// How long the polite end may take before it is forced.
        grace: Duration,
        /// Who asked, when known.
        by: Option<String>,
        /// The sender tells the connection when the grace runs out (a kill of many connections
        /// arms one timer, not one per connection); otherwise the actor arms its own.
        timed_by_sender: bool,
    },
    /// End one session of this connection.
    KillSession {
        /// The session.
        session: SessionId,
        /// The kill reason.
        reason: String,
        /// How long the polite end may take before it is forced.
        grace: Duration,
    },
    /// A new policy (a configuration reload). What makes sense for a live connection applies
    /// from now on: the kill grace, the session limit, and the idle timeouts (idle time counted
    /// from now at the earliest, so a reload never ends a connection at once). The login grace
    /// and the lifetime stay as they were when the connection was admitted.
    SetPolicy(Policy),
    /// Show a line to the person at each of this connection's terminals (a warning before a
    /// kill, or that one is cancelled).
    Notify(String),
}

/// What a timer says.
pub(crate) enum Tick {
    /// (supervisor, which times every login with one timer) The login grace ran out.
    LoginGraceElapsed,
    /// (own timer) The connection's maximum lifetime ran out.
    LifetimeElapsed,
    /// (own timer) Time to check whether the connection has been idle too long; a check armed
    /// under an older idle limit (an older `generation`) is ignored.
    IdleCheck { generation: u64 },
    /// (supervisor for a kill group, or own timer) The kill's grace ran out; passed on to every
    /// session: a connection's end is timed here, not by each session.
    GraceElapsed,
    /// (own timer) Cut the transport if it is still up.
    Cut,
    /// (own timer) The subtree did not wind down after the force: kill what is left and stop.
    GiveUp,
}

impl ConnectionMsg {
    /// The internal message `tick`.
    pub(crate) fn tick(tick: Tick) -> Self {
        ConnectionMsg::Internal(Internal(Inner::Tick(tick)))
    }

    /// The supervisor's `order`.
    pub(crate) fn order(order: Order) -> Self {
        ConnectionMsg::Internal(Internal(Inner::Order(order)))
    }
}

/// The actor's private state; the supervisor reads its outcome once the actor has stopped.
pub struct ConnectionState {
    id: ConnId,
    /// The transport.
    link: Box<dyn ConnectionLink>,
    /// Where notices go.
    supervisor: Parent,
    /// The policy in force; a reload changes what makes sense for a live connection.
    policy: Policy,
    span: Span,
    /// Its live sessions, by actor.
    sessions: HashMap<ActorId, (SessionId, ActorRef<SessionMsg>)>,
    /// Where it is in its life; changed only by [`Phase::step`].
    phase: Phase,
    /// Processes its sessions reported left running at their end (summed).
    processes_left: usize,
    timers: Timers,
    idle_clock: IdleClock,
    /// When its terminals were last warned of the idle cut: traffic after it starts a new idle
    /// period, whose warning is due in turn.
    idle_warned: Option<tokio::time::Instant>,
}

impl ConnectionState {
    /// How the connection ended, once it has.
    pub(crate) fn outcome(&self) -> Option<ConnOutcome> {
        self.phase.ended().map(|ended| ConnOutcome {
            cause: ended.cause.clone(),
            sessions_closed: ended.sessions_closed,
            forced: ended.forced,
            processes_left: self.processes_left,
        })
    }

    /// Moves the phase on by `input` and does what the transition says.
    fn step(&mut self, myself: &ActorRef<ConnectionMsg>, input: Input) {
        let phase = std::mem::replace(&mut self.phase, Phase::Handshaking);
        let (phase, actions) = phase.step(input, self.sessions.len());
        self.phase = phase;
        for action in actions {
            self.act(myself, action);
        }
    }

    fn act(&mut self, myself: &ActorRef<ConnectionMsg>, action: Action) {
        match action {
            Action::NoticeClosing => self.supervisor.tell(NoticeKind::Closing { conn: self.id }),
            Action::EndSessions { reason, grace } => self.tell_sessions(|| SessionMsg::Terminate {
                reason: reason.clone(),
                grace,
                scope: EndScope::Connection,
            }),
            Action::SessionsClientClosed => self.tell_sessions(|| SessionMsg::ClientClosed),
            Action::ForceSessions => {
                let sessions = self.sessions.len();
                warn!(sessions, "grace ran out: forcing the connection's end");
                self.tell_sessions(SessionMsg::grace_elapsed);
            }
            Action::KillSessions => {
                let sessions = self.sessions.len();
                warn!(
                    sessions,
                    "the connection did not wind down: killing what is left"
                );
                for (_, session) in self.sessions.values() {
                    session.kill();
                }
            }
            Action::Disconnect(reason) => {
                debug!("sending the disconnect");
                self.link.disconnect(&reason);
            }
            Action::Abort => {
                debug!("cutting the transport");
                self.link.abort();
            }
            Action::After(delay, timed) => {
                let tick = match timed {
                    Timed::GraceElapsed => Tick::GraceElapsed,
                    Timed::Cut => Tick::Cut,
                    Timed::GiveUp => Tick::GiveUp,
                };
                self.after(myself, delay, tick);
            }
            Action::Stop => myself.stop(None),
        }
    }

    fn tell_sessions(&self, msg: impl Fn() -> SessionMsg) {
        for (_, session) in self.sessions.values() {
            let _ = session.cast(msg());
        }
    }

    fn after(&mut self, myself: &ActorRef<ConnectionMsg>, delay: Duration, tick: Tick) {
        self.timers
            .after(myself, delay, move || ConnectionMsg::tick(tick));
    }

    /// When to check first for an idle `limit` counted from now: at the warning, if any.
    fn first_idle_check(&self, limit: Duration) -> Duration {
        match self.policy.idle_warning {
            Some(warning) if warning < limit => limit - warning,
            _ => limit,
        }
    }

    fn arm_idle_check(&mut self, myself: &ActorRef<ConnectionMsg>, delay: Duration) {
        self.idle_clock
            .arm(&mut self.timers, myself, delay, |generation| {
                ConnectionMsg::tick(Tick::IdleCheck { generation })
            });
    }

    /// A kill from the connection's own timeouts (`by` names which).
    fn kill_self(&mut self, myself: &ActorRef<ConnectionMsg>, reason: String, by: &str) {
        let grace = self.policy.kill_grace;
        self.begin_kill(myself, reason, grace, Some(by.into()), false, false);
    }

    /// Starts the kill sequence (see the module docs), or brings the force closer.
    fn begin_kill(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        reason: String,
        grace: Duration,
        by: Option<String>,
        timed_by_sender: bool,
        listed: bool,
    ) {
        if self.phase.is_killing() {
            debug!(grace = %humantime::format_duration(grace), "another kill");
        } else {
            info!(reason = %reason, by = by.as_deref(), grace = %humantime::format_duration(grace), "killing connection");
        }
        let order = KillOrder {
            reason,
            by,
            grace,
            deadline: Instant::now().checked_add(grace).unwrap_or_else(far_future),
            timed_by_sender,
            listed,
        };
        let input = Input::Kill(order);
        self.step(myself, input);
    }

    fn on_authenticated(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        user: String,
        method: String,
        (client_version, credential): (Option<String>, Option<Credential>),
        verdict: Option<RpcReplyPort<Result<(), String>>>,
    ) {
        match &credential {
            Some(c) => {
                info!(user = %user, method = %method, key = %c.key_fingerprint, "authenticated")
            }
            None => info!(user = %user, method = %method, "authenticated"),
        }
        self.step(myself, Input::Authenticated);
        self.supervisor.tell(NoticeKind::Authenticated {
            conn: self.id,
            user,
            method,
            client_version,
            credential,
            verdict,
        });
    }

    async fn on_open_session(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        link: Box<dyn SessionLink>,
        reply: RpcReplyPort<Result<(SessionId, ActorRef<SessionMsg>), String>>,
    ) {
        if self.phase.is_closing() {
            let _ = reply.send(Err("the connection is closing".to_string()));
            return;
        }
        let max = self.policy.limits.max_sessions_per_connection;
        if self.sessions.len() >= max {
            let reason = format!("max_sessions_per_connection ({max}) reached");
            info!(reason = %reason, "audit: session refused");
            let _ = reply.send(Err(reason));
            return;
        }
        let session = SessionId::new_random();
        // Registered before it exists, so the map never lacks a live session.
        self.supervisor.tell(NoticeKind::SessionOpened {
            conn: self.id,
            session,
        });
        let args = SessionArgs {
            id: session,
            conn: self.id,
            link,
            supervisor: self.supervisor.clone(),
            close_grace: self.policy.kill_grace,
            idle: self.policy.session_idle,
            parent_span: self.span.clone(),
        };
        // Boxed: the spawn (which runs the session's `pre_start`) is the only wait here, and
        // inline it would make every idle connection actor's task that much bigger.
        let spawned = Box::pin(Actor::spawn_linked(
            None,
            SessionActor,
            args,
            myself.get_cell(),
        ));
        match spawned.await {
            Ok((actor, _)) => {
                self.sessions
                    .insert(actor.get_id(), (session, actor.clone()));
                let _ = reply.send(Ok((session, actor)));
            }
            Err(e) => {
                warn!(error = %e, "could not start a session actor");
                self.supervisor.tell(NoticeKind::SessionEnded(SessionEnd {
                    conn: self.id,
                    session,
                    exit: SessionExit::Failed(e.to_string()),
                    killed: None,
                    forced: false,
                    processes_left: 0,
                }));
                let _ = reply.send(Err("the server could not start the session".to_string()));
            }
        }
    }

    fn on_transport_closed(&mut self, myself: &ActorRef<ConnectionMsg>, end: TransportEnd) {
        debug!(?end, "transport ended");
        let grace = self.policy.kill_grace;
        self.step(myself, Input::TransportClosed { end, grace });
    }

    fn on_set_policy(&mut self, myself: &ActorRef<ConnectionMsg>, policy: Policy) {
        let live = &mut self.policy;
        live.kill_grace = policy.kill_grace;
        live.limits.max_sessions_per_connection = policy.limits.max_sessions_per_connection;
        if live.session_idle != policy.session_idle {
            live.session_idle = policy.session_idle;
            self.tell_sessions(|| SessionMsg::set_idle(policy.session_idle));
        }
        self.policy.idle_warning = policy.idle_warning;
        if self.policy.idle != policy.idle {
            self.policy.idle = policy.idle;
            self.idle_clock.restart();
            if let (Some(limit), false) = (policy.idle, self.phase.is_closing()) {
                let first = self.first_idle_check(limit);
                self.arm_idle_check(myself, first);
            }
        }
    }

    fn on_kill_session(&self, session: SessionId, reason: String, grace: Duration) {
        if let Some((_, actor)) = self.sessions.values().find(|(id, _)| *id == session) {
            let _ = actor.cast(SessionMsg::Terminate {
                reason: Some(reason),
                grace,
                scope: EndScope::Session,
            });
        }
    }

    fn on_order(&mut self, myself: &ActorRef<ConnectionMsg>, order: Order) {
        match order {
            // The supervisor lists the connection as closing already.
            Order::Kill {
                reason,
                grace,
                by,
                timed_by_sender,
            } => self.begin_kill(myself, reason, grace, by, timed_by_sender, true),
            Order::KillSession {
                session,
                reason,
                grace,
            } => self.on_kill_session(session, reason, grace),
            Order::SetPolicy(policy) => self.on_set_policy(myself, policy),
            Order::Notify(text) => self.tell_sessions(|| SessionMsg::notify(text.clone())),
        }
    }

    fn on_tick(&mut self, myself: &ActorRef<ConnectionMsg>, tick: Tick) {
        match tick {
            Tick::IdleCheck { generation } => self.on_idle_check(myself, generation),
            Tick::LifetimeElapsed => {
                if !self.phase.is_closing() {
                    let limit = self.policy.max_lifetime.unwrap_or_default();
                    let limit = humantime::format_duration(limit);
                    self.kill_self(
                        myself,
                        format!("max_lifetime ({limit}) reached"),
                        killed_by::MAX_LIFETIME,
                    );
                }
            }
            Tick::LoginGraceElapsed => {
                if self.phase == Phase::Handshaking {
                    let limit = self.policy.login_grace.unwrap_or_default();
                    let limit = humantime::format_duration(limit);
                    let reason = format!("login grace time ({limit}) exceeded");
                    self.kill_self(myself, reason, killed_by::LOGIN_GRACE);
                }
            }
            Tick::GraceElapsed => self.step(myself, Input::GraceElapsed),
            Tick::Cut => self.step(myself, Input::Cut),
            Tick::GiveUp => {
                if self.phase.is_giving_up() {
                    warn!("sessions did not stop even when killed: stopping anyway");
                }
                self.step(myself, Input::GiveUp);
            }
        }
    }

    fn on_idle_check(&mut self, myself: &ActorRef<ConnectionMsg>, generation: u64) {
        let (Some(limit), true, false) = (
            self.policy.idle,
            generation == self.idle_clock.generation(),
            self.phase.is_closing(),
        ) else {
            return;
        };
        match self.idle_clock.check(limit, self.link.idle_for()) {
            None => {
                let reason = format!(
                    "idle timeout ({}) reached",
                    humantime::format_duration(limit)
                );
                self.kill_self(myself, reason, killed_by::IDLE);
            }
            // Check again exactly when the connection would have been idle long enough, or
            // when its terminals are to be warned of it (`idle_warning`): a check after the
            // warning that finds traffic since starts the count again.
            Some(left) => match self.policy.idle_warning.filter(|w| *w < limit) {
                Some(warning) if left <= warning => {
                    let now = tokio::time::Instant::now();
                    let last_traffic = now - (limit - left);
                    let warned_this_time = self.idle_warned.is_some_and(|at| at >= last_traffic);
                    if !warned_this_time {
                        self.idle_warned = Some(now);
                        let text = format!(
                            "*** sshvisor: this connection will be closed in {} for inactivity (idle timeout {}) ***",
                            humantime::format_duration(Duration::from_secs(left.as_secs_f64().round() as u64)),
                            humantime::format_duration(limit)
                        );
                        self.tell_sessions(|| SessionMsg::notify(text.clone()));
                    }
                    self.arm_idle_check(myself, left);
                }
                Some(warning) => {
                    self.idle_warned = None;
                    self.arm_idle_check(myself, left - warning);
                }
                None => self.arm_idle_check(myself, left),
            },
        }
    }

    /// A session's actor stopped (or failed): the supervisor is told, and the end moves on.
    fn on_session_gone(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        actor: ActorId,
        outcome: Option<SessionOutcome>,
    ) {
        let Some((session, _)) = self.sessions.remove(&actor) else {
            return;
        };
        let outcome = outcome.unwrap_or_else(|| SessionOutcome {
            exit: SessionExit::Failed("the session crashed".into()),
            killed: None,
            forced: false,
            processes_left: 0,
        });
        let forced = outcome.forced;
        self.processes_left += outcome.processes_left;
        self.supervisor
            .tell(NoticeKind::SessionEnded(outcome.into_end(self.id, session)));
        self.step(myself, Input::SessionEnded { forced });
    }
}

impl Actor for ConnectionActor {
    type Msg = ConnectionMsg;
    type State = ConnectionState;
    type Arguments = ConnectionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ConnectionMsg>,
        args: ConnectionArgs,
    ) -> Result<ConnectionState, ActorProcessingErr> {
        let span = tracing::info_span!(parent: None, "conn", conn_id = %args.id, peer = %args.peer);
        Ok(ConnectionState {
            id: args.id,
            link: args.link,
            supervisor: args.supervisor,
            policy: args.policy,
            span,
            sessions: HashMap::new(),
            phase: Phase::Handshaking,
            processes_left: 0,
            timers: Timers::default(),
            idle_clock: IdleClock::new(),
            idle_warned: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<ConnectionMsg>,
        state: &mut ConnectionState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(limit) = state.policy.max_lifetime {
            state.after(&myself, limit, Tick::LifetimeElapsed);
        }
        if let Some(limit) = state.policy.idle {
            let first = state.first_idle_check(limit);
            state.arm_idle_check(&myself, first);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ConnectionMsg>,
        msg: ConnectionMsg,
        state: &mut ConnectionState,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.span.clone();
        async move {
            match msg {
                ConnectionMsg::Authenticated {
                    user,
                    method,
                    client_version,
                    credential,
                    verdict,
                } => state.on_authenticated(
                    &myself,
                    user,
                    method,
                    (client_version, credential),
                    verdict,
                ),
                ConnectionMsg::OpenSession { link, reply } => {
                    state.on_open_session(&myself, link, reply).await
                }
                ConnectionMsg::TransportClosed { end } => state.on_transport_closed(&myself, end),
                ConnectionMsg::Internal(Internal(Inner::Order(order))) => {
                    state.on_order(&myself, order)
                }
                ConnectionMsg::Internal(Internal(Inner::Tick(tick))) => {
                    state.on_tick(&myself, tick)
                }
            }
        }
        .instrument(span)
        .await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ConnectionMsg>,
        event: SupervisionEvent,
        state: &mut ConnectionState,
    ) -> Result<(), ActorProcessingErr> {
        let _entered = state.span.clone().entered();
        let (cell, outcome) = match event {
            SupervisionEvent::ActorTerminated(cell, final_state, _) => {
                let outcome = final_state
                    .and_then(|mut s| s.take::<SessionState>().ok())
                    .and_then(|s| s.outcome);
                (cell, outcome)
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                warn!(error = %err, "a session crashed");
                (cell, None)
            }
            _ => return Ok(()),
        };
        state.on_session_gone(&myself, cell.get_id(), outcome);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConnectionMsg>,
        state: &mut ConnectionState,
    ) -> Result<(), ActorProcessingErr> {
        state.timers.abort_all();
        Ok(())
    }
}

/// An instant far enough ahead to mean "never" (a grace too long to add to now).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}
