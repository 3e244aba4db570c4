//! What the fleet answers, as plain data: each node's part in an operation ([`NodeOutcome`]),
//! items tagged with their node ([`Located`]), a fleet listing and a fleet kill, and each node as
//! `ctl nodes` shows it. These types need no ractor_cluster: `ctl` reads them in any build.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sshvisor_actors::{ConnectionInfo, KillReport};

/// How one node took part in an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeOutcome {
    /// The node.
    pub node: String,
    /// `answered`, `failed`, `not_answering`, `lost` or `unreachable`.
    pub status: Reply,
    /// What went wrong, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How many connections (listed, killed, or that would be killed) it answered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
}

/// How a node replied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// It answered.
    Answered,
    /// It answered with an error.
    Failed,
    /// It did not answer within the timeout.
    NotAnswering,
    /// Its link closed while it was asked.
    Lost,
    /// It was already known unreachable, so it was not asked.
    Unreachable,
}

impl NodeOutcome {
    /// A node that did its part, with how many connections.
    pub fn answered(node: &str, count: usize) -> Self {
        Self {
            node: node.to_string(),
            status: Reply::Answered,
            error: None,
            count: Some(count),
        }
    }

    /// Whether the node did its part.
    pub fn is_answered(&self) -> bool {
        self.status == Reply::Answered
    }
}

/// Something a node holds, with the node's name (`node` in JSON, beside the item's fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Located<T> {
    /// The node that holds it.
    pub node: String,
    /// The item.
    #[serde(flatten)]
    pub item: T,
}

/// A fleet-wide listing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetListing {
    /// Every node, with how it answered.
    pub nodes: Vec<NodeOutcome>,
    /// The connections of the nodes that answered.
    pub connections: Vec<Located<ConnectionInfo>>,
}

/// A fleet-wide kill (or, dry, what it would kill).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetKill {
    /// Every node, with how it answered.
    pub nodes: Vec<NodeOutcome>,
    /// One report per connection killed.
    pub reports: Vec<Located<KillReport>>,
    /// For a dry run: what would be killed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub would_kill: Vec<Located<ConnectionInfo>>,
}

/// One node as `ctl nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Its name.
    pub name: String,
    /// Whether it is the node answering.
    pub this: bool,
    /// Up, or unreachable since when.
    #[serde(flatten)]
    pub state: NodeState,
    /// When it last answered.
    pub last_heard: Option<SystemTime>,
    /// What it said of itself last.
    #[serde(flatten)]
    pub status: Option<NodeStatus>,
}

/// Whether a node answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "since", rename_all = "snake_case")]
pub enum NodeState {
    /// It answered within the heartbeat's bound (`members::UNREACHABLE_AFTER`).
    Up,
    /// Its link closed, or it stopped answering, at this time.
    Unreachable(SystemTime),
}

/// What a node says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its `--fleet-node-name`.
    pub name: String,
    /// Where other nodes reach it (`--fleet-listen`), when it listens.
    pub fleet_addr: Option<String>,
    /// Its SSH address.
    pub ssh_addr: Option<String>,
    /// Live connections (`None` when its tree was too busy to count in time).
    pub connections: Option<usize>,
    /// Live sessions.
    pub sessions: Option<usize>,
    /// The sshvisor version it runs.
    pub version: String,
}
