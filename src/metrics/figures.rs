//! The figures behind the metrics: atomics the event feed adds to, the histograms, and what a
//! scrape reads from the tree; encoded by hand as one `Collector` so a labelled counter costs
//! one atomic add (an array index, no label map) per event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sshvisor_actors::killed_by;
use sshvisor_actors::{Census, ConnId, Event};

use super::labels::{limit_index, Initiator, LIMITS, PENALIZED};
use super::PenaltiesCell;

const STATES: [&str; 3] = ["handshaking", "authenticated", "closing"];
const KINDS: [&str; 4] = ["pending", "exec", "shell", "subsystem"];
const OUTCOMES: [&str; 2] = ["clean", "forced"];
/// The number of connections whose handshake start is remembered (see `Figures::connected`).
const HANDSHAKES: usize = 4096;

/// Every figure; shared by the event feed and the registry.
pub(crate) struct Figures {
    accepted: AtomicU64,
    refused: [AtomicU64; LIMITS.len()],
    /// By initiator, then outcome (clean, forced).
    kills: [[AtomicU64; 2]; Initiator::ALL.len()],
    /// Bytes of the connections that have ended (the live ones are added at scrape time).
    ended_in: AtomicU64,
    ended_out: AtomicU64,
    kill_duration: Histogram,
    to_authenticated: Histogram,
    /// When each recent connection was admitted, by a slot its ID hashes to: the handshake's
    /// start for the histogram, without a map to grow or clean (a slot taken over by a newer
    /// connection is recognised by its ID and skipped).
    handshakes: Mutex<Vec<Option<(ConnId, Instant)>>>,
    /// The last listing: by state, by kind, bytes of live connections.
    live: Mutex<Census>,
    pub(crate) penalties: PenaltiesCell,
}

impl Default for Figures {
    fn default() -> Self {
        Self {
            accepted: AtomicU64::new(0),
            refused: Default::default(),
            kills: Default::default(),
            ended_in: AtomicU64::new(0),
            ended_out: AtomicU64::new(0),
            // 1 ms to about 65 s: a polite kill takes milliseconds, a forced one its grace.
            kill_duration: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            // 1 ms to about 16 s.
            to_authenticated: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            handshakes: Mutex::new(vec![None; HANDSHAKES]),
            live: Mutex::new(Census::default()),
            penalties: PenaltiesCell::new(),
        }
    }
}

impl std::fmt::Debug for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Figures")
            .field("accepted", &self.accepted)
            .finish_non_exhaustive()
    }
}

fn slot(conn: ConnId) -> usize {
    (conn.0.as_u128() as usize) % HANDSHAKES
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Figures {
    /// Registers the histograms and the collector of everything else.
    pub(crate) fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register(
            "kill_duration_seconds",
            "From the kill reaching a connection to its end (every actor under it stopped)",
            self.kill_duration.clone(),
        );
        registry.register(
            "handshake_to_authenticated_seconds",
            "From a connection's admission to its successful authentication",
            self.to_authenticated.clone(),
        );
        registry.register_collector(Box::new(self.clone()));
    }

    /// Counts one event: an atomic add or a histogram observation, no allocation.
    pub(crate) fn on_event(&self, event: &Event) {
        match event {
            Event::Connected { conn, .. } => {
                add(&self.accepted, 1);
                if let Ok(mut slots) = self.handshakes.lock() {
                    slots[slot(*conn)] = Some((*conn, Instant::now()));
                }
            }
            Event::Authenticated { conn, .. } => {
                let started = self.handshakes.lock().ok().and_then(|mut slots| {
                    match slots[slot(*conn)].take() {
                        Some((c, at)) if c == *conn => Some(at),
                        other => {
                            slots[slot(*conn)] = other;
                            None
                        }
                    }
                });
                if let Some(at) = started {
                    self.to_authenticated.observe(at.elapsed().as_secs_f64());
                }
            }
            Event::Refused { reason, .. } => add(&self.refused[limit_index(reason)], 1),
            Event::SessionClosed {
                killed: Some(reason),
                ..
            } if killed_by::is_session_idle(reason) => {
                add(&self.kills[Initiator::SessionIdle.index()][0], 1)
            }
            Event::Disconnected { cause, figures, .. } => {
                add(&self.ended_in, figures.bytes_in);
                add(&self.ended_out, figures.bytes_out);
                if let Some(initiator) = Initiator::of(cause) {
                    add(
                        &self.kills[initiator.index()][usize::from(figures.forced)],
                        1,
                    );
                }
                if let Some(us) = figures.kill_us {
                    self.kill_duration.observe(us as f64 / 1e6);
                }
            }
            _ => {}
        }
    }

    /// Takes in the tree's census for the gauges and the live bytes.
    pub(crate) fn set_live(&self, census: Census) {
        if let Ok(mut last) = self.live.lock() {
            *last = census;
        }
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

impl Collector for Figures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live = self.live.lock().map(|l| *l).unwrap_or_default();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);

        let mut family = encoder.encode_descriptor(
            "connections",
            "Live connections by state",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (state, n) in STATES.iter().zip(live.connections) {
            ConstGauge::new(n as i64).encode(family.encode_family(&[("state", *state)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "sessions",
            "Live sessions by kind (pending: opened, not yet started)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (kind, n) in KINDS.iter().zip(live.sessions) {
            ConstGauge::new(n as i64).encode(family.encode_family(&[("kind", *kind)])?)?;
        }

        counter(
            &mut encoder,
            "connections_accepted",
            "Connections admitted into the tree",
            load(&self.accepted),
        )?;
        let mut refused: [u64; LIMITS.len()] = std::array::from_fn(|i| load(&self.refused[i]));
        refused[PENALIZED] += self
            .penalties
            .get()
            .map_or(0, |p| p.stats(Instant::now()).refused);
        let mut family = encoder.encode_descriptor(
            "connections_refused",
            "Connections refused, by the limit's configuration key (penalized: at the door, by the per-source penalties)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (limit, n) in LIMITS.iter().zip(refused) {
            ConstCounter::new(n).encode(family.encode_family(&[("limit", *limit)])?)?;
        }
        counter(
            &mut encoder,
            "authentication_failures",
            "Login attempts refused (an offered key not accepted counts)",
            crate::ssh::penalties::auth_failures(),
        )?;

        let mut family = encoder.encode_descriptor(
            "kills",
            "Connections ended by a kill (session_idle: sessions), by who initiated it and whether the grace ran out",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for initiator in Initiator::ALL {
            for (outcome, n) in OUTCOMES.iter().zip(&self.kills[initiator.index()]) {
                let labels = [("initiator", initiator.label()), ("outcome", *outcome)];
                ConstCounter::new(load(n)).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "bytes",
            "Bytes on the wire (in: from clients, out: to clients)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (direction, n) in [
            ("in", load(&self.ended_in) + live.bytes_in),
            ("out", load(&self.ended_out) + live.bytes_out),
        ] {
            ConstCounter::new(n).encode(family.encode_family(&[("direction", direction)])?)?;
        }
        counter(
            &mut encoder,
            "session_processes_reaped",
            "Session processes reaped (session leaders, and orphans adopted as subreaper)",
            crate::session::tally::processes_reaped(),
        )?;
        counter(
            &mut encoder,
            "escaped_processes_caught",
            "Processes still running in a session's scope after its leader ended, killed with it",
            crate::session::tally::escaped_caught(),
        )
    }
}
