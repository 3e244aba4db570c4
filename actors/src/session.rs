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

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use tracing::{debug, info, warn, Span};

use crate::idle::IdleClock;
use crate::ids::{ConnId, SessionId};
use crate::killed_by;
use crate::link::{EndScope, PtySpec, SessionEvents, SessionLink, SessionRequest, Winding};
use crate::notice::{NoticeKind, Parent, SessionEnd};
use crate::report::{PtyInfo, SessionExit};
use crate::timers::Timers;

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
    pub(crate) supervisor: Parent,
    /// How long the work may take to end after the client closed the channel.
    pub close_grace: Duration,
    /// No data on the channel either way for this long ends the session; `None` for no limit.
    pub idle: Option<Duration>,
    /// The connection's span, the parent of this session's span.
    pub parent_span: Span,
}

/// Messages a session actor handles.
///
/// Who sends what: the client's requests (`Start` to `ClientClosed`) come from the binding
/// (the code that runs the channel); `Terminate` from its connection actor, or from the binding
/// for a session that must end on its own; `Internal` only from the tree itself.
pub enum SessionMsg {
    /// Sent by the binding: start what the client asked for (exec, shell, subsystem). A session
    /// runs one thing. When the work cannot be started the session ends itself (its channel is
    /// closed).
    Start {
        /// What to run.
        request: SessionRequest,
        /// Why it was not started, when it was not.
        reply: RpcReplyPort<Result<(), StartRefusal>>,
    },
    /// Sent by the binding: the client asks for a terminal (before starting).
    Pty {
        /// What it asked for.
        pty: PtySpec,
        /// `Err` says why not.
        reply: RpcReplyPort<Result<(), String>>,
    },
    /// Sent by the binding: the client asks for an environment variable (before starting).
    Env {
        /// The variable's name.
        name: String,
        /// Its value.
        value: String,
        /// `Err` says why not.
        reply: RpcReplyPort<Result<(), String>>,
    },
    /// Sent by the binding: the client's terminal changed size.
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
    /// Sent by the binding: the client sends a signal to the running work (name without `SIG`).
    Signal {
        /// The signal's name.
        name: String,
    },
    /// Sent by the binding, only for a session whose link gave no [`StdinSink`]
    /// ([`SessionLink::stdin`] returned `None`): the client sent bytes on the channel, handed to
    /// the link's [`data`](SessionLink::data). With a sink the bytes go there and never through
    /// the actor.
    ///
    /// [`StdinSink`]: crate::link::StdinSink
    Data {
        /// The bytes.
        data: Vec<u8>,
    },
    /// Sent by the binding: the client sent EOF on the channel.
    ClientEof,
    /// Sent by the binding (or by its connection, once the transport is gone): the client
    /// closed the channel, or the connection under it is gone.
    ClientClosed,
    /// Sent by its connection (or the binding): end this session, politely now, forced once
    /// `grace` runs out.
    Terminate {
        /// The kill reason; `None` when the connection is going away by itself.
        reason: Option<String>,
        /// How long the work may take to end before it is killed.
        grace: Duration,
        /// Whether only this session ends, or its whole connection.
        scope: EndScope,
    },
    /// Sent by the tree itself only (the link's [`SessionEvents`], this actor's timers, its
    /// connection): an [`Internal`] cannot be built outside this crate.
    Internal(Internal),
}
/// A message the tree sends a session actor itself. Opaque: only this crate builds one.
pub struct Internal(Tick);

/// What an [`Internal`] says.
enum Tick {
    /// (the link, through [`SessionEvents`]) The work has ended and the channel is closed on
    /// our side; `processes_left` of its processes still ran after the last SIGKILL.
    Finished {
        exit: SessionExit,
        processes_left: usize,
    },
    /// (own timer, or the connection for a connection's end) The grace of a terminate ran out.
    GraceElapsed,
    /// (own timer) A forced end did not report back within [`FORCE_MARGIN`].
    GiveUp,
    /// (own timer) Time to check whether the session has been idle too long; a check armed
    /// under an older idle limit (an older `generation`) is ignored.
    IdleCheck { generation: u64 },
    /// (connection, on a configuration reload) The session idle limit changed: from now on it
    /// applies, idle time counted from now at the earliest, so a reload never ends a session at
    /// once.
    SetIdle { idle: Option<Duration> },
    /// (connection) A line for the person at the terminal (see [`SessionLink::notify`]).
    Notify { text: String },
}

