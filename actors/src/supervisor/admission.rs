//! Admission: the running counts of live connections by what the limits count, and the check
//! a new connection passes (or not) against them, at the same cost at any size.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use tokio::time::Instant;

use crate::ids::ConnId;
use crate::policy::{Limits, MIN_PENDING_AGE};
use crate::report::Refusal;

/// Running counts of live connections by what the limits count.
#[derive(Default)]
pub(crate) struct Counts {
    per_source: HashMap<IpAddr, usize>,
    per_prefix: HashMap<(IpAddr, u8), usize>,
    per_user: HashMap<String, usize>,
    /// Connections still in the handshake, oldest first.
    pending: BTreeSet<(Instant, ConnId)>,
}

/// What [`Counts::admission`] decided.
pub(crate) enum Admission {
    Admit,
    /// Admit, and end this pending login (with this reason) to make room.
    AdmitDropping(ConnId, String),
    Refuse(Refusal),
}

impl Counts {
    fn net(peer: SocketAddr, limits: &Limits) -> (IpAddr, u8) {
        network_of(peer.ip().to_canonical(), limits.prefix_v4, limits.prefix_v6)
    }

    /// Counts a connection admitted from `peer`, logging in from `admitted` on.
    pub(crate) fn admit(
        &mut self,
        peer: SocketAddr,
        id: ConnId,
        admitted: Instant,
        limits: &Limits,
    ) {
        *self.per_source.entry(peer.ip().to_canonical()).or_insert(0) += 1;
        *self
            .per_prefix
            .entry(Counts::net(peer, limits))
            .or_insert(0) += 1;
        self.pending.insert((admitted, id));
    }

    /// Stops counting a connection that is gone.
    pub(crate) fn release(
        &mut self,
        peer: SocketAddr,
        user: Option<&str>,
        id: ConnId,
        admitted: Instant,
        limits: &Limits,
    ) {
        Counts::less(&mut self.per_source, &peer.ip().to_canonical());
        Counts::less(&mut self.per_prefix, &Counts::net(peer, limits));
        if let Some(user) = user {
            Counts::less(&mut self.per_user, user);
        }
        self.pending.remove(&(admitted, id));
    }

    /// The connection admitted at `admitted` no longer logs in.
    pub(crate) fn login_over(&mut self, admitted: Instant, id: ConnId) {
        self.pending.remove(&(admitted, id));
    }

    /// Counts a connection as `user` instead of `before`; returns how many connections that
    /// user had before this one.
    pub(crate) fn authenticated(&mut self, before: Option<&str>, user: &str) -> usize {
        if let Some(before) = before {
            Counts::less(&mut self.per_user, before);
        }
        let same_user = self.per_user.get(user).copied().unwrap_or(0);
        *self.per_user.entry(user.to_string()).or_insert(0) += 1;
        same_user
    }

