//! Selecting connections by what an operator knows about them: the user, the peer's address or
//! network, the age, the idle time, the key or certificate it logged in with. Used by
//! `KillWhere` and filtered listings; criteria combine with AND.

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
    /// Connections that logged in with this key (its SHA-256 fingerprint as OpenSSH prints it,
    /// `SHA256:...`), alone or inside a certificate.
    #[serde(default)]
    pub key_fingerprint: Option<String>,
    /// Connections that logged in with a certificate of this serial number.
    #[serde(default)]
    pub cert_serial: Option<u64>,
    /// Connections that logged in with a certificate of this key ID.
    #[serde(default)]
    pub cert_key_id: Option<String>,
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
        let credential = conn.credential.as_ref();
        if let Some(fingerprint) = &self.key_fingerprint {
            if credential.map(|c| c.key_fingerprint.as_str()) != Some(fingerprint.as_str()) {
                return false;
            }
        }
        let certificate = credential.and_then(|c| c.certificate.as_ref());
        if let Some(serial) = self.cert_serial {
            if certificate.map(|c| c.serial) != Some(serial) {
                return false;
            }
        }
        if let Some(key_id) = &self.cert_key_id {
            if certificate.map(|c| c.key_id.as_str()) != Some(key_id.as_str()) {
                return false;
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
    use crate::report::{CertificateInfo, Credential};

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

    fn logged_in_with(credential: Option<Credential>) -> ConnectionInfo {
        ConnectionInfo {
            id: crate::ConnId::new_random(),
            user: Some("alice".into()),
            peer: "127.0.0.1:5000".parse().unwrap(),
            client_version: None,
            auth_method: Some("publickey".into()),
            credential,
            started: SystemTime::now(),
            state: crate::ConnState::Authenticated,
            idle_ms: None,
            bytes_in: None,
            bytes_out: None,
            pending_kill: None,
            sessions: Vec::new(),
        }
    }

    #[test]
    fn key_and_certificate_criteria_select_only_what_logged_in_with_them() {
        let now = SystemTime::now();
        let plain = logged_in_with(Some(Credential {
            key_fingerprint: "SHA256:aaa".into(),
            certificate: None,
        }));
        let cert = logged_in_with(Some(Credential {
            key_fingerprint: "SHA256:bbb".into(),
            certificate: Some(CertificateInfo {
                key_id: "alice@corp".into(),
                serial: 42,
                ca_fingerprint: "SHA256:ca".into(),
            }),
        }));
        let unknown = logged_in_with(None);
        let by_key = Filter {
            key_fingerprint: Some("SHA256:aaa".into()),
            ..Filter::default()
        };
        assert!(by_key.matches(&plain, now));
        assert!(!by_key.matches(&cert, now));
        assert!(!by_key.matches(&unknown, now));
        let by_serial = Filter {
            cert_serial: Some(42),
            ..Filter::default()
        };
        assert!(by_serial.matches(&cert, now));
        assert!(!by_serial.matches(&plain, now));
        assert!(!by_serial.matches(&unknown, now));
        let by_id = Filter {
            cert_key_id: Some("alice@corp".into()),
            ..Filter::default()
        };
        assert!(by_id.matches(&cert, now));
        assert!(!by_id.matches(&plain, now));
        let wrong_serial = Filter {
            cert_serial: Some(43),
            ..by_id
        };
        assert!(!wrong_serial.matches(&cert, now));
    }
}
