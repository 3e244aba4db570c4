//! Actor-harness tests: the tree driven by messages over fake links (no sockets, no russh).
//!
//! Each test is named by the behaviour it pins down. Order is asserted from the harness's
//! ordered log (what the tree did to the outside world) and its event probe (what the tree
//! published). Time is paused where graces matter, so timeouts are exact and fast.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use ractor::{Actor, ActorStatus};
use sshvisor_actors::connection::GIVE_UP_MARGIN;
use sshvisor_actors::{
    ConnId, DisconnectCause, EndFigures, EndScope, Event, KillError, Policy, SessionExit,
    SessionId, SessionKind, SessionMsg, Target, TransportEnd,
};
use tokio::time::Instant;

const GRACE: Duration = Duration::from_secs(5);

fn unknown_conn() -> ConnId {
    ConnId::new_random()
}

fn unknown_session() -> SessionId {
    SessionId::new_random()
}

fn disconnected(conn: ConnId) -> impl Fn(&Event) -> bool {
    move |e| matches!(e, Event::Disconnected { conn: c, .. } if *c == conn)
}

/// The kill sequence for one connection with three started sessions, checked end to end.
async fn kill_sequence_is_ordered(client: Client) {
    let h = Harness::start().await;
    let c = h.connect("c1", client).await;
    let mut sessions = Vec::new();
    for i in 1..=3 {
        sessions.push(h.open_started(&c, &format!("c1/s{i}"), Work::Healthy).await);
    }
    assert_eq!(h.listed(c.id).await.expect("listed").sessions.len(), 3);

    let report = h
        .kill(Target::Connection(c.id), "maintenance window", GRACE)
        .await
        .expect("the kill succeeds");

    // At the reply: every actor of the subtree has finished its loop...
    assert!(
        is_stopped(c.actor.get_status()),
        "connection: {:?}",
        c.actor.get_status()
    );
    for s in &sessions {
        assert!(
            is_stopped(s.actor.get_status()),
            "{}: {:?}",
            s.label,
            s.actor.get_status()
        );
    }
    // ...and the map no longer holds the connection.
    assert!(
        h.listed(c.id).await.is_none(),
        "the killed connection is still listed"
    );

    assert_eq!(report.target, Target::Connection(c.id));
    assert_eq!(report.sessions_closed, 3);
    assert!(!report.forced, "nothing stalled, yet the kill was forced");
    assert!(report.elapsed < GRACE);

    // The order the outside world saw: sessions closed, then the disconnect, then the transport end.
    let log = h.log.snapshot();
    let disconnect = h.log.only(&LogEvent::Disconnect {
        conn: "c1".into(),
        reason: "maintenance window".into(),
    });
    let end = h.log.only(&LogEvent::TransportEnd {
        conn: "c1".into(),
        end: TransportEnd::Closed,
    });
    for s in &sessions {
        let terminate = h.log.only(&LogEvent::Terminate {
            session: s.label.clone(),
            scope: EndScope::Connection,
        });
        let finished = h.log.only(&LogEvent::Finished {
            session: s.label.clone(),
            exit: SessionExit::Signal("HUP".into()),
        });
        assert!(
            terminate < finished && finished < disconnect,
            "{} closed too late: {log:#?}",
            s.label
        );
    }
    assert!(
        disconnect < end,
        "the transport ended before the disconnect: {log:#?}"
    );
    assert_eq!(
        h.log
            .count(|e| matches!(e, LogEvent::Abort { .. } | LogEvent::Force { .. })),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn kill_replies_after_sessions_close_then_disconnect_then_transport_end_then_actors_stop() {
    kill_sequence_is_ordered(Client::HealthyAfter(Duration::from_millis(20))).await;
}

#[tokio::test(start_paused = true)]
async fn kill_sequence_holds_when_the_transport_ends_inside_disconnect() {
    kill_sequence_is_ordered(Client::Healthy).await;
}

#[tokio::test(start_paused = true)]
async fn kill_of_an_unknown_id_replies_not_found_at_once() {
    let h = Harness::start().await;
    let start = Instant::now();

    let conn = Target::Connection(unknown_conn());
    assert_eq!(
        h.kill(conn, "x", GRACE).await,
        Err(KillError::NotFound(conn))
    );
    let session = Target::Session(unknown_session());
    assert_eq!(
        h.kill(session, "x", GRACE).await,
        Err(KillError::NotFound(session))
    );

    // An ID that was live once is unknown once it is gone.
    let c = h.connect("c1", Client::Healthy).await;
    let s = h.open_started(&c, "c1/s1", Work::Healthy).await;
    h.kill(Target::Connection(c.id), "x", GRACE).await.unwrap();
    let gone = Target::Connection(c.id);
    assert_eq!(
        h.kill(gone, "x", GRACE).await,
        Err(KillError::NotFound(gone))
    );
    let gone = Target::Session(s.id);
    assert_eq!(
        h.kill(gone, "x", GRACE).await,
        Err(KillError::NotFound(gone))
    );

    // Paused time only moves when something waits on a timer: "at once" means no time passed.
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn two_concurrent_kills_of_one_connection_both_get_the_report() {
    let h = Harness::start().await;
    let c = h
        .connect("c1", Client::HealthyAfter(Duration::from_millis(10)))
        .await;
    h.open_started(&c, "c1/s1", Work::SlowToEnd(Duration::from_millis(50)))
        .await;
    h.open_started(&c, "c1/s2", Work::Healthy).await;

    let target = Target::Connection(c.id);
    let (a, b) = tokio::join!(
        kill(&h.sup, target, "first", GRACE),
        kill(&h.sup, target, "second", GRACE)
    );
    let (a, b) = (a.expect("first kill"), b.expect("second kill"));
    for r in [&a, &b] {
        assert_eq!(r.target, target);
        assert_eq!(r.sessions_closed, 2);
        assert!(!r.forced);
    }
    // One kill sequence ran, with the first reason.
    assert_eq!(h.log.count(|e| matches!(e, LogEvent::Disconnect { .. })), 1);
    h.log.only(&LogEvent::Disconnect {
        conn: "c1".into(),
        reason: "first".into(),
    });
    assert_eq!(h.log.count(|e| matches!(e, LogEvent::Terminate { .. })), 2);
}

#[tokio::test(start_paused = true)]
async fn two_concurrent_kills_of_one_session_both_get_the_report() {
    let h = Harness::start().await;
    let c = h.connect("c1", Client::Healthy).await;
    let s1 = h
        .open_started(&c, "c1/s1", Work::SlowToEnd(Duration::from_millis(50)))
        .await;
    let s2 = h.open_started(&c, "c1/s2", Work::Healthy).await;

    let target = Target::Session(s1.id);
    let (a, b) = tokio::join!(
        kill(&h.sup, target, "first", GRACE),
        kill(&h.sup, target, "second", GRACE)
    );
    for r in [a.expect("first kill"), b.expect("second kill")] {
        assert_eq!(r.target, target);
        assert_eq!(r.sessions_closed, 1);
        assert!(!r.forced);
    }
    h.log.only(&LogEvent::Terminate {
        session: "c1/s1".into(),
        scope: EndScope::Session,
    });
    let conn = h.listed(c.id).await.expect("the connection is still up");
    let ids: Vec<SessionId> = conn.sessions.iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![s2.id]);
}

#[tokio::test(start_paused = true)]
async fn a_client_disconnect_during_a_kill_still_answers_the_kill_once() {
    let mut h = Harness::start().await;
    let c = h.connect("c1", Client::Stalled).await;
    let slow = Work::SlowToEnd(Duration::from_secs(1));
    h.open_started(&c, "c1/s1", slow).await;
    h.open_started(&c, "c1/s2", slow).await;

    let sup = h.sup.clone();
    let target = Target::Connection(c.id);
    let killing = tokio::spawn(async move { kill(&sup, target, "bye", GRACE).await });

    // The kill is under way (sessions asked to end) when the client goes away by itself.
    h.log
        .wait_for("both terminates", |_| {
            h.log.count(|e| matches!(e, LogEvent::Terminate { .. })) == 2
        })
        .await;
    c.client_closes();

    let report = tokio::time::timeout(WAIT, killing)
        .await
        .expect("the kill answers")
        .expect("the kill task")
        .expect("the kill reports success");
    assert_eq!(report.target, target);
    assert_eq!(report.sessions_closed, 2);
    assert!(
        !report.forced,
        "the sessions ended politely within the grace"
    );
    assert!(report.elapsed < GRACE);

    // The transport was already gone: no disconnect or cut was attempted on it.
    assert_eq!(
        h.log
            .count(|e| matches!(e, LogEvent::Disconnect { .. } | LogEvent::Abort { .. })),
        0,
        "{:#?}",
        h.log.snapshot()
    );
    // Exactly one end published, attributed to the kill.
    let events = h.probe.until("disconnected", disconnected(c.id)).await;
    let last = events.last().unwrap();
    assert!(
        matches!(last, Event::Disconnected { cause: DisconnectCause::Killed { reason, .. }, .. } if reason == "bye"),
        "{last:?}"
    );
    assert!(h.listed(c.id).await.is_none());
    assert!(h.probe.drain_now().iter().all(|e| !disconnected(c.id)(e)));
}

#[tokio::test(start_paused = true)]
async fn a_client_disconnect_just_before_the_kill_arrives_still_answers_the_kill() {
    let h = Harness::start().await;
    let c = h.connect("c1", Client::Healthy).await;
    h.open_started(&c, "c1/s1", Work::Healthy).await;

    // The transport end is queued at the connection before the kill reaches it.
    c.client_closes();
    let report = h
        .kill(Target::Connection(c.id), "bye", GRACE)
        .await
        .expect("the kill reports success");
    assert_eq!(report.sessions_closed, 1);
    assert!(!report.forced);
    assert_eq!(h.log.count(|e| matches!(e, LogEvent::Disconnect { .. })), 0);
    assert!(h.listed(c.id).await.is_none());
}

/// The client leaves first, a kill follows, and a stubborn session has to be forced on the way
/// out: the kill's report must say so.
#[tokio::test(start_paused = true)]
async fn a_kill_after_the_client_left_reports_forced_when_a_session_was_forced() {
    let policy = Policy {
        kill_grace: Duration::from_secs(2),
        ..Policy::default()
    };
    let h = Harness::start_with(None, policy).await;
    let c = h.connect("c1", Client::Healthy).await;
    h.open_started(&c, "c1/stubborn", Work::Stubborn).await;

    c.client_closes();
    let report = h
        .kill(Target::Connection(c.id), "bye", Duration::from_secs(2))
        .await
        .expect("the kill reports success");
    h.log.only(&LogEvent::Force {
        session: "c1/stubborn".into(),
    });
    assert_eq!(report.sessions_closed, 1);
    assert!(
        report.forced,
        "a session was killed, yet the report says it was not forced"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stalled_client_is_cut_after_the_grace_and_the_kill_reports_forced() {
    let h = Harness::start().await;
    let c = h.connect("c1", Client::Stalled).await;
    h.open_started(&c, "c1/s1", Work::Healthy).await;
    h.open_started(&c, "c1/s2", Work::Healthy).await;

    let grace = Duration::from_secs(3);
    let start = Instant::now();
    let report = h
        .kill(Target::Connection(c.id), "stalled", grace)
        .await
        .expect("the kill reports success");
    let elapsed = start.elapsed();

    assert!(
        report.forced,
        "the disconnect was ignored, yet the kill was not forced"
    );
    assert_eq!(report.sessions_closed, 2);
    assert!(
        elapsed >= grace && elapsed <= grace + Duration::from_secs(2),
        "replied after {elapsed:?}, grace {grace:?}"
    );
    assert!(
        elapsed < grace + GIVE_UP_MARGIN,
        "the stream was not cut promptly: only the give-up path ended it ({elapsed:?})"
    );
    assert!(report.elapsed >= grace && report.elapsed <= elapsed);
    assert!(is_stopped(c.actor.get_status()));

    let disconnect = h.log.only(&LogEvent::Disconnect {
        conn: "c1".into(),
        reason: "stalled".into(),
    });
    let abort = h.log.only(&LogEvent::Abort { conn: "c1".into() });
    let end = h.log.only(&LogEvent::TransportEnd {
        conn: "c1".into(),
        end: TransportEnd::Aborted,
    });
    assert!(disconnect < abort && abort < end, "{:#?}", h.log.snapshot());
    // The sessions were polite: only the transport had to be forced.
    assert_eq!(h.log.count(|e| matches!(e, LogEvent::Force { .. })), 0);
}

/// A kill of a set times its grace once for all its connections (the supervisor's one timer),
/// and each connection passes it on to its sessions: a stubborn session is still forced at the
/// grace, and nothing polite is forced.
#[tokio::test(start_paused = true)]
async fn kill_all_forces_a_stubborn_session_at_the_grace_through_its_connection() {
    let h = Harness::start().await;
    let c1 = h.connect("c1", Client::Healthy).await;
    let stubborn = h.open_started(&c1, "c1/stubborn", Work::Stubborn).await;
    h.open_started(&c1, "c1/polite", Work::Healthy).await;
    let c2 = h.connect("c2", Client::Healthy).await;
    h.open_started(&c2, "c2/polite", Work::Healthy).await;

    let grace = Duration::from_secs(2);
    let start = Instant::now();
    let reports = h.kill_all("draining", grace).await;
    let elapsed = start.elapsed();

    assert!(
        elapsed >= grace && elapsed <= grace + Duration::from_secs(2),
        "replied after {elapsed:?}, grace {grace:?}"
    );
    assert_eq!(reports.len(), 2);
    let forced: HashMap<Target, bool> = reports.iter().map(|r| (r.target, r.forced)).collect();
    assert!(forced[&Target::Connection(c1.id)]);
    assert!(!forced[&Target::Connection(c2.id)]);
    assert!(is_stopped(stubborn.actor.get_status()));
    h.log.only(&LogEvent::Force {
        session: "c1/stubborn".into(),
    });
    assert_eq!(h.log.count(|e| matches!(e, LogEvent::Force { .. })), 1);
    assert!(h.list().await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_stubborn_session_is_forced_after_the_grace_and_the_kill_reports_forced() {
    let h = Harness::start().await;
    let c = h.connect("c1", Client::Healthy).await;
    let stubborn = h.open_started(&c, "c1/stubborn", Work::Stubborn).await;
    h.open_started(&c, "c1/polite", Work::Healthy).await;

    let grace = Duration::from_secs(2);
    let start = Instant::now();
    let report = h
        .kill(Target::Connection(c.id), "revoked", grace)
        .await
        .expect("the kill reports success");
    let elapsed = start.elapsed();

    assert!(report.forced);
    assert_eq!(report.sessions_closed, 2);
    assert!(
        elapsed >= grace && elapsed <= grace + Duration::from_secs(2),
        "replied after {elapsed:?}, grace {grace:?}"
    );
    assert!(is_stopped(stubborn.actor.get_status()));
    h.log.only(&LogEvent::Force {
        session: "c1/stubborn".into(),
    });
    h.log.only(&LogEvent::Finished {
        session: "c1/stubborn".into(),
        exit: SessionExit::Signal("KILL".into()),
    });
    assert_eq!(
        h.log
            .count(|e| matches!(e, LogEvent::Force { session } if session == "c1/polite")),
        0
    );
    // The stubborn session was told politely first.
    let terminate = h.log.only(&LogEvent::Terminate {
        session: "c1/stubborn".into(),
        scope: EndScope::Connection,
    });
    let force = h.log.only(&LogEvent::Force {
        session: "c1/stubborn".into(),
    });
    assert!(terminate < force);
}

#[tokio::test(start_paused = true)]
async fn a_stubborn_session_kill_is_forced_after_the_grace() {
    let h = Harness::start().await;
    let c = h.connect("c1", Client::Healthy).await;
    let s = h.open_started(&c, "c1/stubborn", Work::Stubborn).await;

    let grace = Duration::from_secs(2);
    let start = Instant::now();
    let report = h
        .kill(Target::Session(s.id), "revoked", grace)
        .await
        .unwrap();
    let elapsed = start.elapsed();
    assert!(report.forced);
    assert_eq!(report.sessions_closed, 1);
    assert!(
        elapsed >= grace && elapsed <= grace + Duration::from_secs(1),
        "{elapsed:?}"
    );
    h.log.only(&LogEvent::Force {
        session: "c1/stubborn".into(),
    });
    assert!(
        h.listed(c.id).await.is_some(),
        "a session kill took the connection down"
    );
}

#[tokio::test(start_paused = true)]
async fn killing_one_session_leaves_its_connection_and_siblings_up() {
    let mut h = Harness::start().await;
    let c = h.connect("c1", Client::Healthy).await;
    let s1 = h.open_started(&c, "c1/s1", Work::Healthy).await;
    let s2 = h.open_started(&c, "c1/s2", Work::Healthy).await;

    let report = h
        .kill(Target::Session(s1.id), "too much output", GRACE)
        .await
        .expect("the session kill succeeds");
    assert_eq!(report.target, Target::Session(s1.id));
    assert_eq!(report.sessions_closed, 1);
    assert!(!report.forced);
    assert!(
        is_stopped(s1.actor.get_status()),
        "{:?}",
        s1.actor.get_status()
    );

    let conn = h
        .listed(c.id)
        .await
        .expect("the connection is still listed");
    let ids: Vec<SessionId> = conn.sessions.iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![s2.id]);
    assert_eq!(c.actor.get_status(), ActorStatus::Running);
    assert_eq!(s2.actor.get_status(), ActorStatus::Running);
    assert_eq!(
        h.log.count(|e| matches!(
            e,
            LogEvent::Disconnect { .. } | LogEvent::TransportEnd { .. }
        )),
        0
    );
    assert_eq!(
        h.log
            .count(|e| matches!(e, LogEvent::Terminate { session, .. } if session == "c1/s2")),
        0
    );
    // Only this channel closes: the link is told the session alone ends.
    h.log.only(&LogEvent::Terminate {
        session: "c1/s1".into(),
        scope: EndScope::Session,
    });

    let events = h
        .probe
        .until("session closed", |e| {
            matches!(e, Event::SessionClosed { .. })
        })
        .await;
    assert_eq!(
        events.last().unwrap(),
        &Event::SessionClosed {
            conn: c.id,
            session: s1.id,
            exit: SessionExit::Signal("HUP".into()),
            killed: Some("too much output".into()),
        }
    );

    // The sibling keeps working and the connection can still open sessions.
    s2.actor
        .cast(SessionMsg::Data {
            data: b"still here".to_vec(),
        })
        .unwrap();
    h.log
        .wait_for(
            "data on the sibling",
            |e| matches!(e, LogEvent::Data { session, .. } if session == "c1/s2"),
        )
        .await;
    h.open_started(&c, "c1/s3", Work::Healthy).await;
    assert_eq!(h.listed(c.id).await.unwrap().sessions.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_session_ends_alone_and_the_tree_lives_on() {
    let mut h = Harness::start().await;
    let c = h.connect("c1", Client::Healthy).await;
    let s1 = h.open_started(&c, "c1/s1", Work::Healthy).await;
    let bad = h.open_started(&c, "c1/bad", Work::PanicsOnData).await;
    let s3 = h.open_started(&c, "c1/s3", Work::Healthy).await;

    bad.actor
        .cast(SessionMsg::Data {
            data: b"boom".to_vec(),
        })
        .unwrap();
    let events = h
        .probe
        .until("the crashed session closed", |e| {
            matches!(e, Event::SessionClosed { .. })
        })
        .await;
    match events.last().unwrap() {
        Event::SessionClosed {
            conn,
            session,
            exit: SessionExit::Failed(_),
            killed: None,
        } => assert_eq!((*conn, *session), (c.id, bad.id)),
        other => panic!("expected the crashed session to close as failed, got {other:?}"),
    }

    assert!(is_stopped(bad.actor.get_status()));
    assert_eq!(h.sup.get_status(), ActorStatus::Running);
    assert_eq!(c.actor.get_status(), ActorStatus::Running);
    assert_eq!(s1.actor.get_status(), ActorStatus::Running);
    assert_eq!(s3.actor.get_status(), ActorStatus::Running);
    let conn = h
        .listed(c.id)
        .await
        .expect("the connection is still listed");
    let ids: HashSet<SessionId> = conn.sessions.iter().map(|s| s.id).collect();
    assert_eq!(ids, HashSet::from([s1.id, s3.id]));
    // The crashed session's link was released (what it ran is gone).
    h.log.only(&LogEvent::Dropped {
        session: "c1/bad".into(),
    });

    let report = h
        .kill(Target::Connection(c.id), "cleanup", GRACE)
        .await
        .expect("the connection can still be killed");
    assert_eq!(report.sessions_closed, 2);
    assert!(!report.forced);
    assert!(h.list().await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_crashing_connection_actor_still_answers_its_kill_and_the_supervisor_lives_on() {
    let mut h = Harness::start().await;
    let c = h.connect("c1", Client::PanicsOnDisconnect).await;
    h.open_started(&c, "c1/s1", Work::Healthy).await;
    let other = h.connect("c2", Client::Healthy).await;

    let report = h
        .kill(Target::Connection(c.id), "bye", GRACE)
        .await
        .expect("the kill is answered");
    assert_eq!(report.target, Target::Connection(c.id));
    assert!(report.forced, "a crashed connection did not end politely");
    let events = h.probe.until("disconnected", disconnected(c.id)).await;
    assert!(
        matches!(
            events.last().unwrap(),
            Event::Disconnected {
                cause: DisconnectCause::Error { .. },
                ..
            }
        ),
        "{events:#?}"
    );
    assert_eq!(h.sup.get_status(), ActorStatus::Running);
    let ids: Vec<ConnId> = h.list().await.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![other.id]);
}

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_kills_racing_client_disconnects_each_get_one_reply() {
    thousand_kills_racing_disconnects(Duration::from_millis(500)).await;
}

/// The same storm on two worker threads in real time, where the actors truly run in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_kills_on_parallel_threads_each_get_one_reply() {
    let start = std::time::Instant::now();
    thousand_kills_racing_disconnects(Duration::from_millis(200)).await;
    // Kills waiting out their 200 ms grace one after another would take a minute for the 300
    // connections; the bound leaves a loaded machine plenty of room below that.
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
}

async fn thousand_kills_racing_disconnects(grace: Duration) {
    const CONNS: usize = 300;
    const KILLS: usize = 1_000;
    let h = Harness::start().await;
    let mut conns = Vec::with_capacity(CONNS);
    for i in 0..CONNS {
        let client = match i % 5 {
            0 => Client::Stalled,
            1 => Client::Healthy,
            _ => Client::HealthyAfter(Duration::from_millis(1 + (i % 7) as u64)),
        };
        let c = h.connect(&format!("c{i}"), client).await;
        let work = match i % 4 {
            0 => Work::SlowToEnd(Duration::from_millis(3)),
            _ => Work::Healthy,
        };
        h.open_started(&c, &format!("c{i}/s1"), work).await;
        conns.push(c);
    }
    assert_eq!(h.list().await.len(), CONNS);

    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..KILLS {
        let c = &conns[k % CONNS];
        // Every third connection's client leaves by itself amid the kills.
        if k < CONNS && k % 3 == 0 {
            let c = c.clone();
            tasks.spawn(async move {
                c.client_closes();
                None
            });
        }
        let sup = h.sup.clone();
        let target = Target::Connection(c.id);
        tasks.spawn(async move { Some((target, kill(&sup, target, "mass kill", grace).await)) });
    }

    let mut replies = 0;
    let mut reports: HashMap<Target, usize> = HashMap::new();
    let deadline = WAIT;
    while let Some(done) = tokio::time::timeout(deadline, tasks.join_next())
        .await
        .expect("every kill answers")
    {
        // `kill` panics on a timeout or a dropped reply port: a join error is a missing reply.
        let Some((target, result)) = done.expect("a kill got its reply") else {
            continue;
        };
        replies += 1;
        match result {
            Ok(report) => {
                assert_eq!(report.target, target);
                assert_eq!(report.sessions_closed, 1);
                *reports.entry(target).or_default() += 1;
            }
            Err(KillError::NotFound(t)) => assert_eq!(t, target),
        }
    }
    assert_eq!(replies, KILLS);
    assert!(!reports.is_empty());
    assert!(
        h.list().await.is_empty(),
        "connections left after every kill replied"
    );
    // Every transport ended exactly once, and every stalled one was cut.
    assert_eq!(
        h.log.count(|e| matches!(e, LogEvent::TransportEnd { .. })),
        CONNS
    );
    for (i, c) in conns.iter().enumerate() {
        assert!(is_stopped(c.actor.get_status()), "{} still runs", c.label);
        if i % 5 == 0 && i % 3 != 0 {
            h.log.only(&LogEvent::Abort {
                conn: c.label.clone(),
            });
        }
    }
}

#[tokio::test(start_paused = true)]
async fn kill_all_replies_once_the_tree_is_empty_with_one_report_per_connection() {
    let h = Harness::start().await;
    assert!(h.kill_all("nothing", GRACE).await.is_empty());

    let mut conns = Vec::new();
    let mut sessions = Vec::new();
    for i in 0..5 {
        let client = if i == 0 {
            Client::Stalled
        } else {
            Client::Healthy
        };
        let c = h.connect(&format!("c{i}"), client).await;
        for j in 0..i {
            sessions.push(
                h.open_started(&c, &format!("c{i}/s{j}"), Work::Healthy)
                    .await,
            );
        }
        conns.push(c);
    }

    let grace = Duration::from_secs(1);
    let reports = h.kill_all("shutting down", grace).await;

    for c in &conns {
        assert!(is_stopped(c.actor.get_status()), "{} still runs", c.label);
    }
    for s in &sessions {
        assert!(is_stopped(s.actor.get_status()), "{} still runs", s.label);
    }
    assert!(h.list().await.is_empty());
    assert_eq!(reports.len(), conns.len());
    let by_target: HashMap<Target, _> = reports.iter().map(|r| (r.target, r)).collect();
    for (i, c) in conns.iter().enumerate() {
        let r = by_target
            .get(&Target::Connection(c.id))
            .unwrap_or_else(|| panic!("no report for {}", c.label));
        assert_eq!(r.sessions_closed, i);
        assert_eq!(r.forced, i == 0, "{}", c.label);
    }
    assert_eq!(
        h.log.count(
            |e| matches!(e, LogEvent::Disconnect { reason, .. } if reason == "shutting down")
        ),
        5
    );
}

#[tokio::test(start_paused = true)]
async fn events_of_a_killed_connection_arrive_in_lifecycle_order() {
    let mut h = Harness::start().await;
    let c = h
        .connect("c1", Client::HealthyAfter(Duration::from_millis(5)))
        .await;
    c.authenticate("alice");
    let s1 = h.open_started(&c, "c1/s1", Work::Healthy).await;
    let s2 = h.open_started(&c, "c1/s2", Work::Healthy).await;
    let started = |s: &Sess| Event::SessionStarted {
        conn: c.id,
        session: s.id,
        kind: SessionKind::Exec,
        command: Some(format!("work {}", s.label)),
        pty: false,
    };
    let before = h
        .probe
        .until("second session started", |e| *e == started(&s2))
        .await;
    assert_eq!(
        before,
        vec![
            Event::Connected {
                conn: c.id,
                peer: "192.0.2.7:50022".parse().unwrap()
            },
            Event::Authenticated {
                conn: c.id,
                user: "alice".into(),
                method: "publickey".into(),
                credential: None,
            },
            Event::SessionOpened {
                conn: c.id,
                session: s1.id
            },
            started(&s1),
            Event::SessionOpened {
                conn: c.id,
                session: s2.id
            },
            started(&s2),
        ]
    );
    let listed = h.listed(c.id).await.unwrap();
    assert_eq!(listed.user.as_deref(), Some("alice"));
    assert_eq!(listed.auth_method.as_deref(), Some("publickey"));

    h.kill(Target::Connection(c.id), "policy", GRACE)
        .await
        .unwrap();
    let after = h.probe.until("disconnected", disconnected(c.id)).await;
    assert_eq!(after.len(), 3, "{after:#?}");
    let closed = |s: &Sess| Event::SessionClosed {
        conn: c.id,
        session: s.id,
        exit: SessionExit::Signal("HUP".into()),
        killed: Some("policy".into()),
    };
    assert!(after[..2].contains(&closed(&s1)), "{after:#?}");
    assert!(after[..2].contains(&closed(&s2)), "{after:#?}");
    let Event::Disconnected {
        conn,
        cause,
        figures,
    } = &after[2]
    else {
        panic!("not a disconnect: {after:#?}");
    };
    assert_eq!(*conn, c.id);
    assert_eq!(
        *cause,
        DisconnectCause::Killed {
            reason: "policy".into(),
            by: Some("harness".into())
        }
    );
    assert!(!figures.forced, "{figures:?}");
    assert!(
        figures.kill_us.is_some(),
        "a kill's end is timed: {figures:?}"
    );
}

/// The same lifecycle, with the transport end reported from inside `disconnect` (the tightest
/// interleaving): session notices must still reach the supervisor before the connection's end.
#[tokio::test(start_paused = true)]
async fn session_closed_events_keep_their_exit_when_the_transport_ends_inside_disconnect() {
    let mut h = Harness::start().await;
    let c = h.connect("c1", Client::Healthy).await;
    let s1 = h.open_started(&c, "c1/s1", Work::Healthy).await;
    let s2 = h.open_started(&c, "c1/s2", Work::Healthy).await;
    h.probe
        .until(
            "second session started",
            |e| matches!(e, Event::SessionStarted { session, .. } if *session == s2.id),
        )
        .await;

    h.kill(Target::Connection(c.id), "policy", GRACE)
        .await
        .unwrap();
    let after = h.probe.until("disconnected", disconnected(c.id)).await;
    for s in [&s1, &s2] {
        let expected = Event::SessionClosed {
            conn: c.id,
            session: s.id,
            exit: SessionExit::Signal("HUP".into()),
            killed: Some("policy".into()),
        };
        assert!(
            after.contains(&expected),
            "missing {expected:?} in {after:#?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn events_of_a_client_that_leaves_say_disconnected_by_client() {
    let mut h = Harness::start().await;
    let c = h.connect("c1", Client::Healthy).await;
    let s = h.open_started(&c, "c1/s1", Work::Healthy).await;
    h.probe
        .until("session started", |e| {
            matches!(e, Event::SessionStarted { .. })
        })
        .await;

    c.client_closes();
    let after = h.probe.until("disconnected", disconnected(c.id)).await;
    assert_eq!(
        after,
        vec![
            Event::SessionClosed {
                conn: c.id,
                session: s.id,
                exit: SessionExit::Signal("HUP".into()),
                killed: None,
            },
            Event::Disconnected {
                conn: c.id,
                cause: DisconnectCause::ByClient,
                figures: EndFigures {
                    sessions_closed: 1,
                    ..Default::default()
                },
            },
        ]
    );
    assert!(h.list().await.is_empty());
    assert_eq!(h.log.count(|e| matches!(e, LogEvent::Disconnect { .. })), 0);
}

#[tokio::test(start_paused = true)]
async fn a_supervisor_linked_under_a_host_outlives_its_connections_and_keeps_the_host_up() {
    let (tx, mut saw) = tokio::sync::mpsc::unbounded_channel();
    let (host, _) = Actor::spawn(None, Host, tx).await.expect("spawn the host");
    let mut h = Harness::start_with(Some(host.get_cell()), Policy::default()).await;
    let sup_id = h.sup.get_id();

    // Connections end every way they can: killed, client left, crashed session, killed session.
    let killed = h.connect("killed", Client::Stalled).await;
    h.open_started(&killed, "killed/s1", Work::Stubborn).await;
    let left = h.connect("left", Client::Healthy).await;
    h.open_started(&left, "left/s1", Work::Healthy).await;
    let crashy = h.connect("crashy", Client::Healthy).await;
    let bad = h
        .open_started(&crashy, "crashy/bad", Work::PanicsOnData)
        .await;
    let crashed = h.connect("crashed", Client::PanicsOnDisconnect).await;

    h.kill(Target::Connection(killed.id), "bye", Duration::from_secs(1))
        .await
        .unwrap();
    h.kill(Target::Connection(crashed.id), "bye", GRACE)
        .await
        .unwrap();
    left.client_closes();
    bad.actor.cast(SessionMsg::Data { data: vec![0] }).unwrap();
    // Both ends race: wait for each, in whichever order they come.
    let (mut left_gone, mut bad_gone) = (false, false);
    while !(left_gone && bad_gone) {
        match h.probe.next().await {
            e if disconnected(left.id)(&e) => left_gone = true,
            Event::SessionClosed { session, .. } if session == bad.id => bad_gone = true,
            _ => {}
        }
    }
    h.kill(Target::Connection(crashy.id), "bye", GRACE)
        .await
        .unwrap();

    assert!(h.list().await.is_empty());
    assert_eq!(h.sup.get_status(), ActorStatus::Running);
    assert_eq!(host.get_status(), ActorStatus::Running);
    // Every supervision event already sent to the host has been handled once it answers a ping.
    replied(host.call(HostMsg::Ping, Some(WAIT)).await, "ping the host");
    let mut events = Vec::new();
    while let Ok(e) = saw.try_recv() {
        events.push(e);
    }
    assert_eq!(
        events,
        vec![HostSaw::Started(sup_id)],
        "the host saw more than the start"
    );

    // And the supervisor still admits and serves connections.
    let again = h.connect("again", Client::Healthy).await;
    assert_eq!(h.list().await.len(), 1);
    h.kill(Target::Connection(again.id), "bye", GRACE)
        .await
        .unwrap();
}

/// Every subscriber must see every event, even in a burst (a KillAll publishes several per
/// connection at once). ractor's default OutputPort (v1) is a 10-slot broadcast that silently
/// skips what a slow subscriber missed; its `output-port-v2` feature delivers everything.
#[tokio::test(start_paused = true)]

async fn every_event_of_a_burst_reaches_a_subscriber() {
    const CONNS: usize = 50;
    let mut h = Harness::start().await;
    let mut ids = HashSet::new();
    for i in 0..CONNS {
        let c = h.connect(&format!("c{i}"), Client::Healthy).await;
        h.open_started(&c, &format!("c{i}/s1"), Work::Healthy).await;
        ids.insert(c.id);
    }
    assert_eq!(h.kill_all("bye", GRACE).await.len(), CONNS);
    let mut closed = HashSet::new();
    while closed.len() < CONNS {
        if let Event::Disconnected { conn, .. } = h.probe.next().await {
            closed.insert(conn);
        }
    }
    assert_eq!(closed, ids);
}

#[tokio::test(start_paused = true)]
async fn stats_count_the_map_and_the_live_actors_and_return_to_zero() {
    let h = Harness::start().await;
    let stats = || async {
        replied(
            h.sup
                .call(
                    |reply| sshvisor_actors::SupervisorMsg::Stats { reply },
                    Some(WAIT),
                )
                .await,
            "stats",
        )
    };
    // Connections and sessions in the map, their live actors, waiting kills.
    let counts = || async {
        let s = stats().await;
        (
            s.connections,
            s.sessions,
            s.connection_actors,
            s.session_actors,
            s.waiting_kills,
        )
    };
    for i in 0..3 {
        let c = h.connect(&format!("c{i}"), Client::Healthy).await;
        c.authenticate("sam");
        h.open_started(&c, &format!("c{i}/a"), Work::Healthy).await;
        if i == 0 {
            h.open_started(&c, "c0/b", Work::Healthy).await;
        }
    }
    assert_eq!(counts().await, (3, 4, 3, 4, 0));
    assert_eq!(h.kill_all("bye", Duration::from_secs(1)).await.len(), 3);
    assert_eq!(counts().await, (0, 0, 0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn resolve_finds_full_ids_and_unique_prefixes_of_connections_and_sessions() {
    use sshvisor_actors::{PrefixMatch, SupervisorMsg as Msg};
    let h = Harness::start().await;
    let c = h.connect("c", Client::Healthy).await;
    c.authenticate("rex");
    let s = h.open_started(&c, "c/s", Work::Healthy).await;
    let resolve = |text: String| {
        let sup = h.sup.clone();
        async move {
            replied(
                sup.call(|reply| Msg::Resolve { text, reply }, Some(WAIT))
                    .await,
                "resolve",
            )
        }
    };
    assert_eq!(
        resolve(c.id.to_string()).await,
        PrefixMatch::One(Target::Connection(c.id))
    );
    assert_eq!(
        resolve(s.id.to_string().to_uppercase()).await,
        PrefixMatch::One(Target::Session(s.id))
    );
    assert_eq!(
        resolve(c.id.to_string()[..8].to_string()).await,
        PrefixMatch::One(Target::Connection(c.id))
    );
    assert_eq!(resolve("zz".into()).await, PrefixMatch::None);
    assert_eq!(resolve(String::new()).await, PrefixMatch::None);
    // Every ID starts with one of 16 hex digits: with 40 live IDs one of them is shared.
    for i in 0..20 {
        let c = h.connect(&format!("more{i}"), Client::Healthy).await;
        h.open_started(&c, &format!("more{i}/s"), Work::Healthy)
            .await;
    }
    let mut saw_ambiguous = false;
    for digit in 0..16 {
        if let PrefixMatch::Ambiguous(found) = resolve(format!("{digit:x}")).await {
            assert!(found.len() >= 2);
            saw_ambiguous = true;
        }
    }
    assert!(saw_ambiguous);
}
