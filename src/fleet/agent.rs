//! The fleet agent: one actor per node, in the fleet's process group, answering other nodes
//! (and its own) through the node's [`SupervisorHandle`].
//!
//! It decides nothing: every [`Ask`] becomes one call on the handle, made in a task of its own
//! so that a kill's seconds never hold up a listing or a heartbeat behind it. A remote kill is
//! the node's own kill, with the same reports and the same audit line (`by` names the node
//! that asked).
//!
//! Once the node leaves the fleet, the requests still in its tasks go unanswered: their askers
//! see the node lost, as when its link closes, rather than an answer from a node no longer in
//! the fleet (in one process, where no link closes, that answer would be the stopping tree's
//! error). What a request already asked of the tree (a kill) runs to its end there.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use sshvisor_actors::{Event, HandleError, KillReport, PrefixMatch, Selection, SupervisorHandle};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::audit::{Audit, AuditRecord, Initiator};

use super::wire::{
    decode, encode, AgentMsg, Answer, Ask, EventBatch, NodeStatus, EVENT_BACKLOG, MAX_ANSWER,
};

/// How long a status may wait for the tree's counts: the heartbeat must not miss a busy node.
const STATUS_COUNTS_WITHIN: Duration = Duration::from_millis(300);

/// What an agent serves.
#[derive(Clone)]
pub struct AgentArgs {
    /// This node's name.
    pub name: String,
    /// The process-group scope of the fleet.
    pub scope: String,
    /// Where other nodes reach this one, when it listens.
    pub fleet_addr: Option<String>,
    /// The node's SSH address.
    pub ssh_addr: Option<String>,
    /// The node's tree.
    pub tree: SupervisorHandle,
    /// True (or closed) once the node leaves the fleet: requests in flight are dropped then.
    pub leaving: watch::Receiver<bool>,
    /// Where the kills asked of this node are recorded, if anywhere.
    pub audit: Option<Audit>,
}

/// The fleet agent (see the module's documentation).
pub struct FleetAgent;

/// What an agent keeps: its arguments and the events its remote watchers read.
pub struct AgentState {
    args: Arc<AgentArgs>,
    events: Arc<EventLog>,
}

