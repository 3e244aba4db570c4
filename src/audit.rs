//! The audit log: what a security team asks about, one JSON object a line (`serve
//! --audit-log FILE`, config `audit_log`), and the same records as typed values for an
//! embedding program ([`Audit::subscribe`]).
//!
//! Records ([`AuditRecord`]): logins accepted and refused, sessions opened and closed, kills
//! (who asked, the resolved IDs, the report), limit refusals, connections ended, reloads. Each
//! line is an [`AuditEntry`]: the record with its time (`at`, RFC 3339 UTC).
//!
//! Writing: most records are queued (bounded) for a thread of the log's own, which writes them
//! in one `write(2)` to the kernel 5 ms after the first of a burst came (no fsync: a crash of
//! the machine may lose the last lines, a crash of the server the last 5 ms of them). A record
//! that finds the queue full is dropped, counted, and the count logged. A kill's record never
//! is: [`Audit::write`] writes the queue and the record itself, at once, in the caller's task,
//! so a kill's reply goes out after its record is in the file, and the file keeps the order
//! records were made in. A clean stop writes what is still queued ([`Audit::flush`]).
//! [`Audit::reopen`] reopens the file (reload, SIGHUP) so logrotate can move it away.
//!
//! No secrets: a key appears as its type and SHA-256 fingerprint only; no cookie, no
//! environment, no session data.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sshvisor_actors::killed_by::{self, KilledBy};
use sshvisor_actors::report::{
    rfc3339, CertificateInfo, DisconnectCause, KillReport, SessionExit, SessionKind,
};
use sshvisor_actors::{ConnId, Event, SessionId, Target};
use tokio::sync::{broadcast, mpsc};
use tracing::warn;

/// Lines waiting for the writer thread; past this, records other than kills are dropped
/// (counted).
const QUEUE: usize = 4096;

/// How long the writer thread gathers records before it writes them: the longest a record
/// other than a kill's waits for the file.
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);

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
    /// Who withdrew an announced kill, recorded from [`Event::KillCancelled`]: the embedding
    /// program, by the tag it gave (whatever its text). `None` for `ctl cancel`, which the
    /// control socket records itself, with its caller's credentials.
    pub fn cancelled_by(by: Option<&str>) -> Option<Self> {
        match KilledBy::of(by) {
            KilledBy::Ctl => None,
            _ => Some(Initiator::Embedder {
                tag: by.map(str::to_string),
            }),
        }
    }

    /// The control socket's peer `uid` / `pid`, with its executable read from /proc.
    pub fn ctl(uid: u32, pid: Option<i32>) -> Self {
        let exe = pid.and_then(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok());
        Initiator::Ctl { uid, pid, exe }
    }

    /// Who asked for a kill whose record is written when its connection has ended: a policy's
    /// or the embedding program's. `None` for a kill recorded where it was asked, with its
    /// report (the control socket's and the fleet agent's), and for a refusal after the
    /// login: that is no kill, its `limit_refused` record says it.
    pub fn recorded_at_end(by: Option<&str>) -> Option<Self> {
        match KilledBy::of(by) {
            KilledBy::Ctl | KilledBy::Fleet(_) | KilledBy::Policy(killed_by::MAX_PER_USER) => None,
            KilledBy::Policy(name) => Some(Initiator::Policy { name: name.into() }),
            KilledBy::Embedder(tag) => Some(Initiator::Embedder {
                tag: tag.map(str::to_string),
            }),
        }
    }
}

