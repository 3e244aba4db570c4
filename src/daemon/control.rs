//! The control socket: JSON lines over a Unix socket, one request and one response per line.
//!
//! Only the server's own user (or root) may talk to it: the socket file has mode 0600 and every
//! peer's uid is checked with SO_PEERCRED. Requests on one connection run concurrently and each
//! response carries its request's `id`, so `ctl kill A B C` sees each report as soon as that
//! target is gone. A bad request (malformed, oversized, unknown command, unknown ID) gets an
//! error response; the server serves on.
//!
//! Control reaches the tree through its [`SupervisorHandle`] and the daemon through the small
//! [`Server`] trait (the kill grace in force, reload, drain); it holds none of the daemon's
//! pieces.
//!
//! - `fleet`: the requests that reach every node of the fleet (`ls --fleet`, a kill of an ID
//!   another node holds, `kill_where --fleet`, `nodes`, `watch --fleet`).
//! - `reserve`: what the socket keeps in reserve (a spare descriptor, /proc files opened at
//!   start) so that it answers when the server has run out of descriptors.
//!
//! ```text
//! > {"id":1,"cmd":"ls"}
//! < {"id":1,"ok":true,"result":[{"id":"…","user":"alice",…}]}
//! > {"id":2,"cmd":"kill","target":"3f2a","reason":"maintenance","grace":"5s"}
//! < {"id":2,"ok":true,"result":{"target":{"kind":"connection","id":"3f2a…"},"sessions_closed":1,…}}
//! ```

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sshvisor_actors::killed_by::KilledBy;
use sshvisor_actors::{
    ConnId, ConnectionInfo, Filter, HandleError, KillReport, PeerNet, PrefixMatch,
    SupervisorHandle, Target,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::task::JoinSet;
use tracing::{info, info_span, warn, Instrument};

use crate::audit::{Audit, AuditRecord, Initiator};
use crate::ssh::penalties::Penalties;

#[cfg(feature = "fleet")]
mod fleet;
#[cfg(not(feature = "fleet"))]
#[path = "control/no_fleet.rs"]
mod fleet;
mod reserve;

/// The longest request line accepted, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Requests of one control connection that may be under way (or answered but unread) at once.
pub const MAX_IN_FLIGHT: usize = 256;

/// How long writing one answer may take before a client that does not read is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest grace a kill may ask for.
pub const MAX_GRACE: Duration = Duration::from_secs(3600);

/// The commands of the control protocol.
pub const COMMANDS: &[&str] = &[
    "ls",
    "show",
    "kill",
    "kill_all",
    "kill_where",
    "drain",
    "watch",
    "reload",
    "stats",
    "penalties",
    "nodes",
    "cancel",
];

/// One request, as sent on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Echoed in the response.
    #[serde(default)]
    pub id: u64,
    /// What to do.
    #[serde(flatten)]
    pub command: Command,
}

