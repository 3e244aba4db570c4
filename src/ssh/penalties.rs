//! Per-source penalties, in the manner of OpenSSH's `PerSourcePenalties`: a source (an address,
//! or its network when the prefix lengths are shorter than an address) that misbehaves
//! collects penalty time, and while it is penalized its new connections are refused at the door,
//! before any key-exchange work.
//!
//! Offences ([`Offence`]): connecting faster than a rate (a token bucket per source: sustained
//! `rate` per second, `burst` at once; the connection over the rate is itself refused), failing
//! authentication, being refused by a limit, and dropping before authenticating. Each adds its
//! own time to the source's penalty. As in OpenSSH's srclimit.c, a penalty is an expiry time: an
//! offence while one runs adds its time to it, up to `max` from now; it is enforced once the time
//! left reaches `min` (so a single small offence is forgiven, repeated ones are not). Exempt
//! networks are never counted.
//!
//! The table is bounded by `max_sources`: entries with no penalty left and a full bucket are
//! swept, lazily (at most every [`SWEEP_EVERY`], and when the table is full). A source that
//! arrives while the table is still full is let in untracked (OpenSSH's `permissive` overflow:
//! refusing everyone would hand a flood of many addresses the whole service), and that is
//! logged once per time the table fills.
//!
//! Every method takes the time (`now`) as an argument: the accumulation, the cap and the minimum
//! are unit-tested without a clock.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sshvisor_actors::PeerNet;
use tracing::{debug, info, warn};

/// How often, at most, the table is swept of entries with nothing left to remember.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The penalty policy (`[penalties]` in the daemon's configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct PenaltyPolicy {
    /// Off: nothing is counted and nobody is refused.
    pub enabled: bool,
    /// Connections per second one source may sustain.
    pub rate: f64,
    /// Connections one source may open at once, above the rate.
    pub burst: u32,
    /// Added for each connection over the rate.
    pub over_rate: Duration,
    /// Added for a connection that ends after a refused login attempt and no success.
    pub auth_failed: Duration,
    /// Added for a connection refused by a limit (`max_per_source`, `max_unauthenticated`, ...).
    pub refused_by_limit: Duration,
    /// Added for a connection that ends without authenticating or trying to.
    pub no_auth: Duration,
    /// A penalty is enforced once the time left reaches this.
    pub min: Duration,
    /// A penalty never runs longer than this from now.
    pub max: Duration,
    /// IPv4 sources are counted by this many leading bits.
    pub prefix_v4: u8,
    /// IPv6 sources are counted by this many leading bits.
    pub prefix_v6: u8,
    /// Networks never counted nor refused.
    pub exempt: Vec<PeerNet>,
    /// Sources tracked at most (see the module docs for what happens past it).
    pub max_sources: usize,
}

impl Default for PenaltyPolicy {
    /// On, with the defaults docs/OPERATIONS.md justifies: 5 connections a second sustained, 10
    /// at once; 10 s per connection over the rate, 5 s per failed login, 10 s per limit refusal,
    /// 1 s per connection dropped before authenticating; enforced from 15 s, at most 10 min
    /// (OpenSSH's `min` and `max`); sources by address (/32, /64 for IPv6); 65536 sources.
    fn default() -> Self {
        Self {
            enabled: true,
            rate: 5.0,
            burst: 10,
            over_rate: Duration::from_secs(10),
            auth_failed: Duration::from_secs(5),
            refused_by_limit: Duration::from_secs(10),
            no_auth: Duration::from_secs(1),
            min: Duration::from_secs(15),
            max: Duration::from_secs(600),
            prefix_v4: 32,
            prefix_v6: 64,
            exempt: Vec::new(),
            max_sources: 65536,
        }
    }
}

impl PenaltyPolicy {
    /// No penalties at all.
    pub fn off() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// The defaults with the loopback networks exempt (for tests and benchmarks that open
    /// thousands of connections from 127.0.0.1).
    pub fn loopback_exempt() -> Self {
        Self {
            exempt: vec![
                PeerNet {
                    addr: IpAddr::from([127, 0, 0, 0]),
                    prefix: 8,
                },
                PeerNet {
                    addr: IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                    prefix: 128,
                },
            ],
            ..Self::default()
        }
    }

