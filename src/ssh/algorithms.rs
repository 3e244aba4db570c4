//! Which algorithms the server offers, as a policy: the hardened defaults, OpenSSH's list syntax
//! to change them, and the russh [`Preferred`] lists they become.
//!
//! Four lists can be changed, as in sshd_config: key exchange (`kex_algorithms`), ciphers
//! (`ciphers`), MACs (`macs`) and host-key algorithms (`host_key_algorithms`). Each is written
//! as OpenSSH writes it: `a,b` replaces the default list; `+a,b` appends to it; `-a,b` removes
//! from it; `^a,b` puts names at its head. A name may be a pattern with `*` and `?` (all the
//! supported names it matches, in the order of [`Kind::supported`]). Every name is checked
//! against what russh implements: an unknown name, `none`, a host-key algorithm with no host
//! key to sign with, or a list left empty is an error that says what is supported.
//!
//! The defaults are what an auditor (ssh-audit) passes without a warning, but for the
//! post-quantum note on the curve25519 exchanges kept for clients older than OpenSSH 9.9: the
//! hybrid post-quantum exchange first, no finite-field Diffie-Hellman (its arithmetic is what a
//! DHEat flood makes the server do; group14 is only 112 bits strong), no NIST curves, only
//! AEAD ciphers or encrypt-then-MAC MACs. Compression is not a list: `none` or the delayed
//! `zlib@openssh.com`, which russh starts only after authentication (plain `zlib` would inflate
//! what an unauthenticated client sends). russh's protocol markers (`ext-info-s`, strict key
//! exchange) are always offered and cannot be listed.

use std::borrow::Cow;
use std::fmt;

use russh::keys::{Algorithm, PrivateKey};
use russh::{cipher, compression, kex, mac, Preferred};

/// One of the lists a configuration can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Key exchange (`kex_algorithms`).
    Kex,
    /// Ciphers (`ciphers`).
    Cipher,
    /// Message authentication codes (`macs`).
    Mac,
    /// Host-key signature algorithms (`host_key_algorithms`).
    HostKey,
}

impl Kind {
    /// Every kind, in the order they are printed.
    pub const ALL: [Kind; 4] = [Kind::Kex, Kind::Cipher, Kind::Mac, Kind::HostKey];

