//! Timers of the tree that fire by themselves: the login grace, and the grace of a kill that
//! arrives after the client already left.

mod common;

use std::time::Duration;

use common::*;
use sshvisor_actors::{ConnId, DisconnectCause, Event, KillError, KillReport, Policy, Target};
use tokio::time::Instant;

/// Waits for `conn`'s `Disconnected` event and checks that it came at `due`, within a second;
/// returns the events seen until then, that one last.
async fn disconnected_within_a_second_of(
    h: &mut Harness,
    what: &str,
    conn: ConnId,
    due: Instant,
) -> Vec<Event> {
    let events = h
        .probe
        .until(
            what,
            |e| matches!(e, Event::Disconnected { conn: c, .. } if *c == conn),
        )
        .await;
    let now = Instant::now();
    assert!(
        now >= due && now < due + Duration::from_secs(1),
        "disconnected at {now:?}, due at {due:?} (within a second)"
    );
    events
}

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

    let events = disconnected_within_a_second_of(
        &mut h,
        "the lazy connection is disconnected",
        lazy.id,
        start + Duration::from_secs(30),
    )
    .await;
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

/// Every login is timed by one timer in the supervisor, armed for the earliest deadline: each
/// lazy connection still goes at its own deadline, also after the earlier ones logged in or left,
/// and a connection that logged in is never touched.
#[tokio::test(start_paused = true)]
async fn each_pending_login_is_disconnected_at_its_own_grace() {
    let policy = Policy {
        login_grace: Some(Duration::from_secs(30)),
        ..Policy::default()
    };
    let mut h = Harness::start_with(None, policy).await;
    let start = Instant::now();
    let first = h.connect("first", Client::Healthy).await;
    let quick = h.connect("quick", Client::Healthy).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let second = h.connect("second", Client::Healthy).await;
    // The login timer is armed for `first` and `quick`; `quick` logs in before it goes off.
    quick.authenticate("alice");

    disconnected_within_a_second_of(
        &mut h,
        "the first lazy connection is disconnected",
        first.id,
        start + Duration::from_secs(30),
    )
    .await;
    assert!(
        h.listed(second.id).await.is_some(),
        "the second went with the first"
    );
    disconnected_within_a_second_of(
        &mut h,
        "the second lazy connection is disconnected",
        second.id,
        start + Duration::from_secs(40),
    )
    .await;
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

/// Starts a kill of `target` with a long `grace` in a task of its own and waits until it has
/// reached the sessions (their `Terminate`), so that a later kill comes second.
async fn slow_kill(
    h: &Harness,
    target: Target,
    grace: Duration,
) -> tokio::task::JoinHandle<Result<KillReport, KillError>> {
    let sup = h.sup.clone();
    let slow = tokio::spawn(async move { kill(&sup, target, "slow", grace).await });
    h.log
        .wait_for("the first kill reaches the sessions", |e| {
            matches!(e, LogEvent::Terminate { .. })
        })
        .await;
    slow
}

#[tokio::test(start_paused = true)]
async fn a_second_kill_with_a_shorter_grace_is_answered_within_its_own_grace() {
    let h = Harness::start().await;
    let c = h.connect("c1", Client::Healthy).await;
    c.authenticate("carol");
    let s = h.open_started(&c, "c1/stubborn", Work::Stubborn).await;
    let slow = slow_kill(&h, Target::Connection(c.id), Duration::from_secs(30)).await;
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

/// A session forced on its own (a session kill) makes the connection's end forced, but does not
/// end its grace: a later, shorter kill of the connection still brings the force closer.
#[tokio::test(start_paused = true)]
async fn a_shorter_kill_still_counts_after_one_session_was_forced() {
    let h = Harness::start().await;
    let c = h.connect("c1", Client::Healthy).await;
    c.authenticate("erin");
    let one = h.open_started(&c, "c1/one", Work::Stubborn).await;
    h.open_started(&c, "c1/two", Work::Stubborn).await;
    let slow = slow_kill(&h, Target::Connection(c.id), Duration::from_secs(60)).await;
    let report = h
        .kill(
            Target::Session(one.id),
            "this one now",
            Duration::from_secs(1),
        )
        .await
        .expect("the session kill answers");
    assert!(report.forced);
    let start = Instant::now();
    let report = h
        .kill(Target::Connection(c.id), "now", Duration::from_secs(1))
        .await
        .expect("the second connection kill answers");
    let took = start.elapsed();
    assert!(report.forced);
    assert!(
        took < Duration::from_secs(3),
        "waited for the first kill's grace: {took:?}"
    );
    slow.await.unwrap().expect("the first kill answers too");
}

#[tokio::test(start_paused = true)]
async fn a_second_session_kill_with_a_shorter_grace_is_answered_within_its_own_grace() {
    let h = Harness::start().await;
    let c = h.connect("c1", Client::Healthy).await;
    c.authenticate("dan");
    let s = h.open_started(&c, "c1/stubborn", Work::Stubborn).await;
    let slow = slow_kill(&h, Target::Session(s.id), Duration::from_secs(30)).await;
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
    let events = disconnected_within_a_second_of(
        &mut h,
        "the idle connection is disconnected",
        c.id,
        start + Duration::from_secs(10),
    )
    .await;
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
    let events = disconnected_within_a_second_of(
        &mut h,
        "the old connection is disconnected",
        c.id,
        start + Duration::from_secs(60),
    )
    .await;
    assert!(matches!(
        events.last(),
        Some(Event::Disconnected { cause: DisconnectCause::Killed { reason, .. }, .. })
            if reason == "max_lifetime (1m) reached"
    ));
}

#[tokio::test(start_paused = true)]
async fn an_idle_session_ends_at_the_session_idle_timeout_and_its_connection_stays() {
    let mut policy = unlimited();
    policy.session_idle = Some(Duration::from_secs(10));
    let mut h = Harness::start_with(None, policy).await;
    let c = h.connect("c", Client::Healthy).await;
    c.authenticate("sid");
    let start = Instant::now();
    let s = h.open_started(&c, "c/quiet", Work::Healthy).await;
    tokio::time::sleep(Duration::from_millis(9_900)).await;
    assert_eq!(
        h.listed(c.id).await.unwrap().sessions.len(),
        1,
        "the session ended before its idle timeout"
    );
    let events = h
        .probe
        .until(
            "the idle session is closed",
            |e| matches!(e, Event::SessionClosed { session, .. } if *session == s.id),
        )
        .await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(11),
        "{took:?}"
    );
    assert!(matches!(
        events.last(),
        Some(Event::SessionClosed { killed: Some(reason), .. })
            if reason == "session_idle timeout (10s) reached"
    ));
    // Only the session: the connection lives on and takes new sessions.
    assert!(h.listed(c.id).await.is_some());
    h.open_started(&c, "c/next", Work::Healthy).await;
    assert_eq!(h.listed(c.id).await.unwrap().sessions.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_lowers_the_idle_timeout_counts_from_the_reload_and_drops_nothing_at_once() {
    let mut policy = unlimited();
    policy.idle = Some(Duration::from_secs(100));
    let mut h = Harness::start_with(None, policy.clone()).await;
    let c = h.connect("c", Client::Healthy).await;
    c.authenticate("ida");
    h.open_started(&c, "c/work", Work::Healthy).await;
    // Idle for 50 s: over the new limit already, but a reload never ends anything at once.
    tokio::time::sleep(Duration::from_secs(50)).await;
    policy.idle = Some(Duration::from_secs(10));
    let reloaded = Instant::now();
    h.set_policy(policy).await;
    tokio::time::sleep(Duration::from_millis(9_900)).await;
    assert!(
        h.listed(c.id).await.is_some(),
        "the reload ended an idle connection before the new limit ran from the reload"
    );
    let events = disconnected_within_a_second_of(
        &mut h,
        "the idle connection is disconnected",
        c.id,
        reloaded + Duration::from_secs(10),
    )
    .await;
    assert!(matches!(
        events.last(),
        Some(Event::Disconnected { cause: DisconnectCause::Killed { reason, .. }, .. })
            if reason == "idle timeout (10s) reached"
    ));
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_lowers_limits_refuses_new_connections_and_ends_no_live_one() {
    let mut policy = unlimited();
    let mut h = Harness::start_with(None, policy.clone()).await;
    let mut live = Vec::new();
    for i in 0..3 {
        let c = h.connect(&format!("c{i}"), Client::Healthy).await;
        c.authenticate("uma");
        h.open_started(&c, &format!("c{i}/s"), Work::Healthy).await;
        live.push(c);
    }
    policy.limits.max_connections = 2;
    policy.limits.max_per_user = 1;
    policy.limits.max_sessions_per_connection = 1;
    h.set_policy(policy).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let listed = h.list().await;
    assert_eq!(listed.len(), 3, "a lowered limit ended live connections");
    assert!(listed.iter().all(|c| c.sessions.len() == 1));
    let refused = h
        .connect_from("c3", Client::Healthy, "192.0.2.9:1".parse().unwrap())
        .await;
    assert!(
        matches!(&refused, Err(sshvisor_actors::Refusal::Limit(t)) if t == "max_connections (2) reached"),
        "{:?}",
        refused.as_ref().err()
    );
    // The lowered session limit applies to live connections' new sessions.
    let extra = live[0]
        .actor
        .call(
            |reply| sshvisor_actors::ConnectionMsg::OpenSession {
                link: Box::new(NoSession),
                reply,
            },
            Some(WAIT),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        extra.err().as_deref(),
        Some("max_sessions_per_connection (1) reached")
    );
    assert!(h
        .probe
        .drain_now()
        .iter()
        .all(|e| !matches!(e, Event::Disconnected { .. } | Event::SessionClosed { .. })));
}

/// A session link that is never started.
struct NoSession;

impl sshvisor_actors::SessionLink for NoSession {
    fn start(
        &mut self,
        _: &sshvisor_actors::SessionRequest,
        _: sshvisor_actors::SessionEvents,
    ) -> Result<(), String> {
        Err("never".into())
    }
    fn data(&mut self, _: Vec<u8>) {}
    fn eof(&mut self) {}
    fn terminate(&mut self, _: sshvisor_actors::EndScope) -> sshvisor_actors::Winding {
        sshvisor_actors::Winding::Done
    }
    fn force(&mut self) -> sshvisor_actors::Winding {
        sshvisor_actors::Winding::Done
    }
}

#[tokio::test(start_paused = true)]
async fn max_per_prefix_counts_connections_by_network_for_ipv4_and_ipv6() {
    let mut policy = unlimited();
    policy.limits.max_per_prefix = 2;
    let h = Harness::start_with(None, policy).await;
    let from = |a: &str| -> std::net::SocketAddr { a.parse().unwrap() };
    for (first, second, third, elsewhere, net) in [
        (
            "10.1.2.3:1",
            "10.1.2.4:1",
            "10.1.2.200:1",
            "10.1.3.1:1",
            "10.1.2.0/24",
        ),
        (
            "[2001:db8::1]:1",
            "[2001:db8::2]:1",
            "[2001:db8::ffff:1]:1",
            "[2001:db8:0:1::1]:1",
            "2001:db8::/64",
        ),
    ] {
        h.connect_from("a", Client::Healthy, from(first))
            .await
            .unwrap();
        h.connect_from("b", Client::Healthy, from(second))
            .await
            .unwrap();
        let refused = h.connect_from("c", Client::Healthy, from(third)).await;
        let expected = format!("max_per_prefix (2) reached for {net}");
        assert!(
            matches!(&refused, Err(sshvisor_actors::Refusal::Limit(t)) if *t == expected),
            "{:?}",
            refused.as_ref().err()
        );
        h.connect_from("d", Client::Healthy, from(elsewhere))
            .await
            .expect("another network still gets in");
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_house_of_pending_logins_gives_way_to_a_new_connection_oldest_first() {
    let mut policy = unlimited();
    policy.limits.max_unauthenticated = 3;
    let mut h = Harness::start_with(None, policy).await;
    let stalled: Vec<Conn> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(h.connect(&format!("flood{i}"), Client::Healthy).await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        v
    };
    let peer: std::net::SocketAddr = "198.51.100.1:2".parse().unwrap();
    // Pending logins younger than MIN_PENDING_AGE are not dropped: the newcomer is refused.
    let early = h.connect_from("early", Client::Healthy, peer).await;
    assert!(
        matches!(&early, Err(sshvisor_actors::Refusal::Limit(t)) if t == "max_unauthenticated (3) reached"),
        "{:?}",
        early.as_ref().err()
    );
    tokio::time::sleep(sshvisor_actors::MIN_PENDING_AGE).await;
    let newcomer = h
        .connect_from("user", Client::Healthy, peer)
        .await
        .expect("a new connection gets in once the pending logins are old enough");
    let events = h
        .probe
        .until(
            "the oldest pending login is dropped",
            |e| matches!(e, Event::Disconnected { conn, .. } if *conn == stalled[0].id),
        )
        .await;
    assert!(matches!(
        events.last(),
        Some(Event::Disconnected { cause: DisconnectCause::Killed { reason, by }, .. })
            if reason == "max_unauthenticated (3) reached: the oldest pending login was dropped"
                && by.as_deref() == Some("max_unauthenticated")
    ));
    newcomer.authenticate("ursula");
    // An authenticated connection is never dropped for a pending one.
    for i in 0..5 {
        tokio::time::sleep(sshvisor_actors::MIN_PENDING_AGE).await;
        h.connect_from(&format!("more{i}"), Client::Healthy, peer)
            .await
            .expect("admitted at the expense of a pending login");
    }
    assert!(h.listed(newcomer.id).await.is_some());
    assert_eq!(
        h.list()
            .await
            .iter()
            .filter(|c| c.state == sshvisor_actors::ConnState::Handshaking)
            .count(),
        3
    );
}

#[tokio::test(start_paused = true)]
async fn limits_count_only_live_connections_across_churn_and_a_prefix_change() {
    let mut policy = unlimited();
    policy.limits.max_per_source = 2;
    policy.limits.max_per_prefix = 3;
    policy.limits.max_per_user = 1;
    let mut h = Harness::start_with(None, policy.clone()).await;
    let a: std::net::SocketAddr = "10.9.8.1:1".parse().unwrap();
    let b: std::net::SocketAddr = "10.9.8.2:1".parse().unwrap();
    for round in 0..3 {
        let c1 = h.connect_from("c1", Client::Healthy, a).await.unwrap();
        let c2 = h.connect_from("c2", Client::Healthy, a).await.unwrap();
        assert!(
            h.connect_from("c3", Client::Healthy, a).await.is_err(),
            "round {round}: a third from one address"
        );
        let c4 = h.connect_from("c4", Client::Healthy, b).await.unwrap();
        assert!(
            h.connect_from("c5", Client::Healthy, b).await.is_err(),
            "round {round}: a fourth from one /24"
        );
        c1.authenticate("uli");
        h.probe
            .until(
                "uli logs in",
                |e| matches!(e, Event::Authenticated { conn, .. } if *conn == c1.id),
            )
            .await;
        // A second login of the same user is ended; the first stays.
        c2.authenticate("uli");
        h.probe
            .until(
                "the second login is ended",
                |e| matches!(e, Event::Disconnected { conn, .. } if *conn == c2.id),
            )
            .await;
        assert!(h.listed(c1.id).await.is_some());
        // Everyone leaves: every count goes back to zero.
        assert_eq!(
            h.kill_all("round over", Duration::from_secs(1)).await.len(),
            2
        );
        let _ = c4;
    }
    // A narrower prefix is recounted at once: 10.9.8.1 and 10.9.8.2 are now different networks.
    policy.limits.prefix_v4 = 32;
    h.set_policy(policy).await;
    h.connect_from("x", Client::Healthy, a).await.unwrap();
    h.connect_from("y", Client::Healthy, a).await.unwrap();
    h.connect_from("z", Client::Healthy, b).await.unwrap();
    h.connect_from("w", Client::Healthy, b).await.unwrap();
}

/// A pending login that is dropped has nothing to wind down: a stalled client (russh holds the
/// DISCONNECT back while its key exchange is unfinished) loses its socket at once, not after
/// the kill grace.
#[tokio::test(start_paused = true)]
async fn a_stalled_login_past_its_grace_loses_its_socket_at_once_not_after_the_kill_grace() {
    let policy = Policy {
        login_grace: Some(Duration::from_secs(2)),
        kill_grace: Duration::from_secs(60),
        ..Policy::default()
    };
    let mut h = Harness::start_with(None, policy).await;
    let start = Instant::now();
    let stalled = h.connect("stalled", Client::Stalled).await;
    disconnected_within_a_second_of(
        &mut h,
        "the stalled login is dropped",
        stalled.id,
        start + Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        h.log.only(&LogEvent::Abort {
            conn: "stalled".into()
        }),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_stalled_pending_login_evicted_by_max_unauthenticated_loses_its_socket_at_once() {
    let mut policy = unlimited();
    policy.limits.max_unauthenticated = 1;
    policy.kill_grace = Duration::from_secs(60);
    let mut h = Harness::start_with(None, policy).await;
    let stalled = h.connect("stalled", Client::Stalled).await;
    tokio::time::sleep(sshvisor_actors::MIN_PENDING_AGE).await;
    let at = Instant::now();
    let peer: std::net::SocketAddr = "198.51.100.1:2".parse().unwrap();
    h.connect_from("newcomer", Client::Healthy, peer)
        .await
        .expect("admitted at the expense of the pending login");
    disconnected_within_a_second_of(&mut h, "the stalled login is dropped", stalled.id, at).await;
    assert_eq!(
        h.log.only(&LogEvent::Abort {
            conn: "stalled".into()
        }),
        1
    );
}
