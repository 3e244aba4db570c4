//! Minimal fake links for the benchmarks: no log, no probe, nothing but what the tree needs.
//!
//! A fake client honours a disconnect at once (the transport end is reported from within
//! `disconnect`, as the harness's `Client::Healthy` does), and fake work ends at once on
//! `terminate` (`finished` is called from within it), so no kill ever waits for a grace.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ractor::ActorRef;
use sshvisor_actors::{
    spawn_supervisor, ConnId, ConnectionLink, ConnectionMsg, EndScope, Limits, Policy,
    SessionEvents, SessionExit, SessionLink, SessionRequest, SupervisorArgs, SupervisorMsg,
    TransportEnd, Winding,
};

#[path = "../../tests/common/kit.rs"]
mod kit;

use kit::TransportSlot;
pub use kit::{replied, WAIT};

/// The default policy with every limit out of the way, and no login grace: a population made
/// in a burst would otherwise see all its login-grace timers fire in one burst 30 s later, in
/// the middle of some measurement (every fake connection authenticates at once anyway).
pub fn unlimited() -> Policy {
    Policy {
        login_grace: None,
        limits: Limits {
            max_connections: usize::MAX,
            max_per_source: usize::MAX,
            max_per_user: usize::MAX,
            max_unauthenticated: usize::MAX,
            max_sessions_per_connection: usize::MAX,
            // Limits added later keep their defaults; every connection comes from its own /24.
            ..Limits::default()
        },
        ..Policy::default()
    }
}

/// A client that leaves as soon as it is told to.
struct FakeConnLink(Arc<TransportSlot>);

impl ConnectionLink for FakeConnLink {
    fn disconnect(&self, _reason: &str) {
        self.0.end(TransportEnd::Closed, |_| {});
    }

    fn abort(&self) {
        self.0.end(TransportEnd::Aborted, |_| {});
    }
}

/// Work that ends as soon as it is asked to.
#[derive(Default)]
struct FakeSessionLink {
    events: Option<SessionEvents>,
}

impl SessionLink for FakeSessionLink {
    fn start(&mut self, _request: &SessionRequest, events: SessionEvents) -> Result<(), String> {
        self.events = Some(events);
        Ok(())
    }

    fn data(&mut self, _data: Vec<u8>) {}

    fn eof(&mut self) {}

    fn terminate(&mut self, _scope: EndScope) -> Winding {
        match &self.events {
            Some(events) => {
                events.finished(SessionExit::Signal("HUP".into()));
                Winding::Pending
            }
            None => Winding::Done,
        }
    }

    fn force(&mut self) -> Winding {
        self.terminate(EndScope::Connection)
    }
}

/// A live fake connection.
pub struct Conn {
    pub id: ConnId,
    pub actor: ActorRef<ConnectionMsg>,
}

/// A supervisor with no event subscriber (as in the daemon while nobody watches).
pub struct Tree {
    pub sup: ActorRef<SupervisorMsg>,
}

impl Tree {
    pub async fn start() -> Self {
        let args = SupervisorArgs {
            policy: unlimited(),
            ..SupervisorArgs::default()
        };
        let sup = spawn_supervisor(None, args)
            .await
            .expect("spawn the supervisor");
        Self { sup }
    }

    /// The client address of the `i`th connection: every one from its own /24.
    pub fn peer(i: usize) -> SocketAddr {
        let net = (i % (1 << 22)) as u32;
        SocketAddr::from((Ipv4Addr::from(0x0a00_0001 + (net << 8)), 50_022))
    }

    /// Sends `Connect` and waits for the reply; the link is made before.
    pub async fn connect(&self, i: usize) -> Conn {
        let slot = Arc::new(TransportSlot::default());
        let link = Box::new(FakeConnLink(slot.clone()));
        let (id, actor) = kit::connect(&self.sup, Self::peer(i), link, &slot)
            .await
            .expect("the supervisor admits the connection");
        Conn { id, actor }
    }

    /// Authenticates `conn` as `user` and starts one `exec` session on it.
    pub async fn log_in(&self, conn: &Conn, user: String) {
        kit::authenticate(&conn.actor, user);
        let link = Box::new(FakeSessionLink::default());
        let (_, session) = kit::open(&conn.actor, link)
            .await
            .expect("the connection opens the session");
        kit::start(&session, "work".into()).await;
    }
}
