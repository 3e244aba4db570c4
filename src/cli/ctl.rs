//! `sshvisor ctl`: the operator's client of the control socket ([`CtlClient`]) and each `ctl`
//! command run with it.
//!
//! Tables with humantime ages for people (see [`crate::cli::print`]), `--json` for scripts.
//! Every error says what failed and what to do; the exit status is non-zero when any request
//! failed.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;
use sshvisor_actors::{ConnectionInfo, Filter, KillReport};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::cli::args::{CtlCmd, FilterArgs};
use crate::cli::print;
use sshvisor::daemon::control::{Command, Request, Response};
use sshvisor::daemon::CTL_SOCKET;

/// Errors of the ctl client.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// No server listens in this state directory.
    #[error(
        "control socket {0} not found: is `sshvisor serve` running in this directory? (or pass --state-dir)"
    )]
    NoSocket(PathBuf),
    /// Talking to the server failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The server answered something this client does not understand.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// The server refused a request.
    #[error("{0}")]
    Refused(String),
}

/// A connection to the control socket.
pub struct CtlClient {
    path: PathBuf,
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    next_id: u64,
}

impl CtlClient {
    /// Connects to the control socket of the server whose state directory is `state_dir`.
    pub async fn connect(state_dir: &Path) -> Result<Self, CtlError> {
        let path = state_dir.join(CTL_SOCKET);
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    CtlError::NoSocket(path.clone())
                }
                _ => CtlError::Io {
                    path: path.clone(),
                    source: e,
                },
            })?;
        let (read, writer) = stream.into_split();
        Ok(Self {
            path,
            reader: BufReader::new(read),
            writer,
            next_id: 1,
        })
    }

    fn io(&self, source: io::Error) -> CtlError {
        CtlError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Sends a request without waiting for its answer; returns its id.
    pub async fn send(&mut self, command: Command) -> Result<u64, CtlError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(&Request { id, command })
            .map_err(|e| CtlError::Protocol(e.to_string()))?;
        line.push(b'\n');
        if let Err(e) = self.writer.write_all(&line).await {
            // The server may have refused us and hung up: its reason beats "broken pipe".
            if let Ok(Ok(response)) =
                tokio::time::timeout(Duration::from_secs(1), self.recv()).await
            {
                into_result(response)?;
            }
            return Err(self.io(e));
        }
        Ok(id)
    }

    /// Reads the next response, whichever request it answers.
    pub async fn recv(&mut self) -> Result<Response, CtlError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(|e| self.io(e))?;
        if n == 0 {
            return Err(self.io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        serde_json::from_str(&line).map_err(|e| CtlError::Protocol(format!("{e}: {line}")))
    }

    /// Sends one request and waits for its answer.
    pub async fn request(&mut self, command: Command) -> Result<Value, CtlError> {
        let id = self.send(command).await?;
        loop {
            let response = self.recv().await?;
            if response.id == id || response.id == 0 {
                return into_result(response);
            }
        }
    }

    /// Every live connection the filter selects.
    /// Like [`request`](Self::request), but the result as the server sent it (JSON text): a
    /// big answer is neither parsed into a `Value` nor printed again.
    pub async fn request_raw(&mut self, command: Command) -> Result<String, CtlError> {
        let id = self.send(command).await?;
        loop {
            let response = self.recv().await?;
            if response.id != id && response.id != 0 {
                continue;
            }
            if !response.ok {
                into_result(response)?;
                return Err(CtlError::Protocol("a failure without an error".into()));
            }
            return Ok(response
                .result
                .map(|raw| raw.get().to_string())
                .unwrap_or_else(|| "null".into()));
        }
    }

    pub async fn list(&mut self, filter: Filter) -> Result<Vec<ConnectionInfo>, CtlError> {
        let value = self
            .request(Command::Ls {
                filter,
                fleet: false,
                timeout: None,
            })
            .await?;
        serde_json::from_value(value).map_err(|e| CtlError::Protocol(e.to_string()))
    }
}

