//! Prometheus metrics: the registry, fed by one subscription to the tree's events, and read
//! at scrape time from the tree's listing and the process-wide counts.
//!
//! `serve --metrics-listen ADDR` (config `metrics_listen`) serves them at `GET /metrics` in the
//! OpenMetrics text format ([`http`]). An embedding program makes its own with
//! [`Metrics::start`] and encodes or extends [`Metrics::registry`].
//!
//! What is counted where:
//! - from the events, one atomic add each (`figures`): connections accepted, refused by a
//!   limit, kills by initiator and outcome, bytes of ended connections, and the two
//!   histograms (kill duration, handshake to authenticated);
//! - at scrape time: live connections by state, sessions by kind and the live connections'
//!   bytes (one `list` of the tree), refusals at the door (the listener's penalty table),
//!   authentication failures, session processes reaped and escaped processes caught.
//!
//! No label has unbounded values: states, kinds, initiators, outcomes and limit names are
//! fixed sets (see `labels`); no user, ID or address is ever a label.

mod figures;
pub mod http;
mod labels;

use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use ractor::OutputPort;
use sshvisor_actors::{Event, SupervisorHandle};

use crate::ssh::penalties::Penalties;

pub use labels::Initiator;

use figures::Figures;

/// The metrics of one tree: its registry and what feeds it.
pub struct Metrics {
    registry: Mutex<Registry>,
    figures: Arc<Figures>,
    tree: SupervisorHandle,
}

/// Why the metrics could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The subscription to the tree's events could not be made.
    #[error("cannot subscribe to the tree's events for the metrics: {0}")]
    Subscribe(String),
    /// The HTTP address could not be bound.
    #[error("cannot listen for metrics on {addr}: {source} (is another program using it? pick another with --metrics-listen)")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// What went wrong.
        source: std::io::Error,
    },
}

impl Metrics {
    /// Subscribes to `events` (the tree's port) and registers every sshvisor metric under the
    /// prefix `sshvisor`. Events published before this call are not counted.
    pub async fn start(
        tree: SupervisorHandle,
        events: &OutputPort<Event>,
    ) -> Result<Arc<Self>, MetricsError> {
        let mut rx = sshvisor_actors::events::subscribe(events)
            .await
            .map_err(|e| MetricsError::Subscribe(e.to_string()))?;
        let figures = Arc::new(Figures::default());
        let mut registry = Registry::with_prefix("sshvisor");
        figures.register(&mut registry);
        let feed = figures.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                feed.on_event(&event);
            }
        });
        Ok(Arc::new(Self {
            registry: Mutex::new(registry),
            figures,
            tree,
        }))
    }

    /// The registry, to add an embedding program's own metrics or to encode it another way.
    /// Hold the guard briefly: a scrape waits for it.
    pub fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the listener's refusals at the door (its penalty table) from now on.
    pub fn watch_penalties(&self, penalties: Arc<Penalties>) {
        let _ = self.figures.penalties.set(penalties);
    }

    /// Everything, in the OpenMetrics text format: the tree is counted first for the gauges (a
    /// tree that does not answer leaves them at their last values).
    pub async fn encode(&self) -> String {
        if let Ok(census) = self.tree.census().await {
            self.figures.set_live(census);
        }
        let mut text = String::new();
        // Writing into a String cannot fail; an error would only come from a collector.
        if let Err(e) = encode(&mut text, &self.registry()) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        text
    }
}

/// The penalty table once the listener has one: set after the listener is bound.
type PenaltiesCell = OnceLock<Arc<Penalties>>;