    fn time_of(&self, offence: Offence) -> Duration {
        match offence {
            Offence::OverRate => self.over_rate,
            Offence::AuthFailed => self.auth_failed,
            Offence::RefusedByLimit => self.refused_by_limit,
            Offence::NoAuth => self.no_auth,
        }
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        self.exempt.iter().any(|net| net.contains(ip))
    }

    /// The source `ip` counts as: its network by the prefix lengths.
    fn source_of(&self, ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let prefix = self.prefix_v4.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                Source {
                    addr: IpAddr::from((u32::from(a) & mask).to_be_bytes()),
                    prefix,
                }
            }
            IpAddr::V6(a) => {
                let prefix = self.prefix_v6.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                Source {
                    addr: IpAddr::from((u128::from(a) & mask).to_be_bytes()),
                    prefix,
                }
            }
        }
    }

    /// The rate as a person reads it (`5/s`, `0.5/s`).
    fn rate_text(&self) -> String {
        format!("{}/s", self.rate)
    }
}

/// What a source did wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Offence {
    /// Connected faster than the rate.
    OverRate,
    /// A connection ended after a refused login attempt and no success.
    AuthFailed,
    /// A connection was refused by a limit.
    RefusedByLimit,
    /// A connection ended without authenticating or trying to.
    NoAuth,
}

impl Offence {
    fn text(self, policy: &PenaltyPolicy) -> String {
        match self {
            Offence::OverRate => format!("connection rate over {}", policy.rate_text()),
            Offence::AuthFailed => "failed authentication".into(),
            Offence::RefusedByLimit => "refused by a connection limit".into(),
            Offence::NoAuth => "disconnected before authenticating".into(),
        }
    }
}

/// A source: an address masked to the policy's prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    /// The network's first address.
    pub addr: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == full {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// Why a connection is refused at the door.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The source refused.
    pub source: Source,
    /// How long it stays refused (for a connection over the rate, until its next token).
    pub left: Duration,
    /// Whether the source is penalized (else it is only over the rate).
    pub penalized: bool,
    /// The offence the refusal names.
    pub reason: String,
}

impl Refusal {
    /// The one line the client is sent before the socket is closed. It never starts with
    /// `SSH-` (it is no banner); OpenSSH prints it as
    /// `kex_exchange_identification: banner line 0: ...`.
    pub fn line(&self) -> String {
        format!("sshvisor: refused: {self}\r\n")
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.left.as_secs_f64().ceil().max(1.0) as u64;
        if self.penalized {
            write!(
                f,
                "{} is penalized for {secs} s more ({})",
                self.source, self.reason
            )
        } else {
            write!(
                f,
                "{} is over its {}: try again in {secs} s",
                self.source, self.reason
            )
        }
    }
}

/// A penalized (or accumulating) source, as `ctl penalties` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct PenaltyInfo {
    /// The address, or network (`10.1.2.0/24`).
    pub source: String,
    /// Time left, in milliseconds.
    pub left_ms: u64,
    /// Whether its connections are refused now (the time left has reached `min`).
    pub enforced: bool,
    /// Offences counted since the source was first seen (it is forgotten once its penalty has
    /// run out and its bucket refilled).
    pub offences: u32,
    /// The last offence.
    pub last: Offence,
    /// The last offence as a person reads it.
    pub reason: String,
}

/// The counters of `ctl stats`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct PenaltyStats {
    /// Whether penalties are on.
    pub enabled: bool,
    /// Connections refused at the door since start (penalized, or over the rate).
    pub refused: u64,
    /// Sources whose connections are refused now.
    pub penalized: usize,
    /// Sources tracked (the table's size).
    pub tracked: usize,
}

/// One tracked source.
#[derive(Debug, Clone)]
struct Entry {
    /// Tokens in its bucket, at `refilled`.
    tokens: f64,
    refilled: Instant,
    /// When its penalty runs out (none: no penalty).
    expiry: Option<Instant>,
    /// Whether the penalty is enforced (it reached `min`); it stays so until it runs out.
    active: bool,
    offences: u32,
    last: Option<Offence>,
}

impl Entry {
    fn new(policy: &PenaltyPolicy, now: Instant) -> Self {
        Self {
            tokens: f64::from(policy.burst),
            refilled: now,
            expiry: None,
            active: false,
            offences: 0,
            last: None,
        }
    }

