//! The data the tree hands out: snapshots, kill reports, errors and lifecycle events.
//!
//! All of it is plain data (IDs, strings, times): safe to serialize, to send across a control
//! socket, or one day across nodes. Nothing here holds an actor or a handle.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::ids::{ConnId, SessionId, Target};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnState {
    /// Key exchange or authentication still under way.
    Handshaking,
    /// The client is authenticated.
    Authenticated,
    /// A kill is under way, or the transport has ended and the subtree is winding down.
    Closing,
}

/// What a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    /// The channel is open but the client has not asked for anything yet.
    Pending,
    /// One command (`exec`).
    Exec,
    /// An interactive shell.
    Shell,
    /// A subsystem such as `sftp`.
    Subsystem,
}

/// A snapshot of one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The session's ID.
    pub id: SessionId,
    /// What it runs.
    pub kind: SessionKind,
    /// The exec command or the subsystem name.
    pub command: Option<String>,
    /// When the channel was opened.
    #[serde(with = "rfc3339")]
    pub started: SystemTime,
    /// The session's terminal, when it has one.
    #[serde(default)]
    pub pty: Option<PtyInfo>,
    /// How many live processes the session has; filled in by the binding (the tree does not
    /// know about processes), `None` when unknown.
    #[serde(default)]
    pub processes: Option<usize>,
}

/// A session's terminal as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtyInfo {
    /// The terminal type (`TERM`).
    pub term: String,
    /// Width in characters.
    pub cols: u32,
    /// Height in rows.
    pub rows: u32,
}

/// A kill announced with a warning: when it will happen and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingKill {
    /// When the kill starts.
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
    /// The reason the terminals were shown.
    pub reason: String,
}

/// A snapshot of one connection and its sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// The connection's ID.
    pub id: ConnId,
    /// The user name the client authenticated as (none before authentication).
    pub user: Option<String>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's SSH version string, once known.
    pub client_version: Option<String>,
    /// The authentication method that succeeded (`publickey`, ...).
    pub auth_method: Option<String>,
    /// The key (or certificate) the client logged in with, once authenticated.
    #[serde(default)]
    pub credential: Option<Credential>,
    /// When the TCP connection was accepted.
    #[serde(with = "rfc3339")]
    pub started: SystemTime,
    /// Where it is in its life.
    pub state: ConnState,
    /// How long no channel data has moved either way, in milliseconds, when known.
    #[serde(default)]
    pub idle_ms: Option<u64>,
    /// Channel bytes received from the client, when known.
    #[serde(default)]
    pub bytes_in: Option<u64>,
    /// Channel bytes sent to the client, when known.
    #[serde(default)]
    pub bytes_out: Option<u64>,
    /// A kill announced to its terminals and not carried out yet
    /// (`SupervisorHandle::kill_warned`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_kill: Option<PendingKill>,
    /// Its live sessions, oldest first.
    pub sessions: Vec<SessionInfo>,
}

/// Who holds the key a connection logged in with: what an operator needs to end every
/// connection of a leaked key or certificate (`Filter::key_fingerprint`, `cert_serial`,
/// `cert_key_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// The SHA-256 fingerprint of the public key, as OpenSSH prints it (`SHA256:...`); for a
    /// certificate, that of the certified key (what `ssh-keygen -l` shows for it).
    pub key_fingerprint: String,
    /// The OpenSSH certificate the key was presented in, if it was.
    #[serde(default)]
    pub certificate: Option<CertificateInfo>,
}

/// The parts of an OpenSSH user certificate an operator identifies it by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateInfo {
    /// The key ID the CA wrote in it (`ssh-keygen -I`).
    pub key_id: String,
    /// Its serial number (`ssh-keygen -z`).
    pub serial: u64,
    /// The SHA-256 fingerprint of the CA key that signed it.
    pub ca_fingerprint: String,
}

/// How big the tree is right now: what the map holds and how many actors are alive under the
/// supervisor. The two agree in a healthy tree; a difference is a leak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeStats {
    /// Connections in the map.
    pub connections: usize,
    /// Sessions in the map.
    pub sessions: usize,
    /// Connection actors alive under the supervisor.
    pub connection_actors: usize,
    /// Session actors alive under those connections.
    pub session_actors: usize,
    /// Kills and kill sets still waiting for their reply.
    pub waiting_kills: usize,
}

/// The live tree counted: what a metrics scrape shows, without a listing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Census {
    /// Connections by state: handshaking, authenticated, closing.
    pub connections: [u64; 3],
    /// Sessions by kind: pending, exec, shell, subsystem.
    pub sessions: [u64; 4],
    /// Bytes received from the live connections' clients so far.
    pub bytes_in: u64,
    /// Bytes sent to the live connections' clients so far.
    pub bytes_out: u64,
}

/// The answer to a kill: sent once everything under the target has stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillReport {
    /// What was killed.
    pub target: Target,
    /// How many sessions were closed on the way (1 for a session kill).
    pub sessions_closed: usize,
    /// From the kill request to this report.
    #[serde(rename = "elapsed_ms", with = "millis")]
    pub elapsed: Duration,
    /// True when the grace ran out and the end was forced (processes killed, stream cut).
    pub forced: bool,
    /// Processes of the target's sessions still running when those sessions reported their
    /// end (they could not be killed): the target is zero.
    #[serde(default)]
    pub processes_left: usize,
    /// The user the connection (of the session) had logged in as, if it had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The connection's client address (absent in reports from older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<SocketAddr>,
}

/// Why a kill could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum KillError {
    /// No live connection or session has this ID.
    #[error("no live {0}")]
    NotFound(Target),
}

/// Why a new connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Refusal {
    /// The tree is draining or shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The connection actor could not be started.
    #[error("could not start the connection: {0}")]
    SpawnFailed(String),
    /// A limit is reached; the text names it by its configuration key, e.g.
    /// `max_per_source (100) reached for 10.1.2.3`.
    #[error("{0}")]
    Limit(String),
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum DisconnectCause {
    /// The client closed the connection.
    ByClient,
    /// A kill ended it.
    Killed {
        /// The reason given with the kill (shown to the client).
        reason: String,
        /// Who asked for it, when known (`uid 1000 via ctl`, ...).
        by: Option<String>,
    },
    /// The transport or the connection's actor failed.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// How a session's work ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "exit", content = "value", rename_all = "snake_case")]
pub enum SessionExit {
    /// The process exited with this status.
    Status(u32),
    /// The process died of this signal (name without `SIG`, as SSH sends it).
    Signal(String),
    /// The channel closed with no process exit to report.
    Closed,
    /// The session failed (its actor crashed or its work could not run).
    Failed(String),
}

/// Serde for `SystemTime` as an RFC 3339 string (UTC, milliseconds).
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    /// Writes the time as `2026-11-23T19:25:11.123Z`.
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    /// Reads an RFC 3339 time.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde for `Duration` as fractional milliseconds.
pub mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes the duration as milliseconds with microsecond precision.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_micros() as f64 / 1000.0)
    }

    /// Reads fractional milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        if !ms.is_finite() || ms < 0.0 {
            return Err(serde::de::Error::custom(
                "a duration must be a non-negative number",
            ));
        }
        Ok(Duration::from_secs_f64(ms / 1000.0))
    }
}