impl Actor for FleetAgent {
    type Msg = AgentMsg;
    type State = AgentState;
    type Arguments = AgentArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AgentMsg>,
        args: AgentArgs,
    ) -> Result<AgentState, ActorProcessingErr> {
        ractor::pg::join_scoped(
            args.scope.clone(),
            super::wire::GROUP.to_string(),
            vec![myself.get_cell()],
        );
        info!(node = %args.name, "fleet agent started");
        Ok(AgentState {
            args: Arc::new(args),
            events: Arc::new(EventLog::default()),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<AgentMsg>,
        message: AgentMsg,
        state: &mut AgentState,
    ) -> Result<(), ActorProcessingErr> {
        let AgentMsg::Ask(bytes, reply) = message;
        let args = state.args.clone();
        let events = state.events.clone();
        let mut leaving = state.args.leaving.clone();
        tokio::spawn(async move {
            let answer = async {
                match decode::<Ask>(&bytes) {
                    Ok(ask) => serve(ask, &args, &events).await,
                    Err(e) => {
                        warn!(error = %e, "fleet: a request this node cannot read (another version?)");
                        Answer::Error(format!("node {}: {e}", args.name))
                    }
                }
            };
            tokio::select! {
                // Leaving wins over an answer ready at the same time: after `leave` this node
                // answers nothing (the asker sees it lost).
                biased;
                _ = leaving.wait_for(|left| *left) => {}
                answer = answer => {
                    let _ = reply.send(fitted(answer, &args.name));
                }
            }
        });
        Ok(())
    }
}

/// One request, answered through the tree's handle.
async fn serve(ask: Ask, args: &AgentArgs, events: &Arc<EventLog>) -> Answer {
    let tree = &args.tree;
    let failed = |e: HandleError| Answer::Error(e.to_string());
    match ask {
        Ask::Status => Answer::Status(status(args).await),
        Ask::List { filter } => match tree.select(filter).await {
            Ok(all) => Answer::Connections(all),
            Err(e) => failed(e),
        },
        Ask::Resolve { text } => match tree.resolve(&text).await {
            Ok(PrefixMatch::One(target)) => Answer::Targets(vec![target]),
            Ok(PrefixMatch::None) => Answer::Targets(Vec::new()),
            Ok(PrefixMatch::Ambiguous(all)) => Answer::Targets(all),
            Err(e) => failed(e),
        },
        Ask::Kill {
            target,
            reason,
            grace,
            by,
        } => {
            info!(%target, reason = %reason, by = by.as_deref(), "audit: kill requested by the fleet");
            let (reason_text, by_text) = (reason.clone(), by.clone());
            match tree.kill(target, reason, grace, by).await {
                Ok(report) => {
                    info!(%target, forced = report.forced, elapsed_ms = report.elapsed.as_secs_f64() * 1e3, "audit: kill done");
                    // The record is in the file before the answer goes back.
                    if let Some(audit) = &args.audit {
                        let origin = by_text.unwrap_or_default();
                        let by = Initiator::Fleet { origin };
                        audit
                            .write(AuditRecord::kill(by, &report, &reason_text))
                            .await;
                    }
                    Answer::Killed(report)
                }
                Err(HandleError::NotFound(target)) => {
                    Answer::Error(format!("{target} ended before the kill reached it"))
                }
                Err(e) => failed(e),
            }
        }
        Ask::KillWhere {
            filter,
            dry_run: true,
            ..
        } => match tree.select(filter).await {
            Ok(all) => Answer::Connections(all),
            Err(e) => failed(e),
        },
        Ask::KillWhere {
            filter,
            reason,
            grace,
            by,
            dry_run: false,
        } => {
            info!(?filter, reason = %reason, by = by.as_deref(), "audit: kill by filter requested by the fleet");
            let (reason_text, origin) = (reason.clone(), by.clone().unwrap_or_default());
            match tree.kill_where(filter, reason, grace, by).await {
                Ok(reports) => {
                    record_fleet_kills(&args.audit, &origin, &reports, &reason_text).await;
                    Answer::KilledMany(reports)
                }
                Err(e) => failed(e),
            }
        }
        Ask::KillWarned {
            filter,
            reason,
            notice,
            grace,
            by,
        } => {
            info!(?filter, reason = %reason, notice = %humantime::format_duration(notice), by = by.as_deref(), "audit: announced kill by filter requested by the fleet");
            let (reason_text, origin) = (reason.clone(), by.clone().unwrap_or_default());
            let which = Selection::Where(filter);
            match tree.kill_warned(which, reason, notice, grace, by).await {
                Ok(reports) => {
                    record_fleet_kills(&args.audit, &origin, &reports, &reason_text).await;
                    Answer::KilledMany(reports)
                }
                Err(e) => failed(e),
            }
        }
        Ask::Events { from } => match events.clone().since(tree, from).await {
            Ok(batch) => Answer::Events(batch),
            Err(e) => failed(e),
        },
    }
}

/// Records the kills of a set the fleet asked for (`origin`: who, on which node), before the
/// answer goes back.
async fn record_fleet_kills(
    audit: &Option<Audit>,
    origin: &str,
    reports: &[KillReport],
    reason: &str,
) {
    if let Some(audit) = audit {
        let records = reports.iter().map(|report| {
            let by = Initiator::Fleet {
                origin: origin.to_string(),
            };
            AuditRecord::kill(by, report, reason)
        });
        audit.write_all(records).await;
    }
}

/// `answer` encoded within [`MAX_ANSWER`]: a listing too big for one answer is refused with
/// advice, a set of kill reports is cut to what fits (the kills are done).
fn fitted(answer: Answer, node: &str) -> Vec<u8> {
    let bytes = encode(&answer);
    if bytes.len() <= MAX_ANSWER {
        return bytes;
    }
    let mib = |n: usize| n as f64 / (1024.0 * 1024.0);
    warn!(
        node,
        bytes = bytes.len(),
        "fleet: an answer is too big for one link message"
    );
    let smaller = match answer {
        Answer::KilledMany(mut reports) => {
            let keep = reports.len() * MAX_ANSWER / bytes.len() * 9 / 10;
            let omitted = reports.len() - keep;
            reports.truncate(keep);
            Answer::KilledSome { reports, omitted }
        }
        Answer::Connections(all) => Answer::Error(format!(
            "node {node}: the answer ({} connections, {:.1} MiB) is over the {:.0} MiB one link message carries: narrow it with a filter (--user, --peer, --older-than, ...)",
            all.len(),
            mib(bytes.len()),
            mib(MAX_ANSWER)
        )),
        other => Answer::Error(format!(
            "node {node}: its answer ({:.1} MiB, {}) is over the {:.0} MiB one link message carries",
            mib(bytes.len()),
            super::view::variant(&other),
            mib(MAX_ANSWER)
        )),
    };
    encode(&smaller)
}

/// This node's status; the counts only when the tree gives them quickly.
async fn status(args: &AgentArgs) -> NodeStatus {
    let stats = args
        .tree
        .clone()
        .with_timeout(STATUS_COUNTS_WITHIN)
        .stats()
        .await
        .ok();
    NodeStatus {
        name: args.name.clone(),
        fleet_addr: args.fleet_addr.clone(),
        ssh_addr: args.ssh_addr.clone(),
        connections: stats.as_ref().map(|s| s.connections),
        sessions: stats.as_ref().map(|s| s.sessions),
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// The node's recent events, kept for remote watchers once one has asked (a node nobody
/// watches keeps nothing).
#[derive(Default)]
struct EventLog {
    kept: Mutex<Kept>,
    started: tokio::sync::OnceCell<()>,
}

#[derive(Default)]
struct Kept {
    /// The sequence number of the next event.
    next: u64,
    events: VecDeque<(u64, SystemTime, Event)>,
}

impl EventLog {
    /// The events from `from` on; the first ask starts the keeping.
    async fn since(
        self: Arc<Self>,
        tree: &SupervisorHandle,
        from: Option<u64>,
    ) -> Result<EventBatch, HandleError> {
        self.started
            .get_or_try_init(|| async {
                let mut events = tree.subscribe().await?;
                let log = Arc::downgrade(&self);
                tokio::spawn(async move {
                    while let Some(event) = events.recv().await {
                        let Some(log) = log.upgrade() else { return };
                        log.push(event);
                    }
                });
                Ok::<(), HandleError>(())
            })
            .await?;
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let Some(from) = from else {
            return Ok(EventBatch {
                next: kept.next,
                events: Vec::new(),
                missed: 0,
            });
        };
        let oldest = kept.events.front().map_or(kept.next, |(seq, _, _)| *seq);
        Ok(EventBatch {
            next: kept.next,
            events: kept
                .events
                .iter()
                .filter(|(seq, _, _)| *seq >= from)
                .map(|(_, at, event)| (*at, event.clone()))
                .collect(),
            missed: oldest.saturating_sub(from),
        })
    }

    fn push(&self, event: Event) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let seq = kept.next;
        kept.next += 1;
        if kept.events.len() == EVENT_BACKLOG {
            kept.events.pop_front();
        }
        kept.events.push_back((seq, SystemTime::now(), event));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sshvisor_actors::{ConnId, KillReport, Target};

    fn report() -> KillReport {
        KillReport {
            target: Target::Connection(ConnId::new_random()),
            sessions_closed: 1,
            elapsed: Duration::from_millis(3),
            forced: false,
            processes_left: 0,
            user: Some("alice".into()),
            peer: Some("192.0.2.7:50022".parse().unwrap()),
        }
    }

    #[test]
    fn an_answer_too_big_for_one_link_message_is_cut_or_refused_never_sent() {
        let small = Answer::KilledMany(vec![report(); 10]);
        assert_eq!(
            decode::<Answer>(&fitted(small.clone(), "a")).unwrap(),
            small
        );
        // About 150 bytes a report: well over MAX_ANSWER.
        let many = MAX_ANSWER / 100;
        let bytes = fitted(Answer::KilledMany(vec![report(); many]), "a");
        assert!(bytes.len() <= MAX_ANSWER);
        match decode::<Answer>(&bytes).unwrap() {
            Answer::KilledSome { reports, omitted } => {
                assert_eq!(reports.len() + omitted, many);
                assert!(omitted > 0 && !reports.is_empty());
            }
            other => panic!("not cut: {}", super::super::view::variant(&other)),
        }
    }
}
