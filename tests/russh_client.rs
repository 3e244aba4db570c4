//! The kill contract seen from a russh client: one session killed, its sibling serves on; a
//! whole connection killed, the client receives the reason.

mod common;

use common::*;
use sshvisor_actors::{SupervisorMsg, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_sessions_keeps_the_other_working() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let client = server.russh_client("erin").await;

    let mut echo = client.handle.channel_open_session().await.unwrap();
    echo.exec(true, "cat").await.unwrap();
    let echo_id = wait_started(&mut events, "cat").await;
    let mut sleeper = client.handle.channel_open_session().await.unwrap();
    sleeper.exec(true, "sleep 987010").await.unwrap();
    let sleeper_id = wait_started(&mut events, "sleep 987010").await;

    let listed = server.list().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].sessions.len(), 2);

    let out = server
        .ctl(&[
            "kill",
            &sleeper_id.to_string()[..13],
            "--reason",
            "too sleepy",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("killed session {sleeper_id}")));

    // The killed session's channel ends: the process died of the hangup.
    let ended = drain(&mut sleeper).await;
    assert_eq!(ended.signal.as_deref(), Some("HUP"));
    assert!(processes_with_argv(&["sleep", "987010"]).is_empty());

    // The sibling and the connection serve on.
    let listed = server.list().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].sessions.len(), 1);
    assert_eq!(listed[0].sessions[0].id, echo_id);
    echo.data_bytes(&b"still alive\n"[..]).await.unwrap();
    echo.eof().await.unwrap();
    let result = drain(&mut echo).await;
    assert_eq!(text(&result.stdout), "still alive\n");
    assert_eq!(result.status, Some(0));

    // And a new session on the same connection works too.
    let mut again = client.handle.channel_open_session().await.unwrap();
    again.exec(true, "echo again").await.unwrap();
    assert_eq!(text(&drain(&mut again).await.stdout), "again\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_russh_client_receives_the_reason_and_every_session_closes_first() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let client = server.russh_client("frank").await;
    let mut a = client.handle.channel_open_session().await.unwrap();
    a.exec(true, "sleep 987011").await.unwrap();
    wait_started(&mut events, "sleep 987011").await;
    let mut b = client.handle.channel_open_session().await.unwrap();
    b.exec(true, "sleep 987012").await.unwrap();
    wait_started(&mut events, "sleep 987012").await;
    let conn = server.list().await[0].id;

    let report = ractor::call_t!(
        server.daemon.supervisor(),
        |reply| SupervisorMsg::Kill {
            target: Target::Connection(conn),
            reason: "access revoked".into(),
            grace: std::time::Duration::from_secs(5),
            by: Some("test".into()),
            reply,
        },
        20_000
    )
    .unwrap()
    .unwrap();
    assert_eq!(report.sessions_closed, 2);
    assert!(!report.forced);
    assert_eq!(drain(&mut a).await.signal.as_deref(), Some("HUP"));
    assert_eq!(drain(&mut b).await.signal.as_deref(), Some("HUP"));
    eventually("the client saw the disconnect", || {
        client.disconnect.lock().unwrap().is_some()
    })
    .await;
    // Both sessions ended (exit signal, EOF) before the disconnect reached the client.
    let (ida, idb) = (a.id(), b.id());
    let disconnect = client.log.position("disconnect ").unwrap();
    for prefix in [
        format!("exit-signal {ida} HUP"),
        format!("eof {ida}"),
        format!("exit-signal {idb} HUP"),
        format!("eof {idb}"),
    ] {
        let at = client.log.position(&prefix);
        assert!(
            at.is_some_and(|at| at < disconnect),
            "{prefix} not before the disconnect: {:?}",
            client.log.entries()
        );
    }
    assert_eq!(
        client.disconnect.lock().unwrap().as_deref(),
        Some("access revoked")
    );
    assert!(processes_with_argv(&["sleep", "987011"]).is_empty());
    assert!(processes_with_argv(&["sleep", "987012"]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_closing_its_channel_ends_the_process() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let client = server.russh_client("gina").await;
    let channel = client.handle.channel_open_session().await.unwrap();
    channel.exec(true, "sleep 987013").await.unwrap();
    let session = wait_started(&mut events, "sleep 987013").await;
    channel.close().await.unwrap();
    wait_event(&mut events, |e| match e {
        sshvisor_actors::Event::SessionClosed { session: s, .. } if *s == session => Some(()),
        _ => None,
    })
    .await;
    assert!(processes_with_argv(&["sleep", "987013"]).is_empty());
    assert_eq!(server.list().await[0].sessions.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_ends_its_session_and_leaves_no_ghost() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let client = server.russh_client("kim").await;
    for _ in 0..3 {
        let mut channel = client.handle.channel_open_session().await.unwrap();
        channel.request_subsystem(true, "nosuch").await.unwrap();
        let result = drain(&mut channel).await;
        assert_eq!(result.status, Some(1));
        assert!(text(&result.stderr).contains("subsystem \"nosuch\" is not available"));
        wait_event(&mut events, |e| match e {
            sshvisor_actors::Event::SessionClosed { .. } => Some(()),
            _ => None,
        })
        .await;
    }
    let listed = server.list().await;
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0].sessions.is_empty(),
        "ghost sessions: {:?}",
        listed[0].sessions
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_exec_on_one_channel_is_refused_and_the_first_runs_on() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let client = server.russh_client("lea").await;
    let mut channel = client.handle.channel_open_session().await.unwrap();
    channel
        .exec(true, "read line; echo got $line")
        .await
        .unwrap();
    wait_started(&mut events, "read line; echo got $line").await;
    channel.exec(true, "echo intruder").await.unwrap();
    let id = channel.id();
    eventually("the second exec is refused", || {
        client.log.position(&format!("failure {id}")).is_some()
    })
    .await;
    channel.data_bytes(&b"hello\n"[..]).await.unwrap();
    let result = drain(&mut channel).await;
    assert_eq!(text(&result.stdout), "got hello\n");
    assert_eq!(result.status, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_a_command_that_does_not_read_ends_that_session_only() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let client = server.russh_client("max").await;
    let channel = client.handle.channel_open_session().await.unwrap();
    channel.exec(true, "sleep 987031").await.unwrap();
    let session = wait_started(&mut events, "sleep 987031").await;
    let rss = || -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let before = rss();
    // 64 MiB towards a command that never reads: the server stops taking it and ends the session.
    let flood = tokio::spawn(async move {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..64 {
            if channel.data_bytes(chunk.clone()).await.is_err() {
                break;
            }
        }
        channel
    });
    let killed = wait_event(&mut events, |e| match e {
        sshvisor_actors::Event::SessionClosed {
            session: s, killed, ..
        } if *s == session => Some(killed.clone()),
        _ => None,
    })
    .await;
    assert!(
        killed
            .as_deref()
            .is_some_and(|r| r.contains("input unread")),
        "{killed:?}"
    );
    let grown_kib = rss().saturating_sub(before);
    assert!(
        grown_kib < 48 * 1024,
        "memory grew by {grown_kib} KiB under the flood"
    );
    assert!(processes_with_argv(&["sleep", "987031"]).is_empty());
    flood.abort();

    // The connection serves on.
    let mut again = client.handle.channel_open_session().await.unwrap();
    again.exec(true, "echo after").await.unwrap();
    assert_eq!(text(&drain(&mut again).await.stdout), "after\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_kill_by_user_kills_exactly_that_users_connections() {
    let server = TestServer::start().await;
    let _a1 = server.russh_client("alice").await;
    let _a2 = server.russh_client("alice").await;
    let _b = server.russh_client("bob").await;
    eventually_async(&server, |all| {
        all.iter().filter(|c| c.user.is_some()).count() == 3
    })
    .await;

    let out = server
        .ctl(&["kill", "--user", "alice", "--dry-run"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("2 connection(s) would be killed"));
    assert_eq!(server.list().await.len(), 3, "a dry run kills nothing");

    let out = server
        .ctl(&[
            "kill",
            "--user",
            "alice",
            "--peer",
            "127.0.0.0/8",
            "--reason",
            "revoked",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("2 connection(s) killed"),
        "{}",
        text(&out.stdout)
    );
    let left = server.list().await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].user.as_deref(), Some("bob"));

    let out = server
        .ctl(&["ls", "--user", "bob", "--json"])
        .output()
        .await
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);

    // Bad filters and mixing IDs with filters are refused clearly.
    let out = server
        .ctl(&["kill", "--peer", "10.0.0.0/99"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("prefix length"),
        "{}",
        text(&out.stderr)
    );
    let out = server
        .ctl(&["kill", "abc", "--user", "bob"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not both"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(server.list().await.len(), 1);
}

/// Waits until the listing satisfies `cond`.
async fn eventually_async(
    server: &TestServer,
    cond: impl Fn(&[sshvisor_actors::ConnectionInfo]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond(&server.list().await) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting on the listing"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_shows_idle_time_and_bytes_in_and_out() {
    let server = TestServer::start().await;
    let client = server.russh_client("ida").await;
    let mut ch = client.handle.channel_open_session().await.unwrap();
    ch.exec(true, "head -c 5000 /dev/zero; cat").await.unwrap();
    ch.data_bytes(&[b'z'; 3000][..]).await.unwrap();
    ch.eof().await.unwrap();
    let out = drain(&mut ch).await;
    assert_eq!(out.stdout.len(), 8000);
    let listed = server.ctl(&["ls", "--json"]).output().await.unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["bytes_in"], 3000, "{listed}");
    assert_eq!(listed[0]["bytes_out"], 8000, "{listed}");
    assert!(listed[0]["idle_ms"].as_u64().is_some(), "{listed}");
    let table = server.ctl(&["ls"]).output().await.unwrap();
    let table = text(&table.stdout);
    assert!(
        table.contains("IN/OUT") && table.contains("2.9K/7.8K"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_kill_idle_over_kills_the_idle_connection_only() {
    let server = TestServer::start().await;
    let idle = server.russh_client("ike").await;
    let busy = server.russh_client("bo").await;
    let mut ch = busy.handle.channel_open_session().await.unwrap();
    ch.exec(true, "while :; do echo x; sleep 0.1; done")
        .await
        .unwrap();
    let reader = tokio::spawn(async move { drain(&mut ch).await });
    eventually_async(&server, |all| {
        all.iter()
            .any(|c| c.user.as_deref() == Some("ike") && c.idle_ms.unwrap_or(0) > 3_500)
    })
    .await;
    // Seconds, not tenths: a loaded machine may stall the busy one's output for a while.
    let out = server
        .ctl(&["kill", "--idle-over", "3s", "--reason", "idle"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("1 connection(s) killed"),
        "{}",
        text(&out.stdout)
    );
    let left = server.list().await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].user.as_deref(), Some("bo"));
    drop(idle);
    reader.abort();
}

/// An in-process command for the tests: `shout` upper-cases its input until EOF and exits with
/// the number of lines; `shout forever` never ends by itself.
struct Shout;

impl sshvisor::session::app::InProcessCommand for Shout {
    fn run<'a>(
        &'a self,
        command: &'a str,
        io: &'a mut sshvisor::session::app::ChannelIo,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = u32> + Send + 'a>> {
        Box::pin(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            if command == "shout forever" {
                std::future::pending::<()>().await;
            }
            let mut input = Vec::new();
            let _ = io.read_to_end(&mut input).await;
            let _ = io.write_all(&input.to_ascii_uppercase()).await;
            let _ = io.flush().await;
            input.iter().filter(|b| **b == b'\n').count() as u32
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_command_serves_the_channel_without_a_process_and_dies_with_its_kill() {
    let server = TestServer::start_with(|o| {
        o.commands = sshvisor::session::app::InProcessCommands::default()
            .with("shout", std::sync::Arc::new(Shout));
    })
    .await;
    let mut events = server.events().await;
    let client = server.russh_client("ina").await;
    let mut channel = client.handle.channel_open_session().await.unwrap();
    channel.exec(true, "shout").await.unwrap();
    channel.data(&b"hello\nworld\n"[..]).await.unwrap();
    channel.eof().await.unwrap();
    let done = drain(&mut channel).await;
    assert_eq!(text(&done.stdout), "HELLO\nWORLD\n");
    assert_eq!(done.status, Some(2));
    // Other commands still run as processes.
    let mut channel = client.handle.channel_open_session().await.unwrap();
    channel.exec(true, "echo shout").await.unwrap();
    assert_eq!(text(&drain(&mut channel).await.stdout), "shout\n");
    // A session kill cancels it: the reply comes, the client sees the channel end.
    let mut channel = client.handle.channel_open_session().await.unwrap();
    channel.exec(true, "shout forever").await.unwrap();
    let session = wait_started(&mut events, "shout forever").await;
    let report = ractor::call_t!(
        server.daemon.supervisor(),
        |reply| SupervisorMsg::Kill {
            target: Target::Session(session),
            reason: "enough".into(),
            grace: std::time::Duration::from_secs(5),
            by: None,
            reply,
        },
        10_000
    )
    .unwrap()
    .unwrap();
    assert!(!report.forced);
    let _ = drain(&mut channel).await;
    // The connection lives on.
    let mut channel = client.handle.channel_open_session().await.unwrap();
    channel.exec(true, "shout").await.unwrap();
    channel.eof().await.unwrap();
    assert_eq!(drain(&mut channel).await.status, Some(0));
}
