//! The login timer: every connection logging in, by when its login grace runs out, timed by
//! one timer for all of them (armed for the earliest), not a timer task per connection.

use std::collections::BTreeSet;

use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::ids::ConnId;

/// Connections logging in, by login deadline, and the one timer.
#[derive(Default)]
pub(crate) struct Logins {
    deadlines: BTreeSet<(Instant, ConnId)>,
    /// When the armed timer goes off, and how to stop it.
    timer: Option<(Instant, AbortHandle)>,
}

impl Logins {
    /// Times a new login.
    pub(crate) fn insert(&mut self, deadline: Instant, conn: ConnId) {
        self.deadlines.insert((deadline, conn));
    }

    /// A connection leaves the logins (authenticated, closing or gone): its login grace is
    /// over. `deadline` is taken from its entry.
    pub(crate) fn forget(&mut self, deadline: &mut Option<Instant>, conn: ConnId) {
        if let Some(deadline) = deadline.take() {
            self.deadlines.remove(&(deadline, conn));
        }
    }

    /// When the timer must be armed for, unless it is armed for that or earlier already (a
    /// timer that finds nothing due re-arms for what is left).
    pub(crate) fn needs_arming(&self) -> Option<Instant> {
        let &(first, _) = self.deadlines.first()?;
        match &self.timer {
            Some((at, _)) if *at <= first => None,
            _ => Some(first),
        }
    }

    /// Records the timer armed for `at`; an earlier one is stopped.
    pub(crate) fn armed(&mut self, at: Instant, timer: AbortHandle) {
        if let Some((_, earlier)) = self.timer.replace((at, timer)) {
            earlier.abort();
        }
    }

    /// The timer went off: the logins past their grace, taken out.
    pub(crate) fn fired(&mut self, now: Instant) -> Vec<ConnId> {
        self.timer = None;
        let mut due = Vec::new();
        while let Some(&(deadline, conn)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            due.push(conn);
        }
        due
    }
}