    /// The configuration key that sets this list.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Kex => "kex_algorithms",
            Kind::Cipher => "ciphers",
            Kind::Mac => "macs",
            Kind::HostKey => "host_key_algorithms",
        }
    }

    /// The `sshvisor serve` flag that sets this list.
    pub fn flag(self) -> &'static str {
        match self {
            Kind::Kex => "--kex-algorithms",
            Kind::Cipher => "--ciphers",
            Kind::Mac => "--macs",
            Kind::HostKey => "--host-key-algorithms",
        }
    }

    /// The names sshvisor accepts for this list: what russh 0.65.1 implements, less `none`
    /// (and `clear`), which would leave the connection unprotected.
    pub fn supported(self) -> &'static [&'static str] {
        match self {
            Kind::Kex => &[
                "mlkem768x25519-sha256",
                "curve25519-sha256",
                "curve25519-sha256@libssh.org",
                "ecdh-sha2-nistp256",
                "ecdh-sha2-nistp384",
                "ecdh-sha2-nistp521",
                "diffie-hellman-group-exchange-sha256",
                "diffie-hellman-group-exchange-sha1",
                "diffie-hellman-group18-sha512",
                "diffie-hellman-group17-sha512",
                "diffie-hellman-group16-sha512",
                "diffie-hellman-group15-sha512",
                "diffie-hellman-group14-sha256",
                "diffie-hellman-group14-sha1",
                "diffie-hellman-group1-sha1",
            ],
            Kind::Cipher => &[
                "chacha20-poly1305@openssh.com",
                "aes256-gcm@openssh.com",
                "aes128-gcm@openssh.com",
                "aes256-ctr",
                "aes192-ctr",
                "aes128-ctr",
                "aes256-cbc",
                "aes192-cbc",
                "aes128-cbc",
            ],
            Kind::Mac => &[
                "hmac-sha2-512-etm@openssh.com",
                "hmac-sha2-256-etm@openssh.com",
                "hmac-sha1-etm@openssh.com",
                "hmac-sha2-512",
                "hmac-sha2-256",
                "hmac-sha1",
            ],
            Kind::HostKey => &[
                "ssh-ed25519",
                "ecdsa-sha2-nistp256",
                "ecdsa-sha2-nistp384",
                "ecdsa-sha2-nistp521",
                "rsa-sha2-512",
                "rsa-sha2-256",
                "ssh-rsa",
            ],
        }
    }

    /// The hardened default list.
    pub fn defaults(self) -> &'static [&'static str] {
        match self {
            Kind::Kex => &[
                "mlkem768x25519-sha256",
                "curve25519-sha256",
                // For clients older than OpenSSH 7.4 that know only the pre-RFC name.
                "curve25519-sha256@libssh.org",
            ],
            Kind::Cipher => &[
                "chacha20-poly1305@openssh.com",
                "aes256-gcm@openssh.com",
                "aes128-gcm@openssh.com",
                "aes256-ctr",
                "aes192-ctr",
                "aes128-ctr",
            ],
            Kind::Mac => &[
                "hmac-sha2-512-etm@openssh.com",
                "hmac-sha2-256-etm@openssh.com",
            ],
            // Only those the server holds a key for are offered.
            Kind::HostKey => &["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"],
        }
    }

    /// What the protocol calls a name of this list, for errors.
    fn what(self) -> &'static str {
        match self {
            Kind::Kex => "key exchange algorithm",
            Kind::Cipher => "cipher",
            Kind::Mac => "MAC",
            Kind::HostKey => "host-key algorithm",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// A list that cannot be used, and why (the message names the supported names).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AlgorithmError {
    /// The list at fault.
    pub kind: Kind,
    /// What is wrong and what would do.
    pub message: String,
}

/// The compression methods offered: never plain `zlib`, which compresses before
/// authentication.
pub const COMPRESSION: &[&str] = &["none", "zlib@openssh.com"];

/// The algorithms a listener offers: the four lists, checked. [`Algorithms::default`] is the
/// hardened policy; [`Algorithms::with`] changes one list in OpenSSH's syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Algorithms {
    kex: Vec<&'static str>,
    ciphers: Vec<&'static str>,
    macs: Vec<&'static str>,
    host_keys: Vec<&'static str>,
}

impl Default for Algorithms {
    /// The hardened defaults (see the module's docs).
    fn default() -> Self {
        Self {
            kex: Kind::Kex.defaults().to_vec(),
            ciphers: Kind::Cipher.defaults().to_vec(),
            macs: Kind::Mac.defaults().to_vec(),
            host_keys: Kind::HostKey.defaults().to_vec(),
        }
    }
}

impl Algorithms {
    /// These algorithms with the `kind` list set by `spec` (OpenSSH syntax, relative to the
    /// default list), for a server holding host keys of the algorithms `held` (which host-key
    /// algorithms can be named depends on them).
    pub fn with(
        mut self,
        kind: Kind,
        spec: &str,
        held: &[Algorithm],
    ) -> Result<Self, AlgorithmError> {
        let list = resolve(kind, spec, held).map_err(|message| AlgorithmError { kind, message })?;
        *self.list_mut(kind) = list;
        Ok(self)
    }

    /// The names of the `kind` list, in order of preference.
    pub fn names(&self, kind: Kind) -> &[&'static str] {
        match kind {
            Kind::Kex => &self.kex,
            Kind::Cipher => &self.ciphers,
            Kind::Mac => &self.macs,
            Kind::HostKey => &self.host_keys,
        }
    }

