//! Messages an actor sends itself later: the grace, the cut, the give-up, the idle checks.

use std::time::Duration;

use ractor::concurrency::JoinHandle;
use ractor::{ActorRef, Message};

/// The pending self-messages of one actor, aborted when it stops (a message to a stopped actor
/// would only be dropped, but its task would live until the delay ran out).
#[derive(Default)]
pub(crate) struct Timers(Vec<JoinHandle<()>>);

impl Timers {
    /// Sends `msg()` to `myself` after `delay`.
    pub(crate) fn after<M: Message>(
        &mut self,
        myself: &ActorRef<M>,
        delay: Duration,
        msg: impl FnOnce() -> M + Send + 'static,
    ) {
        let target = myself.clone();
        self.0.retain(|t| !t.is_finished());
        self.0.push(ractor::concurrency::spawn(async move {
            ractor::concurrency::sleep(delay).await;
            let _ = target.cast(msg());
        }));
    }

    /// Aborts every pending message (at the actor's stop).
    pub(crate) fn abort_all(&mut self) {
        for timer in self.0.drain(..) {
            timer.abort();
        }
    }
}
