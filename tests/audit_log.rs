//! `sshvisor serve --audit-log FILE`: what a security team reads. Logins accepted and refused
//! (with the key's fingerprint), sessions opened and closed, a `ctl kill` by prefix recorded with
//! the resolved ID and the ctl process (uid, pid, executable) before ctl gets its reply, the file
//! reopened on SIGHUP after logrotate moved it, and never a secret.

mod common;

use std::path::{Path, PathBuf};

use common::{openssh, text, WAIT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::process::Command;

/// The audit file's records, each line parsed (a line that is not JSON fails the test).
fn records(path: &Path) -> Vec<Value> {
    let all = std::fs::read_to_string(path).unwrap_or_default();
    all.lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"))
        })
        .collect()
}

/// The records of `event`.
fn of(path: &Path, event: &str) -> Vec<Value> {
    records(path)
        .into_iter()
        .filter(|r| r["event"] == event)
        .collect()
}

/// A fresh ed25519 key this server does not know; its path.
async fn stranger_key(dir: &Path) -> PathBuf {
    let path = dir.join("stranger");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&path)
        .status()
        .await
        .unwrap();
    assert!(made.success());
    path
}

/// `ssh-keygen -l`'s fingerprint of the public key beside `key`.
async fn fingerprint(key: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key.with_extension("pub"))
        .output()
        .await
        .unwrap();
    text(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

/// The base64 body of an OpenSSH private key file (what must never reach the log).
fn private_body(key: &Path) -> Vec<String> {
    std::fs::read_to_string(key)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_string)
        .collect()
}