    /// The host-key algorithms offered by a server holding keys of the algorithms `held`.
    pub fn offered_host_keys(&self, held: &[Algorithm]) -> Vec<&'static str> {
        self.host_keys
            .iter()
            .copied()
            .filter(|name| Algorithm::new(name).is_ok_and(|algorithm| fits_a_key(&algorithm, held)))
            .collect()
    }

    /// Checks that `keys` can serve these algorithms: some host-key algorithm offered must be
    /// one a key can sign with, or no client could ever finish a key exchange.
    pub fn check_host_keys(&self, keys: &[PrivateKey]) -> Result<(), AlgorithmError> {
        let held: Vec<Algorithm> = keys.iter().map(PrivateKey::algorithm).collect();
        if self.offered_host_keys(&held).is_empty() {
            return Err(AlgorithmError {
                kind: Kind::HostKey,
                message: format!(
                    "none of {} fits the host key ({})",
                    self.host_keys.join(","),
                    held_names(&held)
                ),
            });
        }
        Ok(())
    }

    /// The lists as russh takes them.
    pub fn preferred(&self) -> Preferred {
        let mut kex: Vec<kex::Name> = self
            .kex
            .iter()
            .filter_map(|name| kex::Name::try_from(*name).ok())
            .collect();
        // russh's protocol markers: extension negotiation and strict key exchange (the
        // Terrapin fix). russh sends only the server's halves.
        kex.extend([
            kex::EXTENSION_SUPPORT_AS_CLIENT,
            kex::EXTENSION_SUPPORT_AS_SERVER,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
        ]);
        Preferred {
            kex: Cow::Owned(kex),
            key: Cow::Owned(
                self.host_keys
                    .iter()
                    .filter_map(|name| Algorithm::new(name).ok())
                    .collect(),
            ),
            host_key_certificates: Cow::Borrowed(&[]),
            cipher: Cow::Owned(
                self.ciphers
                    .iter()
                    .filter_map(|name| cipher::Name::try_from(*name).ok())
                    .collect(),
            ),
            mac: Cow::Owned(
                self.macs
                    .iter()
                    .filter_map(|name| mac::Name::try_from(*name).ok())
                    .collect(),
            ),
            compression: Cow::Owned(
                COMPRESSION
                    .iter()
                    .filter_map(|name| compression::Name::try_from(*name).ok())
                    .collect(),
            ),
        }
    }

    fn list_mut(&mut self, kind: Kind) -> &mut Vec<&'static str> {
        match kind {
            Kind::Kex => &mut self.kex,
            Kind::Cipher => &mut self.ciphers,
            Kind::Mac => &mut self.macs,
            Kind::HostKey => &mut self.host_keys,
        }
    }
}

/// Whether a host key of one of the algorithms `held` can sign for `algorithm` (any RSA key
/// signs for every RSA variant, as russh counts it).
fn fits_a_key(algorithm: &Algorithm, held: &[Algorithm]) -> bool {
    held.iter().any(|key| match algorithm {
        Algorithm::Rsa { .. } => matches!(key, Algorithm::Rsa { .. }),
        other => key == other,
    })
}

