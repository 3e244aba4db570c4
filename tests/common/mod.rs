//! Shared helpers of the real-client tests: a server on 127.0.0.1:0 in a temporary state
//! directory, the OpenSSH `ssh` binary pointed at it, `sshvisor ctl`, and a russh client.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg};
use sshvisor::daemon::{Daemon, DaemonOptions};
use sshvisor_actors::{ConnectionInfo, Event, SessionId, SupervisorMsg};
use tokio::process::Command;
use tokio::sync::mpsc;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// A server started for one test.
pub struct TestServer {
    pub daemon: Daemon,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server whose options `tweak` adjusts first.
    pub async fn start_with(tweak: impl FnOnce(&mut DaemonOptions)) -> Self {
        // Where no cgroup can be made, sessions fall back on the reaper: this test binary's
        // main does not serve it, sshvisor's does.
        sshvisor::session::reaper::use_program(env!("CARGO_BIN_EXE_sshvisor").into());
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = DaemonOptions {
            config: sshvisor::daemon::config::Config {
                listen: "127.0.0.1:0".parse().unwrap(),
                state_dir: dir.path().join("state"),
                authorized_keys: None,
                // Tests open many connections from 127.0.0.1 at once: penalties are tested on
                // a server of their own (tests/penalties.rs).
                penalties: sshvisor::daemon::config::Penalties {
                    exempt: sshvisor::ssh::penalties::PenaltyPolicy::loopback_exempt().exempt,
                    ..Default::default()
                },
                ..Default::default()
            },
            // The test process spawns ssh and ctl itself: their exit status is not ours to take.
            reap_orphans: false,
            ..DaemonOptions::default()
        };
        tweak(&mut options);
        let daemon = Daemon::start(options).await.expect("server starts");
        Self { daemon, dir }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn port(&self) -> u16 {
        self.daemon.ssh_addr().port()
    }

    pub fn client_key_path(&self) -> PathBuf {
        self.state_dir().join("client_ed25519")
    }

    pub fn client_key(&self) -> PrivateKey {
        PrivateKey::read_openssh_file(self.client_key_path()).expect("client key")
    }

    /// The OpenSSH client, set up to log in as `user` with the generated key and to check the
    /// host key strictly against the written known_hosts.
    pub fn ssh(&self, user: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F")
            .arg("/dev/null")
            .arg("-i")
            .arg(self.client_key_path())
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.state_dir().join("known_hosts").display()
            ))
            .arg("-p")
            .arg(self.port().to_string())
            .arg(format!("{user}@127.0.0.1"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// `sshvisor ctl --state-dir DIR ARGS...`
    pub fn ctl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sshvisor"));
        cmd.arg("ctl")
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    pub async fn list(&self) -> Vec<ConnectionInfo> {
        ractor::call_t!(
            self.daemon.supervisor(),
            |reply| SupervisorMsg::List { reply },
            5000
        )
        .expect("list")
    }

    pub async fn events(&self) -> mpsc::UnboundedReceiver<Event> {
        sshvisor_actors::events::subscribe(self.daemon.events())
            .await
            .expect("subscribe")
    }

    /// A russh client logged in as `user`.
    pub async fn russh_client(&self, user: &str) -> Client {
        let client = russh_connect(self.port(), &self.client_key_path(), user)
            .await
            .expect("connect");
        assert!(client.authenticated, "the generated key is authorized");
        client
    }
}

/// A russh client connected to 127.0.0.1:`port`, having tried to log in as `user` with the
/// key at `key` (see `Client::authenticated`).
pub async fn russh_connect(port: u16, key: &Path, user: &str) -> Result<Client, russh::Error> {
    let config = Arc::new(client::Config {
        nodelay: true,
        ..Default::default()
    });
    let recorder = Recorder::default();
    let log = ClientLog::default();
    let mut handle = client::connect(
        config,
        ("127.0.0.1", port),
        ClientHandler {
            disconnect: recorder.clone(),
            log: log.clone(),
        },
    )
    .await?;
    let key = PrivateKey::read_openssh_file(key).expect("client key");
    let key = PrivateKeyWithHashAlg::new(Arc::new(key), None);
    let auth = handle.authenticate_publickey(user, key).await?;
    Ok(Client {
        handle,
        disconnect: recorder,
        log,
        authenticated: auth.success(),
    })
}

/// What the server said when it disconnected a russh client.
pub type Recorder = Arc<Mutex<Option<String>>>;

/// What a russh client saw, in order: `eof N`, `close N`, `exit-signal N SIG`,
/// `exit-status N CODE`, `failure N`, `disconnect TEXT`.
#[derive(Clone, Default)]
pub struct ClientLog(Arc<Mutex<Vec<String>>>);

impl ClientLog {
    fn push(&self, entry: String) {
        self.0.lock().unwrap().push(entry);
    }

    pub fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// The position of the first entry starting with `prefix`.
    pub fn position(&self, prefix: &str) -> Option<usize> {
        self.entries().iter().position(|e| e.starts_with(prefix))
    }
}

pub struct ClientHandler {
    disconnect: Recorder,
    log: ClientLog,
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn channel_eof(
        &mut self,
        channel: russh::ChannelId,
        _: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.log.push(format!("eof {channel}"));
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: russh::ChannelId,
        _: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.log.push(format!("close {channel}"));
        Ok(())
    }

    async fn channel_failure(
        &mut self,
        channel: russh::ChannelId,
        _: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.log.push(format!("failure {channel}"));
        Ok(())
    }

    async fn exit_status(
        &mut self,
        channel: russh::ChannelId,
        code: u32,
        _: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.log.push(format!("exit-status {channel} {code}"));
        Ok(())
    }

    async fn exit_signal(
        &mut self,
        channel: russh::ChannelId,
        signal: russh::Sig,
        _core_dumped: bool,
        _message: &str,
        _lang: &str,
        _: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.log.push(format!("exit-signal {channel} {signal:?}"));
        Ok(())
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        if let client::DisconnectReason::ReceivedDisconnect(info) = &reason {
            *self.disconnect.lock().unwrap() = Some(info.message.clone());
            self.log.push(format!("disconnect {}", info.message));
        }
        match reason {
            client::DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            client::DisconnectReason::Error(e) => Err(e),
        }
    }
}

pub struct Client {
    pub handle: client::Handle<ClientHandler>,
    pub disconnect: Recorder,
    pub log: ClientLog,
    /// Whether the server accepted the key.
    pub authenticated: bool,
}

/// Output and end of one exec channel.
#[derive(Debug, Default)]
pub struct ExecResult {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: Option<u32>,
    pub signal: Option<String>,
}

/// Reads a channel to its end.
pub async fn drain(channel: &mut russh::Channel<client::Msg>) -> ExecResult {
    let mut result = ExecResult::default();
    while let Some(msg) = tokio::time::timeout(WAIT, channel.wait())
        .await
        .expect("channel ends in time")
    {
        match msg {
            russh::ChannelMsg::Data { data } => result.stdout.extend_from_slice(&data),
            russh::ChannelMsg::ExtendedData { data, .. } => result.stderr.extend_from_slice(&data),
            russh::ChannelMsg::ExitStatus { exit_status } => result.status = Some(exit_status),
            russh::ChannelMsg::ExitSignal { signal_name, .. } => {
                result.signal = Some(format!("{signal_name:?}"))
            }
            _ => {}
        }
    }
    result
}

/// Waits for the first event that `pick` accepts, failing the test after [`WAIT`].
pub async fn wait_event<T>(
    events: &mut mpsc::UnboundedReceiver<Event>,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.recv().await.expect("event stream open");
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    })
    .await
    .expect("the awaited event arrives in time")
}

