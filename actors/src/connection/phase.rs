//! A connection's phase and its transitions: a pure function from the phase and what happened
//! to the next phase and what the actor must do, with no actor, no link and no clock in it.
//!
//! ```text
//! Handshaking --Authenticated--> Open
//!   Handshaking | Open --Kill, TransportClosed, GiveUp--> Closing(Polite)
//!   Closing(Polite) --GraceElapsed--> Closing(Forced) --GiveUp--> Closing(GivingUp)
//!   Closing(any) --no session left, transport ended (or a second GiveUp)--> Done
//! ```
//!
//! Closing ends once no session is left and the transport has ended: first the sessions, then
//! the disconnect (sent when the last session is gone, or when the grace runs out), then the
//! transport (cut [`CUT_DELAY`] after the grace runs out, or [`CUT_DELAY`] after the kill for a
//! connection that never logged in).

use std::time::Duration;

use tokio::time::Instant;

use crate::link::TransportEnd;
use crate::report::DisconnectCause;

/// After the grace runs out, how long the disconnect message gets to leave before the transport
/// is cut.
pub const CUT_DELAY: Duration = Duration::from_millis(100);

/// After the grace runs out, how long the subtree may take to wind down before the remaining
/// children are killed outright and the connection actor stops anyway.
pub const GIVE_UP_MARGIN: Duration = Duration::from_millis(1500);

/// Where a connection is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Key exchange and authentication.
    Handshaking,
    /// Logged in: sessions come and go.
    Open,
    /// Ending: sessions first, then the disconnect, then the transport.
    Closing(Closing),
    /// Over; the actor stops with this end.
    Done(Ended),
}

/// A connection on its way out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Closing {
    /// Whether the client had logged in (before that there is no session to wind down).
    authenticated: bool,
    /// The kill under way, when a kill (not only the client leaving) ends it.
    kill: Option<Kill>,
    /// How the transport ended, once it has.
    transport: Option<TransportEnd>,
    /// How hard the end is being pushed.
    stage: Stage,
    /// Something had to be forced (a session, the transport): the end is forced.
    forced: bool,
    /// Sessions that ended since it began closing.
    sessions_closed: usize,
}

/// How hard the end of a connection is being pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Sessions are asked to end; nothing has run out yet.
    Polite,
    /// The grace ran out: sessions are forced, the transport is cut soon.
    Forced,
    /// Even that did not wind down within [`GIVE_UP_MARGIN`]: what is left is killed.
    GivingUp,
}

/// The kill that ends a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Kill {
    reason: String,
    by: Option<String>,
    disconnect_sent: bool,
    /// The client had already left when the kill came: it is the cause, not the kill.
    client_left_first: bool,
    /// When the grace of the most pressing kill runs out.
    deadline: Instant,
}

/// How a connection ended (the actor adds what its sessions left running).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ended {
    pub(crate) cause: DisconnectCause,
    pub(crate) sessions_closed: usize,
    pub(crate) forced: bool,
}

/// What happened to a connection, as far as its phase is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    /// The client authenticated.
    Authenticated,
    /// The transport ended; `grace` is how long sessions get if this begins the end.
    TransportClosed { end: TransportEnd, grace: Duration },
    /// A kill, from the supervisor or from the connection's own timeouts.
    Kill(KillOrder),
    /// The kill's grace ran out.
    GraceElapsed,
    /// Time to cut the transport if it is still up.
    Cut,
    /// The subtree did not wind down after the force.
    GiveUp,
    /// A session's actor stopped (`forced`: it had to be forced).
    SessionEnded { forced: bool },
}

/// A kill as ordered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KillOrder {
    pub(crate) reason: String,
    pub(crate) by: Option<String>,
    pub(crate) grace: Duration,
    /// When `grace` runs out (now + grace).
    pub(crate) deadline: Instant,
    /// The sender times the grace (see `Order::Kill`).
    pub(crate) timed_by_sender: bool,
    /// The supervisor lists the connection as closing already (it sent the kill).
    pub(crate) listed: bool,
}

