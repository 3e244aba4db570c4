//! Who waits on a kill: the callers of `Kill` on one target ([`Waiter`]) and the kills of many
//! connections at once ([`Group`], for `KillAll` and `KillWhere`), each answered exactly once,
//! when what it waits on is gone.

use std::collections::HashSet;
use std::net::SocketAddr;

use ractor::RpcReplyPort;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::ids::{ConnId, Target};
use crate::report::{KillError, KillReport};

/// How a target ended, for the reports of everyone waiting on it.
pub(crate) struct Ending {
    pub(crate) target: Target,
    pub(crate) sessions_closed: usize,
    pub(crate) forced: bool,
    pub(crate) processes_left: usize,
    /// Whose connection it was: its user, if it logged in, and its client's address.
    pub(crate) user: Option<String>,
    pub(crate) peer: SocketAddr,
}

impl Ending {
    /// The report of a kill that began at `since`.
    fn report(&self, since: Instant) -> KillReport {
        KillReport {
            target: self.target,
            sessions_closed: self.sessions_closed,
            elapsed: since.elapsed(),
            forced: self.forced,
            processes_left: self.processes_left,
            user: self.user.clone(),
            peer: Some(self.peer),
        }
    }
}

/// A caller of `Kill` waiting for its target to be gone.
pub(crate) struct Waiter {
    pub(crate) reply: RpcReplyPort<Result<KillReport, KillError>>,
    pub(crate) since: Instant,
}

impl Waiter {
    /// A waiter from now on.
    pub(crate) fn new(reply: RpcReplyPort<Result<KillReport, KillError>>) -> Self {
        Self {
            reply,
            since: Instant::now(),
        }
    }

    /// Answers every waiter with the report of `ending`.
    pub(crate) fn answer_all(waiters: Vec<Waiter>, ending: &Ending) {
        for waiter in waiters {
            // A caller that gave up waiting is no longer there to answer.
            let _ = waiter.reply.send(Ok(ending.report(waiter.since)));
        }
    }
}

/// One kill of many connections: one reply once all of them are gone.
struct Group {
    id: u64,
    pending: HashSet<ConnId>,
    reports: Vec<KillReport>,
    since: Instant,
    reply: RpcReplyPort<Vec<KillReport>>,
    /// The one timer of the kill's grace, for all its connections; stopped once all are gone.
    grace_timer: AbortHandle,
}

/// The kill groups under way.
#[derive(Default)]
pub(crate) struct KillGroups {
    groups: Vec<Group>,
    /// The last group's ID.
    last: u64,
}

impl KillGroups {
    /// The ID the next group will get (its grace timer is armed before it is added).
    pub(crate) fn next_id(&self) -> u64 {
        self.last + 1
    }

    /// Adds the group of `pending`, with ID [`next_id`](Self::next_id).
    pub(crate) fn add(
        &mut self,
        pending: HashSet<ConnId>,
        reply: RpcReplyPort<Vec<KillReport>>,
        grace_timer: AbortHandle,
    ) {
        self.last += 1;
        self.groups.push(Group {
            id: self.last,
            reports: Vec::with_capacity(pending.len()),
            pending,
            since: Instant::now(),
            reply,
            grace_timer,
        });
    }

    /// The connections a group still waits on (none for a group already answered).
    pub(crate) fn pending(&self, group: u64) -> impl Iterator<Item = &ConnId> {
        self.groups
            .iter()
            .filter(move |g| g.id == group)
            .flat_map(|g| g.pending.iter())
    }

    /// How many groups wait.
    pub(crate) fn len(&self) -> usize {
        self.groups.len()
    }

    /// A connection is gone: every group waiting on it gets its report, and a group with
    /// nothing left to wait on gets its reply.
    pub(crate) fn connection_gone(&mut self, conn: ConnId, ending: &Ending) {
        let mut i = 0;
        while i < self.groups.len() {
            let group = &mut self.groups[i];
            if group.pending.remove(&conn) {
                group.reports.push(ending.report(group.since));
                if group.pending.is_empty() {
                    let group = self.groups.swap_remove(i);
                    group.grace_timer.abort();
                    let _ = group.reply.send(group.reports);
                    continue;
                }
            }
            i += 1;
        }
    }
}
