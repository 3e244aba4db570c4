//! The audit log: what a security team asks about, one JSON object a line (`serve
//! --audit-log FILE`, config `audit_log`), and the same records as typed values for an
//! embedding program ([`Audit::subscribe`]).
//!
//! Records ([`AuditRecord`]): logins accepted and refused, sessions opened and closed, kills
//! (who asked, the resolved IDs, the report), limit refusals, connections ended, reloads. Each
//! line is an [`AuditEntry`]: the record with its time (`at`, RFC 3339 UTC).
//!
//! Writing: one task owns the file and writes a line at a time, flushed per line (to the
//! kernel; no fsync: a crash of the machine may lose the last lines, a crash of the server does
//! not). Records reach it over a bounded channel. A record that finds the channel full is
//! dropped, counted, and the count logged; a kill's record never is: [`Audit::write`] waits for
//! room and for the line to be written, so a kill's reply goes out after its record is in the
//! file. [`Audit::reopen`] reopens the file (reload, SIGHUP) so logrotate can move it away.
//!
//! No secrets: a key appears as its type and SHA-256 fingerprint only; no cookie, no
//! environment, no session data.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sshvisor_actors::report::{
    rfc3339, CertificateInfo, DisconnectCause, KillReport, SessionExit, SessionKind,
};
use sshvisor_actors::{ConnId, Event, SessionId, SupervisorHandle, Target};
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::warn;

/// Records waiting for the writer; past this, records other than kills are dropped (counted).
const QUEUE: usize = 4096;

/// Records kept for a slow subscriber before it misses some (it is told how many).
const SUBSCRIBER_BACKLOG: usize = 1024;

/// One line of the audit log: a record and when it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When it happened (RFC 3339, UTC, milliseconds).
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
    /// What happened.
    #[serde(flatten)]
    pub record: AuditRecord,
}

/// Who asked for a kill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Initiator {
    /// A process on the control socket, as SO_PEERCRED names it.
    Ctl {
        /// Its user ID.
        uid: u32,
        /// Its process ID, when the kernel gave it.
        pid: Option<i32>,
        /// Its executable (`/proc/PID/exe`), when readable.
        exe: Option<PathBuf>,
    },
    /// Another node of the fleet.
    Fleet {
        /// Who asked there, as that node names it (`uid 0 via ctl on node c`).
        origin: String,
    },
    /// The embedding program, by the tag it gave (`SupervisorHandle::kill`'s `by`).
    Embedder {
        /// The tag, if any.
        tag: Option<String>,
    },
    /// A policy of the server (`login_grace`, `idle`, `max_lifetime`, `keepalive`, ...).
    Policy {
        /// Its name, as its configuration key says it.
        name: String,
    },
}

impl Initiator {
    /// The control socket's peer `uid` / `pid`, with its executable read from /proc.
    pub fn ctl(uid: u32, pid: Option<i32>) -> Self {
        let exe = pid.and_then(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok());
        Initiator::Ctl { uid, pid, exe }
    }

    /// Who a kill's `by` tag names, as the tree passes it on: the policies' names, the
    /// control socket's `uid N via ctl` (a fleet's ends in `on node X`), else an embedder.
    pub fn from_tag(by: Option<&str>) -> Self {
        match by {
            Some(
                name @ ("login_grace" | "idle" | "session_idle" | "max_lifetime" | "keepalive"
                | "drain" | "shutdown"),
            ) => Initiator::Policy { name: name.into() },
            Some(origin) if origin.contains(" via ctl on node ") => Initiator::Fleet {
                origin: origin.into(),
            },
            tag => Initiator::Embedder {
                tag: tag.map(str::to_string),
            },
        }
    }

    /// Whether this kill's own record comes from where it was asked for (the control socket
    /// and the fleet agent write it with the report), not from the connection's end.
    pub fn writes_its_own_record(by: Option<&str>) -> bool {
        by.is_some_and(|by| by.starts_with("uid ") && by.contains(" via ctl"))
    }
}

