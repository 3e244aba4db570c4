//! The fleet as an operator runs it: `sshvisor serve` processes on 127.0.0.1 joined over TLS
//! made by `sshvisor fleet certs`, users connected with OpenSSH, and `sshvisor ctl` on any node:
//! one kill by user across nodes, the same announced (`--warn`: the terminal on another node
//! told at once, the cut at the deadline), a kill by ID of a connection another node holds, a
//! node with the wrong cookie refused (and serving alone), a node that dies or freezes leaving
//! the view and coming back, `ctl watch --fleet` tagging each node's events, and
//! `--fleet-insecure` refused off loopback.

#![cfg(feature = "fleet")]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use common::{openssh, text, Serving, WAIT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a node that came back may take to be linked again: the join targets that failed
/// are retried with a backoff up to 5 s (`links::JOIN_RETRY_MAX`); the rest is room for a
/// loaded machine.
const REJOIN_WAIT: Duration = Duration::from_secs(45);

/// A free port on 127.0.0.1 (bound, read, released): fleet addresses are given to the nodes
/// that join them before anyone listens. Picked below Linux's ephemeral range (32768 and up),
/// where the outgoing connections of the tests running meanwhile cannot take it before its
/// node binds it.
fn free_port() -> u16 {
    loop {
        let port = rand::random_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `sshvisor fleet certs` for these nodes, all reachable at 127.0.0.1, into `dir`.
fn certs(dir: &Path, nodes: &[&str]) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sshvisor"));
    command
        .args(["fleet", "certs", "--dir"])
        .arg(dir)
        .args(["--nodes", &nodes.join(",")]);
    for node in nodes {
        command.args(["--ip", &format!("{node}=127.0.0.1")]);
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The flags of node `name` in a TLS fleet whose files `sshvisor fleet certs` wrote to `dir`.
fn tls_flags(dir: &Path, name: &str, port: u16, join: &[u16], cookie: &Path) -> Vec<String> {
    let mut flags = vec![
        "--fleet-node-name".to_string(),
        name.to_string(),
        "--fleet-listen".into(),
        format!("127.0.0.1:{port}"),
        "--fleet-cookie-file".into(),
        cookie.display().to_string(),
        "--fleet-tls-ca".into(),
        dir.join("ca.pem").display().to_string(),
        "--fleet-tls-cert".into(),
        dir.join(format!("{name}.pem")).display().to_string(),
        "--fleet-tls-key".into(),
        dir.join(format!("{name}.key")).display().to_string(),
    ];
    for target in join {
        flags.push("--fleet-join".into());
        flags.push(format!("127.0.0.1:{target}"));
    }
    flags
}

/// One `sshvisor serve` process in its own directory. Dropping it stops the process (SIGTERM,
/// then SIGKILL if it lingers), on a panic too.
struct Node {
    name: String,
    cwd: tempfile::TempDir,
    flags: Vec<String>,
    child: Option<Child>,
    /// Its stdout, kept open: a server that prints into a closed pipe dies of it.
    _stdout: Option<tokio::io::Lines<BufReader<tokio::process::ChildStdout>>>,
    /// Its SSH port.
    port: u16,
}

impl Node {
    async fn start(name: &str, flags: Vec<String>) -> Self {
        let mut node = Self {
            name: name.to_string(),
            cwd: tempfile::tempdir().unwrap(),
            flags,
            child: None,
            _stdout: None,
            port: 0,
        };
        node.spawn().await;
        node
    }

    /// Starts the process (again, after [`Node::kill9`]) with the same flags and state.
    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        let serving = Serving::start(self.cwd.path(), &flags, log).await;
        let Some(port) = serving.port() else {
            panic!("node {} did not start:\n{}", self.name, self.log());
        };
        self.port = port;
        self.child = Some(serving.child);
        self._stdout = Some(serving.stdout);
    }

    fn pid(&self) -> Pid {
        let child = self.child.as_ref().expect("the node runs");
        Pid::from_raw(child.id().expect("not reaped") as i32)
    }

    fn log_path(&self) -> PathBuf {
        self.cwd.path().join("serve.log")
    }

    /// What the server logged (shown when a test fails).
    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn state(&self) -> PathBuf {
        self.cwd.path().join(".sshvisor")
    }

    /// The OpenSSH client logged in as `user` with the key this node generated and authorized,
    /// running `command`.
    fn ssh(&self, user: &str, command: &str) -> Command {
        let mut cmd = openssh(self.port, &self.state().join("client_ed25519"), user, &[]);
        cmd.arg(command);
        cmd
    }

    /// `sshvisor ctl ARGS` against this node, bounded by [`WAIT`].
    async fn ctl(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_sshvisor"))
            .arg("ctl")
            .arg("--state-dir")
            .arg(self.state())
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(WAIT, out)
            .await
            .unwrap_or_else(|_| panic!("ctl {args:?} on {} answers in time", self.name))
            .unwrap()
    }

    /// `ctl ARGS --json`, parsed; the exit status is not checked (a fleet answer in which a
    /// node did not answer exits 1).
    async fn ctl_json(&self, args: &[&str]) -> (bool, Value) {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.ctl(&args).await;
        let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "ctl {args:?} on {}: {e}\nstdout: {}\nstderr: {}\nlog:\n{}",
                self.name,
                text(&out.stdout),
                text(&out.stderr),
                self.log()
            )
        });
        (out.status.success(), value)
    }

    /// `ctl nodes --json`: each node's state by name.
    async fn node_states(&self) -> Vec<(String, String)> {
        let (ok, value) = self.ctl_json(&["nodes"]).await;
        assert!(ok, "{value}");
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["name"].as_str().unwrap().to_string(),
                    n["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Waits until this node's `ctl nodes` shows exactly `want` (name, state), in name order;
    /// `when` names the step in the failure.
    async fn wait_nodes(&self, when: &str, want: &[(&str, &str)], within: Duration) {
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut seen = self.node_states().await;
            seen.sort();
            if seen == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{when}: node {} shows {seen:?}, not {want:?}\nits log:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `ctl ls --fleet --json` here satisfies `done`; returns that answer.
    async fn wait_fleet_ls(&self, what: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, value) = self.ctl_json(&["ls", "--fleet"]).await;
            if done(&value) {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting on {}: {what}; last answer {value:#}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and the exit reaped: the node dies without a word to anyone.
    async fn kill9(&mut self) {
        let mut child = self.child.take().expect("the node runs");
        child.start_kill().unwrap();
        tokio::time::timeout(WAIT, child.wait())
            .await
            .expect("a killed node exits")
            .unwrap();
        self._stdout = None;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let pid = Pid::from_raw(pid as i32);
            // A frozen node would never see the SIGTERM.
            let _ = kill(pid, Signal::SIGCONT);
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.start_kill();
    }
}

/// Three nodes over TLS: a; b joins a; c joins a and b. Returns once c sees all three up.
async fn three_nodes(certs_dir: &Path) -> (Node, Node, Node) {
    certs(certs_dir, &["a", "b", "c"]);
    let cookie = certs_dir.join("cookie");
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let a = Node::start("a", tls_flags(certs_dir, "a", pa, &[], &cookie)).await;
    let b = Node::start("b", tls_flags(certs_dir, "b", pb, &[pa], &cookie)).await;
    let c = Node::start("c", tls_flags(certs_dir, "c", pc, &[pa, pb], &cookie)).await;
    let all_up = [("a", "up"), ("b", "up"), ("c", "up")];
    c.wait_nodes("started", &all_up, WAIT).await;
    (a, b, c)
}

/// The fleet's connections as (node, user), sorted, counting only those with a session.
fn with_sessions(listing: &Value) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = listing["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["sessions"].as_array().is_some_and(|s| !s.is_empty()))
        .map(|c| {
            (
                c["node"].as_str().unwrap_or("?").to_string(),
                c["user"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    found.sort();
    found
}

/// How each node took part in a fleet answer, by name.
fn outcomes(answer: &Value) -> Vec<(String, String, Option<u64>)> {
    let mut found: Vec<_> = answer["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["node"].as_str().unwrap_or("?").to_string(),
                n["status"].as_str().unwrap_or("?").to_string(),
                n["count"].as_u64(),
            )
        })
        .collect();
    found.sort();
    found
}

/// Waits for an OpenSSH client to exit; returns its stderr.
async fn ended(client: Child) -> String {
    let out = tokio::time::timeout(WAIT, client.wait_with_output())
        .await
        .expect("the ssh client exits in time")
        .unwrap();
    assert!(!out.status.success(), "a killed session does not succeed");
    text(&out.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_tls_one_kill_by_user() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = three_nodes(&tmp.path().join("certs")).await;

    let on_a = a.ssh("alice", "sleep 600").spawn().unwrap();
    let on_b = b.ssh("alice", "sleep 600").spawn().unwrap();
    // Someone else, who stays.
    let bob = a.ssh("bob", "sleep 600").spawn().unwrap();
    let wanted = |l: &Value| with_sessions(l).len() == 3;
    let listing = c.wait_fleet_ls("three sessions listed", wanted).await;
    assert_eq!(
        with_sessions(&listing),
        [
            ("a".to_string(), "alice".to_string()),
            ("a".into(), "bob".into()),
            ("b".into(), "alice".into())
        ],
        "{listing:#}"
    );
    assert_eq!(
        outcomes(&listing),
        [
            ("a".to_string(), "answered".to_string(), Some(2)),
            ("b".into(), "answered".into(), Some(1)),
            ("c".into(), "answered".into(), Some(0))
        ]
    );

    let (ok, answer) = c
        .ctl_json(&[
            "kill",
            "--fleet",
            "--user",
            "alice",
            "--reason",
            "access revoked",
        ])
        .await;
    assert!(ok, "every node answered: {answer:#}");
    assert_eq!(
        outcomes(&answer),
        [
            ("a".to_string(), "answered".to_string(), Some(1)),
            ("b".into(), "answered".into(), Some(1)),
            ("c".into(), "answered".into(), Some(0))
        ],
        "{answer:#}"
    );
    // A report per connection killed, each with its node: alice's two, nobody else's.
    let alice: Vec<(String, String)> = listing["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["user"] == "alice")
        .map(|c| {
            (
                c["node"].as_str().unwrap().to_string(),
                c["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut reported: Vec<(String, String)> = answer["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["target"]["kind"], "connection", "{r}");
            (
                r["node"].as_str().unwrap().to_string(),
                r["target"]["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    reported.sort();
    let mut expected = alice;
    expected.sort();
    assert_eq!(reported, expected, "{answer:#}");

    for (node, client) in [("a", on_a), ("b", on_b)] {
        let stderr = ended(client).await;
        assert!(
            stderr.contains("access revoked"),
            "alice's client on {node} prints the reason: {stderr}"
        );
    }
    // Only alice's went.
    let listing = c
        .wait_fleet_ls("alice gone", |l| with_sessions(l).len() == 1)
        .await;
    assert_eq!(
        with_sessions(&listing),
        [("a".to_string(), "bob".to_string())]
    );
    drop(bob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_watch_shows_every_nodes_events_tagged_with_the_node() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = three_nodes(&tmp.path().join("certs")).await;
    let mut watch = Command::new(env!("CARGO_BIN_EXE_sshvisor"))
        .args(["ctl", "--state-dir"])
        .arg(c.state())
        .args(["watch", "--fleet", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    // The watch starts with each node's next event: a login that comes before it has reached
    // a node is not shown. So log in and out of a and b until each has shown an event.
    let deadline = tokio::time::Instant::now() + WAIT;
    for node in [&a, &b] {
        'shown: loop {
            let probe = node.ssh("probe", "true").output().await.unwrap();
            assert!(probe.status.success(), "{}", text(&probe.stderr));
            while let Ok(line) =
                tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await
            {
                let event: Value = serde_json::from_str(&line.unwrap().unwrap()).unwrap();
                if event["node"] == node.name.as_str() {
                    break 'shown;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the watch shows no event of {}",
                node.name
            );
        }
    }
    let clients = [
        a.ssh("dave", "sleep 600").spawn().unwrap(),
        b.ssh("dave", "sleep 600").spawn().unwrap(),
    ];
    let mut seen = Vec::new();
    let authenticated = |seen: &Vec<Value>, node: &str| {
        seen.iter()
            .any(|e| e["node"] == node && e["event"] == "authenticated" && e["user"] == "dave")
    };
    while !(authenticated(&seen, "a") && authenticated(&seen, "b")) {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("both logins watched in time; saw {seen:#?}"))
            .unwrap()
            .expect("the watch goes on");
        let event: Value = serde_json::from_str(&line).unwrap();
        assert!(
            event["at"].as_str().is_some_and(|at| at.ends_with('Z')),
            "every event has its time: {event}"
        );
        seen.push(event);
    }
    let out = c
        .ctl(&["kill", "--fleet", "--user", "dave", "--reason", "watched"])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut disconnected = Vec::new();
    while disconnected.len() < 2 {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("both kills watched in time; saw {disconnected:?}"))
            .unwrap()
            .expect("the watch goes on");
        let event: Value = serde_json::from_str(&line).unwrap();
        if event["event"] == "disconnected" {
            assert_eq!(event["reason"], "watched", "{event}");
            disconnected.push(event["node"].as_str().unwrap().to_string());
        }
    }
    disconnected.sort();
    assert_eq!(disconnected, ["a", "b"]);
    for client in clients {
        ended(client).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_by_id_from_one_node_ends_a_connection_another_node_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _b, c) = three_nodes(&tmp.path().join("certs")).await;
    let client = a.ssh("carol", "sleep 600").spawn().unwrap();
    let listing = c
        .wait_fleet_ls("carol listed", |l| with_sessions(l).len() == 1)
        .await;
    let id = listing["connections"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // c holds nothing: the ID (a prefix, as people type it) is found on a.
    let out = c
        .ctl(&["kill", &id[..8], "--reason", "found on another node"])
        .await;
    let shown = text(&out.stdout);
    assert!(
        out.status.success(),
        "{shown}{}\n{}",
        text(&out.stderr),
        c.log()
    );
    assert!(shown.contains(&id), "{shown}");
    assert!(shown.contains("(on node a)"), "{shown}");
    let stderr = ended(client).await;
    assert!(stderr.contains("found on another node"), "{stderr}");
    let listing = c
        .wait_fleet_ls("carol gone", |l| with_sessions(l).is_empty())
        .await;
    assert!(listing["connections"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_cookie_node_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    certs(&dir, &["a", "d"]);
    let cookie = dir.join("cookie");
    let wrong = tmp.path().join("wrong-cookie");
    std::fs::write(&wrong, "not the fleet's cookie\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pa = free_port();
    let a = Node::start("a", tls_flags(&dir, "a", pa, &[], &cookie)).await;
    let d = Node::start("d", tls_flags(&dir, "d", free_port(), &[pa], &wrong)).await;

    // Both logs say why.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(a.log().contains("cookies differ") && d.log().contains("cookies differ")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "both logs say the cookies differ\na's log:\n{}\nd's log:\n{}",
            a.log(),
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // d serves SSH alone.
    let out = tokio::time::timeout(WAIT, d.ssh("dave", "echo alone").output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "alone");
    let out = d.ctl(&["ls", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(listed.is_empty(), "{listed:?}");

    // Neither sees the other.
    assert_eq!(a.node_states().await, [("a".to_string(), "up".to_string())]);
    assert_eq!(d.node_states().await, [("d".to_string(), "up".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_or_freezes_leaves_the_view_and_comes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, mut b, c) = three_nodes(&tmp.path().join("certs")).await;
    let b_gone = [("a", "up"), ("b", "unreachable"), ("c", "up")];
    let all_up = [("a", "up"), ("b", "up"), ("c", "up")];

    // Killed: the view says so (target 3 s; bounded at 5 s for a loaded machine).
    b.kill9().await;
    c.wait_nodes("b killed", &b_gone, Duration::from_secs(5))
        .await;
    // A list that needs b answers, naming b.
    let (ok, listing) = c.ctl_json(&["ls", "--fleet", "--timeout", "2s"]).await;
    assert!(!ok, "a fleet list without b is not a success: {listing:#}");
    let b_row = outcomes(&listing)
        .into_iter()
        .find(|(node, ..)| node == "b")
        .unwrap_or_else(|| panic!("b is named: {listing:#}"));
    assert!(
        ["unreachable", "lost", "not_answering"].contains(&b_row.1.as_str()),
        "{listing:#}"
    );
    // So does a fleet kill.
    let (ok, answer) = c
        .ctl_json(&["kill", "--fleet", "--user", "nobody", "--timeout", "2s"])
        .await;
    assert!(!ok, "{answer:#}");
    assert!(
        outcomes(&answer)
            .iter()
            .any(|(node, status, _)| node == "b" && status != "answered"),
        "{answer:#}"
    );

    // Back, with the same flags and state: up again on c, nobody else restarted.
    b.spawn().await;
    c.wait_nodes("b restarted", &all_up, REJOIN_WAIT).await;
    a.wait_nodes("b restarted, seen from a", &all_up, REJOIN_WAIT)
        .await;

    // Frozen, its link still open: a fleet kill started at once still ends in one answer,
    // with a's kill done and reported and b named as not having done its part.
    let client = a.ssh("alice", "sleep 600").spawn().unwrap();
    c.wait_fleet_ls("alice listed", |l| with_sessions(l).len() == 1)
        .await;
    kill(b.pid(), Signal::SIGSTOP).unwrap();
    let (ok, answer) = c
        .ctl_json(&[
            "kill",
            "--fleet",
            "--user",
            "alice",
            "--reason",
            "while b froze",
            "--timeout",
            "1s",
        ])
        .await;
    assert!(!ok, "{answer:#}");
    let seen = outcomes(&answer);
    assert!(
        seen.contains(&("a".to_string(), "answered".to_string(), Some(1))),
        "{answer:#}"
    );
    assert!(
        seen.iter().any(|(node, status, _)| node == "b"
            && ["unreachable", "lost", "not_answering"].contains(&status.as_str())),
        "{answer:#}"
    );
    assert_eq!(answer["reports"][0]["node"], "a", "{answer:#}");
    assert!(ended(client).await.contains("while b froze"));
    // And the view marks it unreachable, then up once it runs again.
    c.wait_nodes("b stopped", &b_gone, Duration::from_secs(5))
        .await;
    kill(b.pid(), Signal::SIGCONT).unwrap();
    c.wait_nodes("b continued", &all_up, REJOIN_WAIT).await;
}

/// `sshvisor serve` with these flags in a fresh directory, expected to refuse to start.
async fn refused(flags: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let cookie = tmp.path().join("cookie");
    std::fs::write(&cookie, "secret\n").unwrap();
    std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sshvisor"))
        .args(["serve", "--listen", "127.0.0.1:0", "--fleet-cookie-file"])
        .arg(&cookie)
        .args(flags)
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, out)
        .await
        .expect("a refused serve exits")
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{flags:?} is refused: {stderr}");
    assert!(
        !text(&out.stdout).contains("sshvisor listening"),
        "{}",
        text(&out.stdout)
    );
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_links_are_refused_off_loopback_and_plain_links_need_insecure() {
    let stderr = refused(&["--fleet-listen", "0.0.0.0:0", "--fleet-insecure"]).await;
    assert!(
        stderr.contains("--fleet-insecure") && stderr.contains("loopback"),
        "{stderr}"
    );
    let stderr = refused(&[
        "--fleet-listen",
        "127.0.0.1:0",
        "--fleet-join",
        "192.0.2.1:7070",
        "--fleet-insecure",
    ])
    .await;
    assert!(
        stderr.contains("--fleet-join 192.0.2.1:7070") && stderr.contains("loopback"),
        "{stderr}"
    );
    let stderr = refused(&["--fleet-listen", "127.0.0.1:0"]).await;
    assert!(
        stderr.contains("--fleet-tls-ca") && stderr.contains("--fleet-insecure"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_fleet_kill_warns_the_terminal_on_another_node_then_cuts_at_the_deadline() {
    use tokio::io::AsyncReadExt;

    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = three_nodes(&tmp.path().join("certs")).await;
    // alice at a terminal on b; bob on a stays.
    let key = b.state().join("client_ed25519");
    let mut alice = openssh(b.port, &key, "alice", &["RequestTTY=force"])
        .arg("sleep 600")
        .spawn()
        .unwrap();
    let bob = a.ssh("bob", "sleep 600").spawn().unwrap();
    c.wait_fleet_ls("both sessions listed", |l| with_sessions(l).len() == 2)
        .await;

    let asked = std::time::Instant::now();
    let state = c.state();
    let kill = Command::new(env!("CARGO_BIN_EXE_sshvisor"))
        .args(["ctl", "--state-dir"])
        .arg(&state)
        .args(["kill", "--fleet", "--user", "alice", "--warn", "2s"])
        .args(["--reason", "maintenance at noon", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // The line reaches alice's terminal at once, on b, from c's ctl.
    let mut out = alice.stdout.take().unwrap();
    let wanted = "*** sshvisor: this connection will be closed in 2s: maintenance at noon ***";
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 1024];
        while !text(&seen).contains(wanted) {
            let n = out.read(&mut buf).await.unwrap();
            assert!(n > 0, "alice's client ended first: {:?}", text(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no warning shown: {:?}", text(&seen)));
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "shown before the cut"
    );

    let done = tokio::time::timeout(WAIT, kill.wait_with_output())
        .await
        .expect("ctl answers after the deadline")
        .unwrap();
    assert!(
        asked.elapsed() >= Duration::from_secs(2),
        "killed at the deadline"
    );
    assert!(done.status.success(), "{}", text(&done.stderr));
    let answer: Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(
        outcomes(&answer),
        [
            ("a".to_string(), "answered".to_string(), Some(0)),
            ("b".into(), "answered".into(), Some(1)),
            ("c".into(), "answered".into(), Some(0))
        ],
        "{answer:#}"
    );
    let stderr = ended(alice).await;
    assert!(stderr.contains("maintenance at noon"), "{stderr}");
    let listing = c
        .wait_fleet_ls("alice gone", |l| with_sessions(l).len() == 1)
        .await;
    assert_eq!(
        with_sessions(&listing),
        [("a".to_string(), "bob".to_string())]
    );
    drop(bob);
}
