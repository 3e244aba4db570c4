//! A kill announced ahead (`SupervisorHandle::kill_warned`): the terminals are told at once, the
//! kill is listed as pending and happens at the deadline, and a cancel withdraws it; and the idle
//! timeout's own warning (`Policy::idle_warning`).

mod common;

use std::future::Future;
use std::time::Duration;

use common::*;
use sshvisor_actors::{
    ConnId, DisconnectCause, Event, Filter, HandleError, KillReport, Selection, SupervisorHandle,
};
use tokio::time::Instant;

fn notices(h: &Harness) -> Vec<(String, String)> {
    h.log
        .snapshot()
        .into_iter()
        .filter_map(|e| match e {
            LogEvent::Notify { session, text } => Some((session, text)),
            _ => None,
        })
        .collect()
}

/// `kill_warned` of `conn` ("reboot", in 30 s), asked from a task of its own: it answers at the
/// deadline, or once the kill is withdrawn.
fn announce_reboot(
    tree: &SupervisorHandle,
    conn: ConnId,
) -> tokio::task::JoinHandle<Result<Vec<KillReport>, HandleError>> {
    let tree = tree.clone();
    tokio::spawn(async move {
        tree.kill_warned(
            Selection::One(conn),
            "reboot",
            Duration::from_secs(30),
            Duration::from_secs(1),
            None,
        )
        .await
    })
}

