//! A model-based test of the whole tree: random sequences of connects, authentications, session
//! opens, sessions that end by themselves, clients that leave, and kills of every kind (one
//! connection, one session, an unknown ID, an ID already gone, the same ID twice at once, a kill
//! racing the client's own exit, kill-all, kill by user, kill by peer, the login grace, the
//! oldest pending login evicted, a login over `max_per_user`), applied both to the tree (over the
//! harness's fake links, on paused time) and to a plain model of what should be live.
//!
//! After every step, once what the step set going has finished (the kills answered, the events
//! of what must end seen), it checks:
//! - every kill was answered exactly once, with the right target, sessions and `forced` (an
//!   unknown or gone ID: `NotFound`); a kill set with one report per selected connection;
//! - the map (`List`) holds exactly the connections and sessions the model says are live, with
//!   their users and states, and the live actors (`Stats`) are exactly as many;
//! - the supervisor's admission counts (`Admission`) equal a recount of the model: connections
//!   in all, per source address (IPv4-mapped IPv6 counted as IPv4), per network, per user, and
//!   logins pending; every refusal names the limit the model says was reached.
//!
//! Every sequence ends with a drain (kill-all) after which the tree and the counts are empty.
//!
//! The generator is a seeded RNG; a failure prints the seed and the steps that led to it.
//! `MODEL_CASES` (default 200), `MODEL_STEPS` (default 40) and `MODEL_SEED` (the first seed;
//! `time` for one from the clock) change the run: docs/RELIABILITY.md has the long run's figures.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use sshvisor_actors::{
    ConnId, ConnState, Event, Filter, KillError, KillReport, Limits, PeerNet, Policy, SessionId,
    SupervisorMsg, Target,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The peers clients come from: two spellings of one IPv4 source, its /24 neighbour, another
/// IPv4 network, and two IPv6 addresses of one /64.
const PEERS: [&str; 6] = [
    "192.0.2.1:40001",
    "[::ffff:192.0.2.1]:40002",
    "192.0.2.2:40003",
    "198.51.100.9:40004",
    "[2001:db8::1]:40005",
    "[2001:db8::2]:40006",
];

const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// Small limits, so that every one of them is reached in a sequence of 40 steps.
fn limits() -> Limits {
    Limits {
        max_connections: 7,
        max_per_source: 2,
        max_per_prefix: 3,
        prefix_v4: 24,
        prefix_v6: 64,
        max_per_user: 2,
        max_unauthenticated: 2,
        max_sessions_per_connection: 2,
    }
}

const KILL_GRACE: Duration = Duration::from_secs(1);
const LOGIN_GRACE: Duration = Duration::from_secs(100);
/// How long a `Work::SlowToEnd` session takes to end after the hangup.
const SLOW: Duration = Duration::from_millis(300);
/// How late a `Client::HealthyAfter` transport reports its end.
const LATE: Duration = Duration::from_millis(50);
/// Kill graces drawn: shorter and longer than `SLOW`, never equal to a delay of the fakes.
const GRACES: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_secs(1),
    Duration::from_secs(5),
];

// ---------------------------------------------------------------------------------------------
// The generator: splitmix64, so that a seed is all a failure needs to be replayed.
// ---------------------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

// ---------------------------------------------------------------------------------------------
// The model.
// ---------------------------------------------------------------------------------------------

struct MSess {
    sess: Sess,
    remote: SessionRemote,
    work: Work,
}

struct MConn {
    conn: Conn,
    peer: SocketAddr,
    client: Client,
    user: Option<String>,
    admitted: Instant,
    sessions: Vec<MSess>,
}

impl MConn {
    fn pending(&self) -> bool {
        self.user.is_none()
    }

    /// Whether a kill with `grace` must end forced: a client that does not read, or a session
    /// that does not end within the grace.
    fn forced_by(&self, grace: Duration) -> bool {
        // A binding that fails at the disconnect crashes the connection actor: an end the
        // supervisor reports as forced.
        matches!(self.client, Client::Stalled | Client::PanicsOnDisconnect)
            || self.sessions.iter().any(|s| s.forced_by(grace))
    }

    /// The sessions its kill report must say were closed, also when its connection actor
    /// crashed at the disconnect after they had closed (the supervisor counts them then).
    fn closes(&self) -> Option<usize> {
        Some(self.sessions.len())
    }

