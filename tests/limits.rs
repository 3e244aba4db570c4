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
    let server = TestServer::start_with(|o| o.limits.max_per_source = 2).await;
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
    let server = TestServer::start_with(|o| o.limits.max_per_user = 1).await;
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
    let server = TestServer::start_with(|o| o.limits.max_sessions_per_connection = 2).await;
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
        o.timeouts.max_lifetime = Some(Duration::from_secs(1));
    })
    .await;
    let out = server.ssh("eve").arg("sleep 987101").output();
    let out = finish(out).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("max_lifetime (1s) reached"),
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
        o.timeouts.idle = Some(Duration::from_secs(1));
    })
    .await;
    let started = std::time::Instant::now();
    let busy = server
        .ssh("fay")
        .arg("for i in 1 2 3 4 5 6 7 8 9 10; do echo tick; sleep 0.2; done")
        .output();
    let idle = server.ssh("gus").arg("sleep 987110").output();
    let (busy, idle) = tokio::join!(finish(busy), finish(idle));
    assert_eq!(idle.status.code(), Some(255));
    assert!(
        text(&idle.stderr).contains("idle timeout (1s) reached"),
        "{}",
        text(&idle.stderr)
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(processes_with_argv(&["sleep", "987110"]).is_empty());
    // Output every 0.2 s keeps the other one alive past the timeout.
    assert_eq!(busy.status.code(), Some(0), "{}", text(&busy.stderr));
    assert_eq!(text(&busy.stdout).matches("tick").count(), 10);
}
