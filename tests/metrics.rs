//! `sshvisor serve --metrics-listen`: scraped with a real HTTP client (hyper) before and after
//! a client logs in and `ctl kill` ends it; the counters an operator graphs moved.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::process::Command;

use common::{text, WAIT};

/// One HTTP/1 request to `addr`: the status and the body.
async fn http(addr: SocketAddr, method: Method, path: &str) -> (StatusCode, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("an answer in time")
        .expect("an answer");
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// The value of the sample named `name` with exactly these `labels` (`a="b",c="d"`, or empty).
fn sample(text: &str, name: &str, labels: &str) -> f64 {
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .find_map(|line| line.strip_prefix(&key)?.strip_prefix(' '))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {key} in:\n{text}"))
}

struct Figures {
    accepted: f64,
    ctl_clean: f64,
    kill_durations: f64,
    bytes_in: f64,
    bytes_out: f64,
}

fn figures(text: &str) -> Figures {
    Figures {
        accepted: sample(text, "sshvisor_connections_accepted_total", ""),
        ctl_clean: sample(
            text,
            "sshvisor_kills_total",
            r#"initiator="ctl",outcome="clean""#,
        ),
        kill_durations: sample(text, "sshvisor_kill_duration_seconds_count", ""),
        bytes_in: sample(text, "sshvisor_bytes_total", r#"direction="in""#),
        bytes_out: sample(text, "sshvisor_bytes_total", r#"direction="out""#),
    }
}

fn addr_after(lines: &[String], prefix: &str, suffix: &str) -> SocketAddr {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok())
        .unwrap_or_else(|| panic!("serve printed no {prefix:?} line: {lines:?}"))
}

async fn ctl(cwd: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sshvisor"))
        .arg("ctl")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("ctl runs");
    assert!(out.status.success(), "ctl {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

#[tokio::test]
async fn a_login_and_a_ctl_kill_move_the_scraped_counters() {
    let cwd = tempfile::tempdir().unwrap();
    let (_server, lines) =
        common::serve_lines(cwd.path(), &["--metrics-listen", "127.0.0.1:0"]).await;
    let ssh = addr_after(&lines, "sshvisor listening on ", "");
    let metrics = addr_after(&lines, "metrics on http://", "/metrics");

    let (status, before) = http(metrics, Method::GET, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        before.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    let before = figures(&before);

    let key = cwd.path().join(".sshvisor/client_ed25519");
    let client = common::russh_connect(ssh.port(), &key, "metricsuser")
        .await
        .expect("connect");
    assert!(client.authenticated);
    // Channel data both ways: what the bytes count.
    let mut channel = client.handle.channel_open_session().await.unwrap();
    channel.exec(true, "cat").await.unwrap();
    channel.data(&b"hello metrics\n"[..]).await.unwrap();
    let mut seen = String::new();
    common::read_until(&mut channel, &mut seen, "hello metrics").await;
    let (_, during) = http(metrics, Method::GET, "/metrics").await;
    assert_eq!(
        sample(&during, "sshvisor_connections", r#"state="authenticated""#),
        1.0,
        "{during}"
    );
    assert_eq!(
        sample(&during, "sshvisor_sessions", r#"kind="exec""#),
        1.0,
        "{during}"
    );
    assert!(
        !during.contains("metricsuser") && !during.contains("127.0.0.1"),
        "no user name or address is a label:\n{during}"
    );
    // The example dashboard graphs only what the server serves.
    let dashboard = include_str!("../docs/grafana-dashboard.json");
    for name in dashboard
        .split(|c: char| !(c.is_ascii_lowercase() || c == '_'))
        .filter(|word| word.starts_with("sshvisor_"))
    {
        assert!(
            during.contains(&format!("\n{name}")),
            "docs/grafana-dashboard.json uses {name}, which /metrics does not serve"
        );
    }

    let listing = ctl(cwd.path(), &["ls", "--json"]).await;
    let conns: serde_json::Value = serde_json::from_str(&listing).unwrap();
    let id = conns[0]["id"].as_str().expect("one connection listed");
    ctl(cwd.path(), &["kill", id]).await;

    // The kill's reply comes once the connection is gone; its event reaches the metrics a
    // moment later, on their own task: scrape until the kill is counted.
    let after = tokio::time::timeout(WAIT, async {
        loop {
            let (_, text) = http(metrics, Method::GET, "/metrics").await;
            let now = figures(&text);
            if now.ctl_clean > before.ctl_clean {
                return now;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the ctl kill is counted");
    assert_eq!(after.accepted, before.accepted + 1.0);
    assert_eq!(after.ctl_clean, before.ctl_clean + 1.0);
    assert_eq!(after.kill_durations, before.kill_durations + 1.0);
    assert!(after.bytes_in > 0.0 && after.bytes_out > 0.0);
}

#[tokio::test]
async fn anything_but_get_metrics_is_not_found() {
    let cwd = tempfile::tempdir().unwrap();
    let (_server, lines) =
        common::serve_lines(cwd.path(), &["--metrics-listen", "127.0.0.1:0"]).await;
    let metrics = addr_after(&lines, "metrics on http://", "/metrics");
    for (method, path) in [
        (Method::GET, "/"),
        (Method::GET, "/metrics/x"),
        (Method::POST, "/metrics"),
    ] {
        let (status, _) = http(metrics, method.clone(), path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
    }
}
