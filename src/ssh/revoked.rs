//! Revoked keys and certificates (`revoked_keys`): an OpenSSH key revocation list (KRL, made
//! by `ssh-keygen -k`) or a plain file of public keys, as sshd's `RevokedKeys` reads them.
//!
//! A KRL (OpenSSH's PROTOCOL.krl) revokes plain keys (by their blob, or by their SHA-1 or
//! SHA-256 hash) and certificates (by serial, serial range, serial bitmap or key ID, under one
//! CA or under any CA). A certificate is refused when it is revoked as a certificate or when its
//! own key is revoked as a plain key, so revoking a leaked key also ends the certificates issued
//! for it. KRL signatures are not checked, as sshd does not: the file's protection is its path.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::Certificate;
use russh::keys::{HashAlg, PublicKey};
use sha1::{Digest, Sha1};

use crate::ssh::keys::KeyError;

/// The magic a KRL file starts with ("SSHKRL\n\0").
const KRL_MAGIC: &[u8; 8] = b"SSHKRL\n\0";
/// The only KRL format version there is.
const KRL_FORMAT_VERSION: u32 = 1;

const SECTION_CERTIFICATES: u8 = 1;
const SECTION_EXPLICIT_KEY: u8 = 2;
const SECTION_FINGERPRINT_SHA1: u8 = 3;
const SECTION_SIGNATURE: u8 = 4;
const SECTION_FINGERPRINT_SHA256: u8 = 5;

const CERT_SERIAL_LIST: u8 = 0x20;
const CERT_SERIAL_RANGE: u8 = 0x21;
const CERT_SERIAL_BITMAP: u8 = 0x22;
const CERT_KEY_ID: u8 = 0x23;

/// The keys and certificates that may not log in.
#[derive(Debug, Clone, Default)]
pub struct RevokedKeys {
    /// Plain keys revoked by their key data.
    keys: HashSet<KeyData>,
    /// Plain keys revoked by the SHA-1 hash of their blob.
    sha1: HashSet<Vec<u8>>,
    /// Plain keys revoked by the SHA-256 hash of their blob.
    sha256: HashSet<Vec<u8>>,
    /// Certificates revoked under one CA, or under any CA (`ca: None`).
    certificates: Vec<CaRevocations>,
}

/// What one certificate section of a KRL revokes.
#[derive(Debug, Clone, Default)]
struct CaRevocations {
    /// The CA whose certificates these are; none: any CA.
    ca: Option<KeyData>,
    /// Revoked serials as inclusive ranges (a single serial is a range of one).
    serials: Vec<(u64, u64)>,
    /// Revoked key IDs.
    key_ids: HashSet<String>,
}

