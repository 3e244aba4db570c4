//! [`Fleet`]: the typed door to every node at once, for `ctl` and for an embedding program.
//!
//! Every operation asks the nodes in parallel, each bounded by a timeout, and gives exactly one
//! answer once every node has answered, failed, timed out, or is known unreachable; each node
//! is named in it with how it went ([`NodeOutcome`]). A node that dies in the middle of a kill
//! is reported as lost while the kills on the others run to their end and are reported.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures::future::join_all;
use ractor::{Actor, ActorRef};
use sshvisor_actors::killed_by::KilledBy;
use sshvisor_actors::{
    ConnId, Event, Filter, HandleError, KillReport, PrefixMatch, SessionId, SupervisorHandle,
    Target,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::agent::{AgentArgs, FleetAgent};
use super::members::{self, ask, AskError, Member, Members, HEARTBEAT};
use super::report::{FleetKill, FleetListing, Located, NodeOutcome, NodeState, NodeView, Reply};
use super::wire::{AgentMsg, Answer, Ask, DEFAULT_SCOPE};

/// How long an operation waits for a node unless told otherwise (`ctl --timeout`).
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(2);

/// A kill's answer may take its grace plus the tree's forced path (about 3 s) before the node
/// can report; the timeout is counted after that.
const KILL_ALLOWANCE: Duration = Duration::from_secs(5);

/// How often a fleet watch asks each node for its new events.
const WATCH_POLL: Duration = Duration::from_millis(200);

/// What a node in a fleet is called and where it is found.
#[derive(Debug, Clone)]
pub struct FleetSetup {
    /// This node's name (unique in the fleet).
    pub name: String,
    /// The process-group scope ([`DEFAULT_SCOPE`] for `sshvisor serve`).
    pub scope: String,
    /// Where other nodes reach this one.
    pub fleet_addr: Option<String>,
    /// Its SSH address.
    pub ssh_addr: Option<String>,
}

impl FleetSetup {
    /// A node called `name` in the default scope.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            scope: DEFAULT_SCOPE.to_string(),
            fleet_addr: None,
            ssh_addr: None,
        }
    }
}

/// An event of one node, for a fleet watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetEvent {
    /// The node.
    pub node: String,
    /// When it happened (on that node's clock).
    pub at: SystemTime,
    /// What.
    pub what: Watched,
}

/// What a fleet watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    /// A lifecycle event of the node's tree.
    Event(Event),
    /// The watch missed this many of the node's events (it fell behind its backlog, or the
    /// node restarted).
    Missed(u64),
    /// The node left the view.
    Unreachable,
    /// The node is (back) in the view.
    Up,
}

/// Why a fleet-wide kill by ID did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    /// No node that answered has the ID.
    #[error("no live connection or session in the fleet has an ID starting with {text:?}{}", unasked(.missing))]
    NotFound {
        /// The text.
        text: String,
        /// The nodes that could not be asked, with why.
        missing: Vec<NodeOutcome>,
    },
    /// Several IDs start with the text, on one node or several.
    #[error("{text:?} is ambiguous: it starts {}; type more of the ID", listed(.matches))]
    Ambiguous {
        /// The text.
        text: String,
        /// Every match, with its node.
        matches: Vec<Located<Target>>,
    },
    /// The owner was found but the kill failed (or its node was lost meanwhile).
    #[error("node {node}: {error}")]
    Node {
        /// The owner.
        node: String,
        /// What it said, or why it did not.
        error: String,
    },
}

fn unasked(missing: &[NodeOutcome]) -> String {
    if missing.is_empty() {
        return String::new();
    }
    let named: Vec<String> = missing
        .iter()
        .map(|n| format!("{} ({})", n.node, n.error.as_deref().unwrap_or("not asked")))
        .collect();
    format!("; not asked or not answering: {}", named.join(", "))
}

fn listed(matches: &[Located<Target>]) -> String {
    matches
        .iter()
        .map(|m| format!("{} on node {}", m.item, m.node))
        .collect::<Vec<_>>()
        .join(", ")
}

