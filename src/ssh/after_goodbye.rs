//! What a connection keeps until its DISCONNECT is queued (the channel streams of sessions that
//! ended with it), so that no channel closes before the client has read why it was disconnected.

use std::sync::{Arc, Mutex};

use russh::ChannelId;

/// What a connection keeps until its DISCONNECT is queued: the channel streams of sessions that
/// ended with their connection. Dropping such a stream closes its channel (russh queues
/// CHANNEL_CLOSE), and a client that sees its channel close before the DISCONNECT may exit
/// without ever printing why it was disconnected.
#[derive(Default)]
pub struct AfterGoodbye {
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    /// The goodbye is queued: nothing is kept any more.
    released: bool,
    items: Vec<Box<dyn Send>>,
    /// Channels whose EOF goes out just before the DISCONNECT.
    eof: Vec<ChannelId>,
}

impl AfterGoodbye {
    /// Nothing held yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Keeps `item` until the goodbye is queued; drops it at once if it already is.
    pub fn hold(&self, item: Box<dyn Send>) {
        self.keep(item, None);
    }

    /// Like [`hold`](Self::hold), for the stream of `channel`, whose EOF is then queued with
    /// the DISCONNECT, just before it: russh sends both in one write.
    pub fn hold_with_eof(&self, channel: ChannelId, item: Box<dyn Send>) {
        self.keep(item, Some(channel));
    }

    fn keep(&self, item: Box<dyn Send>, eof: Option<ChannelId>) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.released {
            drop(held);
            drop(item);
            return;
        }
        held.items.push(item);
        held.eof.extend(eof);
    }

    /// The channels whose EOF the goodbye sends first.
    pub(crate) fn take_eofs(&self) -> Vec<ChannelId> {
        std::mem::take(&mut self.held.lock().unwrap_or_else(|e| e.into_inner()).eof)
    }

    /// The goodbye is queued (or the transport cut): drops everything held, and from now on
    /// whatever comes.
    pub fn release(&self) {
        let items = {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            held.released = true;
            std::mem::take(&mut held.items)
        };
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_goodbye_keeps_until_released_then_drops_at_once() {
        let item = Arc::new(());
        let keeper = AfterGoodbye::new();
        keeper.hold(Box::new(item.clone()));
        keeper.hold(Box::new(item.clone()));
        assert_eq!(Arc::strong_count(&item), 3, "held until the goodbye");
        keeper.release();
        assert_eq!(Arc::strong_count(&item), 1, "released with the goodbye");
        keeper.hold(Box::new(item.clone()));
        assert_eq!(
            Arc::strong_count(&item),
            1,
            "after the goodbye, dropped at once"
        );
    }
}