fn held_names(held: &[Algorithm]) -> String {
    if held.is_empty() {
        return "none".into();
    }
    held.iter()
        .map(|a| a.as_str().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a list changes the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Replace,
    Append,
    Remove,
    Prepend,
}

/// The `kind` list written as `spec`, checked.
fn resolve(kind: Kind, spec: &str, held: &[Algorithm]) -> Result<Vec<&'static str>, String> {
    let spec = spec.trim();
    let (op, rest) = match spec.chars().next() {
        Some('+') => (Op::Append, &spec[1..]),
        Some('-') => (Op::Remove, &spec[1..]),
        Some('^') => (Op::Prepend, &spec[1..]),
        _ => (Op::Replace, spec),
    };
    let supported = kind.supported();
    let supported_text = || supported.join(",");
    if rest.trim().is_empty() {
        return Err(format!(
            "the list is empty; supported: {}",
            supported_text()
        ));
    }
    // Each entry, expanded into the supported names it stands for.
    let mut named: Vec<&'static str> = Vec::new();
    for entry in rest.split(',') {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(format!("an empty name in {spec:?} (a stray comma?)"));
        }
        let matched = expand(kind, entry, op, held)?;
        for name in matched {
            if !named.contains(&name) {
                named.push(name);
            }
        }
    }
    let defaults = kind.defaults().iter().copied();
    let list: Vec<&'static str> = match op {
        Op::Replace => named,
        Op::Append => defaults.chain(named).fold(Vec::new(), |mut list, name| {
            if !list.contains(&name) {
                list.push(name);
            }
            list
        }),
        Op::Remove => defaults.filter(|name| !named.contains(name)).collect(),
        Op::Prepend => named
            .iter()
            .copied()
            .chain(defaults.filter(|name| !named.contains(name)))
            .collect(),
    };
    let offered: Vec<&'static str> = match kind {
        Kind::HostKey => list
            .iter()
            .copied()
            .filter(|name| Algorithm::new(name).is_ok_and(|a| fits_a_key(&a, held)))
            .collect(),
        _ => list.clone(),
    };
    if offered.is_empty() {
        return Err(format!(
            "{spec:?} leaves no {} to offer; supported: {}",
            kind.what(),
            supported_text()
        ));
    }
    Ok(list)
}

/// The supported names `entry` stands for: itself, or all a pattern matches.
fn expand(
    kind: Kind,
    entry: &str,
    op: Op,
    held: &[Algorithm],
) -> Result<Vec<&'static str>, String> {
    let supported = kind.supported();
    let is_pattern = entry.contains(['*', '?']);
    if is_pattern {
        let matched: Vec<&'static str> = supported
            .iter()
            .copied()
            .filter(|name| wildcard_match(entry, name))
            .collect();
        if matched.is_empty() {
            return Err(format!(
                "the pattern {entry:?} matches no supported {}; supported: {}",
                kind.what(),
                supported.join(",")
            ));
        }
        return Ok(matched);
    }
    if entry == "none" || entry == "clear" {
        let unprotected = match kind {
            Kind::Kex => "no key exchange at all",
            Kind::Cipher => "no encryption",
            Kind::Mac => "no integrity protection",
            Kind::HostKey => "no host key",
        };
        return Err(format!(
            "{entry:?} is refused: it means {unprotected}; supported: {}",
            supported.join(",")
        ));
    }
    if kind == Kind::Kex && is_kex_marker(entry) {
        return Err(format!(
            "{entry:?} is a protocol marker sshvisor always offers: it cannot be listed"
        ));
    }
    let Some(name) = supported.iter().copied().find(|name| *name == entry) else {
        return Err(format!(
            "{entry:?} is not a {} sshvisor supports; supported: {}",
            kind.what(),
            supported.join(",")
        ));
    };
    if kind == Kind::HostKey && op != Op::Remove {
        let fits = Algorithm::new(name).is_ok_and(|a| fits_a_key(&a, held));
        if !fits {
            let usable: Vec<&str> = supported
                .iter()
                .copied()
                .filter(|n| Algorithm::new(n).is_ok_and(|a| fits_a_key(&a, held)))
                .collect();
            return Err(format!(
                "{entry:?} needs a host key of that type and this server holds {}; supported here: {}",
                held_names(held),
                usable.join(",")
            ));
        }
    }
    Ok(vec![name])
}

fn is_kex_marker(name: &str) -> bool {
    [
        kex::EXTENSION_SUPPORT_AS_CLIENT,
        kex::EXTENSION_SUPPORT_AS_SERVER,
        kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
        kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
    ]
    .iter()
    .any(|marker| marker.as_ref() == name)
}

