//! Timers of the tree that fire by themselves: the login grace, and the grace of a kill that
//! arrives after the client already left.

mod common;

use std::time::Duration;

use common::*;
use sshvisor_actors::{DisconnectCause, Event, Policy, Target};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn an_unauthenticated_connection_is_disconnected_at_the_login_grace_not_before() {
    let policy = Policy {
        login_grace: Some(Duration::from_secs(30)),
        ..Policy::default()
    };
    let mut h = Harness::start_with(None, policy).await;
    let start = Instant::now();
    let lazy = h.connect("lazy", Client::Healthy).await;
    let quick = h.connect("quick", Client::Healthy).await;
    quick.authenticate("alice");

    tokio::time::sleep(Duration::from_millis(29_900)).await;
    assert!(
        h.listed(lazy.id).await.is_some(),
        "disconnected before the login grace"
    );

    let events = h
        .probe
        .until(
            "the lazy connection is disconnected",
            |e| matches!(e, Event::Disconnected { conn, .. } if *conn == lazy.id),
        )
        .await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(30) && took < Duration::from_secs(31),
        "{took:?}"
    );
    let Some(Event::Disconnected { cause, .. }) = events.last() else {
        panic!("no disconnect event");
    };
    match cause {
        DisconnectCause::Killed { reason, by } => {
            assert_eq!(reason, "login grace time (30s) exceeded");
            assert_eq!(by.as_deref(), Some("login_grace"));
        }
        other => panic!("unexpected cause {other:?}"),
    }
    assert!(
        h.log.count(
            |e| matches!(e, LogEvent::Disconnect { reason, .. } if reason.contains("login grace"))
        ) == 1
    );
    // The authenticated one is untouched.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(h.listed(quick.id).await.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_kill_after_the_client_left_still_keeps_its_own_shorter_grace() {
    let policy = Policy {
        kill_grace: Duration::from_secs(10),
        ..Policy::default()
    };
    let h = Harness::start_with(None, policy).await;
    let c = h.connect("c1", Client::Healthy).await;
    c.authenticate("bob");
    h.open_started(&c, "c1/stubborn", Work::Stubborn).await;
    c.client_closes();
    let start = Instant::now();
    let report = h
        .kill(Target::Connection(c.id), "bye", Duration::from_secs(1))
        .await
        .expect("the kill answers");
    let took = start.elapsed();
    assert!(report.forced);
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(
        took < Duration::from_secs(3),
        "the kill waited for the longer grace: {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_second_kill_with_a_shorter_grace_is_answered_within_its_own_grace() {
    let h = Harness::start().await;
    let c = h.connect("c1", Client::Healthy).await;
    c.authenticate("carol");
    let s = h.open_started(&c, "c1/stubborn", Work::Stubborn).await;
    let sup = h.sup.clone();
    let conn = c.id;
    let slow = tokio::spawn(async move {
        kill(
            &sup,
            Target::Connection(conn),
            "slow",
            Duration::from_secs(30),
        )
        .await
    });
    // Let the first kill reach the connection before the second one.
    h.log
        .wait_for("the stubborn session is asked to end", |e| {
            matches!(e, LogEvent::Terminate { .. })
        })
        .await;
    let start = Instant::now();
    let report = h
        .kill(Target::Connection(c.id), "now", Duration::from_secs(1))
        .await
        .expect("the second kill answers");
    let took = start.elapsed();
    assert!(report.forced);
    assert!(
        took < Duration::from_secs(3),
        "waited for the first kill's grace: {took:?}"
    );
    let first = slow.await.unwrap().expect("the first kill answers too");
    assert!(first.forced);
    let _ = s;
}

#[tokio::test(start_paused = true)]
async fn a_second_session_kill_with_a_shorter_grace_is_answered_within_its_own_grace() {
    let h = Harness::start().await;
    let c = h.connect("c1", Client::Healthy).await;
    c.authenticate("dan");
    let s = h.open_started(&c, "c1/stubborn", Work::Stubborn).await;
    let sup = h.sup.clone();
    let session = s.id;
    let slow = tokio::spawn(async move {
        kill(
            &sup,
            Target::Session(session),
            "slow",
            Duration::from_secs(30),
        )
        .await
    });
    h.log
        .wait_for("the stubborn session is asked to end", |e| {
            matches!(e, LogEvent::Terminate { .. })
        })
        .await;
    let start = Instant::now();
    let report = h
        .kill(Target::Session(s.id), "now", Duration::from_secs(1))
        .await
        .expect("the second kill answers");
    assert!(report.forced);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(slow.await.unwrap().is_ok());
    assert!(h.listed(c.id).await.is_some(), "the connection stays");
}

