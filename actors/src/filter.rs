//! Selecting connections by what an operator knows about them: the user, the peer's address or
//! network, the age, the idle time. Used by `KillWhere` and filtered listings; criteria combine with AND.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::report::ConnectionInfo;

/// An address or a network in CIDR notation (`10.1.2.3`, `10.1.0.0/16`, `2001:db8::/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "UncheckedPeerNet")]
pub struct PeerNet {
    /// The network's address.
    pub addr: IpAddr,
    /// Leading bits that must match (32 or 128 for one address).
    pub prefix: u8,
}

impl PeerNet {
    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (a, b, bits) = match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32),
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
            _ => return false,
        };
        let prefix = u32::from(self.prefix).min(bits);
        if prefix == 0 {
            return true;
        }
        let shift = bits - prefix;
        (a >> shift) == (b >> shift)
    }
}

/// A [`PeerNet`] as it comes over the wire, before its prefix length is checked.
#[derive(Deserialize)]
struct UncheckedPeerNet {
    addr: IpAddr,
    prefix: u8,
}

impl TryFrom<UncheckedPeerNet> for PeerNet {
    type Error = String;

    fn try_from(net: UncheckedPeerNet) -> Result<Self, String> {
        let max = if net.addr.is_ipv4() { 32 } else { 128 };
        if net.prefix > max {
            return Err(format!(
                "the prefix length of {} must be 0 to {max}, not {}",
                net.addr, net.prefix
            ));
        }
        Ok(Self {
            addr: net.addr,
            prefix: net.prefix,
        })
    }
}

impl FromStr for PeerNet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or network (e.g. 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for PeerNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Which connections to select. An empty filter selects every connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// The user name the connection authenticated as.
    #[serde(default)]
    pub user: Option<String>,
    /// The peer's address or network.
    #[serde(default)]
    pub peer: Option<PeerNet>,
    /// Connections older than this.
    #[serde(default, with = "opt_millis")]
    pub older_than: Option<Duration>,
    /// Connections with no channel data either way for longer than this (connections whose
    /// binding does not count traffic never match).
    #[serde(default, with = "opt_millis")]
    pub idle_over: Option<Duration>,
}

impl Filter {
    /// Whether `conn` is selected.
    pub fn matches(&self, conn: &ConnectionInfo, now: SystemTime) -> bool {
        if let Some(user) = &self.user {
            if conn.user.as_deref() != Some(user.as_str()) {
                return false;
            }
        }
        if let Some(net) = &self.peer {
            if !net.contains(conn.peer.ip()) {
                return false;
            }
        }
        if let Some(age) = self.older_than {
            if now.duration_since(conn.started).unwrap_or_default() <= age {
                return false;
            }
        }
        if let Some(idle) = self.idle_over {
            match conn.idle_ms {
                Some(ms) if Duration::from_millis(ms) > idle => {}
                _ => return false,
            }
        }
        true
    }

    /// Whether the filter selects everything.
    pub fn is_empty(&self) -> bool {
        self == &Filter::default()
    }
}

mod opt_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_contain_addresses() {
        let net: PeerNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        let one: PeerNet = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(one.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6: PeerNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<PeerNet>().is_err());
        assert!("bogus".parse::<PeerNet>().is_err());
        let all: PeerNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
    }
}
