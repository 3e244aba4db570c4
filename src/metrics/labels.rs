//! The metrics' label values, each a fixed set: who initiated a kill (read from its `by` with
//! [`KilledBy`]), which limit refused a connection (read from the refusal's text, which names
//! it by configuration key).

use sshvisor_actors::handle::DRAIN_REASON;
use sshvisor_actors::killed_by::{self, KilledBy};
use sshvisor_actors::report::DisconnectCause;

/// Who asked for a kill (the `initiator` label of `sshvisor_kills_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    /// `sshvisor ctl kill` on this node.
    Ctl,
    /// The embedding program, through its `SupervisorHandle` (or any kill that names no
    /// initiator the tree knows).
    Embedder,
    /// A kill asked on another node of the fleet.
    Fleet,
    /// No login within `login_grace`.
    LoginGrace,
    /// The connection's `idle` timeout.
    Idle,
    /// A session's `session_idle` timeout.
    SessionIdle,
    /// `max_lifetime` reached.
    MaxLifetime,
    /// The client stopped answering keepalives.
    Keepalive,
    /// A drain or a shutdown.
    Drain,
    /// A limit (`max_per_user`, `max_unauthenticated`) ended a connection it had admitted.
    Limit,
}

impl Initiator {
    /// Every initiator, in label order.
    pub const ALL: [Initiator; 10] = [
        Initiator::Ctl,
        Initiator::Embedder,
        Initiator::Fleet,
        Initiator::LoginGrace,
        Initiator::Idle,
        Initiator::SessionIdle,
        Initiator::MaxLifetime,
        Initiator::Keepalive,
        Initiator::Drain,
        Initiator::Limit,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Initiator::Ctl => "ctl",
            Initiator::Embedder => "embedder",
            Initiator::Fleet => "fleet",
            Initiator::LoginGrace => "login_grace",
            Initiator::Idle => "idle",
            Initiator::SessionIdle => "session_idle",
            Initiator::MaxLifetime => "max_lifetime",
            Initiator::Keepalive => "keepalive",
            Initiator::Drain => "drain",
            Initiator::Limit => "limit",
        }
    }

    /// Who ended a connection, if it was a kill (or the keepalive): from the reason and the
    /// `by` text the kill carried (`uid 0 via ctl`, `uid 0 via ctl on node a`, a policy's
    /// name).
    pub fn of(cause: &DisconnectCause) -> Option<Initiator> {
        match cause {
            DisconnectCause::Killed { reason, by } => Some(Self::of_kill(reason, by.as_deref())),
            DisconnectCause::Error { message } if message.contains("Keepalive timeout") => {
                Some(Initiator::Keepalive)
            }
            _ => None,
        }
    }

    fn of_kill(reason: &str, by: Option<&str>) -> Initiator {
        if reason == DRAIN_REASON {
            return Initiator::Drain;
        }
        match KilledBy::of(by) {
            KilledBy::Ctl => Initiator::Ctl,
            KilledBy::Fleet(_) => Initiator::Fleet,
            KilledBy::Embedder(_) => Initiator::Embedder,
            KilledBy::Policy(killed_by::LOGIN_GRACE) => Initiator::LoginGrace,
            KilledBy::Policy(killed_by::IDLE) => Initiator::Idle,
            KilledBy::Policy(killed_by::MAX_LIFETIME) => Initiator::MaxLifetime,
            KilledBy::Policy(killed_by::SHUTDOWN) => Initiator::Drain,
            KilledBy::Policy(_) => Initiator::Limit,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The limits a connection can be refused by (the `limit` label of
/// `sshvisor_connections_refused_total`), by configuration key; `penalized` is the door's.
pub(crate) const LIMITS: [&str; 8] = [
    "max_connections",
    "max_per_source",
    "max_per_prefix",
    "max_per_user",
    "max_unauthenticated",
    "shutting_down",
    "other",
    "penalized",
];

/// The index in [`LIMITS`] of a refusal's text (`max_per_source (100) reached for ...`).
pub(crate) fn limit_index(reason: &str) -> usize {
    if reason == "the server is shutting down" {
        return 5;
    }
    let key = reason.split([' ', '(']).next().unwrap_or("");
    LIMITS[..5].iter().position(|l| *l == key).unwrap_or(6)
}

/// The index in [`LIMITS`] of the door's refusals.
pub(crate) const PENALIZED: usize = 7;

#[cfg(test)]
mod tests {
    use super::*;

    fn killed(reason: &str, by: Option<&str>) -> DisconnectCause {
        DisconnectCause::Killed {
            reason: reason.into(),
            by: by.map(Into::into),
        }
    }

    #[test]
    fn initiators_are_read_from_the_kills_by() {
        let of = |reason, by| Initiator::of(&killed(reason, by)).map(Initiator::label);
        assert_eq!(of("x", Some("uid 0 via ctl")), Some("ctl"));
        assert_eq!(of("x", Some("uid 0 via ctl on node a")), Some("fleet"));
        assert_eq!(of("x", Some("login_grace")), Some("login_grace"));
        assert_eq!(of("x", Some("idle")), Some("idle"));
        assert_eq!(of("x", Some("max_lifetime")), Some("max_lifetime"));
        assert_eq!(of("x", Some("max_per_user")), Some("limit"));
        assert_eq!(of(DRAIN_REASON, Some("uid 0 via ctl")), Some("drain"));
        assert_eq!(of("x", None), Some("embedder"));
        assert_eq!(of("x", Some("my app")), Some("embedder"));
        let keepalive = DisconnectCause::Error {
            message: "russh: Keepalive timeout".into(),
        };
        assert_eq!(Initiator::of(&keepalive), Some(Initiator::Keepalive));
        assert_eq!(Initiator::of(&DisconnectCause::ByClient), None);
        for (i, initiator) in Initiator::ALL.iter().enumerate() {
            assert_eq!(initiator.index(), i);
        }
    }

    #[test]
    fn refusals_are_labelled_by_their_limit_key_only() {
        assert_eq!(
            LIMITS[limit_index("max_per_source (100) reached for 10.1.2.3")],
            "max_per_source"
        );
        assert_eq!(
            LIMITS[limit_index("max_per_user (3) reached for bob")],
            "max_per_user"
        );
        assert_eq!(
            LIMITS[limit_index("the server is shutting down")],
            "shutting_down"
        );
        assert_eq!(LIMITS[limit_index("bob said so")], "other");
    }
}
