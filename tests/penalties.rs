//! Per-source penalties as a client and an operator meet them, on real sockets: a burst over the
//! rate is refused with one line (the OpenSSH client shows it), failed logins and limit
//! refusals add up to a penalty, exempt networks never count, and `ctl penalties` lists and
//! clears, `ctl stats` counts.
//!
//! Rates are tiny (one token per 100 s) and penalties long, so nothing depends on how fast the
//! machine is; waits are on conditions with a deadline.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, russh_connect, text, TestServer, WAIT};
use sshvisor::daemon::config::Penalties;
use tokio::io::AsyncBufReadExt;

/// A server whose `[penalties]` are `penalties` (loopback not exempt).
async fn server(penalties: Penalties) -> TestServer {
    TestServer::start_with(|o| o.config.penalties = penalties).await
}

/// Quiet penalties: nothing but what a test turns on adds time.
fn quiet() -> Penalties {
    Penalties {
        rate: 1000.0,
        burst: 1000,
        over_rate: Duration::ZERO,
        auth_failed: Duration::ZERO,
        refused_by_limit: Duration::ZERO,
        no_auth: Duration::ZERO,
        min: Duration::from_secs(1),
        max: Duration::from_secs(600),
        ..Penalties::default()
    }
}

/// Connects and returns the first line the server sends (its SSH banner, or a refusal).
async fn first_line(port: u16) -> String {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(WAIT, reader.read_line(&mut line))
        .await
        .expect("a line in time")
        .expect("read");
    line
}

