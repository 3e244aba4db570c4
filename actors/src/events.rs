//! Lifecycle events as a plain channel, for code that is not an actor.
//!
//! ractor's `OutputPort` delivers to actors. [`subscribe`] spawns a tiny forwarding actor so a
//! task (a test, the control socket's `watch`, a host's logger) can simply `recv().await` events.
//! The forwarder stops by itself once the receiver is dropped.

use ractor::{Actor, ActorProcessingErr, ActorRef, OutputPort, SpawnErr};
use tokio::sync::mpsc;

use crate::report::Event;

struct Forwarder;

impl Actor for Forwarder {
    type Msg = Event;
    type State = mpsc::UnboundedSender<Event>;
    type Arguments = mpsc::UnboundedSender<Event>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Event>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle(
        &self,
        myself: ActorRef<Event>,
        event: Event,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if tx.send(event).is_err() {
            myself.stop(None);
        }
        Ok(())
    }
}

/// Subscribes to `port` and returns the events as a channel, in publication order.
pub async fn subscribe(
    port: &OutputPort<Event>,
) -> Result<mpsc::UnboundedReceiver<Event>, SpawnErr> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (actor, _) = Actor::spawn(None, Forwarder, tx).await?;
    port.subscribe(actor, Some);
    Ok(rx)
}
