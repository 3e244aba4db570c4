//! Sessions start with every signal at its default, whatever the server inherited. A daemon
//! started under `nohup` ignores SIGHUP; its sessions must still end on the hangup a kill sends
//! them, not only at the grace's SIGKILL. (A test binary of its own: it changes the process's
//! signal dispositions.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{signal, SigHandler, Signal};
use russh::{client, Channel};
use sshvisor_actors::{KillReport, SessionId, SupervisorMsg, Target};

/// Kills `session` (a grace of 5 s) and checks that it ended on the hangup, at once.
async fn hang_up(server: &TestServer, session: SessionId, channel: &mut Channel<client::Msg>) {
    let started = Instant::now();
    let report = kill_session(server, session).await;
    assert!(!report.forced, "{report:?}");
    // Well before the grace would have run out.
    assert!(started.elapsed() < Duration::from_millis(4_500));
    assert_eq!(drain(channel).await.signal.as_deref(), Some("HUP"));
}

async fn kill_session(server: &TestServer, session: SessionId) -> KillReport {
    ractor::call_t!(
        server.daemon.supervisor(),
        |reply| SupervisorMsg::Kill {
            target: Target::Session(session),
            reason: "hang up".into(),
            grace: Duration::from_secs(5),
            by: None,
            reply,
        },
        20_000
    )
    .unwrap()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_ignores_sighup_still_hangs_up_on_its_sessions() {
    // SAFETY: setting a disposition to "ignore" runs no code of ours in a handler.
    unsafe { signal(Signal::SIGHUP, SigHandler::SigIgn) }.unwrap();
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let client = server.russh_client("ivy").await;

    let mut plain = client.handle.channel_open_session().await.unwrap();
    plain.exec(true, "sleep 987150").await.unwrap();
    let session = wait_started(&mut events, "sleep 987150").await;
    hang_up(&server, session, &mut plain).await;

    let mut tty = client.handle.channel_open_session().await.unwrap();
    tty.request_pty(false, "xterm", 80, 24, 0, 0, &[])
        .await
        .unwrap();
    tty.exec(true, "sleep 987151").await.unwrap();
    let session = wait_started(&mut events, "sleep 987151").await;
    hang_up(&server, session, &mut tty).await;
    assert!(processes_with_argv(&["sleep", "987150"]).is_empty());
    assert!(processes_with_argv(&["sleep", "987151"]).is_empty());
}
