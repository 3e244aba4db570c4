//! What sessions run with: the user, shells, `PATH`, the accepted client variables (and their
//! limits), the in-process services, the containment.

use std::path::PathBuf;
use std::sync::Arc;

use crate::session::containment::Containment;
use crate::session::in_process::InProcessCommands;
use crate::session::sftp::{self, SftpFs};

/// The most environment variables one session may set, and the longest value.
pub const MAX_ENV_VARS: usize = 64;
/// The longest environment value accepted.
pub const MAX_ENV_VALUE: usize = 4096;
/// The longest environment variable name accepted.
pub const MAX_ENV_NAME: usize = 256;
/// The most bytes a session's variables may add to its environment (`NAME=value\0` each): the
/// kernel refuses an exec whose environment is too big ("Argument list too long").
pub const MAX_ENV_TOTAL: usize = 64 * 1024;

/// Whether `name` is a variable name a shell would take: `[A-Za-z_][A-Za-z0-9_]*`, at most
/// [`MAX_ENV_NAME`] bytes.
pub fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= MAX_ENV_NAME
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// What sessions run with: the user, their shells, and which client variables are accepted.
#[derive(Debug, Clone)]
pub struct ExecEnv {
    /// The user's name (`USER`, `LOGNAME`).
    pub user: String,
    /// The user's home directory: the working directory of every command (`HOME`).
    pub home: PathBuf,
    /// The user's login shell, for interactive sessions (`SHELL`).
    pub login_shell: PathBuf,
    /// The shell that runs `exec` commands (`/bin/sh -c`).
    pub shell: PathBuf,
    /// `PATH` for sessions.
    pub path: String,
    /// Client environment names accepted besides `LANG`, `LC_*` and `TERM`.
    pub accept_env: Vec<String>,
    /// What serves the `sftp` subsystem.
    pub sftp: SftpService,
    /// The budgets of open in-process sftp handles (kept across reloads).
    pub sftp_handles: Arc<sftp::HandleBudgets>,
    /// Commands served in-process instead of by a process.
    pub commands: InProcessCommands,
    /// How each session's processes are kept together (and so all ended with it).
    pub containment: Containment,
}

/// What serves the `sftp` subsystem (and so `scp`, which speaks sftp in OpenSSH 9).
#[derive(Clone)]
pub enum SftpService {
    /// In-process, over the channel, from a filesystem (the local one by default).
    InProcess(Option<Arc<dyn SftpFs>>),
    /// An external `sftp-server` binary, run like a command.
    External(PathBuf),
}

impl std::fmt::Debug for SftpService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SftpService::InProcess(None) => write!(f, "InProcess(LocalFs)"),
            SftpService::InProcess(Some(_)) => write!(f, "InProcess(custom)"),
            SftpService::External(path) => write!(f, "External({})", path.display()),
        }
    }
}

impl Default for ExecEnv {
    fn default() -> Self {
        let me = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten();
        let user = me
            .as_ref()
            .map(|u| u.name.clone())
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "sshvisor".into());
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .or_else(|| me.as_ref().map(|u| u.dir.clone()))
            .unwrap_or_else(|| "/".into());
        let login_shell = me
            .as_ref()
            .map(|u| u.shell.clone())
            .filter(|s| s.is_file())
            .unwrap_or_else(|| "/bin/sh".into());
        Self {
            user,
            home,
            login_shell,
            shell: "/bin/sh".into(),
            path: default_path(nix::unistd::getuid().is_root()).into(),
            accept_env: Vec::new(),
            sftp: SftpService::InProcess(None),
            sftp_handles: Arc::default(),
            commands: InProcessCommands::default(),
            containment: Containment::detect(None),
        }
    }
}

/// The `PATH` sessions get unless configured, as sshd's: the system's directories, not the
/// server's own `PATH` (which may name a build tree or an operator's private directories).
pub fn default_path(root: bool) -> &'static str {
    if root {
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    } else {
        "/usr/local/bin:/usr/bin:/bin"
    }
}

impl ExecEnv {
    /// Whether a client may set `name` (`LANG`, `LC_*`, `TERM` and the configured names).
    pub fn accepts(&self, name: &str) -> bool {
        name == "LANG"
            || name == "TERM"
            || name.starts_with("LC_")
            || self.accept_env.iter().any(|n| n == name)
    }
}

/// The variables a client set on one session, within the limits above.
#[derive(Debug, Default)]
pub(crate) struct ClientVars(Vec<(String, String)>);

impl ClientVars {
    /// Sets `name` to `value` if `env` accepts the name and the limits hold; `Err` says why not.
    pub(crate) fn set(&mut self, env: &ExecEnv, name: &str, value: &str) -> Result<(), String> {
        if !is_env_name(name) {
            return Err(format!(
                "not a variable name ([A-Za-z_][A-Za-z0-9_]*, at most {MAX_ENV_NAME} bytes)"
            ));
        }
        if !env.accepts(name) {
            return Err(format!("{name} is not among the accepted variables"));
        }
        if value.len() > MAX_ENV_VALUE || value.contains('\0') {
            return Err(format!(
                "the value of {name} is too long or holds a NUL byte (at most {MAX_ENV_VALUE} bytes)"
            ));
        }
        let vars = &mut self.0;
        if vars.len() >= MAX_ENV_VARS {
            return Err(format!("at most {MAX_ENV_VARS} variables per session"));
        }
        let size = |n: &str, v: &str| n.len() + v.len() + 2;
        let others: usize = (vars.iter())
            .filter(|(n, _)| n != name)
            .map(|(n, v)| size(n, v))
            .sum();
        if others + size(name, value) > MAX_ENV_TOTAL {
            return Err(format!(
                "the session's variables would exceed {MAX_ENV_TOTAL} bytes"
            ));
        }
        vars.retain(|(n, _)| n != name);
        vars.push((name.to_string(), value.to_string()));
        Ok(())
    }

    /// Sets `name` to `value` whatever the accepted names: for what the server itself sets
    /// (`SSH_ORIGINAL_COMMAND`, a key's `environment=`), never for the client's requests.
    pub(crate) fn put(&mut self, name: &str, value: &str) {
        self.0.retain(|(n, _)| n != name);
        self.0.push((name.to_string(), value.to_string()));
    }

    /// Every variable set, in the order set.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowlisted_variables_are_accepted() {
        let env = ExecEnv {
            accept_env: vec!["EDITOR".into()],
            ..ExecEnv::default()
        };
        assert!(env.accepts("LANG") && env.accepts("LC_ALL") && env.accepts("TERM"));
        assert!(env.accepts("EDITOR"));
        assert!(!env.accepts("LD_PRELOAD") && !env.accepts("PATH"));
    }
}
