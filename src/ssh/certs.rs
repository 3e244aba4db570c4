//! OpenSSH user certificates: the CAs trusted to sign them (`trusted_user_ca_keys`), the
//! principals a user may log in as (`authorized_principals`), and what a certificate itself
//! says: its critical options (`force-command`, `source-address`) and extensions
//! (`permit-pty`, ...).
//!
//! russh has already refused a certificate outside its validity window or with a bad CA
//! signature before any of this is asked; whether that CA is trusted is decided here.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::Certificate;
use russh::keys::{HashAlg, PublicKey};
use sshvisor_actors::{CertificateInfo, Credential};
use tracing::{debug, warn};

use crate::ssh::address_patterns::AddressPatterns;
use crate::ssh::key_options::{split_options, KeyOptions};
use crate::ssh::keys::KeyError;
use crate::ssh::restrictions::Restrictions;

/// The CA keys trusted to sign user certificates (sshd's `TrustedUserCAKeys`).
#[derive(Debug, Clone, Default)]
pub struct UserCas {
    cas: Vec<KeyData>,
}

impl UserCas {
    /// Reads a file of CA public keys, one per line (`#` comments and blank lines skipped).
    /// Any line that is not a public key is an error: a CA an operator listed and the server
    /// silently left out would lock its users out without a word.
    pub fn read_file(path: &Path) -> Result<Self, KeyError> {
        let err = |message: String| KeyError::Certificates {
            path: path.to_path_buf(),
            message,
        };
        let text = fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut cas = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = PublicKey::from_openssh(line)
                .map_err(|e| err(format!("line {}: not a public key: {e}", n + 1)))?;
            cas.push(key.key_data().clone());
        }
        if cas.is_empty() {
            return Err(err("the file holds no CA key".into()));
        }
        Ok(Self { cas })
    }

    /// Whether `key` is a trusted CA.
    pub fn trusts(&self, key: &KeyData) -> bool {
        self.cas.iter().any(|ca| ca == key)
    }

    /// How many CAs are trusted.
    pub fn len(&self) -> usize {
        self.cas.len()
    }

    /// Whether no CA is trusted.
    pub fn is_empty(&self) -> bool {
        self.cas.is_empty()
    }
}

/// The principals file of each user (sshd's `AuthorizedPrincipalsFile`): a path in which `%u`
/// stands for the user name (`%%` for `%`). Read at each login, as sshd does.
#[derive(Debug, Clone)]
pub struct PrincipalsFiles {
    template: String,
}

impl PrincipalsFiles {
    /// Files named by `template` (`/etc/ssh/principals/%u`).
    pub fn new(template: impl Into<String>) -> Self {
        Self {
            template: template.into(),
        }
    }

    /// The file of `user`.
    pub fn path_for(&self, user: &str) -> PathBuf {
        let mut out = String::new();
        let mut chars = self.template.chars();
        while let Some(c) = chars.next() {
            match (c, chars.clone().next()) {
                ('%', Some('u')) => {
                    chars.next();
                    out.push_str(user);
                }
                ('%', Some('%')) => {
                    chars.next();
                    out.push('%');
                }
                _ => out.push(c),
            }
        }
        PathBuf::from(out)
    }

    /// The verdict on `cert` for `user` from `peer`: the restrictions of the first line of the
    /// user's file that names one of the certificate's principals and whose options admit the
    /// login. A line with a bad option is skipped (and logged), as in authorized_keys.
    pub fn admit(
        &self,
        user: &str,
        cert: &Certificate,
        peer: IpAddr,
        now: SystemTime,
    ) -> Result<Restrictions, String> {
        let no_principal = || format!("the certificate names no principal authorized for {user}");
        let path = self.path_for(user);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                debug!(path = %path.display(), error = %e, "no authorized principals file");
                return Err(no_principal());
            }
        };
        let mut first_refusal = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let place = format!("{}:{}", path.display(), n + 1);
            let parsed = split_options(line, |s| !s.contains([' ', '\t']))
                .and_then(|(opts, name)| Ok((KeyOptions::parse(opts)?, name)));
            let (options, name) = match parsed {
                Ok(parsed) => parsed,
                Err(reason) => {
                    warn!("{place}: line refused: {reason}");
                    continue;
                }
            };
            if !cert.valid_principals().iter().any(|p| p == name) {
                continue;
            }
            match options.admit(peer, now) {
                Ok(restrictions) => return Ok(restrictions),
                Err(reason) => {
                    first_refusal.get_or_insert(reason);
                }
            }
        }
        Err(first_refusal.unwrap_or_else(no_principal))
    }
}