/// What a request asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Every live connection with its sessions (those the filter selects, when given).
    Ls {
        /// Which connections; all when empty.
        #[serde(default)]
        filter: Filter,
        /// Every node's connections, each tagged with its node (a node in a fleet only).
        #[serde(default)]
        fleet: bool,
        /// How long each node may take to answer (humantime; 2 s when absent).
        #[serde(default)]
        timeout: Option<String>,
    },
    /// One connection (by its ID, or the ID of one of its sessions, or a unique prefix).
    Show {
        /// The ID or prefix.
        target: String,
    },
    /// Kill a connection or a session (full ID or unique prefix); answers once it is gone.
    /// With `dry_run`, answers what it would kill and kills nothing: the connection, or for a
    /// session its connection listing only that session.
    Kill {
        /// The ID or prefix.
        target: String,
        /// Shown to the client.
        #[serde(default)]
        reason: Option<String>,
        /// Humantime duration (`5s`, `500ms`); the server's kill grace when absent.
        #[serde(default)]
        grace: Option<String>,
        /// Say what would be killed, kill nothing.
        #[serde(default)]
        dry_run: bool,
        /// In a fleet, how long each node may take to answer beyond the kill's own time
        /// (humantime; 2 s when absent).
        #[serde(default)]
        timeout: Option<String>,
        /// Announce the kill to the connection's terminals this long ahead (humantime) and kill
        /// at the deadline, unless cancelled (`cancel`); answers after the kill.
        #[serde(default)]
        warn: Option<String>,
    },
    /// Withdraw the announced kill (`kill` with `warn`) a connection waits for; its terminals
    /// are told.
    Cancel {
        /// The connection's ID or a unique prefix.
        target: String,
    },
    /// Kill every connection the filter selects (AND of its criteria); answers once all of
    /// them are gone, with one report per connection. With `dry_run`, only lists them.
    KillWhere {
        /// Which connections.
        filter: Filter,
        /// Shown to the clients.
        #[serde(default)]
        reason: Option<String>,
        /// Humantime duration.
        #[serde(default)]
        grace: Option<String>,
        /// List what would be killed, kill nothing.
        #[serde(default)]
        dry_run: bool,
        /// On every node of the fleet: one answer with a report per connection and per node.
        #[serde(default)]
        fleet: bool,
        /// How long each node may take to answer beyond the kill's own time (humantime;
        /// 2 s when absent).
        #[serde(default)]
        timeout: Option<String>,
        /// Announce the kill to the connections' terminals this long ahead (humantime) and
        /// kill at the deadline those not cancelled; answers after the kill.
        #[serde(default)]
        warn: Option<String>,
    },
    /// Stop accepting (the port is released), kill every connection, answer once the tree is
    /// empty.
    Drain {
        /// Humantime duration.
        #[serde(default)]
        grace: Option<String>,
    },
    /// Stream lifecycle events as they happen: one response line per event, all with this
    /// request's id, until the client hangs up.
    Watch {
        /// Every node's events, each tagged with its node (a node in a fleet only).
        #[serde(default)]
        fleet: bool,
    },
    /// The nodes of this node's fleet: name, addresses, up or unreachable since when, when
    /// last heard, connection and session counts.
    Nodes,
    /// Re-read the configuration: new limits and timeouts apply to new connections at once and
    /// to live ones where that makes sense; nothing live is dropped. A bad file changes
    /// nothing and the error says why.
    Reload,
    /// How big the server is: the tree's map and live actors, and the process's memory (PSS,
    /// RSS), open descriptors and threads.
    Stats,
    /// The sources with penalty time (address or network, time left, offences, last reason);
    /// with `clear`, forgets the sources inside that address or network (`all`: every one)
    /// and answers which penalized ones were removed.
    Penalties {
        /// An address, a network (`10.0.0.0/8`) or `all`.
        #[serde(default)]
        clear: Option<String>,
    },
    /// Kill every connection; answers once all of them are gone.
    KillAll {
        /// Shown to the clients.
        #[serde(default)]
        reason: Option<String>,
        /// Humantime duration.
        #[serde(default)]
        grace: Option<String>,
    },
}

/// One response, as sent on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// The request's `id`.
    pub id: u64,
    /// Whether the request succeeded.
    pub ok: bool,
    /// The result, when it succeeded: JSON serialized once, straight from the reports (a
    /// kill-all of 10,000 connections answers with 10,000 of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<RawValue>>,
    /// What went wrong, when it failed: a sentence for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    fn ok(id: u64, result: Box<RawValue>) -> Self {
        Self {
            id,
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    fn err(id: u64, error: impl Into<String>) -> Self {
        Self {
            id,
            ok: false,
            result: None,
            error: Some(error.into()),
        }
    }
}

/// What the control socket asks of the server it runs in, besides the tree (which it reaches
/// through its [`SupervisorHandle`]). The daemon implements it; control holds none of the
/// daemon's pieces.
pub trait Server: Send + Sync + 'static {
    /// The grace of kills that name none (the configuration's `kill_grace`, as last reloaded).
    fn kill_grace(&self) -> Duration;

    /// Re-reads the configuration and applies it: `Ok` says what changed, `Err` why nothing
    /// did (the old configuration stays in force).
    fn reload(&self) -> BoxFuture<'_, Result<String, String>>;

    /// The audit log kills and reloads are recorded in; none: not recorded.
    fn audit(&self) -> Option<&Audit> {
        None
    }

    /// Stops accepting (the port is released), kills every connection with `grace`, and
    /// answers once the tree is empty, with one report per connection.
    fn drain(
        &self,
        grace: Duration,
        by: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<KillReport>, HandleError>>;

    /// The listener's per-source penalty table (`ctl penalties`, `ctl stats`); none by default.
    fn penalties(&self) -> Option<Arc<Penalties>> {
        None
    }

    /// This node's fleet, when it is in one (`ls --fleet`, `kill` of an ID held elsewhere,
    /// `nodes`, `watch --fleet`); none by default.
    #[cfg(feature = "fleet")]
    fn fleet(&self) -> Option<crate::fleet::Fleet> {
        None
    }
}

/// What every control request can reach: the tree and the server around it.
#[derive(Clone)]
struct Reach {
    /// The tree's door.
    tree: SupervisorHandle,
    /// The daemon.
    server: Arc<dyn Server>,
}

