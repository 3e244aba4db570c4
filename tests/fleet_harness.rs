//! The fleet with three nodes in one process, no sockets: each node is its own supervisor tree
//! driven through the actor harness's fake connection and session links, with a fleet agent in
//! a process-group scope of the test's own (tests running in parallel never see each other).
//! The agents reach each other as local actor references through the process group; the links
//! of ractor_cluster are the real three-process test's.
//!
//! Pinned: a fleet list names every connection's node and every node's outcome; a kill by ID
//! (or unique prefix) reaches the node that owns it, and a prefix matching on two nodes is
//! ambiguous; a kill by user kills exactly that user's connections on every node, each node's
//! audit recording its own kills with the asker and its node; an announced fleet kill pending
//! on every node until its deadline; a node
//! stopped in the middle of a fleet kill is named in the one answer while the others' kills
//! complete; a node that leaves is shown unreachable, not asked, and is up again when a node
//! of its name rejoins.

#![cfg(feature = "fleet")]

#[path = "../actors/tests/common/mod.rs"]
mod harness;

use std::time::Duration;

use harness::{Client, Conn, Harness, LogEvent, Work, WAIT};
use sshvisor::audit::{Audit, AuditRecord, Initiator};
use sshvisor::fleet::{Fleet, FleetError, FleetSetup, NodeOutcome, NodeState, Reply};
use sshvisor_actors::{Filter, SupervisorHandle, Target};
use tokio::time::Instant;

/// What a node's answer may take in these tests (the fleet's own default).
const WITHIN: Duration = Duration::from_secs(2);

/// One node: a harness tree and its fleet agent.
struct Node {
    name: String,
    h: Harness,
    tree: SupervisorHandle,
    fleet: Fleet,
    /// Where the node's agent records the kills it carries out.
    audit: Audit,
}

impl Node {
    async fn start(name: &str, scope: &str) -> Self {
        let h = Harness::start().await;
        let tree = SupervisorHandle::attach(h.sup.clone());
        let audit = Audit::stream_only();
        let fleet = Fleet::start_audited(
            tree.clone(),
            FleetSetup {
                name: name.to_string(),
                scope: scope.to_string(),
                fleet_addr: None,
                ssh_addr: None,
            },
            Some(audit.clone()),
        )
        .await
        .expect("start the fleet agent");
        Self {
            name: name.to_string(),
            h,
            tree,
            fleet,
            audit,
        }
    }

    /// A fake connection logged in as `user`, once the tree shows the user.
    async fn login(&self, label: &str, user: &str, client: Client) -> Conn {
        let conn = self.h.connect(label, client).await;
        conn.authenticate(user);
        let id = conn.id;
        let want = Some(user.to_string());
        wait_until(&format!("{label} logged in as {user}"), WAIT, || async {
            self.h.listed(id).await.is_some_and(|c| c.user == want)
        })
        .await;
        conn
    }

    /// This node's view of `name`'s state, if it has heard of it.
    fn state_of(&self, name: &str) -> Option<NodeState> {
        self.fleet
            .nodes()
            .into_iter()
            .find(|n| n.name == name)
            .map(|n| n.state)
    }

    /// Whether this node sees every one of `names` up.
    fn sees_up(&self, names: &[&str]) -> bool {
        names
            .iter()
            .all(|n| self.state_of(n) == Some(NodeState::Up))
    }
}

/// A fresh process-group scope: the test's fleet alone.
fn scope() -> String {
    format!("test-{}", uuid::Uuid::new_v4())
}

/// Nodes a, b, c in one fresh scope, each seeing all three up.
async fn fleet() -> (String, Node, Node, Node) {
    let scope = scope();
    let a = Node::start("a", &scope).await;
    let b = Node::start("b", &scope).await;
    let c = Node::start("c", &scope).await;
    let all = ["a", "b", "c"];
    wait_until("every node sees a, b and c up", WAIT, || async {
        a.sees_up(&all) && b.sees_up(&all) && c.sees_up(&all)
    })
    .await;
    (scope, a, b, c)
}