    /// Whether a kill of it needs time to pass (a timer) before it can end: while time stands
    /// still, it stays in the map.
    fn slow_to_end(&self) -> bool {
        self.client != Client::Healthy || self.sessions.iter().any(|s| s.work != Work::Healthy)
    }
}

impl MSess {
    fn forced_by(&self, grace: Duration) -> bool {
        match self.work {
            Work::Stubborn => true,
            Work::SlowToEnd(d) => grace < d,
            _ => false,
        }
    }
}

/// What one kill expects of its answer.
enum Expect {
    /// One report for this target, with these sessions closed and (when known) forced or not.
    Report {
        target: Target,
        sessions: Option<usize>,
        forced: Option<bool>,
    },
    NotFound(Target),
    /// One report per connection of the set: (connection, sessions, forced).
    Set(BTreeMap<ConnId, (Option<usize>, bool)>),
}

enum Answer {
    One(Result<Result<KillReport, KillError>, String>),
    Set(Result<Vec<KillReport>, String>),
}

/// An event a step waits for besides the ends.
#[derive(Debug, PartialEq, Eq)]
enum Awaited {
    Authenticated(ConnId, String),
    Started(SessionId),
}

struct Model {
    conns: Vec<MConn>,
    /// IDs that were live once and are gone: a kill of one must answer `NotFound`.
    gone: Vec<Target>,
    /// Connections being killed in this step (peer, user): they count against the limits until
    /// they are gone (all are by the end of the step).
    closing: Vec<(SocketAddr, Option<String>)>,
    /// Kills under way, each with what its answer must be.
    kills: Vec<(String, Expect, JoinHandle<Answer>)>,
    /// Connections and sessions the current step must end (their events are awaited).
    ending_conns: HashSet<ConnId>,
    ending_sessions: HashSet<SessionId>,
    /// Other events the current step must produce before its checks.
    awaited: Vec<Awaited>,
    next_label: usize,
}

fn ip(peer: SocketAddr) -> IpAddr {
    peer.ip().to_canonical()
}

fn net(peer: SocketAddr) -> String {
    match ip(peer) {
        IpAddr::V4(v4) => {
            let masked = u32::from(v4) & (u32::MAX << (32 - limits().prefix_v4));
            format!(
                "{}/{}",
                std::net::Ipv4Addr::from(masked),
                limits().prefix_v4
            )
        }
        IpAddr::V6(v6) => {
            let masked = u128::from(v6) & (u128::MAX << (128 - limits().prefix_v6));
            format!(
                "{}/{}",
                std::net::Ipv6Addr::from(masked),
                limits().prefix_v6
            )
        }
    }
}

impl Model {
    fn label(&mut self, what: &str) -> String {
        self.next_label += 1;
        format!("{what}{}", self.next_label)
    }

    fn pending_count(&self) -> usize {
        self.conns.iter().filter(|c| c.pending()).count()
    }

    /// The connection at `i` is to end: its events are awaited, and it leaves the model.
    fn end_conn(&mut self, i: usize) -> MConn {
        let c = self.conns.remove(i);
        self.ending_conns.insert(c.conn.id);
        self.gone.push(Target::Connection(c.conn.id));
        for s in &c.sessions {
            self.ending_sessions.insert(s.sess.id);
            self.gone.push(Target::Session(s.sess.id));
        }
        c
    }

    fn end_session(&mut self, ci: usize, si: usize) -> MSess {
        let s = self.conns[ci].sessions.remove(si);
        self.ending_sessions.insert(s.sess.id);
        self.gone.push(Target::Session(s.sess.id));
        s
    }

    /// Every (connection, session) index pair.
    fn sessions(&self) -> Vec<(usize, usize)> {
        self.conns
            .iter()
            .enumerate()
            .flat_map(|(ci, c)| (0..c.sessions.len()).map(move |si| (ci, si)))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Sending kills: each is in the supervisor's queue when the function returns (so a step can
// order what follows after it), and answered whenever the tree answers.
// ---------------------------------------------------------------------------------------------

/// Awaits one reply: `Err` says why there was none (the port dropped, or nothing in time).
fn await_reply<T: Send + 'static>(
    rx: ractor::concurrency::OneshotReceiver<T>,
    wrap: fn(Result<T, String>) -> Answer,
) -> JoinHandle<Answer> {
    tokio::spawn(async move {
        let answer = match tokio::time::timeout(WAIT, rx).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err("the reply port was dropped unanswered".to_string()),
            Err(_) => Err(format!("no answer within {WAIT:?}")),
        };
        wrap(answer)
    })
}

