//! A daemon that fits its host: `serve` under systemd (the notify protocol, the shipped unit
//! file), logs without color codes where no terminal reads them, shell completions, and what
//! `ctl watch --json` and `ctl show` tell an operator (the event's time, idle time and bytes).

mod common;

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// `sshvisor serve --listen 127.0.0.1:0` in `cwd` with this stderr and environment, returned once
/// it has printed its ssh line (it is listening and its control socket is up).
async fn serve(cwd: &Path, stderr: Stdio, env: &[(&str, &str)]) -> Child {
    let serving = common::Serving::start_env(cwd, &[], stderr, env).await;
    assert!(
        serving
            .lines
            .last()
            .is_some_and(|l| l.trim_start().starts_with("ssh ")),
        "serve ended before its ssh line: {:?}",
        serving.lines
    );
    serving.child
}

/// SIGTERM, then the exit status (the drain of a server with no connection).
async fn terminate(mut child: Child) -> std::process::ExitStatus {
    let pid = Pid::from_raw(child.id().unwrap() as i32);
    kill(pid, Signal::SIGTERM).unwrap();
    tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("serve exits after SIGTERM")
        .unwrap()
}

const ESC: &str = "\x1b[";

/// The real check of the color switch: a test's stderr is never a terminal, so a log written to
/// a file must carry no escape codes (tracing_subscriber colors by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_written_to_a_file_has_no_color_codes() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = serve(dir.path(), Stdio::from(log), &[]).await;
    assert!(terminate(child).await.success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("all connections closed; bye"),
        "the log holds the server's lines: {log:?}"
    );
    assert!(!log.contains(ESC), "color codes in a log file: {log:?}");
}

/// Everything serve wrote to a terminal (a pseudo-terminal as its stderr) until it exited.
async fn log_on_a_terminal(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut master = std::fs::File::from(pty.master);
    // Read as it comes so serve never blocks on a full terminal; ends at EIO once every copy
    // of the terminal's other side is closed (serve exited).
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = master.read(&mut buf) {
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let slave: OwnedFd = pty.slave;
    let child = serve(dir.path(), Stdio::from(slave), env).await;
    assert!(terminate(child).await.success());
    tokio::time::timeout(WAIT, tokio::task::spawn_blocking(move || reader.join()))
        .await
        .expect("the terminal closes when serve exits")
        .unwrap()
        .unwrap()
}

/// On a terminal the log is colored (which shows the check below can see color codes), and
/// `NO_COLOR` turns the colors off there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_color_turns_off_the_colors_even_on_a_terminal() {
    let colored = log_on_a_terminal(&[]).await;
    assert!(
        colored.contains("bye"),
        "the log reached the terminal: {colored:?}"
    );
    assert!(
        colored.contains(ESC),
        "no colors on a terminal: {colored:?}"
    );

    let plain = log_on_a_terminal(&[("NO_COLOR", "1")]).await;
    assert!(
        plain.contains("bye"),
        "the log reached the terminal: {plain:?}"
    );
    assert!(!plain.contains(ESC), "colors despite NO_COLOR: {plain:?}");
}

/// Receives one notify datagram, failing the test after [`WAIT`].
async fn notification(socket: &tokio::net::UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, socket.recv(&mut buf))
        .await
        .expect("a notification from serve")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Under systemd `Type=notify`: READY=1 once serve listens (its ssh line is out), STOPPING=1
/// when SIGTERM starts the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_nonblocking(true).unwrap();
    let socket = tokio::net::UnixDatagram::from_std(socket).unwrap();
    let child = serve(
        dir.path(),
        Stdio::null(),
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    )
    .await;
    let ready = notification(&socket).await;
    assert_eq!(ready.lines().collect::<Vec<_>>(), ["READY=1"], "{ready:?}");
    let pid = Pid::from_raw(child.id().unwrap() as i32);
    kill(pid, Signal::SIGTERM).unwrap();
    let stopping = notification(&socket).await;
    assert_eq!(
        stopping.lines().collect::<Vec<_>>(),
        ["STOPPING=1"],
        "{stopping:?}"
    );
    let mut child = child;
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn completions_for_bash_name_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_sshvisor"))
            .args(["completions", shell])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(
            script.contains("ctl") && script.contains("serve"),
            "{shell}: {script}"
        );
    }
}

const UNIT: &str = include_str!("../dist/sshvisor.service");

/// The unit docs/OPERATIONS.md shows is the one dist/ ships, so they cannot drift apart.
#[test]
fn the_unit_in_the_operations_guide_is_the_shipped_one() {
    let guide = include_str!("../docs/OPERATIONS.md");
    let marker = "<!-- dist/sshvisor.service: keep identical (tests/daemon_fit.rs) -->\n```ini\n";
    let start = guide
        .find(marker)
        .expect("the marked unit in OPERATIONS.md")
        + marker.len();
    let end = start
        + guide[start..]
            .find("```\n")
            .expect("the unit's closing fence");
    assert_eq!(&guide[start..end], UNIT);
}

/// `systemd-analyze verify` accepts the shipped unit without a warning (an unknown or mistyped
/// option is only a warning to it). Its ExecStart must name an executable: the test's binary.
#[test]
fn systemd_analyze_verifies_the_shipped_unit() {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("sshvisor.service");
    assert!(UNIT.contains("ExecStart=/usr/local/bin/sshvisor "));
    std::fs::write(
        &unit,
        UNIT.replace(
            "ExecStart=/usr/local/bin/sshvisor ",
            &format!("ExecStart={} ", env!("CARGO_BIN_EXE_sshvisor")),
        ),
    )
    .unwrap();
    let out = match std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: systemd-analyze is not installed");
            return;
        }
        Err(e) => panic!("cannot run systemd-analyze: {e}"),
    };
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("sshvisor.service"))
        .collect();
    assert!(ours.is_empty(), "warnings about the unit: {ours:?}");
}

/// `ctl watch --json`: every event carries its time, RFC 3339 in UTC, as `watch --fleet` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_json_events_carry_their_time() {
    let server = TestServer::start().await;
    let mut watch = server.ctl(&["watch", "--json"]).spawn().unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(serde_json::from_str(&line).unwrap());
        }
    });
    // Until the watch is live, connections may go unseen: probe until one is reported.
    let event = tokio::time::timeout(WAIT, async {
        loop {
            let out = server.ssh("yuri").arg("true").output().await.unwrap();
            assert!(out.status.success());
            if let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
            {
                return event;
            }
        }
    })
    .await
    .expect("an event");
    let at = event["at"]
        .as_str()
        .unwrap_or_else(|| panic!("no at: {event}"));
    assert!(at.ends_with('Z'), "{at}");
    humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("{at}: {e}"));
}

/// `ctl show` in text prints idle time and bytes in/out, as `ctl ls` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_prints_idle_time_and_bytes() {
    let server = TestServer::start().await;
    let _client = server.russh_client("yuri").await;
    let id = server.list().await[0].id.to_string();
    let out = server.ctl(&["show", &id]).output().await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    let field = |name: &str| {
        shown
            .lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {name} in {shown}"))
    };
    let idle = field("idle:");
    assert!(idle.ends_with('s'), "idle {idle:?} in {shown}");
    let in_out = field("in/out:");
    assert!(
        in_out.contains('/') && in_out.chars().next().unwrap().is_ascii_digit(),
        "in/out {in_out:?} in {shown}"
    );
}
