//! `SessionActor`: one per session channel, a child of its `ConnectionActor`.
//!
//! It owns the channel's [`SessionLink`] (the channel and whatever runs behind it, such as a
//! process) and decides when the session is over: when the work ends by itself, when the client
//! closes the channel, or when it is told to [`Terminate`](SessionMsg::Terminate) — politely
//! first, forced once the grace runs out, and abandoned (the link dropped, which kills what is
//! left) if even the forced end does not report back within [`FORCE_MARGIN`].
//!
//! ## Supervision
//!
//! A session has no children. It stops itself when its work is over; its parent learns how it
//! ended from the final state carried by ractor's `ActorTerminated` event. A panic in its
//! handlers fails only this actor: the parent counts it as a session that ended with an error.

use std::time::Duration;

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use tracing::{debug, info, warn, Instrument, Span};

use crate::ids::{ConnId, SessionId};
use crate::link::{EndScope, PtySpec, SessionEvents, SessionLink, SessionRequest, Winding};
use crate::report::PtyInfo;
use crate::report::SessionExit;
use crate::supervisor::{Notice, SupervisorMsg};
use crate::IdleClock;

/// How long a forced session may take to report that its work is gone before the actor stops
/// anyway (dropping its link, which kills whatever is left).
pub const FORCE_MARGIN: Duration = Duration::from_secs(1);

/// The session actor. Spawned by `ConnectionActor` only.
pub struct SessionActor;

/// What a session actor starts with.
pub struct SessionArgs {
    /// Its ID, already registered with the supervisor.
    pub id: SessionId,
    /// Its connection.
    pub conn: ConnId,
    /// The channel and the work behind it.
    pub link: Box<dyn SessionLink>,
    /// Where to report what it starts.
    pub supervisor: ActorRef<SupervisorMsg>,
    /// How long the work may take to end after the client closed the channel.
    pub close_grace: Duration,
    /// No data on the channel either way for this long ends the session; `None` for no limit.
    pub idle: Option<Duration>,
    /// The connection's span, the parent of this session's span.
    pub parent_span: Span,
}

/// Messages a session actor handles.
pub enum SessionMsg {
    /// Start what the client asked for (exec, shell, subsystem). A session runs one thing.
    /// When the work cannot be started the session ends itself (its channel is closed).
    Start {
        /// What to run.
        request: SessionRequest,
        /// Why it was not started, when it was not.
        reply: RpcReplyPort<Result<(), StartRefusal>>,
    },
    /// The client asks for a terminal (before starting).
    Pty {
        /// What it asked for.
        pty: PtySpec,
        /// `Err` says why not.
        reply: RpcReplyPort<Result<(), String>>,
    },
    /// The client asks for an environment variable (before starting).
    Env {
        /// The variable's name.
        name: String,
        /// Its value.
        value: String,
        /// `Err` says why not.
        reply: RpcReplyPort<Result<(), String>>,
    },
    /// The client's terminal changed size.
    Resize {
        /// Width in characters.
        cols: u32,
        /// Height in rows.
        rows: u32,
        /// Width in pixels.
        pix_width: u32,
        /// Height in pixels.
        pix_height: u32,
    },
    /// The client sends a signal to the running work (name without `SIG`).
    Signal {
        /// The signal's name.
        name: String,
    },
    /// The client sent bytes on the channel.
    Data {
        /// The bytes.
        data: Vec<u8>,
    },
    /// The client sent EOF on the channel.
    ClientEof,
    /// The client closed the channel, or the connection under it is gone.
    ClientClosed,
    /// End this session: politely now, forced once `grace` runs out.
    Terminate {
        /// The kill reason; `None` when the connection is going away by itself.
        reason: Option<String>,
        /// How long the work may take to end before it is killed.
        grace: Duration,
        /// Whether only this session ends, or its whole connection.
        scope: EndScope,
    },
    /// The link reports that the work has ended and the channel is closed on our side.
    Finished {
        /// How it ended.
        exit: SessionExit,
        /// How many of its processes were still running after the last SIGKILL.
        processes_left: usize,
    },
    /// The grace of a terminate ran out.
    GraceElapsed,
    /// A forced end did not report back within [`FORCE_MARGIN`].
    GiveUp,
    /// Time to check whether the session has been idle too long (`generation` tells a check
    /// armed under an older idle limit, which is ignored).
    IdleCheck {
        /// The idle limit's generation the check was armed under.
        generation: u64,
    },
    /// The session idle limit changed (a configuration reload): from now on it applies, idle
    /// time counted from now at the earliest, so a reload never ends a session at once.
    SetIdle {
        /// The new limit; `None` for no limit.
        idle: Option<Duration>,
    },
}