    /// Recounts the networks for new prefix lengths.
    pub(crate) fn recount_prefixes<'a>(
        &mut self,
        peers: impl Iterator<Item = &'a SocketAddr>,
        limits: &Limits,
    ) {
        self.per_prefix = peers.fold(HashMap::new(), |mut m, peer| {
            *m.entry(Counts::net(*peer, limits)).or_insert(0) += 1;
            m
        });
    }

    fn less<K, Q>(map: &mut HashMap<K, usize>, key: &Q)
    where
        K: std::hash::Hash + Eq + std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        if let Some(n) = map.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                map.remove(key);
            }
        }
    }

    /// Whether a new connection from `peer` may come in while `connections` are live, and at
    /// whose expense.
    pub(crate) fn admission(
        &self,
        peer: SocketAddr,
        connections: usize,
        limits: &Limits,
    ) -> Admission {
        if let Some(refusal) = self.over_hard_limit(peer, connections, limits) {
            return Admission::Refuse(refusal);
        }
        let max = limits.max_unauthenticated;
        if self.pending.len() < max {
            return Admission::Admit;
        }
        let text = format!("max_unauthenticated ({max}) reached");
        match self.pending.first() {
            Some((admitted, id)) if admitted.elapsed() >= MIN_PENDING_AGE => {
                Admission::AdmitDropping(
                    *id,
                    format!("{text}: the oldest pending login was dropped"),
                )
            }
            _ => Admission::Refuse(Refusal::Limit(text)),
        }
    }

    /// The limit a new connection from `peer` would break, if any, other than
    /// `max_unauthenticated`.
    fn over_hard_limit(
        &self,
        peer: SocketAddr,
        connections: usize,
        limits: &Limits,
    ) -> Option<Refusal> {
        if connections >= limits.max_connections {
            return Some(Refusal::Limit(format!(
                "max_connections ({}) reached",
                limits.max_connections
            )));
        }
        let ip = peer.ip().to_canonical();
        let from_peer = self.per_source.get(&ip).copied().unwrap_or(0);
        if from_peer >= limits.max_per_source {
            return Some(Refusal::Limit(format!(
                "max_per_source ({}) reached for {ip}",
                limits.max_per_source
            )));
        }
        let net = network_of(ip, limits.prefix_v4, limits.prefix_v6);
        let from_net = self.per_prefix.get(&net).copied().unwrap_or(0);
        if from_net >= limits.max_per_prefix {
            return Some(Refusal::Limit(format!(
                "max_per_prefix ({}) reached for {}/{}",
                limits.max_per_prefix, net.0, net.1
            )));
        }
        None
    }

    /// The counts as handed out.
    pub(crate) fn snapshot(&self, connections: usize) -> AdmissionCounts {
        AdmissionCounts {
            connections,
            per_source: self.per_source.iter().map(|(k, v)| (*k, *v)).collect(),
            per_prefix: self
                .per_prefix
                .iter()
                .map(|((addr, bits), v)| (format!("{addr}/{bits}"), *v))
                .collect(),
            per_user: self.per_user.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            unauthenticated: self.pending.len(),
        }
    }
}

/// The running counts admission is decided by, as the supervisor holds them: what a recount of
/// the live connections must give.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdmissionCounts {
    /// Connections in the map (`max_connections`).
    pub connections: usize,
    /// Live connections by source address (`max_per_source`).
    pub per_source: BTreeMap<IpAddr, usize>,
    /// Live connections by network, `addr/bits` (`max_per_prefix`).
    pub per_prefix: BTreeMap<String, usize>,
    /// Live connections by the user they authenticated as (`max_per_user`).
    pub per_user: BTreeMap<String, usize>,
    /// Connections still logging in and not being killed (`max_unauthenticated`).
    pub unauthenticated: usize,
}

/// The network `ip` belongs to for `max_per_prefix`: its address masked to the prefix length,
/// and that length.
fn network_of(ip: IpAddr, v4_bits: u8, v6_bits: u8) -> (IpAddr, u8) {
    match ip {
        IpAddr::V4(v4) => {
            let bits = v4_bits.min(32);
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            (IpAddr::V4((u32::from(v4) & mask).into()), bits)
        }
        IpAddr::V6(v6) => {
            let bits = v6_bits.min(128);
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            (IpAddr::V6((u128::from(v6) & mask).into()), bits)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::network_of;
    use std::net::IpAddr;

    fn net(ip: &str, v4: u8, v6: u8) -> String {
        let (addr, bits) = network_of(ip.parse::<IpAddr>().unwrap(), v4, v6);
        format!("{addr}/{bits}")
    }

    #[test]
    fn prefixes_mask_the_host_bits() {
        assert_eq!(net("10.1.2.3", 24, 64), "10.1.2.0/24");
        assert_eq!(net("10.1.2.3", 16, 64), "10.1.0.0/16");
        assert_eq!(net("10.1.2.3", 32, 64), "10.1.2.3/32");
        assert_eq!(net("10.1.2.3", 0, 64), "0.0.0.0/0");
        assert_eq!(net("10.1.2.3", 40, 64), "10.1.2.3/32");
        assert_eq!(net("2001:db8:1:2:3:4:5:6", 24, 64), "2001:db8:1:2::/64");
        assert_eq!(net("2001:db8:1:2:3:4:5:6", 24, 48), "2001:db8:1::/48");
        assert_eq!(net("::1", 24, 128), "::1/128");
        assert_eq!(net("::1", 24, 0), "::/0");
    }
}
