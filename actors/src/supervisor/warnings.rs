//! Kills announced ahead: which connections wait for which announced kill, until its deadline
//! or until an operator cancels it.
//!
//! A warned kill names its connections when it is asked (an ID, or a filter's matches then);
//! each is listed with its [`PendingKill`](crate::report::PendingKill) and its terminals are
//! told at once. At the deadline the connections still waiting are killed as one set, and the
//! caller gets their reports; a connection cancelled, or gone meanwhile, is left out.

use std::collections::HashMap;
use std::time::Duration;

use ractor::RpcReplyPort;

use crate::ids::ConnId;
use crate::report::KillReport;

/// One announced kill.
pub(crate) struct Warning {
    /// Its connections as asked (some may be cancelled or gone by the deadline).
    pub(crate) conns: Vec<ConnId>,
    pub(crate) reason: String,
    pub(crate) grace: Duration,
    pub(crate) by: Option<String>,
    /// Answered with the reports of the kill at the deadline.
    pub(crate) reply: RpcReplyPort<Vec<KillReport>>,
}

/// Every announced kill not yet carried out.
#[derive(Default)]
pub(crate) struct Warnings {
    next: u64,
    warnings: HashMap<u64, Warning>,
    /// Which warning each waiting connection belongs to (the latest, if warned twice).
    waiting: HashMap<ConnId, u64>,
}

impl Warnings {
    /// Records `warning`; returns its number, for its deadline.
    pub(crate) fn add(&mut self, warning: Warning) -> u64 {
        self.next += 1;
        for conn in &warning.conns {
            self.waiting.insert(*conn, self.next);
        }
        self.warnings.insert(self.next, warning);
        self.next
    }

    /// Withdraws `conn` from the kill it waits for: `None` when it waits for none; otherwise
    /// that kill, when no connection waits for it any more (its caller is answered now, not
    /// at the deadline).
    pub(crate) fn cancel(&mut self, conn: ConnId) -> Option<Option<Warning>> {
        let number = self.waiting.remove(&conn)?;
        let still_waiting = self.waiting.values().any(|n| *n == number);
        Some(
            (!still_waiting)
                .then(|| self.warnings.remove(&number))
                .flatten(),
        )
    }

    /// The warning whose deadline came, with only the connections still waiting for it.
    pub(crate) fn due(&mut self, number: u64) -> Option<Warning> {
        let mut warning = self.warnings.remove(&number)?;
        warning
            .conns
            .retain(|conn| self.waiting.get(conn) == Some(&number));
        for conn in &warning.conns {
            self.waiting.remove(conn);
        }
        Some(warning)
    }

    /// How many warnings wait for their deadline.
    pub(crate) fn len(&self) -> usize {
        self.warnings.len()
    }
}