/// Why a session did not start what the client asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartRefusal {
    /// The session already runs something; it goes on unchanged.
    #[error("this session already runs something: open a new channel")]
    AlreadyStarted,
    /// The session is ending.
    #[error("the session is closing")]
    Closing,
    /// The work could not be started (the text is fit for the client); the session ends.
    #[error("{0}")]
    Failed(String),
}

/// How a session ended, read by its parent from the final state.
#[derive(Debug, Clone)]
pub(crate) struct SessionOutcome {
    pub(crate) exit: SessionExit,
    pub(crate) killed: Option<String>,
    pub(crate) forced: bool,
    pub(crate) processes_left: usize,
}

/// The actor's state; its parent reads `outcome` from it once the actor has stopped.
pub struct SessionState {
    id: SessionId,
    conn: ConnId,
    link: Box<dyn SessionLink>,
    supervisor: ActorRef<SupervisorMsg>,
    close_grace: Duration,
    idle: Option<Duration>,
    idle_clock: IdleClock,
    span: Span,
    started: bool,
    ending: bool,
    killed: Option<String>,
    forced: bool,
    timers: Vec<JoinHandle<()>>,
    pty: Option<PtyInfo>,
    pub(crate) outcome: Option<SessionOutcome>,
    /// What the link reported left running at its end.
    processes_left: usize,
}

impl SessionState {
    fn report_pty(&self) {
        let _ = self
            .supervisor
            .cast(SupervisorMsg::Notice(Notice::SessionPty {
                conn: self.conn,
                session: self.id,
                pty: self.pty.clone(),
            }));
    }

    fn finish(&mut self, myself: &ActorRef<SessionMsg>, exit: SessionExit) {
        if self.outcome.is_none() {
            self.outcome = Some(SessionOutcome {
                exit,
                killed: self.killed.clone(),
                forced: self.forced,
                processes_left: self.processes_left,
            });
        }
        myself.stop(None);
    }

    fn after(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        delay: Duration,
        msg: impl FnOnce() -> SessionMsg + Send + 'static,
    ) {
        let target = myself.clone();
        self.timers.retain(|t| !t.is_finished());
        self.timers.push(ractor::concurrency::spawn(async move {
            ractor::concurrency::sleep(delay).await;
            let _ = target.cast(msg());
        }));
    }

    /// Arms the idle check for `delay` from now under the current limit.
    fn arm_idle_check(&mut self, myself: &ActorRef<SessionMsg>, delay: Duration) {
        let generation = self.idle_clock.generation();
        self.after(myself, delay, move || SessionMsg::IdleCheck { generation });
    }

