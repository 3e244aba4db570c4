//! The default session application: commands and interactive shells as the server's own user,
//! in-process commands, and sftp, each session a [`ChannelSession`]; made for every connection
//! by [`DefaultSessions`], the listener's factory unless an embedding program gives its own.
//!
//! What an embedding program configures of it is re-exported here, from the modules that hold
//! each idea: `env` (what sessions run with, [`ExecEnv`]), `in_process` (commands served inside
//! the server), `stdin` (the stdin queue and its limit), `signals`.

use std::sync::Arc;

use sshvisor_actors::SessionLink;

pub use crate::session::channel_session::ChannelSession;
pub use crate::session::env::{
    default_path, is_env_name, Endpoints, ExecEnv, SftpService, MAX_ENV_NAME, MAX_ENV_TOTAL,
    MAX_ENV_VALUE, MAX_ENV_VARS,
};
pub use crate::session::in_process::{ChannelIo, InProcessCommand, InProcessCommands};
pub use crate::session::signals::sig_name;
pub use crate::session::stdin::{StdinError, StdinSender, STDIN_LIMIT, STDIN_OVERFLOW_GRACE};

use crate::session::factory::{ConnectionSessions, Login, SessionChannel, SessionFactory};
use crate::session::sftp::ConnectionHandles;

/// The default application's factory: every session a [`ChannelSession`], run as its
/// connection's [`ExecEnv`] says.
#[derive(Debug, Default, Clone, Copy)]
pub struct DefaultSessions;

impl SessionFactory for DefaultSessions {
    fn connection(&self, login: &Login<'_>) -> Box<dyn ConnectionSessions> {
        Box::new(ConnectionApp {
            env: login.env.clone(),
            ends: login.ends,
            sftp_handles: login.env.sftp_handles.connection(login.user),
        })
    }
}

/// The default application on one connection.
struct ConnectionApp {
    env: Arc<ExecEnv>,
    ends: Endpoints,
    /// This connection's share of the sftp handle budgets.
    sftp_handles: ConnectionHandles,
}

impl ConnectionSessions for ConnectionApp {
    fn open(&mut self, channel: SessionChannel) -> Box<dyn SessionLink> {
        Box::new(ChannelSession::new(
            channel.handle,
            channel.channel,
            self.env.clone(),
            self.ends,
            channel.activity,
            channel.after_goodbye,
            self.sftp_handles.clone(),
        ))
    }
}
