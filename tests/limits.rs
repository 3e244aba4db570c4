//! Limits that refuse politely (the client is told which limit, by its configuration key),
//! timeouts that fire, and the configuration file's errors.

mod common;

use std::time::Duration;

use common::*;

/// Waits for a client process, failing the test instead of hanging.
async fn finish(
    output: impl std::future::Future<Output = std::io::Result<std::process::Output>>,
) -> std::process::Output {
    tokio::time::timeout(WAIT, output)
        .await
        .expect("the client finishes in time")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_over_max_per_source_is_refused_with_the_limit_while_another_address_gets_in(
) {
    let server = TestServer::start_with(|o| o.config.limits.max_per_source = 2).await;
    let _a = server.russh_client("amy").await;
    let _b = server.russh_client("amy").await;
    let out = server.ssh("amy").arg("echo hi").output();
    let out = finish(out).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("max_per_source (2) reached for 127.0.0.1"),
        "{}",
        text(&out.stderr)
    );
    // Another source address still gets in.
    let out = server
        .ssh("amy")
        .args(["-b", "127.0.0.2", "echo from elsewhere"])
        .output();
    let out = finish(out).await;
    assert_eq!(
        text(&out.stdout),
        "from elsewhere\n",
        "{}",
        text(&out.stderr)
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.list().await.len() != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refused and finished connections linger"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_per_user_ends_the_extra_connection_with_the_limit() {
    let server = TestServer::start_with(|o| o.config.limits.max_per_user = 1).await;
    let _first = server.russh_client("bea").await;
    let out = server.ssh("bea").arg("sleep 987100").output();
    let out = finish(out).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("max_per_user (1) reached for bea"),
        "{}",
        text(&out.stderr)
    );
    assert!(processes_with_argv(&["sleep", "987100"]).is_empty());
    // Another user is not affected.
    let out = server.ssh("cid").arg("echo ok").output();
    let out = finish(out).await;
    assert_eq!(text(&out.stdout), "ok\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_over_max_sessions_per_connection_is_refused_and_the_connection_stays() {
    let server = TestServer::start_with(|o| o.config.limits.max_sessions_per_connection = 2).await;
    let client = server.russh_client("dee").await;
    let a = client.handle.channel_open_session().await.unwrap();
    let _b = client.handle.channel_open_session().await.unwrap();
    assert!(
        client.handle.channel_open_session().await.is_err(),
        "a third session is refused"
    );
    a.exec(true, "echo still").await.unwrap();
    let mut a = a;
    assert_eq!(text(&drain(&mut a).await.stdout), "still\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_lifetime_ends_a_connection_with_the_limit() {
    let server = TestServer::start_with(|o| {
        // Long enough for a loaded machine to finish the login first.
        o.config.timeouts.max_lifetime = Some(Duration::from_secs(3));
    })
    .await;
    let out = server.ssh("eve").arg("sleep 987101").output();
    let out = finish(out).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("max_lifetime (3s) reached"),
        "{}",
        text(&out.stderr)
    );
    assert!(processes_with_argv(&["sleep", "987101"]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_bad_configuration_file_with_the_line_and_runs_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"127.0.0.1:0\"\n[limits]\nmax_per_user = -3\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sshvisor"))
        .args(["serve", "--config"])
        .arg(&bad)
        .output();
    let out = finish(out).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("line 3"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_ended_at_the_idle_timeout_and_a_busy_one_is_not() {
    let server = TestServer::start_with(|o| {
        // Long enough that a loaded machine's login and first output fit well inside.
        o.config.timeouts.idle = Some(Duration::from_secs(3));
    })
    .await;
    let started = std::time::Instant::now();
    let busy = server
        .ssh("fay")
        .arg("for i in $(seq 1 20); do echo tick; sleep 0.2; done")
        .output();
    let idle = server.ssh("gus").arg("sleep 987110").output();
    let (busy, idle) = tokio::join!(finish(busy), finish(idle));
    assert_eq!(idle.status.code(), Some(255));
    assert!(
        text(&idle.stderr).contains("idle timeout (3s) reached"),
        "{}",
        text(&idle.stderr)
    );
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert!(processes_with_argv(&["sleep", "987110"]).is_empty());
    // Output every 0.2 s keeps the other one alive past the timeout.
    assert_eq!(busy.status.code(), Some(0), "{}", text(&busy.stderr));
    assert_eq!(text(&busy.stdout).matches("tick").count(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_ended_at_session_idle_while_a_busy_one_and_the_connection_stay() {
    let server = TestServer::start_with(|o| {
        o.config.timeouts.session_idle = Some(Duration::from_secs(3));
    })
    .await;
    let client = server.russh_client("hal").await;
    let mut quiet = client.handle.channel_open_session().await.unwrap();
    quiet.exec(true, "sleep 987120").await.unwrap();
    let mut busy = client.handle.channel_open_session().await.unwrap();
    busy.exec(true, "for i in $(seq 1 20); do echo tick; sleep 0.2; done")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (quiet, busy) = tokio::join!(drain(&mut quiet), drain(&mut busy));
    // The quiet one was hung up on after 3 s of silence; its process is gone. (The clock
    // started with the session, a moment before `started`.)
    assert_eq!(quiet.signal.as_deref(), Some("HUP"), "{quiet:?}");
    assert!(started.elapsed() >= Duration::from_millis(2500));
    assert!(processes_with_argv(&["sleep", "987120"]).is_empty());
    // Output every 0.2 s kept the other one going to its natural end.
    assert_eq!(busy.status, Some(0));
    assert_eq!(text(&busy.stdout).matches("tick").count(), 20);
    // Only sessions end: the connection is still there and takes a new one.
    let mut again = client.handle.channel_open_session().await.unwrap();
    again.exec(true, "echo still here").await.unwrap();
    assert_eq!(text(&drain(&mut again).await.stdout), "still here\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_unfinished_handshakes_do_not_keep_an_authenticated_user_out() {
    // The embedded defaults: max_unauthenticated 100, max_per_source 100.
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], server.port()));
    let mut flood = Vec::new();
    for _ in 0..200 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut stream = socket.connect(target).await.unwrap();
        // A banner, then silence: a login that never finishes.
        use tokio::io::AsyncWriteExt;
        stream.write_all(b"SSH-2.0-flood\r\n").await.unwrap();
        flood.push(stream);
    }
    // Every pending slot is taken and the rest of the flood is refused by its source limit.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let pending = server
            .list()
            .await
            .iter()
            .filter(|c| c.state == sshvisor_actors::ConnState::Handshaking)
            .count();
        if pending == 100 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pending} pending logins"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut refused = 0;
    while refused < 100 {
        wait_event(&mut events, |e| match e {
            sshvisor_actors::Event::Refused { reason, .. } => {
                assert_eq!(reason, "max_per_source (100) reached for 127.0.0.2");
                Some(())
            }
            _ => None,
        })
        .await;
        refused += 1;
    }
    tokio::time::sleep(sshvisor_actors::MIN_PENDING_AGE).await;
    // A real user still logs in and runs a command, with the OpenSSH client and with russh.
    let out = finish(server.ssh("ivy").arg("echo in despite the flood").output()).await;
    assert_eq!(
        text(&out.stdout),
        "in despite the flood\n",
        "{}",
        text(&out.stderr)
    );
    let client = server.russh_client("ivy").await;
    let mut channel = client.handle.channel_open_session().await.unwrap();
    channel.exec(true, "echo again").await.unwrap();
    assert_eq!(text(&drain(&mut channel).await.stdout), "again\n");
    let listed = server.list().await;
    assert_eq!(
        listed
            .iter()
            .filter(|c| c.state == sshvisor_actors::ConnState::Handshaking)
            .count(),
        99,
        "the first login took the place of the oldest pending flood connection; the second found its slot free"
    );
    drop(flood);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_answering_is_found_by_keepalives_and_its_work_ended() {
    let server = TestServer::start_with(|o| {
        o.config.timeouts.keepalive_interval = Some(Duration::from_secs(1));
        o.config.timeouts.keepalive_count = 2;
    })
    .await;
    let mut events = server.events().await;
    // A relay between client and server that can go silent both ways, like a dead peer or a
    // pulled cable: the sockets stay open, nothing moves.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_port = relay.local_addr().unwrap().port();
    let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server_port = server.port();
    let freezer = frozen.clone();
    tokio::spawn(async move {
        let (client_side, _) = relay.accept().await.unwrap();
        let server_side = tokio::net::TcpStream::connect(("127.0.0.1", server_port))
            .await
            .unwrap();
        let (cr, cw) = client_side.into_split();
        let (sr, sw) = server_side.into_split();
        let pipe = |mut from: tokio::net::tcp::OwnedReadHalf,
                    mut to: tokio::net::tcp::OwnedWriteHalf,
                    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if frozen.load(std::sync::atomic::Ordering::SeqCst) {
                    // Hold both sockets open and pass nothing on.
                    std::future::pending::<()>().await;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        };
        tokio::join!(pipe(cr, sw, freezer.clone()), pipe(sr, cw, freezer.clone()));
    });
    let client = russh_connect(relay_port, &server.client_key_path(), "kai")
        .await
        .unwrap();
    let channel = client.handle.channel_open_session().await.unwrap();
    channel.exec(true, "sleep 987130").await.unwrap();
    let conn = wait_event(&mut events, |e| match e {
        sshvisor_actors::Event::SessionStarted { conn, .. } => Some(*conn),
        _ => None,
    })
    .await;
    frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    let since = std::time::Instant::now();
    let cause = wait_event(&mut events, |e| match e {
        sshvisor_actors::Event::Disconnected { conn: c, cause, .. } if *c == conn => {
            Some(cause.clone())
        }
        _ => None,
    })
    .await;
    let took = since.elapsed();
    // Two unanswered probes a second apart: found in about 2-3 s, not at once, not never.
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "{took:?} {cause:?}"
    );
    assert!(
        matches!(&cause, sshvisor_actors::DisconnectCause::Error { message } if message.contains("eepalive")),
        "{cause:?}"
    );
    eventually("the dead peer's work is gone", || {
        processes_with_argv(&["sleep", "987130"]).is_empty()
    })
    .await;
    drop(channel);
}

/// OpenSSH prints a channel-open failure's text: a session over the limit is told which one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_over_max_sessions_per_connection_tells_the_client_the_limit() {
    let server = TestServer::start_with(|o| o.config.limits.max_sessions_per_connection = 0).await;
    let out = finish(server.ssh("dee").arg("echo never").output()).await;
    let err = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(
            "open failed: administratively prohibited: max_sessions_per_connection (0) reached"
        ),
        "{err}"
    );
    assert!(text(&out.stdout).is_empty());
}