/// An event a security team asks about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditRecord {
    /// A client proved it holds a key, and the key may log in.
    LoginAccepted {
        /// The connection.
        conn: ConnId,
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
        /// The connection.
        conn: ConnId,
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
        /// Sessions closed on the way.
        sessions_closed: Option<usize>,
        /// From the request (for a policy: the moment it fired) to the end, in milliseconds.
        elapsed_ms: Option<f64>,
        /// Whether the grace ran out and the end was forced.
        forced: Option<bool>,
    },
    /// An announced kill (`ctl kill --warn`) withdrawn before its deadline (`ctl cancel`, or
    /// the embedding program's `cancel_kill`).
    KillCancelled {
        /// Who withdrew it.
        by: Initiator,
        /// The connection it was for.
        conn: ConnId,
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
    /// A connection was refused by a limit: at the door, or after its login (`max_per_user`).
    LimitRefused {
        /// The connection, when it was refused after its login.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conn: Option<ConnId>,
        /// The user it logged in as, when it was refused after its login.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
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
        /// `by_client`, `killed`, `refused` (after its login, by a limit) or `error`.
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
    /// The kill record of a report (whose connection it was comes with the report).
    pub fn kill(by: Initiator, report: &KillReport, reason: &str) -> Self {
        AuditRecord::Kill {
            by,
            target: report.target,
            user: report.user.clone(),
            peer: report.peer,
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
pub async fn record_events(audit: Audit, mut events: mpsc::UnboundedReceiver<Event>) {
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
                pty,
            } => audit.record(AuditRecord::SessionOpened {
                conn,
                session,
                user: known.get(&conn).and_then(|k| k.1.clone()),
                kind,
                command,
                pty,
            }),
            Event::SessionClosed {
                conn,
                session,
                exit,
                killed,
            } => {
                let (peer, user) = known
                    .get(&conn)
                    .map_or((None, None), |(peer, user)| (Some(*peer), user.clone()));
                // The one policy that kills a session rather than its connection.
                // Kills' records are written at once, never dropped (`Audit::write`).
                if let Some(reason) = killed.as_ref().filter(|r| killed_by::is_session_idle(r)) {
                    audit
                        .write(AuditRecord::Kill {
                            by: Initiator::Policy {
                                name: killed_by::SESSION_IDLE.into(),
                            },
                            target: Target::Session(session),
                            user: user.clone(),
                            peer,
                            reason: reason.clone(),
                            sessions_closed: Some(1),
                            elapsed_ms: None,
                            forced: None,
                        })
                        .await;
                }
                audit.record(AuditRecord::SessionClosed {
                    conn,
                    session,
                    user,
                    exit,
                    killed,
                });
            }
            Event::Refused {
                peer,
                reason,
                conn,
                user,
            } => audit.record(AuditRecord::LimitRefused {
                conn,
                user,
                peer,
                reason,
            }),
            Event::Disconnected {
                conn,
                cause,
                figures,
            } => {
                let (peer, user) = known
                    .remove(&conn)
                    .map_or((None, None), |(peer, user)| (Some(peer), user));
                let (name, reason) = match cause {
                    DisconnectCause::ByClient => ("by_client", None),
                    // Its `limit_refused` record says why; no kill record.
                    DisconnectCause::Killed { reason, by }
                        if by.as_deref() == Some(killed_by::MAX_PER_USER) =>
                    {
                        ("refused", Some(reason))
                    }
                    DisconnectCause::Killed { reason, by } => {
                        if let Some(initiator) = Initiator::recorded_at_end(by.as_deref()) {
                            audit
                                .write(AuditRecord::Kill {
                                    by: initiator,
                                    target: Target::Connection(conn),
                                    user: user.clone(),
                                    peer,
                                    reason: reason.clone(),
                                    sessions_closed: Some(figures.sessions_closed),
                                    elapsed_ms: figures.kill_us.map(|us| us as f64 / 1e3),
                                    forced: Some(figures.forced),
                                })
                                .await;
                        }
                        ("killed", Some(reason))
                    }
                    DisconnectCause::Error { message } => ("error", Some(message)),
                };
                audit.record(AuditRecord::ConnectionClosed {
                    conn,
                    user,
                    peer,
                    cause: name.into(),
                    reason,
                });
            }
            Event::KillCancelled { conn, by } => {
                if let Some(by) = Initiator::cancelled_by(by.as_deref()) {
                    audit.record(AuditRecord::KillCancelled { by, conn });
                }
            }
            Event::Stopped => return,
        }
    }
}

/// The audit log's door: cheap to clone; records go to the file (if any) and to subscribers.
#[derive(Clone)]
pub struct Audit {
    /// The file's writer; `None` when there is no file.
    file: Option<Arc<FileHandle>>,
    /// Subscribers' stream.
    stream: broadcast::Sender<AuditEntry>,
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
        Self { file: None, stream }
    }

    /// Appends to `path` (created with mode 0600); lines queued by [`Audit::record`] are
    /// written by a thread of its own.
    pub async fn open(path: &Path) -> Result<Self, AuditError> {
        // Nothing waits for the writer thread to end: a clean stop writes what is queued
        // itself (`Audit::flush`).
        let (file, _thread) = FileHandle::open(path).map_err(|source| AuditError {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            file: Some(Arc::new(file)),
            ..Self::stream_only()
        })
    }

    /// Whether anyone hears the records (a file or a subscriber).
    pub fn is_heard(&self) -> bool {
        self.file.is_some() || self.stream.receiver_count() > 0
    }

    /// Every record from now on. A subscriber that falls more than 1024 records behind is
    /// told how many it missed (`RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<AuditEntry> {
        self.stream.subscribe()
    }

    /// Records `record` without waiting: it is queued for the writer thread, or dropped,
    /// counted and the count logged if the queue is full.
    pub fn record(&self, record: AuditRecord) {
        if let Some((line, file)) = self.publish(record) {
            file.queue(line);
        }
    }

    /// Records `record` and returns once it is in the file (a kill's record, before its
    /// reply), after every line queued before it: never dropped.
    pub async fn write(&self, record: AuditRecord) {
        self.write_all(std::iter::once(record)).await;
    }

    /// [`Audit::write`] for several records at once (the reports of one kill of many).
    pub async fn write_all(&self, records: impl IntoIterator<Item = AuditRecord>) {
        let lines: Vec<String> = records
            .into_iter()
            .filter_map(|record| self.publish(record).map(|(line, _)| line))
            .collect();
        if let (Some(file), false) = (&self.file, lines.is_empty()) {
            file.writer.write_now(&lines);
        }
    }

    /// Writes what is queued for the writer thread now, in the caller: a clean stop calls it
    /// last, so the process does not end with records still in the queue.
    pub fn flush(&self) {
        if let Some(file) = &self.file {
            file.writer.write_now(&[]);
        }
    }

    /// Reopens the file (after logrotate moved it): the next line goes to a new file at the
    /// same path.
    pub async fn reopen(&self) -> Result<(), String> {
        match &self.file {
            Some(file) => file.writer.reopen(),
            None => Ok(()),
        }
    }

    /// Sends the entry to subscribers; returns its line and the file when there is one.
    fn publish(&self, record: AuditRecord) -> Option<(String, &FileWriter)> {
        let entry = AuditEntry {
            at: SystemTime::now(),
            record,
        };
        let line = self
            .file
            .as_ref()
            .map(|file| (serde_json::to_string(&entry), &*file.writer));
        let _ = self.stream.send(entry);
        match line? {
            (Ok(mut line), file) => {
                line.push('\n');
                Some((line, file))
            }
            (Err(e), _) => {
                warn!(error = %e, "audit log: a record could not be encoded");
                None
            }
        }
    }
}

