//! Bad input gets a clear error and the server serves on: clients that never send a banner or
//! send garbage, malformed and oversized control requests, unknown and ambiguous IDs.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use sshvisor_actors::{ConnState, Event};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_garbage_clients_do_not_disturb_a_working_session() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let client = server.russh_client("henry").await;
    let mut echo = client.handle.channel_open_session().await.unwrap();
    echo.exec(true, "cat").await.unwrap();
    wait_started(&mut events, "cat").await;

    // A client that connects and says nothing.
    let silent = TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .unwrap();
    let silent_id = wait_event(&mut events, |e| match e {
        Event::Connected { conn, peer } if *peer == silent.local_addr().unwrap() => Some(*conn),
        _ => None,
    })
    .await;

    // A client that sends garbage instead of a banner is dropped.
    let mut garbage = TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\x02\xff\xfe garbage\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(WAIT, garbage.read_to_end(&mut seen)).await;
    assert!(closed.is_ok(), "the garbage client is disconnected");
    assert!(
        text(&seen).starts_with("SSH-2.0-sshvisor"),
        "got {:?}",
        text(&seen)
    );

    // The working session still works, and a new one too.
    echo.data_bytes(&b"ping\n"[..]).await.unwrap();
    echo.eof().await.unwrap();
    assert_eq!(text(&drain(&mut echo).await.stdout), "ping\n");
    let out = server.ssh("henry").arg("echo fine").output().await.unwrap();
    assert_eq!(text(&out.stdout), "fine\n");

    // The silent one is listed as handshaking and can be killed like any other.
    let listed = server.list().await;
    let entry = listed
        .iter()
        .find(|c| c.id == silent_id)
        .expect("silent client listed");
    assert_eq!(entry.state, ConnState::Handshaking);
    assert!(!listed
        .iter()
        .any(|c| c.peer == garbage.local_addr().unwrap()));
    let out = server
        .ctl(&["kill", &silent_id.to_string(), "--grace", "1s"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut rest = Vec::new();
    let mut silent = silent;
    tokio::time::timeout(WAIT, silent.read_to_end(&mut rest))
        .await
        .expect("the killed silent client sees its connection end")
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_ambiguous_ids_are_refused_with_a_message_and_a_failing_status() {
    let server = TestServer::start().await;
    let out = server
        .ctl(&["kill", "0000dead-beef"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .contains("no live connection or session has an ID starting with \"0000dead-beef\""),
        "{}",
        text(&out.stderr)
    );
    // A full ID is tried as a connection first, then as a session: neither, the same message.
    let unknown = "0000dead-beef-4000-8000-000000000000";
    let out = server.ctl(&["kill", unknown]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!(
            "no live connection or session has an ID starting with \"{unknown}\""
        )),
        "{}",
        text(&out.stderr)
    );

    // Open connections until two IDs share their first hex digit (at most 17 are needed).
    let mut clients = Vec::new();
    let shared = loop {
        clients.push(server.russh_client("ivy").await);
        let ids: Vec<String> = server
            .list()
            .await
            .iter()
            .map(|c| c.id.to_string())
            .collect();
        let firsts: Vec<char> = ids.iter().map(|id| id.chars().next().unwrap()).collect();
        if let Some(c) = firsts
            .iter()
            .find(|c| firsts.iter().filter(|d| d == c).count() > 1)
        {
            break c.to_string();
        }
        assert!(clients.len() <= 17);
    };
    let before = server.list().await.len();
    let out = server.ctl(&["kill", &shared]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is ambiguous"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(server.list().await.len(), before, "nothing was killed");

    // A mix: the known ID is killed, the unknown one reported, the status says failure.
    let victim = server.list().await[0].id.to_string();
    let out = server
        .ctl(&["kill", &victim, "nope"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains(&format!("killed connection {victim}")));
    assert!(text(&out.stderr).contains("\"nope\""));
    assert_eq!(server.list().await.len(), before - 1);
}

async fn roundtrip(stream: &mut BufReader<UnixStream>, line: &[u8]) -> serde_json::Value {
    stream.get_mut().write_all(line).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, stream.read_line(&mut answer))
        .await
        .unwrap()
        .unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("bad answer {answer:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_control_requests_get_clear_errors_and_the_socket_serves_on() {
    let server = TestServer::start().await;
    let path = server.state_dir().join("ctl.sock");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let mut ctl = BufReader::new(UnixStream::connect(&path).await.unwrap());
    let r = roundtrip(&mut ctl, b"this is not json\n").await;
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().unwrap().contains("not JSON"));
    let r = roundtrip(&mut ctl, b"{\"id\":9,\"cmd\":\"format_disk\"}\n").await;
    assert_eq!(r["id"], 9);
    assert!(r["error"]
        .as_str()
        .unwrap()
        .contains("unknown command \"format_disk\""));
    let r = roundtrip(
        &mut ctl,
        b"{\"id\":10,\"cmd\":\"kill\",\"target\":\"ab\",\"grace\":\"forever\"}\n",
    )
    .await;
    assert!(r["error"].as_str().unwrap().contains("invalid grace"));
    let r = roundtrip(
        &mut ctl,
        b"{\"id\":12,\"cmd\":\"kill\",\"target\":\"ab\",\"grace\":\"18446744073709551615s\"}\n",
    )
    .await;
    assert_eq!(r["id"], 12);
    assert!(r["error"].as_str().unwrap().contains("grace"), "{r}");
    let r = roundtrip(
        &mut ctl,
        b"{\"id\":13,\"cmd\":\"kill_all\",\"grace\":\"3h\"}\n",
    )
    .await;
    assert!(r["error"].as_str().unwrap().contains("too long"), "{r}");
    let r = roundtrip(&mut ctl, b"{\"id\":11,\"cmd\":\"ls\"}\n").await;
    assert_eq!(r["ok"], true);
    assert_eq!(r["result"], serde_json::json!([]));

    // An oversized request is refused and that control connection closed.
    let mut big = vec![b'x'; 100 * 1024];
    big.push(b'\n');
    let r = roundtrip(&mut ctl, &big).await;
    assert!(r["error"].as_str().unwrap().contains("too long"));
    let mut rest = String::new();
    let n = tokio::time::timeout(WAIT, ctl.read_line(&mut rest))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection is closed after an oversized request");

    // The server serves on: control and SSH.
    let out = server.ctl(&["ls", "--json"]).output().await.unwrap();
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim(), "[]");
    let out = server.ssh("jack").arg("echo ok").output().await.unwrap();
    assert_eq!(text(&out.stdout), "ok\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_without_a_server_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sshvisor"))
        .args(["ctl", "--state-dir"])
        .arg(dir.path())
        .arg("ls")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not found: is `sshvisor serve` running"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_is_refused_by_peer_credentials_even_if_the_file_mode_allows_it() {
    if !nix::unistd::geteuid().is_root() || !std::path::Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: needs root and setpriv to act as another user");
        return;
    }
    let server = TestServer::start().await;
    // Open the file-level guard on purpose: the uid check must still refuse.
    std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(server.state_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = server.state_dir().join("ctl.sock");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = tokio::process::Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_sshvisor"))
        .args(["ctl", "--state-dir"])
        .arg(server.state_dir())
        .arg("ls")
        .output()
        .await
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("permission denied"),
        "stderr: {}",
        text(&out.stderr)
    );
    // The owner still gets in.
    let out = server.ctl(&["ls"]).output().await.unwrap();
    assert!(out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_client_that_never_reads_does_not_hold_up_the_others() {
    let server = TestServer::start().await;
    let path = server.state_dir().join("ctl.sock");
    let mut greedy = UnixStream::connect(&path).await.unwrap();
    let mut burst = Vec::new();
    for id in 0..2000 {
        burst.extend_from_slice(format!("{{\"id\":{id},\"cmd\":\"ls\"}}\n").as_bytes());
    }
    // Written from a task: the server stops reading this client once enough answers wait.
    let writer = tokio::spawn(async move {
        let _ = greedy.write_all(&burst).await;
        greedy
    });
    for _ in 0..3 {
        let out = tokio::time::timeout(WAIT, server.ctl(&["ls", "--json"]).output())
            .await
            .expect("ctl answers while another client hogs the socket")
            .unwrap();
        assert!(out.status.success());
    }
    let out = server.ssh("nora").arg("echo ok").output().await.unwrap();
    assert_eq!(text(&out.stdout), "ok\n");
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_ends_every_session_releases_the_port_and_returns_after() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let port = server.port();
    let mut ssh = server.ssh("zed").arg("sleep 987090").spawn().unwrap();
    wait_started(&mut events, "sleep 987090").await;
    let out = server
        .ctl(&["drain", "--grace", "2s"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("1 connection(s) closed"),
        "{}",
        text(&out.stdout)
    );
    assert!(server.list().await.is_empty());
    assert!(processes_with_argv(&["sleep", "987090"]).is_empty());
    // The port is free: nobody answers on it, and it can be bound again.
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
    let rebound = std::net::TcpListener::bind(("127.0.0.1", port));
    assert!(rebound.is_ok(), "the port was not released");
    let status = tokio::time::timeout(WAIT, ssh.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(255));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_the_lifecycle_of_a_connection() {
    let server = TestServer::start().await;
    let mut watch = server.ctl(&["watch", "--json"]).spawn().unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(serde_json::from_str(&line).unwrap());
        }
    });
    // Until the watch is live, connections may go unseen: probe until one is reported, then
    // let it finish.
    let mut first = loop {
        let out = server.ssh("yuri").arg("true").output().await.unwrap();
        assert!(out.status.success());
        if let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            break event;
        }
    };
    // Skip the rest of that probe's lifecycle.
    while first["event"] != "disconnected" {
        first = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
    }

    let out = server
        .ssh("yuri")
        .arg("echo watched")
        .output()
        .await
        .unwrap();
    assert_eq!(text(&out.stdout), "watched\n");
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(event) = rx.recv().await {
            seen.push(event["event"].as_str().unwrap().to_string());
            if seen.last().map(String::as_str) == Some("disconnected") {
                break;
            }
        }
    })
    .await
    .expect("the whole lifecycle is streamed");
    assert_eq!(
        seen,
        [
            "connected",
            "authenticated",
            "session_opened",
            "session_started",
            "session_closed",
            "disconnected"
        ]
    );
    let _ = watch.kill().await;
}

