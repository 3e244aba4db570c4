//! What a hostile or broken client does to the server: sockets that stall, floods of refused
//! connections, and channels jammed with requests. The server must close what it drops, bound
//! what it holds, and keep its listing true.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A raw TCP client that sends its SSH banner and then nothing at all.
async fn stalled_after_banner(port: u16) -> TcpStream {
    let mut socket = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    socket
        .write_all(b"SSH-2.0-Stalled_1.0\r\n")
        .await
        .expect("send the banner");
    socket
}

/// Reads (and drops) whatever the server sends until it closes the socket.
async fn until_closed(mut socket: TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_login_past_its_grace_is_closed_at_once_not_after_the_kill_grace() {
    let kill_grace = Duration::from_secs(60);
    let server = TestServer::start_with(|o| {
        o.config.timeouts.kill_grace = kill_grace;
        o.config.timeouts.login_grace = Duration::from_secs(1);
    })
    .await;
    let started = Instant::now();
    let socket = stalled_after_banner(server.port()).await;
    tokio::time::timeout(kill_grace / 2, until_closed(socket))
        .await
        .expect("closed soon after the login grace, not at the kill grace");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed before the login grace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_clients_that_stall_are_closed_within_the_refusal_timeout() {
    let server = TestServer::start_with(|o| o.config.limits.max_per_source = 1).await;
    let _holder = server.russh_client("amy").await;
    let started = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..24 {
        stalled.push(stalled_after_banner(server.port()).await);
    }
    // Before the fix these were held 25 s to over 100 s.
    let all = futures::future::join_all(stalled.into_iter().map(until_closed));
    tokio::time::timeout(sshvisor::ssh::server::REFUSAL_TIMEOUT + WAIT, all)
        .await
        .expect("every refused socket is closed by the refusal timeout");
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_in_progress_are_bounded_and_the_rest_are_closed_at_once() {
    let server = TestServer::start_with(|o| o.config.limits.max_per_source = 1).await;
    let _holder = server.russh_client("amy").await;
    let extra = 16;
    let started = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..sshvisor::ssh::server::MAX_REFUSING + extra {
        stalled.push(stalled_after_banner(server.port()).await);
    }
    // Those over the bound close at once; the others only at the refusal timeout.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for socket in stalled {
        let tx = tx.clone();
        tokio::spawn(async move {
            until_closed(socket).await;
            let _ = tx.send(());
        });
    }
    for i in 0..extra {
        let early = sshvisor::ssh::server::REFUSAL_TIMEOUT - Duration::from_secs(1);
        tokio::time::timeout_at(started + early, rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("only {i} of the {extra} refusals over the bound were closed at once")
            });
    }
}

/// Sends `count` env requests that want a reply on `channel`, waiting for each answer.
async fn env_requests(channel: &mut russh::Channel<russh::client::Msg>, count: usize) {
    for i in 0..count {
        channel
            .set_env(true, format!("LC_JAM{i}"), "x")
            .await
            .expect("the request is sent");
        let answer = tokio::time::timeout(WAIT, channel.wait())
            .await
            .unwrap_or_else(|_| panic!("request {i} was never answered: the connection jammed"));
        assert!(
            matches!(
                answer,
                Some(russh::ChannelMsg::Success | russh::ChannelMsg::Failure)
            ),
            "request {i}: {answer:?}"
        );
    }
}

/// russh queues every request of a session channel for its `Channel`, 100 at most; a queue
/// nobody drains stopped the whole connection at the 101st, and a client that left was never
/// noticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_requests_before_exec_are_all_answered_and_a_client_that_leaves_is_gone() {
    let server = TestServer::start().await;
    let client = server.russh_client("jay").await;
    let mut channel = client.handle.channel_open_session().await.unwrap();
    env_requests(&mut channel, 300).await;
    channel.exec(true, "echo ok").await.unwrap();
    let result = drain(&mut channel).await;
    assert_eq!(text(&result.stdout), "ok\n");
    assert_eq!(result.status, Some(0));

    let leaver = server.russh_client("kim").await;
    let mut channel = leaver.handle.channel_open_session().await.unwrap();
    env_requests(&mut channel, 300).await;
    drop(channel);
    drop(leaver);
    let deadline = Instant::now() + WAIT;
    while server
        .list()
        .await
        .iter()
        .any(|c| c.user.as_deref() == Some("kim"))
    {
        assert!(
            Instant::now() < deadline,
            "the connection of a client that left is still listed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A command that leaves 16 MiB of input unread ends its session: the client is told why on
/// stderr and gets how the command ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_at_the_stdin_limit_tells_the_client_why_and_how_it_ended() {
    let server = TestServer::start().await;
    let client = server.russh_client("lee").await;
    let mut channel = client.handle.channel_open_session().await.unwrap();
    channel.exec(true, "sleep 987120").await.unwrap();
    let writer = channel.make_writer();
    let flood = tokio::spawn(async move {
        let mut writer = writer;
        let chunk = vec![b'x'; 64 * 1024];
        // More than the limit: the writes stop mattering once the session is gone.
        for _ in 0..(sshvisor::session::app::STDIN_LIMIT / chunk.len() + 64) {
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let result = drain(&mut channel).await;
    flood.abort();
    let stderr = text(&result.stderr);
    assert!(
        stderr.contains("sshvisor: session ended: the command left 16 MiB of input unread"),
        "{stderr:?}"
    );
    assert!(
        result.status.is_some() || result.signal.is_some(),
        "neither an exit status nor a signal: {result:?}"
    );
    assert!(processes_with_argv(&["sleep", "987120"]).is_empty());
}

/// The same through OpenSSH, which prints the message and exits with the signal's code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_shows_the_stdin_limit_message_and_an_exit_code() {
    let server = TestServer::start().await;
    let zero = std::fs::File::open("/dev/zero").unwrap();
    let out = server
        .ssh("lee")
        .arg("sleep 987121")
        .stdin(std::process::Stdio::from(zero))
        .output();
    let out = tokio::time::timeout(WAIT, out)
        .await
        .expect("ssh ends")
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("sshvisor: session ended: the command left 16 MiB of input unread"),
        "{stderr:?}"
    );
    // The command died of the SIGHUP: OpenSSH reports an exit signal as 255.
    assert_eq!(out.status.code(), Some(255), "{stderr}");
}