fn spawn_kill(h: &Harness, target: Target, grace: Duration) -> JoinHandle<Answer> {
    let (tx, rx) = ractor::concurrency::oneshot();
    h.sup
        .cast(SupervisorMsg::Kill {
            target,
            reason: "model".into(),
            grace,
            by: Some("model".into()),
            reply: tx.into(),
        })
        .expect("the supervisor is alive");
    await_reply(rx, Answer::One)
}

fn spawn_kill_where(h: &Harness, filter: Option<Filter>, grace: Duration) -> JoinHandle<Answer> {
    let (tx, rx) = ractor::concurrency::oneshot();
    let reply = tx.into();
    let msg = match filter {
        Some(filter) => SupervisorMsg::KillWhere {
            filter,
            reason: "model".into(),
            grace,
            by: Some("model".into()),
            reply,
        },
        None => SupervisorMsg::KillAll {
            reason: "model".into(),
            grace,
            by: Some("model".into()),
            reply,
        },
    };
    h.sup.cast(msg).expect("the supervisor is alive");
    await_reply(rx, Answer::Set)
}

/// Checks one kill's answer against what the model expects of it.
fn check_answer(what: &str, expect: &Expect, answer: Answer) {
    match (expect, answer) {
        (
            Expect::Report {
                target,
                sessions,
                forced,
            },
            Answer::One(Ok(Ok(report))),
        ) => {
            assert_eq!(report.target, *target, "{what}: report of the wrong target");
            if let Some(sessions) = sessions {
                assert_eq!(
                    report.sessions_closed, *sessions,
                    "{what}: sessions closed in {report:?}"
                );
            }
            if let Some(forced) = forced {
                assert_eq!(report.forced, *forced, "{what}: forced in {report:?}");
            }
        }
        (Expect::NotFound(target), Answer::One(Ok(Err(e)))) => {
            assert_eq!(e, KillError::NotFound(*target), "{what}");
        }
        (Expect::Set(expected), Answer::Set(Ok(reports))) => {
            let mut got = BTreeMap::new();
            for r in &reports {
                let Target::Connection(conn) = r.target else {
                    panic!("{what}: a set's report names a session: {r:?}");
                };
                assert!(
                    got.insert(conn, (Some(r.sessions_closed), r.forced))
                        .is_none(),
                    "{what}: two reports for {conn}: {reports:?}"
                );
            }
            // Where the model does not know the sessions closed, neither is compared.
            for (conn, (sessions, _)) in expected {
                if let (None, Some(got)) = (sessions, got.get_mut(conn)) {
                    got.0 = None;
                }
            }
            assert_eq!(&got, expected, "{what}: (sessions, forced) per connection");
        }
        (_, Answer::One(Ok(other))) => panic!("{what}: unexpected answer {other:?}"),
        (_, Answer::Set(Ok(other))) => panic!("{what}: unexpected answer {other:?}"),
        (_, Answer::One(Err(e)) | Answer::Set(Err(e))) => panic!("{what}: not answered: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// One step.
// ---------------------------------------------------------------------------------------------

/// A new connection from a random peer: admitted or refused as the model's counts say.
async fn connect(h: &Harness, m: &mut Model, rng: &mut Rng) -> String {
    let peer: SocketAddr = rng.pick(&PEERS).parse().unwrap();
    let client = match rng.below(20) {
        0..=11 => Client::Healthy,
        12..=15 => Client::HealthyAfter(LATE),
        16..=18 => Client::Stalled,
        _ => Client::PanicsOnDisconnect,
    };
    let l = limits();
    // Connections being killed still count, by their peer.
    let peers: Vec<SocketAddr> = m
        .conns
        .iter()
        .map(|c| c.peer)
        .chain(m.closing.iter().map(|(peer, _)| *peer))
        .collect();
    let per_source = peers.iter().filter(|p| ip(**p) == ip(peer)).count();
    let per_net = peers.iter().filter(|p| net(**p) == net(peer)).count();
    let now = Instant::now();
    let oldest_pending = m
        .conns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.pending())
        .min_by_key(|(_, c)| (c.admitted, c.conn.id))
        .map(|(i, c)| (i, c.admitted));
    let (admit, evict, limit) = if peers.len() >= l.max_connections {
        (false, None, "max_connections")
    } else if per_source >= l.max_per_source {
        (false, None, "max_per_source")
    } else if per_net >= l.max_per_prefix {
        (false, None, "max_per_prefix")
    } else if m.pending_count() < l.max_unauthenticated {
        (true, None, "")
    } else {
        match oldest_pending {
            Some((i, admitted))
                if now.duration_since(admitted) >= sshvisor_actors::MIN_PENDING_AGE =>
            {
                (true, Some(i), "")
            }
            _ => (false, None, "max_unauthenticated"),
        }
    };
    let label = m.label("c");
    let result = h.connect_from(&label, client, peer).await;
    match (result, admit) {
        (Ok(conn), true) => {
            let what = format!("connect {label} from {peer} ({client:?}): admitted");
            let what = match evict {
                Some(i) => {
                    let victim = m.end_conn(i);
                    format!("{what}, evicting {}", victim.conn.label)
                }
                None => what,
            };
            m.conns.push(MConn {
                conn,
                peer,
                client,
                user: None,
                admitted: now,
                sessions: Vec::new(),
            });
            what
        }
        (Err(refusal), false) => {
            let text = refusal.to_string();
            assert!(
                text.starts_with(limit),
                "connect from {peer}: refused with {text:?}, expected {limit}"
            );
            format!("connect {label} from {peer}: refused ({text})")
        }
        (Ok(_), false) => panic!("connect from {peer}: admitted over {limit}"),
        (Err(refusal), true) => panic!("connect from {peer}: refused ({refusal})"),
    }
}

/// A pending login completes as a random user: over `max_per_user`, it is killed.
fn authenticate(m: &mut Model, rng: &mut Rng) -> Option<String> {
    let pending: Vec<usize> = (0..m.conns.len())
        .filter(|&i| m.conns[i].pending())
        .collect();
    if pending.is_empty() {
        return None;
    }
    let i = rng.pick(&pending);
    let user = rng.pick(&USERS);
    // Connections being killed still count, by their user.
    let same = m
        .conns
        .iter()
        .map(|c| &c.user)
        .chain(m.closing.iter().map(|(_, user)| user))
        .filter(|u| u.as_deref() == Some(user))
        .count();
    m.conns[i].conn.authenticate(user);
    m.awaited
        .push(Awaited::Authenticated(m.conns[i].conn.id, user.into()));
    let label = m.conns[i].conn.label.clone();
    if same >= limits().max_per_user {
        m.end_conn(i);
        Some(format!(
            "authenticate {label} as {user}: over max_per_user, killed"
        ))
    } else {
        m.conns[i].user = Some(user.into());
        Some(format!("authenticate {label} as {user}"))
    }
}

/// Draws a step, applies it to the tree and the model, and says what it was.
async fn step(h: &Harness, m: &mut Model, rng: &mut Rng) -> Option<String> {
    let roll = rng.below(100);
    let what = match roll {
        // Connect.
        0..=25 => connect(h, m, rng).await,
        // Authenticate a pending login.
        26..=38 => authenticate(m, rng)?,
        // A kill under way while a new connection comes or a login completes: what is being
        // killed still counts against the limits until it is gone, except as a pending login.
        39..=42 => {
            let connecting = rng.chance(50);
            let victims: Vec<usize> = (0..m.conns.len())
                .filter(|&i| connecting || m.conns[i].slow_to_end())
                .collect();
            if victims.is_empty() {
                return None;
            }
            let i = rng.pick(&victims);
            let grace = rng.pick(&GRACES);
            let c = m.end_conn(i);
            let target = Target::Connection(c.conn.id);
            let expect = Expect::Report {
                target,
                sessions: c.closes(),
                forced: Some(c.forced_by(grace)),
            };
            let what = format!("kill {} (grace {grace:?})", c.conn.label);
            m.kills
                .push((what.clone(), expect, spawn_kill(h, target, grace)));
            m.closing.push((c.peer, c.user.clone()));
            let then = if connecting {
                connect(h, m, rng).await
            } else {
                authenticate(m, rng).unwrap_or_else(|| "no login to complete".into())
            };
            format!("{what}, and while it is under way: {then}")
        }
        // Open (and start) a session.
        43..=59 => {
            if m.conns.is_empty() {
                return None;
            }
            let i = rng.below(m.conns.len());
            let work = match rng.below(4) {
                0 | 1 => Work::Healthy,
                2 => Work::SlowToEnd(SLOW),
                _ => Work::Stubborn,
            };
            let label = m.label(&format!("{}/s", m.conns[i].conn.label));
            let full = m.conns[i].sessions.len() >= limits().max_sessions_per_connection;
            match h.try_open_remote(&m.conns[i].conn, &label, work).await {
                Ok((sess, remote)) => {
                    assert!(
                        !full,
                        "open {label}: admitted over max_sessions_per_connection"
                    );
                    m.awaited.push(Awaited::Started(sess.id));
                    m.conns[i].sessions.push(MSess { sess, remote, work });
                    format!("open {label} ({work:?})")
                }
                Err(why) => {
                    assert!(
                        full && why.contains("max_sessions_per_connection"),
                        "open {label}: refused ({why})"
                    );
                    format!("open {label}: refused ({why})")
                }
            }
        }
        // A session's work ends by itself.
        60..=65 => {
            let all = m.sessions();
            if all.is_empty() {
                return None;
            }
            let (ci, si) = rng.pick(&all);
            let s = m.end_session(ci, si);
            assert!(s.remote.finish(0), "the session had started");
            format!("session {} exits", s.sess.label)
        }
        // The client leaves.
        66..=70 => {
            if m.conns.is_empty() {
                return None;
            }
            let i = rng.below(m.conns.len());
            let c = m.end_conn(i);
            c.conn.client_closes();
            format!("client of {} leaves", c.conn.label)
        }
        // Kill a connection.
        71..=76 => {
            if m.conns.is_empty() {
                return None;
            }
            let i = rng.below(m.conns.len());
            let grace = rng.pick(&GRACES);
            let c = m.end_conn(i);
            let target = Target::Connection(c.conn.id);
            let what = format!("kill {} (grace {grace:?})", c.conn.label);
            let expect = Expect::Report {
                target,
                sessions: c.closes(),
                forced: Some(c.forced_by(grace)),
            };
            m.kills
                .push((what.clone(), expect, spawn_kill(h, target, grace)));
            what
        }
        // Kill a session.
        77..=80 => {
            let all = m.sessions();
            if all.is_empty() {
                return None;
            }
            let (ci, si) = rng.pick(&all);
            let grace = rng.pick(&GRACES);
            let s = m.end_session(ci, si);
            let target = Target::Session(s.sess.id);
            let what = format!("kill session {} (grace {grace:?})", s.sess.label);
            let expect = Expect::Report {
                target,
                sessions: Some(1),
                forced: Some(s.forced_by(grace)),
            };
            m.kills
                .push((what.clone(), expect, spawn_kill(h, target, grace)));
            what
        }
        // Kill an ID that names nothing live: never seen, or gone.
        81..=82 => {
            let target = if !m.gone.is_empty() && rng.chance(50) {
                rng.pick(&m.gone)
            } else if rng.chance(50) {
                Target::Connection(ConnId::new_random())
            } else {
                Target::Session(SessionId::new_random())
            };
            let what = format!("kill unknown {target}");
            let expect = Expect::NotFound(target);
            m.kills
                .push((what.clone(), expect, spawn_kill(h, target, KILL_GRACE)));
            what
        }
        // Two kills of one ID at once (a connection or a session), with two graces.
        83..=86 => {
            let all = m.sessions();
            let (g1, g2) = (rng.pick(&GRACES), rng.pick(&GRACES));
            let grace = g1.min(g2);
            let (target, sessions, forced, label) = if !all.is_empty() && rng.chance(40) {
                let (ci, si) = rng.pick(&all);
                let s = m.end_session(ci, si);
                let forced = s.forced_by(grace);
                (Target::Session(s.sess.id), Some(1), forced, s.sess.label)
            } else if !m.conns.is_empty() {
                let i = rng.below(m.conns.len());
                let c = m.end_conn(i);
                let forced = c.forced_by(grace);
                (
                    Target::Connection(c.conn.id),
                    c.closes(),
                    forced,
                    c.conn.label,
                )
            } else {
                return None;
            };
            let what = format!("kill {label} twice (graces {g1:?}, {g2:?})");
            for (n, g) in [(1, g1), (2, g2)] {
                let expect = Expect::Report {
                    target,
                    sessions,
                    forced: Some(forced),
                };
                m.kills
                    .push((format!("{what} #{n}"), expect, spawn_kill(h, target, g)));
            }
            what
        }
        // A kill racing the client's own exit: answered once all the same.
        87..=88 => {
            if m.conns.is_empty() {
                return None;
            }
            let i = rng.below(m.conns.len());
            let grace = rng.pick(&GRACES);
            let c = m.end_conn(i);
            let target = Target::Connection(c.conn.id);
            let kill_first = rng.chance(50);
            if !kill_first {
                c.conn.client_closes();
            }
            let handle = spawn_kill(h, target, grace);
            if kill_first {
                tokio::task::yield_now().await;
                c.conn.client_closes();
            }
            let what = format!(
                "kill {} racing its client's exit ({})",
                c.conn.label,
                if kill_first {
                    "kill first"
                } else {
                    "exit first"
                }
            );
            let expect = Expect::Report {
                target,
                sessions: c.closes(),
                forced: None,
            };
            m.kills.push((what.clone(), expect, handle));
            what
        }
        // Kill a set: all, by user, by peer (address or network).
        89..=93 => {
            let grace = rng.pick(&GRACES);
            let (filter, what) = match rng.below(4) {
                0 => (None, "kill all".to_string()),
                1 => {
                    let user = rng.pick(&USERS);
                    (
                        Some(Filter {
                            user: Some(user.into()),
                            ..Filter::default()
                        }),
                        format!("kill where user = {user}"),
                    )
                }
                _ => {
                    let peer: SocketAddr = rng.pick(&PEERS).parse().unwrap();
                    let text = if rng.chance(50) {
                        ip(peer).to_string()
                    } else {
                        net(peer)
                    };
                    let net: PeerNet = text.parse().unwrap();
                    (
                        Some(Filter {
                            peer: Some(net),
                            ..Filter::default()
                        }),
                        format!("kill where peer in {text}"),
                    )
                }
            };
            let selected: Vec<usize> = (0..m.conns.len())
                .filter(|&i| {
                    let c = &m.conns[i];
                    match &filter {
                        None => true,
                        Some(f) => {
                            f.user.as_ref().is_none_or(|u| c.user.as_ref() == Some(u))
                                && f.peer.is_none_or(|n| n.contains(c.peer.ip()))
                        }
                    }
                })
                .collect();
            let mut expected = BTreeMap::new();
            for &i in selected.iter().rev() {
                let c = m.end_conn(i);
                expected.insert(c.conn.id, (c.closes(), c.forced_by(grace)));
            }
            let what = format!("{what} (grace {grace:?}): {} selected", expected.len());
            m.kills.push((
                what.clone(),
                Expect::Set(expected),
                spawn_kill_where(h, filter, grace),
            ));
            what
        }
        // Time passes: pending logins past their grace are killed, others age.
        _ => {
            let d = rng.pick(&[
                Duration::from_millis(200),
                Duration::from_millis(600),
                Duration::from_secs(30),
                Duration::from_secs(101),
            ]);
            tokio::time::sleep(d).await;
            format!("{d:?} pass")
        }
    };
    Some(what)
}

// ---------------------------------------------------------------------------------------------
// Settling and checking.
// ---------------------------------------------------------------------------------------------

/// Pending logins whose grace has run out by now are being killed by the tree: the model
/// follows.
fn login_grace_kills(m: &mut Model, trace: &mut Vec<String>) {
    let now = Instant::now();
    while let Some(i) = m
        .conns
        .iter()
        .position(|c| c.pending() && c.admitted + LOGIN_GRACE <= now)
    {
        let c = m.end_conn(i);
        trace.push(format!("  (login grace ends {})", c.conn.label));
    }
}

/// Waits until what the step set going is over, then checks the tree against the model.
async fn settle_and_check(h: &mut Harness, m: &mut Model, trace: &mut Vec<String>) {
    login_grace_kills(m, trace);
    // Every kill is answered exactly once, as expected.
    for (what, expect, handle) in std::mem::take(&mut m.kills) {
        let answer = tokio::time::timeout(WAIT, handle)
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within {WAIT:?}"))
            .expect("the kill task");
        check_answer(&what, &expect, answer);
    }
    // Every end the model expects is seen; no other end happens.
    loop {
        login_grace_kills(m, trace);
        if m.ending_conns.is_empty() && m.ending_sessions.is_empty() && m.awaited.is_empty() {
            break;
        }
        let event = h.probe.within(WAIT).await.unwrap_or_else(|| {
            panic!(
                "still waiting for conns {:?}, sessions {:?}, events {:?}",
                m.ending_conns, m.ending_sessions, m.awaited
            )
        });
        match &event {
            Event::Disconnected { conn, .. } if !m.ending_conns.remove(conn) => {
                // The login grace may have run out while the step's kills took their time.
                login_grace_kills(m, trace);
                assert!(
                    m.ending_conns.remove(conn),
                    "{conn} ended, which the model did not expect: {event:?}"
                );
            }
            Event::SessionClosed { session, .. } if !m.ending_sessions.remove(session) => {
                login_grace_kills(m, trace);
                assert!(
                    m.ending_sessions.remove(session),
                    "session {session} ended, which the model did not expect: {event:?}"
                );
            }
            Event::Authenticated { conn, user, .. } => {
                let seen = Awaited::Authenticated(*conn, user.clone());
                m.awaited.retain(|a| *a != seen);
            }
            Event::SessionStarted { session, .. } => {
                m.awaited.retain(|a| *a != Awaited::Started(*session));
            }
            _ => {}
        }
    }

    m.closing.clear();

    // The map equals the model.
    let listed = h.list().await;
    let mut want: BTreeMap<ConnId, (Option<String>, ConnState, Vec<SessionId>)> = BTreeMap::new();
    for c in &m.conns {
        let state = if c.user.is_some() {
            ConnState::Authenticated
        } else {
            ConnState::Handshaking
        };
        let mut sessions: Vec<SessionId> = c.sessions.iter().map(|s| s.sess.id).collect();
        sessions.sort();
        want.insert(c.conn.id, (c.user.clone(), state, sessions));
    }
    let got: BTreeMap<ConnId, (Option<String>, ConnState, Vec<SessionId>)> = listed
        .iter()
        .map(|c| {
            let mut sessions: Vec<SessionId> = c.sessions.iter().map(|s| s.id).collect();
            sessions.sort();
            (c.id, (c.user.clone(), c.state, sessions))
        })
        .collect();
    assert_eq!(got, want, "the map (List) differs from the model");

    // The live actors are as many as the map says.
    let stats = h.stats().await;
    let sessions: usize = m.conns.iter().map(|c| c.sessions.len()).sum();
    assert_eq!(
        (
            stats.connections,
            stats.connection_actors,
            stats.sessions,
            stats.session_actors,
            stats.waiting_kills
        ),
        (m.conns.len(), m.conns.len(), sessions, sessions, 0),
        "(connections, connection actors, sessions, session actors, waiting kills): {stats:?}"
    );

    // The admission counts equal a recount.
    let counts = h.admission().await;
    let mut recount = sshvisor_actors::supervisor::AdmissionCounts {
        connections: m.conns.len(),
        unauthenticated: m.pending_count(),
        ..Default::default()
    };
    for c in &m.conns {
        *recount.per_source.entry(ip(c.peer)).or_insert(0) += 1;
        *recount.per_prefix.entry(net(c.peer)).or_insert(0) += 1;
        if let Some(user) = &c.user {
            *recount.per_user.entry(user.clone()).or_insert(0) += 1;
        }
    }
    assert_eq!(
        counts, recount,
        "the admission counts differ from a recount"
    );
}

/// What one sequence did, for the figures.
#[derive(Default)]
struct Tally {
    steps: usize,
    kills: usize,
    refusals: usize,
    ends: usize,
}

/// Runs one sequence of `steps` steps from `seed`; `trace` gets each step as it is applied.
async fn sequence(seed: u64, steps: usize, trace: Arc<Mutex<Vec<String>>>) -> Tally {
    let policy = Policy {
        kill_grace: KILL_GRACE,
        login_grace: Some(LOGIN_GRACE),
        idle: None,
        idle_warning: None,
        max_lifetime: None,
        session_idle: None,
        limits: limits(),
    };
    let mut h = Harness::start_with(None, policy).await;
    let mut m = Model {
        conns: Vec::new(),
        gone: Vec::new(),
        closing: Vec::new(),
        kills: Vec::new(),
        ending_conns: HashSet::new(),
        ending_sessions: HashSet::new(),
        awaited: Vec::new(),
        next_label: 0,
    };
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    let mut local = Vec::new();
    for n in 0..steps {
        // A step that finds nothing to act on is drawn again.
        let what = loop {
            if let Some(what) = step(&h, &mut m, &mut rng).await {
                break what;
            }
        };
        tally.steps += 1;
        tally.kills += m.kills.len();
        tally.refusals += usize::from(what.contains("refused") || what.contains("max_per_user"));
        tally.ends += m.ending_conns.len() + m.ending_sessions.len();
        trace.lock().unwrap().push(format!("{n:>2}: {what}"));
        settle_and_check(&mut h, &mut m, &mut local).await;
        trace.lock().unwrap().append(&mut local);
    }
    // Drain: everything goes, and the tree and its counts are empty.
    let mut expected = BTreeMap::new();
    while !m.conns.is_empty() {
        let c = m.end_conn(0);
        expected.insert(c.conn.id, (c.closes(), c.forced_by(KILL_GRACE)));
    }
    trace
        .lock()
        .unwrap()
        .push(format!("drain: {} connections", expected.len()));
    m.kills.push((
        "drain".into(),
        Expect::Set(expected),
        spawn_kill_where(&h, None, KILL_GRACE),
    ));
    tally.kills += 1;
    settle_and_check(&mut h, &mut m, &mut local).await;
    assert!(h.list().await.is_empty());
    assert_eq!(
        h.admission().await,
        sshvisor_actors::supervisor::AdmissionCounts::default()
    );
    h.sup.stop(None);
    tally
}

fn env(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if v == "time" => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(default),
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        Err(_) => default,
    }
}

#[test]
fn random_sequences_keep_kills_answered_once_the_map_true_and_the_counts_exact() {
    let cases = env("MODEL_CASES", 200);
    let steps = env("MODEL_STEPS", 40) as usize;
    let first = env("MODEL_SEED", 0x5EED_0014);
    // The fake binding's panics at the disconnect are part of the model: not worth a backtrace
    // each (which costs more than the rest of the step). Any other panic is reported as usual.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info.payload().downcast_ref::<&str>().copied().unwrap_or("");
        if !text.starts_with("fake binding") {
            report(info)
        }
    }));
    let started = std::time::Instant::now();
    let mut total = Tally::default();
    for case in 0..cases {
        let seed = first.wrapping_add(case);
        let trace = Arc::new(Mutex::new(Vec::new()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime");
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
            runtime.block_on(sequence(seed, steps, trace.clone()))
        }));
        match run {
            Ok(tally) => {
                if std::env::var_os("MODEL_TRACE").is_some() {
                    println!("seed {seed}:\n{}", trace.lock().unwrap().join("\n"));
                }
                total.steps += tally.steps;
                total.kills += tally.kills;
                total.refusals += tally.refusals;
                total.ends += tally.ends;
            }
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let steps_seen = trace.lock().unwrap().join("\n");
                panic!(
                    "sequence with seed {seed} failed: {why}\nsteps:\n{steps_seen}\n\
                     replay: MODEL_SEED={seed} MODEL_CASES=1 MODEL_STEPS={steps} \
                     cargo test -p sshvisor-actors --test model"
                );
            }
        }
    }
    println!(
        "model: {cases} sequences from seed {first}, {} steps, {} kills answered, {} refusals, \
         {} ends awaited, all checks held, in {:.1?}",
        total.steps,
        total.kills,
        total.refusals,
        total.ends,
        started.elapsed()
    );
}
