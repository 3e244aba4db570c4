//! Which application serves a session channel: the [`SessionFactory`] an embedding program may
//! give the listener (`SshOptions::sessions`), and what it is given to build one.
//!
//! The russh handler asks the factory once per authenticated connection, at its first session
//! channel, for the connection's [`ConnectionSessions`], and asks that for the [`SessionLink`]
//! of each session channel. The link then belongs to the session's actor, which drives it; the
//! handler keeps only the link's stdin sink ([`SessionLink::stdin`]), the fast way in for the
//! client's bytes. The default factory, `session::app::DefaultSessions`, serves processes,
//! in-process commands and sftp as its `ExecEnv` says (the binding never imports `session`).

use std::net::SocketAddr;
use std::sync::Arc;

use russh::server::Handle;
use russh::ChannelId;
use sshvisor_actors::{Credential, SessionLink};

use crate::ssh::activity::Activity;
use crate::ssh::after_goodbye::AfterGoodbye;
use crate::ssh::held_channel::HeldChannel;
use crate::ssh::restrictions::Restrictions;

/// Makes the session applications of each connection.
pub trait SessionFactory: Send + Sync + 'static {
    /// The session applications of one authenticated connection, made at its first session
    /// channel.
    fn connection(&self, login: &Login<'_>) -> Box<dyn ConnectionSessions>;
}

/// Whom a connection's sessions serve.
#[derive(Debug)]
pub struct Login<'a> {
    /// The authenticated user.
    pub user: &'a str,
    /// The connection's two ends.
    pub ends: Endpoints,
    /// What the login may do (its key options, certificate, principals line): the
    /// application applies them (a forced command, no terminal, extra variables).
    pub restrictions: &'a Restrictions,
    /// The key or certificate the user logged in with.
    pub credential: Option<&'a Credential>,
}

/// The two ends of the connection a session runs on (for `SSH_CONNECTION`, `SSH_CLIENT`).
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    /// The client's address.
    pub peer: SocketAddr,
    /// The server's address the client reached.
    pub local: SocketAddr,
}

/// Opens the sessions of one connection.
pub trait ConnectionSessions: Send + Sync + 'static {
    /// The link of a new session channel, given to the session's actor. Until the client's
    /// request (`exec`, `shell`, `subsystem`) reaches [`SessionLink::start`], nothing should
    /// run; the link answers the tree's calls from then on.
    fn open(&mut self, channel: SessionChannel) -> Box<dyn SessionLink>;
}

/// What a session application gets of its channel.
pub struct SessionChannel {
    /// The connection, to send on the channel (data, exit status, EOF, CLOSE).
    pub handle: Handle,
    /// The channel's own russh queue: take it to read the channel as a stream, or release it
    /// (the handler empties it meanwhile, see `held_channel`).
    pub channel: HeldChannel,
    /// The session's traffic (counts for the connection's too): what the link sends should be
    /// counted here (`Activity::sent`); the handler counts what the client sends.
    pub activity: Arc<Activity>,
    /// What the connection keeps until its DISCONNECT is queued (see `after_goodbye`).
    pub after_goodbye: Arc<AfterGoodbye>,
}

impl SessionChannel {
    /// The channel's ID on its connection.
    pub fn id(&self) -> ChannelId {
        self.channel.id()
    }
}
