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