/// The audit file and the lines waiting for it, under one lock: whoever writes (the writer
/// thread, or a kill's [`Audit::write`] in its own task) writes everything queued first, so
/// the file keeps the order records were made in. A write is one `write(2)` of the lines
/// together, to the page cache (no fsync: a crash of the machine may lose the last lines, a
/// crash of the server does not).
struct FileWriter {
    path: PathBuf,
    state: Mutex<WriterState>,
    /// Wakes the writer thread: lines are queued, or the last `Audit` is gone.
    wake: Condvar,
}

struct WriterState {
    file: std::fs::File,
    queued: Vec<String>,
    /// Lines dropped because the queue was full.
    dropped: u64,
    /// No `Audit` is left: the thread writes what is queued and ends.
    closed: bool,
    /// The thread waits for lines (else it is writing, or gathering the next batch).
    idle: bool,
}

/// The writer, as the `Audit` handles share it: the last one dropped tells the thread to
/// finish.
struct FileHandle {
    writer: Arc<FileWriter>,
}

impl FileHandle {
    /// Opens the file and starts its writer thread, which ends once the handle is dropped
    /// and what was queued is written.
    fn open(path: &Path) -> std::io::Result<(Self, std::thread::JoinHandle<()>)> {
        let writer = FileWriter::open(path)?;
        let for_thread = writer.clone();
        let thread = std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || write_queued(&for_thread))?;
        Ok((Self { writer }, thread))
    }
}