impl SessionMsg {
    fn tick(tick: Tick) -> Self {
        SessionMsg::Internal(Internal(tick))
    }

    /// The connection's grace ran out (passed on by the connection).
    pub(crate) fn grace_elapsed() -> Self {
        Self::tick(Tick::GraceElapsed)
    }

    /// The session idle limit changed (passed on by the connection).
    pub(crate) fn set_idle(idle: Option<Duration>) -> Self {
        Self::tick(Tick::SetIdle { idle })
    }

    /// A line for the person at the terminal (passed on by the connection).
    pub(crate) fn notify(text: String) -> Self {
        Self::tick(Tick::Notify { text })
    }
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

impl SessionOutcome {
    /// What the connection tells the supervisor of this end.
    pub(crate) fn into_end(self, conn: ConnId, session: SessionId) -> SessionEnd {
        SessionEnd {
            conn,
            session,
            exit: self.exit,
            killed: self.killed,
            forced: self.forced,
            processes_left: self.processes_left,
        }
    }
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Open, nothing started yet: a terminal and environment may still be asked for.
    Fresh,
    /// Its work runs.
    Running,
    /// Ending politely: the link was told to terminate.
    Ending,
    /// The grace ran out: the link was told to force the end.
    Forced,
    /// Over: the outcome is recorded and the actor stops.
    Done,
}

impl Phase {
    /// Whether the client's requests still reach the work.
    fn is_live(self) -> bool {
        matches!(self, Phase::Fresh | Phase::Running)
    }
}

/// The actor's state; its parent reads `outcome` from it once the actor has stopped.
pub struct SessionState {
    id: SessionId,
    conn: ConnId,
    /// The channel and the work behind it.
    link: Box<dyn SessionLink>,
    /// Where notices go.
    supervisor: Parent,
    /// How long the work may take to end after the client closed the channel.
    close_grace: Duration,
    /// The session idle limit; changed by a reload.
    idle: Option<Duration>,
    idle_clock: IdleClock,
    span: Span,
    /// Where it is in its life.
    phase: Phase,
    /// The kill reason, when it was killed (the first one counts).
    killed: Option<String>,
    timers: Timers,
    /// The terminal, once allocated, for listings.
    pty: Option<PtyInfo>,
    pub(crate) outcome: Option<SessionOutcome>,
    /// What the link reported left running at its end.
    processes_left: usize,
}

impl SessionState {
    fn report_pty(&self) {
        self.supervisor.tell(NoticeKind::SessionPty {
            conn: self.conn,
            session: self.id,
            pty: self.pty.clone(),
        });
    }

    fn finish(&mut self, myself: &ActorRef<SessionMsg>, exit: SessionExit) {
        if self.outcome.is_none() {
            self.outcome = Some(SessionOutcome {
                exit,
                killed: self.killed.clone(),
                forced: self.phase == Phase::Forced,
                processes_left: self.processes_left,
            });
        }
        self.phase = Phase::Done;
        myself.stop(None);
    }

    fn after(&mut self, myself: &ActorRef<SessionMsg>, delay: Duration, tick: fn() -> Tick) {
        self.timers
            .after(myself, delay, move || SessionMsg::tick(tick()));
    }

    fn arm_idle_check(&mut self, myself: &ActorRef<SessionMsg>, delay: Duration) {
        self.idle_clock
            .arm(&mut self.timers, myself, delay, |generation| {
                SessionMsg::tick(Tick::IdleCheck { generation })
            });
    }

