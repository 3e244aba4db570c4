//! The actor harness: fake links, an event probe and helpers to drive the tree with messages.
//!
//! No sockets, no russh. Every call the tree makes to the outside world lands in one ordered
//! [`Log`], and every lifecycle event it publishes lands in a [`Probe`], so tests can assert on
//! the order in which things happened. Waits are bounded by [`WAIT`] (tokio time: with
//! `start_paused = true` a wait that never ends fails at once in real time).

// Each test binary uses a subset of the harness.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, ActorStatus, OutputPort, RpcReplyPort,
};
use sshvisor_actors::{
    spawn_supervisor, ConnId, ConnectionInfo, ConnectionLink, ConnectionMsg, EndScope, Event,
    KillError, KillReport, Policy, SessionEvents, SessionExit, SessionId, SessionLink, SessionMsg,
    SessionRequest, SupervisorArgs, SupervisorMsg, Target, TransportEnd, Winding,
};
use tokio::sync::{mpsc, watch};

mod kit;

use kit::TransportSlot;
pub use kit::{replied, WAIT};

/// True once an actor's processing loop is over.
pub fn is_stopped(status: ActorStatus) -> bool {
    matches!(status, ActorStatus::Stopping | ActorStatus::Stopped)
}

// ---------------------------------------------------------------------------------------------
// The ordered log of everything the tree did to the outside world.
// ---------------------------------------------------------------------------------------------

/// One call made by the tree on a fake link (or one thing a fake link reported back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// `ConnectionLink::disconnect(reason)`.
    Disconnect { conn: String, reason: String },
    /// `ConnectionLink::abort()`.
    Abort { conn: String },
    /// The fake transport ended and told the connection actor (`TransportClosed`).
    TransportEnd { conn: String, end: TransportEnd },
    /// `SessionLink::start`.
    Start { session: String },
    /// `SessionLink::data`.
    Data { session: String, data: Vec<u8> },
    /// `SessionLink::eof`.
    Eof { session: String },
    /// `SessionLink::terminate(scope)`.
    Terminate { session: String, scope: EndScope },
    /// `SessionLink::force`.
    Force { session: String },
    /// The fake work ended and called `SessionEvents::finished`.
    Finished { session: String, exit: SessionExit },
    /// `SessionLink::notify(text)`: a line shown at the session's terminal.
    Notify { session: String, text: String },
    /// The session link was dropped (its actor is gone).
    Dropped { session: String },
}

/// The shared, ordered log. Cheap to clone.
#[derive(Clone)]
pub struct Log {
    entries: Arc<Mutex<Vec<LogEvent>>>,
    changed: Arc<watch::Sender<()>>,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            entries: Arc::default(),
            changed: Arc::new(watch::channel(()).0),
        }
    }
}

impl Log {
    pub fn push(&self, event: LogEvent) {
        self.entries.lock().unwrap().push(event);
        self.changed.send_replace(());
    }

    pub fn snapshot(&self) -> Vec<LogEvent> {
        self.entries.lock().unwrap().clone()
    }

    /// The index of the only entry equal to `event`; fails if there is none or several.
    pub fn only(&self, event: &LogEvent) -> usize {
        let entries = self.snapshot();
        let found: Vec<usize> = (0..entries.len())
            .filter(|&i| entries[i] == *event)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected {event:?} exactly once in {entries:#?}"
        );
        found[0]
    }

    pub fn count(&self, pred: impl Fn(&LogEvent) -> bool) -> usize {
        self.snapshot().iter().filter(|e| pred(e)).count()
    }

    /// Waits until an entry matching `pred` is in the log.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&LogEvent) -> bool) {
        let mut rx = self.changed.subscribe();
        let found = async {
            loop {
                if self.snapshot().iter().any(&pred) {
                    return;
                }
                rx.changed().await.expect("the log lives as long as self");
            }
        };
        tokio::time::timeout(WAIT, found)
            .await
            .unwrap_or_else(|_| panic!("{what} not logged; log: {:#?}", self.snapshot()));
    }
}

// ---------------------------------------------------------------------------------------------
// The fake connection link.
// ---------------------------------------------------------------------------------------------