/// This node's view of the fleet, and the door to every node (see the module's documentation).
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    tree: SupervisorHandle,
    agent: ActorRef<AgentMsg>,
    members: Mutex<Members>,
    heartbeat: JoinHandle<()>,
    /// Tells the agent's requests in flight that the node left (see `agent`).
    leaving: watch::Sender<bool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.heartbeat.abort();
        self.agent.stop(None);
    }
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Starts this node's agent (joined to the fleet's process group) and its heartbeat. The
    /// links to other nodes are `links`'s (an embedding program in one process needs none).
    pub async fn start(tree: SupervisorHandle, setup: FleetSetup) -> Result<Self, HandleError> {
        Self::start_audited(tree, setup, None).await
    }

    /// [`Fleet::start`], with the kills other nodes ask of this one recorded in `audit`.
    pub async fn start_audited(
        tree: SupervisorHandle,
        setup: FleetSetup,
        audit: Option<crate::audit::Audit>,
    ) -> Result<Self, HandleError> {
        let (leaving, left) = watch::channel(false);
        let (agent, _) = Actor::spawn(
            None,
            FleetAgent,
            AgentArgs {
                name: setup.name.clone(),
                scope: setup.scope.clone(),
                fleet_addr: setup.fleet_addr,
                ssh_addr: setup.ssh_addr,
                tree: tree.clone(),
                leaving: left,
                audit,
            },
        )
        .await
        .map_err(|e| HandleError::Spawn {
            what: "the fleet agent",
            why: e.to_string(),
        })?;
        let mut table = Members::default();
        table.insert_self(&setup.name, agent.clone());
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<Inner>| {
            let weak = weak.clone();
            let scope = setup.scope.clone();
            let heartbeat = tokio::spawn(async move {
                let mut tick = tokio::time::interval(HEARTBEAT);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let (present, answers) = members::heartbeat(&scope, HEARTBEAT).await;
                    let Some(inner) = weak.upgrade() else { return };
                    inner.lock().apply(&present, answers, SystemTime::now());
                }
            });
            Inner {
                name: setup.name,
                tree,
                agent,
                members: Mutex::new(table),
                heartbeat,
                leaving,
            }
        });
        Ok(Self { inner })
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Stops the agent and the heartbeat: the node leaves the fleet (its links stay, if any).
    pub fn leave(&self) {
        // First: a request in flight must not answer once this returns.
        self.inner.leaving.send_replace(true);
        self.inner.heartbeat.abort();
        self.inner.agent.stop(Some("leaving the fleet".into()));
    }

    /// Every node this one has heard of, by name: up, or unreachable since when.
    pub fn nodes(&self) -> Vec<NodeView> {
        let members = self.inner.lock();
        members
            .nodes()
            .iter()
            .map(|(name, row)| NodeView {
                name: name.clone(),
                this: *name == self.inner.name,
                state: row.state,
                last_heard: row.last_heard,
                status: row.status.clone(),
            })
            .collect()
    }

    /// Every node's connections that `filter` selects, each node bounded by `within`.
    pub async fn list(&self, filter: Filter, within: Duration) -> FleetListing {
        let mut listing = FleetListing::default();
        for (node, answer) in self.fan_out(&Ask::List { filter }, within).await {
            match answer {
                Ok(Answer::Connections(all)) => {
                    listing.nodes.push(NodeOutcome::answered(&node, all.len()));
                    listing.connections.extend(located(&node, all));
                }
                other => listing.nodes.push(not_done(&node, other)),
            }
        }
        listing
    }

    /// Who asked, as the node that carries the kill out names it: `TAG on node NAME` (an
    /// untagged caller is `a caller`). The ` on node ` is what tells the nodes' audit logs and
    /// metrics that the fleet asked.
    fn origin(&self, by: Option<String>) -> String {
        KilledBy::fleet(by.as_deref().unwrap_or("a caller"), &self.inner.name)
    }

    /// Kills, on every node, the connections `filter` selects (with `dry_run`, lists them):
    /// one answer once every node has reported or timed out (`within` after the grace and
    /// the tree's forced path).
    pub async fn kill_where(
        &self,
        filter: Filter,
        reason: &str,
        grace: Duration,
        by: Option<String>,
        dry_run: bool,
        within: Duration,
    ) -> FleetKill {
        let request = Ask::KillWhere {
            filter,
            reason: reason.to_string(),
            grace,
            by: Some(self.origin(by)),
            dry_run,
        };
        let mut outcome = FleetKill::default();
        for (node, answer) in self.fan_out(&request, kill_bound(grace, within)).await {
            match answer {
                Ok(Answer::KilledSome { reports, omitted }) => outcome.cut(&node, reports, omitted),
                Ok(Answer::KilledMany(reports)) => outcome.killed(&node, reports),
                Ok(Answer::Connections(all)) if dry_run => {
                    outcome.nodes.push(NodeOutcome::answered(&node, all.len()));
                    outcome.would_kill.extend(located(&node, all));
                }
                other => outcome.nodes.push(not_done(&node, other)),
            }
        }
        outcome
    }

    /// Announces to the connections `filter` selects on every node that they will be killed
    /// after `notice` (each terminal is told at once), and kills them then: one answer at the
    /// deadline, once every node has reported or timed out (`within` after the notice, the
    /// grace and the tree's forced path). A node cut off meanwhile still carries out its part.
    pub async fn kill_warned(
        &self,
        filter: Filter,
        reason: &str,
        notice: Duration,
        grace: Duration,
        by: Option<String>,
        within: Duration,
    ) -> FleetKill {
        let request = Ask::KillWarned {
            filter,
            reason: reason.to_string(),
            notice,
            grace,
            by: Some(self.origin(by)),
        };
        let mut outcome = FleetKill::default();
        for (node, answer) in self
            .fan_out(&request, notice + kill_bound(grace, within))
            .await
        {
            match answer {
                Ok(Answer::KilledSome { reports, omitted }) => outcome.cut(&node, reports, omitted),
                Ok(Answer::KilledMany(reports)) => outcome.killed(&node, reports),
                other => outcome.nodes.push(not_done(&node, other)),
            }
        }
        outcome
    }

    /// The one live connection or session, anywhere in the fleet, whose ID is or starts with
    /// `text`. A full ID held here is found without asking anyone; anything else is asked of
    /// every node, so that a prefix is unique fleet-wide.
    pub async fn resolve(
        &self,
        text: &str,
        within: Duration,
    ) -> Result<Located<Target>, FleetError> {
        let text = text.trim();
        if is_full_id(text) {
            if let Ok(PrefixMatch::One(item)) = self.inner.tree.resolve(text).await {
                return Ok(Located {
                    node: self.inner.name.clone(),
                    item,
                });
            }
        }
        let mut matches = Vec::new();
        let mut missing = Vec::new();
        let request = Ask::Resolve {
            text: text.to_string(),
        };
        for (node, answer) in self.fan_out(&request, within).await {
            match answer {
                Ok(Answer::Targets(targets)) => {
                    matches.extend(located(&node, targets));
                }
                other => missing.push(not_done(&node, other)),
            }
        }
        match matches.len() {
            1 => Ok(matches.remove(0)),
            0 => Err(FleetError::NotFound {
                text: text.to_string(),
                missing,
            }),
            _ => Err(FleetError::Ambiguous {
                text: text.to_string(),
                matches,
            }),
        }
    }

    /// Kills the connection or session `text` names, on whichever node holds it (see
    /// [`resolve`](Self::resolve)), and waits for its report.
    pub async fn kill(
        &self,
        text: &str,
        reason: &str,
        grace: Duration,
        by: Option<String>,
        within: Duration,
    ) -> Result<Located<KillReport>, FleetError> {
        let Located { node, item: target } = self.resolve(text, within).await?;
        let agent = self
            .inner
            .lock()
            .nodes()
            .get(&node)
            .and_then(|m| m.agent.clone());
        let Some(agent) = agent else {
            return Err(FleetError::Node {
                node,
                error: "its link closed after it was found".into(),
            });
        };
        let request = Ask::Kill {
            target,
            reason: reason.to_string(),
            grace,
            by: Some(self.origin(by)),
        };
        match ask(&agent, &request, kill_bound(grace, within))
            .await
            .map_err(Unasked::Asked)
        {
            Ok(Answer::Killed(item)) => Ok(Located { node, item }),
            other => {
                let error = not_done(&node, other).error.unwrap_or_default();
                Err(FleetError::Node { node, error })
            }
        }
    }

    /// Events of every node, tagged with the node, until the receiver is dropped: each node
    /// that is up is asked every 200 ms for what happened since; a node leaving or
    /// rejoining the view is reported too.
    pub fn watch(&self) -> mpsc::Receiver<FleetEvent> {
        let (tx, rx) = mpsc::channel(1024);
        let fleet = self.clone();
        tokio::spawn(async move {
            let mut cursors: HashMap<String, u64> = HashMap::new();
            let mut states: HashMap<String, NodeState> = HashMap::new();
            let mut tick = tokio::time::interval(WATCH_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if tx.is_closed() {
                    return;
                }
                let rows: Vec<(String, Member)> = fleet
                    .inner
                    .lock()
                    .nodes()
                    .iter()
                    .map(|(n, m)| (n.clone(), m.clone()))
                    .collect();
                let mut out = Vec::new();
                for (node, row) in &rows {
                    let before = states.insert(node.clone(), row.state);
                    match (before, row.state) {
                        (Some(NodeState::Up), NodeState::Unreachable(at)) => out.push(FleetEvent {
                            node: node.clone(),
                            at,
                            what: Watched::Unreachable,
                        }),
                        (Some(NodeState::Unreachable(_)), NodeState::Up) => out.push(FleetEvent {
                            node: node.clone(),
                            at: SystemTime::now(),
                            what: Watched::Up,
                        }),
                        _ => {}
                    }
                }
                let polls = rows.iter().filter_map(|(node, row)| {
                    let agent = row.agent.clone().filter(|_| row.state == NodeState::Up)?;
                    let from = cursors.get(node).copied();
                    Some(async move {
                        let answer = ask(&agent, &Ask::Events { from }, DEFAULT_NODE_TIMEOUT).await;
                        (node.clone(), from, answer)
                    })
                });
                for (node, from, answer) in join_all(polls).await {
                    let Ok(Answer::Events(batch)) = answer else {
                        continue;
                    };
                    if let Some(from) = from {
                        // A restarted node counts from zero again.
                        let missed = if batch.next < from {
                            from
                        } else {
                            batch.missed
                        };
                        if missed > 0 {
                            out.push(FleetEvent {
                                node: node.clone(),
                                at: SystemTime::now(),
                                what: Watched::Missed(missed),
                            });
                        }
                        out.extend(batch.events.into_iter().map(|(at, event)| FleetEvent {
                            node: node.clone(),
                            at,
                            what: Watched::Event(event),
                        }));
                    }
                    cursors.insert(node, batch.next);
                }
                for event in out {
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }

    /// Asks every node that is up, in parallel, each bounded by `within`; a node known
    /// unreachable is answered for at once. Returns one entry per node, by name.
    async fn fan_out(
        &self,
        request: &Ask,
        within: Duration,
    ) -> Vec<(String, Result<Answer, Unasked>)> {
        let rows: Vec<(String, Option<ActorRef<AgentMsg>>, NodeState)> = self
            .inner
            .lock()
            .nodes()
            .iter()
            .map(|(n, m)| (n.clone(), m.agent.clone(), m.state))
            .collect();
        join_all(rows.into_iter().map(|(node, agent, state)| async move {
            let answer = match (state, agent) {
                (NodeState::Up, Some(agent)) => {
                    ask(&agent, request, within).await.map_err(Unasked::Asked)
                }
                (NodeState::Unreachable(since), _) => Err(Unasked::Unreachable(since)),
                (NodeState::Up, None) => Err(Unasked::Asked(AskError::Lost)),
            };
            (node, answer)
        }))
        .await
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Each of `items`, tagged with the `node` that holds it.
fn located<'a, T: 'a>(node: &'a str, items: Vec<T>) -> impl Iterator<Item = Located<T>> + 'a {
    items.into_iter().map(move |item| Located {
        node: node.to_string(),
        item,
    })
}

impl FleetKill {
    /// `node` killed these.
    fn killed(&mut self, node: &str, reports: Vec<KillReport>) {
        self.nodes.push(NodeOutcome::answered(node, reports.len()));
        self.reports.extend(located(node, reports));
    }

    /// `node` killed these and `omitted` more, whose reports did not fit in its answer.
    fn cut(&mut self, node: &str, reports: Vec<KillReport>, omitted: usize) {
        let mut answered = NodeOutcome::answered(node, reports.len() + omitted);
        answered.error = Some(format!(
            "{omitted} of its reports were left out: the answer was too big for one link message"
        ));
        self.nodes.push(answered);
        self.reports.extend(located(node, reports));
    }
}

/// Why a node's answer is missing.
enum Unasked {
    Asked(AskError),
    Unreachable(SystemTime),
}

/// The outcome of a node that did not do what was asked.
fn not_done(node: &str, answer: Result<Answer, Unasked>) -> NodeOutcome {
    let (status, error) = match answer {
        Ok(Answer::Error(e)) => (Reply::Failed, e),
        Ok(other) => (
            Reply::Failed,
            format!("unexpected answer: {}", variant(&other)),
        ),
        Err(Unasked::Asked(AskError::NotAnswering(within))) => (
            Reply::NotAnswering,
            format!(
                "did not answer within {}",
                humantime::format_duration(within)
            ),
        ),
        Err(Unasked::Asked(AskError::Lost)) => (
            Reply::Lost,
            "its link closed before it answered".to_string(),
        ),
        Err(Unasked::Asked(AskError::Garbled(e))) => (Reply::Failed, e),
        Err(Unasked::Unreachable(since)) => (
            Reply::Unreachable,
            format!(
                "unreachable since {}",
                humantime::format_rfc3339_seconds(since)
            ),
        ),
    };
    NodeOutcome {
        node: node.to_string(),
        status,
        error: Some(error),
        count: None,
    }
}

/// The name of an answer's kind, for an error.
pub(super) fn variant(answer: &Answer) -> &'static str {
    match answer {
        Answer::Status(_) => "status",
        Answer::Connections(_) => "connections",
        Answer::Targets(_) => "targets",
        Answer::Killed(_) => "killed",
        Answer::KilledMany(_) | Answer::KilledSome { .. } => "killed many",
        Answer::Events(_) => "events",
        Answer::Error(_) => "error",
    }
}

/// How long a node may take to answer a kill with `grace`.
fn kill_bound(grace: Duration, within: Duration) -> Duration {
    grace + KILL_ALLOWANCE + within
}

/// Whether `text` is a whole connection or session ID (not a prefix).
fn is_full_id(text: &str) -> bool {
    text.parse::<ConnId>().is_ok() || text.parse::<SessionId>().is_ok()
}
