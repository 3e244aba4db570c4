//! The default session application: commands and interactive shells as the server's own user,
//! in-process commands, and sftp, each session a [`ChannelSession`]; made for every connection
//! by [`DefaultSessions`], the listener's factory unless an embedding program gives its own.
//!
//! What an embedding program configures of it is re-exported here, from the modules that hold
//! each idea: `env` (what sessions run with, [`ExecEnv`]), `in_process` (commands served inside
//! the server), `stdin` (the stdin queue and its limit), and the binding's `signals` and
//! [`Endpoints`].

use std::sync::Arc;

use sshvisor_actors::SessionLink;

pub use crate::session::channel_session::ChannelSession;
pub use crate::session::env::{
    default_path, is_env_name, ExecEnv, SftpService, MAX_ENV_NAME, MAX_ENV_TOTAL, MAX_ENV_VALUE,
    MAX_ENV_VARS,
};
pub use crate::session::in_process::{ChannelIo, InProcessCommand, InProcessCommands};
pub use crate::session::stdin::{StdinError, StdinSender, STDIN_LIMIT, STDIN_OVERFLOW_GRACE};
pub use crate::ssh::sessions::Endpoints;
pub use crate::ssh::signals::sig_name;

use crate::session::sftp::ConnectionHandles;
use crate::ssh::restrictions::Restrictions;
use crate::ssh::sessions::{ConnectionSessions, Login, SessionChannel, SessionFactory};

/// The default application's factory: every session a [`ChannelSession`], run as its
/// [`ExecEnv`] says. A reload gives the listener a new factory with the new settings: each
/// connection keeps the one in force when it was accepted.
#[derive(Debug)]
pub struct DefaultSessions {
    /// What sessions run with.
    env: Arc<ExecEnv>,
}

impl DefaultSessions {
    /// The default application, its sessions run as `env` says.
    pub fn new(env: ExecEnv) -> Self {
        Self { env: Arc::new(env) }
    }

    /// What sessions run with.
    pub fn env(&self) -> &Arc<ExecEnv> {
        &self.env
    }
}

impl Default for DefaultSessions {
    fn default() -> Self {
        Self::new(ExecEnv::default())
    }
}

impl SessionFactory for DefaultSessions {
    fn connection(&self, login: &Login<'_>) -> Box<dyn ConnectionSessions> {
        let env = self.env.clone();
        Box::new(ConnectionApp {
            sftp_handles: env.sftp_handles.connection(login.user),
            env,
            ends: login.ends,
            restrictions: Arc::new(login.restrictions.clone()),
        })
    }
}

/// The default application on one connection.
struct ConnectionApp {
    env: Arc<ExecEnv>,
    ends: Endpoints,
    /// This connection's share of the sftp handle budgets.
    sftp_handles: ConnectionHandles,
    /// What the login may do: every session applies it.
    restrictions: Arc<Restrictions>,
}

impl ConnectionSessions for ConnectionApp {
    fn open(&mut self, channel: SessionChannel) -> Box<dyn SessionLink> {
        Box::new(
            ChannelSession::new(
                channel.handle,
                channel.channel,
                self.env.clone(),
                self.ends,
                channel.activity,
                channel.after_goodbye,
                self.sftp_handles.clone(),
            )
            .with_restrictions(self.restrictions.clone()),
        )
    }
}