/// An event a security team asks about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditRecord {
    /// A client proved it holds a key, and the key may log in.
    LoginAccepted {
        /// The user name.
        user: String,
        /// The key's type (`ssh-ed25519`, ...).
        key_type: String,
        /// Its SHA-256 fingerprint as OpenSSH prints it (`SHA256:...`).
        fingerprint: String,
        /// The certificate it came in, if it did.
        certificate: Option<CertificateInfo>,
        /// The client's address.
        peer: SocketAddr,
    },
    /// A key was refused: not known here, or known and refused by a restriction.
    LoginRefused {
        /// The user name.
        user: String,
        /// The key's type.
        key_type: String,
        /// Its SHA-256 fingerprint.
        fingerprint: String,
        /// The client's address.
        peer: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A session started its work.
    SessionOpened {
        /// The connection.
        conn: ConnId,
        /// The session.
        session: SessionId,
        /// The user.
        user: Option<String>,
        /// What it runs.
        kind: SessionKind,
        /// The command or subsystem.
        command: Option<String>,
        /// Whether it has a terminal.
        pty: bool,
    },
    /// A session ended.
    SessionClosed {
        /// The connection.
        conn: ConnId,
        /// The session.
        session: SessionId,
        /// The user.
        user: Option<String>,
        /// How its work ended.
        exit: SessionExit,
        /// The kill reason, when it was killed.
        killed: Option<String>,
    },
    /// A kill: who asked, what it ended, and its report.
    Kill {
        /// Who asked.
        by: Initiator,
        /// The connection or session, by its full ID.
        target: Target,
        /// The connection's user, when known.
        user: Option<String>,
        /// The connection's client address, when known.
        peer: Option<SocketAddr>,
        /// The reason given (shown to the client).
        reason: String,
        /// Sessions closed on the way (unknown for a policy's kill).
        sessions_closed: Option<usize>,
        /// From the request to the end, in milliseconds (unknown for a policy's kill).
        elapsed_ms: Option<f64>,
        /// Whether the grace ran out and the end was forced (unknown for a policy's kill).
        forced: Option<bool>,
    },
    /// A kill that could not be carried out.
    KillFailed {
        /// Who asked.
        by: Initiator,
        /// What was asked for, as typed.
        target: String,
        /// Why it failed.
        error: String,
    },
    /// A connection was refused by a limit.
    LimitRefused {
        /// The client's address.
        peer: SocketAddr,
        /// The limit and its value.
        reason: String,
    },
    /// A connection ended.
    ConnectionClosed {
        /// The connection.
        conn: ConnId,
        /// The user, if it logged in.
        user: Option<String>,
        /// The client's address.
        peer: Option<SocketAddr>,
        /// `by_client`, `killed` or `error`.
        cause: String,
        /// The kill's reason or the error.
        reason: Option<String>,
    },
    /// The configuration was reloaded, or a reload refused.
    Reload {
        /// Who asked (`uid N via ctl`, `SIGHUP`).
        by: String,
        /// What changed, when it was applied.
        changes: Option<String>,
        /// Why it was refused, when it was.
        error: Option<String>,
    },
}

impl AuditRecord {
    /// The kill record of a report.
    pub fn kill(
        by: Initiator,
        report: &KillReport,
        reason: &str,
        user: Option<String>,
        peer: Option<SocketAddr>,
    ) -> Self {
        AuditRecord::Kill {
            by,
            target: report.target,
            user,
            peer,
            reason: reason.to_string(),
            sessions_closed: Some(report.sessions_closed),
            elapsed_ms: Some(report.elapsed.as_secs_f64() * 1e3),
            forced: Some(report.forced),
        }
    }
}

impl AuditRecord {
    /// The record of a reload that `by` asked for.
    pub fn reload(by: &str, result: &Result<String, String>) -> Self {
        AuditRecord::Reload {
            by: by.to_string(),
            changes: result.as_ref().ok().cloned(),
            error: result.as_ref().err().cloned(),
        }
    }
}

