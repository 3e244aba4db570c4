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
//! ## Supervision
//!
//! Sessions are spawned linked and unnamed. `handle_supervisor_evt` is overridden: a session that
//! stops or fails is reported to the supervisor (`SessionEnded`) and never stops this actor. The
//! actor stops itself only once it has no sessions left and its transport has ended, so its
//! children's `post_stop` always runs before its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument, Span};

use crate::ids::{ConnId, SessionId};
use crate::link::{ConnectionLink, EndScope, SessionLink, TransportEnd};
use crate::report::{DisconnectCause, SessionExit};
use crate::session::{SessionActor, SessionArgs, SessionMsg, SessionState};
use crate::supervisor::{Notice, SupervisorMsg};
use crate::{IdleClock, Policy};

/// After the grace runs out, how long the disconnect message gets to leave before the transport
/// is cut.
pub const CUT_DELAY: Duration = Duration::from_millis(100);

/// After the grace runs out, how long the subtree may take to wind down before the remaining
/// children are killed outright and the connection actor stops anyway.
pub const GIVE_UP_MARGIN: Duration = Duration::from_millis(1500);

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
    pub supervisor: ActorRef<SupervisorMsg>,
    /// The policy in force when it was admitted.
    pub policy: Policy,
}

/// Messages a connection actor handles.
pub enum ConnectionMsg {
    /// (from the binding) The client authenticated.
    Authenticated {
        /// The user name it authenticated as.
        user: String,
        /// The method that succeeded (`publickey`, ...).
        method: String,
        /// The client's SSH version string.
        client_version: Option<String>,
        /// Told whether the login may go on, or why not (a limit such as `max_per_user`): the
        /// binding can then refuse it before the client opens anything. The connection is
        /// killed with that reason either way.
        verdict: Option<RpcReplyPort<Result<(), String>>>,
    },
    /// (from the binding) The client opened a session channel: spawn its session actor.
    OpenSession {
        /// The channel and the work behind it.
        link: Box<dyn SessionLink>,
        /// The new session's ID and actor, or a refusal text fit for the client.
        reply: RpcReplyPort<Result<(SessionId, ActorRef<SessionMsg>), String>>,
    },
    /// (from the binding) The transport has ended.
    TransportClosed {
        /// How it ended.
        end: TransportEnd,
    },
    /// (from the supervisor) End this connection and everything under it.
    Kill {
        /// Shown to the client in the disconnect message.
        reason: String,
        /// How long the polite end may take before it is forced.
        grace: Duration,
        /// Who asked, when known.
        by: Option<String>,
        /// The sender sends [`GraceElapsed`](Self::GraceElapsed) when the grace runs out (a
        /// kill of many connections arms one timer, not one per connection); otherwise the
        /// actor arms its own.
        timed_by_sender: bool,
    },
    /// (from the supervisor) End one session of this connection.
    KillSession {
        /// The session.
        session: SessionId,
        /// The kill reason.
        reason: String,
        /// How long the polite end may take before it is forced.
        grace: Duration,
    },
    /// (from the supervisor, which times every login with one timer) The login grace ran out.
    LoginGraceElapsed,
    /// The connection's maximum lifetime ran out.
    LifetimeElapsed,
    /// Time to check whether the connection has been idle too long (`generation` tells a check
    /// armed under an older idle limit, which is ignored).
    IdleCheck {
        /// The idle limit's generation the check was armed under.
        generation: u64,
    },
    /// A new policy (a configuration reload). What makes sense for a live connection applies
    /// from now on: the kill grace, the session limit, and the idle timeouts (idle time counted
    /// from now at the earliest, so a reload never ends a connection at once). The login grace
    /// and the lifetime stay as they were when the connection was admitted.
    SetPolicy(Policy),
    /// The kill's grace ran out (passed on to every session: a connection's end is timed
    /// here, not by each session).
    GraceElapsed,
    /// Cut the transport if it is still up.
    Cut,
    /// The subtree did not wind down after the force: kill what is left and stop.
    GiveUp,
}