/// Waits until a session running exactly `command` has started; returns its ID.
pub async fn wait_started(events: &mut mpsc::UnboundedReceiver<Event>, command: &str) -> SessionId {
    wait_event(events, |e| match e {
        Event::SessionStarted {
            session,
            command: Some(c),
            ..
        } if c == command => Some(*session),
        _ => None,
    })
    .await
}

/// PIDs of live processes whose command line is exactly `argv`.
pub fn processes_with_argv(argv: &[&str]) -> Vec<u32> {
    let wanted: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if cmdline == wanted {
                // A zombie has an empty cmdline, so this process still runs.
                found.push(pid);
            }
        }
    }
    found
}

/// The OpenSSH client to 127.0.0.1:`port` as `user` with `key` (and the certificate beside
/// it, if any), `options` given as `-o` before the destination, trusting whatever host key it
/// meets: for servers whose host key the test did not record.
pub fn openssh(port: u16, key: &Path, user: &str, options: &[&str]) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-i"])
        .arg(key)
        .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
        .args(["-o", "StrictHostKeyChecking=no"])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=10",
        ]);
    for option in options {
        cmd.args(["-o", option]);
    }
    cmd.arg("-p")
        .arg(port.to_string())
        .arg(format!("{user}@127.0.0.1"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Waits until `cond` holds, checking every 20 ms, failing the test after [`WAIT`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Bytes waiting unread in the receive queue of the local TCP socket bound to `local`
/// (IPv4 only), from /proc/net/tcp.
pub fn tcp_rx_queue(local: std::net::SocketAddr) -> Option<u64> {
    let std::net::SocketAddr::V4(local) = local else {
        return None;
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(local.ip().octets()),
        local.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&want.as_str()) {
            return None;
        }
        let queues = fields.get(4)?;
        let rx = queues.split(':').nth(1)?;
        u64::from_str_radix(rx, 16).ok()
    })
}

/// The bytes queued to send on the TCP socket whose remote end is `remote` (the server's side
/// of a client's connection), from /proc/net/tcp.
pub fn tcp_tx_queue_to(remote: std::net::SocketAddr) -> Option<u64> {
    let std::net::SocketAddr::V4(remote) = remote else {
        return None;
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(remote.ip().octets()),
        remote.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(2) != Some(&want.as_str()) {
            return None;
        }
        let queues = fields.get(4)?;
        let tx = queues.split(':').next()?;
        u64::from_str_radix(tx, 16).ok()
    })
}

