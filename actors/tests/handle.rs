//! The typed door: every request of `SupervisorHandle` reaches the tree and its answer (or its
//! failure) comes back typed, with the errors a person can act on.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ractor::OutputPort;
use sshvisor_actors::{
    ConnectionLink, Event, Filter, HandleError, PrefixMatch, SessionId, SupervisorArgs,
    SupervisorHandle, Target,
};

/// A transport that does nothing: enough to be admitted and listed.
struct QuietLink;

impl ConnectionLink for QuietLink {
    fn disconnect(&self, _reason: &str) {}
    fn abort(&self) {}
}

#[tokio::test]
async fn queries_through_the_handle_see_what_the_tree_holds() {
    let mut h = Harness::start().await;
    let handle = SupervisorHandle::attach(h.sup.clone());
    let alice = h.connect("alice", Client::Healthy).await;
    alice.authenticate("alice");
    h.probe
        .until(
            "alice authenticated",
            |e| matches!(e, Event::Authenticated { conn, .. } if *conn == alice.id),
        )
        .await;
    let bob = h.connect("bob", Client::Healthy).await;

    let all = handle.list().await.unwrap();
    assert_eq!(
        all.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![alice.id, bob.id]
    );
    assert_eq!(handle.get(bob.id).await.unwrap().id, bob.id);
    let only_alice = Filter {
        user: Some("alice".into()),
        ..Filter::default()
    };
    let selected = handle.select(only_alice).await.unwrap();
    assert_eq!(selected.len(), 1);
    assert_eq!(selected[0].id, alice.id);
    let prefix = &alice.id.to_string()[..8];
    assert_eq!(
        handle.resolve(prefix).await.unwrap(),
        PrefixMatch::One(Target::Connection(alice.id))
    );
    assert_eq!(handle.stats().await.unwrap().connections, 2);
    assert_eq!(handle.admission().await.unwrap().connections, 2);
    // Counted by state and kind, as the metrics' gauges show them.
    let _s = h.open_started(&alice, "alice/s1", Work::Healthy).await;
    let census = handle.census().await.unwrap();
    assert_eq!(census.connections, [1, 1, 0], "bob handshaking, alice in");
    assert_eq!(census.sessions, [0, 1, 0, 0], "one exec session");
    handle.set_policy(unlimited()).await.unwrap();
}

#[tokio::test]
async fn kills_through_the_handle_return_their_reports_and_name_what_is_not_live() {
    let mut h = Harness::start().await;
    let handle = SupervisorHandle::attach(h.sup.clone());
    let a = h.connect("a", Client::Healthy).await;
    let report = handle
        .kill(
            Target::Connection(a.id),
            "bye",
            Duration::from_secs(5),
            Some("test".into()),
        )
        .await
        .unwrap();
    assert_eq!(report.target, Target::Connection(a.id));
    assert!(!report.forced);

    let gone = handle
        .kill(
            Target::Connection(a.id),
            "again",
            Duration::from_secs(5),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(gone, HandleError::NotFound(Target::Connection(a.id)));
    assert!(gone.to_string().starts_with("no live connection"), "{gone}");
    let nobody = Target::Session(SessionId::new_random());
    assert_eq!(
        handle
            .kill(nobody, "x", Duration::from_secs(1), None)
            .await
            .unwrap_err(),
        HandleError::NotFound(nobody)
    );
    assert_eq!(
        handle.get(a.id).await.unwrap_err(),
        HandleError::NotFound(Target::Connection(a.id))
    );

    let b = h.connect("b", Client::Healthy).await;
    let c = h.connect("c", Client::Healthy).await;
    c.authenticate("carol");
    h.probe
        .until(
            "carol authenticated",
            |e| matches!(e, Event::Authenticated { conn, .. } if *conn == c.id),
        )
        .await;
    let carols = Filter {
        user: Some("carol".into()),
        ..Filter::default()
    };
    let reports = handle
        .kill_where(carols, "carol out", Duration::from_secs(5), None)
        .await
        .unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].target, Target::Connection(c.id));
    let reports = handle.drain(Duration::from_secs(5), None).await.unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].target, Target::Connection(b.id));
    assert!(handle.list().await.unwrap().is_empty());
    assert!(handle
        .kill_all("none left", Duration::from_secs(1), None)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_spawned_handle_admits_connections_and_streams_their_events() {
    let handle = SupervisorHandle::spawn(
        None,
        SupervisorArgs {
            events: Arc::new(OutputPort::default()),
            policy: unlimited(),
        },
    )
    .await
    .unwrap();
    let mut events = handle.subscribe().await.unwrap();
    let (conn, _actor) = handle
        .connect("192.0.2.1:40000".parse().unwrap(), Box::new(QuietLink))
        .await
        .unwrap();
    let seen = tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("the forwarder lives");
    assert!(
        matches!(seen, Event::Connected { conn: c, .. } if c == conn),
        "{seen:?}"
    );
    // A clone is the same door.
    assert_eq!(handle.clone().list().await.unwrap()[0].id, conn);
    handle.stop(WAIT).await;
    // Its last event says so: a listener (the audit log) knows it has heard everything.
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.recv().await.expect("events until the tree's last");
            if event == Event::Stopped {
                return;
            }
        }
    })
    .await
    .expect("the stopped tree's last event");
}

#[tokio::test]
async fn a_gone_supervisor_and_a_handle_without_events_say_so() {
    let h = Harness::start().await;
    let handle = SupervisorHandle::attach(h.sup.clone());
    assert_eq!(handle.subscribe().await.unwrap_err(), HandleError::NoEvents);
    handle.stop(WAIT).await;
    let err = handle.list().await.unwrap_err();
    assert!(matches!(err, HandleError::Gone { .. }), "{err:?}");
    assert!(err.to_string().contains("not running"), "{err}");
    let err = handle
        .kill_all("x", Duration::from_secs(1), None)
        .await
        .unwrap_err();
    assert!(matches!(err, HandleError::Gone { .. }), "{err:?}");
}

#[test]
fn a_query_that_is_not_answered_in_time_says_what_and_for_how_long() {
    let err = HandleError::NotAnswering {
        what: "the listing",
        within: Duration::from_secs(10),
    };
    let text = err.to_string();
    assert!(
        text.contains("did not answer the listing within 10s") && text.contains("try again"),
        "{text}"
    );
}