/// How the fake client on the other end of a connection behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// Honours the disconnect: the transport ends (`TransportEnd::Closed`), reported from within
    /// `disconnect` itself (the tightest interleaving the tree may see).
    Healthy,
    /// Honours the disconnect, and the transport end is reported from a separate task after
    /// this much (virtual) time, as a real network would.
    HealthyAfter(Duration),
    /// Stopped reading: the disconnect is never processed; only `abort` ends the transport
    /// (`TransportEnd::Aborted`).
    Stalled,
    /// The binding panics when asked to disconnect (crashes the connection actor).
    PanicsOnDisconnect,
}

struct ConnShared {
    label: String,
    log: Log,
    slot: TransportSlot,
}

impl ConnShared {
    /// Ends the transport once, logged; later ends are ignored.
    fn end(&self, end: TransportEnd) {
        self.slot.end(end, |end| {
            self.log.push(LogEvent::TransportEnd {
                conn: self.label.clone(),
                end: end.clone(),
            })
        });
    }
}

/// The `ConnectionLink` given to the tree.
pub struct FakeConnLink {
    client: Client,
    shared: Arc<ConnShared>,
    /// No channel data ever moves on a fake connection: it has been idle since it was made.
    created: tokio::time::Instant,
}

/// The test's side of a fake connection: its ID, its actor, and the client's own moves.
#[derive(Clone)]
pub struct Conn {
    pub label: String,
    pub id: ConnId,
    pub actor: ActorRef<ConnectionMsg>,
    shared: Arc<ConnShared>,
}

impl Conn {
    /// The client goes away by itself (TCP end): the transport reports `Closed`.
    pub fn client_closes(&self) {
        self.shared.end(TransportEnd::Closed);
    }

    /// The client authenticates (what the russh handler would report).
    pub fn authenticate(&self, user: &str) {
        kit::authenticate(&self.actor, user.to_string());
    }
}

impl ConnectionLink for FakeConnLink {
    fn disconnect(&self, reason: &str) {
        self.shared.log.push(LogEvent::Disconnect {
            conn: self.shared.label.clone(),
            reason: reason.to_string(),
        });
        match self.client {
            Client::Healthy => self.shared.end(TransportEnd::Closed),
            Client::HealthyAfter(latency) => {
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(latency).await;
                    shared.end(TransportEnd::Closed);
                });
            }
            Client::Stalled => {}
            Client::PanicsOnDisconnect => panic!("fake binding: disconnect failed"),
        }
    }

    fn abort(&self) {
        self.shared.log.push(LogEvent::Abort {
            conn: self.shared.label.clone(),
        });
        self.shared.end(TransportEnd::Aborted);
    }

    fn idle_for(&self) -> Option<Duration> {
        Some(self.created.elapsed())
    }
}

// ---------------------------------------------------------------------------------------------
// The fake session link.
// ---------------------------------------------------------------------------------------------

/// How the fake work behind a session behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Ends soon after `terminate` (SIGHUP) and after `force` (SIGKILL).
    Healthy,
    /// Ends this long (virtual time) after `terminate`.
    SlowToEnd(Duration),
    /// Ignores `terminate`; only `force` ends it.
    Stubborn,
    /// Panics when the client sends data.
    PanicsOnData,
}

/// The `SessionLink` given to the tree.
pub struct FakeSessionLink {
    label: String,
    work: Work,
    log: Log,
    events: Option<SessionEvents>,
}

impl FakeSessionLink {
    /// The work ends after `delay`: logs `Finished`, then tells the session actor.
    fn finish_later(&self, delay: Duration, exit: SessionExit) -> Winding {
        let Some(events) = self.events.clone() else {
            // Never started: nothing runs, the session may stop now.
            return Winding::Done;
        };
        let log = self.log.clone();
        let session = self.label.clone();
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            log.push(LogEvent::Finished {
                session,
                exit: exit.clone(),
            });
            events.finished(exit);
        });
        Winding::Pending
    }
}

impl SessionLink for FakeSessionLink {
    fn start(&mut self, _request: &SessionRequest, events: SessionEvents) -> Result<(), String> {
        self.log.push(LogEvent::Start {
            session: self.label.clone(),
        });
        self.events = Some(events);
        Ok(())
    }