/// Whether `cert` names one of `wanted` among its principals (for `user`, said in the reason).
pub fn check_principals(cert: &Certificate, user: &str, wanted: &[&str]) -> Result<(), String> {
    if cert.valid_principals().is_empty() {
        return Err("the certificate names no principals".into());
    }
    if cert
        .valid_principals()
        .iter()
        .any(|p| wanted.contains(&p.as_str()))
    {
        Ok(())
    } else {
        Err(format!("the certificate is not valid for user {user}"))
    }
}

/// What the certificate itself permits a login from `peer`: its critical options (an unknown
/// one refuses it, as OpenSSH does) and its extensions (a permission it does not list is not
/// given).
pub fn certificate_restrictions(cert: &Certificate, peer: IpAddr) -> Result<Restrictions, String> {
    let mut r = Restrictions::restricted();
    for (name, value) in cert.critical_options().iter() {
        match name.as_str() {
            "force-command" => r.force_command = Some(value.clone()),
            "source-address" => {
                let nets = AddressPatterns::parse(value)
                    .map_err(|e| format!("the certificate's source-address cannot be read: {e}"))?;
                if !nets.admits(peer) {
                    return Err(format!(
                        "this certificate may not log in from {}",
                        peer.to_canonical()
                    ));
                }
            }
            other => {
                return Err(format!(
                    "the certificate has a critical option sshvisor does not support: {other}"
                ))
            }
        }
    }
    for name in cert.extensions().keys() {
        match name.as_str() {
            "permit-pty" => r.pty = true,
            "permit-port-forwarding" => r.port_forwarding = true,
            "permit-agent-forwarding" => r.agent_forwarding = true,
            "permit-X11-forwarding" => r.x11_forwarding = true,
            "permit-user-rc" => r.user_rc = true,
            // Extensions a server does not know are ignored (PROTOCOL.certkeys).
            _ => {}
        }
    }
    Ok(r)
}

/// Whether `cert` is within its validity window at `now` (russh checks it too; checked again
/// so that no path depends on that).
pub fn within_validity(cert: &Certificate, now: SystemTime) -> bool {
    cert.valid_after_time().is_none_or(|t| now >= t)
        && cert.valid_before_time().is_none_or(|t| now <= t)
}

/// The SHA-256 fingerprint of a key, as OpenSSH prints it.
pub fn key_fingerprint(key: &KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Who holds a plain key.
pub fn key_credential(key: &KeyData) -> Credential {
    Credential {
        key_fingerprint: key_fingerprint(key),
        certificate: None,
    }
}

/// Who holds a certificate: its key, key ID, serial and CA.
pub fn certificate_credential(cert: &Certificate) -> Credential {
    Credential {
        key_fingerprint: key_fingerprint(cert.public_key()),
        certificate: Some(CertificateInfo {
            key_id: cert.key_id().to_string(),
            serial: cert.serial(),
            ca_fingerprint: key_fingerprint(cert.signature_key()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_principals_file_name_takes_the_user() {
        let files = PrincipalsFiles::new("/etc/ssh/principals/%u-100%%");
        assert_eq!(
            files.path_for("alice"),
            PathBuf::from("/etc/ssh/principals/alice-100%")
        );
    }
}
