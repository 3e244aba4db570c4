//! The russh side of a connection's [`ConnectionLink`].
//!
//! The russh `Handle` exists only once the client's banner has arrived, later than the
//! connection actor, so the link holds it in a cell filled by the connection's task. Nothing here
//! awaits on the actor's behalf: the disconnect is queued from a task of its own (it may wait
//! behind a stalled client forever, until the stream is cut), and [`abort`](ConnectionLink::abort)
//! cuts the stream at once.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::task::Context;

use russh::server::Handle;
use russh::Disconnect;
use sshvisor_actors::{ConnectionLink, Traffic};

use crate::ssh::activity::Activity;
use crate::ssh::after_goodbye::AfterGoodbye;
use crate::ssh::stream::CutSwitch;

/// The link of one russh connection.
pub struct RusshConnectionLink {
    handle: Arc<OnceLock<Handle>>,
    switch: Arc<CutSwitch>,
    activity: Arc<Activity>,
    after_goodbye: Arc<AfterGoodbye>,
}

impl RusshConnectionLink {
    /// A link over the handle cell, cut switch, activity and goodbye keeper of one connection.
    pub fn new(
        handle: Arc<OnceLock<Handle>>,
        switch: Arc<CutSwitch>,
        activity: Arc<Activity>,
        after_goodbye: Arc<AfterGoodbye>,
    ) -> Self {
        Self {
            handle,
            switch,
            activity,
            after_goodbye,
        }
    }
}

impl ConnectionLink for RusshConnectionLink {
    fn disconnect(&self, reason: &str) {
        let Some(handle) = self.handle.get().cloned() else {
            // Still before the banner: there is no SSH session to say goodbye on.
            self.switch.cut();
            return;
        };
        let reason = reason.to_string();
        let after_goodbye = self.after_goodbye.clone();
        let eofs = after_goodbye.take_eofs();
        if !eofs.is_empty() {
            // russh would flush each EOF on its own: kept until the DISCONNECT is written too.
            self.switch.cork();
        }
        // Ends by itself: queued, or failed once the session loop is gone (after a cut).
        let mut goodbye = Box::pin(async move {
            for channel in eofs {
                let _ = handle.eof(channel).await;
            }
            let _ = handle
                .disconnect(Disconnect::ByApplication, reason, "en".into())
                .await;
            after_goodbye.release();
        });
        // Almost always there is room in russh's queue: queued here and now, without a task
        // (and the hop to it). A full queue (a stalled client) finishes in a task of its own,
        // which polls again with its own waker.
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        if goodbye.as_mut().poll(&mut cx).is_pending() {
            tokio::spawn(goodbye);
        }
    }

    fn abort(&self) {
        self.switch.cut();
        self.after_goodbye.release();
    }

    fn traffic(&self) -> Option<Arc<dyn Traffic>> {
        Some(self.activity.clone())
    }
}

impl Drop for RusshConnectionLink {
    fn drop(&mut self) {
        // The connection actor is gone (normally after the transport ended; or it crashed):
        // never leave a transport behind without an actor.
        self.switch.cut();
    }
}