    /// Starts the polite end; arms the force for when `grace` runs out.
    fn begin_end(&mut self, myself: &ActorRef<SessionMsg>, grace: Duration, scope: EndScope) {
        // The end of a whole connection is timed by the connection actor, which passes its
        // `GraceElapsed` on to every session: one timer per connection, not one per session.
        let timed_here = scope == EndScope::Session;
        if !self.phase.is_live() {
            // Already ending: a second request may only bring the force closer.
            if timed_here && self.phase == Phase::Ending {
                self.after(myself, grace, || Tick::GraceElapsed);
            }
            return;
        }
        self.phase = Phase::Ending;
        match self.link.terminate(scope) {
            Winding::Done => self.finish(myself, SessionExit::Closed),
            Winding::Pending if timed_here => self.after(myself, grace, || Tick::GraceElapsed),
            Winding::Pending => {}
        }
    }

    fn on_start(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        request: SessionRequest,
        reply: RpcReplyPort<Result<(), StartRefusal>>,
    ) {
        let result = match self.phase {
            Phase::Fresh => {
                let actor = myself.clone();
                let events = SessionEvents::new(self.id, move |exit, processes_left| {
                    let _ = actor.cast(SessionMsg::tick(Tick::Finished {
                        exit,
                        processes_left,
                    }));
                });
                self.link
                    .start(&request, events)
                    .map_err(StartRefusal::Failed)
            }
            Phase::Running => Err(StartRefusal::AlreadyStarted),
            Phase::Ending | Phase::Forced | Phase::Done => Err(StartRefusal::Closing),
        };
        match &result {
            Ok(()) => {
                self.phase = Phase::Running;
                if let Some(limit) = self.idle {
                    self.idle_clock.restart();
                    self.arm_idle_check(myself, limit);
                }
                info!(kind = ?request.kind(), command = request.command(), "session started");
                self.supervisor.tell(NoticeKind::SessionStarted {
                    conn: self.conn,
                    session: self.id,
                    kind: request.kind(),
                    command: request.command().map(str::to_string),
                });
            }
            Err(e) => info!(error = %e, "session request refused"),
        }
        let failed = matches!(result, Err(StartRefusal::Failed(_)));
        let _ = reply.send(result);
        if failed {
            // Nothing runs and nothing will: the session is over.
            let grace = self.close_grace;
            self.begin_end(myself, grace, EndScope::Session);
        }
    }

    fn on_pty(&mut self, pty: PtySpec, reply: RpcReplyPort<Result<(), String>>) {
        let result = if self.phase == Phase::Fresh {
            self.link.pty(&pty)
        } else {
            Err("a terminal must be asked for before the session starts".to_string())
        };
        match result {
            Ok(used) => {
                info!(term = %used.term, cols = used.cols, rows = used.rows, "terminal allocated");
                self.pty = Some(PtyInfo {
                    term: used.term,
                    cols: used.cols,
                    rows: used.rows,
                });
                self.report_pty();
                let _ = reply.send(Ok(()));
            }
            Err(e) => {
                info!(error = %e, "terminal refused");
                let _ = reply.send(Err(e));
            }
        }
    }

    fn on_env(&mut self, name: String, value: String, reply: RpcReplyPort<Result<(), String>>) {
        let result = if self.phase == Phase::Fresh {
            self.link.env(&name, &value)
        } else {
            Err("environment must be set before the session starts".to_string())
        };
        if let Err(e) = &result {
            // Cut short: a client's name may be as long as a packet.
            let shown: String = name.chars().take(64).collect();
            info!(name = %shown, name_bytes = name.len(), error = %e, "environment variable refused");
        }
        let _ = reply.send(result);
    }

    fn on_resize(&mut self, cols: u32, rows: u32, pix_width: u32, pix_height: u32) {
        let (cols, rows) = self.link.resize(cols, rows, pix_width, pix_height);
        if let Some(pty) = self.pty.as_mut() {
            pty.cols = cols;
            pty.rows = rows;
            self.report_pty();
        }
    }

    fn on_signal(&mut self, name: String) {
        match self.link.signal(&name) {
            Ok(()) => info!(signal = %name, "signal delivered"),
            Err(e) => info!(signal = %name, error = %e, "signal refused"),
        }
    }

