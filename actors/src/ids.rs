//! Identifiers of connections and sessions.
//!
//! Both are newtypes over a random UUID v4: unguessable, unique across restarts and nodes, and
//! printed in full (hyphenated). Operators may type a unique prefix; resolving a prefix is the
//! caller's job (see [`resolve_prefix`]), the tree itself only deals in full IDs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random (v4) ID.
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id_type!(
    /// Identifies one TCP connection (one `ConnectionActor`) for its whole life.
    ConnId
);
id_type!(
    /// Identifies one session channel (one `SessionActor`) for its whole life.
    SessionId
);

/// What a kill is aimed at: a whole connection or a single session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Target {
    /// A connection and everything under it.
    Connection(ConnId),
    /// One session channel; its connection and sibling sessions stay up.
    Session(SessionId),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Connection(id) => write!(f, "connection {id}"),
            Target::Session(id) => write!(f, "session {id}"),
        }
    }
}

/// The outcome of matching an operator's ID text against the live IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefixMatch<T> {
    /// Exactly one ID starts with the text (or equals it).
    One(T),
    /// No live ID starts with the text.
    None,
    /// Several live IDs start with the text; all of them are listed.
    Ambiguous(Vec<T>),
}

/// Finds the one item whose ID (printed in full, hyphenated) starts with `text`.
///
/// Matching is case-insensitive and an exact full ID always wins.
pub fn resolve_prefix<T: Clone>(
    text: &str,
    items: impl IntoIterator<Item = (String, T)>,
) -> PrefixMatch<T> {
    let wanted = text.trim().to_ascii_lowercase();
    if wanted.is_empty() {
        return PrefixMatch::None;
    }
    let mut found = Vec::new();
    for (id, item) in items {
        if id == wanted {
            return PrefixMatch::One(item);
        }
        if id.starts_with(&wanted) {
            found.push(item);
        }
    }
    match found.len() {
        0 => PrefixMatch::None,
        1 => PrefixMatch::One(found.remove(0)),
        _ => PrefixMatch::Ambiguous(found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_in_full_and_parse_back() {
        let id = ConnId::new_random();
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(text.parse::<ConnId>().unwrap(), id);
        assert_eq!(Uuid::parse_str(&text).unwrap().get_version_num(), 4);
    }

    #[test]
    fn prefix_resolution_reports_none_one_and_ambiguous() {
        let items = vec![
            ("abcd-1".to_string(), 1),
            ("abce-2".to_string(), 2),
            ("ffff-3".to_string(), 3),
        ];
        assert_eq!(resolve_prefix("ABCD", items.clone()), PrefixMatch::One(1));
        assert_eq!(resolve_prefix("f", items.clone()), PrefixMatch::One(3));
        assert_eq!(resolve_prefix("0", items.clone()), PrefixMatch::None);
        assert_eq!(resolve_prefix("", items.clone()), PrefixMatch::None);
        assert_eq!(
            resolve_prefix("abc", items),
            PrefixMatch::Ambiguous(vec![1, 2])
        );
    }
}