impl Drop for FileHandle {
    fn drop(&mut self) {
        self.writer.lock().closed = true;
        self.writer.wake.notify_one();
    }
}

impl FileWriter {
    fn open(path: &Path) -> std::io::Result<Arc<Self>> {
        let writer = Arc::new(Self {
            path: path.to_path_buf(),
            state: Mutex::new(WriterState {
                file: open_file(path)?,
                queued: Vec::new(),
                dropped: 0,
                closed: false,
                idle: false,
            }),
            wake: Condvar::new(),
        });
        Ok(writer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        // A panic while the lock was held left whole lines behind it: go on.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `line` for the thread; drops it if the queue is full.
    fn queue(&self, line: String) {
        let mut state = self.lock();
        if state.queued.len() >= QUEUE {
            state.dropped += 1;
            let dropped = state.dropped;
            drop(state);
            warn!(
                dropped,
                "audit log: the writer is behind; a record was dropped"
            );
            return;
        }
        state.queued.push(line);
        let idle = std::mem::replace(&mut state.idle, false);
        drop(state);
        if idle {
            self.wake.notify_one();
        }
    }

    /// Writes what is queued, then `lines`, now.
    fn write_now(&self, lines: &[String]) {
        let mut state = self.lock();
        let mut batch = std::mem::take(&mut state.queued);
        batch.extend_from_slice(lines);
        self.write_lines(&state.file, &batch);
    }

    fn write_lines(&self, mut file: &std::fs::File, lines: &[String]) {
        let bytes = lines.concat();
        if let Err(e) = file.write_all(bytes.as_bytes()) {
            warn!(path = %self.path.display(), error = %e, lines = lines.len(), "audit log: records could not be written");
        }
    }

    fn reopen(&self) -> Result<(), String> {
        let new = open_file(&self.path).map_err(|e| {
            format!(
                "cannot reopen the audit log {}: {e}; records still go to the old file",
                self.path.display()
            )
        })?;
        let mut state = self.lock();
        // What was queued for the old file still goes there.
        let queued = std::mem::take(&mut state.queued);
        self.write_lines(&state.file, &queued);
        state.file = new;
        Ok(())
    }
}

fn open_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The writer thread: writes the queued lines, until the last `Audit` is gone.
///
/// Woken by the first line after a quiet spell, it lets [`GATHER`] pass before it writes, so
/// that a burst of records is one write, not one each (a handshake makes four), and that the
/// write comes after the burst rather than in the middle of it (a kill's session and
/// connection ends come while its caller waits for the reply).
fn write_queued(writer: &FileWriter) {
    loop {
        let mut state = writer.lock();
        while state.queued.is_empty() && !state.closed {
            state.idle = true;
            state = writer
                .wake
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.idle = false;
        if !state.closed {
            drop(state);
            std::thread::sleep(GATHER);
            state = writer.lock();
        }
        let lines = std::mem::take(&mut state.queued);
        writer.write_lines(&state.file, &lines);
        if state.closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reload(n: usize) -> AuditRecord {
        AuditRecord::reload(&format!("test {n}"), &Ok(String::new()))
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<AuditEntry>(l).unwrap())
            .map(|e| match e.record {
                AuditRecord::Reload { by, .. } => by,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_written_record_is_in_the_file_on_return_after_everything_queued_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let audit = Audit::open(&path).await.unwrap();
        for n in 0..100 {
            audit.record(reload(n));
        }
        audit.write(reload(100)).await;
        let want: Vec<String> = (0..=100).map(|n| format!("test {n}")).collect();
        assert_eq!(lines(&path), want);
    }

    #[tokio::test]
    async fn reopen_sends_the_next_lines_to_a_new_file_and_the_queued_ones_to_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let audit = Audit::open(&path).await.unwrap();
        audit.write(reload(0)).await;
        let moved = dir.path().join("audit.log.1");
        std::fs::rename(&path, &moved).unwrap();
        audit.record(reload(1));
        audit.reopen().await.unwrap();
        audit.write(reload(2)).await;
        assert_eq!(lines(&moved), ["test 0", "test 1"]);
        assert_eq!(lines(&path), ["test 2"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_writer_thread_ends_with_the_last_handle_after_writing_what_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (handle, thread) = FileHandle::open(&path).unwrap();
        handle.writer.queue("{}\n".into());
        drop(handle);
        let (ended, end) = std::sync::mpsc::channel();
        std::thread::spawn(move || ended.send(thread.join().is_ok()));
        assert_eq!(
            end.recv_timeout(std::time::Duration::from_secs(10)),
            Ok(true),
            "the thread ends, without a panic"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");
    }

    #[test]
    fn a_cancel_from_the_trees_events_is_the_embedders_whatever_its_tag() {
        let embedder = |tag: Option<&str>| {
            Some(Initiator::Embedder {
                tag: tag.map(str::to_string),
            })
        };
        // `ctl cancel`: the control socket records it, with its caller's credentials.
        assert_eq!(Initiator::cancelled_by(Some("uid 0 via ctl")), None);
        for tag in [
            "billing",
            "idle",
            "shutdown",
            "billing on node a",
            "max_per_user",
        ] {
            assert_eq!(
                Initiator::cancelled_by(Some(tag)),
                embedder(Some(tag)),
                "{tag}"
            );
        }
        assert_eq!(Initiator::cancelled_by(None), embedder(None));
    }

    #[test]
    fn kills_recorded_at_the_connections_end_are_the_policies_and_the_embedders() {
        let policy = |name: &str| Some(Initiator::Policy { name: name.into() });
        assert_eq!(Initiator::recorded_at_end(Some("idle")), policy("idle"));
        assert_eq!(
            Initiator::recorded_at_end(Some("max_unauthenticated")),
            policy("max_unauthenticated")
        );
        assert_eq!(
            Initiator::recorded_at_end(Some("billing")),
            Some(Initiator::Embedder {
                tag: Some("billing".into())
            })
        );
        assert_eq!(
            Initiator::recorded_at_end(None),
            Some(Initiator::Embedder { tag: None })
        );
        // Recorded where they were asked, with the report.
        assert_eq!(Initiator::recorded_at_end(Some("uid 0 via ctl")), None);
        assert_eq!(
            Initiator::recorded_at_end(Some("uid 0 via ctl on node c")),
            None
        );
        // An embedder's kill through the fleet: the agent records it.
        assert_eq!(Initiator::recorded_at_end(Some("billing on node a")), None);
        // A refusal after the login: its `limit_refused` says it.
        assert_eq!(Initiator::recorded_at_end(Some("max_per_user")), None);
    }
}
