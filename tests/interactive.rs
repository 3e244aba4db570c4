//! Sessions a person lives in: a shell on a terminal (resize, Ctrl-C, Ctrl-D, exit status),
//! environment, signals, and kills that leave no process behind, escapees included.

mod common;

use std::time::Duration;

use common::*;
use russh::client::Msg;
use russh::ChannelMsg;

/// Reads the channel until the accumulated output contains `pattern`.
/// Waits for the reply to a request sent with want_reply.
async fn replied(channel: &mut russh::Channel<Msg>) -> bool {
    tokio::time::timeout(WAIT, async {
        loop {
            match channel.wait().await {
                Some(ChannelMsg::Success) => return true,
                Some(ChannelMsg::Failure) => return false,
                Some(_) => {}
                None => panic!("the channel ended before the reply"),
            }
        }
    })
    .await
    .expect("a reply in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_on_a_terminal_resizes_interrupts_and_ends_with_its_status() {
    let server = TestServer::start().await;
    let client = server.russh_client("pat").await;
    let mut ch = client.handle.channel_open_session().await.unwrap();
    ch.request_pty(true, "xterm-256color", 80, 24, 0, 0, &[])
        .await
        .unwrap();
    assert!(replied(&mut ch).await, "the terminal is granted");
    ch.request_shell(true).await.unwrap();
    assert!(replied(&mut ch).await, "the shell starts");
    let mut seen = String::new();

    ch.data_bytes(&b"PS1='P> '; stty size; echo T=$TERM; tty | sed s/^/tty=/\n"[..])
        .await
        .unwrap();
    read_until(&mut ch, &mut seen, "24 80").await;
    read_until(&mut ch, &mut seen, "T=xterm-256color").await;
    read_until(&mut ch, &mut seen, "tty=/dev/pts/").await;

    let listed = server.list().await;
    let pty = listed[0].sessions[0]
        .pty
        .clone()
        .expect("listed with a terminal");
    assert_eq!((pty.cols, pty.rows), (80, 24));

    ch.window_change(132, 43, 0, 0).await.unwrap();
    ch.data_bytes(&b"stty size\n"[..]).await.unwrap();
    read_until(&mut ch, &mut seen, "43 132").await;

    // Ctrl-C interrupts the foreground program; the shell lives on.
    ch.data_bytes(&b"sleep 987040\n"[..]).await.unwrap();
    eventually("sleep runs", || {
        !processes_with_argv(&["sleep", "987040"]).is_empty()
    })
    .await;
    ch.data_bytes(&b"\x03"[..]).await.unwrap();
    eventually("Ctrl-C ended sleep", || {
        processes_with_argv(&["sleep", "987040"]).is_empty()
    })
    .await;
    ch.data_bytes(&b"echo after-interrupt\n"[..]).await.unwrap();
    read_until(&mut ch, &mut seen, "after-interrupt\r\n").await;

    // Ctrl-D ends the shell and its last status comes back. It is typed at a plain sh, whose
    // terminal stays canonical: bash's readline reads raw, and a ^D typed before readline
    // switches modes is a literal byte, not an end of file.
    ch.data_bytes(&b"exec env PS1=D\\>\\  /bin/sh\n"[..])
        .await
        .unwrap();
    read_until(&mut ch, &mut seen, "D> ").await;
    ch.data_bytes(&b"false\n"[..]).await.unwrap();
    let mut after = seen.split_off(seen.find("D> ").unwrap() + 3);
    read_until(&mut ch, &mut after, "D> ").await;
    ch.data_bytes(&b"\x04"[..]).await.unwrap();
    let end = drain(&mut ch).await;
    assert_eq!(end.status, Some(1), "the shell's last status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_on_a_terminal_and_absurd_terminal_requests() {
    let server = TestServer::start().await;
    let client = server.russh_client("quinn").await;

    // Absurd sizes are clamped, not fatal.
    let mut ch = client.handle.channel_open_session().await.unwrap();
    ch.request_pty(true, "vt100", 1_000_000, 0, 0, 0, &[(russh::Pty::ECHO, 0)])
        .await
        .unwrap();
    assert!(replied(&mut ch).await);
    ch.exec(true, "stty size; tty >/dev/null && echo on-a-tty")
        .await
        .unwrap();
    let out = drain(&mut ch).await;
    assert!(
        text(&out.stdout).contains("24 4096"),
        "{:?}",
        text(&out.stdout)
    );
    assert!(text(&out.stdout).contains("on-a-tty"));
    assert_eq!(out.status, Some(0));

    // A TERM with escape sequences is refused; the session still runs without a terminal.
    let mut ch = client.handle.channel_open_session().await.unwrap();
    ch.request_pty(true, "x\x1b[2Jterm", 80, 24, 0, 0, &[])
        .await
        .unwrap();
    assert!(!replied(&mut ch).await, "a bogus TERM is refused");
    ch.exec(true, "tty >/dev/null || echo no-tty")
        .await
        .unwrap();
    assert_eq!(text(&drain(&mut ch).await.stdout), "no-tty\n");
}

/// A window change past what a terminal takes is clamped, for the terminal and for the listing
/// alike (the listing shows the size the terminal has, not the one asked for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_window_change_is_clamped_for_the_terminal_and_the_listing() {
    let server = TestServer::start().await;
    let client = server.russh_client("ulla").await;
    let mut ch = client.handle.channel_open_session().await.unwrap();
    ch.request_pty(true, "vt100", 80, 24, 0, 0, &[])
        .await
        .unwrap();
    assert!(replied(&mut ch).await, "the terminal is granted");
    ch.request_shell(true).await.unwrap();
    assert!(replied(&mut ch).await, "the shell starts");
    ch.window_change(1_000_000, 0, 0, 0).await.unwrap();
    ch.data_bytes(&b"stty size\n"[..]).await.unwrap();
    let mut seen = String::new();
    read_until(&mut ch, &mut seen, "1 4096").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let listed = server.list().await;
        let pty = listed[0].sessions[0]
            .pty
            .clone()
            .expect("listed with a terminal");
        if (pty.cols, pty.rows) == (4096, 1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "listed as {}x{}",
            pty.cols,
            pty.rows
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_requests_follow_the_allowlist_and_the_session_env_is_set() {
    let server = TestServer::start().await;
    let client = server.russh_client("rosa").await;
    let mut ch = client.handle.channel_open_session().await.unwrap();
    ch.set_env(true, "LANG", "C.UTF-8").await.unwrap();
    assert!(replied(&mut ch).await, "LANG is accepted");
    ch.set_env(true, "LC_TIME", "C").await.unwrap();
    assert!(replied(&mut ch).await, "LC_* is accepted");
    ch.set_env(true, "LD_PRELOAD", "/tmp/evil.so")
        .await
        .unwrap();
    assert!(!replied(&mut ch).await, "LD_PRELOAD is refused");
    ch.set_env(true, "LANG", "x".repeat(100_000)).await.unwrap();
    assert!(!replied(&mut ch).await, "a huge value is refused");
    ch.exec(
        true,
        "echo \"$LANG|$LC_TIME|${LD_PRELOAD-unset}|$USER|$HOME|$SHELL|$SSH_CONNECTION|$SSH_CLIENT\"",
    )
    .await
    .unwrap();
    let out = text(&drain(&mut ch).await.stdout);
    let fields: Vec<&str> = out.trim().split('|').collect();
    assert_eq!(fields[0], "C.UTF-8");
    assert_eq!(fields[1], "C");
    assert_eq!(fields[2], "unset");
    assert!(
        !fields[3].is_empty() && !fields[4].is_empty() && !fields[5].is_empty(),
        "{out}"
    );
    let port = server.port().to_string();
    assert!(
        fields[6].starts_with("127.0.0.1 ") && fields[6].ends_with(&format!("127.0.0.1 {port}")),
        "{out}"
    );
    assert!(
        fields[7].starts_with("127.0.0.1 ") && fields[7].ends_with(&format!(" {port}")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_reach_the_command_and_death_by_signal_is_reported() {
    let server = TestServer::start().await;
    let client = server.russh_client("sam").await;

    let mut ch = client.handle.channel_open_session().await.unwrap();
    ch.exec(
        true,
        "trap 'echo got-usr1' USR1; echo ready; while :; do sleep 0.05; done",
    )
    .await
    .unwrap();
    let mut seen = String::new();
    read_until(&mut ch, &mut seen, "ready").await;
    // A signal that does not exist is refused and changes nothing.
    ch.signal(russh::Sig::Custom("FROBNICATE".into()))
        .await
        .unwrap();
    ch.signal(russh::Sig::USR1).await.unwrap();
    read_until(&mut ch, &mut seen, "got-usr1").await;
    ch.signal(russh::Sig::KILL).await.unwrap();
    let end = drain(&mut ch).await;
    assert_eq!(end.signal.as_deref(), Some("KILL"));

    let mut ch = client.handle.channel_open_session().await.unwrap();
    ch.exec(true, "kill -TERM $$").await.unwrap();
    let end = drain(&mut ch).await;
    assert_eq!(end.signal.as_deref(), Some("TERM"));
    assert_eq!(end.status, None, "no made-up exit status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_session_leaves_no_escaped_process_behind() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let client = server.russh_client("tia").await;
    let mut ch = client.handle.channel_open_session().await.unwrap();
    let cmd = "setsid sleep 987041 & nohup sleep 987042 >/dev/null 2>&1 & (sleep 987043 &); (env -u SSHVISOR_SESSION setsid sleep 987046 &); echo started; sleep 987044";
    ch.exec(true, cmd).await.unwrap();
    let session = wait_started(&mut events, cmd).await;
    let mut seen = String::new();
    read_until(&mut ch, &mut seen, "started").await;
    let all = ["987041", "987042", "987043", "987044", "987046"];
    eventually("every sleep runs", || {
        all.iter()
            .all(|n| processes_with_argv(&["sleep", n]).len() == 1)
    })
    .await;
    let listed = server.ctl(&["ls", "--json"]).output().await.unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    // The shell running the command line and its five sleeps, the one without the session's
    // variable included.
    assert_eq!(listed[0]["sessions"][0]["processes"], 6, "{listed}");

    let out = server
        .ctl(&["kill", &session.to_string(), "--grace", "2s"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    for n in all {
        assert!(
            processes_with_argv(&["sleep", n]).is_empty(),
            "sleep {n} outlived its session"
        );
    }
    let _ = Duration::ZERO;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_command_exits_leaves_no_background_process() {
    let server = TestServer::start().await;
    // The escaped process is usually inside its exec when the shell exits: a few rounds, so
    // that the sweep meets it there.
    for round in 0..5 {
        let tag = format!("98708{round}");
        let out = server
            .ssh("uma")
            .arg(format!(
                "setsid sleep {tag} >/dev/null 2>&1 < /dev/null & echo bye"
            ))
            .output()
            .await
            .unwrap();
        assert_eq!(text(&out.stdout), "bye\n");
        // The exit status is sent once the session's processes are gone.
        assert!(
            processes_with_argv(&["sleep", &tag]).is_empty(),
            "round {round}: the escaped sleep outlived its session"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_variables_are_accepted_and_an_external_sftp_server_can_serve_the_subsystem() {
    let scripts = tempfile::tempdir().unwrap();
    let fake = scripts.path().join("sftp-server");
    // Stands in for OpenSSH's sftp-server: proves it runs with the channel as its stdio.
    std::fs::write(&fake, "#!/bin/sh\necho \"external:$EDITOR\"\nexec cat\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = TestServer::start_with(|o| {
        o.config.accept_env = vec!["EDITOR".into()];
        o.config.sftp_server = Some(fake.clone());
    })
    .await;
    let client = server.russh_client("val").await;
    let mut ch = client.handle.channel_open_session().await.unwrap();
    ch.set_env(true, "EDITOR", "vi").await.unwrap();
    assert!(replied(&mut ch).await, "a configured name is accepted");
    ch.request_subsystem(true, "sftp").await.unwrap();
    assert!(replied(&mut ch).await);
    ch.data_bytes(&b"echoed\n"[..]).await.unwrap();
    ch.eof().await.unwrap();
    let out = drain(&mut ch).await;
    assert_eq!(text(&out.stdout), "external:vi\nechoed\n", "{out:?}");
    assert_eq!(out.status, Some(0));
}

/// Reads the terminal until the accumulated output contains `pattern`.
async fn read_tty_until(
    master: &mut sshvisor::session::pty::Master,
    seen: &mut String,
    pattern: &str,
) {
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        while !seen.contains(pattern) {
            let n = master.read(&mut buf).await.expect("terminal read");
            assert!(
                n > 0,
                "the terminal closed before {pattern:?}; saw {seen:?}"
            );
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {pattern:?}; saw {seen:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_on_a_real_terminal_resizes_interrupts_and_exits_with_the_shell_status() {
    use std::os::unix::process::CommandExt;
    use tokio::io::AsyncWriteExt;

    let server = TestServer::start().await;
    // The test is the person's terminal: ssh runs on a pseudo-terminal we hold the master of.
    let local = sshvisor::session::pty::open(&sshvisor::actors::PtySpec {
        term: "xterm".into(),
        cols: 80,
        rows: 24,
        pix_width: 0,
        pix_height: 0,
        modes: vec![],
    })
    .unwrap();
    let mut cmd = server.ssh("wes").into_std();
    cmd.arg("-tt")
        .stdin(local.slave.try_clone().unwrap())
        .stdout(local.slave.try_clone().unwrap())
        .stderr(local.slave.try_clone().unwrap());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut ssh = tokio::process::Command::from(cmd).spawn().unwrap();
    drop(local.slave);
    let master_fd = local.master;
    let resize_fd = master_fd.try_clone().unwrap();
    let mut master = sshvisor::session::pty::Master::new(master_fd).unwrap();
    let mut seen = String::new();

    master
        .write_all(b"PS1=Q\\>\\  ; stty size\n")
        .await
        .unwrap();
    read_tty_until(&mut master, &mut seen, "24 80").await;

    // The person resizes their window: ssh sends window-change, the remote terminal follows.
    sshvisor::session::pty::resize(&resize_fd, 100, 30, 0, 0);
    let listed_pty = || async {
        server.list().await[0].sessions[0]
            .pty
            .clone()
            .map(|p| (p.cols, p.rows))
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while listed_pty().await != Some((100, 30)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the window change never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    master.write_all(b"stty size\n").await.unwrap();
    read_tty_until(&mut master, &mut seen, "30 100").await;

    // Ctrl-C interrupts the remote foreground program.
    master.write_all(b"sleep 987061\n").await.unwrap();
    eventually("sleep runs", || {
        !processes_with_argv(&["sleep", "987061"]).is_empty()
    })
    .await;
    master.write_all(b"\x03").await.unwrap();
    eventually("Ctrl-C ended sleep", || {
        processes_with_argv(&["sleep", "987061"]).is_empty()
    })
    .await;

    master.write_all(b"exit 7\n").await.unwrap();
    let status = tokio::time::timeout(WAIT, ssh.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(7),
        "ssh exits with the shell's status; saw {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_output_written_just_before_exit_reaches_a_slow_client() {
    let server = TestServer::start().await;
    let client = server.russh_client("olga").await;
    let mut ch = client.handle.channel_open_session().await.unwrap();
    ch.request_pty(false, "xterm", 80, 24, 0, 0, &[])
        .await
        .unwrap();
    ch.exec(
        false,
        "head -c 600000 /dev/zero | tr '\\0' x; echo; echo THE-END",
    )
    .await
    .unwrap();
    // A slow client: nothing is read for a while, so the output waits on the channel window
    // long after the command has exited.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = drain(&mut ch).await;
    let text = text(&out.stdout);
    assert!(
        text.ends_with("THE-END\r\n"),
        "the end of the output was lost"
    );
    assert_eq!(text.matches('x').count(), 600_000);
    assert_eq!(out.status, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_inherits_another_sessions_terminal() {
    let server = TestServer::start().await;
    let client = server.russh_client("pia").await;
    let mut shell = client.handle.channel_open_session().await.unwrap();
    shell
        .request_pty(true, "xterm", 80, 24, 0, 0, &[])
        .await
        .unwrap();
    assert!(replied(&mut shell).await);
    shell.exec(true, "sleep 987070").await.unwrap();
    eventually("the terminal session runs", || {
        !processes_with_argv(&["sleep", "987070"]).is_empty()
    })
    .await;
    let mut other = client.handle.channel_open_session().await.unwrap();
    other.exec(true, "ls -l /proc/self/fd/").await.unwrap();
    let listing = text(&drain(&mut other).await.stdout);
    assert!(
        !listing.contains("ptmx") && !listing.contains("/dev/pts"),
        "{listing}"
    );
}
