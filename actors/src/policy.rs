//! The tree's policy: the timeouts and graces it applies to connections and sessions, and the
//! limits it admits them by. Plain data, given at spawn and replaced by `SetPolicy`.

use std::time::Duration;

/// The default grace of a kill: how long sessions get to end politely before they are forced.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

/// Timeouts and graces the tree applies to the connections it admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// How long a session's work may take to end when its connection goes away by itself (the
    /// client left): after it, the work is killed.
    pub kill_grace: Duration,
    /// A connection not authenticated within this time is disconnected (like OpenSSH's
    /// LoginGraceTime); `None` waits forever.
    pub login_grace: Option<Duration>,
    /// The longest a connection may live; `None` for no limit.
    pub max_lifetime: Option<Duration>,
    /// No channel data either way for this long ends a connection; `None` for no limit.
    pub idle: Option<Duration>,
    /// With `idle`: how long before the idle cut each terminal of the connection is told it
    /// is coming (traffic after the warning starts the count again); `None`: no warning.
    pub idle_warning: Option<Duration>,
    /// No data on a session's channel either way for this long ends that session (the
    /// connection stays); `None` for no limit.
    pub session_idle: Option<Duration>,
    /// How many connections and sessions are admitted.
    pub limits: Limits,
}

/// How many connections and sessions the tree admits. A connection over a limit is refused
/// with a text that names the limit by its configuration key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections in all.
    pub max_connections: usize,
    /// Connections from one address.
    pub max_per_source: usize,
    /// Connections from one network prefix ([`prefix_v4`](Self::prefix_v4) bits of an IPv4
    /// address, [`prefix_v6`](Self::prefix_v6) bits of an IPv6 one).
    pub max_per_prefix: usize,
    /// The IPv4 prefix length `max_per_prefix` counts by (24: a /24).
    pub prefix_v4: u8,
    /// The IPv6 prefix length `max_per_prefix` counts by (64: a /64).
    pub prefix_v6: u8,
    /// Connections of one user (checked at authentication).
    pub max_per_user: usize,
    /// Connections not yet authenticated, at once. When a new connection finds them all taken,
    /// the oldest pending login (if it has been pending for [`MIN_PENDING_AGE`] at least) is
    /// dropped to make room, so a flood of handshakes that never finish cannot keep real users
    /// out; otherwise the new connection is refused.
    pub max_unauthenticated: usize,
    /// Sessions on one connection.
    pub max_sessions_per_connection: usize,
}

impl Limits {
    /// No limit at all (for tests and benchmarks; a server facing a network wants the
    /// defaults).
    pub fn unlimited() -> Self {
        Self {
            max_connections: usize::MAX,
            max_per_source: usize::MAX,
            max_per_prefix: usize::MAX,
            prefix_v4: 24,
            prefix_v6: 64,
            max_per_user: usize::MAX,
            max_unauthenticated: usize::MAX,
            max_sessions_per_connection: usize::MAX,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_per_source: 100,
            max_per_prefix: 1_000,
            prefix_v4: 24,
            prefix_v6: 64,
            max_per_user: 50,
            max_unauthenticated: 100,
            max_sessions_per_connection: 10,
        }
    }
}

/// A pending login younger than this is never dropped to make room for a new connection under
/// `max_unauthenticated`: the new connection is refused instead.
pub const MIN_PENDING_AGE: Duration = Duration::from_millis(500);

/// The default login grace.
pub const DEFAULT_LOGIN_GRACE: Duration = Duration::from_secs(30);

impl Default for Policy {
    fn default() -> Self {
        Self {
            kill_grace: DEFAULT_KILL_GRACE,
            login_grace: Some(DEFAULT_LOGIN_GRACE),
            max_lifetime: None,
            idle: None,
            idle_warning: None,
            session_idle: None,
            limits: Limits::default(),
        }
    }
}