/// Turns the tree's events into records: sessions, limit refusals, connections ended, and the
/// kills of policies and of the embedding program (the control socket and the fleet agent
/// write their kills' records themselves, with the report). Runs until the tree stops.
pub async fn record_events(
    audit: Audit,
    tree: SupervisorHandle,
    mut events: mpsc::UnboundedReceiver<Event>,
) {
    // Who each live connection is, for the records of its sessions and its end.
    let mut known: HashMap<ConnId, (SocketAddr, Option<String>)> = HashMap::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Connected { conn, peer } => {
                known.insert(conn, (peer, None));
            }
            Event::Authenticated { conn, user, .. } => {
                if let Some(entry) = known.get_mut(&conn) {
                    entry.1 = Some(user);
                }
            }
            Event::SessionOpened { .. } => {}
            Event::SessionStarted {
                conn,
                session,
                kind,
                command,
            } => {
                let pty = match audit.is_heard() {
                    true => has_pty(&tree, conn, session).await,
                    false => false,
                };
                audit.record(AuditRecord::SessionOpened {
                    conn,
                    session,
                    user: known.get(&conn).and_then(|k| k.1.clone()),
                    kind,
                    command,
                    pty,
                });
            }
            Event::SessionClosed {
                conn,
                session,
                exit,
                killed,
            } => audit.record(AuditRecord::SessionClosed {
                conn,
                session,
                user: known.get(&conn).and_then(|k| k.1.clone()),
                exit,
                killed,
            }),
            Event::Refused { peer, reason } => {
                audit.record(AuditRecord::LimitRefused { peer, reason })
            }
            Event::Disconnected { conn, cause, .. } => {
                let (peer, user) = known
                    .remove(&conn)
                    .map_or((None, None), |(peer, user)| (Some(peer), user));
                let (name, reason) = match &cause {
                    DisconnectCause::ByClient => ("by_client", None),
                    DisconnectCause::Killed { reason, by } => {
                        if !Initiator::writes_its_own_record(by.as_deref()) {
                            audit.record(AuditRecord::Kill {
                                by: Initiator::from_tag(by.as_deref()),
                                target: Target::Connection(conn),
                                user: user.clone(),
                                peer,
                                reason: reason.clone(),
                                sessions_closed: None,
                                elapsed_ms: None,
                                forced: None,
                            });
                        }
                        ("killed", Some(reason.clone()))
                    }
                    DisconnectCause::Error { message } => ("error", Some(message.clone())),
                };
                audit.record(AuditRecord::ConnectionClosed {
                    conn,
                    user,
                    peer,
                    cause: name.into(),
                    reason,
                });
            }
        }
    }
}

/// Whether the session has a terminal (asked of the tree: the start event does not say).
async fn has_pty(tree: &SupervisorHandle, conn: ConnId, session: SessionId) -> bool {
    tree.get(conn).await.is_ok_and(|info| {
        info.sessions
            .iter()
            .any(|s| s.id == session && s.pty.is_some())
    })
}

/// What the writer task is asked to do.
enum Job {
    /// Write this line; tell `done` once written.
    Line(String, Option<oneshot::Sender<()>>),
    /// Reopen the file; tell `done` how it went.
    Reopen(oneshot::Sender<Result<(), String>>),
}

/// The audit log's door: cheap to clone; records go to the file (if any) and to subscribers.
#[derive(Clone)]
pub struct Audit {
    /// The writer's queue; `None` when there is no file.
    file: Option<mpsc::Sender<Job>>,
    /// Subscribers' stream.
    stream: broadcast::Sender<AuditEntry>,
    /// Records dropped because the queue was full.
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("file", &self.file.is_some())
            .finish()
    }
}

/// The audit file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the audit log {path}: {source}; check the directory exists and is writable by the server's user")]
pub struct AuditError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub source: std::io::Error,
}

