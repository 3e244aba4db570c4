//! Who asked for a kill, as the `by` text every kill carries names it. The tree's policies and
//! the server's limits write their configuration key (`idle`, `max_per_user`, ...); the control
//! socket writes `uid N via ctl`; a kill asked on another node of the fleet is `WHO on node
//! NAME`; anything else is the embedding program's own tag. The writers use the names here, and
//! the audit log and the metrics read a `by` back with [`KilledBy::of`], the one reader.

/// No login within `login_grace`.
pub const LOGIN_GRACE: &str = "login_grace";
/// The connection's `idle` timeout.
pub const IDLE: &str = "idle";
/// `max_lifetime` reached.
pub const MAX_LIFETIME: &str = "max_lifetime";
/// A login over `max_per_user`: the connection is refused after its login.
pub const MAX_PER_USER: &str = "max_per_user";
/// A pending login dropped to admit a new connection under `max_unauthenticated`.
pub const MAX_UNAUTHENTICATED: &str = "max_unauthenticated";
/// The server's own shutdown (its drain).
pub const SHUTDOWN: &str = "shutdown";

/// A session's `session_idle` timeout: it ends the session, not its connection, and is named
/// in the session's kill reason (see [`session_idle_reason`]), not in a `by`.
pub const SESSION_IDLE: &str = "session_idle";

/// The kill reason of a session idle for longer than `limit`.
pub fn session_idle_reason(limit: std::time::Duration) -> String {
    format!(
        "{SESSION_IDLE} timeout ({}) reached",
        humantime::format_duration(limit)
    )
}

/// Whether a session's kill reason is `session_idle`'s.
pub fn is_session_idle(reason: &str) -> bool {
    reason
        .strip_prefix(SESSION_IDLE)
        .is_some_and(|rest| rest.starts_with(" timeout ("))
}

/// The policies and limits that kill, by their configuration keys.
const POLICIES: [&str; 6] = [
    LOGIN_GRACE,
    IDLE,
    MAX_LIFETIME,
    MAX_PER_USER,
    MAX_UNAUTHENTICATED,
    SHUTDOWN,
];

/// What ends the `by` of a kill asked on another node.
const ON_NODE: &str = " on node ";

/// Who asked for a kill, read from its `by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KilledBy<'a> {
    /// A process on this node's control socket (`uid N via ctl`).
    Ctl,
    /// Someone on another node of the fleet: the whole `by` (`uid 0 via ctl on node a`).
    Fleet(&'a str),
    /// A policy or limit of the tree or the server, by its configuration key.
    Policy(&'static str),
    /// The embedding program, by its tag if it gave one.
    Embedder(Option<&'a str>),
}

impl<'a> KilledBy<'a> {
    /// Reads a kill's `by`.
    pub fn of(by: Option<&'a str>) -> Self {
        let Some(by) = by else {
            return KilledBy::Embedder(None);
        };
        if by.contains(ON_NODE) {
            return KilledBy::Fleet(by);
        }
        if let Some(policy) = POLICIES.iter().find(|p| **p == by) {
            return KilledBy::Policy(policy);
        }
        let from_ctl = by
            .strip_prefix("uid ")
            .and_then(|rest| rest.strip_suffix(" via ctl"))
            .is_some_and(|uid| uid.parse::<u32>().is_ok());
        match from_ctl {
            true => KilledBy::Ctl,
            false => KilledBy::Embedder(Some(by)),
        }
    }

    /// The `by` of a kill asked by user `uid` on the control socket.
    pub fn ctl(uid: u32) -> String {
        format!("uid {uid} via ctl")
    }

    /// The `by` of a kill that `who` asked for on node `node`, as the nodes carrying it out
    /// are told.
    pub fn fleet(who: &str, node: &str) -> String {
        format!("{who}{ON_NODE}{node}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_writer_s_by_reads_back_as_who_wrote_it() {
        assert_eq!(KilledBy::of(Some(&KilledBy::ctl(0))), KilledBy::Ctl);
        let remote = KilledBy::fleet(&KilledBy::ctl(1000), "a");
        assert_eq!(remote, "uid 1000 via ctl on node a");
        assert_eq!(KilledBy::of(Some(&remote)), KilledBy::Fleet(&remote));
        let tagged = KilledBy::fleet("billing", "a");
        assert_eq!(KilledBy::of(Some(&tagged)), KilledBy::Fleet(&tagged));
        for policy in POLICIES {
            assert_eq!(KilledBy::of(Some(policy)), KilledBy::Policy(policy));
        }
        assert_eq!(KilledBy::of(None), KilledBy::Embedder(None));
        assert_eq!(
            KilledBy::of(Some("billing")),
            KilledBy::Embedder(Some("billing"))
        );
        let idle = session_idle_reason(std::time::Duration::from_secs(300));
        assert_eq!(idle, "session_idle timeout (5m) reached");
        assert!(is_session_idle(&idle));
        assert!(!is_session_idle("session_idle is what I call it"));
        // An embedder's tag that only looks like the control socket's is its own.
        assert_eq!(
            KilledBy::of(Some("uid x via ctl")),
            KilledBy::Embedder(Some("uid x via ctl"))
        );
    }
}