    fn data(&mut self, data: Vec<u8>) {
        self.log.push(LogEvent::Data {
            session: self.label.clone(),
            data,
        });
        if self.work == Work::PanicsOnData {
            panic!("fake session work: crashed on data");
        }
    }

    fn eof(&mut self) {
        self.log.push(LogEvent::Eof {
            session: self.label.clone(),
        });
    }

    fn notify(&mut self, text: &str) {
        self.log.push(LogEvent::Notify {
            session: self.label.clone(),
            text: text.to_string(),
        });
    }

    fn terminate(&mut self, scope: EndScope) -> Winding {
        self.log.push(LogEvent::Terminate {
            session: self.label.clone(),
            scope,
        });
        let hup = SessionExit::Signal("HUP".into());
        match self.work {
            Work::Healthy | Work::PanicsOnData => self.finish_later(Duration::ZERO, hup),
            Work::SlowToEnd(delay) => self.finish_later(delay, hup),
            Work::Stubborn if self.events.is_none() => Winding::Done,
            Work::Stubborn => Winding::Pending,
        }
    }

    fn force(&mut self) -> Winding {
        self.log.push(LogEvent::Force {
            session: self.label.clone(),
        });
        self.finish_later(Duration::ZERO, SessionExit::Signal("KILL".into()))
    }
}

impl Drop for FakeSessionLink {
    fn drop(&mut self) {
        self.log.push(LogEvent::Dropped {
            session: self.label.clone(),
        });
    }
}

/// The test's side of a fake session.
#[derive(Clone)]
pub struct Sess {
    pub label: String,
    pub id: SessionId,
    pub actor: ActorRef<SessionMsg>,
}

// ---------------------------------------------------------------------------------------------
// The event probe.
// ---------------------------------------------------------------------------------------------

/// Receives every event the supervisor publishes, in order.
pub struct Probe {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Probe {
    pub async fn attach(port: &OutputPort<Event>) -> Self {
        let rx = sshvisor_actors::events::subscribe(port)
            .await
            .expect("spawn the probe");
        Self { rx }
    }

    pub async fn next(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("no event within the wait")
            .expect("the probe is alive")
    }