/// How a connection ended, read by the supervisor from the final state.
#[derive(Debug, Clone)]
pub(crate) struct ConnOutcome {
    pub(crate) cause: DisconnectCause,
    pub(crate) sessions_closed: usize,
    pub(crate) forced: bool,
    pub(crate) processes_left: usize,
}

struct Killing {
    reason: String,
    by: Option<String>,
    disconnect_sent: bool,
    /// The client had already left when the kill came: it is the cause, not the kill.
    client_left_first: bool,
    /// When the grace of the most pressing kill runs out.
    deadline: Instant,
}

/// The actor's private state; the supervisor reads `outcome` from it once the actor has stopped.
pub struct ConnectionState {
    id: ConnId,
    link: Box<dyn ConnectionLink>,
    supervisor: ActorRef<SupervisorMsg>,
    policy: Policy,
    span: Span,
    sessions: HashMap<ActorId, (SessionId, ActorRef<SessionMsg>)>,
    transport: Option<TransportEnd>,
    killing: Option<Killing>,
    closing: bool,
    grace_ran_out: bool,
    giving_up: bool,
    authenticated: bool,
    sessions_closed: usize,
    /// Processes its sessions reported left running at their end (summed).
    processes_left: usize,
    forced: bool,
    timers: Vec<JoinHandle<()>>,
    idle_clock: IdleClock,
    pub(crate) outcome: Option<ConnOutcome>,
}

impl ConnectionState {
    fn after(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        delay: Duration,
        msg: impl FnOnce() -> ConnectionMsg + Send + 'static,
    ) {
        let target = myself.clone();
        self.timers.retain(|t| !t.is_finished());
        self.timers.push(ractor::concurrency::spawn(async move {
            ractor::concurrency::sleep(delay).await;
            let _ = target.cast(msg());
        }));
    }

    /// Arms the idle check for `delay` from now under the current limit.
    fn arm_idle_check(&mut self, myself: &ActorRef<ConnectionMsg>, delay: Duration) {
        let generation = self.idle_clock.generation();
        self.after(myself, delay, move || ConnectionMsg::IdleCheck {
            generation,
        });
    }

    /// Asks every session to end within `grace`.
    fn end_sessions(&self, reason: Option<&str>, grace: Duration) {
        for (_, session) in self.sessions.values() {
            let _ = session.cast(SessionMsg::Terminate {
                reason: reason.map(str::to_string),
                grace,
                scope: EndScope::Connection,
            });
        }
    }

    /// Starts the kill sequence (see the module docs). A later kill whose grace ends sooner
    /// brings the force closer; any other later kill changes nothing.
    /// `timed_by_sender`: the kill's sender sends `GraceElapsed` itself (see
    /// [`ConnectionMsg::Kill`]).
    fn begin_kill(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        reason: String,
        grace: Duration,
        by: Option<String>,
        timed_by_sender: bool,
    ) {
        let deadline = Instant::now().checked_add(grace).unwrap_or_else(far_future);
        if let Some(kill) = self.killing.as_mut() {
            // Until the connection's own grace has run out (a session forced on its own makes
            // the end forced, not over).
            if deadline < kill.deadline && !self.grace_ran_out {
                debug!(grace = %humantime::format_duration(grace), "a later kill shortens the grace");
                kill.deadline = deadline;
                let reason = kill.reason.clone();
                self.end_sessions(Some(&reason), grace);
                if !timed_by_sender {
                    self.after(myself, grace, || ConnectionMsg::GraceElapsed);
                }
            }
            return;
        }
        info!(reason = %reason, by = by.as_deref(), grace = %humantime::format_duration(grace), "killing connection");
        let client_left_first = self.transport.is_some();
        // The order matters for speed, not for correctness: what is woken last runs next on
        // this thread, and that should be the sessions, which the kill waits for.
        if !timed_by_sender {
            self.after(myself, grace, || ConnectionMsg::GraceElapsed);
        }
        self.enter_closing();
        // Sessions already ending (the client left) keep the shorter of the graces.
        self.end_sessions(Some(&reason), grace);
        self.killing = Some(Killing {
            reason,
            by,
            disconnect_sent: client_left_first,
            client_left_first,
            deadline,
        });
        self.advance(myself);
        if !self.authenticated && self.sessions.is_empty() {
            // Before authentication there is no session to wind down, only a client, maybe one
            // stalled in its key exchange (russh holds our DISCONNECT back until that ends):
            // the goodbye gets CUT_DELAY to leave, then the socket closes, not at the grace.
            self.after(myself, CUT_DELAY, || ConnectionMsg::Cut);
        }
    }

