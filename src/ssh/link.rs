//! The russh side of a connection's [`ConnectionLink`].
//!
//! The russh `Handle` exists only once the client's banner has arrived, later than the
//! connection actor, so the link holds it in a cell filled by the connection's task. Nothing here
//! awaits on the actor's behalf: the disconnect is queued from a task of its own (it may wait
//! behind a stalled client forever, until the stream is cut), and [`abort`](ConnectionLink::abort)
//! cuts the stream at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use russh::server::Handle;
use russh::{ChannelId, Disconnect};
use sshvisor_actors::{ConnectionLink, Traffic};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::ssh::stream::CutSwitch;

/// A connection's or a session's channel traffic: when data last moved either way (for the idle
/// timeouts) and how many bytes (for listings). A session's activity counts for its connection
/// too.
#[derive(Debug)]
pub struct Activity {
    parent: Option<Arc<Activity>>,
    base: Instant,
    last_ms: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Activity {
    /// Activity starting now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            parent: None,
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        })
    }

    /// The activity of one session of this connection: what moves on it counts for both.
    pub fn child(self: &Arc<Self>) -> Arc<Self> {
        Arc::new(Self {
            parent: Some(self.clone()),
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let now = self.base.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// The client sent `bytes` of channel data.
    pub fn received(&self, bytes: usize) {
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
        self.touch();
        if let Some(parent) = &self.parent {
            parent.received(bytes);
        }
    }

    /// `bytes` of channel data went to the client.
    pub fn sent(&self, bytes: usize) {
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
        self.touch();
        if let Some(parent) = &self.parent {
            parent.sent(bytes);
        }
    }
}

impl Traffic for Activity {
    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }

    fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }
}

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
    fn take_eofs(&self) -> Vec<ChannelId> {
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

/// A stream whose writes count as data sent on `activity` (reads are counted by the russh
/// handler, which sees every byte the client sends).
pub struct CountedWrites<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> CountedWrites<S> {
    /// Counts what is written to `inner`.
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CountedWrites<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountedWrites<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &written {
            if *n > 0 {
                self.activity.sent(*n);
            }
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