    /// Events up to and including the first that matches `pred`.
    pub async fn until(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Vec<Event> {
        let mut seen = Vec::new();
        loop {
            let event = tokio::time::timeout(WAIT, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} event; events seen: {seen:#?}"))
                .expect("the probe is alive");
            let done = pred(&event);
            seen.push(event);
            if done {
                return seen;
            }
        }
    }

    /// Whatever has arrived so far, without waiting.
    pub fn drain_now(&mut self) -> Vec<Event> {
        let mut seen = Vec::new();
        while let Ok(event) = self.rx.try_recv() {
            seen.push(event);
        }
        seen
    }
}

// ---------------------------------------------------------------------------------------------
// The harness itself.
// ---------------------------------------------------------------------------------------------

/// The default policy without connection limits.
pub fn unlimited() -> Policy {
    Policy {
        limits: sshvisor_actors::Limits::unlimited(),
        ..Policy::default()
    }
}

/// A supervisor with a probe on its events and one log for all its fake links.
pub struct Harness {
    pub sup: ActorRef<SupervisorMsg>,
    pub log: Log,
    pub probe: Probe,
    peer: SocketAddr,
}

impl Harness {
    /// A supervisor with the default policy, but limits out of the way (every harness client
    /// comes from one address).
    pub async fn start() -> Self {
        Self::start_with(None, unlimited()).await
    }

    /// A supervisor linked under `parent` (when given) with `policy`.
    pub async fn start_with(parent: Option<ActorCell>, policy: Policy) -> Self {
        let args = SupervisorArgs {
            events: Arc::new(OutputPort::default()),
            policy,
        };
        let probe = Probe::attach(&args.events).await;
        let sup = spawn_supervisor(parent, args)
            .await
            .expect("spawn the supervisor");
        Self {
            sup,
            log: Log::default(),
            probe,
            peer: "192.0.2.7:50022".parse().unwrap(),
        }
    }

    /// Admits a new fake transport whose client behaves as `client`.
    pub async fn connect(&self, label: &str, client: Client) -> Conn {
        self.connect_from(label, client, self.peer)
            .await
            .expect("the supervisor admits the connection")
    }

    /// Admits a new fake transport from `peer`, or says why not.
    pub async fn connect_from(
        &self,
        label: &str,
        client: Client,
        peer: SocketAddr,
    ) -> Result<Conn, sshvisor_actors::Refusal> {
        let shared = Arc::new(ConnShared {
            label: label.to_string(),
            log: self.log.clone(),
            slot: TransportSlot::default(),
        });
        let link = Box::new(FakeConnLink {
            client,
            shared: shared.clone(),
            created: tokio::time::Instant::now(),
        });
        let (id, actor) = kit::connect(&self.sup, peer, link, &shared.slot).await?;
        Ok(Conn {
            label: label.to_string(),
            id,
            actor,
            shared,
        })
    }

    /// Replaces the supervisor's policy (what a configuration reload does).
    pub async fn set_policy(&self, policy: Policy) {
        replied(
            self.sup
                .call(
                    |reply| SupervisorMsg::SetPolicy { policy, reply },
                    Some(WAIT),
                )
                .await,
            "set policy",
        );
    }

    /// Opens a session channel on `conn` whose work behaves as `work` (not started yet).
    pub async fn open(&self, conn: &Conn, label: &str, work: Work) -> Sess {
        let link = Box::new(FakeSessionLink {
            label: label.to_string(),
            work,
            log: self.log.clone(),
            events: None,
        });
        let (id, actor) = kit::open(&conn.actor, link)
            .await
            .expect("the connection opens the session");
        Sess {
            label: label.to_string(),
            id,
            actor,
        }
    }

    /// Opens a session and starts `exec <command>` in it.
    pub async fn open_started(&self, conn: &Conn, label: &str, work: Work) -> Sess {
        let sess = self.open(conn, label, work).await;
        kit::start(&sess.actor, format!("work {label}")).await;
        sess
    }

    pub async fn list(&self) -> Vec<ConnectionInfo> {
        replied(
            self.sup
                .call(|reply| SupervisorMsg::List { reply }, Some(WAIT))
                .await,
            "list",
        )
    }

    pub async fn listed(&self, conn: ConnId) -> Option<ConnectionInfo> {
        self.list().await.into_iter().find(|c| c.id == conn)
    }

    pub async fn kill(
        &self,
        target: Target,
        reason: &str,
        grace: Duration,
    ) -> Result<KillReport, KillError> {
        kill(&self.sup, target, reason, grace).await
    }

    pub async fn kill_all(&self, reason: &str, grace: Duration) -> Vec<KillReport> {
        let reason = reason.to_string();
        replied(
            self.sup
                .call(
                    |reply| SupervisorMsg::KillAll {
                        reason,
                        grace,
                        by: Some("harness".into()),
                        reply,
                    },
                    Some(WAIT),
                )
                .await,
            "kill all",
        )
    }
}

/// Sends one `Kill` and waits for its reply (usable from spawned tasks).
pub async fn kill(
    sup: &ActorRef<SupervisorMsg>,
    target: Target,
    reason: &str,
    grace: Duration,
) -> Result<KillReport, KillError> {
    let reason = reason.to_string();
    replied(
        sup.call(
            |reply| SupervisorMsg::Kill {
                target,
                reason,
                grace,
                by: Some("harness".into()),
                reply,
            },
            Some(WAIT),
        )
        .await,
        "kill",
    )
}

/// A host actor standing in for the embedding program's supervisor: it records every
/// supervision event it gets, and answers a ping (which, as supervision events take priority
/// over messages, it can only do once it has handled every event already sent to it).
pub struct Host;

/// Messages to the host.
pub enum HostMsg {
    Ping(RpcReplyPort<()>),
}

// With ractor's `cluster` feature every message type needs its own impl (src/message.rs).
#[cfg(feature = "cluster")]
impl ractor::Message for HostMsg {}

/// A supervision event, as the host saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSaw {
    Started(ractor::ActorId),
    Terminated(ractor::ActorId),
    Failed(ractor::ActorId, String),
    Other,
}

impl Actor for Host {
    type Msg = HostMsg;
    type State = mpsc::UnboundedSender<HostSaw>;
    type Arguments = mpsc::UnboundedSender<HostSaw>;

