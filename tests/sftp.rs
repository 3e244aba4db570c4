//! sftp and scp with the OpenSSH clients against the in-process sftp subsystem, and killing
//! sftp sessions (alone, mid-transfer, or with their connection).

mod common;

use std::path::Path;
use std::process::Stdio;

use common::*;
use sshvisor_actors::{SessionKind, SupervisorMsg, Target};
use tokio::io::AsyncWriteExt;

/// A file of `len` pseudo-random bytes.
fn random_file(path: &Path, len: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(len);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    std::fs::write(path, &data).unwrap();
    data
}

/// OpenSSH options for sftp/scp (both take -P for the port).
fn client_opts(server: &TestServer) -> Vec<String> {
    vec![
        "-F".into(),
        "/dev/null".into(),
        "-i".into(),
        path_str(&server.client_key_path()),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        format!(
            "UserKnownHostsFile={}",
            path_str(&server.state_dir().join("known_hosts"))
        ),
        "-P".into(),
        server.port().to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_put_and_get_and_scp_both_ways_keep_a_file_identical() {
    let server = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("data.bin");
    let data = random_file(&local, 3 * 1024 * 1024 + 17);
    let remote_dir = work.path().join("remote");
    std::fs::create_dir(&remote_dir).unwrap();

    let batch = work.path().join("batch");
    std::fs::write(
        &batch,
        format!(
            "cd {dir}\nput {local} up.bin\nget up.bin {back}\nmkdir sub\nrename up.bin sub/moved.bin\nls -l sub\n",
            dir = remote_dir.display(),
            local = local.display(),
            back = work.path().join("back.bin").display()
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new("sftp")
        .args(client_opts(&server))
        .arg("-b")
        .arg(&batch)
        .arg("walt@127.0.0.1")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "sftp failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(work.path().join("back.bin")).unwrap(), data);
    assert_eq!(
        std::fs::read(remote_dir.join("sub/moved.bin")).unwrap(),
        data
    );
    assert!(
        text(&out.stdout).contains("moved.bin"),
        "{}",
        text(&out.stdout)
    );

    // scp (sftp underneath in OpenSSH 9) up and down.
    let up = tokio::process::Command::new("scp")
        .arg("-v")
        .args(client_opts(&server))
        .arg(&local)
        .arg(format!(
            "walt@127.0.0.1:{}",
            remote_dir.join("scp.bin").display()
        ))
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        up.status.success(),
        "scp up: {:?} {} {}",
        up.status,
        text(&up.stdout),
        text(&up.stderr)
    );
    assert_eq!(std::fs::read(remote_dir.join("scp.bin")).unwrap(), data);
    let down = tokio::process::Command::new("scp")
        .args(client_opts(&server))
        .arg(format!(
            "walt@127.0.0.1:{}",
            remote_dir.join("scp.bin").display()
        ))
        .arg(work.path().join("scp-back.bin"))
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(down.status.success(), "scp down: {}", text(&down.stderr));
    assert_eq!(
        std::fs::read(work.path().join("scp-back.bin")).unwrap(),
        data
    );

    // Errors come back as sftp status messages, and the server serves on.
    std::fs::write(&batch, "get /no/such/file.bin\n").unwrap();
    let out = tokio::process::Command::new("sftp")
        .args(client_opts(&server))
        .arg("-b")
        .arg(&batch)
        .arg("walt@127.0.0.1")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );
}

/// Open descriptors of this (test) process that point into `dir`.
fn open_files_under(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(dir)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_sftp_session_mid_transfer_leaves_nothing_open() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let work = tempfile::tempdir().unwrap();
    let big = work.path().join("big.bin");
    random_file(&big, 8 * 1024 * 1024);
    // 400 kbit/s: the download takes minutes, so the kill lands in the middle of it.
    let mut sftp_client = tokio::process::Command::new("sftp")
        .args(client_opts(&server))
        .args(["-l", "400", "-b", "-"])
        .arg("xena@127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = sftp_client.stdin.take().unwrap();
    stdin
        .write_all(
            format!(
                "get {} {}\n",
                big.display(),
                work.path().join("partial.bin").display()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let session = wait_event(&mut events, |e| match e {
        sshvisor_actors::Event::SessionStarted {
            session,
            kind: SessionKind::Subsystem,
            ..
        } => Some(*session),
        _ => None,
    })
    .await;
    eventually("the transfer is under way", || {
        open_files_under(work.path()) > 0
            && std::fs::metadata(work.path().join("partial.bin")).is_ok_and(|m| m.len() > 0)
    })
    .await;
    let listed = server.list().await;
    let s = listed[0].sessions.iter().find(|s| s.id == session).unwrap();
    assert_eq!(s.command.as_deref(), Some("sftp"));

    let out = server
        .ctl(&["kill", &session.to_string(), "--grace", "1s"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        open_files_under(work.path()),
        0,
        "a file stayed open after the kill"
    );
    // The client itself may take a while to notice: the channel's CLOSE waits behind the data
    // already granted to it, which it reads at 400 kbit/s. The server's side is what counts.
    assert!(server
        .list()
        .await
        .iter()
        .all(|c| c.sessions.iter().all(|s| s.id != session)));
    let partial = std::fs::metadata(work.path().join("partial.bin"))
        .unwrap()
        .len();
    assert!(partial < 8 * 1024 * 1024, "the transfer was not cut short");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_connection_with_a_shell_an_exec_and_an_sftp_session_ends_them_all_first() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let client = server.russh_client("yara").await;
    let shell = client.handle.channel_open_session().await.unwrap();
    shell
        .request_pty(false, "xterm", 80, 24, 0, 0, &[])
        .await
        .unwrap();
    shell.request_shell(false).await.unwrap();
    let exec = client.handle.channel_open_session().await.unwrap();
    exec.exec(false, "sleep 987050").await.unwrap();
    let sftp = client.handle.channel_open_session().await.unwrap();
    sftp.request_subsystem(false, "sftp").await.unwrap();
    let mut started = 0;
    while started < 3 {
        wait_event(&mut events, |e| {
            matches!(e, sshvisor_actors::Event::SessionStarted { .. }).then_some(())
        })
        .await;
        started += 1;
    }
    eventually("the exec runs", || {
        !processes_with_argv(&["sleep", "987050"]).is_empty()
    })
    .await;
    let conn = server.list().await[0].clone();
    assert_eq!(conn.sessions.len(), 3);

    let report = ractor::call_t!(
        server.daemon.supervisor(),
        |reply| SupervisorMsg::Kill {
            target: Target::Connection(conn.id),
            reason: "maintenance".into(),
            grace: std::time::Duration::from_secs(3),
            by: None,
            reply,
        },
        20_000
    )
    .unwrap()
    .unwrap();
    assert_eq!(report.sessions_closed, 3);
    assert!(server.list().await.is_empty());
    assert!(processes_with_argv(&["sleep", "987050"]).is_empty());
    // Every session closed before the disconnect reached the client.
    eventually("the client got the reason", || {
        client.log.position("disconnect ").is_some()
    })
    .await;
    let order = client.log.entries();
    let disconnect = client.log.position("disconnect ").unwrap();
    for ch in [shell.id(), exec.id(), sftp.id()] {
        let eof = client.log.position(&format!("eof {ch}"));
        assert!(
            eof.is_some_and(|at| at < disconnect),
            "channel {ch}: {order:?}"
        );
    }
}

/// An sftp session of `client`, spoken by russh-sftp's raw client.
async fn raw_sftp(client: &Client) -> russh_sftp::client::RawSftpSession {
    let channel = client.handle.channel_open_session().await.unwrap();
    channel.request_subsystem(true, "sftp").await.unwrap();
    let raw = russh_sftp::client::RawSftpSession::new(channel.into_stream());
    raw.init().await.unwrap();
    raw
}

/// Opens `path` for reading: the handle, or the refusal's text.
async fn open(raw: &russh_sftp::client::RawSftpSession, path: &str) -> Result<String, String> {
    use russh_sftp::protocol::{FileAttributes, OpenFlags};
    match raw
        .open(path, OpenFlags::READ, FileAttributes::default())
        .await
    {
        Ok(handle) => Ok(handle.handle),
        Err(russh_sftp::client::error::Error::Status(status)) => {
            assert_eq!(
                status.status_code,
                russh_sftp::protocol::StatusCode::Failure
            );
            Err(status.error_message)
        }
        Err(e) => panic!("open {path}: {e:?}"),
    }
}

/// Opens `path` until a refusal; returns the handles and the refusal's text.
async fn open_until_refused(
    raw: &russh_sftp::client::RawSftpSession,
    path: &str,
) -> (Vec<String>, String) {
    let mut handles = Vec::new();
    loop {
        match open(raw, path).await {
            Ok(handle) => handles.push(handle),
            Err(text) => return (handles, text),
        }
        assert!(handles.len() <= 64, "no budget stopped the opens");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_handles_over_a_budget_are_refused_by_name_and_the_sessions_go_on() {
    let server = TestServer::start_with(|o| {
        o.config.limits.max_sftp_handles_per_session = 4;
        o.config.limits.max_sftp_handles_per_connection = 6;
        o.config.limits.max_sftp_handles_per_user = 8;
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("f");
    std::fs::write(&file, b"hoard").unwrap();
    let file = path_str(&file);
    let dir = path_str(work.path());

    // One session: its own budget, files and directories alike.
    let a = server.russh_client("hoarder").await;
    let a1 = raw_sftp(&a).await;
    let (mut held, refusal) = open_until_refused(&a1, &file).await;
    assert_eq!(held.len(), 4);
    assert!(
        refusal.contains("max_sftp_handles_per_session (4) reached"),
        "{refusal}"
    );
    assert!(a1.opendir(&dir).await.is_err());
    assert_eq!(a1.limits().await.unwrap().max_open_handles, 4);
    // The session goes on: it reads what it holds, and a closed handle makes room.
    let data = a1.read(&held[0], 0, 16).await.unwrap();
    assert_eq!(data.data, b"hoard");
    a1.close(held.pop().unwrap()).await.unwrap();
    held.push(open(&a1, &file).await.unwrap());

    // A second session of the connection: the connection's budget (6) is the limit.
    let a2 = raw_sftp(&a).await;
    let (held2, refusal) = open_until_refused(&a2, &file).await;
    assert_eq!(held2.len(), 2);
    assert!(
        refusal.contains("max_sftp_handles_per_connection (6) reached"),
        "{refusal}"
    );

    // Another connection of the same user: the user's budget (8).
    let b = server.russh_client("hoarder").await;
    let b1 = raw_sftp(&b).await;
    let (held3, refusal) = open_until_refused(&b1, &file).await;
    assert_eq!(held3.len(), 2);
    assert!(
        refusal.contains("max_sftp_handles_per_user (8) reached for hoarder"),
        "{refusal}"
    );

    // Another user is not held back by the hoarder.
    let c = server.russh_client("someone-else").await;
    let c1 = raw_sftp(&c).await;
    let (held4, _) = open_until_refused(&c1, &file).await;
    assert_eq!(held4.len(), 4);

    // The hoarder's first connection leaves: its budget comes back to the user.
    a.handle
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut more = Vec::new();
    while more.len() < 2 {
        match open(&b1, &file).await {
            Ok(handle) => more.push(handle),
            Err(text) => {
                assert!(tokio::time::Instant::now() < deadline, "{text}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    assert_eq!(
        open(&b1, &file).await.unwrap_err(),
        "too many open handles: max_sftp_handles_per_session (4) reached; close some"
    );
}