    fn refill(&mut self, policy: &PenaltyPolicy, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * policy.rate).min(f64::from(policy.burst));
        self.refilled = now;
    }

    /// Forgets a penalty that has run out.
    fn expire(&mut self, now: Instant) {
        if self.expiry.is_some_and(|e| e <= now) {
            self.expiry = None;
            self.active = false;
        }
    }

    fn enforced(&self, now: Instant) -> Option<Duration> {
        match self.expiry {
            Some(e) if self.active && e > now => Some(e - now),
            _ => None,
        }
    }

    /// Nothing left to remember: no penalty and a full bucket.
    fn idle(&mut self, policy: &PenaltyPolicy, now: Instant) -> bool {
        self.expire(now);
        self.refill(policy, now);
        self.expiry.is_none() && self.tokens >= f64::from(policy.burst)
    }

    /// Adds `offence`'s time; returns whether this made the penalty enforced.
    fn add(&mut self, policy: &PenaltyPolicy, offence: Offence, now: Instant) -> bool {
        self.expire(now);
        let time = policy.time_of(offence);
        let cap = now + policy.max;
        let expiry = match self.expiry {
            Some(e) => e + time,
            None => now + time,
        };
        self.expiry = Some(expiry.min(cap));
        self.offences = self.offences.saturating_add(1);
        self.last = Some(offence);
        let left = self.expiry.map_or(Duration::ZERO, |e| e - now);
        if !self.active && !left.is_zero() && left >= policy.min {
            self.active = true;
            return true;
        }
        false
    }
}

/// The table.
struct Table {
    /// Shared with each call that holds it while it changes the table (cloned per connection:
    /// an `Arc`, not the exempt list).
    policy: Arc<PenaltyPolicy>,
    sources: HashMap<Source, Entry>,
    last_sweep: Option<Instant>,
    /// Whether "the table is full" was logged since it last had room.
    full_logged: bool,
}

impl Table {
    fn sweep(&mut self, now: Instant) {
        let policy = &self.policy;
        self.sources.retain(|_, e| !e.idle(policy, now));
        self.last_sweep = Some(now);
    }

    fn sweep_if_due(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_none_or(|last| now.saturating_duration_since(last) >= SWEEP_EVERY)
        {
            self.sweep(now);
        }
    }

    /// The entry of `source`, made if there is room (a sweep first when the table is full).
    fn entry(&mut self, source: Source, now: Instant) -> Option<&mut Entry> {
        if !self.sources.contains_key(&source) {
            if self.sources.len() >= self.policy.max_sources {
                self.sweep(now);
            }
            if self.sources.len() >= self.policy.max_sources {
                if !self.full_logged {
                    self.full_logged = true;
                    warn!(
                        max_sources = self.policy.max_sources,
                        "the penalty table is full: new sources are neither rate-limited nor penalized until entries run out (raise penalties.max_sources, or widen prefix_v4/prefix_v6)"
                    );
                }
                return None;
            }
            self.full_logged = false;
            self.sources.insert(source, Entry::new(&self.policy, now));
        }
        self.sources.get_mut(&source)
    }
}

/// The per-source penalty table of one listener. Shared by the accept loop (which asks
/// [`Penalties::admit`] before anything else), the connection tasks (which report offences)
/// and the control socket (`ctl penalties`, `ctl stats`).
pub struct Penalties {
    table: Mutex<Table>,
    /// Connections refused at the door since start.
    refused: AtomicU64,
}