/// `sshvisor serve --listen 127.0.0.1:0 EXTRA...` run as its own process in `cwd` (the daemon
/// as an operator runs it: subreaper, orphan reaper, signals); returns it and its stdout lines
/// up to the printed ssh command (or the listening line when keys are given).
pub async fn serve_lines(cwd: &Path, extra: &[&str]) -> (tokio::process::Child, Vec<String>) {
    let started = Serving::start(cwd, extra, Stdio::null()).await;
    (started.child, started.lines)
}

/// A `sshvisor serve` process started by [`Serving::start`].
pub struct Serving {
    pub child: tokio::process::Child,
    /// What it printed at start, up to its ssh command line.
    pub lines: Vec<String>,
    /// The rest of its stdout, kept open (a closed pipe would fail its later writes).
    pub stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Serving {
    /// `sshvisor serve --listen 127.0.0.1:0 EXTRA...` in `cwd`, its stderr to `stderr`; waits
    /// for its printed ssh line (the last of what it prints at start). If it exits first,
    /// `lines` ends without one.
    pub async fn start(cwd: &Path, extra: &[&str], stderr: impl Into<Stdio>) -> Self {
        Self::start_env(cwd, extra, stderr, &[]).await
    }

    /// [`Serving::start`] with `env` set, in an environment without the test runner's
    /// `NO_COLOR` and `NOTIFY_SOCKET`.
    pub async fn start_env(
        cwd: &Path,
        extra: &[&str],
        stderr: impl Into<Stdio>,
        env: &[(&str, &str)],
    ) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = Command::new(env!("CARGO_BIN_EXE_sshvisor"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .current_dir(cwd)
            .env_remove("NO_COLOR")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut lines = Vec::new();
        tokio::time::timeout(WAIT, async {
            while let Some(line) = stdout.next_line().await.unwrap() {
                let done = line.trim_start().starts_with("ssh ");
                lines.push(line);
                if done {
                    break;
                }
            }
        })
        .await
        .expect("serve prints its ssh line in time");
        Self {
            child,
            lines,
            stdout,
        }
    }

    /// The SSH port it printed (`sshvisor listening on ADDR`), if it got that far.
    pub fn port(&self) -> Option<u16> {
        self.lines.iter().find_map(|line| {
            line.strip_prefix("sshvisor listening on ")
                .and_then(|addr| addr.rsplit(':').next())
                .and_then(|port| port.parse().ok())
        })
    }
}

/// [`serve_lines`], with the printed `ssh` command line as words, the session's command left
/// out.
pub async fn serve_process(cwd: &Path, extra: &[&str]) -> (tokio::process::Child, Vec<String>) {
    let (child, lines) = serve_lines(cwd, extra).await;
    let ssh_line = lines.last().expect("serve prints its ssh line");
    let words = ssh_line
        .replace("'echo hello from sshvisor'", "")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    (child, words)
}

/// The `ssh` command [`serve_process`] printed (`ssh`, its words), run from `cwd` (where its
/// key and known_hosts are) with no user configuration, for `command`; no stdin, and killed
/// with the test. The caller chooses stdout and stderr.
pub fn printed_ssh(ssh: &[String], cwd: &Path, command: &str) -> Command {
    let mut cmd = Command::new(&ssh[0]);
    cmd.args(["-F", "/dev/null"])
        .args(&ssh[1..])
        .arg(command)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Reads a channel's output into `seen` until it holds `pattern`.
pub async fn read_until(
    channel: &mut russh::Channel<client::Msg>,
    seen: &mut String,
    pattern: &str,
) {
    tokio::time::timeout(WAIT, async {
        while !seen.contains(pattern) {
            match channel.wait().await {
                Some(russh::ChannelMsg::Data { data }) => {
                    seen.push_str(&String::from_utf8_lossy(&data))
                }
                Some(_) => {}
                None => panic!("the channel ended before {pattern:?}; saw {seen:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {pattern:?}; saw {seen:?}"));
}

/// Live zombies whose parent is `parent`.
pub fn zombies_of(parent: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            fields.next() == Some("Z") && fields.next() == Some(parent.to_string().as_str())
        })
        .count()
}