impl RevokedKeys {
    /// Reads `path`: a KRL if it starts with the KRL magic, else a plain file of public keys
    /// (one per line, as in authorized_keys without options; `#` comments and blank lines
    /// skipped). A file that cannot be read or parsed is an error: an operator who names a
    /// revocation list must not get a server that silently ignores it.
    pub fn read_file(path: &Path) -> Result<Self, KeyError> {
        let bytes = fs::read(path).map_err(|e| KeyError::Revoked {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let parsed = if bytes.starts_with(KRL_MAGIC) {
            Self::from_krl(&bytes)
        } else {
            Self::from_plain(&bytes)
        };
        parsed.map_err(|message| KeyError::Revoked {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Whether the plain key `key` is revoked.
    pub fn revokes_key(&self, key: &KeyData) -> bool {
        if self.keys.contains(key) {
            return true;
        }
        if self.sha1.is_empty() && self.sha256.is_empty() {
            return false;
        }
        let Ok(blob) = PublicKey::from(key.clone()).to_bytes() else {
            return false;
        };
        self.sha1.contains(Sha1::digest(&blob).as_slice())
            || self
                .sha256
                .contains(key.fingerprint(HashAlg::Sha256).as_bytes())
    }

    /// Whether `cert` is revoked: as a certificate of its CA (serial or key ID), or through its
    /// own key.
    pub fn revokes_certificate(&self, cert: &Certificate) -> bool {
        let by_ca = self.certificates.iter().any(|section| {
            let ca_matches = section
                .ca
                .as_ref()
                .is_none_or(|ca| ca == cert.signature_key());
            ca_matches
                && (section.key_ids.contains(cert.key_id())
                    || section
                        .serials
                        .iter()
                        .any(|(lo, hi)| (*lo..=*hi).contains(&cert.serial())))
        });
        by_ca || self.revokes_key(cert.public_key())
    }

    /// How many entries the list holds (keys, hashes, serial ranges and key IDs).
    pub fn len(&self) -> usize {
        self.keys.len()
            + self.sha1.len()
            + self.sha256.len()
            + self
                .certificates
                .iter()
                .map(|c| c.serials.len() + c.key_ids.len())
                .sum::<usize>()
    }

    /// Whether the list revokes nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn from_plain(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| "neither a KRL nor a text file of public keys".to_string())?;
        let mut revoked = Self::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = match PublicKey::from_openssh(line) {
                Ok(key) => key.key_data().clone(),
                // A certificate line revokes the certificate's key, in every certificate.
                Err(_) => Certificate::from_openssh(line)
                    .map(|cert| cert.public_key().clone())
                    .map_err(|e| format!("line {}: not a public key ({e})", n + 1))?,
            };
            revoked.keys.insert(key);
        }
        Ok(revoked)
    }

    fn from_krl(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader::new(bytes);
        r.take(KRL_MAGIC.len())?;
        let version = r.u32()?;
        if version != KRL_FORMAT_VERSION {
            return Err(format!(
                "KRL format version {version} is not supported (only {KRL_FORMAT_VERSION})"
            ));
        }
        let _krl_version = r.u64()?;
        let _generated = r.u64()?;
        let _flags = r.u64()?;
        let _reserved = r.string()?;
        let _comment = r.string()?;
        let mut revoked = Self::default();
        while !r.is_empty() {
            let kind = r.u8()?;
            let data = r.string()?;
            let mut section = Reader::new(data);
            match kind {
                SECTION_CERTIFICATES => revoked
                    .certificates
                    .push(CaRevocations::parse(&mut section)?),
                SECTION_EXPLICIT_KEY => {
                    while !section.is_empty() {
                        let blob = section.string()?;
                        let key = PublicKey::from_bytes(blob)
                            .map_err(|e| format!("a revoked key cannot be read: {e}"))?;
                        revoked.keys.insert(key.key_data().clone());
                    }
                }
                SECTION_FINGERPRINT_SHA1 => {
                    while !section.is_empty() {
                        revoked.sha1.insert(section.string()?.to_vec());
                    }
                }
                SECTION_FINGERPRINT_SHA256 => {
                    while !section.is_empty() {
                        revoked.sha256.insert(section.string()?.to_vec());
                    }
                }
                // The signature covers what comes before it; sshd does not check it either.
                SECTION_SIGNATURE => {}
                other => return Err(format!("unknown KRL section type {other}")),
            }
        }
        Ok(revoked)
    }
}

impl CaRevocations {
    fn parse(r: &mut Reader<'_>) -> Result<Self, String> {
        let ca_blob = r.string()?;
        let ca = if ca_blob.is_empty() {
            None
        } else {
            let key = PublicKey::from_bytes(ca_blob)
                .map_err(|e| format!("a KRL's CA key cannot be read: {e}"))?;
            Some(key.key_data().clone())
        };
        let _reserved = r.string()?;
        let mut section = Self {
            ca,
            ..Self::default()
        };
        while !r.is_empty() {
            let kind = r.u8()?;
            let data = r.string()?;
            let mut sub = Reader::new(data);
            match kind {
                CERT_SERIAL_LIST => {
                    while !sub.is_empty() {
                        let serial = sub.u64()?;
                        section.serials.push((serial, serial));
                    }
                }
                CERT_SERIAL_RANGE => {
                    let lo = sub.u64()?;
                    let hi = sub.u64()?;
                    if lo > hi {
                        return Err(format!("a KRL serial range runs backwards ({lo}-{hi})"));
                    }
                    section.serials.push((lo, hi));
                }
                CERT_SERIAL_BITMAP => {
                    let offset = sub.u64()?;
                    section
                        .serials
                        .extend(bitmap_serials(offset, sub.string()?)?);
                }
                CERT_KEY_ID => {
                    while !sub.is_empty() {
                        let id = std::str::from_utf8(sub.string()?)
                            .map_err(|_| "a KRL key ID is not UTF-8".to_string())?;
                        section.key_ids.insert(id.to_string());
                    }
                }
                other => return Err(format!("unknown KRL certificate section type {other:#x}")),
            }
        }
        Ok(section)
    }
}

/// The serials an SSH mpint bitmap revokes: bit N (from the least significant) is serial
/// `offset + N`.
fn bitmap_serials(offset: u64, mpint: &[u8]) -> Result<Vec<(u64, u64)>, String> {
    let mut serials = Vec::new();
    for (i, byte) in mpint.iter().rev().enumerate() {
        for bit in 0..8u64 {
            if byte & (1 << bit) != 0 {
                let serial = (i as u64)
                    .checked_mul(8)
                    .and_then(|b| b.checked_add(bit))
                    .and_then(|n| offset.checked_add(n))
                    .ok_or_else(|| "a KRL serial bitmap runs past 2^64".to_string())?;
                serials.push((serial, serial));
            }
        }
    }
    Ok(serials)
}

/// Reads SSH wire encoding (big-endian integers, length-prefixed strings).
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err("the KRL is truncated".into());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let hi = u64::from(self.u32()?);
        let lo = u64::from(self.u32()?);
        Ok(hi << 32 | lo)
    }

    fn string(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    //! Lists made by the real `ssh-keygen`, the tool operators use.

    use std::process::Command;

    use super::*;

    struct Dir {
        dir: tempfile::TempDir,
    }

    impl Dir {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self, name: &str) -> std::path::PathBuf {
            self.dir.path().join(name)
        }

        fn keygen(&self, args: &[&str]) {
            let out = Command::new("ssh-keygen")
                .args(args)
                .current_dir(self.dir.path())
                .output()
                .expect("ssh-keygen (openssh-client) is needed by these tests");
            assert!(
                out.status.success(),
                "ssh-keygen {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        /// A new ed25519 key `name` (and `name.pub`).
        fn key(&self, name: &str) -> PublicKey {
            self.keygen(&["-q", "-t", "ed25519", "-N", "", "-C", name, "-f", name]);
            PublicKey::read_openssh_file(self.path(&format!("{name}.pub"))).unwrap()
        }

        /// A certificate for `name.pub` signed by `ca`, with this serial and key ID.
        fn cert(&self, ca: &str, name: &str, serial: u64, id: &str) -> Certificate {
            self.key(name);
            let serial = serial.to_string();
            let pubfile = format!("{name}.pub");
            self.keygen(&[
                "-q", "-s", ca, "-I", id, "-n", "alice", "-z", &serial, &pubfile,
            ]);
            Certificate::read_file(&self.path(&format!("{name}-cert.pub"))).unwrap()
        }

        fn krl(&self, specs: &str) -> RevokedKeys {
            std::fs::write(self.path("spec"), specs).unwrap();
            self.keygen(&["-k", "-f", "krl", "-s", "ca.pub", "spec"]);
            RevokedKeys::read_file(&self.path("krl")).unwrap()
        }
    }

    #[test]
    fn a_krl_revokes_certificates_by_serial_range_and_key_id_under_its_ca_only() {
        let d = Dir::new();
        d.key("ca");
        d.key("other_ca");
        let listed = d.cert("ca", "u1", 7, "alice@laptop");
        let in_range = d.cert("ca", "u2", 1003, "bob");
        let by_id = d.cert("ca", "u3", 50, "leaked-id");
        let fine = d.cert("ca", "u4", 8, "carol");
        let past_range = d.cert("ca", "u6", 1011, "dave");
        let other_ca = d.cert("other_ca", "u5", 7, "leaked-id");
        // ssh-keygen writes a bitmap, a list or a range, whichever is smallest.
        let krl =
            d.krl("serial: 7\nserial: 1000-1010\nserial: 2000\nserial: 2005\nid: leaked-id\n");
        assert!(krl.revokes_certificate(&listed));
        assert!(krl.revokes_certificate(&in_range));
        assert!(krl.revokes_certificate(&by_id));
        assert!(!krl.revokes_certificate(&fine));
        assert!(!krl.revokes_certificate(&past_range));
        assert!(
            !krl.revokes_certificate(&other_ca),
            "serials and IDs are the CA's own"
        );
    }

    #[test]
    fn a_krl_revokes_plain_keys_by_blob_and_by_hash_and_their_certificates() {
        let d = Dir::new();
        d.key("ca");
        let explicit = d.key("k1");
        let hashed = d.key("k2");
        let sha1_hashed = d.key("k4");
        let fine = d.key("k3");
        let cert_of_explicit = {
            let serial = "9";
            d.keygen(&[
                "-q", "-s", "ca", "-I", "x", "-n", "alice", "-z", serial, "k1.pub",
            ]);
            Certificate::read_file(&d.path("k1-cert.pub")).unwrap()
        };
        let explicit_line = std::fs::read_to_string(d.path("k1.pub")).unwrap();
        let krl = d.krl(&format!(
            "key: {explicit_line}\nhash: {}\nsha1: {}",
            fingerprint_of(&d, "k2.pub"),
            std::fs::read_to_string(d.path("k4.pub")).unwrap()
        ));
        assert!(krl.revokes_key(sha1_hashed.key_data()));
        assert!(krl.revokes_key(explicit.key_data()));
        assert!(krl.revokes_key(hashed.key_data()));
        assert!(!krl.revokes_key(fine.key_data()));
        assert!(
            krl.revokes_certificate(&cert_of_explicit),
            "a revoked key's certificates are revoked"
        );
    }

    fn fingerprint_of(d: &Dir, pubfile: &str) -> String {
        let out = Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f", pubfile])
            .current_dir(d.dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.split_whitespace().nth(1).unwrap().to_string()
    }

    #[test]
    fn a_plain_file_revokes_its_keys_and_their_certificates() {
        let d = Dir::new();
        d.key("ca");
        let bad = d.key("bad");
        let good = d.key("good");
        let cert = {
            d.keygen(&["-q", "-s", "ca", "-I", "x", "-n", "alice", "bad.pub"]);
            Certificate::read_file(&d.path("bad-cert.pub")).unwrap()
        };
        let line = std::fs::read_to_string(d.path("bad.pub")).unwrap();
        std::fs::write(d.path("revoked"), format!("# leaked 2026-12-01\n\n{line}")).unwrap();
        let list = RevokedKeys::read_file(&d.path("revoked")).unwrap();
        assert!(list.revokes_key(bad.key_data()));
        assert!(!list.revokes_key(good.key_data()));
        assert!(list.revokes_certificate(&cert));
        assert_eq!(list.len(), 1);
    }

    #[test]
    fn a_broken_list_is_an_error_that_names_the_file_and_the_line() {
        let d = Dir::new();
        std::fs::write(d.path("revoked"), "ssh-ed25519 AAAA!!\n").unwrap();
        let err = RevokedKeys::read_file(&d.path("revoked"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("revoked") && err.contains("line 1"), "{err}");
        let mut krl = KRL_MAGIC.to_vec();
        krl.extend_from_slice(&1u32.to_be_bytes());
        krl.extend_from_slice(&[0, 0, 0]);
        std::fs::write(d.path("krl"), &krl).unwrap();
        let err = RevokedKeys::read_file(&d.path("krl"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated"), "{err}");
        assert!(RevokedKeys::read_file(&d.path("missing")).is_err());
    }

    #[test]
    fn a_bitmap_names_serials_from_its_offset() {
        assert_eq!(
            bitmap_serials(100, &[0x01, 0x05]).unwrap(),
            vec![(100, 100), (102, 102), (108, 108)]
        );
    }
}
