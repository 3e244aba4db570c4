//! A connection's and each of its sessions' channel traffic: when data last moved (the idle
//! timeouts) and how many bytes (listings), readable from any thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sshvisor_actors::Traffic;

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
