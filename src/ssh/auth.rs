//! Who may log in: the [`Authenticator`] the russh handler asks, its implementation for an
//! authorized_keys set, and [`KeyAuthority`], which adds trusted user CAs, authorized
//! principals and revoked keys (what `sshvisor serve` runs with).
//!
//! A login is decided in two steps, as the protocol goes. When the client offers a key
//! ([`Authenticator::publickey`]) the server only says whether it would look at a signature:
//! yes for a key it recognises, and yes for any key once certificates may be accepted (russh
//! shows a certificate's offer as its bare key). Once the client has proved it holds the key,
//! [`Authenticator::login`] or [`Authenticator::certificate`] gives the [`Verdict`]: accepted
//! with its [`Restrictions`], rejected (not known here: the client may try its next key), or
//! refused with a reason (known, proved, and refused by a restriction), which the handler sends
//! in the connection's DISCONNECT so the person learns why.

use std::net::IpAddr;
use std::time::SystemTime;

use russh::keys::ssh_key::Certificate;
use russh::keys::PublicKey;
use tracing::debug;

use crate::ssh::certs::{self, PrincipalsFiles, UserCas};
use crate::ssh::keys::{fingerprint, AuthorizedKeys};
use crate::ssh::restrictions::Restrictions;
use crate::ssh::revoked::RevokedKeys;

/// The decision on a login whose key (or certificate) the client proved it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Logged in, within these limits.
    Accept(Restrictions),
    /// The key is not one this server knows: rejected, and the client may try another.
    Reject,
    /// The key is known but a restriction refuses this login; the text says why in words fit
    /// for the key's holder, and ends the connection.
    Refuse(String),
}

impl Verdict {
    /// This verdict, further limited by what `cert` itself permits a login from `peer`.
    pub(crate) fn and_certificate(self, cert: &Certificate, peer: IpAddr) -> Verdict {
        let Verdict::Accept(r) = self else {
            return self;
        };
        match certs::certificate_restrictions(cert, peer).and_then(|c| c.and(&r)) {
            Ok(both) => Verdict::Accept(both),
            Err(reason) => Verdict::Refuse(reason),
        }
    }
}

/// Decides logins. Asked from inside russh's session loop: it must answer without waiting.
pub trait Authenticator: Send + Sync + 'static {
    /// Whether a signature with `key` is worth checking for `user`: asked when the client
    /// offers the key, before it proves anything.
    fn publickey(&self, user: &str, key: &PublicKey) -> bool;

    /// The verdict on `user` from `peer` with `key`, whose private half the client has proved
    /// it holds. By default: accepted without restrictions when [`publickey`](Self::publickey)
    /// says yes.
    fn login(&self, user: &str, key: &PublicKey, peer: IpAddr) -> Verdict {
        let _ = peer;
        if self.publickey(user, key) {
            Verdict::Accept(Restrictions::unrestricted())
        } else {
            Verdict::Reject
        }
    }

    /// The verdict on `user` from `peer` with a user certificate whose CA signature and
    /// validity window russh has checked, and whose key the client has proved it holds
    /// (whether its CA is trusted is for this to say). By default: rejected.
    fn certificate(&self, user: &str, cert: &Certificate, peer: IpAddr) -> Verdict {
        let _ = (user, cert, peer);
        Verdict::Reject
    }
}

impl Authenticator for AuthorizedKeys {
    fn publickey(&self, user: &str, key: &PublicKey) -> bool {
        let known = self.allows(key) || self.has_cert_authorities();
        if !known {
            debug!(user, key = %fingerprint(key), "public key not authorized");
        }
        known
    }

    fn login(&self, _user: &str, key: &PublicKey, peer: IpAddr) -> Verdict {
        AuthorizedKeys::login(self, key.key_data(), peer, SystemTime::now())
    }

    fn certificate(&self, user: &str, cert: &Certificate, peer: IpAddr) -> Verdict {
        if !cert.cert_type().is_user() || !certs::within_validity(cert, SystemTime::now()) {
            return Verdict::Reject;
        }
        self.certificate_login(user, cert, peer, SystemTime::now())
    }
}

/// Logins by authorized_keys (options and `cert-authority` lines included), by certificates of
/// trusted user CAs (`trusted_user_ca_keys`, with `authorized_principals`), less revoked keys
/// and certificates (`revoked_keys`).
#[derive(Debug, Clone, Default)]
pub struct KeyAuthority {
    keys: AuthorizedKeys,
    cas: UserCas,
    principals: Option<PrincipalsFiles>,
    revoked: RevokedKeys,
}

impl KeyAuthority {
    /// Logins by `keys` alone.
    pub fn new(keys: AuthorizedKeys) -> Self {
        Self {
            keys,
            ..Self::default()
        }
    }

    /// Also certificates signed by `cas`.
    pub fn with_user_cas(mut self, cas: UserCas) -> Self {
        self.cas = cas;
        self
    }

    /// A certificate's principal must be listed in the user's file (else the user name must
    /// be among its principals).
    pub fn with_principals(mut self, files: PrincipalsFiles) -> Self {
        self.principals = Some(files);
        self
    }

    /// Refuses these keys and certificates.
    pub fn with_revoked(mut self, revoked: RevokedKeys) -> Self {
        self.revoked = revoked;
        self
    }

    /// Whether certificates may be accepted at all.
    fn takes_certificates(&self) -> bool {
        !self.cas.is_empty() || self.keys.has_cert_authorities()
    }

    /// The verdict on a certificate of a trusted CA.
    fn trusted_ca_login(&self, user: &str, cert: &Certificate, peer: IpAddr) -> Verdict {
        let now = SystemTime::now();
        let line = match &self.principals {
            Some(files) => files.admit(user, cert, peer, now),
            None => {
                certs::check_principals(cert, user, &[user]).map(|()| Restrictions::unrestricted())
            }
        };
        match line {
            Ok(r) => Verdict::Accept(self.keys.with_environment(r)).and_certificate(cert, peer),
            Err(reason) => Verdict::Refuse(reason),
        }
    }
}

impl Authenticator for KeyAuthority {
    fn publickey(&self, user: &str, key: &PublicKey) -> bool {
        self.takes_certificates() || self.keys.publickey(user, key)
    }

    fn login(&self, user: &str, key: &PublicKey, peer: IpAddr) -> Verdict {
        if self.keys.recognises(key.key_data()) && self.revoked.revokes_key(key.key_data()) {
            return Verdict::Refuse("this key is revoked".into());
        }
        Authenticator::login(&self.keys, user, key, peer)
    }

    fn certificate(&self, user: &str, cert: &Certificate, peer: IpAddr) -> Verdict {
        if !cert.cert_type().is_user() || !certs::within_validity(cert, SystemTime::now()) {
            return Verdict::Reject;
        }
        let ca = cert.signature_key();
        let trusted = self.cas.trusts(ca);
        if !trusted && !self.keys.is_cert_authority(ca) {
            debug!(user, ca = %certs::key_fingerprint(ca), "certificate of an untrusted CA");
            return Verdict::Reject;
        }
        if self.revoked.revokes_certificate(cert) || self.revoked.revokes_key(ca) {
            return Verdict::Refuse("this certificate is revoked".into());
        }
        if trusted {
            match self.trusted_ca_login(user, cert, peer) {
                Verdict::Accept(r) => return Verdict::Accept(r),
                // A cert-authority line for the same CA may still admit it.
                refused if !self.keys.is_cert_authority(ca) => return refused,
                _ => {}
            }
        }
        Authenticator::certificate(&self.keys, user, cert, peer)
    }
}
