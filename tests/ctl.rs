//! `sshvisor ctl kill` and `ctl drain` as an operator types them, against `sshvisor serve`: a
//! dry run kills nothing, the server's kill grace applies when no `--grace` is given, and the
//! help and errors name every filter.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{text, Client, WAIT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sshvisor_actors::{ConnectionInfo, KillReport};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// `sshvisor serve --listen 127.0.0.1:0` in a temporary directory.
struct Serve {
    child: Child,
    /// Its stdout, kept open: a server that prints into a closed pipe dies of it.
    _stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    cwd: tempfile::TempDir,
    port: u16,
}

impl Serve {
    async fn start(extra: &[&str]) -> Self {
        Self::start_with_nofile(extra, None).await
    }

    /// Started with this open files limit (soft, hard), when given.
    async fn start_with_nofile(extra: &[&str], nofile: Option<(u64, u64)>) -> Self {
        let cwd = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sshvisor"));
        if let Some((soft, hard)) = nofile {
            // SAFETY: setrlimit is async-signal-safe and touches nothing of the parent.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .current_dir(cwd.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(cwd.path().join("serve.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(WAIT, async {
            let mut port = None;
            // Up to the printed ssh line, the last of what serve prints at start.
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(addr) = line.strip_prefix("sshvisor listening on ") {
                    port = addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                }
                if line.trim_start().starts_with("ssh ") {
                    return port.expect("the listening line comes first");
                }
            }
            panic!("serve ended before it listened")
        })
        .await
        .expect("serve prints its address");
        Self {
            child,
            _stdout: lines,
            cwd,
            port,
        }
    }

    /// What the server logged (shown when a test fails).
    fn log(&self) -> String {
        std::fs::read_to_string(self.cwd.path().join("serve.log")).unwrap_or_default()
    }

    fn state(&self) -> PathBuf {
        self.cwd.path().join(".sshvisor")
    }

    async fn client(&self, user: &str) -> Client {
        let key = self.state().join("client_ed25519");
        let client = common::russh_connect(self.port, &key, user).await.unwrap();
        assert!(client.authenticated);
        client
    }

    /// `sshvisor ctl ARGS` against this server: its exit status and its output.
    async fn ctl(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new(env!("CARGO_BIN_EXE_sshvisor"))
            .arg("ctl")
            .arg("--state-dir")
            .arg(self.state())
            .args(args)
            .stdin(Stdio::null())
            .output();
        tokio::time::timeout(WAIT, out).await.unwrap().unwrap()
    }

    async fn ls(&self) -> Vec<ConnectionInfo> {
        let out = self.ctl(&["ls", "--json"]).await;
        assert!(
            out.status.success(),
            "{}\nserver log:\n{}",
            text(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// SIGTERM, and the exit (a drain: every session's processes end with it).
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }
}

/// Opens a session running `command` and returns once the server lists it.
async fn hold(
    server: &Serve,
    client: &Client,
    command: &str,
) -> russh::Channel<russh::client::Msg> {
    let channel = client.handle.channel_open_session().await.unwrap();
    channel.exec(true, command).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !server.ls().await.iter().any(|c| {
        c.sessions
            .iter()
            .any(|s| s.command.as_deref() == Some(command))
    }) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{command} never listed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    channel
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dry_run_with_ids_lists_what_would_die_and_kills_nothing() {
    let server = Serve::start(&[]).await;
    let client = server.client("dry").await;
    let _held = hold(&server, &client, "sleep 987301").await;
    let all = server.ls().await;
    assert_eq!(all.len(), 1);
    let (conn, session) = (all[0].id.to_string(), all[0].sessions[0].id.to_string());

    // A connection by a prefix, for people.
    let out = server.ctl(&["kill", &conn[..8], "--dry-run"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains(&conn), "{shown}");
    assert!(
        shown.contains("1 connection(s) and 0 session(s) would be killed"),
        "{shown}"
    );

    // A session, for scripts: the shape of a filter's dry run, its connection listing only it.
    let out = server.ctl(&["kill", &session, "--dry-run", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let matched: Vec<ConnectionInfo> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(matched.len(), 1);
    assert_eq!(matched[0].id.to_string(), conn);
    assert_eq!(matched[0].sessions.len(), 1);
    assert_eq!(matched[0].sessions[0].id.to_string(), session);

    // An unknown ID is an error, as in a real kill.
    let out = server.ctl(&["kill", "ffffffff", "--dry-run"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no live connection or session"),
        "{}",
        text(&out.stderr)
    );

    // Nothing was killed: still listed, with its session, and the client still works.
    let all = server.ls().await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].sessions.len(), 1);
    assert!(!client.handle.is_closed());
    let mut again = client.handle.channel_open_session().await.unwrap();
    again.exec(true, "echo alive").await.unwrap();
    let result = common::drain(&mut again).await;
    assert_eq!(result.status, Some(0));
    assert_eq!(text(&result.stdout), "alive\n");
    assert_eq!(common::processes_with_argv(&["sleep", "987301"]).len(), 1);
    server.stop().await;
}

/// Whether process `pid` ignores SIGHUP (bit 0 of its SigIgn mask).
fn ignores_hup(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & 1 == 1)
}

/// A session whose process ignores SIGHUP, so that only the grace's end (SIGKILL) stops it.
async fn hold_deaf(
    server: &Serve,
    client: &Client,
    tag: &str,
) -> russh::Channel<russh::client::Msg> {
    let channel = hold(server, client, &format!("trap '' HUP; exec sleep {tag}")).await;
    let mut pids = Vec::new();
    common::eventually("the deaf sleep runs", || {
        pids = common::processes_with_argv(&["sleep", tag]);
        pids.len() == 1
    })
    .await;
    assert!(
        ignores_hup(pids[0]),
        "the session's sleep must ignore SIGHUP"
    );
    channel
}

fn forced_within_the_servers_grace(report: &KillReport) {
    assert!(report.forced, "{report:?}");
    // The server's grace (1 s), not ctl's old fixed 5 s: the bound fails at 5 s and leaves a
    // loaded machine 3 s of margin.
    assert!(report.elapsed >= Duration::from_millis(900), "{report:?}");
    assert!(report.elapsed < Duration::from_secs(4), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_kill_without_grace_uses_the_servers_kill_grace() {
    let server = Serve::start(&["--kill-grace", "1s"]).await;
    let client = server.client("deaf").await;
    let _held = hold_deaf(&server, &client, "987302").await;
    let conn = server.ls().await[0].id.to_string();

    let out = server.ctl(&["kill", &conn, "--json"]).await;
    assert!(
        out.status.success(),
        "{}\nserver log:\n{}",
        text(&out.stderr),
        server.log()
    );
    let report: KillReport = serde_json::from_slice(&out.stdout).unwrap();
    forced_within_the_servers_grace(&report);
    common::eventually("the deaf sleep is gone", || {
        common::processes_with_argv(&["sleep", "987302"]).is_empty()
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_drain_without_grace_uses_the_servers_kill_grace() {
    let server = Serve::start(&["--kill-grace", "1s"]).await;
    let client = server.client("deaf").await;
    let _held = hold_deaf(&server, &client, "987303").await;

    let out = server.ctl(&["drain", "--json"]).await;
    assert!(
        out.status.success(),
        "{}\nserver log:\n{}",
        text(&out.stderr),
        server.log()
    );
    let reports: Vec<KillReport> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 1, "{reports:?}");
    forced_within_the_servers_grace(&reports[0]);
    common::eventually("the deaf sleep is gone", || {
        common::processes_with_argv(&["sleep", "987303"]).is_empty()
    })
    .await;
    server.stop().await;
}

/// The soft and hard open files limits of process `pid`.
fn nofile_of(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_control_socket_still_answers_and_the_hoarder_can_be_killed() {
    use russh_sftp::protocol::{FileAttributes, OpenFlags};
    // A low limit, as a 1,024 one is to a busy server; serve raises its soft limit to the hard.
    let server = Serve::start_with_nofile(&[], Some((128, 256))).await;
    let pid = server.child.id().unwrap();
    assert_eq!(nofile_of(pid), (256, 256));

    // One sftp session opens files until the process has no descriptor left (its own
    // budget, 256 a session, is above what the process can hold).
    let hoarder = server.client("hoarder").await;
    let conn = server.ls().await[0].id.to_string();
    let channel = hoarder.handle.channel_open_session().await.unwrap();
    channel.request_subsystem(true, "sftp").await.unwrap();
    let sftp = russh_sftp::client::RawSftpSession::new(channel.into_stream());
    sftp.init().await.unwrap();
    let file = server.cwd.path().join("hoard");
    std::fs::write(&file, b"x").unwrap();
    let file = common::path_str(&file);
    let mut held = 0;
    let refusal = loop {
        match sftp
            .open(&file, OpenFlags::READ, FileAttributes::default())
            .await
        {
            Ok(_) => held += 1,
            Err(russh_sftp::client::error::Error::Status(status)) => break status.error_message,
            Err(e) => panic!("{e:?}"),
        }
        assert!(held < 256, "the process never ran out of descriptors");
    };
    assert!(refusal.contains("Too many open files"), "{refusal}");

    // The operator still gets answers: stats first, then the kill of the hoarder.
    let out = server.ctl(&["stats", "--json"]).await;
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        server.log()
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["tree"]["connections"], 1, "{stats}");
    let fds = stats["process"]["open_fds"]
        .as_u64()
        .expect("open_fds read");
    assert!(fds >= 250, "{stats}");
    let out = server.ctl(&["kill", &conn, "--json"]).await;
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        server.log()
    );
    let report: KillReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.sessions_closed, 1);

    // Its descriptors came back: a new login runs a command.
    let client = server.client("next").await;
    let mut channel = client.handle.channel_open_session().await.unwrap();
    channel.exec(true, "echo back").await.unwrap();
    let result = common::drain(&mut channel).await;
    assert_eq!(text(&result.stdout), "back\n");
    server.stop().await;
}

async fn sshvisor(args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sshvisor"))
        .args(args)
        .current_dir(cwd)
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn kill_help_and_the_not_both_error_name_idle_over() {
    let cwd = tempfile::tempdir().unwrap();
    let out = sshvisor(&["ctl", "kill", "--help"], cwd.path()).await;
    assert!(out.status.success());
    let help = text(&out.stdout);
    assert!(
        help.contains("--older-than, --idle-over, --key-fingerprint, --cert-serial, --cert-key-id combine with AND"),
        "{help}"
    );
    // Told before any server is asked (none runs here).
    let out = sshvisor(&["ctl", "kill", "abcd", "--idle-over", "10m"], cwd.path()).await;
    assert!(!out.status.success());
    let error = text(&out.stderr);
    assert!(
        error.contains("(--all, --user, --peer, --older-than, --idle-over, --key-fingerprint, --cert-serial, --cert-key-id), not both"),
        "{error}"
    );
}
