//! What crosses the links between nodes: one remotable message, [`AgentMsg::Ask`], carrying an
//! [`Ask`] as JSON and answered with an [`Answer`] as JSON.
//!
//! Only plain data crosses: IDs, filters, connection snapshots, kill reports, events, a node's
//! status. Never an actor reference, a reply port of the tree or a handle. JSON inside one
//! ractor_cluster message (rather than one message variant per request) keeps the wire in one
//! place and lets a node answer a request it does not know with an error instead of dropping
//! the link: a node of another version says "unknown request", it does not fail to decode.

use std::time::{Duration, SystemTime};

use ractor::RpcReplyPort;
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize};
use sshvisor_actors::{ConnectionInfo, Event, Filter, KillReport, Target};

pub use super::report::NodeStatus;

/// The process-group scope every fleet agent joins (an embedding program may use its own, so
/// that two fleets in one process, as in tests, never see each other).
pub const DEFAULT_SCOPE: &str = "sshvisor";

/// The process group of the fleet agents, one per node.
pub const GROUP: &str = "fleet";

/// The one message a fleet agent receives, locally or from another node.
#[derive(RactorClusterMessage)]
pub enum AgentMsg {
    /// An [`Ask`] as JSON; the reply is an [`Answer`] as JSON.
    #[rpc]
    Ask(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

/// A request to one node's agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ask", rename_all = "snake_case")]
pub enum Ask {
    /// The node's name, addresses and counts (also the heartbeat).
    Status,
    /// The node's connections that `filter` selects.
    List {
        /// Which connections.
        filter: Filter,
    },
    /// The node's live connections and sessions whose ID starts with `text`.
    Resolve {
        /// An ID or a prefix.
        text: String,
    },
    /// Kill one connection or session of the node.
    Kill {
        /// What.
        target: Target,
        /// Shown to the client.
        reason: String,
        /// The kill's grace.
        grace: Duration,
        /// Who asked, for the node's audit line (`uid 0 via ctl on node a`).
        by: Option<String>,
    },
    /// Kill every connection of the node that `filter` selects; with `dry_run`, only list them.
    KillWhere {
        /// Which connections.
        filter: Filter,
        /// Shown to the clients.
        reason: String,
        /// The kill's grace.
        grace: Duration,
        /// Who asked.
        by: Option<String>,
        /// List, kill nothing.
        dry_run: bool,
    },
    /// Announce to every connection of the node that `filter` selects that it will be killed
    /// after `notice`, then kill them: answered at the deadline (a variant of its own, so that a
    /// node that does not know it refuses it rather than killing at once).
    KillWarned {
        /// Which connections (chosen when the node gets the ask).
        filter: Filter,
        /// Shown to the clients, in the warning and at the cut.
        reason: String,
        /// From the warning to the kill.
        notice: Duration,
        /// The kill's grace.
        grace: Duration,
        /// Who asked.
        by: Option<String>,
    },
    /// The node's lifecycle events from sequence number `from` on (the `next` of the
    /// previous answer); `None` starts a watch: no events, only the number to go on from.
    Events {
        /// The first sequence number not seen yet.
        from: Option<u64>,
    },
}

/// A node's answer to an [`Ask`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", content = "value", rename_all = "snake_case")]
pub enum Answer {
    /// To [`Ask::Status`].
    Status(NodeStatus),
    /// To [`Ask::List`], and to a dry-run [`Ask::KillWhere`].
    Connections(Vec<ConnectionInfo>),
    /// To [`Ask::Resolve`]: every live ID that starts with the text (one when it is a full ID).
    Targets(Vec<Target>),
    /// To [`Ask::Kill`].
    Killed(KillReport),
    /// To [`Ask::KillWhere`].
    KilledMany(Vec<KillReport>),
    /// To [`Ask::KillWhere`], when every report would not fit in one answer
    /// ([`MAX_ANSWER`]): the first reports, and how many more connections were killed.
    KilledSome {
        /// The reports that fit.
        reports: Vec<KillReport>,
        /// Connections killed whose reports were left out.
        omitted: usize,
    },
    /// To [`Ask::Events`].
    Events(EventBatch),
    /// The request could not be served (the target ended, the tree did not answer, the
    /// request was not understood): a sentence for a person.
    Error(String),
}

/// A node's events since a watcher's last ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    /// The sequence number to ask after next time.
    pub next: u64,
    /// The events, oldest first, each with when it happened. An event this version cannot
    /// read (a kind a newer node has) is left out, rather than the whole batch refused: a
    /// watcher would ask for it again and again.
    #[serde(deserialize_with = "readable_events")]
    pub events: Vec<(SystemTime, Event)>,
    /// Events the watcher missed because it asked too rarely (the node keeps the last
    /// [`EVENT_BACKLOG`] only).
    pub missed: u64,
}

/// The largest answer a node sends, in bytes: below ractor_cluster's inbound frame limit
/// ([`ractor_cluster::DEFAULT_MAX_INBOUND_FRAME_SIZE`], 16 MiB), over which the receiving node
/// would drop the whole link. A bigger listing is refused with advice; a bigger set of kill
/// reports is cut (the kills are done all the same).
pub const MAX_ANSWER: usize = 12 * 1024 * 1024;

/// How many events a node keeps for its remote watchers.
pub const EVENT_BACKLOG: usize = 8192;

/// Encodes a request or an answer.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain data (strings, numbers, IDs) always encodes.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Decodes an answer (or a request): a peer that sends what this version cannot read gets an
/// error it can show, never a dropped link.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("cannot read the message: {e}"))
}