#[tokio::test(start_paused = true)]
async fn an_announced_kill_tells_the_terminals_at_once_is_listed_and_happens_at_the_deadline() {
    let h = Harness::start().await;
    let tree = SupervisorHandle::attach(h.sup.clone());
    let a = h.connect("a", Client::Healthy).await;
    a.authenticate("alice");
    h.open_started(&a, "a1", Work::Healthy).await;
    let b = h.connect("b", Client::Healthy).await;
    b.authenticate("bob");
    h.open_started(&b, "b1", Work::Healthy).await;
    let start = Instant::now();
    let filter = Filter {
        user: Some("alice".into()),
        ..Filter::default()
    };
    let warned = tokio::spawn({
        let tree = tree.clone();
        async move {
            tree.kill_warned(
                Selection::Where(filter),
                "maintenance at noon",
                Duration::from_secs(60),
                Duration::from_secs(1),
                Some("test".into()),
            )
            .await
        }
    });
    h.log
        .wait_for(
            "alice's terminal is told",
            |e| matches!(e, LogEvent::Notify { session, .. } if session == "a1"),
        )
        .await;
    assert_eq!(
        notices(&h),
        [(
            "a1".to_string(),
            "*** sshvisor: this connection will be closed in 1m: maintenance at noon ***"
                .to_string()
        )],
        "only alice's terminal is told"
    );
    let pending = h.listed(a.id).await.expect("listed").pending_kill;
    let pending = pending.expect("the kill is listed as pending");
    assert_eq!(pending.reason, "maintenance at noon");
    assert!(h.listed(b.id).await.unwrap().pending_kill.is_none());
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert!(h.listed(a.id).await.is_some(), "killed before the deadline");
    let reports = warned.await.unwrap().expect("the reports come");
    assert_eq!(reports.len(), 1);
    assert!(Instant::now() >= start + Duration::from_secs(60));
    assert!(h.listed(a.id).await.is_none());
    assert!(h.listed(b.id).await.is_some(), "bob stays");
    assert!(h.log.snapshot().contains(&LogEvent::Disconnect {
        conn: "a".into(),
        reason: "maintenance at noon".into()
    }));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_announced_kill_tells_the_terminal_and_kills_nothing() {
    let mut h = Harness::start().await;
    let tree = SupervisorHandle::attach(h.sup.clone());
    let a = h.connect("a", Client::Healthy).await;
    a.authenticate("alice");
    h.open_started(&a, "a1", Work::Healthy).await;
    let warned = announce_reboot(&tree, a.id);
    h.log
        .wait_for("told", |e| matches!(e, LogEvent::Notify { .. }))
        .await;
    assert!(
        tree.cancel_kill(a.id, Some("billing".into()))
            .await
            .unwrap(),
        "it waited for a kill"
    );
    assert!(h.listed(a.id).await.unwrap().pending_kill.is_none());
    assert!(
        !tree.cancel_kill(a.id, None).await.unwrap(),
        "nothing left to cancel"
    );
    // The audit log hears of a cancel, and of who asked, from this event.
    let seen = h
        .probe
        .until("kill_cancelled", |e| {
            matches!(e, Event::KillCancelled { .. })
        })
        .await;
    assert_eq!(
        seen.last(),
        Some(&Event::KillCancelled {
            conn: a.id,
            by: Some("billing".into())
        })
    );
    let reports = warned.await.unwrap().expect("answered at the deadline");
    assert!(reports.is_empty(), "{reports:?}");
    assert!(h.listed(a.id).await.is_some(), "the cancelled kill killed");
    let told = notices(&h);
    assert_eq!(told.len(), 2, "{told:?}");
    assert!(told[1].1.contains("cancelled"), "{told:?}");
}

#[tokio::test(start_paused = true)]
async fn a_cancel_after_the_connection_ended_is_still_told_as_an_event() {
    let mut h = Harness::start().await;
    let tree = SupervisorHandle::attach(h.sup.clone());
    let a = h.connect("a", Client::Healthy).await;
    a.authenticate("alice");
    let warned = tree.kill_warned(
        Selection::One(a.id),
        "reboot",
        Duration::from_secs(30),
        Duration::from_secs(1),
        None,
    );
    let mut warned = std::pin::pin!(warned);
    // Polled once, the announced kill is in the supervisor's mailbox before the client goes.
    let mut once = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(warned.as_mut().poll(&mut once).is_pending());
    a.client_closes();
    h.probe
        .until("the end", |e| matches!(e, Event::Disconnected { .. }))
        .await;
    assert!(
        tree.cancel_kill(a.id, Some("billing".into()))
            .await
            .unwrap(),
        "a kill was still announced for it"
    );
    let seen = h
        .probe
        .until("kill_cancelled", |e| {
            matches!(e, Event::KillCancelled { .. })
        })
        .await;
    assert_eq!(
        seen.last(),
        Some(&Event::KillCancelled {
            conn: a.id,
            by: Some("billing".into())
        })
    );
    let reports = warned.await.expect("answered");
    assert!(reports.is_empty(), "{reports:?}");
}

#[tokio::test(start_paused = true)]
async fn the_idle_timeout_warns_the_terminal_before_the_cut() {
    let mut policy = unlimited();
    policy.idle = Some(Duration::from_secs(10));
    policy.idle_warning = Some(Duration::from_secs(3));
    let mut h = Harness::start_with(None, policy).await;
    let start = Instant::now();
    let c = h.connect("idle", Client::Healthy).await;
    c.authenticate("ivy");
    h.open_started(&c, "s", Work::Healthy).await;
    tokio::time::sleep(Duration::from_millis(6_900)).await;
    assert!(notices(&h).is_empty(), "warned too early");
    h.log
        .wait_for("the terminal is warned", |e| {
            matches!(e, LogEvent::Notify { .. })
        })
        .await;
    assert!(Instant::now() >= start + Duration::from_secs(7));
    assert_eq!(
        notices(&h)[0].1,
        "*** sshvisor: this connection will be closed in 3s for inactivity (idle timeout 10s) ***"
    );
    let events = h
        .probe
        .until("disconnected", |e| matches!(e, Event::Disconnected { .. }))
        .await;
    assert!(Instant::now() >= start + Duration::from_secs(10));
    assert!(matches!(
        events.last(),
        Some(Event::Disconnected {
            cause: DisconnectCause::Killed { .. },
            ..
        })
    ));
    assert_eq!(notices(&h).len(), 1, "warned once");
}
