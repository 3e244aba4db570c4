//! Who is in the fleet: one row per node ever heard of, kept fresh by a heartbeat.
//!
//! The agents in the fleet's process group are the members ractor_cluster knows of (a node's
//! agent joins the group on every other node once their link is up, and leaves it when the
//! link closes). That alone is not enough: ractor_cluster keeps a link whose peer has gone
//! silent (a frozen process, a cut cable) and never times it out. So every
//! [`HEARTBEAT`] each member is asked its status, and a node not heard for
//! [`UNREACHABLE_AFTER`] (or whose agent left the group) is marked unreachable: it stays in the
//! table, is named in every answer that needed it, and is up again as soon as it answers.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use futures::future::join_all;
use ractor::rpc::CallResult;
use ractor::ActorRef;
use tracing::{info, warn};

use super::report::{NodeState, NodeStatus};
use super::wire::{decode, encode, AgentMsg, Answer, Ask, GROUP};

/// How often every member is asked its status.
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// How long a member may stay silent before it is marked unreachable. With [`HEARTBEAT`], a
/// node that dies or is cut off leaves the view within 2.5 s.
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(2);

/// One node as this node sees it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its agent, while it is in the process group.
    pub agent: Option<ActorRef<AgentMsg>>,
    /// What it said of itself last.
    pub status: Option<NodeStatus>,
    /// Up, or unreachable since when.
    pub state: NodeState,
    /// When it last answered.
    pub last_heard: Option<SystemTime>,
}

/// The table of nodes, by name.
#[derive(Debug, Default)]
pub struct Members {
    nodes: BTreeMap<String, Member>,
}

/// Why an agent gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskError {
    /// No answer within the bound.
    NotAnswering(Duration),
    /// The link (or the agent) went away before it answered.
    Lost,
    /// It answered something this node cannot read.
    Garbled(String),
}

/// Asks one agent, bounded by `within`: always returns by then.
pub async fn ask(
    agent: &ActorRef<AgentMsg>,
    request: &Ask,
    within: Duration,
) -> Result<Answer, AskError> {
    let bytes = encode(request);
    match agent
        .call(|reply| AgentMsg::Ask(bytes, reply), Some(within))
        .await
    {
        Ok(CallResult::Success(answer)) => decode(&answer).map_err(AskError::Garbled),
        Ok(CallResult::Timeout) => Err(AskError::NotAnswering(within)),
        Ok(CallResult::SenderError) | Err(_) => Err(AskError::Lost),
    }
}

impl Members {
    /// Every row, by name.
    pub fn nodes(&self) -> &BTreeMap<String, Member> {
        &self.nodes
    }

    /// Records this node's own agent before the first heartbeat.
    pub fn insert_self(&mut self, name: &str, agent: ActorRef<AgentMsg>) {
        self.nodes.insert(
            name.to_string(),
            Member {
                agent: Some(agent),
                status: None,
                state: NodeState::Up,
                last_heard: Some(SystemTime::now()),
            },
        );
    }

    /// Applies one heartbeat round: the agents now in the group and what each answered.
    pub fn apply(
        &mut self,
        present: &[ActorRef<AgentMsg>],
        answers: Vec<(ActorRef<AgentMsg>, Result<Answer, AskError>)>,
        now: SystemTime,
    ) {
        let mut heard = Vec::new();
        for (agent, answer) in answers {
            let Ok(Answer::Status(status)) = answer else {
                continue;
            };
            let name = status.name.clone();
            let row = self.nodes.entry(name.clone()).or_insert_with(|| {
                info!(node = %name, addr = status.fleet_addr.as_deref(), "fleet: node joined");
                Member {
                    agent: None,
                    status: None,
                    state: NodeState::Up,
                    last_heard: None,
                }
            });
            if let NodeState::Unreachable(since) = row.state {
                let away = now.duration_since(since).unwrap_or_default();
                info!(node = %name, away = %humantime::format_duration(round(away)), "fleet: node is back");
            }
            row.agent = Some(agent);
            row.status = Some(status);
            row.state = NodeState::Up;
            row.last_heard = Some(now);
            heard.push(name);
        }
        for (name, row) in &mut self.nodes {
            if heard.contains(name) {
                continue;
            }
            let in_group = row
                .agent
                .as_ref()
                .is_some_and(|a| present.iter().any(|p| p.get_id() == a.get_id()));
            if !in_group {
                row.agent = None;
            }
            let silent = row
                .last_heard
                .and_then(|at| now.duration_since(at).ok())
                .is_none_or(|quiet| quiet >= UNREACHABLE_AFTER);
            if row.state == NodeState::Up && (!in_group || silent) {
                row.state = NodeState::Unreachable(now);
                let why = if in_group {
                    "it stopped answering"
                } else {
                    "its link closed"
                };
                warn!(node = %name, why, "fleet: node unreachable");
            }
        }
    }
}

/// One heartbeat round over the agents in the group of `scope`.
pub async fn heartbeat(
    scope: &str,
    within: Duration,
) -> (
    Vec<ActorRef<AgentMsg>>,
    Vec<(ActorRef<AgentMsg>, Result<Answer, AskError>)>,
) {
    let present: Vec<ActorRef<AgentMsg>> =
        ractor::pg::get_scoped_members(&scope.to_string(), &GROUP.to_string())
            .into_iter()
            .map(ActorRef::from)
            .collect();
    let answers = join_all(
        present
            .iter()
            .map(|agent| async move { (agent.clone(), ask(agent, &Ask::Status, within).await) }),
    )
    .await;
    (present, answers)
}

/// A duration to the second, for a person.
pub fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}
