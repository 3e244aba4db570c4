//! What a person sees with the OpenSSH client: command output and exit status, and the reason
//! text when an operator kills the connection.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sshvisor_actors::{Event, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_runs_a_command_and_gets_its_output_and_exit_status() {
    let server = TestServer::start().await;
    let out = server
        .ssh("alice")
        .arg("echo hello; echo oops >&2")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\n");
    assert!(text(&out.stderr).contains("oops"));

    let out = server
        .ssh("alice")
        .arg("echo partial; exit 7")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(text(&out.stdout), "partial\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_written_just_before_exit_is_delivered_in_full() {
    let server = TestServer::start().await;
    let out = server
        .ssh("alice")
        .arg("head -c 3000000 /dev/zero | tr '\\0' x; exit 0")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout.len(), 3_000_000);
    assert!(out.stdout.iter().all(|&b| b == b'x'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_subsystems_are_refused_with_a_clear_message() {
    let server = TestServer::start().await;
    for name in ["nosuch", "../../bin/sh"] {
        let out = server
            .ssh("alice")
            .args(["-s", name])
            .output()
            .await
            .unwrap();
        assert_ne!(out.status.code(), Some(0));
        assert!(
            text(&out.stderr).contains("is not available on this server"),
            "stderr: {}",
            text(&out.stderr)
        );
    }
    // The server serves on.
    let out = server
        .ssh("alice")
        .arg("echo still here")
        .output()
        .await
        .unwrap();
    assert_eq!(text(&out.stdout), "still here\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_kill_ends_an_ssh_connection_with_the_reason_and_returns_after_it_is_gone() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut ssh = server.ssh("bob").arg("sleep 987001").spawn().unwrap();
    let session = wait_started(&mut events, "sleep 987001").await;
    let conn = server
        .list()
        .await
        .into_iter()
        .find(|c| c.sessions.iter().any(|s| s.id == session))
        .expect("the session's connection is listed");
    assert_eq!(conn.user.as_deref(), Some("bob"));
    assert!(conn
        .client_version
        .as_deref()
        .unwrap_or("")
        .contains("OpenSSH"));
    eventually("sleep runs", || {
        processes_with_argv(&["sleep", "987001"]).len() == 1
    })
    .await;

    let prefix = &conn.id.to_string()[..8];
    let started = Instant::now();
    let out = server
        .ctl(&["kill", prefix, "--reason", "maintenance at noon"])
        .output()
        .await
        .unwrap();
    let ctl_took = started.elapsed();
    assert!(
        out.status.success(),
        "ctl kill failed: {}",
        text(&out.stderr)
    );
    let printed = text(&out.stdout);
    assert!(
        printed.contains(&format!("killed connection {}", conn.id)),
        "{printed}"
    );
    assert!(printed.contains("1 session closed"), "{printed}");

    // When ctl returns, everything is already gone on the server.
    assert!(server.list().await.iter().all(|c| c.id != conn.id));
    assert!(processes_with_argv(&["sleep", "987001"]).is_empty());

    let status = tokio::time::timeout(WAIT, ssh.wait())
        .await
        .unwrap()
        .unwrap();
    let ssh_took = started.elapsed();
    let mut stderr = String::new();
    use tokio::io::AsyncReadExt;
    ssh.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(255));
    assert!(
        stderr.contains("maintenance at noon"),
        "ssh printed: {stderr}"
    );
    eprintln!("kill latency: ctl process round trip {ctl_took:?}, ssh exit after {ssh_took:?}");

    let cause = wait_event(&mut events, |e| match e {
        Event::Disconnected { conn: c, cause, .. } if *c == conn.id => Some(cause.clone()),
        _ => None,
    })
    .await;
    assert!(
        matches!(cause, sshvisor_actors::DisconnectCause::Killed { ref reason, .. } if reason == "maintenance at noon")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_session_leaves_no_process_behind_even_background_ones() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let cmd = "sleep 987003 & sleep 987003 & sleep 987003; wait";
    let mut ssh = server.ssh("carol").arg(cmd).spawn().unwrap();
    let session = wait_started(&mut events, cmd).await;
    eventually("three sleeps run", || {
        processes_with_argv(&["sleep", "987003"]).len() == 3
    })
    .await;
    let out = server
        .ctl(&["kill", &session.to_string(), "--grace", "2s"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("killed session {session}")));
    assert!(processes_with_argv(&["sleep", "987003"]).is_empty());
    // Killing the only session leaves the connection up; ssh ends because its session did.
    let status = tokio::time::timeout(WAIT, ssh.wait())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_after_the_grace_and_the_report_says_forced() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut ssh = server.ssh("dave").arg("yes 987004").spawn().unwrap();
    let session = wait_started(&mut events, "yes 987004").await;
    let pid = ssh.id().unwrap() as i32;
    let conn = server
        .list()
        .await
        .into_iter()
        .find(|c| c.sessions.iter().any(|s| s.id == session))
        .unwrap();
    // The client stops reading: wait until its socket holds unread output from the server.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    eventually("the stopped client's socket fills up", || {
        tcp_rx_queue(conn.peer).is_some_and(|queued| queued > 16 * 1024)
    })
    .await;
    // And nothing moves any more: the client's receive buffer is full, or the channel's window
    // is spent (how much of the output sits where depends on how far the kernel grew the
    // client's receive buffer before it stopped); either way the server cannot send, and the
    // goodbye will not get out.
    eventually("the connection to the stopped client is stuck", || {
        let before = (tcp_rx_queue(conn.peer), tcp_tx_queue_to(conn.peer));
        std::thread::sleep(Duration::from_millis(100));
        let after = (tcp_rx_queue(conn.peer), tcp_tx_queue_to(conn.peer));
        before.0.is_some() && after == before
    })
    .await;

    let grace = Duration::from_secs(1);
    let started = Instant::now();
    let report = ractor::call_t!(
        server.daemon.supervisor(),
        |reply| sshvisor_actors::SupervisorMsg::Kill {
            target: Target::Connection(conn.id),
            reason: "stalled".into(),
            grace,
            by: None,
            reply,
        },
        20_000
    )
    .unwrap()
    .unwrap();
    let took = started.elapsed();
    assert!(report.forced, "{report:?}");
    assert!(took >= grace, "forced before the grace ran out: {took:?}");
    // A kill stuck on the stalled client would not reply at all; the margin is for a loaded
    // machine.
    assert!(
        took < grace + Duration::from_secs(10),
        "the reply took {took:?}"
    );
    assert!(processes_with_argv(&["yes", "987004"]).is_empty());
    assert!(server.list().await.is_empty());

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    let status = tokio::time::timeout(WAIT, ssh.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(255));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cat_echoes_megabytes_to_a_client_that_reads_late() {
    let server = TestServer::start().await;
    let mut cmd = server.ssh("ned");
    cmd.arg("cat");
    let ssh: Vec<String> = cmd
        .as_std()
        .get_args()
        .map(|a| format!("'{}'", a.to_string_lossy().replace('\'', "'\\''")))
        .collect();
    // All input is sent while the reader sleeps: cat blocks on its output meanwhile, and the
    // server must neither deadlock nor lose input.
    let pipeline = format!(
        "head -c 6000000 /dev/zero | ssh {} | (sleep 2; wc -c)",
        ssh.join(" ")
    );
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&pipeline)
            .output(),
    )
    .await
    .expect("no deadlock")
    .unwrap();
    assert_eq!(text(&out.stdout).trim(), "6000000", "{}", text(&out.stderr));
}

/// Forwarding sshvisor does not serve is refused once, with a reason, and the command still
/// runs. (A `tun@openssh.com` channel, `ssh -w`, is still refused twice by russh 0.65 itself,
/// before any callback of ours: OpenSSH then drops the connection. See docs/OPERATIONS.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarding_channel_we_do_not_serve_is_refused_and_the_command_still_runs() {
    let server = TestServer::start().await;
    let cases: &[&[&str]] = &[&["-o", "ForwardAgent=yes"]];
    for args in cases {
        let out = server.ssh("tia").args(*args).arg("echo ran").output();
        let out = tokio::time::timeout(WAIT, out)
            .await
            .expect("ssh ends")
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(text(&out.stdout), "ran\n", "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("nonexistent channel"),
            "{args:?}: {stderr}"
        );
    }
    // A direct-tcpip channel (`-W` instead of a session) is refused once, with a reason.
    let out = server.ssh("tia").args(["-W", "127.0.0.1:9"]).output();
    let out = tokio::time::timeout(WAIT, out)
        .await
        .expect("ssh ends")
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("open failed: administratively prohibited: TCP forwarding is not served"),
        "{stderr}"
    );
    assert!(!stderr.contains("nonexistent channel"), "{stderr}");
}