/// What the actor must do, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Tell the supervisor the connection is closing.
    NoticeClosing,
    /// Ask every session to end within `grace` (`reason`: the kill's, `None` when the client
    /// left).
    EndSessions {
        reason: Option<String>,
        grace: Duration,
    },
    /// Tell every session the client is gone.
    SessionsClientClosed,
    /// Pass the grace's end on to every session.
    ForceSessions,
    /// Kill every session actor outright.
    KillSessions,
    /// Send the disconnect with this reason.
    Disconnect(String),
    /// Cut the transport.
    Abort,
    /// Send the actor this later.
    After(Duration, Timed),
    /// Stop the actor.
    Stop,
}

/// What the phase asks to be told later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timed {
    GraceElapsed,
    Cut,
    GiveUp,
}

impl Phase {
    /// Whether the connection is ending (or over): no new session, no new timeout.
    pub(crate) fn is_closing(&self) -> bool {
        matches!(self, Phase::Closing(_) | Phase::Done(_))
    }

    /// Whether a kill is already under way (a later one may only shorten its grace).
    pub(crate) fn is_killing(&self) -> bool {
        match self {
            Phase::Closing(c) => c.kill.is_some(),
            Phase::Done(_) => true,
            _ => false,
        }
    }

    /// Whether what was left has been killed already (the next give-up stops the actor).
    pub(crate) fn is_giving_up(&self) -> bool {
        matches!(self, Phase::Closing(c) if c.stage == Stage::GivingUp)
    }

    /// How it ended, once it has.
    pub(crate) fn ended(&self) -> Option<&Ended> {
        match self {
            Phase::Done(ended) => Some(ended),
            _ => None,
        }
    }

    /// The next phase after `input`, with `sessions` live sessions (after any that just
    /// ended), and what the actor must do, in order.
    pub(crate) fn step(self, input: Input, sessions: usize) -> (Phase, Vec<Action>) {
        let mut out = Vec::new();
        let next = self.apply(input, sessions, &mut out);
        (next, out)
    }

    fn apply(self, input: Input, sessions: usize, out: &mut Vec<Action>) -> Phase {
        match (self, input) {
            (done @ Phase::Done(_), _) => done,
            (Phase::Handshaking, Input::Authenticated) => Phase::Open,
            (Phase::Closing(mut c), Input::Authenticated) => {
                c.authenticated = true;
                Phase::Closing(c)
            }
            (open, Input::Authenticated) => open,
            (Phase::Closing(mut c), Input::TransportClosed { end, .. }) => {
                c.transport = Some(end);
                out.push(Action::SessionsClientClosed);
                c.advance(sessions, out)
            }
            (live, Input::TransportClosed { end, grace }) => {
                let mut c = Closing::from(live);
                c.transport = Some(end);
                out.push(Action::NoticeClosing);
                out.push(Action::EndSessions {
                    reason: None,
                    grace,
                });
                // Forces the sessions when the grace runs out, then gives up after
                // GIVE_UP_MARGIN; nothing to time if none is left.
                if sessions > 0 {
                    out.push(Action::After(grace, Timed::GraceElapsed));
                }
                c.advance(sessions, out)
            }
            (phase, Input::Kill(order)) => phase.kill(order, sessions, out),
            (Phase::Closing(mut c), Input::GraceElapsed) if c.stage == Stage::Polite => {
                c.stage = Stage::Forced;
                c.forced = true;
                out.push(Action::ForceSessions);
                if c.transport.is_none() {
                    c.send_disconnect(out);
                }
                out.push(Action::After(CUT_DELAY, Timed::Cut));
                out.push(Action::After(GIVE_UP_MARGIN, Timed::GiveUp));
                Phase::Closing(c)
            }
            (Phase::Closing(mut c), Input::Cut) if c.transport.is_none() => {
                // The client did not take its goodbye: the end is forced.
                c.forced = true;
                out.push(Action::Abort);
                Phase::Closing(c)
            }
            (Phase::Closing(c), Input::GiveUp) if c.stage == Stage::GivingUp => {
                // Sessions did not stop even when killed: stop anyway.
                out.push(Action::Stop);
                Phase::Done(c.ended())
            }
            (phase, Input::GiveUp) => {
                if !phase.is_closing() {
                    out.push(Action::NoticeClosing);
                }
                let mut c = Closing::from(phase);
                c.stage = Stage::GivingUp;
                c.forced = true;
                out.push(Action::KillSessions);
                if c.transport.is_none() {
                    out.push(Action::Abort);
                    c.transport = Some(TransportEnd::Aborted);
                }
                // The killed sessions' ends come as supervision events, then `advance` stops
                // the actor. Should even that not happen, the next give-up stops it.
                out.push(Action::After(GIVE_UP_MARGIN, Timed::GiveUp));
                c.advance(sessions, out)
            }
            (Phase::Closing(mut c), Input::SessionEnded { forced }) => {
                // A session that had to be forced makes the end forced too (the connection's
                // own grace may never run out: the client can leave first).
                c.sessions_closed += 1;
                c.forced |= forced;
                c.advance(sessions, out)
            }
            (phase, _) => phase,
        }
    }