impl Penalties {
    /// An empty table under `policy`.
    pub fn new(policy: PenaltyPolicy) -> Self {
        Self {
            table: Mutex::new(Table {
                policy: Arc::new(policy),
                sources: HashMap::new(),
                last_sweep: None,
                full_logged: false,
            }),
            refused: AtomicU64::new(0),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a new policy (a reload). The table is kept: a penalty runs on, and a source
    /// now exempt is forgotten. A change of prefix length starts the table afresh, since its
    /// sources would no longer be the ones it counts by.
    pub fn set_policy(&self, policy: PenaltyPolicy) {
        let mut table = self.table();
        if (policy.prefix_v4, policy.prefix_v6) != (table.policy.prefix_v4, table.policy.prefix_v6)
        {
            table.sources.clear();
        }
        table.sources.retain(|s, _| !policy.exempt(s.addr));
        table.policy = Arc::new(policy);
    }

    /// The policy in force.
    pub fn policy(&self) -> PenaltyPolicy {
        PenaltyPolicy::clone(&self.table().policy)
    }

    /// Asked by the accept loop for each new connection from `ip`, before anything else: `Err`
    /// when the source is penalized or over its rate (a connection over the rate is itself an
    /// offence). Never waits.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let mut table = self.table();
        if !table.policy.enabled || table.policy.exempt(ip) {
            return Ok(());
        }
        table.sweep_if_due(now);
        let policy = table.policy.clone();
        let source = policy.source_of(ip);
        let Some(entry) = table.entry(source, now) else {
            return Ok(());
        };
        entry.expire(now);
        if let Some(left) = entry.enforced(now) {
            let reason = entry_reason(&policy, entry.last);
            drop(table);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal {
                source,
                left,
                penalized: true,
                reason,
            });
        }
        entry.refill(&policy, now);
        if entry.tokens >= 1.0 {
            entry.tokens -= 1.0;
            return Ok(());
        }
        let activated = entry.add(&policy, Offence::OverRate, now);
        let reason = Offence::OverRate.text(&policy);
        let refusal = match entry.enforced(now) {
            Some(left) => Refusal {
                source,
                left,
                penalized: true,
                reason: reason.clone(),
            },
            None => Refusal {
                source,
                left: Duration::from_secs_f64((1.0 - entry.tokens) / policy.rate.max(1e-9)),
                penalized: false,
                reason: format!(
                    "connection rate of {} (burst {})",
                    policy.rate_text(),
                    policy.burst
                ),
            },
        };
        drop(table);
        if activated {
            info!(%source, left_s = refusal.left.as_secs(), reason = %reason, "source penalized");
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        Err(refusal)
    }

    /// Counts `offence` against `ip`'s source (a connection's end, or a limit's refusal).
    pub fn offend(&self, ip: IpAddr, offence: Offence, now: Instant) {
        let mut table = self.table();
        let policy = table.policy.clone();
        if !policy.enabled || policy.exempt(ip) || policy.time_of(offence).is_zero() {
            return;
        }
        let source = policy.source_of(ip);
        let Some(entry) = table.entry(source, now) else {
            return;
        };
        let activated = entry.add(&policy, offence, now);
        let left = entry.enforced(now).unwrap_or_default();
        drop(table);
        if activated {
            info!(%source, left_s = left.as_secs(), reason = %offence.text(&policy), "source penalized");
        } else {
            debug!(%source, ?offence, "penalty time added");
        }
    }

    /// Sources with penalty time, longest left first.
    pub fn list(&self, now: Instant) -> Vec<PenaltyInfo> {
        let mut table = self.table();
        table.sweep(now);
        let policy = table.policy.clone();
        let mut out: Vec<PenaltyInfo> = table
            .sources
            .iter()
            .filter_map(|(source, e)| {
                let expiry = e.expiry.filter(|x| *x > now)?;
                Some(PenaltyInfo {
                    source: source.to_string(),
                    left_ms: (expiry - now).as_millis() as u64,
                    enforced: e.active,
                    offences: e.offences,
                    last: e.last.unwrap_or(Offence::OverRate),
                    reason: entry_reason(&policy, e.last),
                })
            })
            .collect();
        out.sort_by(|a, b| b.left_ms.cmp(&a.left_ms).then(a.source.cmp(&b.source)));
        out
    }

    /// Forgets the sources inside `net` (all of them when `None`): their penalties and rate
    /// counts. Returns the sources forgotten that had penalty time.
    pub fn clear(&self, net: Option<&PeerNet>, now: Instant) -> Vec<String> {
        let mut table = self.table();
        let mut removed = Vec::new();
        table.sources.retain(|source, e| {
            let inside = match net {
                None => true,
                Some(net) => {
                    net.contains(source.addr)
                        || PeerNet {
                            addr: source.addr,
                            prefix: source.prefix,
                        }
                        .contains(net.addr)
                }
            };
            if inside && e.expiry.is_some_and(|x| x > now) {
                removed.push(source.to_string());
            }
            !inside
        });
        removed.sort();
        removed
    }

    /// The counters of `ctl stats`.
    pub fn stats(&self, now: Instant) -> PenaltyStats {
        let table = self.table();
        PenaltyStats {
            enabled: table.policy.enabled,
            refused: self.refused.load(Ordering::Relaxed),
            penalized: table
                .sources
                .values()
                .filter(|e| e.enforced(now).is_some())
                .count(),
            tracked: table.sources.len(),
        }
    }
}

/// How one connection's logins went, told by its russh handler and read when the connection
/// ends: what it ended as decides its offence ([`LoginTally::offence`]).
#[derive(Debug, Default)]
pub struct LoginTally {
    refused: AtomicBool,
    succeeded: AtomicBool,
}

/// Login attempts refused since the process started, every listener's (for the metrics).
static AUTH_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Login attempts refused since the process started (a key offered and not accepted counts).
pub fn auth_failures() -> u64 {
    AUTH_FAILURES.load(Ordering::Relaxed)
}

impl LoginTally {
    /// A login attempt was refused.
    pub fn refused(&self) {
        AUTH_FAILURES.fetch_add(1, Ordering::Relaxed);
        self.refused.store(true, Ordering::Relaxed);
    }

