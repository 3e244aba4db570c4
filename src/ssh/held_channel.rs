//! A session channel's own russh queue, held (and kept empty) until the session starts.
//!
//! russh hands every request and every byte of a session channel to its `Channel` as well as to
//! the handler's callbacks, through a queue of `channel_buffer_size` (100) messages, and waits
//! for room in that queue inside its session loop. A queue nobody reads stops the whole
//! connection: a client's 101st request before `exec` was never answered, and its leaving was
//! never noticed (the connection and its session stayed listed until an operator killed them).
//!
//! Until the session starts nothing reads the queue (only an in-process subsystem will, as a
//! stream), and everything in it also reaches the handler's callbacks, which answer it: so the
//! handler discards what waits there on every callback that follows a queued message. Once the
//! session starts, it takes the channel (an in-process subsystem or command reads it as a
//! stream from there on) or drops it (everything else: russh's sends then fail at once).

use std::sync::{Arc, Mutex};

use futures::FutureExt;
use russh::server::Msg;
use russh::{Channel, ChannelId};

/// A session channel shared by the handler (which drains it) and the session (which takes or
/// drops it when it starts). Cheap to clone.
#[derive(Clone)]
pub struct HeldChannel {
    id: ChannelId,
    slot: Arc<Mutex<Option<Channel<Msg>>>>,
}

impl HeldChannel {
    /// Holds `channel` until it is taken or released.
    pub fn new(channel: Channel<Msg>) -> Self {
        Self {
            id: channel.id(),
            slot: Arc::new(Mutex::new(Some(channel))),
        }
    }

    /// The channel's ID.
    pub fn id(&self) -> ChannelId {
        self.id
    }

    /// Discards every message waiting in the channel's queue, without ever waiting; nothing
    /// once the channel was taken or released.
    pub fn drain(&self) {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        let Some(channel) = slot.as_mut() else {
            return;
        };
        // Unconstrained: tokio's cooperative budget could make a ready receive look pending.
        while let Some(Some(_)) = tokio::task::unconstrained(channel.wait()).now_or_never() {}
    }

    /// Takes the channel (for an in-process session, which reads it as a stream).
    pub fn take(&self) -> Option<Channel<Msg>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Drops the channel: from now on russh's sends to it fail at once instead of queueing.
    pub fn release(&self) {
        drop(self.take());
    }
}