async fn ctl(server: &TestServer, args: &[&str]) -> String {
    let out = server.ctl(args).output().await.expect("ctl runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// Waits until the table says 127.0.0.1 is refused.
async fn penalized(server: &TestServer) {
    let table = server.daemon.penalties().expect("a listener");
    eventually("127.0.0.1 penalized", || {
        table
            .list(Instant::now())
            .iter()
            .any(|p| p.source == "127.0.0.1" && p.enforced)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_rate_is_refused_with_a_line_until_the_operator_clears_it() {
    let server = server(Penalties {
        rate: 0.01,
        burst: 3,
        over_rate: Duration::from_secs(300),
        ..quiet()
    })
    .await;
    let port = server.port();
    for _ in 0..3 {
        assert!(first_line(port).await.starts_with("SSH-2.0-sshvisor"));
    }
    let refused = first_line(port).await;
    assert!(
        refused.starts_with(
            "sshvisor: refused: 127.0.0.1 is penalized for 300 s more (connection rate over 0.01/s)"
        ) && refused.ends_with("\r\n"),
        "{refused:?}"
    );
    // Refused again: the penalty runs, and a refusal adds nothing to it.
    let again = first_line(port).await;
    assert!(again.contains("is penalized for"), "{again:?}");

    // The OpenSSH client is told why (at -v: it logs lines before the banner as debug).
    let out = server
        .ssh("alice")
        .arg("-v")
        .arg("true")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "kex_exchange_identification: banner line 0: sshvisor: refused: 127.0.0.1 is penalized for"
        ),
        "{stderr}"
    );

    let listed = ctl(&server, &["penalties"]).await;
    assert!(
        listed.contains("127.0.0.1")
            && listed.contains("refused")
            && listed.contains("connection rate over 0.01/s"),
        "{listed}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ctl(&server, &["penalties", "--json"]).await).unwrap();
    assert_eq!(json[0]["source"], "127.0.0.1");
    assert_eq!(json[0]["enforced"], true);
    assert_eq!(json[0]["offences"], 1);
    assert_eq!(json[0]["last"], "over_rate");
    let stats = ctl(&server, &["stats"]).await;
    assert!(
        stats.contains("penalties   3 connections refused, 1 sources penalized now"),
        "{stats}"
    );

    let cleared = ctl(&server, &["penalties", "--clear", "127.0.0.1"]).await;
    assert_eq!(cleared, "removed the penalties of 1 source: 127.0.0.1\n");
    assert!(first_line(port).await.starts_with("SSH-2.0-sshvisor"));
    let cleared = ctl(&server, &["penalties", "--clear", "all"]).await;
    assert_eq!(cleared, "no penalized source matched: nothing removed\n");
    let listed = ctl(&server, &["penalties"]).await;
    assert_eq!(listed, "no source has penalty time\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_add_up_to_a_penalty_from_the_minimum_on() {
    let server = server(Penalties {
        auth_failed: Duration::from_secs(100),
        min: Duration::from_secs(250),
        ..quiet()
    })
    .await;
    let port = server.port();
    let wrong = server.dir.path().join("wrong");
    let (key, _) = sshvisor::ssh::keys::load_or_create_key(&wrong, "wrong").unwrap();
    drop(key);
    let table = server.daemon.penalties().unwrap();
    for n in 1..=2u32 {
        let client = russh_connect(port, &wrong, "alice")
            .await
            .expect("connects");
        assert!(!client.authenticated);
        drop(client);
        eventually("the failed login counted", || {
            table
                .list(Instant::now())
                .first()
                .is_some_and(|p| p.offences == n)
        })
        .await;
    }
    // 200 s of penalty is under the 250 s minimum: still let in, and a good login counts
    // nothing.
    let good = server.russh_client("alice").await;
    drop(good);
    assert!(first_line(port).await.starts_with("SSH-"));
    let client = russh_connect(port, &wrong, "alice")
        .await
        .expect("connects");
    drop(client);
    penalized(&server).await;
    let refused = first_line(port).await;
    assert!(
        refused.starts_with("sshvisor: refused: 127.0.0.1 is penalized for")
            && refused.contains("(failed authentication)"),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_by_a_limit_counts_against_the_source() {
    let server = TestServer::start_with(|o| {
        o.config.limits.max_per_source = 1;
        o.config.penalties = Penalties {
            refused_by_limit: Duration::from_secs(100),
            ..quiet()
        };
    })
    .await;
    let held = server.russh_client("alice").await;
    let refused = russh_connect(server.port(), &server.client_key_path(), "alice").await;
    assert!(
        !refused.as_ref().is_ok_and(|c| c.authenticated),
        "the second connection is over max_per_source"
    );
    drop(refused);
    penalized(&server).await;
    let line = first_line(server.port()).await;
    assert!(line.contains("(refused by a connection limit)"), "{line:?}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exempt_network_is_never_penalized() {
    let server = server(Penalties {
        rate: 0.01,
        burst: 1,
        over_rate: Duration::from_secs(300),
        no_auth: Duration::from_secs(300),
        exempt: vec!["127.0.0.0/8".parse().unwrap()],
        ..quiet()
    })
    .await;
    for _ in 0..10 {
        assert!(first_line(server.port()).await.starts_with("SSH-"));
    }
    assert_eq!(
        ctl(&server, &["penalties"]).await,
        "no source has penalty time\n"
    );
}

/// ssh-audit's DHEat rate test (38 connections from one address in 1.5 s; more than 20 banners
/// a second is "insufficient connection throttling") passes on the default penalties, loopback
/// not exempt. ssh-audit runs it only while the server offers a finite-field Diffie-Hellman
/// exchange; without ssh-audit on the PATH the test says so and passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_audits_dheat_rate_test_passes_on_the_default_penalties() {
    let server = server(Penalties::default()).await;
    let audit = tokio::process::Command::new("ssh-audit")
        .args(["-n", "-d", "-p", &server.port().to_string(), "127.0.0.1"])
        .stdin(std::process::Stdio::null())
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(120), audit).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            eprintln!("ssh-audit not run ({e}): install it with `pip install ssh-audit`");
            return;
        }
        Err(_) => panic!("ssh-audit did not finish in 120 s"),
    };
    let stdout = text(&out.stdout);
    assert!(
        !stdout.contains("insufficient connection throttling"),
        "{stdout}"
    );
    if let Some(rate) = stdout
        .lines()
        .find(|l| l.contains("connections opened per second"))
    {
        eprintln!("{rate}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_new_penalties_and_keeps_the_table() {
    use sshvisor::daemon::{ConfigSource, DaemonOptions};
    use std::sync::{Arc, Mutex};
    let strict = Penalties {
        rate: 0.01,
        burst: 1,
        over_rate: Duration::from_secs(300),
        ..quiet()
    };
    let next: Arc<Mutex<Option<Penalties>>> = Arc::default();
    // The source gives itself to the options it makes, as `serve`'s does, so that the next
    // reload finds it too.
    let source: Arc<std::sync::OnceLock<ConfigSource>> = Arc::default();
    let server = TestServer::start_with(|o| {
        o.config.penalties = strict.clone();
        let (next, base, me) = (next.clone(), o.clone(), source.clone());
        let made = ConfigSource(Arc::new(move || {
            let mut options: DaemonOptions = base.clone();
            if let Some(p) = next.lock().unwrap().clone() {
                options.config.penalties = p;
            }
            options.reload_from = me.get().cloned();
            Ok(options)
        }));
        let _ = source.set(made.clone());
        o.reload_from = Some(made);
    })
    .await;
    let port = server.port();
    assert!(first_line(port).await.starts_with("SSH-"));
    assert!(first_line(port)
        .await
        .contains("is penalized for 300 s more"));

    *next.lock().unwrap() = Some(Penalties {
        burst: 5,
        ..strict.clone()
    });
    let changes = server.daemon.reload().await.expect("reload");
    assert!(changes.contains("penalties.burst: 1 -> 5"), "{changes}");
    assert!(
        first_line(port).await.contains("is penalized for"),
        "the penalty runs on across the reload"
    );

    *next.lock().unwrap() = Some(Penalties {
        exempt: vec!["127.0.0.0/8".parse().unwrap()],
        ..strict
    });
    server.daemon.reload().await.expect("reload");
    assert!(first_line(port).await.starts_with("SSH-"), "now exempt");
}

/// A login refused by a restriction of its key (here `from=`) is let past authentication only
/// to be told why; for the penalties it is a failed login all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_refused_by_its_keys_restriction_counts_as_a_failed_login() {
    let keys = tempfile::tempdir().unwrap();
    let key_path = keys.path().join("restricted");
    let (key, _) = sshvisor::ssh::keys::load_or_create_key(&key_path, "restricted").unwrap();
    let authorized = keys.path().join("authorized_keys");
    let line = key.public_key().to_openssh().unwrap();
    std::fs::write(&authorized, format!("from=\"10.9.9.9\" {line}\n")).unwrap();
    let server = TestServer::start_with(|o| {
        o.config.authorized_keys = Some(authorized.clone());
        o.config.penalties = Penalties {
            auth_failed: Duration::from_secs(100),
            min: Duration::from_secs(250),
            ..quiet()
        };
    })
    .await;
    let table = server.daemon.penalties().unwrap();
    let client = russh_connect(server.port(), &key_path, "alice")
        .await
        .expect("connects");
    drop(client);
    eventually("the refused login counted as a failed one", || {
        table.list(Instant::now()).first().is_some_and(|p| {
            p.offences == 1 && p.last == sshvisor::ssh::penalties::Offence::AuthFailed
        })
    })
    .await;
}