    async fn pre_start(
        &self,
        _myself: ActorRef<HostMsg>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle(
        &self,
        _myself: ActorRef<HostMsg>,
        msg: HostMsg,
        _tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HostMsg::Ping(reply) => {
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<HostMsg>,
        event: ractor::SupervisionEvent,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        use ractor::SupervisionEvent as E;
        let saw = match event {
            E::ActorStarted(cell) => HostSaw::Started(cell.get_id()),
            E::ActorTerminated(cell, _, _) => HostSaw::Terminated(cell.get_id()),
            E::ActorFailed(cell, err) => HostSaw::Failed(cell.get_id(), err.to_string()),
            _ => HostSaw::Other,
        };
        let _ = tx.send(saw);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions whose work the test ends at will, and the supervisor's own counts (model tests).
// ---------------------------------------------------------------------------------------------

/// The test's handle on a [`RemoteSessionLink`]'s work: it can end the work by itself (the
/// command exits), as a real process would, at any moment the test chooses.
#[derive(Clone, Default)]
pub struct SessionRemote {
    events: Arc<Mutex<Option<SessionEvents>>>,
}

impl SessionRemote {
    /// The work exits with `status`: the session ends by itself. False if it never started.
    pub fn finish(&self, status: u32) -> bool {
        let events = self.events.lock().unwrap().clone();
        match events {
            Some(events) => {
                events.finished(SessionExit::Status(status));
                true
            }
            None => false,
        }
    }
}

/// A [`FakeSessionLink`] (behaving as its [`Work`] on terminate and force) whose work the test
/// can also end by itself through a [`SessionRemote`].
pub struct RemoteSessionLink {
    inner: FakeSessionLink,
    remote: SessionRemote,
}

impl SessionLink for RemoteSessionLink {
    fn start(&mut self, request: &SessionRequest, events: SessionEvents) -> Result<(), String> {
        *self.remote.events.lock().unwrap() = Some(events.clone());
        self.inner.start(request, events)
    }

    fn data(&mut self, data: Vec<u8>) {
        self.inner.data(data)
    }

    fn eof(&mut self) {
        self.inner.eof()
    }

    fn terminate(&mut self, scope: EndScope) -> Winding {
        self.inner.terminate(scope)
    }

    fn force(&mut self) -> Winding {
        self.inner.force()
    }
}

impl Harness {
    /// Opens a session on `conn` and starts it, its work behaving as `work` and endable by the
    /// test; `Err` is the connection's refusal (a limit, or the connection is closing).
    pub async fn try_open_remote(
        &self,
        conn: &Conn,
        label: &str,
        work: Work,
    ) -> Result<(Sess, SessionRemote), String> {
        let remote = SessionRemote::default();
        let link = Box::new(RemoteSessionLink {
            inner: FakeSessionLink {
                label: label.to_string(),
                work,
                log: self.log.clone(),
                events: None,
            },
            remote: remote.clone(),
        });
        let (id, actor) = kit::open(&conn.actor, link).await?;
        kit::start(&actor, format!("work {label}")).await;
        let sess = Sess {
            label: label.to_string(),
            id,
            actor,
        };
        Ok((sess, remote))
    }

    /// The map's and the actors' sizes.
    pub async fn stats(&self) -> sshvisor_actors::TreeStats {
        replied(
            self.sup
                .call(|reply| SupervisorMsg::Stats { reply }, Some(WAIT))
                .await,
            "stats",
        )
    }

    /// The running counts the supervisor admits connections by.
    pub async fn admission(&self) -> sshvisor_actors::supervisor::AdmissionCounts {
        replied(
            self.sup
                .call(|reply| SupervisorMsg::Admission { reply }, Some(WAIT))
                .await,
            "admission counts",
        )
    }
}

impl Probe {
    /// The next event, or `None` if none comes within `wait`.
    pub async fn within(&mut self, wait: Duration) -> Option<Event> {
        tokio::time::timeout(wait, self.rx.recv())
            .await
            .ok()
            .flatten()
    }
}