async fn ctl(cwd: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_sshvisor"))
        .arg("ctl")
        .arg("--state-dir")
        .arg(cwd.join(".sshvisor"))
        .args(args)
        .output();
    tokio::time::timeout(WAIT, out).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_logins_sessions_and_a_ctl_kill_before_its_reply() {
    let cwd = tempfile::tempdir().unwrap();
    let log = cwd.path().join("audit.jsonl");
    let (mut server, lines) =
        common::serve_lines(cwd.path(), &["--audit-log", log.to_str().unwrap()]).await;
    let words: Vec<&str> = lines.last().unwrap().split_whitespace().collect();
    let port: u16 = words[words.iter().position(|w| *w == "-p").unwrap() + 1]
        .parse()
        .unwrap();
    let key = cwd.path().join(".sshvisor/client_ed25519");
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name;

    // A key the server does not know: refused, and recorded with its fingerprint.
    let stranger = stranger_key(cwd.path()).await;
    let out = openssh(port, &stranger, &user, &[])
        .arg("true")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    let stranger_print = fingerprint(&stranger).await;
    common::eventually("the refused login is recorded", || {
        of(&log, "login_refused")
            .iter()
            .any(|r| r["fingerprint"] == stranger_print.as_str())
    })
    .await;
    let refused = of(&log, "login_refused").pop().unwrap();
    assert_eq!(refused["user"], user.as_str());
    assert_eq!(refused["key_type"], "ssh-ed25519");
    assert!(refused["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(refused["reason"], "key not authorized");

    // A held session with the right key.
    let held = openssh(port, &key, &user, &[])
        .arg("sleep 987031")
        .spawn()
        .unwrap();
    common::eventually("the session is recorded", || {
        of(&log, "session_opened")
            .iter()
            .any(|r| r["command"] == "sleep 987031")
    })
    .await;
    let accepted = of(&log, "login_accepted").pop().unwrap();
    assert_eq!(accepted["fingerprint"], fingerprint(&key).await.as_str());
    assert_eq!(accepted["user"], user.as_str());
    let opened = of(&log, "session_opened").pop().unwrap();
    assert_eq!(opened["kind"], "exec");
    assert_eq!(opened["pty"], false);
    let conn = opened["conn"].as_str().unwrap().to_string();
    // The login's record names its connection, as the session's does.
    assert_eq!(accepted["conn"], conn.as_str());
    assert!(
        refused["conn"].as_str().is_some_and(|c| c != conn),
        "{refused}"
    );

    // Killed by a prefix: the record names the whole ID and is in the file when ctl returns.
    let out = ctl(cwd.path(), &["kill", &conn[..8], "--reason", "audit test"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let kills = of(&log, "kill");
    assert_eq!(kills.len(), 1, "read as soon as ctl returned: {kills:?}");
    let k = &kills[0];
    assert_eq!(k["target"]["kind"], "connection");
    assert_eq!(k["target"]["id"], conn.as_str());
    assert_eq!(k["reason"], "audit test");
    assert_eq!(k["user"], user.as_str());
    assert!(k["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(k["forced"], false);
    assert_eq!(k["sessions_closed"], 1);
    assert!(k["elapsed_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(k["by"]["kind"], "ctl");
    assert_eq!(k["by"]["uid"], nix::unistd::getuid().as_raw());
    assert!(k["by"]["pid"].as_i64().unwrap() > 0);
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_sshvisor")).unwrap();
    assert_eq!(k["by"]["exe"], exe.to_str().unwrap());

    let out = tokio::time::timeout(WAIT, held.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        text(&out.stderr).contains("audit test"),
        "{}",
        text(&out.stderr)
    );
    common::eventually(
        "the session's and the connection's ends are recorded",
        || {
            of(&log, "session_closed")
                .iter()
                .any(|r| r["conn"] == conn.as_str())
                && of(&log, "connection_closed")
                    .iter()
                    .any(|r| r["conn"] == conn.as_str() && r["cause"] == "killed")
        },
    )
    .await;

    // Every line has its time, in RFC 3339 UTC.
    for record in records(&log) {
        let at = record["at"]
            .as_str()
            .unwrap_or_else(|| panic!("no at: {record}"));
        assert!(at.ends_with('Z'), "{at}");
        humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("{at}: {e}"));
    }

    // logrotate: the file is moved away, SIGHUP, and what follows goes to a new file.
    let rotated = cwd.path().join("audit.jsonl.1");
    std::fs::rename(&log, &rotated).unwrap();
    kill(Pid::from_raw(server.id().unwrap() as i32), Signal::SIGHUP).unwrap();
    common::eventually("SIGHUP reopens the audit log", || log.exists()).await;
    let out = openssh(port, &stranger, &user, &[])
        .arg("true")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    common::eventually("the new file gets the next login", || {
        !of(&log, "login_refused").is_empty()
    })
    .await;
    assert!(!of(&log, "reload").is_empty(), "{:?}", records(&log));

    // No secrets: no private key, not even its name.
    for file in [&log, &rotated] {
        let all = std::fs::read_to_string(file).unwrap();
        assert!(!all.contains("PRIVATE"), "{all}");
        for body in private_body(&key).iter().chain(&private_body(&stranger)) {
            assert!(!all.contains(body.as_str()), "{all}");
        }
    }

    server.kill().await.unwrap();
}

/// A server, an embedding program's stream of its audit records, and `user` logged in with a
/// russh client (kept open while it is held); the login's record.
async fn logged_in(
    user: &str,
) -> (
    common::TestServer,
    tokio::sync::broadcast::Receiver<sshvisor::audit::AuditEntry>,
    common::Client,
    sshvisor::audit::AuditEntry,
) {
    let server = common::TestServer::start().await;
    let mut stream = server.daemon.audit().subscribe();
    let client = server.russh_client(user).await;
    let accepted = next_of(&mut stream, "login_accepted").await;
    (server, stream, client, accepted)
}

/// The next record of `event` on an embedding program's stream.
async fn next_of(
    stream: &mut tokio::sync::broadcast::Receiver<sshvisor::audit::AuditEntry>,
    event: &str,
) -> sshvisor::audit::AuditEntry {
    tokio::time::timeout(WAIT, async {
        loop {
            let entry = stream.recv().await.expect("the audit stream stays open");
            if serde_json::to_value(&entry).unwrap()["event"] == event {
                return entry;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {event} record"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedding_program_gets_the_records_as_typed_values_with_its_kill_tag() {
    use sshvisor::audit::{AuditRecord, Initiator};
    use sshvisor_actors::Target;

    let (server, mut stream, _client, accepted) = logged_in("tagged").await;
    assert!(
        matches!(&accepted.record, AuditRecord::LoginAccepted { user, fingerprint, .. }
            if user == "tagged" && fingerprint.starts_with("SHA256:")),
        "{accepted:?}"
    );
    let conn = server.list().await[0].id;
    server
        .daemon
        .handle()
        .kill(
            Target::Connection(conn),
            "billing says no",
            std::time::Duration::from_secs(2),
            Some("billing".into()),
        )
        .await
        .unwrap();
    let kill = next_of(&mut stream, "kill").await;
    match kill.record {
        AuditRecord::Kill {
            by,
            target,
            user,
            peer,
            reason,
            sessions_closed,
            elapsed_ms,
            forced,
        } => {
            assert_eq!(
                by,
                Initiator::Embedder {
                    tag: Some("billing".into())
                }
            );
            assert_eq!(target, Target::Connection(conn));
            assert_eq!(user.as_deref(), Some("tagged"));
            assert!(peer.is_some_and(|p| p.ip().is_loopback()), "{peer:?}");
            assert_eq!(reason, "billing says no");
            assert_eq!(sessions_closed, Some(0));
            assert!(elapsed_ms.is_some_and(|ms| ms >= 0.0), "{elapsed_ms:?}");
            assert_eq!(forced, Some(false));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedding_programs_cancel_of_an_announced_kill_is_recorded_with_its_tag() {
    use sshvisor::audit::{AuditRecord, Initiator};
    use sshvisor_actors::Selection;

    let (server, mut stream, _client, _) = logged_in("spared").await;
    let conn = server.list().await[0].id;
    let tree = server.daemon.handle().clone();
    let warned = tree.kill_warned(
        Selection::One(conn),
        "maintenance",
        std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(2),
        Some("billing".into()),
    );
    tokio::pin!(warned);
    // Polled once, the announced kill is in the supervisor's mailbox, before the cancel.
    assert!(futures::poll!(&mut warned).is_pending());
    assert!(tree
        .cancel_kill(conn, Some("billing".into()))
        .await
        .unwrap());
    let cancelled = next_of(&mut stream, "kill_cancelled").await;
    assert_eq!(
        cancelled.record,
        AuditRecord::KillCancelled {
            by: Initiator::Embedder {
                tag: Some("billing".into())
            },
            conn
        }
    );
    let reports = warned.await.expect("answered once cancelled");
    assert!(reports.is_empty(), "{reports:?}");
    assert_eq!(server.list().await.len(), 1, "the connection stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policys_kill_is_recorded_with_its_name_and_figures() {
    use sshvisor::audit::{AuditRecord, Initiator};

    let server = common::TestServer::start_with(|o| {
        o.config.timeouts.idle = Some(std::time::Duration::from_millis(600));
    })
    .await;
    let mut stream = server.daemon.audit().subscribe();
    let _client = server.russh_client("quiet").await;
    let conn = server.list().await[0].id;
    let kill = next_of(&mut stream, "kill").await;
    match kill.record {
        AuditRecord::Kill {
            by,
            target,
            user,
            peer,
            reason,
            sessions_closed,
            elapsed_ms,
            forced,
        } => {
            assert_eq!(
                by,
                Initiator::Policy {
                    name: "idle".into()
                }
            );
            assert_eq!(target, sshvisor_actors::Target::Connection(conn));
            assert_eq!(user.as_deref(), Some("quiet"));
            assert!(peer.is_some(), "{peer:?}");
            assert!(reason.starts_with("idle timeout"), "{reason}");
            assert_eq!(sessions_closed, Some(0));
            assert!(elapsed_ms.is_some_and(|ms| ms >= 0.0), "{elapsed_ms:?}");
            assert_eq!(forced, Some(false));
        }
        other => panic!("{other:?}"),
    }
    let closed = next_of(&mut stream, "connection_closed").await;
    assert!(
        matches!(&closed.record, AuditRecord::ConnectionClosed { cause, .. } if cause == "killed"),
        "{closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_over_max_per_user_is_recorded_as_refused_by_the_limit_not_as_a_kill() {
    use sshvisor::audit::AuditRecord;

    let server = common::TestServer::start_with(|o| o.config.limits.max_per_user = 1).await;
    let mut stream = server.daemon.audit().subscribe();
    let _first = server.russh_client("carol").await;
    // The second login of carol: the server ends it with the limit's text.
    let _second = common::russh_connect(server.port(), &server.client_key_path(), "carol").await;

    let refused = next_of(&mut stream, "limit_refused").await;
    let AuditRecord::LimitRefused {
        conn, user, reason, ..
    } = refused.record
    else {
        panic!("{refused:?}")
    };
    let conn = conn.expect("a refusal after the login names its connection");
    assert_eq!(user.as_deref(), Some("carol"));
    assert!(reason.starts_with("max_per_user (1)"), "{reason}");
    // Its end: no kill record on the way (nobody killed it; a limit refused it).
    loop {
        let entry = tokio::time::timeout(WAIT, stream.recv())
            .await
            .expect("the connection's end is recorded")
            .unwrap();
        match entry.record {
            AuditRecord::Kill { .. } => panic!("a refusal recorded as a kill: {entry:?}"),
            AuditRecord::ConnectionClosed {
                conn: closed,
                cause,
                ..
            } if closed == conn => {
                assert_eq!(cause, "refused");
                break;
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_by_session_idle_is_recorded_as_that_policys_kill_of_the_session() {
    use sshvisor::audit::{AuditRecord, Initiator};
    use sshvisor_actors::Target;

    let server = common::TestServer::start_with(|o| {
        o.config.timeouts.session_idle = Some(std::time::Duration::from_millis(600));
    })
    .await;
    let mut stream = server.daemon.audit().subscribe();
    let client = server.russh_client("drowsy").await;
    let channel = client.handle.channel_open_session().await.unwrap();
    channel.exec(true, "sleep 987032").await.unwrap();
    let opened = next_of(&mut stream, "session_opened").await;
    let AuditRecord::SessionOpened { session, .. } = opened.record else {
        panic!("{opened:?}")
    };
    let kill = next_of(&mut stream, "kill").await;
    match kill.record {
        AuditRecord::Kill {
            by,
            target,
            user,
            reason,
            sessions_closed,
            ..
        } => {
            assert_eq!(
                by,
                Initiator::Policy {
                    name: "session_idle".into()
                }
            );
            assert_eq!(target, Target::Session(session));
            assert_eq!(user.as_deref(), Some("drowsy"));
            assert!(reason.starts_with("session_idle timeout"), "{reason}");
            assert_eq!(sessions_closed, Some(1));
        }
        other => panic!("{other:?}"),
    }
}

/// A clean stop (SIGTERM) drains the connections, and the drain's records (the policy's kill,
/// the session's and the connection's close) are in the file once `serve` has exited: the
/// records still queued for the writer thread are written before the process ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drains_records_at_sigterm_are_in_the_file_when_serve_has_exited() {
    let cwd = tempfile::tempdir().unwrap();
    let log = cwd.path().join("audit.jsonl");
    let (mut server, ssh) =
        common::serve_process(cwd.path(), &["--audit-log", log.to_str().unwrap()]).await;
    let mut held = common::printed_ssh(&ssh, cwd.path(), "sleep 987032")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    common::eventually("the session is recorded", || {
        !of(&log, "session_opened").is_empty()
    })
    .await;
    kill(Pid::from_raw(server.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(WAIT, server.wait())
        .await
        .expect("serve exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    // Read once: nothing writes to the file any more.
    let kills = of(&log, "kill");
    assert_eq!(kills.len(), 1, "{kills:?}");
    assert_eq!(kills[0]["by"]["kind"], "policy");
    assert_eq!(kills[0]["by"]["name"], "shutdown");
    assert_eq!(kills[0]["sessions_closed"], 1);
    assert_eq!(of(&log, "session_closed").len(), 1, "{:?}", records(&log));
    let closed = of(&log, "connection_closed");
    assert_eq!(closed.len(), 1, "{:?}", records(&log));
    assert_eq!(closed[0]["cause"], "killed");
    let _ = tokio::time::timeout(WAIT, held.wait()).await;
}
