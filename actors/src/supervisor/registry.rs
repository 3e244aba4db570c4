//! The ID map: every live connection and session by its ID, with what is listed about it and
//! who waits on it, and the lookups on it (snapshots, filters, prefix resolution).
//!
//! Architecture Invariant: only the supervisor holds a `Registry`; nothing else writes the map.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use ractor::{ActorId, ActorRef};
use tokio::time::Instant;

use super::kill_groups::Waiter;
use crate::connection::ConnectionMsg;
use crate::filter::Filter;
use crate::ids::{resolve_prefix, ConnId, PrefixMatch, SessionId, Target};
use crate::link::Traffic;
use crate::report::{Census, ConnState, ConnectionInfo, SessionInfo, SessionKind};

/// A live session.
pub(crate) struct SessionEntry {
    pub(crate) info: SessionInfo,
    pub(crate) waiters: Vec<Waiter>,
}

/// A live connection.
pub(crate) struct ConnEntry {
    pub(crate) actor: ActorRef<ConnectionMsg>,
    pub(crate) admitted: Instant,
    /// When its login grace runs out, while it is logging in (its key in the logins).
    pub(crate) login_deadline: Option<Instant>,
    pub(crate) traffic: Option<Arc<dyn Traffic>>,
    pub(crate) info: ConnectionInfo,
    pub(crate) sessions: Vec<SessionEntry>,
    pub(crate) waiters: Vec<Waiter>,
    /// Sessions that ended while it was closing: its report's count should its actor crash
    /// before it tells its own.
    pub(crate) closed_while_closing: usize,
    /// When it was first listed as closing (a kill reached it): a kill's duration is timed
    /// from here.
    pub(crate) closing_since: Option<Instant>,
}

impl ConnEntry {
    /// What is listed about it now, traffic and sessions included.
    pub(crate) fn snapshot(&self) -> ConnectionInfo {
        let mut info = self.info.clone();
        if let Some(t) = &self.traffic {
            info.idle_ms = Some(t.idle_for().as_millis() as u64);
            info.bytes_in = Some(t.bytes_in());
            info.bytes_out = Some(t.bytes_out());
        }
        info.sessions = self.sessions.iter().map(|s| s.info.clone()).collect();
        info
    }

    /// Whether `filter` selects it, without a full snapshot unless idle time matters.
    pub(crate) fn selected_by(&self, filter: &Filter, now: SystemTime) -> bool {
        if filter.is_empty() {
            true
        } else if filter.idle_over.is_none() {
            filter.matches(&self.info, now)
        } else {
            filter.matches(&self.snapshot(), now)
        }
    }

    /// One of its sessions.
    pub(crate) fn session_mut(&mut self, session: SessionId) -> Option<&mut SessionEntry> {
        self.sessions.iter_mut().find(|s| s.info.id == session)
    }
}

/// The map itself.
#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) conns: HashMap<ConnId, ConnEntry>,
    /// Connections by their actor, for supervision events.
    pub(crate) by_actor: HashMap<ActorId, ConnId>,
    /// Sessions by ID, to their connection.
    pub(crate) sessions: HashMap<SessionId, ConnId>,
}

impl Registry {
    /// The live connections and sessions counted by state and kind, with their bytes.
    pub(crate) fn census(&self) -> Census {
        let mut census = Census::default();
        for entry in self.conns.values() {
            let state = match entry.info.state {
                ConnState::Handshaking => 0,
                ConnState::Authenticated => 1,
                ConnState::Closing => 2,
            };
            census.connections[state] += 1;
            if let Some(t) = &entry.traffic {
                census.bytes_in += t.bytes_in();
                census.bytes_out += t.bytes_out();
            }
            for session in &entry.sessions {
                let kind = match session.info.kind {
                    SessionKind::Pending => 0,
                    SessionKind::Exec => 1,
                    SessionKind::Shell => 2,
                    SessionKind::Subsystem => 3,
                };
                census.sessions[kind] += 1;
            }
        }
        census
    }

    /// Adds a connection admitted now.
    pub(crate) fn insert(&mut self, entry: ConnEntry) {
        self.by_actor.insert(entry.actor.get_id(), entry.info.id);
        self.conns.insert(entry.info.id, entry);
    }

    /// A session of a live connection.
    pub(crate) fn session_mut(
        &mut self,
        conn: ConnId,
        session: SessionId,
    ) -> Option<&mut SessionEntry> {
        self.conns.get_mut(&conn)?.session_mut(session)
    }

    /// Snapshots of the connections `filter` selects (all for an empty one), oldest first.
    pub(crate) fn select(&self, filter: &Filter) -> Vec<ConnectionInfo> {
        let now = SystemTime::now();
        let mut selected: Vec<ConnectionInfo> = self
            .conns
            .values()
            .filter(|e| e.selected_by(filter, now))
            .map(ConnEntry::snapshot)
            .collect();
        selected.sort_by(|a, b| a.started.cmp(&b.started).then_with(|| a.id.cmp(&b.id)));
        selected
    }

    /// The IDs of the connections `filter` selects.
    pub(crate) fn selected_ids(&self, filter: &Filter) -> std::collections::HashSet<ConnId> {
        let now = SystemTime::now();
        self.conns
            .iter()
            .filter(|(_, e)| e.selected_by(filter, now))
            .map(|(id, _)| *id)
            .collect()
    }

    /// The live connection or session `text` names, in full or by a prefix.
    pub(crate) fn resolve(&self, text: &str) -> PrefixMatch<Target> {
        if let Ok(conn) = text.trim().parse::<ConnId>() {
            if self.conns.contains_key(&conn) {
                return PrefixMatch::One(Target::Connection(conn));
            }
            let session = SessionId(conn.0);
            if self.sessions.contains_key(&session) {
                return PrefixMatch::One(Target::Session(session));
            }
        }
        let candidates = self.conns.values().flat_map(|e| {
            std::iter::once((e.info.id.to_string(), Target::Connection(e.info.id))).chain(
                e.sessions
                    .iter()
                    .map(|s| (s.info.id.to_string(), Target::Session(s.info.id))),
            )
        });
        resolve_prefix(text, candidates)
    }

    /// How many callers of `Kill` wait on one target.
    pub(crate) fn waiting_kills(&self) -> usize {
        self.conns
            .values()
            .map(|e| e.waiters.len() + e.sessions.iter().map(|s| s.waiters.len()).sum::<usize>())
            .sum()
    }
}