/// The result of a response, or its error as a [`CtlError::Refused`].
pub fn into_result(response: Response) -> Result<Value, CtlError> {
    if response.ok {
        match response.result {
            Some(raw) => serde_json::from_str(raw.get())
                .map_err(|e| CtlError::Protocol(format!("a malformed result: {e}"))),
            None => Ok(Value::Null),
        }
    } else {
        Err(CtlError::Refused(
            response
                .error
                .unwrap_or_else(|| "the request failed".into()),
        ))
    }
}

/// Runs one `ctl` command against the server whose state directory is `state_dir`.
pub(crate) async fn run(state_dir: PathBuf, command: CtlCmd) -> anyhow::Result<ExitCode> {
    // `sshvisor ctl ls | head` should end quietly, like any Unix tool, not panic on EPIPE.
    // SAFETY: called before any other thread of ours writes to stdout; restoring the default
    // disposition of SIGPIPE has no other effect on this short-lived client.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    // A mistake in the arguments is told before anything is asked of the server.
    if let CtlCmd::Kill {
        ids, all, filter, ..
    } = &command
    {
        kill_by_filter(ids, *all, filter).map_err(anyhow::Error::msg)?;
    }
    let mut client = CtlClient::connect(&state_dir).await?;
    match command {
        CtlCmd::Ls {
            filter,
            fleet: true,
            timeout,
            json,
        } => {
            let text = client
                .request_raw(Command::Ls {
                    filter: filter.filter(),
                    fleet: true,
                    timeout: Some(duration_text(timeout)),
                })
                .await?;
            let listing: sshvisor::fleet::FleetListing = serde_json::from_str(&text)?;
            if json {
                // As the server sent it: 3,000 connections are 1.6 MB, not worth parsing twice.
                println!("{text}");
            } else {
                print!("{}", print::format_fleet_listing(&listing));
            }
            Ok(fleet_exit(&listing.nodes))
        }
        CtlCmd::Cancel { ids } => {
            let mut failed = false;
            for id in ids {
                match client.request(Command::Cancel { target: id.clone() }).await {
                    Ok(value) => println!(
                        "cancelled the announced kill of connection {}",
                        value["cancelled"].as_str().unwrap_or_default()
                    ),
                    Err(CtlError::Refused(error)) => {
                        eprintln!("sshvisor: cannot cancel {id:?}: {error}");
                        failed = true;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        CtlCmd::Nodes { json } => {
            let value = client.request(Command::Nodes).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", print::format_nodes(&value));
            }
            Ok(ExitCode::SUCCESS)
        }
        CtlCmd::Ls { filter, json, .. } => {
            let all = client.list(filter.filter()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", print::format_table(&all));
            }
            Ok(ExitCode::SUCCESS)
        }
        CtlCmd::Drain { grace, json } => {
            let grace = grace_text(grace);
            let value = client.request(Command::Drain { grace }).await?;
            let reports: Vec<KillReport> = serde_json::from_value(value)?;
            print::reports(&reports, json)?;
            if !json {
                println!(
                    "drained: no longer accepting; {} connection(s) closed",
                    reports.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CtlCmd::Stats { json } => {
            let value = client.request(Command::Stats).await?;
            if json {
                println!("{value}");
            } else {
                print!("{}", print::format_stats(&value));
            }
            Ok(ExitCode::SUCCESS)
        }
        CtlCmd::Penalties { clear, json } => {
            let clearing = clear.is_some();
            let value = client.request(Command::Penalties { clear }).await?;
            if json {
                println!("{value}");
            } else if clearing {
                print!("{}", print::format_cleared(&value));
            } else {
                print!("{}", print::format_penalties(&value));
            }
            Ok(ExitCode::SUCCESS)
        }
        CtlCmd::Reload => {
            let value = client.request(Command::Reload).await?;
            let changes = value["changes"].as_str().unwrap_or_default();
            println!("reloaded: {changes}");
            Ok(ExitCode::SUCCESS)
        }
        CtlCmd::Watch { fleet, json } => {
            let id = client.send(Command::Watch { fleet }).await?;
            loop {
                let response = client.recv().await?;
                if response.id != id {
                    continue;
                }
                let value = into_result(response)?;
                if json {
                    println!("{value}");
                } else if fleet {
                    println!("{}", print::format_fleet_event(&value));
                } else {
                    let at = print::event_time(&value);
                    let event: sshvisor::actors::Event = serde_json::from_value(value)?;
                    println!("{}", print::format_event(&event, at));
                }
            }
        }
        CtlCmd::Show { id, json } => {
            let value = client.request(Command::Show { target: id }).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let info: ConnectionInfo = serde_json::from_value(value)?;
                print!("{}", print::format_show(&info));
            }
            Ok(ExitCode::SUCCESS)
        }
        CtlCmd::Kill {
            ids,
            all,
            filter,
            dry_run,
            fleet,
            timeout,
            warn,
            reason,
            grace,
            json,
        } => {
            let by_filter = kill_by_filter(&ids, all, &filter).map_err(anyhow::Error::msg)?;
            if let Some(notice) = warn {
                if fleet && !by_filter {
                    anyhow::bail!(
                        "--warn with --fleet takes a filter (--user, --peer, ...) or --all: an ID's announced kill is given on the node that holds it"
                    );
                }
                if !dry_run {
                    let at = std::time::SystemTime::now() + notice;
                    let on_its_node = if fleet { " on its node" } else { "" };
                    eprintln!(
                        "sshvisor: announced to the terminals; the kill starts at {} (Ctrl-C here leaves it pending; `sshvisor ctl cancel ID`{on_its_node} withdraws it)",
                        humantime::format_rfc3339_seconds(at)
                    );
                }
            }
            let warn = warn.map(duration_text);
            let filter = filter.filter();
            let timeout = Some(duration_text(timeout));
            if by_filter && fleet {
                let request = Command::KillWhere {
                    filter,
                    reason,
                    grace: grace.map(duration_text),
                    dry_run,
                    fleet: true,
                    timeout,
                    warn,
                };
                let text = client.request_raw(request).await?;
                let outcome: sshvisor::fleet::FleetKill = serde_json::from_str(&text)?;
                if json {
                    println!("{text}");
                } else {
                    print!("{}", print::format_fleet_kill(&outcome, dry_run));
                }
                Ok(fleet_exit(&outcome.nodes))
            } else if by_filter {
                kill_where(&mut client, filter, dry_run, reason, grace, warn, json).await
            } else if dry_run {
                kill_dry_run(&mut client, ids, timeout, json).await
            } else {
                let kill_args = KillArgs {
                    reason,
                    grace: grace_text(grace),
                    timeout,
                    warn,
                };
                kill(&mut client, ids, kill_args, json).await
            }
        }
    }
}

/// Whether `ctl kill` selects by filter (`true`) or by IDs (`false`), or why its arguments are
/// wrong.
fn kill_by_filter(ids: &[String], all: bool, filter: &FilterArgs) -> Result<bool, String> {
    let by_filter = all || !filter.filter().is_empty();
    if by_filter && !ids.is_empty() {
        return Err(
            "give IDs, or filters (--all, --user, --peer, --older-than, --idle-over, --key-fingerprint, --cert-serial, --cert-key-id), not both"
                .into(),
        );
    }
    if !by_filter && ids.is_empty() {
        return Err(
            "nothing to kill: give IDs, or --all, --user, --peer, --older-than, --idle-over, --key-fingerprint, --cert-serial, --cert-key-id".into(),
        );
    }
    Ok(by_filter)
}

/// The grace as sent to the server: `None` leaves the server's own kill grace in force.
fn grace_text(grace: Option<Duration>) -> Option<String> {
    grace.map(duration_text)
}

fn duration_text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A fleet answer's exit status: failure when any node did not do its part.
fn fleet_exit(nodes: &[sshvisor::fleet::NodeOutcome]) -> ExitCode {
    if nodes.iter().all(|n| n.is_answered()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn kill_where(
    client: &mut CtlClient,
    filter: sshvisor::actors::Filter,
    dry_run: bool,
    reason: Option<String>,
    grace: Option<Duration>,
    warn: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let grace = grace_text(grace);
    let value = client
        .request(Command::KillWhere {
            filter,
            reason,
            grace,
            dry_run,
            fleet: false,
            timeout: None,
            warn,
        })
        .await?;
    if dry_run {
        let matched: Vec<ConnectionInfo> = serde_json::from_value(value)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&matched)?);
        } else {
            print!("{}", print::format_table(&matched));
            println!("{} connection(s) would be killed", matched.len());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let reports: Vec<KillReport> = serde_json::from_value(value)?;
    print::reports(&reports, json)?;
    if !json {
        println!("{} connection(s) killed", reports.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// `ctl kill ID… --dry-run`: what each ID would kill, in the shape of a filter's dry run (the
/// connections, a session's connection listing only that session); nothing is killed.
async fn kill_dry_run(
    client: &mut CtlClient,
    ids: Vec<String>,
    timeout: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut matched: Vec<ConnectionInfo> = Vec::new();
    let (mut connections, mut sessions) = (0, 0);
    let mut failed = false;
    for id in ids {
        let request = Command::Kill {
            target: id.clone(),
            reason: None,
            grace: None,
            dry_run: true,
            timeout: timeout.clone(),
            warn: None,
        };
        let info = match client.request(request).await {
            // Held by another node of the fleet: where, and what.
            Ok(value) if value.get("node").is_some() => {
                println!(
                    "{} on node {} would be killed (dry run: nothing was)",
                    value["id"].as_str().unwrap_or_default(),
                    value["node"].as_str().unwrap_or_default()
                );
                continue;
            }
            Ok(value) => serde_json::from_value::<ConnectionInfo>(value)?,
            Err(CtlError::Refused(error)) => {
                eprintln!("sshvisor: cannot kill {id:?}: {error}");
                failed = true;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // IDs resolve by unique prefix among connections and sessions alike: when the
        // connection's ID starts with it, the ID named the connection.
        if info.id.to_string().starts_with(id.trim()) {
            connections += 1;
        } else {
            sessions += 1;
        }
        matched.push(info);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&matched)?);
    } else {
        print!("{}", print::format_table(&matched));
        println!(
            "{connections} connection(s) and {sessions} session(s) would be killed (dry run: nothing was)"
        );
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// What every kill of `ctl kill ID…` carries.
struct KillArgs {
    reason: Option<String>,
    grace: Option<String>,
    timeout: Option<String>,
    warn: Option<String>,
}

async fn kill(
    client: &mut CtlClient,
    ids: Vec<String>,
    args: KillArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let KillArgs {
        reason,
        grace,
        timeout,
        warn,
    } = args;
    // Kills go out together (a bounded window of them); each report is printed as soon as its
    // target is gone.
    const WINDOW: usize = 64;
    let mut queue = ids.into_iter();
    let mut pending = std::collections::HashMap::new();
    let mut failed = false;
    loop {
        while pending.len() < WINDOW {
            let Some(id) = queue.next() else { break };
            let request = Command::Kill {
                target: id.clone(),
                reason: reason.clone(),
                grace: grace.clone(),
                dry_run: false,
                timeout: timeout.clone(),
                warn: warn.clone(),
            };
            pending.insert(client.send(request).await?, id);
        }
        if pending.is_empty() {
            break;
        }
        let response = client.recv().await?;
        let Some(id) = pending.remove(&response.id) else {
            continue;
        };
        match into_result(response) {
            Ok(value) if json && value.get("node").is_some() => println!("{value}"),
            Ok(value) => {
                let node = value
                    .get("node")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                print::reports(&[serde_json::from_value(value)?], json)?;
                if let Some(node) = node {
                    println!("  (on node {node})");
                }
            }
            Err(CtlError::Refused(error)) => {
                eprintln!("sshvisor: cannot kill {id:?}: {error}");
                failed = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