/// Sends one env request that wants a reply; whether it was accepted.
async fn set_env(
    channel: &mut russh::Channel<russh::client::Msg>,
    name: &str,
    value: &str,
) -> bool {
    channel.set_env(true, name, value).await.unwrap();
    match tokio::time::timeout(WAIT, channel.wait())
        .await
        .expect("answered")
    {
        Some(russh::ChannelMsg::Success) => true,
        Some(russh::ChannelMsg::Failure) => false,
        other => panic!("unexpected answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_or_malformed_variable_name_is_refused_and_the_command_still_runs() {
    let server = TestServer::start().await;
    let client = server.russh_client("ivy").await;
    let mut channel = client.handle.channel_open_session().await.unwrap();
    let huge = format!("LC_{}", "A".repeat(200_000));
    assert!(
        !set_env(&mut channel, &huge, "x").await,
        "a 200 KB name is refused"
    );
    assert!(
        !set_env(&mut channel, "LC_A=B", "x").await,
        "a name with '=' is refused"
    );
    assert!(!set_env(&mut channel, "LC_A-B", "x").await);
    assert!(set_env(&mut channel, "LC_FINE", "yes").await);
    channel.exec(true, "echo $LC_FINE").await.unwrap();
    let result = drain(&mut channel).await;
    assert_eq!(text(&result.stdout), "yes\n", "{}", text(&result.stderr));
    assert_eq!(result.status, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_s_variables_are_bounded_in_total_size() {
    let server = TestServer::start().await;
    let client = server.russh_client("ivy").await;
    let mut channel = client.handle.channel_open_session().await.unwrap();
    let value = "v".repeat(sshvisor::session::app::MAX_ENV_VALUE);
    let mut accepted = 0;
    for i in 0..sshvisor::session::app::MAX_ENV_VARS {
        if set_env(&mut channel, &format!("LC_BIG{i}"), &value).await {
            accepted += value.len();
        }
    }
    assert!(
        accepted <= sshvisor::session::app::MAX_ENV_TOTAL,
        "{accepted} bytes of variables accepted"
    );
    channel.exec(true, "echo ran").await.unwrap();
    assert_eq!(text(&drain(&mut channel).await.stdout), "ran\n");
}