    /// Marks the connection as closing, here and in the supervisor's listing.
    fn enter_closing(&mut self) {
        if !self.closing {
            self.closing = true;
            let _ = self
                .supervisor
                .cast(SupervisorMsg::Notice(Notice::Closing { conn: self.id }));
        }
    }

    /// Moves the closing sequence on as far as it can go now.
    fn advance(&mut self, myself: &ActorRef<ConnectionMsg>) {
        if !self.closing || !self.sessions.is_empty() {
            return;
        }
        if self.transport.is_none() {
            if let Some(kill) = self.killing.as_mut() {
                if !kill.disconnect_sent {
                    kill.disconnect_sent = true;
                    debug!("sessions closed: sending the disconnect");
                    self.link.disconnect(&kill.reason);
                }
            }
            return;
        }
        self.stop(myself);
    }

    fn stop(&mut self, myself: &ActorRef<ConnectionMsg>) {
        if self.outcome.is_some() {
            return;
        }
        let cause = match (&self.killing, &self.transport) {
            (Some(kill), _) if !kill.client_left_first => DisconnectCause::Killed {
                reason: kill.reason.clone(),
                by: kill.by.clone(),
            },
            (_, Some(TransportEnd::Error(message))) => DisconnectCause::Error {
                message: message.clone(),
            },
            _ => DisconnectCause::ByClient,
        };
        self.outcome = Some(ConnOutcome {
            cause,
            sessions_closed: self.sessions_closed,
            forced: self.forced,
            processes_left: self.processes_left,
        });
        myself.stop(None);
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
            transport: None,
            killing: None,
            closing: false,
            grace_ran_out: false,
            giving_up: false,
            authenticated: false,
            sessions_closed: 0,
            processes_left: 0,
            forced: false,
            timers: Vec::new(),
            idle_clock: IdleClock::new(),
            outcome: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<ConnectionMsg>,
        state: &mut ConnectionState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(limit) = state.policy.max_lifetime {
            state.after(&myself, limit, || ConnectionMsg::LifetimeElapsed);
        }
        if let Some(limit) = state.policy.idle {
            state.arm_idle_check(&myself, limit);
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
                    verdict,
                } => {
                    info!(user = %user, method = %method, "authenticated");
                    state.authenticated = true;
                    let _ = state
                        .supervisor
                        .cast(SupervisorMsg::Notice(Notice::Authenticated {
                            conn: state.id,
                            user,
                            method,
                            client_version,
                            verdict,
                        }));
                }
                ConnectionMsg::OpenSession { link, reply } => {
                    if state.closing {
                        let _ = reply.send(Err("the connection is closing".to_string()));
                        return;
                    }
                    let max = state.policy.limits.max_sessions_per_connection;
                    if state.sessions.len() >= max {
                        let reason = format!("max_sessions_per_connection ({max}) reached");
                        info!(reason = %reason, "audit: session refused");
                        let _ = reply.send(Err(reason));
                        return;
                    }
                    let session = SessionId::new_random();
                    // Registered before it exists, so the map never lacks a live session.
                    let _ = state
                        .supervisor
                        .cast(SupervisorMsg::Notice(Notice::SessionOpened {
                            conn: state.id,
                            session,
                        }));
                    let args = SessionArgs {
                        id: session,
                        conn: state.id,
                        link,
                        supervisor: state.supervisor.clone(),
                        close_grace: state.policy.kill_grace,
                        idle: state.policy.session_idle,
                        parent_span: state.span.clone(),
                    };
                    // Boxed: the spawn (which runs the session's `pre_start`) is the only
                    // wait here, and inline it would make every idle connection actor's task
                    // that much bigger.
                    let spawned = Box::pin(Actor::spawn_linked(
                        None,
                        SessionActor,
                        args,
                        myself.get_cell(),
                    ));
                    match spawned.await {
                        Ok((actor, _)) => {
                            state
                                .sessions
                                .insert(actor.get_id(), (session, actor.clone()));
                            let _ = reply.send(Ok((session, actor)));
                        }
                        Err(e) => {
                            warn!(error = %e, "could not start a session actor");
                            let _ = state.supervisor.cast(SupervisorMsg::Notice(
                                Notice::SessionEnded {
                                    conn: state.id,
                                    session,
                                    exit: SessionExit::Failed(e.to_string()),
                                    killed: None,
                                    forced: false,
                                    processes_left: 0,
                                },
                            ));
                            let _ = reply
                                .send(Err("the server could not start the session".to_string()));
                        }
                    }
                }
                ConnectionMsg::TransportClosed { end } => {
                    debug!(?end, "transport ended");
                    state.transport = Some(end);
                    if !state.closing {
                        state.enter_closing();
                        let grace = state.policy.kill_grace;
                        state.end_sessions(None, grace);
                        // Forces the sessions when the grace runs out, then gives up after
                        // GIVE_UP_MARGIN; nothing to time if none is left.
                        if !state.sessions.is_empty() {
                            state.after(&myself, grace, || ConnectionMsg::GraceElapsed);
                        }
                    } else {
                        for (_, session) in state.sessions.values() {
                            let _ = session.cast(SessionMsg::ClientClosed);
                        }
                    }
                    state.advance(&myself);
                }
                ConnectionMsg::Kill {
                    reason,
                    grace,
                    by,
                    timed_by_sender,
                } => {
                    // Only the supervisor sends it, and it has marked the connection closing
                    // already: no notice back.
                    state.closing = true;
                    state.begin_kill(&myself, reason, grace, by, timed_by_sender);
                }
                ConnectionMsg::SetPolicy(policy) => {
                    let live = &mut state.policy;
                    live.kill_grace = policy.kill_grace;
                    live.limits.max_sessions_per_connection =
                        policy.limits.max_sessions_per_connection;
                    if live.session_idle != policy.session_idle {
                        live.session_idle = policy.session_idle;
                        for (_, session) in state.sessions.values() {
                            let _ = session.cast(SessionMsg::SetIdle {
                                idle: policy.session_idle,
                            });
                        }
                    }
                    if live.idle != policy.idle {
                        live.idle = policy.idle;
                        state.idle_clock.restart();
                        if let (Some(limit), false) = (policy.idle, state.closing) {
                            state.arm_idle_check(&myself, limit);
                        }
                    }
                }
                ConnectionMsg::IdleCheck { generation } => {
                    let (Some(limit), true, false) = (
                        state.policy.idle,
                        generation == state.idle_clock.generation(),
                        state.closing,
                    ) else {
                        return;
                    };
                    let idle_for = state.idle_clock.idle_for(state.link.idle_for());
                    if idle_for >= limit {
                        let reason = format!(
                            "idle timeout ({}) reached",
                            humantime::format_duration(limit)
                        );
                        let grace = state.policy.kill_grace;
                        state.begin_kill(&myself, reason, grace, Some("idle".into()), false);
                    } else {
                        // Check again exactly when the connection would have been idle long enough.
                        state.arm_idle_check(&myself, limit - idle_for);
                    }
                }
                ConnectionMsg::LifetimeElapsed => {
                    if !state.closing {
                        let limit = state.policy.max_lifetime.unwrap_or_default();
                        let reason = format!(
                            "max_lifetime ({}) reached",
                            humantime::format_duration(limit)
                        );
                        let grace = state.policy.kill_grace;
                        state.begin_kill(
                            &myself,
                            reason,
                            grace,
                            Some("max_lifetime".into()),
                            false,
                        );
                    }
                }
                ConnectionMsg::LoginGraceElapsed => {
                    if !state.authenticated && !state.closing {
                        let limit = state.policy.login_grace.unwrap_or_default();
                        let reason = format!(
                            "login grace time ({}) exceeded",
                            humantime::format_duration(limit)
                        );
                        let grace = state.policy.kill_grace;
                        state.begin_kill(&myself, reason, grace, Some("login_grace".into()), false);
                    }
                }
                ConnectionMsg::KillSession {
                    session,
                    reason,
                    grace,
                } => {
                    if let Some((_, actor)) = state.sessions.values().find(|(id, _)| *id == session)
                    {
                        let _ = actor.cast(SessionMsg::Terminate {
                            reason: Some(reason),
                            grace,
                            scope: EndScope::Session,
                        });
                    }
                }
                ConnectionMsg::GraceElapsed => {
                    // Only the first grace to run out acts (a shorter later kill arms its own).
                    if state.outcome.is_some() || state.grace_ran_out {
                        return;
                    }
                    state.grace_ran_out = true;
                    warn!(
                        sessions = state.sessions.len(),
                        "grace ran out: forcing the connection's end"
                    );
                    state.forced = true;
                    for (_, session) in state.sessions.values() {
                        let _ = session.cast(SessionMsg::GraceElapsed);
                    }
                    if state.transport.is_none() {
                        if let Some(kill) = state.killing.as_mut() {
                            if !kill.disconnect_sent {
                                kill.disconnect_sent = true;
                                state.link.disconnect(&kill.reason);
                            }
                        }
                    }
                    state.after(&myself, CUT_DELAY, || ConnectionMsg::Cut);
                    state.after(&myself, GIVE_UP_MARGIN, || ConnectionMsg::GiveUp);
                }
                ConnectionMsg::Cut => {
                    if state.transport.is_none() {
                        debug!("cutting the transport");
                        // The client did not take its goodbye: the end is forced.
                        state.forced = true;
                        state.link.abort();
                    }
                }
                ConnectionMsg::GiveUp => {
                    if state.outcome.is_some() {
                        return;
                    }
                    if state.giving_up {
                        warn!("sessions did not stop even when killed: stopping anyway");
                        state.stop(&myself);
                        return;
                    }
                    warn!(
                        sessions = state.sessions.len(),
                        "the connection did not wind down: killing what is left"
                    );
                    state.giving_up = true;
                    state.forced = true;
                    state.enter_closing();
                    for (_, session) in state.sessions.values() {
                        session.kill();
                    }
                    if state.transport.is_none() {
                        state.link.abort();
                        state.transport = Some(TransportEnd::Aborted);
                    }
                    // The killed sessions' ends come as supervision events; then `advance` stops
                    // this actor. Should even that not happen, the next give-up stops it.
                    state.after(&myself, GIVE_UP_MARGIN, || ConnectionMsg::GiveUp);
                    state.advance(&myself);
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
        let Some((session, _)) = state.sessions.remove(&cell.get_id()) else {
            return Ok(());
        };
        let (exit, killed, forced, processes_left) = match outcome {
            Some(o) => (o.exit, o.killed, o.forced, o.processes_left),
            None => (
                SessionExit::Failed("the session crashed".into()),
                None,
                false,
                0,
            ),
        };
        state.processes_left += processes_left;
        // A session that had to be forced while the connection closes makes its end forced too
        // (the connection's own grace may never run out: the client can leave first).
        if state.closing {
            state.sessions_closed += 1;
            if forced {
                state.forced = true;
            }
        }
        let _ = state
            .supervisor
            .cast(SupervisorMsg::Notice(Notice::SessionEnded {
                conn: state.id,
                session,
                exit,
                killed,
                forced,
                processes_left,
            }));
        state.advance(&myself);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConnectionMsg>,
        state: &mut ConnectionState,
    ) -> Result<(), ActorProcessingErr> {
        for timer in state.timers.drain(..) {
            timer.abort();
        }
        Ok(())
    }
}

/// An instant far enough ahead to mean "never" (a grace too long to add to now).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}