    /// Starts the kill sequence, or lets a later kill whose grace ends sooner bring the force
    /// closer (any other later kill changes nothing).
    fn kill(self, order: KillOrder, sessions: usize, out: &mut Vec<Action>) -> Phase {
        let KillOrder {
            reason,
            by,
            grace,
            deadline,
            timed_by_sender,
            listed,
        } = order;
        let mut kill = Kill {
            reason,
            by,
            disconnect_sent: false,
            client_left_first: false,
            deadline,
        };
        let was_closing = self.is_closing();
        let mut c = Closing::from(self);
        if let Some(current) = c.kill.as_mut() {
            // Until the connection's own grace has run out (a session forced on its own makes
            // the end forced, not over).
            if kill.deadline < current.deadline && c.stage == Stage::Polite {
                current.deadline = kill.deadline;
                out.push(Action::EndSessions {
                    reason: Some(current.reason.clone()),
                    grace,
                });
                if !timed_by_sender {
                    out.push(Action::After(grace, Timed::GraceElapsed));
                }
            }
            return Phase::Closing(c);
        }
        kill.client_left_first = c.transport.is_some();
        kill.disconnect_sent = kill.client_left_first;
        // The order matters for speed, not for correctness: what is woken last runs next on
        // the actor's thread, and that should be the sessions, which the kill waits for.
        if !timed_by_sender {
            out.push(Action::After(grace, Timed::GraceElapsed));
        }
        if !was_closing && !listed {
            out.push(Action::NoticeClosing);
        }
        // Sessions already ending (the client left) keep the shorter of the graces.
        out.push(Action::EndSessions {
            reason: Some(kill.reason.clone()),
            grace,
        });
        c.kill = Some(kill);
        let authenticated = c.authenticated;
        let next = c.advance(sessions, out);
        if !authenticated && sessions == 0 {
            // Before authentication there is no session to wind down, only a client, maybe one
            // stalled in its key exchange (russh holds our DISCONNECT back until that ends):
            // the goodbye gets CUT_DELAY to leave, then the socket closes, not at the grace.
            out.push(Action::After(CUT_DELAY, Timed::Cut));
        }
        next
    }
}

impl From<Phase> for Closing {
    /// The closing state a phase enters (or is in).
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Closing(c) => c,
            other => Closing {
                authenticated: matches!(other, Phase::Open),
                kill: None,
                transport: None,
                stage: Stage::Polite,
                forced: false,
                sessions_closed: 0,
            },
        }
    }
}

impl Closing {
    /// Sends the disconnect, once, if a kill is under way.
    fn send_disconnect(&mut self, out: &mut Vec<Action>) {
        if let Some(kill) = self.kill.as_mut() {
            if !kill.disconnect_sent {
                kill.disconnect_sent = true;
                out.push(Action::Disconnect(kill.reason.clone()));
            }
        }
    }

    /// Moves the end on as far as it can go now: with no session left the disconnect goes out,
    /// and once the transport has ended too the actor stops.
    fn advance(mut self, sessions: usize, out: &mut Vec<Action>) -> Phase {
        if sessions > 0 {
            return Phase::Closing(self);
        }
        if self.transport.is_none() {
            self.send_disconnect(out);
            return Phase::Closing(self);
        }
        out.push(Action::Stop);
        Phase::Done(self.ended())
    }