/// OpenSSH's `match_pattern`: `*` matches any run of characters, `?` any one.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative match with backtracking to the last `*`.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &[Algorithm] = &[Algorithm::Ed25519];

    fn kex(spec: &str) -> Result<Vec<&'static str>, String> {
        resolve(Kind::Kex, spec, ED25519)
    }

    #[test]
    fn the_defaults_are_the_hardened_lists_and_every_name_is_one_russh_knows() {
        let a = Algorithms::default();
        assert_eq!(
            a.names(Kind::Kex),
            [
                "mlkem768x25519-sha256",
                "curve25519-sha256",
                "curve25519-sha256@libssh.org"
            ]
        );
        assert!(a
            .names(Kind::Mac)
            .iter()
            .all(|m| m.ends_with("-etm@openssh.com")));
        let p = a.preferred();
        assert_eq!(p.kex.len(), 3 + 4, "the lists and russh's four markers");
        assert_eq!(p.cipher.len(), a.names(Kind::Cipher).len());
        assert_eq!(p.mac.len(), 2);
        assert_eq!(p.key.len(), 3);
        let compression: Vec<&str> = p.compression.iter().map(|c| c.as_ref()).collect();
        assert_eq!(compression, ["none", "zlib@openssh.com"]);
        for kind in Kind::ALL {
            for name in kind.supported() {
                let known = match kind {
                    Kind::Kex => kex::Name::try_from(*name).is_ok(),
                    Kind::Cipher => cipher::Name::try_from(*name).is_ok(),
                    Kind::Mac => mac::Name::try_from(*name).is_ok(),
                    Kind::HostKey => Algorithm::new(name).is_ok(),
                };
                assert!(known, "{kind}: russh does not know {name}");
            }
        }
        assert_eq!(a.offered_host_keys(ED25519), ["ssh-ed25519"]);
    }

    #[test]
    fn a_plain_list_replaces_plus_appends_minus_removes_caret_puts_first() {
        assert_eq!(kex("curve25519-sha256").unwrap(), ["curve25519-sha256"]);
        assert_eq!(
            kex("+diffie-hellman-group16-sha512,curve25519-sha256").unwrap(),
            [
                "mlkem768x25519-sha256",
                "curve25519-sha256",
                "curve25519-sha256@libssh.org",
                "diffie-hellman-group16-sha512"
            ]
        );
        assert_eq!(
            kex("-curve25519-sha256@libssh.org").unwrap(),
            ["mlkem768x25519-sha256", "curve25519-sha256"]
        );
        assert_eq!(
            kex("^curve25519-sha256,ecdh-sha2-nistp256").unwrap(),
            [
                "curve25519-sha256",
                "ecdh-sha2-nistp256",
                "mlkem768x25519-sha256",
                "curve25519-sha256@libssh.org"
            ]
        );
        // Spaces around names are forgiven, repeats are dropped.
        assert_eq!(
            kex(" curve25519-sha256 , curve25519-sha256 ").unwrap(),
            ["curve25519-sha256"]
        );
    }

    #[test]
    fn patterns_with_star_and_question_mark_match_supported_names() {
        assert_eq!(kex("-curve25519*").unwrap(), ["mlkem768x25519-sha256"]);
        assert_eq!(
            resolve(Kind::Cipher, "-aes*-ctr", ED25519).unwrap(),
            [
                "chacha20-poly1305@openssh.com",
                "aes256-gcm@openssh.com",
                "aes128-gcm@openssh.com"
            ]
        );
        assert_eq!(
            resolve(Kind::Cipher, "-aes1??-*", ED25519).unwrap(),
            [
                "chacha20-poly1305@openssh.com",
                "aes256-gcm@openssh.com",
                "aes256-ctr"
            ]
        );
        // Removing what the default does not hold is no mistake.
        assert_eq!(kex("-diffie-hellman-*").unwrap().len(), 3);
        assert_eq!(
            kex("ecdh-sha2-nistp*").unwrap(),
            [
                "ecdh-sha2-nistp256",
                "ecdh-sha2-nistp384",
                "ecdh-sha2-nistp521"
            ]
        );
        let e = kex("-sntrup*").unwrap_err();
        assert!(
            e.contains("matches no supported") && e.contains("curve25519-sha256"),
            "{e}"
        );
        assert!(wildcard_match("a*b*c", "aXXbYYc"));
        assert!(!wildcard_match("a*b", "aXXbYYc"));
        assert!(wildcard_match("*", ""));
    }

    #[test]
    fn unknown_names_none_markers_and_empty_lists_are_refused_with_the_supported_names() {
        let e = kex("curve25519-sha256,sntrup761x25519-sha512").unwrap_err();
        assert!(
            e.contains("\"sntrup761x25519-sha512\" is not a key exchange algorithm")
                && e.contains("supported: mlkem768x25519-sha256,"),
            "{e}"
        );
        let e = kex("+none").unwrap_err();
        assert!(e.contains("\"none\" is refused"), "{e}");
        let e = resolve(Kind::Cipher, "none", ED25519).unwrap_err();
        assert!(e.contains("no encryption"), "{e}");
        let e = resolve(Kind::Mac, "^none", ED25519).unwrap_err();
        assert!(e.contains("no integrity"), "{e}");
        let e = kex("ext-info-s").unwrap_err();
        assert!(e.contains("always offers"), "{e}");
        let e = kex("-mlkem768x25519-sha256,curve25519-sha256*").unwrap_err();
        assert!(e.contains("leaves no key exchange algorithm"), "{e}");
        for empty in ["", "+", "-", " ^ "] {
            let e = kex(empty).unwrap_err();
            assert!(e.contains("the list is empty"), "{empty:?}: {e}");
        }
        let e = kex("curve25519-sha256,").unwrap_err();
        assert!(e.contains("stray comma"), "{e}");
        // The plain `zlib` and the MACs of encrypt-and-MAC are allowed by name (an operator's
        // choice), never by default.
        assert!(resolve(Kind::Mac, "+hmac-sha2-256", ED25519).is_ok());
    }

    #[test]
    fn host_key_algorithms_must_have_a_host_key_to_sign_with() {
        let e = resolve(Kind::HostKey, "rsa-sha2-512", ED25519).unwrap_err();
        assert!(
            e.contains("holds ssh-ed25519") && e.contains("supported here: ssh-ed25519"),
            "{e}"
        );
        assert!(resolve(Kind::HostKey, "+ecdsa-sha2-nistp256", ED25519).is_err());
        assert_eq!(
            resolve(Kind::HostKey, "ssh-ed25519", ED25519).unwrap(),
            ["ssh-ed25519"]
        );
        let e = resolve(Kind::HostKey, "-ssh-ed25519", ED25519).unwrap_err();
        assert!(e.contains("leaves no host-key algorithm"), "{e}");
        let rsa = [Algorithm::Rsa { hash: None }];
        assert_eq!(
            resolve(Kind::HostKey, "-rsa-sha2-256", &rsa).unwrap(),
            ["ssh-ed25519", "rsa-sha2-512"]
        );
        // A listener whose lists no host key can serve is refused.
        let ed25519 = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        assert!(Algorithms::default()
            .check_host_keys(std::slice::from_ref(&ed25519))
            .is_ok());
        let rsa_only = Algorithms::default()
            .with(Kind::HostKey, "rsa-sha2-512", &rsa)
            .unwrap();
        let e = rsa_only
            .check_host_keys(std::slice::from_ref(&ed25519))
            .unwrap_err();
        assert_eq!(
            e.message,
            "none of rsa-sha2-512 fits the host key (ssh-ed25519)"
        );
        assert_eq!(
            Algorithms::default()
                .with(Kind::HostKey, "+ssh-rsa", &rsa)
                .unwrap()
                .offered_host_keys(&rsa),
            ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
        );
    }
}