    /// Starts the polite end; arms the force for when `grace` runs out.
    fn begin_end(&mut self, myself: &ActorRef<SessionMsg>, grace: Duration, scope: EndScope) {
        // The end of a whole connection is timed by the connection actor, which passes its
        // `GraceElapsed` on to every session: one timer per connection, not one per session.
        let timed_here = scope == EndScope::Session;
        if self.ending {
            // Already ending: a second request may only bring the force closer.
            if timed_here && !self.forced && self.outcome.is_none() {
                self.after(myself, grace, || SessionMsg::GraceElapsed);
            }
            return;
        }
        self.ending = true;
        match self.link.terminate(scope) {
            Winding::Done => self.finish(myself, SessionExit::Closed),
            Winding::Pending if timed_here => {
                self.after(myself, grace, || SessionMsg::GraceElapsed)
            }
            Winding::Pending => {}
        }
    }
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        let span = tracing::info_span!(parent: &args.parent_span, "session", session_id = %args.id);
        Ok(SessionState {
            id: args.id,
            conn: args.conn,
            link: args.link,
            supervisor: args.supervisor,
            close_grace: args.close_grace,
            idle: args.idle,
            idle_clock: IdleClock::new(),
            span,
            started: false,
            ending: false,
            killed: None,
            forced: false,
            timers: Vec::new(),
            pty: None,
            outcome: None,
            processes_left: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.span.clone();
        async move {
            match msg {
                SessionMsg::Start { request, reply } => {
                    let result = if state.ending {
                        Err(StartRefusal::Closing)
                    } else if state.started {
                        Err(StartRefusal::AlreadyStarted)
                    } else {
                        let events = SessionEvents {
                            actor: myself.clone(),
                            session: state.id,
                        };
                        state.link.start(&request, events).map_err(StartRefusal::Failed)
                    };
                    match &result {
                        Ok(()) => {
                            state.started = true;
                            if let Some(limit) = state.idle {
                                state.idle_clock.restart();
                                state.arm_idle_check(&myself, limit);
                            }
                            info!(kind = ?request.kind(), command = request.command(), "session started");
                            let _ = state.supervisor.cast(SupervisorMsg::Notice(Notice::SessionStarted {
                                conn: state.conn,
                                session: state.id,
                                kind: request.kind(),
                                command: request.command().map(str::to_string),
                            }));
                        }
                        Err(e) => info!(error = %e, "session request refused"),
                    }
                    let failed = matches!(result, Err(StartRefusal::Failed(_)));
                    let _ = reply.send(result);
                    if failed {
                        // Nothing runs and nothing will: the session is over.
                        let grace = state.close_grace;
                        state.begin_end(&myself, grace, EndScope::Session);
                    }
                }
                SessionMsg::Pty { pty, reply } => {
                    let result = if state.started || state.ending {
                        Err("a terminal must be asked for before the session starts".to_string())
                    } else {
                        state.link.pty(&pty)
                    };
                    match result {
                        Ok(used) => {
                            info!(term = %used.term, cols = used.cols, rows = used.rows, "terminal allocated");
                            state.pty = Some(PtyInfo {
                                term: used.term,
                                cols: used.cols,
                                rows: used.rows,
                            });
                            state.report_pty();
                            let _ = reply.send(Ok(()));
                        }
                        Err(e) => {
                            info!(error = %e, "terminal refused");
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                SessionMsg::Env { name, value, reply } => {
                    let result = if state.started || state.ending {
                        Err("environment must be set before the session starts".to_string())
                    } else {
                        state.link.env(&name, &value)
                    };
                    if let Err(e) = &result {
                        info!(name = %name, error = %e, "environment variable refused");
                    }
                    let _ = reply.send(result);
                }
                SessionMsg::Resize {
                    cols,
                    rows,
                    pix_width,
                    pix_height,
                } => {
                    if !state.ending {
                        state.link.resize(cols, rows, pix_width, pix_height);
                        if let Some(pty) = state.pty.as_mut() {
                            pty.cols = cols;
                            pty.rows = rows;
                            state.report_pty();
                        }
                    }
                }
                SessionMsg::Signal { name } => {
                    if !state.ending {
                        match state.link.signal(&name) {
                            Ok(()) => info!(signal = %name, "signal delivered"),
                            Err(e) => info!(signal = %name, error = %e, "signal refused"),
                        }
                    }
                }
                SessionMsg::Data { data } => {
                    if !state.ending {
                        state.link.data(data);
                    }
                }
                SessionMsg::ClientEof => {
                    if !state.ending {
                        state.link.eof();
                    }
                }
                SessionMsg::ClientClosed => {
                    debug!("client closed the channel");
                    let grace = state.close_grace;
                    state.begin_end(&myself, grace, EndScope::Session);
                }
                SessionMsg::Terminate {
                    reason,
                    grace,
                    scope,
                } => {
                    if state.killed.is_none() {
                        state.killed = reason;
                    }
                    info!(reason = state.killed.as_deref(), grace = %humantime::format_duration(grace), "terminating session");
                    state.begin_end(&myself, grace, scope);
                }
                SessionMsg::Finished {
                    exit,
                    processes_left,
                } => {
                    debug!(?exit, processes_left, "session work finished");
                    state.processes_left = processes_left;
                    state.finish(&myself, exit);
                }
                SessionMsg::GraceElapsed => {
                    if state.outcome.is_none() && !state.forced {
                        warn!("grace ran out: forcing the session's end");
                        state.forced = true;
                        match state.link.force() {
                            Winding::Done => state.finish(&myself, SessionExit::Signal("KILL".into())),
                            Winding::Pending => state.after(&myself, FORCE_MARGIN, || SessionMsg::GiveUp),
                        }
                    }
                }
                SessionMsg::SetIdle { idle } => {
                    state.idle = idle;
                    state.idle_clock.restart();
                    if let (Some(limit), true, false) = (idle, state.started, state.ending) {
                        state.arm_idle_check(&myself, limit);
                    }
                }
                SessionMsg::IdleCheck { generation } => {
                    let (Some(limit), true, false) = (
                        state.idle,
                        generation == state.idle_clock.generation(),
                        state.ending,
                    ) else {
                        return;
                    };
                    let idle_for = state.idle_clock.idle_for(state.link.idle_for());
                    if idle_for >= limit {
                        let reason = format!(
                            "session_idle timeout ({}) reached",
                            humantime::format_duration(limit)
                        );
                        info!(reason = %reason, "session idle too long");
                        state.killed = Some(reason);
                        let grace = state.close_grace;
                        state.begin_end(&myself, grace, EndScope::Session);
                    } else {
                        state.arm_idle_check(&myself, limit - idle_for);
                    }
                }
                SessionMsg::GiveUp => {
                    if state.outcome.is_none() {
                        warn!("the forced end did not report back: abandoning the session's work");
                        state.finish(&myself, SessionExit::Failed("abandoned after a forced end".into()));
                    }
                }
            }
        }
        .instrument(span)
        .await;
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SessionMsg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        for timer in state.timers.drain(..) {
            timer.abort();
        }
        Ok(())
    }
}