#[tokio::test(start_paused = true)]
async fn kill_where_kills_exactly_the_selected_connections() {
    use sshvisor_actors::{Filter, SupervisorMsg};
    let mut h = Harness::start().await;
    let a1 = h.connect("a1", Client::Healthy).await;
    a1.authenticate("alice");
    let a2 = h.connect("a2", Client::Healthy).await;
    a2.authenticate("alice");
    let b = h.connect("b", Client::Healthy).await;
    b.authenticate("bob");
    let anon = h.connect("anon", Client::Healthy).await;
    for conn in [a1.id, a2.id, b.id] {
        h.probe
            .until("the authentication is known", |e| {
                matches!(e, sshvisor_actors::Event::Authenticated { conn: c, .. } if *c == conn)
            })
            .await;
    }

    let alice = Filter {
        user: Some("alice".into()),
        ..Filter::default()
    };
    let selected = h
        .sup
        .call(
            |reply| SupervisorMsg::Select {
                filter: alice.clone(),
                reply,
            },
            Some(WAIT),
        )
        .await
        .unwrap()
        .unwrap();
    let mut ids: Vec<_> = selected.iter().map(|c| c.id).collect();
    ids.sort();
    let mut want = vec![a1.id, a2.id];
    want.sort();
    assert_eq!(ids, want);

    let reports = h
        .sup
        .call(
            |reply| SupervisorMsg::KillWhere {
                filter: alice,
                reason: "access revoked".into(),
                grace: Duration::from_secs(1),
                by: None,
                reply,
            },
            Some(WAIT),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reports.len(), 2);
    let left: Vec<_> = h.list().await.into_iter().map(|c| c.id).collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&b.id) && left.contains(&anon.id));

    // A filter that selects nothing answers at once with no report.
    let none = h
        .sup
        .call(
            |reply| SupervisorMsg::KillWhere {
                filter: Filter {
                    peer: Some("10.0.0.0/8".parse().unwrap()),
                    ..Filter::default()
                },
                reason: "x".into(),
                grace: Duration::from_secs(1),
                by: None,
                reply,
            },
            Some(WAIT),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(h.list().await.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_connection_over_max_per_source_is_refused_with_the_limit_and_an_event() {
    let mut policy = unlimited();
    policy.limits.max_per_source = 2;
    let mut h = Harness::start_with(None, policy).await;
    h.connect("c1", Client::Healthy).await;
    h.connect("c2", Client::Healthy).await;
    let refused = h
        .sup
        .call(
            |reply| sshvisor_actors::SupervisorMsg::Connect {
                peer: "192.0.2.7:60000".parse().unwrap(),
                link: Box::new(NoLink),
                reply,
            },
            Some(WAIT),
        )
        .await
        .unwrap()
        .unwrap();
    let Err(sshvisor_actors::Refusal::Limit(text)) = refused else {
        panic!("the third connection was admitted");
    };
    assert_eq!(text, "max_per_source (2) reached for 192.0.2.7");
    h.probe
        .until(
            "the refusal is published",
            |e| matches!(e, Event::Refused { reason, .. } if reason.starts_with("max_per_source")),
        )
        .await;
    assert_eq!(h.list().await.len(), 2);
}

/// A link for a connection that is never admitted.
struct NoLink;

impl sshvisor_actors::ConnectionLink for NoLink {
    fn disconnect(&self, _reason: &str) {}
    fn abort(&self) {}
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_disconnected_at_the_idle_timeout_not_before() {
    let mut policy = unlimited();
    policy.idle = Some(Duration::from_secs(10));
    let mut h = Harness::start_with(None, policy).await;
    let start = Instant::now();
    let c = h.connect("idle", Client::Healthy).await;
    c.authenticate("ivy");
    tokio::time::sleep(Duration::from_millis(9_900)).await;
    assert!(
        h.listed(c.id).await.is_some(),
        "ended before the idle timeout"
    );
    let events = h
        .probe
        .until(
            "the idle connection is disconnected",
            |e| matches!(e, Event::Disconnected { conn, .. } if *conn == c.id),
        )
        .await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(11),
        "{took:?}"
    );
    let Some(Event::Disconnected {
        cause: DisconnectCause::Killed { reason, by },
        ..
    }) = events.last()
    else {
        panic!("not ended by a kill: {events:?}");
    };
    assert_eq!(reason, "idle timeout (10s) reached");
    assert_eq!(by.as_deref(), Some("idle"));
}

#[tokio::test(start_paused = true)]
async fn a_connection_is_ended_at_its_max_lifetime_not_before() {
    let mut policy = unlimited();
    policy.max_lifetime = Some(Duration::from_secs(60));
    let mut h = Harness::start_with(None, policy).await;
    let start = Instant::now();
    let c = h.connect("old", Client::Healthy).await;
    c.authenticate("ole");
    tokio::time::sleep(Duration::from_millis(59_900)).await;
    assert!(h.listed(c.id).await.is_some(), "ended before its lifetime");
    let events = h
        .probe
        .until(
            "the old connection is disconnected",
            |e| matches!(e, Event::Disconnected { conn, .. } if *conn == c.id),
        )
        .await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(60) && took < Duration::from_secs(61),
        "{took:?}"
    );
    assert!(matches!(
        events.last(),
        Some(Event::Disconnected { cause: DisconnectCause::Killed { reason, .. }, .. })
            if reason == "max_lifetime (1m) reached"
    ));
}
