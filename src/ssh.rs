//! The russh binding: everything that speaks SSH. It never imports `session`: applications
//! plug in through `sessions::SessionFactory`.
//!
//! - `server`: the listener and accept loop (`SshListener`, `SshOptions`); one task per
//!   connection driving `russh::server::run_stream`.
//! - `algorithms`: which algorithms are offered (`Algorithms`): the hardened defaults and
//!   OpenSSH's list syntax to change them.
//! - `handler`: the russh `Handler`, a thin adapter from callbacks to actor messages.
//! - `auth`: who may log in (`Authenticator`, implemented by `AuthorizedKeys` and by
//!   `KeyAuthority`, which adds certificates and revocation), and the `Verdict` on a login.
//! - `keys`: host key, generated client key, authorized_keys (OpenSSH formats).
//! - `key_options`: the options of an authorized_keys line (`from=`, `command=`, `restrict`, ...).
//! - `address_patterns`: `from=` and `source-address` pattern lists.
//! - `certs`: OpenSSH user certificates: trusted CAs, authorized principals, critical options.
//! - `restrictions`: what a login may do once admitted (`Restrictions`), carried to its sessions.
//! - `revoked`: revoked keys and certificates (`revoked_keys`: a KRL or a plain key list).
//! - `sessions`: what the binding offers a session application: the `SessionFactory` an
//!   embedding program implements to serve its own (`session::app::DefaultSessions` by
//!   default), `Login`, `SessionChannel`, `Endpoints`.
//! - `channels`: a connection's session channels: actor, stdin sink and held queue of each, and
//!   the application (`SessionFactory`) that opens them.
//! - `signals`: signal names as the protocol spells them (`INT`, without `SIG`), russh's `Sig`,
//!   and the signals they stand for.
//! - `stream`: the TCP stream wrapper the connection actor can cut (the forced path).
//! - `link`: the russh implementation of the tree's `ConnectionLink`.
//! - `penalties`: per-source penalties (`Penalties`, `PenaltyPolicy`): sources that connect
//!   too fast or misbehave are refused at the door, before any key exchange.
//! - `activity`: a connection's and its sessions' traffic (idle times, bytes).
//! - `after_goodbye`: what a connection keeps until its DISCONNECT is queued.
//! - `counted`: a channel stream whose writes count as traffic.
//! - `held_channel`: a session channel's russh queue, kept empty until the session starts.

pub mod activity;
pub mod address_patterns;
pub mod after_goodbye;
pub mod algorithms;
pub mod auth;
pub mod certs;
pub(crate) mod channels;
pub mod counted;
pub mod handler;
pub mod held_channel;
pub mod key_options;
pub mod keys;
pub mod link;
pub mod penalties;
pub mod restrictions;
pub mod revoked;
pub mod server;
pub mod sessions;
pub(crate) mod signals;
pub mod stream;