impl Audit {
    /// An audit with no file: records go to subscribers only.
    pub fn stream_only() -> Self {
        let (stream, _) = broadcast::channel(SUBSCRIBER_BACKLOG);
        Self {
            file: None,
            stream,
            dropped: Arc::default(),
        }
    }

    /// Appends to `path` (created with mode 0600), from a task of its own. Call inside a
    /// tokio runtime.
    pub async fn open(path: &Path) -> Result<Self, AuditError> {
        let file = open_file(path).await.map_err(|source| AuditError {
            path: path.to_path_buf(),
            source,
        })?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_lines(path.to_path_buf(), file, rx));
        Ok(Self {
            file: Some(tx),
            ..Self::stream_only()
        })
    }

    /// Whether anyone hears the records (a file or a subscriber): records that cost a lookup
    /// are built only then.
    pub fn is_heard(&self) -> bool {
        self.file.is_some() || self.stream.receiver_count() > 0
    }

    /// Every record from now on. A subscriber that falls more than 1024 records behind is
    /// told how many it missed (`RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<AuditEntry> {
        self.stream.subscribe()
    }

    /// Records `record` without waiting: if the writer's queue is full it is dropped, counted
    /// and the count logged.
    pub fn record(&self, record: AuditRecord) {
        let Some((line, tx)) = self.publish(record) else {
            return;
        };
        if tx.try_send(Job::Line(line, None)).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            warn!(
                dropped,
                "audit log: the writer is behind; a record was dropped"
            );
        }
    }

    /// Records `record` and returns once it is written to the file (a kill's record, before
    /// its reply): never dropped.
    pub async fn write(&self, record: AuditRecord) {
        let Some((line, tx)) = self.publish(record) else {
            return;
        };
        let (done, written) = oneshot::channel();
        if tx.send(Job::Line(line, Some(done))).await.is_ok() {
            let _ = written.await;
        }
    }

    /// Reopens the file (after logrotate moved it): the next line goes to a new file at the
    /// same path.
    pub async fn reopen(&self) -> Result<(), String> {
        let Some(tx) = &self.file else {
            return Ok(());
        };
        let (done, result) = oneshot::channel();
        tx.send(Job::Reopen(done))
            .await
            .map_err(|_| "the audit log's writer has stopped".to_string())?;
        result
            .await
            .map_err(|_| "the audit log's writer has stopped".to_string())?
    }

    /// Sends the entry to subscribers; the line and the writer's queue if there is a file.
    fn publish(&self, record: AuditRecord) -> Option<(String, &mpsc::Sender<Job>)> {
        let entry = AuditEntry {
            at: SystemTime::now(),
            record,
        };
        let line = self
            .file
            .as_ref()
            .map(|tx| (serde_json::to_string(&entry), tx));
        let _ = self.stream.send(entry);
        match line? {
            (Ok(line), tx) => Some((line, tx)),
            (Err(e), _) => {
                warn!(error = %e, "audit log: a record could not be encoded");
                None
            }
        }
    }
}

async fn open_file(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .await
}

/// The writer: a line at a time, flushed each.
async fn write_lines(path: PathBuf, mut file: tokio::fs::File, mut jobs: mpsc::Receiver<Job>) {
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Line(mut line, done) => {
                line.push('\n');
                let written = async {
                    file.write_all(line.as_bytes()).await?;
                    file.flush().await
                }
                .await;
                if let Err(e) = written {
                    warn!(path = %path.display(), error = %e, "audit log: a record could not be written");
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            Job::Reopen(done) => {
                let result = match open_file(&path).await {
                    Ok(new) => {
                        file = new;
                        Ok(())
                    }
                    Err(e) => Err(format!(
                        "cannot reopen the audit log {}: {e}; records still go to the old file",
                        path.display()
                    )),
                };
                let _ = done.send(result);
            }
        }
    }
}