/// Reads a batch's events, leaving out those this version does not know.
fn readable_events<'de, D>(deserializer: D) -> Result<Vec<(SystemTime, Event)>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let all = Vec::<(SystemTime, serde_json::Value)>::deserialize(deserializer)?;
    Ok(all
        .into_iter()
        .filter_map(|(at, event)| Some((at, serde_json::from_value(event).ok()?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::Message;
    use sshvisor_actors::ConnId;

    #[test]
    fn every_ask_and_answer_survives_the_wire() {
        let target = Target::Connection(ConnId::new_random());
        let asks = [
            Ask::Status,
            Ask::List {
                filter: Filter {
                    user: Some("alice".into()),
                    ..Filter::default()
                },
            },
            Ask::Resolve {
                text: "3f2a".into(),
            },
            Ask::Kill {
                target,
                reason: "revoked".into(),
                grace: Duration::from_millis(1500),
                by: Some("uid 0 via ctl on node a".into()),
            },
            Ask::KillWhere {
                filter: Filter::default(),
                reason: "revoked".into(),
                grace: Duration::from_secs(5),
                by: None,
                dry_run: true,
            },
            Ask::Events { from: Some(7) },
        ];
        for ask in asks {
            assert_eq!(decode::<Ask>(&encode(&ask)).unwrap(), ask);
        }
        let answer = Answer::Targets(vec![target]);
        assert_eq!(decode::<Answer>(&encode(&answer)).unwrap(), answer);
    }

    // Deserializing the reply port spawns its forwarding task: it needs a runtime.
    #[tokio::test]
    async fn the_message_is_remotable_and_a_garbled_one_is_an_error() {
        assert!(AgentMsg::serializable());
        let (tx, _rx) = ractor::concurrency::oneshot::<Vec<u8>>();
        let wire = AgentMsg::Ask(encode(&Ask::Status), tx.into())
            .serialize()
            .unwrap();
        let AgentMsg::Ask(bytes, _) = AgentMsg::deserialize(wire).unwrap();
        assert_eq!(decode::<Ask>(&bytes).unwrap(), Ask::Status);
        let garbled = decode::<Ask>(br#"{"ask":"reboot"}"#).unwrap_err();
        assert!(garbled.contains("cannot read"), "{garbled}");
    }

    #[test]
    fn a_batch_with_an_event_of_a_newer_version_is_read_without_it() {
        let conn = ConnId::new_random();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let batch = EventBatch {
            next: 3,
            events: vec![(
                at,
                Event::Connected {
                    conn,
                    peer: "192.0.2.1:40000".parse().unwrap(),
                },
            )],
            missed: 0,
        };
        let mut value = serde_json::to_value(&batch).unwrap();
        let newer = serde_json::json!([value["events"][0][0].clone(), {"event": "teleported", "conn": conn}]);
        value["events"].as_array_mut().unwrap().insert(0, newer);
        let read: EventBatch = decode(&serde_json::to_vec(&value).unwrap()).unwrap();
        assert_eq!(read, batch);
    }
}
