//! Process-wide counts of what session containment did, read by the metrics at scrape time.
//!
//! Process-wide because the reaping is: the daemon is the process's one child subreaper, and
//! every session's cgroup comes from one root. Relaxed atomics: a count, never a decision.

use std::sync::atomic::{AtomicU64, Ordering};

static REAPED: AtomicU64 = AtomicU64::new(0);
static ESCAPED: AtomicU64 = AtomicU64::new(0);

/// Session processes reaped: session leaders by their sessions, adopted orphans by the
/// daemon's subreaper.
pub fn processes_reaped() -> u64 {
    REAPED.load(Ordering::Relaxed)
}

/// Processes found still running in a session's scope after its leader ended (escaped its
/// process group, or left behind), and killed with it.
pub fn escaped_caught() -> u64 {
    ESCAPED.load(Ordering::Relaxed)
}

pub(crate) fn reaped(n: usize) {
    REAPED.fetch_add(n as u64, Ordering::Relaxed);
}

pub(crate) fn caught(n: usize) {
    ESCAPED.fetch_add(n as u64, Ordering::Relaxed);
}
