//! Source-address pattern lists, as sshd reads them in an authorized_keys `from="..."` option:
//! addresses, CIDR networks, `*` and `?` wildcards, each may be negated with `!`.
//!
//! sshd matches a list against the client's host name and its address; sshvisor does no DNS, so
//! only the address is matched: a host-name pattern can never match. A positive one then only
//! narrows (the line admits fewer clients) and is accepted; a negated one would silently admit
//! the very host it was written to keep out, so a list holding one is refused.

use std::net::IpAddr;

use sshvisor_actors::PeerNet;

/// One entry of a pattern list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// A network (`10.0.0.0/8`, or one address: `/32`, `/128`).
    Net(PeerNet),
    /// A wildcard pattern matched against the address as text (`192.168.1.*`).
    Glob(String),
}

/// A parsed pattern list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPatterns {
    /// The entries, with whether each is negated.
    entries: Vec<(bool, Pattern)>,
}

impl AddressPatterns {
    /// Parses a comma-separated list; `Err` says which entry cannot be used and why.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for raw in list.split(',') {
            let raw = raw.trim();
            let (negated, text) = match raw.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, raw),
            };
            if text.is_empty() {
                return Err(format!("an empty pattern in {list:?}"));
            }
            let pattern = if text.contains('/') {
                Pattern::Net(text.parse::<PeerNet>()?)
            } else if let Ok(ip) = text.parse::<IpAddr>() {
                Pattern::Net(PeerNet {
                    addr: ip,
                    prefix: if ip.is_ipv4() { 32 } else { 128 },
                })
            } else if is_address_glob(text) {
                Pattern::Glob(text.to_ascii_lowercase())
            } else if negated {
                return Err(format!(
                    "the negated pattern !{text} names a host, and sshvisor matches addresses only (no DNS): it could not keep that host out; write its address"
                ));
            } else {
                // A host name: it can never match an address, so the entry only narrows.
                Pattern::Glob(text.to_ascii_lowercase())
            };
            entries.push((negated, pattern));
        }
        Ok(Self { entries })
    }

    /// Whether `ip` is admitted: no negated entry matches it and a positive one does.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let text = ip.to_string();
        let mut admitted = false;
        for (negated, pattern) in &self.entries {
            let hit = match pattern {
                Pattern::Net(net) => net.contains(ip),
                Pattern::Glob(glob) => glob_match(glob.as_bytes(), text.as_bytes()),
            };
            if hit && *negated {
                return false;
            }
            admitted |= hit;
        }
        admitted
    }
}

/// Whether `text` can only be an address pattern (digits, hex, dots, colons and wildcards).
fn is_address_glob(text: &str) -> bool {
    text.contains(['*', '?'])
        && text
            .chars()
            .all(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '*' | '?'))
        || text == "*"
}

/// sshd's `match_pattern`: `*` any run of characters, `?` any one.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob_match(rest, &text[i..])),
        Some((b'?', rest)) => !text.is_empty() && glob_match(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && glob_match(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_networks_and_wildcards_admit_what_they_name() {
        let list = AddressPatterns::parse("10.0.0.0/8,192.168.1.*,2001:db8::1").unwrap();
        assert!(list.admits(ip("10.3.4.5")));
        assert!(list.admits(ip("192.168.1.77")));
        assert!(list.admits(ip("::ffff:192.168.1.77")));
        assert!(list.admits(ip("2001:db8::1")));
        assert!(!list.admits(ip("192.168.2.1")));
        assert!(!list.admits(ip("127.0.0.1")));
        let q = AddressPatterns::parse("127.0.0.?").unwrap();
        assert!(q.admits(ip("127.0.0.1")));
        assert!(!q.admits(ip("127.0.0.10")));
    }

    #[test]
    fn a_negated_entry_wins_over_a_positive_one() {
        let list = AddressPatterns::parse("*,!10.1.0.0/16").unwrap();
        assert!(list.admits(ip("8.8.8.8")));
        assert!(!list.admits(ip("10.1.2.3")));
        let only_negated = AddressPatterns::parse("!10.1.0.0/16").unwrap();
        assert!(!only_negated.admits(ip("8.8.8.8")));
    }

    #[test]
    fn host_names_never_match_and_a_negated_one_is_refused() {
        let list = AddressPatterns::parse("*.example.com").unwrap();
        assert!(!list.admits(ip("127.0.0.1")));
        let err = AddressPatterns::parse("*,!bad.example.com").unwrap_err();
        assert!(err.contains("no DNS"), "{err}");
        assert!(AddressPatterns::parse("10.0.0.0/40").is_err());
        assert!(AddressPatterns::parse("10.0.0.1,").is_err());
    }
}
