//! Who may log in: the [`Authenticator`] the russh handler asks, and its implementation for an
//! authorized_keys set.

use russh::keys::PublicKey;
use tracing::debug;

use crate::ssh::keys::{fingerprint, AuthorizedKeys};

/// Decides logins. Asked from inside russh's session loop: it must answer without waiting.
pub trait Authenticator: Send + Sync + 'static {
    /// Whether `user` may log in with `key`. Asked when the client offers the key and again
    /// once it has proved it holds the private half.
    fn publickey(&self, user: &str, key: &PublicKey) -> bool;
}

impl Authenticator for AuthorizedKeys {
    fn publickey(&self, user: &str, key: &PublicKey) -> bool {
        let allowed = self.allows(key);
        if !allowed {
            debug!(user, key = %fingerprint(key), "public key not authorized");
        }
        allowed
    }
}