/// Waits until `cond` holds, failing after `within`.
async fn wait_until<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The outcome of `node` among `outcomes`, which names each node once.
fn outcome<'a>(outcomes: &'a [NodeOutcome], node: &str) -> &'a NodeOutcome {
    let found: Vec<&NodeOutcome> = outcomes.iter().filter(|o| o.node == node).collect();
    assert_eq!(found.len(), 1, "node {node} once in {outcomes:#?}");
    found[0]
}

fn names(outcomes: &[NodeOutcome]) -> Vec<&str> {
    let mut all: Vec<&str> = outcomes.iter().map(|o| o.node.as_str()).collect();
    all.sort();
    all
}

fn disconnects(h: &Harness) -> Vec<(String, String)> {
    h.log
        .snapshot()
        .into_iter()
        .filter_map(|e| match e {
            LogEvent::Disconnect { conn, reason } => Some((conn, reason)),
            _ => None,
        })
        .collect()
}

/// The shortest prefix of `id` that no other of `others` starts with.
fn unique_prefix(id: &str, others: &[String]) -> String {
    (1..=id.len())
        .map(|n| &id[..n])
        .find(|p| !others.iter().any(|o| o != id && o.starts_with(p)))
        .expect("IDs differ")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn list_names_every_connection_s_node_and_every_node() {
    let (_scope, a, b, c) = fleet().await;
    let ca = a.login("a1", "alice", Client::Healthy).await;
    let cb = b.login("b1", "bob", Client::Healthy).await;
    let cc = c.login("c1", "carol", Client::Healthy).await;

    let listing = a.fleet.list(Filter::default(), WITHIN).await;

    assert_eq!(names(&listing.nodes), ["a", "b", "c"]);
    for node in ["a", "b", "c"] {
        let o = outcome(&listing.nodes, node);
        assert_eq!(
            (o.status, o.count),
            (Reply::Answered, Some(1)),
            "{listing:#?}"
        );
    }
    let mut seen: Vec<(String, _, Option<String>)> = listing
        .connections
        .iter()
        .map(|l| (l.node.clone(), l.item.id, l.item.user.clone()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("a".to_string(), ca.id, Some("alice".to_string())),
            ("b".to_string(), cb.id, Some("bob".to_string())),
            ("c".to_string(), cc.id, Some("carol".to_string())),
        ]
    );

    // Any node answers the same.
    let from_c = c.fleet.list(Filter::default(), WITHIN).await;
    assert_eq!(from_c.connections.len(), 3, "{from_c:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_by_id_reaches_the_node_that_owns_it() {
    let (_scope, a, b, c) = fleet().await;
    let ca = a.login("a1", "alice", Client::Healthy).await;
    let _cb = b.login("b1", "bob", Client::Healthy).await;
    let c1 = c.login("c1", "carol", Client::Healthy).await;
    let c2 = c.login("c2", "carol", Client::Healthy).await;

    // By full ID, from a: c's own kill, reported as c's.
    let killed = a
        .fleet
        .kill(
            &c1.id.to_string(),
            "revoked",
            Duration::from_secs(1),
            Some("test".into()),
            WITHIN,
        )
        .await
        .expect("kill c1 from a");
    assert_eq!(killed.node, "c");
    assert_eq!(killed.item.target, Target::Connection(c1.id));
    assert_eq!(
        disconnects(&c.h),
        [("c1".to_string(), "revoked".to_string())]
    );
    assert!(disconnects(&a.h).is_empty() && disconnects(&b.h).is_empty());
    assert!(c.h.listed(c1.id).await.is_none(), "c1 is gone from c's map");

    // By a prefix unique in the fleet.
    let live: Vec<String> = a
        .fleet
        .list(Filter::default(), WITHIN)
        .await
        .connections
        .iter()
        .map(|l| l.item.id.to_string())
        .collect();
    assert_eq!(live.len(), 3, "{live:?}");
    let prefix = unique_prefix(&c2.id.to_string(), &live);
    let killed = a
        .fleet
        .kill(&prefix, "by prefix", Duration::from_secs(1), None, WITHIN)
        .await
        .unwrap_or_else(|e| panic!("kill c2 by {prefix:?} from a: {e}"));
    assert_eq!(
        (killed.node.as_str(), killed.item.target),
        ("c", Target::Connection(c2.id))
    );
    c.h.log
        .wait_for("c2's disconnect", |e| {
            *e == LogEvent::Disconnect {
                conn: "c2".into(),
                reason: "by prefix".into(),
            }
        })
        .await;

    // A one-character prefix that matches on a and on c: connect on c until an ID starts as
    // a's does (one in 16 per try; 500 tries leave a chance below 1e-13 of no match, and
    // then the test fails rather than passing without checking).
    let first = ca.id.to_string()[..1].to_string();
    let mut twin = None;
    for i in 0..500 {
        let conn = c.h.connect(&format!("t{i}"), Client::Healthy).await;
        if conn.id.to_string().starts_with(&first) {
            twin = Some(conn);
            break;
        }
        conn.client_closes();
    }
    let twin = twin.expect("an ID on c starting as a's within 500 connections");
    let err = a
        .fleet
        .resolve(&first, WITHIN)
        .await
        .expect_err("a prefix on two nodes is ambiguous");
    let FleetError::Ambiguous { text, matches } = &err else {
        panic!("expected ambiguity, got {err:?}");
    };
    assert_eq!(text, &first);
    assert!(
        matches
            .iter()
            .any(|m| m.node == "a" && m.item == Target::Connection(ca.id)),
        "{err:?}"
    );
    assert!(
        matches
            .iter()
            .any(|m| m.node == "c" && m.item == Target::Connection(twin.id)),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("ambiguous")
            && message.contains("on node a")
            && message.contains("on node c"),
        "{message}"
    );
    // And a kill by it kills nothing.
    let before = (disconnects(&a.h).len(), disconnects(&c.h).len());
    let err = a
        .fleet
        .kill(&first, "never", Duration::from_secs(1), None, WITHIN)
        .await
        .expect_err("an ambiguous kill");
    assert!(matches!(err, FleetError::Ambiguous { .. }), "{err:?}");
    assert_eq!((disconnects(&a.h).len(), disconnects(&c.h).len()), before);
    assert!(a.h.listed(ca.id).await.is_some() && c.h.listed(twin.id).await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_by_user_kills_that_user_on_every_node() {
    let (_scope, a, b, c) = fleet().await;
    let alice_a = a.login("a-alice", "alice", Client::Healthy).await;
    let bob = b.login("b-bob", "bob", Client::Healthy).await;
    let alice_c = c.login("c-alice", "alice", Client::Healthy).await;
    let _sa = a.h.open_started(&alice_a, "a-sh", Work::Healthy).await;
    let _sc = c.h.open_started(&alice_c, "c-sh", Work::Healthy).await;
    let mut audits = [
        a.audit.subscribe(),
        b.audit.subscribe(),
        c.audit.subscribe(),
    ];

    let filter = Filter {
        user: Some("alice".into()),
        ..Filter::default()
    };
    let done = a
        .fleet
        .kill_where(
            filter,
            "alice revoked",
            Duration::from_secs(2),
            Some("test".into()),
            false,
            WITHIN,
        )
        .await;

    assert_eq!(names(&done.nodes), ["a", "b", "c"]);
    for (node, count) in [("a", 1), ("b", 0), ("c", 1)] {
        let o = outcome(&done.nodes, node);
        assert_eq!(
            (o.status, o.count),
            (Reply::Answered, Some(count)),
            "{done:#?}"
        );
    }
    let mut reports: Vec<(String, Target, usize)> = done
        .reports
        .iter()
        .map(|r| (r.node.clone(), r.item.target, r.item.sessions_closed))
        .collect();
    reports.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        reports,
        [
            ("a".to_string(), Target::Connection(alice_a.id), 1),
            ("c".to_string(), Target::Connection(alice_c.id), 1),
        ]
    );
    let reason = "alice revoked".to_string();
    assert_eq!(disconnects(&a.h), [("a-alice".to_string(), reason.clone())]);
    assert_eq!(disconnects(&c.h), [("c-alice".to_string(), reason)]);
    assert!(disconnects(&b.h).is_empty(), "bob untouched");
    assert!(b.h.listed(bob.id).await.is_some(), "bob still listed");
    assert!(a.h.listed(alice_a.id).await.is_none() && c.h.listed(alice_c.id).await.is_none());

    // Each node recorded its own kill, before it answered, naming the asker and its node.
    let kills: Vec<Vec<AuditRecord>> = audits
        .iter_mut()
        .map(|stream| std::iter::from_fn(|| stream.try_recv().ok().map(|e| e.record)).collect())
        .collect();
    assert!(kills[1].is_empty(), "b killed nothing: {:?}", kills[1]);
    for (records, conn) in [(&kills[0], alice_a.id), (&kills[2], alice_c.id)] {
        match records.as_slice() {
            [AuditRecord::Kill {
                by,
                target,
                user,
                reason,
                sessions_closed,
                forced,
                elapsed_ms,
                ..
            }] => {
                assert_eq!(
                    *by,
                    Initiator::Fleet {
                        origin: "test on node a".into()
                    }
                );
                assert_eq!(*target, Target::Connection(conn));
                assert_eq!(user.as_deref(), Some("alice"));
                assert_eq!(reason, "alice revoked");
                assert_eq!((*sessions_closed, *forced), (Some(1), Some(false)));
                assert!(elapsed_ms.is_some());
            }
            other => panic!("one kill record expected: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_stopped_in_the_middle_of_a_fleet_kill_is_named_and_the_others_complete() {
    let (_scope, a, b, c) = fleet().await;
    let ca = a.login("a1", "alice", Client::Healthy).await;
    let cb = b.login("b1", "bob", Client::Healthy).await;
    let cc = c.login("c1", "carol", Client::Healthy).await;
    let _sa = a.h.open_started(&ca, "a-sh", Work::Healthy).await;
    let _sb = b.h.open_started(&cb, "b-sh", Work::Healthy).await;
    // c's work ignores the hangup: its kill waits out the whole grace before forcing.
    let _sc = c.h.open_started(&cc, "c-sh", Work::Stubborn).await;

    let fleet = a.fleet.clone();
    let kill = tokio::spawn(async move {
        fleet
            .kill_where(
                Filter::default(),
                "all out",
                Duration::from_secs(30),
                None,
                false,
                WITHIN,
            )
            .await
    });

    // The kill is under way on every node: a's and b's done, c's waiting for its work.
    for (node, conn) in [(&a, "a1"), (&b, "b1")] {
        node.h
            .log
            .wait_for(
                &format!("{conn} ended"),
                |e| matches!(e, LogEvent::TransportEnd { conn: c, .. } if c == conn),
            )
            .await;
    }
    c.h.log
        .wait_for(
            "c-sh asked to end",
            |e| matches!(e, LogEvent::Terminate { session, .. } if session == "c-sh"),
        )
        .await;
    assert!(!kill.is_finished(), "the fleet kill waits for c");

    // Node c stops: it leaves the fleet and its tree is gone.
    c.fleet.leave();
    c.tree.stop(WAIT).await;

    let done = tokio::time::timeout(WAIT, kill)
        .await
        .expect("the fleet kill answers once c is gone")
        .expect("the kill task");
    assert_eq!(names(&done.nodes), ["a", "b", "c"], "{done:#?}");
    for node in ["a", "b"] {
        let o = outcome(&done.nodes, node);
        assert_eq!((o.status, o.count), (Reply::Answered, Some(1)), "{done:#?}");
    }
    let lost = outcome(&done.nodes, "c");
    assert!(
        matches!(lost.status, Reply::Lost | Reply::NotAnswering),
        "c is named as lost or not answering: {done:#?}"
    );
    assert!(lost.error.is_some(), "{lost:?}");
    let mut reports: Vec<(String, Target)> = done
        .reports
        .iter()
        .map(|r| (r.node.clone(), r.item.target))
        .collect();
    reports.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        reports,
        [
            ("a".to_string(), Target::Connection(ca.id)),
            ("b".to_string(), Target::Connection(cb.id)),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_leaves_is_unreachable_and_rejoins() {
    let (scope, a, b, c) = fleet().await;
    let _ca = a.login("a1", "alice", Client::Healthy).await;
    let _cb = b.login("b1", "bob", Client::Healthy).await;
    let _cc = c.login("c1", "carol", Client::Healthy).await;

    c.fleet.leave();
    c.tree.stop(WAIT).await;
    // The bound: a node that dies leaves the view within 3 s.
    wait_until("a sees c unreachable", Duration::from_secs(3), || async {
        matches!(a.state_of("c"), Some(NodeState::Unreachable(_)))
    })
    .await;
    assert!(a.sees_up(&["a", "b"]), "{:#?}", a.fleet.nodes());

    // A list names c unreachable (not asked, so not waited for) and lists the others.
    let listing = a.fleet.list(Filter::default(), WAIT).await;
    assert_eq!(names(&listing.nodes), ["a", "b", "c"], "{listing:#?}");
    let gone = outcome(&listing.nodes, "c");
    assert_eq!(gone.status, Reply::Unreachable, "{listing:#?}");
    assert!(
        gone.error
            .as_deref()
            .is_some_and(|e| e.contains("unreachable since")),
        "{gone:?}"
    );
    let mut users: Vec<String> = listing
        .connections
        .iter()
        .map(|l| format!("{}:{}", l.node, l.item.user.as_deref().unwrap_or("-")))
        .collect();
    users.sort();
    assert_eq!(users, ["a:alice", "b:bob"]);

    // A new node called c in the same fleet: up again, its connections listed.
    let c2 = Node::start("c", &scope).await;
    let dave = c2.login("c-dave", "dave", Client::Healthy).await;
    wait_until("a sees c up again", WAIT, || async {
        a.state_of("c") == Some(NodeState::Up)
    })
    .await;
    let listing = a.fleet.list(Filter::default(), WITHIN).await;
    let back = outcome(&listing.nodes, "c");
    assert_eq!(
        (back.status, back.count),
        (Reply::Answered, Some(1)),
        "{listing:#?}"
    );
    assert!(
        listing
            .connections
            .iter()
            .any(|l| l.node == "c" && l.item.id == dave.id),
        "{listing:#?}"
    );
    assert_eq!(c2.name, "c");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_announced_fleet_kill_is_pending_on_every_node_until_its_deadline() {
    let (_scope, a, b, c) = fleet().await;
    let alice_a = a.login("a-alice", "alice", Client::Healthy).await;
    let bob = b.login("b-bob", "bob", Client::Healthy).await;
    let alice_c = c.login("c-alice", "alice", Client::Healthy).await;
    let mut audits = [a.audit.subscribe(), c.audit.subscribe()];
    let notice = Duration::from_millis(1500);

    let asked = Instant::now();
    let fleet = a.fleet.clone();
    let kill = tokio::spawn(async move {
        let filter = Filter {
            user: Some("alice".into()),
            ..Filter::default()
        };
        fleet
            .kill_warned(
                filter,
                "maintenance",
                notice,
                Duration::from_secs(2),
                Some("test".into()),
                WITHIN,
            )
            .await
    });

    // Before the deadline: listed as pending on both nodes, nobody cut.
    for (node, conn) in [(&a, alice_a.id), (&c, alice_c.id)] {
        wait_until("the kill is pending", WAIT, || async {
            node.h
                .listed(conn)
                .await
                .is_some_and(|c| c.pending_kill.is_some())
        })
        .await;
    }
    assert!(disconnects(&a.h).is_empty() && disconnects(&c.h).is_empty());

    let done = kill.await.unwrap();
    assert!(asked.elapsed() >= notice, "answered at the deadline");
    assert_eq!(names(&done.nodes), ["a", "b", "c"]);
    for (node, count) in [("a", 1), ("b", 0), ("c", 1)] {
        let o = outcome(&done.nodes, node);
        assert_eq!(
            (o.status, o.count),
            (Reply::Answered, Some(count)),
            "{done:#?}"
        );
    }
    let reason = "maintenance".to_string();
    assert_eq!(disconnects(&a.h), [("a-alice".to_string(), reason.clone())]);
    assert_eq!(disconnects(&c.h), [("c-alice".to_string(), reason)]);
    assert!(b.h.listed(bob.id).await.is_some(), "bob untouched");
    for stream in &mut audits {
        let kills: Vec<AuditRecord> = std::iter::from_fn(|| stream.try_recv().ok())
            .map(|e| e.record)
            .filter(|r| matches!(r, AuditRecord::Kill { .. }))
            .collect();
        assert!(
            matches!(kills.as_slice(), [AuditRecord::Kill { by: Initiator::Fleet { origin }, .. }]
                if origin == "test on node a"),
            "{kills:?}"
        );
    }
}
