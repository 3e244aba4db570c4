//! Idle timeouts: when idle time counts from, and the check that fires when it may be over.

use std::time::Duration;

/// When idle time is counted from, for a connection's or a session's idle timeout: the later
/// of the last traffic the link saw and the clock's floor (the start, or the last change of
/// the limit, so that a lowered limit never ends anything at the moment it changes). Checks
/// armed under an older limit carry an older generation and are ignored.
#[derive(Debug)]
pub(crate) struct IdleClock {
    floor: tokio::time::Instant,
    generation: u64,
}

impl IdleClock {
    pub(crate) fn new() -> Self {
        Self {
            floor: tokio::time::Instant::now(),
            generation: 0,
        }
    }

    /// Counts from now; checks armed before are void.
    pub(crate) fn restart(&mut self) {
        self.floor = tokio::time::Instant::now();
        self.generation += 1;
    }

    /// The generation a check armed now carries.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// How long it has been idle, given what the link says (`None`: it does not know).
    pub(crate) fn idle_for(&self, link_idle: Option<Duration>) -> Duration {
        let since_floor = self.floor.elapsed();
        link_idle.map_or(since_floor, |idle| idle.min(since_floor))
    }
}

impl IdleClock {
    /// Arms the idle check for `delay` from now under the current limit: `check(generation)` is
    /// the actor's own check message.
    pub(crate) fn arm<M: ractor::Message>(
        &self,
        timers: &mut crate::timers::Timers,
        myself: &ractor::ActorRef<M>,
        delay: Duration,
        check: impl FnOnce(u64) -> M + Send + 'static,
    ) {
        let generation = self.generation;
        timers.after(myself, delay, move || check(generation));
    }
}

impl IdleClock {
    /// Whether `limit` is reached, given what the link says: `None` when it is, otherwise how
    /// long until it would be (when to check again).
    pub(crate) fn check(&self, limit: Duration, link_idle: Option<Duration>) -> Option<Duration> {
        let idle_for = self.idle_for(link_idle);
        (idle_for < limit).then(|| limit - idle_for)
    }
}
