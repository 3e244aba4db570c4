//! A warning before the cut, as the person at the terminal sees it with the OpenSSH client:
//! `ctl kill ID --warn D` (a line at once, the kill at the deadline, listed as pending),
//! `ctl cancel ID` (told it is withdrawn), and `idle_warning` before the idle cut. A session
//! without a terminal is shown nothing: on a pipe the line would be data. The audit log has the
//! kill, at its deadline, or the cancel.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{text, TestServer};
use sshvisor::audit::{AuditRecord, Initiator};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStdout};

const WAIT: Duration = Duration::from_secs(20);

/// `ssh -tt USER@server sleep 600` (a terminal), or without `-tt` (none).
fn client(server: &TestServer, user: &str, terminal: bool) -> Child {
    let mut cmd = server.ssh(user);
    if terminal {
        cmd.arg("-tt");
    }
    cmd.arg("sleep 600").stdin(Stdio::null());
    cmd.spawn().expect("ssh runs")
}

/// Reads `out` until it contains `wanted` (bounded by [`WAIT`]); returns what was read.
async fn read_until(out: &mut ChildStdout, seen: &mut Vec<u8>, wanted: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut buf = [0u8; 1024];
    while !text(seen).contains(wanted) {
        let n = tokio::time::timeout_at(deadline, out.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{wanted:?} not shown; saw {:?}", text(seen)))
            .expect("read");
        assert!(
            n > 0,
            "the client ended before {wanted:?}; saw {:?}",
            text(seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    text(seen)
}

/// The audit records published so far.
fn received(
    stream: &mut tokio::sync::broadcast::Receiver<sshvisor::audit::AuditEntry>,
) -> Vec<AuditRecord> {
    std::iter::from_fn(|| stream.try_recv().ok().map(|e| e.record)).collect()
}

/// The IDs of the live connections of `user` that have a session.
async fn connection_of(server: &TestServer, user: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = server.list().await.into_iter().find(|c| {
            c.user.as_deref() == Some(user) && c.sessions.iter().any(|s| s.command.is_some())
        });
        if let Some(c) = found {
            return c.id.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user} never logged in"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warned_kill_shows_a_line_at_once_is_listed_and_cuts_at_the_deadline() {
    let server = TestServer::start().await;
    let mut alice = client(&server, "alice", true);
    let id = connection_of(&server, "alice").await;
    let mut piped = client(&server, "pipe", false);
    let pipe_id = connection_of(&server, "pipe").await;
    let mut out = alice.stdout.take().unwrap();
    let mut audit = server.daemon.audit().subscribe();
    let kill = server
        .ctl(&[
            "kill",
            &id[..8],
            "--warn",
            "3s",
            "--reason",
            "maintenance at noon",
        ])
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let shown = read_until(
        &mut out,
        &mut seen,
        "*** sshvisor: this connection will be closed in 3s: maintenance at noon ***",
    )
    .await;
    assert!(
        shown.contains("\r\n*** sshvisor"),
        "starts on a line of its own: {shown:?}"
    );
    let listing = server.ctl(&["ls", "--json"]).output().await.unwrap();
    let listing: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    let pending = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id.as_str())
        .expect("alice listed")["pending_kill"]
        .clone();
    assert_eq!(pending["reason"], "maintenance at noon", "{listing:#}");
    let table = server.ctl(&["ls"]).output().await.unwrap();
    assert!(
        text(&table.stdout).contains("killed in"),
        "{}",
        text(&table.stdout)
    );
    let done = tokio::time::timeout(WAIT, kill.wait_with_output())
        .await
        .expect("the kill answers after the deadline")
        .unwrap();
    assert!(done.status.success(), "{}", text(&done.stderr));
    assert!(text(&done.stdout).contains(&id), "{}", text(&done.stdout));
    // Recorded as the control socket's kill, with its reason, before ctl had its answer.
    let kills: Vec<AuditRecord> = received(&mut audit)
        .into_iter()
        .filter(|r| matches!(r, AuditRecord::Kill { .. }))
        .collect();
    match kills.as_slice() {
        [AuditRecord::Kill {
            by: Initiator::Ctl { .. },
            target,
            reason,
            ..
        }] => {
            assert_eq!(target.to_string(), format!("connection {id}"));
            assert_eq!(reason, "maintenance at noon");
        }
        other => panic!("one kill record expected: {other:?}"),
    }
    let ended = tokio::time::timeout(WAIT, alice.wait_with_output())
        .await
        .expect("alice is cut")
        .unwrap();
    assert!(
        text(&ended.stderr).contains("maintenance at noon"),
        "{}",
        text(&ended.stderr)
    );
    // The session without a terminal was not shown the line, and was not killed.
    assert!(server
        .list()
        .await
        .iter()
        .any(|c| c.id.to_string() == pipe_id));
    piped.start_kill().unwrap();
    let piped = piped.wait_with_output().await.unwrap();
    assert!(
        !text(&piped.stdout).contains("sshvisor"),
        "{}",
        text(&piped.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_warning_is_told_and_the_connection_stays() {
    let server = TestServer::start().await;
    let mut bob = client(&server, "bob", true);
    let id = connection_of(&server, "bob").await;
    let mut out = bob.stdout.take().unwrap();
    let mut audit = server.daemon.audit().subscribe();
    let kill = server
        .ctl(&["kill", &id, "--warn", "10m", "--reason", "reboot"])
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut out, &mut seen, "closed in 10m: reboot").await;
    let cancel = server.ctl(&["cancel", &id[..8]]).output().await.unwrap();
    assert!(cancel.status.success(), "{}", text(&cancel.stderr));
    read_until(&mut out, &mut seen, "cancelled").await;
    let done = tokio::time::timeout(WAIT, kill.wait_with_output())
        .await
        .expect("the waiting kill answers at once when cancelled... or at its deadline")
        .unwrap();
    assert!(!done.status.success());
    assert!(
        text(&done.stderr).contains("cancelled"),
        "{}",
        text(&done.stderr)
    );
    assert!(server.list().await.iter().any(|c| c.id.to_string() == id));
    let records = received(&mut audit);
    assert!(
        records.iter().any(|r| matches!(r,
            AuditRecord::KillCancelled { by: Initiator::Ctl { .. }, conn } if conn.to_string() == id)),
        "{records:?}"
    );
    assert!(
        !records
            .iter()
            .any(|r| matches!(r, AuditRecord::Kill { .. })),
        "{records:?}"
    );
    let again = server.ctl(&["cancel", &id]).output().await.unwrap();
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("no announced kill"),
        "{}",
        text(&again.stderr)
    );
    bob.start_kill().unwrap();
    // The tree's events are recorded in order: once the connection's end is in the stream, a
    // record made from the cancel's event would be too.
    let mut all = records;
    tokio::time::timeout(WAIT, async {
        loop {
            let record = audit
                .recv()
                .await
                .expect("the audit stream stays open")
                .record;
            let end = matches!(&record,
                AuditRecord::ConnectionClosed { conn, .. } if conn.to_string() == id);
            all.push(record);
            if end {
                return;
            }
        }
    })
    .await
    .expect("the connection's end is recorded");
    // Once, by the control socket with its caller's credentials (not again from the event).
    assert_eq!(
        all.iter()
            .filter(|r| matches!(r, AuditRecord::KillCancelled { .. }))
            .count(),
        1,
        "{all:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_warns_the_terminal_first() {
    let server = TestServer::start_with(|o| {
        o.config.timeouts.idle = Some(Duration::from_secs(4));
        o.config.timeouts.idle_warning = Some(Duration::from_secs(2));
    })
    .await;
    let mut ivy = client(&server, "ivy", true);
    let mut out = ivy.stdout.take().unwrap();
    let mut seen = Vec::new();
    read_until(
        &mut out,
        &mut seen,
        "*** sshvisor: this connection will be closed in 2s for inactivity (idle timeout 4s) ***",
    )
    .await;
    let ended = tokio::time::timeout(WAIT, ivy.wait_with_output())
        .await
        .expect("cut at the idle timeout")
        .unwrap();
    assert!(
        text(&ended.stderr).contains("idle timeout"),
        "{}",
        text(&ended.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_after_the_idle_warning_starts_the_count_again() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start_with(|o| {
        o.config.timeouts.idle = Some(Duration::from_secs(6));
        o.config.timeouts.idle_warning = Some(Duration::from_secs(4));
    })
    .await;
    let mut cmd = server.ssh("kim");
    cmd.arg("-tt").arg("sleep 600").stdin(Stdio::piped());
    let mut kim = cmd.spawn().unwrap();
    let mut input = kim.stdin.take().unwrap();
    let mut out = kim.stdout.take().unwrap();
    let mut seen = Vec::new();
    read_until(&mut out, &mut seen, "for inactivity").await;
    // The idle cut would come 4 s after this warning; a keystroke (echoed by the terminal)
    // is traffic both ways.
    let warned = tokio::time::Instant::now();
    input.write_all(b"x").await.unwrap();
    input.flush().await.unwrap();
    tokio::time::sleep_until(warned + Duration::from_secs(5)).await;
    assert!(
        server
            .list()
            .await
            .iter()
            .any(|c| c.user.as_deref() == Some("kim")),
        "cut at the first deadline although the person typed"
    );
    let count = |seen: &[u8]| text(seen).matches("for inactivity").count();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut buf = [0u8; 1024];
    while count(&seen) < 2 {
        let n = tokio::time::timeout_at(deadline, out.read(&mut buf))
            .await
            .expect("warned again before the new cut")
            .unwrap();
        assert!(n > 0, "ended without a second warning: {:?}", text(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    kim.start_kill().unwrap();
}
