//! The one copy of what the actor harness (`tests/common`) and the benchmarks
//! (`benches/common`, which includes this file by path) both need to drive the tree: unwrapping a
//! call, a fake transport's end delivered once to its connection actor, and the few messages a
//! binding sends (connect, log in, open, start).

// Each includer uses a subset.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, MessagingErr};
use sshvisor_actors::{
    ConnId, ConnectionLink, ConnectionMsg, Refusal, SessionId, SessionLink, SessionMsg,
    SessionRequest, SupervisorMsg, TransportEnd,
};

/// The longest any single wait may take before the test or benchmark fails.
pub const WAIT: Duration = Duration::from_secs(60);

/// Unwraps a ractor call: a timeout, a dropped reply port or a dead actor fail the caller.
pub fn replied<T, M>(result: Result<CallResult<T>, MessagingErr<M>>, what: &str) -> T {
    match result {
        Ok(CallResult::Success(value)) => value,
        Ok(CallResult::Timeout) => panic!("{what}: no reply within {WAIT:?}"),
        Ok(CallResult::SenderError) => panic!("{what}: the reply port was dropped unanswered"),
        Err(_) => panic!("{what}: the actor is gone"),
    }
}

/// Where a fake transport reports its end: to its connection actor once known, or held until
/// [`attach`](Self::attach) (the transport may end before `Connect` has even replied).
#[derive(Default)]
pub struct TransportSlot(Mutex<Slot>);

#[derive(Default)]
struct Slot {
    actor: Option<ActorRef<ConnectionMsg>>,
    ended: bool,
    pending: Option<TransportEnd>,
}

impl TransportSlot {
    /// Ends the transport once (a real binding reports the end once): `first` sees the end
    /// before it is delivered; later ends are ignored.
    pub fn end(&self, end: TransportEnd, first: impl FnOnce(&TransportEnd)) {
        let mut slot = self.0.lock().unwrap();
        if std::mem::replace(&mut slot.ended, true) {
            return;
        }
        first(&end);
        match &slot.actor {
            Some(actor) => {
                let _ = actor.cast(ConnectionMsg::TransportClosed { end });
            }
            None => slot.pending = Some(end),
        }
    }

    /// The connection actor is known: an end that came before goes to it now.
    pub fn attach(&self, actor: ActorRef<ConnectionMsg>) {
        let mut slot = self.0.lock().unwrap();
        if let Some(end) = slot.pending.take() {
            let _ = actor.cast(ConnectionMsg::TransportClosed { end });
        }
        slot.actor = Some(actor);
    }
}

/// Sends `Connect` for `link` from `peer`; the transport's `slot` is attached to the actor.
pub async fn connect(
    sup: &ActorRef<SupervisorMsg>,
    peer: SocketAddr,
    link: Box<dyn ConnectionLink>,
    slot: &TransportSlot,
) -> Result<(ConnId, ActorRef<ConnectionMsg>), Refusal> {
    let (id, actor) = replied(
        sup.call(
            |reply| SupervisorMsg::Connect { peer, link, reply },
            Some(WAIT),
        )
        .await,
        "connect",
    )?;
    slot.attach(actor.clone());
    Ok((id, actor))
}

/// The client authenticates as `user` (what the russh handler would report).
pub fn authenticate(conn: &ActorRef<ConnectionMsg>, user: String) {
    conn.cast(ConnectionMsg::Authenticated {
        user,
        method: "publickey".into(),
        client_version: Some("SSH-2.0-FakeClient".into()),
        credential: None,
        verdict: None,
    })
    .expect("the connection actor is alive");
}

/// Opens a session channel on `conn` for `link`, or says why not.
pub async fn open(
    conn: &ActorRef<ConnectionMsg>,
    link: Box<dyn SessionLink>,
) -> Result<(SessionId, ActorRef<SessionMsg>), String> {
    replied(
        conn.call(
            |reply| ConnectionMsg::OpenSession { link, reply },
            Some(WAIT),
        )
        .await,
        "open session",
    )
}

/// Starts `exec <command>` in `session`.
pub async fn start(session: &ActorRef<SessionMsg>, command: String) {
    let request = SessionRequest::Exec { command };
    replied(
        session
            .call(|reply| SessionMsg::Start { request, reply }, Some(WAIT))
            .await,
        "start session",
    )
    .expect("the session starts");
}