    fn ended(self) -> Ended {
        let cause = match (self.kill, self.transport) {
            (Some(kill), _) if !kill.client_left_first => DisconnectCause::Killed {
                reason: kill.reason,
                by: kill.by,
            },
            (_, Some(TransportEnd::Error(message))) => DisconnectCause::Error { message },
            _ => DisconnectCause::ByClient,
        };
        Ended {
            cause,
            sessions_closed: self.sessions_closed,
            forced: self.forced,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(5);

    fn kill(reason: &str, grace: Duration, listed: bool) -> Input {
        Input::Kill(KillOrder {
            reason: reason.into(),
            by: Some("test".into()),
            grace,
            // Only the order of deadlines matters to the phase; no clock is read.
            deadline: base() + grace,
            timed_by_sender: false,
            listed,
        })
    }

    fn base() -> Instant {
        use std::sync::OnceLock;
        static BASE: OnceLock<Instant> = OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    /// Runs `inputs` in order, each with the session count given beside it.
    fn run(mut phase: Phase, inputs: Vec<(Input, usize)>) -> (Phase, Vec<Action>) {
        let mut all = Vec::new();
        for (input, sessions) in inputs {
            let (next, actions) = phase.step(input, sessions);
            phase = next;
            all.extend(actions);
        }
        (phase, all)
    }

    fn end_sessions(reason: Option<&str>) -> Action {
        Action::EndSessions {
            reason: reason.map(str::to_string),
            grace: GRACE,
        }
    }

    #[test]
    fn a_kill_before_login_sends_the_goodbye_and_cuts_soon_after() {
        let (phase, actions) = Phase::Handshaking.step(kill("bye", GRACE, false), 0);
        assert_eq!(
            actions,
            vec![
                Action::After(GRACE, Timed::GraceElapsed),
                Action::NoticeClosing,
                end_sessions(Some("bye")),
                Action::Disconnect("bye".into()),
                Action::After(CUT_DELAY, Timed::Cut),
            ]
        );
        assert!(phase.is_closing() && phase.is_killing());
        let (phase, actions) = phase.step(Input::Cut, 0);
        assert_eq!(actions, vec![Action::Abort]);
        let (phase, actions) = phase.step(
            Input::TransportClosed {
                end: TransportEnd::Aborted,
                grace: GRACE,
            },
            0,
        );
        assert_eq!(actions, vec![Action::SessionsClientClosed, Action::Stop]);
        let ended = phase.ended().expect("over once the transport is gone");
        assert!(ended.forced, "a cut transport makes the end forced");
        assert!(matches!(&ended.cause, DisconnectCause::Killed { reason, .. } if reason == "bye"));
    }

    #[test]
    fn a_kill_closes_sessions_first_then_disconnects_then_waits_for_the_transport() {
        let (phase, actions) = run(
            Phase::Handshaking,
            vec![
                (Input::Authenticated, 0),
                (kill("maintenance", GRACE, true), 2),
            ],
        );
        // Listed by the supervisor already: no notice back; sessions live: no disconnect yet.
        assert_eq!(
            actions,
            vec![
                Action::After(GRACE, Timed::GraceElapsed),
                end_sessions(Some("maintenance")),
            ]
        );
        let (phase, actions) = phase.step(Input::SessionEnded { forced: false }, 1);
        assert_eq!(actions, vec![]);
        let (phase, actions) = phase.step(Input::SessionEnded { forced: false }, 0);
        assert_eq!(actions, vec![Action::Disconnect("maintenance".into())]);
        let (phase, actions) = phase.step(
            Input::TransportClosed {
                end: TransportEnd::Closed,
                grace: GRACE,
            },
            0,
        );
        assert_eq!(actions, vec![Action::SessionsClientClosed, Action::Stop]);
        let ended = phase.ended().expect("over");
        assert_eq!(ended.sessions_closed, 2);
        assert!(!ended.forced);
    }

    #[test]
    fn a_client_that_leaves_first_is_the_cause_even_if_a_kill_follows() {
        let transport_closed = Input::TransportClosed {
            end: TransportEnd::Closed,
            grace: GRACE,
        };
        let (phase, actions) = run(
            Phase::Open,
            vec![(transport_closed, 1), (kill("too late", GRACE, true), 1)],
        );
        assert_eq!(
            actions,
            vec![
                Action::NoticeClosing,
                end_sessions(None),
                Action::After(GRACE, Timed::GraceElapsed),
                Action::After(GRACE, Timed::GraceElapsed),
                end_sessions(Some("too late")),
            ],
            "no disconnect to a client that is gone"
        );
        let (phase, actions) = phase.step(Input::SessionEnded { forced: true }, 0);
        assert_eq!(actions, vec![Action::Stop]);
        let ended = phase.ended().expect("over");
        assert_eq!(ended.cause, DisconnectCause::ByClient);
        assert!(ended.forced, "a forced session makes the end forced");
    }

    #[test]
    fn a_later_kill_only_ever_brings_the_force_closer() {
        let short = Duration::from_secs(1);
        let (phase, _) = Phase::Open.step(kill("first", GRACE, true), 1);
        let (phase, longer) = phase.step(kill("longer", GRACE * 2, true), 1);
        assert_eq!(
            longer,
            vec![],
            "a later kill with a longer grace changes nothing"
        );
        let (phase, shorter) = phase.step(kill("shorter", short, true), 1);
        assert_eq!(
            shorter,
            vec![
                Action::EndSessions {
                    reason: Some("first".into()),
                    grace: short,
                },
                Action::After(short, Timed::GraceElapsed),
            ],
            "the first kill's reason stays; its grace shortens"
        );
        let (phase, _) = phase.step(Input::GraceElapsed, 1);
        let (_, after_force) = phase.step(kill("shortest", Duration::ZERO, true), 1);
        assert_eq!(
            after_force,
            vec![],
            "nothing is closer than a force under way"
        );
    }

    #[test]
    fn the_grace_running_out_forces_once_then_gives_up_twice_to_stop() {
        let (phase, _) = Phase::Open.step(kill("bye", GRACE, true), 1);
        let (phase, forced) = phase.step(Input::GraceElapsed, 1);
        assert_eq!(
            forced,
            vec![
                Action::ForceSessions,
                Action::Disconnect("bye".into()),
                Action::After(CUT_DELAY, Timed::Cut),
                Action::After(GIVE_UP_MARGIN, Timed::GiveUp),
            ]
        );
        let (phase, again) = phase.step(Input::GraceElapsed, 1);
        assert_eq!(again, vec![], "only the first grace to run out acts");
        let (phase, give_up) = phase.step(Input::GiveUp, 1);
        assert_eq!(
            give_up,
            vec![
                Action::KillSessions,
                Action::Abort,
                Action::After(GIVE_UP_MARGIN, Timed::GiveUp),
            ]
        );
        assert!(phase.is_giving_up());
        let (phase, stop) = phase.step(Input::GiveUp, 1);
        assert_eq!(
            stop,
            vec![Action::Stop],
            "a session that never stops does not hold it"
        );
        let ended = phase.ended().expect("over");
        assert!(ended.forced);
        let (phase, nothing) = phase.step(Input::GiveUp, 0);
        assert_eq!(nothing, vec![], "over is over");
        assert!(phase.ended().is_some());
    }

    #[test]
    fn a_transport_error_is_the_cause_when_nothing_killed_it() {
        let (phase, actions) = Phase::Open.step(
            Input::TransportClosed {
                end: TransportEnd::Error("reset".into()),
                grace: GRACE,
            },
            0,
        );
        assert_eq!(
            actions,
            vec![Action::NoticeClosing, end_sessions(None), Action::Stop]
        );
        assert_eq!(
            phase.ended().map(|e| e.cause.clone()),
            Some(DisconnectCause::Error {
                message: "reset".into()
            })
        );
    }

    #[test]
    fn only_a_connection_logging_in_takes_its_login() {
        assert_eq!(
            Phase::Handshaking.step(Input::Authenticated, 0).0,
            Phase::Open
        );
        let (closing, _) = Phase::Handshaking.step(kill("bye", GRACE, true), 1);
        let (closing, _) = closing.step(Input::Authenticated, 1);
        assert!(
            closing.is_closing(),
            "a login does not reopen a closing connection"
        );
        // Logged in while closing: a later kill does not cut at once, sessions wind down.
        let (phase, _) = Phase::Open.step(
            Input::TransportClosed {
                end: TransportEnd::Closed,
                grace: GRACE,
            },
            1,
        );
        let (_, actions) = phase.step(kill("bye", GRACE, true), 0);
        assert!(!actions.contains(&Action::After(CUT_DELAY, Timed::Cut)));
    }
}