/// A running control socket.
pub struct ControlServer {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl ControlServer {
    /// Binds the socket at `path` (replacing a stale one; refusing if a live server answers on
    /// it) with mode 0600 and starts serving.
    pub async fn bind(
        path: &Path,
        tree: SupervisorHandle,
        server: Arc<dyn Server>,
    ) -> io::Result<Self> {
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{} is in use: another `sshvisor serve` runs with this state directory",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        reserve::open_proc_self();
        let owner = nix::unistd::geteuid().as_raw();
        let task = tokio::spawn(accept_loop(listener, Reach { tree, server }, owner));
        info!(path = %path.display(), "control socket ready");
        Ok(Self {
            path: path.to_path_buf(),
            task,
        })
    }

    /// Stops serving and removes the socket file.
    pub fn close(self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept_loop(listener: UnixListener, reach: Reach, owner: u32) {
    // See `reserve`: the operator gets in when nothing else can.
    let spare = Arc::new(reserve::Spare::new());
    let mut released = false;
    loop {
        // Taken back here too when no descriptor was free for it before; never right after
        // it was given up, or the accept it was given up for would find none again.
        if !std::mem::take(&mut released) {
            spare.retake();
        }
        match listener.accept().await {
            Ok((stream, _)) => {
                let cred = stream.peer_cred().ok();
                let uid = cred.map(|c| c.uid());
                let pid = cred.and_then(|c| c.pid());
                let span = info_span!("ctl", uid = uid.map(i64::from).unwrap_or(-1));
                let reach = reach.clone();
                let spare = spare.clone();
                tokio::spawn(
                    async move {
                        match uid {
                            Some(uid) if uid == owner || uid == 0 => {
                                serve_client(stream, reach, Caller::of(uid, pid)).await
                            }
                            _ => refuse(stream, owner).await,
                        }
                        // The client's descriptor is closed: take the spare back with it
                        // if it was given up, before anything else can.
                        spare.retake();
                    }
                    .instrument(span),
                );
            }
            Err(e) if reserve::out_of_descriptors(&e) && spare.release() => {
                released = true;
                warn!(error = %e, "control accept: out of descriptors; the spare one is given up to let the operator in");
            }
            Err(e) => {
                warn!(error = %e, "control accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn refuse(mut stream: UnixStream, owner: u32) {
    warn!("control connection refused: not the server's user");
    let line = serde_json::to_string(&Response::err(
        0,
        format!("permission denied: only uid {owner} (the server's user) or root may control this server"),
    ))
    .unwrap_or_default();
    let _ = stream.write_all(format!("{line}\n").as_bytes()).await;
}

/// The process at the other end of a control connection, as SO_PEERCRED named it when it
/// connected. Its executable is read then, once, while its first request is still on the way,
/// rather than on each audited kill's path.
struct Caller {
    uid: u32,
    /// Who the audit log says asked.
    initiator: Initiator,
}

impl Caller {
    fn of(uid: u32, pid: Option<i32>) -> Arc<Self> {
        Arc::new(Self {
            uid,
            initiator: Initiator::ctl(uid, pid),
        })
    }
}

async fn serve_client(stream: UnixStream, reach: Reach, caller: Arc<Caller>) {
    let (read, mut write) = stream.into_split();
    // Each queued response holds its request's permit until it is written, so a client that
    // sends without reading is held back once MAX_IN_FLIGHT answers wait for it.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Response, Option<OwnedSemaphorePermit>)>();
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let writer = tokio::spawn(async move {
        while let Some((response, _permit)) = rx.recv().await {
            let mut line = serde_json::to_vec(&response).unwrap_or_default();
            line.push(b'\n');
            match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&line)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    warn!("control client stopped reading its answers: closing");
                    return;
                }
            }
        }
    });
    // Watches last until the client goes; other requests until they are answered.
    let mut requests = JoinSet::new();
    let mut watches = JoinSet::new();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        line.clear();
        let mut limited = (&mut reader).take(MAX_REQUEST as u64 + 1);
        let read = tokio::select! {
            read = limited.read_until(b'\n', &mut line) => read,
            () = tx.closed() => break,
        };
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "control read failed");
                break;
            }
        };
        if n == 0 {
            break;
        }
        if line.len() > MAX_REQUEST {
            warn!(bytes = line.len(), "control request too long");
            let _ = tx.send((
                Response::err(
                    0,
                    format!("request too long: the limit is {MAX_REQUEST} bytes per line"),
                ),
                Some(permit),
            ));
            break;
        }
        let text = String::from_utf8_lossy(&line);
        if text.trim().is_empty() {
            continue;
        }
        match parse_request(&text) {
            Ok(Request {
                id,
                command: Command::Watch { fleet },
            }) => {
                let (tx, reach) = (tx.clone(), reach.clone());
                watches.spawn(
                    async move {
                        let events = match fleet {
                            true => fleet_events(&reach),
                            false => tree_events(&reach.tree).await,
                        };
                        relay(id, &tx, permit, events).await;
                    }
                    .in_current_span(),
                );
            }
            Ok(request) => {
                let tx = tx.clone();
                let reach = reach.clone();
                let caller = caller.clone();
                requests.spawn(
                    async move {
                        let id = request.id;
                        // A bug in one request must still produce its answer.
                        let response = AssertUnwindSafe(execute(request, &reach, &caller))
                            .catch_unwind()
                            .await
                            .unwrap_or_else(|panic| {
                                let what = panic
                                    .downcast_ref::<&str>()
                                    .map(|s| s.to_string())
                                    .or_else(|| panic.downcast_ref::<String>().cloned())
                                    .unwrap_or_default();
                                warn!(panic = %what, "control request failed internally");
                                Response::err(id, "internal error: see the server log")
                            });
                        let _ = tx.send((response, Some(permit)));
                    }
                    .in_current_span(),
                );
            }
            Err(response) => {
                warn!(error = response.error.as_deref(), "bad control request");
                let _ = tx.send((response, Some(permit)));
            }
        }
        // Forget requests that are done.
        while requests.try_join_next().is_some() {}
        while watches.try_join_next().is_some() {}
    }
    // The client may have half-closed after its requests (a script): answer what is in flight,
    // unless nobody reads any more.
    tokio::select! {
        () = async {
            while requests.join_next().await.is_some() {}
            while watches.join_next().await.is_some() {}
        } => {}
        () = tx.closed() => {
            // Nobody reads any more. A request in flight still runs to its end, unanswered: a
            // kill or a reload cut halfway would be worse than an answer nobody reads.
            requests.detach_all();
            watches.abort_all();
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// A watch's events, each ready to send.
type Watched = futures::stream::BoxStream<'static, Box<RawValue>>;

/// This node's lifecycle events, each stamped with its time.
async fn tree_events(tree: &SupervisorHandle) -> Result<Watched, String> {
    let events = tree
        .subscribe()
        .await
        .map_err(|e| format!("cannot watch: {e}"))?;
    info!("watch started");
    let each = futures::stream::unfold(events, |mut events| async move {
        events
            .recv()
            .await
            .map(|event| (stamped(&event).ok(), events))
    });
    Ok(each.filter_map(std::future::ready).boxed())
}

/// Every node's events, tagged with the node.
fn fleet_events(reach: &Reach) -> Result<Watched, String> {
    let events = fleet::watch(reach).map_err(|e| format!("cannot watch the fleet: {e}"))?;
    info!("fleet watch started");
    let each = futures::stream::unfold(events, |mut events| async move {
        events.recv().await.map(|event| (raw(&event).ok(), events))
    });
    Ok(each.filter_map(std::future::ready).boxed())
}

/// Answers watch request `id` with each of `events` until the client goes; the watch holds
/// its `permit` (a place among the client's requests in flight) as long as it lasts.
async fn relay(
    id: u64,
    tx: &mpsc::UnboundedSender<(Response, Option<OwnedSemaphorePermit>)>,
    permit: OwnedSemaphorePermit,
    events: Result<Watched, String>,
) {
    let mut events = match events {
        Ok(events) => events,
        Err(e) => {
            let _ = tx.send((Response::err(id, e), Some(permit)));
            return;
        }
    };
    while let Some(event) = events.next().await {
        if tx.send((Response::ok(id, event), None)).is_err() {
            break;
        }
    }
    drop(permit);
}

/// Parses one request line, or explains what is wrong with it.
pub fn parse_request(text: &str) -> Result<Request, Response> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Response::err(0, format!("malformed request (not JSON): {e}")))?;
    let id = value.get("id").and_then(Value::as_u64).unwrap_or(0);
    let Some(cmd) = value.get("cmd") else {
        return Err(Response::err(
            id,
            format!(
                "malformed request: no \"cmd\" field; expected one of {}",
                COMMANDS.join(", ")
            ),
        ));
    };
    let Some(cmd) = cmd.as_str().map(str::to_string) else {
        return Err(Response::err(
            id,
            "malformed request: \"cmd\" must be a string",
        ));
    };
    if !COMMANDS.contains(&cmd.as_str()) {
        return Err(Response::err(
            id,
            format!(
                "unknown command {cmd:?}: expected one of {}",
                COMMANDS.join(", ")
            ),
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| Response::err(id, format!("malformed {cmd:?} request: {e}")))
}

fn parse_grace(text: Option<&str>, default: Duration) -> Result<Duration, String> {
    match text {
        None => Ok(default),
        Some(text) => grace_from_str(text),
    }
}

/// Parses a kill grace (humantime, at most [`MAX_GRACE`]), with an error fit for a person.
pub fn grace_from_str(text: &str) -> Result<Duration, String> {
    let grace = humantime::parse_duration(text)
        .map_err(|e| format!("invalid grace {text:?}: {e} (use e.g. \"5s\", \"500ms\")"))?;
    if grace > MAX_GRACE {
        return Err(format!(
            "grace {text:?} is too long: at most {}",
            humantime::format_duration(MAX_GRACE)
        ));
    }
    Ok(grace)
}

/// A kill's reports as a response's result.
fn reports(answer: Result<Vec<KillReport>, HandleError>) -> Result<Box<RawValue>, String> {
    raw(&answer.map_err(|e| e.to_string())?)
}

/// Records each kill of a set asked for by the ctl process `caller`, before the reply.
async fn audit_reports(
    audit: Option<&Audit>,
    caller: &Caller,
    answer: &Result<Vec<KillReport>, HandleError>,
    reason: &str,
) {
    let (Some(audit), Ok(reports)) = (audit, answer) else {
        return;
    };
    let records = reports
        .iter()
        .map(|report| AuditRecord::kill(caller.initiator.clone(), report, reason));
    audit.write_all(records).await;
}

/// Fills in how many live processes each session has (one scan of /proc, off the runtime).
async fn with_process_counts(mut all: Vec<ConnectionInfo>) -> Vec<ConnectionInfo> {
    let counts = tokio::task::spawn_blocking(crate::session::containment::count_by_session)
        .await
        .unwrap_or_default();
    for session in all.iter_mut().flat_map(|c| c.sessions.iter_mut()) {
        session.processes = Some(counts.get(&session.id.to_string()).copied().unwrap_or(0));
    }
    all
}

/// The live connection or session `text` names, asked of the supervisor (a full ID costs a
/// map lookup, not a listing).
async fn resolve_live(tree: &SupervisorHandle, text: &str) -> Result<Target, String> {
    let found = tree.resolve(text).await.map_err(|e| e.to_string())?;
    explain(text, found)
}

/// What an operator is told of an ID text the tree resolved (`SupervisorMsg::Resolve`, the one
/// prefix resolution): the target, or why there is none.
pub fn explain(text: &str, found: PrefixMatch<Target>) -> Result<Target, String> {
    match found {
        PrefixMatch::One(target) => Ok(target),
        PrefixMatch::None => Err(format!(
            "no live connection or session has an ID starting with {text:?}"
        )),
        PrefixMatch::Ambiguous(targets) => {
            let names: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
            Err(format!(
                "{text:?} is ambiguous: it starts {}; type more of the ID",
                names.join(", ")
            ))
        }
    }
}

/// What a kill of `text` would end, killing nothing: the connection it names, or for a
/// session its connection with only that session listed.
async fn would_kill(tree: &SupervisorHandle, text: &str) -> Result<ConnectionInfo, String> {
    let target = resolve_live(tree, text).await?;
    let mut info = connection_of(tree, target).await?;
    if let Target::Session(session) = target {
        info.sessions.retain(|s| s.id == session);
    }
    Ok(info)
}

/// The live connection `target` is or holds, with all its sessions.
async fn connection_of(tree: &SupervisorHandle, target: Target) -> Result<ConnectionInfo, String> {
    let all = tree.list().await.map_err(|e| e.to_string())?;
    all.into_iter()
        .find(|c| match target {
            Target::Connection(conn) => c.id == conn,
            Target::Session(session) => c.sessions.iter().any(|s| s.id == session),
        })
        .ok_or_else(|| format!("{target} ended meanwhile"))
}

/// Kills the connection or session that `text` names (a full ID or a unique prefix) and waits
/// for its report.
async fn kill_text(
    tree: &SupervisorHandle,
    text: &str,
    reason: &str,
    grace: Duration,
    by: &Option<String>,
    audit: Option<(&Audit, Initiator)>,
) -> Result<Box<RawValue>, String> {
    // A full ID is most often a connection's: it is tried as one straight away, which saves a
    // round trip to the supervisor; a session's ID and anything else are resolved first.
    let tried = match text.parse::<ConnId>() {
        Ok(conn) => {
            let target = Target::Connection(conn);
            match tree.kill(target, reason, grace, by.clone()).await {
                Err(HandleError::NotFound(_)) => None,
                answer => Some((target, answer)),
            }
        }
        Err(_) => None,
    };
    let (target, answer) = match tried {
        Some(tried) => tried,
        None => {
            let target = resolve_live(tree, text).await?;
            (target, tree.kill(target, reason, grace, by.clone()).await)
        }
    };
    match answer {
        Ok(report) => {
            info!(%target, forced = report.forced, elapsed_ms = report.elapsed.as_secs_f64() * 1e3, "audit: kill done");
            // The record is in the file before the reply goes out.
            if let Some((audit, caller)) = audit {
                audit
                    .write(AuditRecord::kill(caller, &report, reason))
                    .await;
            }
            raw(&report)
        }
        Err(HandleError::NotFound(target)) => {
            Err(format!("{target} ended before the kill reached it"))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The longest notice an announced kill may give.
pub const MAX_NOTICE: Duration = Duration::from_secs(24 * 3600);

/// Parses a kill's notice (`--warn`, humantime, at most [`MAX_NOTICE`]).
pub fn notice_from_str(text: &str) -> Result<Duration, String> {
    let notice = humantime::parse_duration(text)
        .map_err(|e| format!("invalid warning time {text:?}: {e} (use e.g. \"60s\", \"5m\")"))?;
    if notice > MAX_NOTICE {
        return Err(format!(
            "warning time {text:?} is too long: at most {}",
            humantime::format_duration(MAX_NOTICE)
        ));
    }
    Ok(notice)
}

/// The live connection `text` names (a session's ID is refused: an announced kill, and its
/// cancel, are for connections).
async fn connection_named(tree: &SupervisorHandle, text: &str) -> Result<ConnId, String> {
    match resolve_live(tree, text).await? {
        Target::Connection(conn) => Ok(conn),
        Target::Session(session) => Err(format!(
            "{text:?} names session {session}: a warning announces the close of a connection; give its connection's ID"
        )),
    }
}

/// Whether `text` is a whole connection or session ID (not a prefix).
fn is_full_id(text: &str) -> bool {
    text.parse::<ConnId>().is_ok() || text.parse::<sshvisor_actors::SessionId>().is_ok()
}

/// Whether a local kill failed because no live ID here matched (so another node may hold it).
fn is_not_here(error: &str) -> bool {
    error.starts_with("no live connection or session has an ID")
}

/// Whether a lookup failed because the text matched several IDs here.
fn is_ambiguous(error: &str) -> bool {
    error.contains(" is ambiguous: ")
}

/// `result` as JSON, for a response.
fn raw(result: &impl Serialize) -> Result<Box<RawValue>, String> {
    serde_json::value::to_raw_value(result)
        .map_err(|e| format!("internal error: cannot encode the result: {e}"))
}

/// A local `watch` event with the time it was heard (`at`, RFC 3339 UTC), as `watch --fleet`
/// tags its events: a log read later, or a JSON consumer, needs the event's time, not the time
/// it was printed.
fn stamped(event: &sshvisor_actors::Event) -> Result<Box<RawValue>, String> {
    let mut value = serde_json::to_value(event)
        .map_err(|e| format!("internal error: cannot encode the event: {e}"))?;
    if let Some(map) = value.as_object_mut() {
        map.insert(
            "at".into(),
            humantime::format_rfc3339_millis(std::time::SystemTime::now())
                .to_string()
                .into(),
        );
    }
    raw(&value)
}

async fn execute(request: Request, reach: &Reach, caller: &Caller) -> Response {
    let id = request.id;
    let result = run(request.command, reach, caller).await;
    match result {
        Ok(value) => Response::ok(id, value),
        Err(error) => Response::err(id, error),
    }
}

async fn run(command: Command, reach: &Reach, caller: &Caller) -> Result<Box<RawValue>, String> {
    let by = Some(KilledBy::ctl(caller.uid));
    let audit = reach.server.audit();
    let tree = &reach.tree;
    let kill_grace = reach.server.kill_grace();
    let select = |filter| async { tree.select(filter).await.map_err(|e| e.to_string()) };
    match command {
        Command::Ls {
            filter,
            fleet: true,
            timeout,
        } => fleet::list(reach, filter, fleet::node_timeout(timeout.as_deref())?).await,
        Command::Ls { filter, .. } => raw(&with_process_counts(select(filter).await?).await),
        Command::KillWhere {
            filter,
            reason,
            grace,
            dry_run: false,
            fleet: true,
            warn: Some(notice),
            timeout,
        } => {
            let grace = parse_grace(grace.as_deref(), kill_grace)?;
            let notice = notice_from_str(&notice)?;
            let within = fleet::node_timeout(timeout.as_deref())?;
            let reason = reason.unwrap_or_else(|| "killed by the operator".into());
            info!(?filter, reason = %reason, notice = %humantime::format_duration(notice), by = by.as_deref(), "audit: announced fleet kill by filter requested");
            fleet::kill_warned(reach, filter, &reason, notice, grace, by, within).await
        }
        Command::KillWhere {
            filter,
            reason,
            grace,
            dry_run: false,
            fleet: false,
            warn: Some(notice),
            ..
        } => {
            let grace = parse_grace(grace.as_deref(), kill_grace)?;
            let notice = notice_from_str(&notice)?;
            let reason = reason.unwrap_or_else(|| "killed by the operator".into());
            info!(?filter, reason = %reason, notice = %humantime::format_duration(notice), by = by.as_deref(), "audit: announced kill by filter requested");
            let which = sshvisor_actors::Selection::Where(filter);
            let answer = tree
                .kill_warned(which, reason.clone(), notice, grace, by)
                .await;
            audit_reports(audit, caller, &answer, &reason).await;
            reports(answer)
        }
        Command::KillWhere {
            filter,
            reason,
            grace,
            dry_run,
            fleet: true,
            timeout,
            ..
        } => {
            let grace = parse_grace(grace.as_deref(), kill_grace)?;
            let within = fleet::node_timeout(timeout.as_deref())?;
            let reason = reason.unwrap_or_else(|| "killed by the operator".into());
            if !dry_run {
                info!(?filter, reason = %reason, by = by.as_deref(), "audit: fleet kill by filter requested");
            }
            fleet::kill_where(reach, filter, &reason, grace, by, dry_run, within).await
        }
        Command::KillWhere {
            filter,
            reason,
            grace,
            dry_run,
            ..
        } => {
            let grace = parse_grace(grace.as_deref(), kill_grace)?;
            if dry_run {
                return raw(&select(filter).await?);
            }
            let reason = reason.unwrap_or_else(|| "killed by the operator".into());
            info!(?filter, reason = %reason, by = by.as_deref(), "audit: kill by filter requested");
            let answer = tree.kill_where(filter, reason.clone(), grace, by).await;
            audit_reports(audit, caller, &answer, &reason).await;
            reports(answer)
        }
        Command::Show { target } => {
            let info = connection_of(tree, resolve_live(tree, &target).await?).await?;
            raw(&with_process_counts(vec![info]).await.pop())
        }
        Command::Kill {
            target,
            dry_run: true,
            timeout,
            ..
        } => match would_kill(tree, target.trim()).await {
            Err(e) if fleet::in_a_fleet(reach) && !is_ambiguous(&e) => {
                fleet::resolve(
                    reach,
                    target.trim(),
                    fleet::node_timeout(timeout.as_deref())?,
                )
                .await
            }
            found => raw(&found?),
        },
        Command::Kill {
            target,
            reason,
            grace,
            dry_run: false,
            warn: Some(notice),
            ..
        } => {
            let grace = parse_grace(grace.as_deref(), kill_grace)?;
            let notice = notice_from_str(&notice)?;
            let reason = reason.unwrap_or_else(|| "killed by the operator".into());
            let conn = connection_named(tree, target.trim()).await?;
            info!(%conn, reason = %reason, notice = %humantime::format_duration(notice), by = by.as_deref(), "audit: announced kill requested");
            let which = sshvisor_actors::Selection::One(conn);
            let answer = tree
                .kill_warned(which, reason.clone(), notice, grace, by)
                .await;
            audit_reports(audit, caller, &answer, &reason).await;
            let mut done = answer.map_err(|e| e.to_string())?;
            match done.pop() {
                Some(report) => raw(&report),
                None => Err(format!(
                    "connection {conn}: the announced kill was cancelled, or the connection ended before it"
                )),
            }
        }
        Command::Cancel { target } => {
            let conn = connection_named(tree, target.trim()).await?;
            if tree
                .cancel_kill(conn, by.clone())
                .await
                .map_err(|e| e.to_string())?
            {
                info!(%conn, by = by.as_deref(), "audit: announced kill cancelled");
                if let Some(audit) = audit {
                    let by = caller.initiator.clone();
                    audit.write(AuditRecord::KillCancelled { by, conn }).await;
                }
                raw(&json!({ "cancelled": conn }))
            } else {
                Err(format!("connection {conn} has no announced kill to cancel"))
            }
        }
        Command::Kill {
            target,
            reason,
            grace,
            dry_run: false,
            timeout,
            ..
        } => {
            let grace = parse_grace(grace.as_deref(), kill_grace)?;
            let within = fleet::node_timeout(timeout.as_deref())?;
            let reason = reason.unwrap_or_else(|| "killed by the operator".into());
            info!(target = ?target.trim(), reason = ?reason, by = by.as_deref(), "audit: kill requested");
            let text = target.trim();
            let result = if fleet::in_a_fleet(reach) && !is_full_id(text) {
                // A prefix must be unique in the whole fleet.
                fleet::kill(reach, text, &reason, grace, by, within).await
            } else {
                let audited = audit
                    .filter(|a| a.is_heard())
                    .map(|a| (a, caller.initiator.clone()));
                match kill_text(tree, text, &reason, grace, &by, audited).await {
                    Err(e) if fleet::in_a_fleet(reach) && is_not_here(&e) => {
                        fleet::kill(reach, text, &reason, grace, by, within).await
                    }
                    result => result,
                }
            };
            if let Err(e) = &result {
                info!(target = ?target.trim(), error = %e, "audit: kill not done");
                if let Some(audit) = audit {
                    audit.record(AuditRecord::KillFailed {
                        by: caller.initiator.clone(),
                        target: target.trim().to_string(),
                        error: e.clone(),
                    });
                }
            }
            result
        }
        Command::Watch { .. } => Err("watch streams on its own connection".into()),
        Command::Nodes => fleet::nodes(reach),
        Command::Stats => {
            let tree = tree.stats().await.map_err(|e| e.to_string())?;
            let penalties = reach
                .server
                .penalties()
                .map(|p| p.stats(std::time::Instant::now()));
            raw(&json!({ "tree": tree, "process": process_stats(), "penalties": penalties }))
        }
        Command::Penalties { clear } => penalties(reach, clear.as_deref(), by.as_deref()),
        Command::Reload => {
            info!(by = by.as_deref(), "audit: reload requested");
            let result = reach.server.reload().await;
            if let Some(audit) = audit {
                audit.record(AuditRecord::reload(by.as_deref().unwrap_or("ctl"), &result));
            }
            match result {
                Ok(changes) => {
                    info!(by = by.as_deref(), changes = %changes, "audit: reload done");
                    raw(&json!({ "changes": changes }))
                }
                Err(why) => {
                    warn!(by = by.as_deref(), error = %why, "audit: reload refused; the old configuration stays in force");
                    Err(why)
                }
            }
        }
        Command::Drain { grace } => {
            let grace = parse_grace(grace.as_deref(), kill_grace)?;
            info!(by = by.as_deref(), "audit: drain requested");
            let answer = reach.server.drain(grace, by).await;
            audit_reports(audit, caller, &answer, "drain").await;
            reports(answer)
        }
        Command::KillAll { reason, grace } => {
            let grace = parse_grace(grace.as_deref(), kill_grace)?;
            let reason = reason.unwrap_or_else(|| "killed by the operator".into());
            info!(reason = %reason, by = by.as_deref(), "audit: kill all requested");
            let answer = tree.kill_all(reason.clone(), grace, by).await;
            audit_reports(audit, caller, &answer, &reason).await;
            reports(answer)
        }
    }
}

/// `penalties`: the list, or what a clear removed.
fn penalties(
    reach: &Reach,
    clear: Option<&str>,
    by: Option<&str>,
) -> Result<Box<RawValue>, String> {
    let table = reach
        .server
        .penalties()
        .ok_or("this server has no SSH listener, so no penalties")?;
    let now = std::time::Instant::now();
    let Some(what) = clear.map(str::trim) else {
        return raw(&table.list(now));
    };
    let net = match what {
        "all" => None,
        text => Some(text.parse::<PeerNet>().map_err(|e| {
            format!("cannot clear {e}; give an address, a network (10.0.0.0/8) or \"all\"")
        })?),
    };
    let removed = table.clear(net.as_ref(), now);
    info!(clear = what, ?removed, by, "audit: penalties cleared");
    raw(&json!({ "removed": removed }))
}

/// This process's memory, descriptors and threads, read from /proc (`None` where unreadable)
/// through files kept open since start: it needs no descriptor, so it answers when the process
/// has none left.
pub fn process_stats() -> Value {
    reserve::process_stats()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_are_explained() {
        let r = parse_request(r#"{"id":7,"cmd":"kill","target":"ab","grace":"1s"}"#).unwrap();
        assert_eq!(r.id, 7);
        assert!(matches!(r.command, Command::Kill { ref target, .. } if target == "ab"));
        let e = parse_request("{nope").unwrap_err();
        assert!(e.error.unwrap().contains("not JSON"));
        let e = parse_request(r#"{"id":3,"cmd":"reboot"}"#).unwrap_err();
        assert_eq!(e.id, 3);
        assert!(e.error.unwrap().contains("unknown command \"reboot\""));
        let e = parse_request(r#"{"id":4,"cmd":"show"}"#).unwrap_err();
        assert!(e.error.unwrap().contains("target"));
        let e = parse_request(r#"{"id":5}"#).unwrap_err();
        assert!(e.error.unwrap().contains("no \"cmd\""));
        let ok = r#"{"id":6,"cmd":"kill_where","filter":{"peer":{"addr":"10.0.0.0","prefix":8}}}"#;
        assert!(parse_request(ok).is_ok());
        let e = parse_request(&ok.replace(":8}", ":200}")).unwrap_err();
        assert!(
            e.error
                .as_deref()
                .unwrap()
                .contains("must be 0 to 32, not 200"),
            "{e:?}"
        );
    }

    #[test]
    fn grace_is_humantime() {
        let d = Duration::from_secs(5);
        assert_eq!(parse_grace(None, d).unwrap(), d);
        assert_eq!(
            parse_grace(Some("250ms"), d).unwrap(),
            Duration::from_millis(250)
        );
        assert!(parse_grace(Some("soon"), d)
            .unwrap_err()
            .contains("invalid grace"));
    }
}