    fn on_terminate(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        reason: Option<String>,
        grace: Duration,
        scope: EndScope,
    ) {
        if self.killed.is_none() {
            self.killed = reason;
        }
        info!(reason = self.killed.as_deref(), grace = %humantime::format_duration(grace), "terminating session");
        self.begin_end(myself, grace, scope);
    }

    fn on_tick(&mut self, myself: &ActorRef<SessionMsg>, tick: Tick) {
        match tick {
            Tick::Finished {
                exit,
                processes_left,
            } => {
                debug!(?exit, processes_left, "session work finished");
                self.processes_left = processes_left;
                self.finish(myself, exit);
            }
            Tick::GraceElapsed => self.on_grace_elapsed(myself),
            Tick::SetIdle { idle } => {
                self.idle = idle;
                self.idle_clock.restart();
                if let (Some(limit), Phase::Running) = (idle, self.phase) {
                    self.arm_idle_check(myself, limit);
                }
            }
            Tick::IdleCheck { generation } => self.on_idle_check(myself, generation),
            Tick::Notify { text } => {
                if self.phase == Phase::Running {
                    self.link.notify(&text);
                }
            }
            Tick::GiveUp => {
                if self.outcome.is_none() {
                    warn!("the forced end did not report back: abandoning the session's work");
                    let exit = SessionExit::Failed("abandoned after a forced end".into());
                    self.finish(myself, exit);
                }
            }
        }
    }

    fn on_grace_elapsed(&mut self, myself: &ActorRef<SessionMsg>) {
        if matches!(self.phase, Phase::Forced | Phase::Done) {
            return;
        }
        warn!("grace ran out: forcing the session's end");
        self.phase = Phase::Forced;
        match self.link.force() {
            Winding::Done => self.finish(myself, SessionExit::Signal("KILL".into())),
            Winding::Pending => self.after(myself, FORCE_MARGIN, || Tick::GiveUp),
        }
    }

    fn on_idle_check(&mut self, myself: &ActorRef<SessionMsg>, generation: u64) {
        let (Some(limit), true, true) = (
            self.idle,
            generation == self.idle_clock.generation(),
            self.phase.is_live(),
        ) else {
            return;
        };
        match self.idle_clock.check(limit, self.link.idle_for()) {
            None => {
                let reason = killed_by::session_idle_reason(limit);
                info!(reason = %reason, "session idle too long");
                self.killed = Some(reason);
                let grace = self.close_grace;
                self.begin_end(myself, grace, EndScope::Session);
            }
            Some(left) => self.arm_idle_check(myself, left),
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
            phase: Phase::Fresh,
            killed: None,
            timers: Timers::default(),
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
        let _entered = state.span.clone().entered();
        let live = state.phase.is_live();
        match msg {
            SessionMsg::Start { request, reply } => state.on_start(&myself, request, reply),
            SessionMsg::Pty { pty, reply } => state.on_pty(pty, reply),
            SessionMsg::Env { name, value, reply } => state.on_env(name, value, reply),
            SessionMsg::Resize {
                cols,
                rows,
                pix_width,
                pix_height,
            } if live => state.on_resize(cols, rows, pix_width, pix_height),
            SessionMsg::Signal { name } if live => state.on_signal(name),
            SessionMsg::Data { data } if live => state.link.data(data),
            SessionMsg::ClientEof if live => state.link.eof(),
            SessionMsg::ClientClosed => {
                debug!("client closed the channel");
                let grace = state.close_grace;
                state.begin_end(&myself, grace, EndScope::Session);
            }
            SessionMsg::Terminate {
                reason,
                grace,
                scope,
            } => state.on_terminate(&myself, reason, grace, scope),
            SessionMsg::Internal(Internal(tick)) => state.on_tick(&myself, tick),
            // The client's requests to a session that is ending reach nothing.
            SessionMsg::Resize { .. }
            | SessionMsg::Signal { .. }
            | SessionMsg::Data { .. }
            | SessionMsg::ClientEof => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SessionMsg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        state.timers.abort_all();
        Ok(())
    }
}