    /// The client authenticated.
    pub fn succeeded(&self) {
        self.succeeded.store(true, Ordering::Relaxed);
    }

    /// The offence of a connection that has ended: none once it authenticated; a failed
    /// authentication after a refused attempt; otherwise it dropped before authenticating.
    pub fn offence(&self) -> Option<Offence> {
        if self.succeeded.load(Ordering::Relaxed) {
            None
        } else if self.refused.load(Ordering::Relaxed) {
            Some(Offence::AuthFailed)
        } else {
            Some(Offence::NoAuth)
        }
    }
}

fn entry_reason(policy: &PenaltyPolicy, last: Option<Offence>) -> String {
    last.unwrap_or(Offence::OverRate).text(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PenaltyPolicy {
        PenaltyPolicy {
            rate: 1.0,
            burst: 2,
            over_rate: Duration::from_secs(10),
            auth_failed: Duration::from_secs(5),
            refused_by_limit: Duration::from_secs(7),
            no_auth: Duration::from_secs(1),
            min: Duration::from_secs(15),
            max: Duration::from_secs(60),
            ..PenaltyPolicy::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn offences_accumulate_are_enforced_from_the_minimum_and_capped_at_the_maximum() {
        let p = Penalties::new(policy());
        let t0 = Instant::now();
        let a = ip("192.0.2.7");
        // 5 s, then 10 s: below the 15 s minimum, nothing is refused.
        p.offend(a, Offence::AuthFailed, t0);
        assert!(p.admit(a, t0).is_ok());
        p.offend(a, Offence::AuthFailed, t0);
        assert!(p.admit(a, t0).is_ok(), "10 s left is under the minimum");
        // The third makes 15 s: enforced.
        p.offend(a, Offence::AuthFailed, t0);
        let refusal = p.admit(a, t0).unwrap_err();
        assert!(refusal.penalized);
        assert_eq!(refusal.left, Duration::from_secs(15));
        assert_eq!(
            refusal.line(),
            "sshvisor: refused: 192.0.2.7 is penalized for 15 s more (failed authentication)\r\n"
        );
        // Time passes: 5 s later, 10 s left, still enforced (it stays so until it runs out).
        let t5 = t0 + Duration::from_secs(5);
        assert_eq!(p.admit(a, t5).unwrap_err().left, Duration::from_secs(10));
        // Many more offences: capped at `max` from now.
        for _ in 0..100 {
            p.offend(a, Offence::RefusedByLimit, t5);
        }
        let info = p.list(t5);
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].left_ms, 60_000);
        assert_eq!(info[0].offences, 103);
        assert_eq!(info[0].last, Offence::RefusedByLimit);
        // Run out: admitted again, and the entry is forgotten by the next sweep.
        let later = t5 + Duration::from_secs(61);
        assert!(p.admit(a, later).is_ok());
        assert!(p.list(later).is_empty());
        assert_eq!(p.stats(later).refused, 2);
    }

    #[test]
    fn a_penalty_that_runs_out_before_the_next_offence_starts_afresh() {
        let p = Penalties::new(policy());
        let t0 = Instant::now();
        let a = ip("192.0.2.8");
        p.offend(a, Offence::AuthFailed, t0);
        p.offend(a, Offence::AuthFailed, t0 + Duration::from_secs(11));
        assert!(
            p.admit(a, t0 + Duration::from_secs(11)).is_ok(),
            "the first 5 s had run out: 5 s left, not 10 s"
        );
        assert_eq!(p.list(t0 + Duration::from_secs(11))[0].left_ms, 5_000);
    }

    #[test]
    fn a_burst_over_the_rate_is_refused_and_repeated_it_becomes_a_penalty() {
        let p = Penalties::new(policy());
        let t0 = Instant::now();
        let a = ip("198.51.100.1");
        assert!(p.admit(a, t0).is_ok());
        assert!(p.admit(a, t0).is_ok());
        let first = p.admit(a, t0).unwrap_err();
        assert!(!first.penalized, "10 s of penalty is under the minimum");
        assert_eq!(
            first.line(),
            "sshvisor: refused: 198.51.100.1 is over its connection rate of 1/s (burst 2): try again in 1 s\r\n"
        );
        let second = p.admit(a, t0).unwrap_err();
        assert!(second.penalized);
        assert_eq!(second.left, Duration::from_secs(20));
        // Refused while penalized adds nothing: the time left only runs down.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(p.admit(a, t1).unwrap_err().left, Duration::from_secs(19));
        // Another source is untouched.
        assert!(p.admit(ip("198.51.100.2"), t0).is_ok());
        // Sustained at the rate, a source is never refused.
        let b = ip("198.51.100.3");
        for i in 0..100 {
            assert!(p.admit(b, t0 + Duration::from_secs(i)).is_ok(), "{i}");
        }
    }

    #[test]
    fn sources_are_counted_by_prefix_and_exempt_networks_never_count() {
        let p = Penalties::new(PenaltyPolicy {
            prefix_v4: 24,
            prefix_v6: 64,
            exempt: vec!["10.0.0.0/8".parse().unwrap()],
            ..policy()
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            p.offend(ip("203.0.113.9"), Offence::AuthFailed, t0);
            p.offend(ip("10.1.2.3"), Offence::AuthFailed, t0);
            p.offend(ip("2001:db8::1"), Offence::AuthFailed, t0);
        }
        let refusal = p.admit(ip("203.0.113.200"), t0).unwrap_err();
        assert_eq!(refusal.source.to_string(), "203.0.113.0/24");
        assert!(p.admit(ip("203.0.114.1"), t0).is_ok());
        assert!(p.admit(ip("2001:db8::ffff"), t0).is_err());
        assert!(p.admit(ip("::ffff:203.0.113.1"), t0).is_err(), "v4-mapped");
        for _ in 0..20 {
            assert!(p.admit(ip("10.1.2.3"), t0).is_ok(), "exempt");
        }
        let listed: Vec<String> = p.list(t0).into_iter().map(|i| i.source).collect();
        assert_eq!(listed, ["2001:db8::/64", "203.0.113.0/24"]);
        // Clearing by an address inside a network clears the network.
        assert_eq!(
            p.clear(Some(&"203.0.113.5".parse().unwrap()), t0),
            ["203.0.113.0/24"]
        );
        assert!(p.admit(ip("203.0.113.200"), t0).is_ok());
        assert_eq!(p.clear(None, t0), ["2001:db8::/64"]);
        assert!(p.list(t0).is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_a_full_table_lets_new_sources_in_untracked() {
        let p = Penalties::new(PenaltyPolicy {
            max_sources: 2,
            ..policy()
        });
        let t0 = Instant::now();
        for a in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
            for _ in 0..3 {
                p.offend(ip(a), Offence::AuthFailed, t0);
            }
        }
        assert_eq!(p.stats(t0).tracked, 2);
        assert!(p.admit(ip("192.0.2.3"), t0).is_ok(), "not tracked");
        // Once the first two have run out, room is made by the sweep.
        let later = t0 + Duration::from_secs(100);
        for _ in 0..3 {
            p.offend(ip("192.0.2.3"), Offence::AuthFailed, later);
        }
        assert!(p.admit(ip("192.0.2.3"), later).is_err());
        assert_eq!(p.stats(later).penalized, 1);
    }

    #[test]
    fn off_counts_nothing_and_a_reload_keeps_the_table() {
        let p = Penalties::new(policy());
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            p.offend(a, Offence::AuthFailed, t0);
        }
        p.set_policy(PenaltyPolicy {
            max: Duration::from_secs(120),
            ..policy()
        });
        assert!(p.admit(a, t0).is_err(), "kept across a reload");
        p.set_policy(PenaltyPolicy {
            enabled: false,
            ..policy()
        });
        assert!(p.admit(a, t0).is_ok());
        p.offend(ip("192.0.2.9"), Offence::AuthFailed, t0);
        assert_eq!(p.list(t0).len(), 1, "nothing new counted while off");
    }
}
