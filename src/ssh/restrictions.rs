//! What a login may do, once admitted: the [`Restrictions`] its authorized_keys line, its
//! certificate and its authorized_principals line put on it, carried to the session application
//! (`sessions::Login`), which applies them (a forced command, no terminal, extra variables).
//!
//! sshvisor serves no port, agent or X11 forwarding and runs no `~/.ssh/rc` at all, so those
//! permissions are recorded (and listed) but can only narrow what is already refused.

/// The limits on one login. The default is an unrestricted login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restrictions {
    /// A command run instead of whatever the client asks (shell, exec or subsystem), with the
    /// client's own command in `SSH_ORIGINAL_COMMAND` (`command=`, `force-command`).
    pub force_command: Option<String>,
    /// Variables set in the session's environment (`environment=`, only with
    /// `permit_user_environment`).
    pub environment: Vec<(String, String)>,
    /// Whether the client may have a terminal (`no-pty`, `restrict`, `permit-pty`).
    pub pty: bool,
    /// Whether port forwarding is permitted (never served by sshvisor).
    pub port_forwarding: bool,
    /// Whether agent forwarding is permitted (never served by sshvisor).
    pub agent_forwarding: bool,
    /// Whether X11 forwarding is permitted (never served by sshvisor).
    pub x11_forwarding: bool,
    /// Whether `~/.ssh/rc` may run (sshvisor never runs it).
    pub user_rc: bool,
}

impl Default for Restrictions {
    fn default() -> Self {
        Self::unrestricted()
    }
}

impl Restrictions {
    /// Everything permitted, no forced command: a login with no options.
    pub fn unrestricted() -> Self {
        Self {
            force_command: None,
            environment: Vec::new(),
            pty: true,
            port_forwarding: true,
            agent_forwarding: true,
            x11_forwarding: true,
            user_rc: true,
        }
    }

    /// Everything refused (`restrict`, or a certificate before its extensions are read).
    pub fn restricted() -> Self {
        Self {
            force_command: None,
            environment: Vec::new(),
            pty: false,
            port_forwarding: false,
            agent_forwarding: false,
            x11_forwarding: false,
            user_rc: false,
        }
    }

    /// Both sets of limits at once (a certificate's and its principals or key line's): each
    /// permission only if both give it. Two different forced commands cannot both run: `Err`
    /// says so, and the login is refused, as sshd does.
    pub fn and(mut self, other: &Restrictions) -> Result<Self, String> {
        match (&self.force_command, &other.force_command) {
            (Some(a), Some(b)) if a != b => {
                return Err(
                    "the certificate's force-command and the key options' command= differ".into(),
                )
            }
            (None, Some(b)) => self.force_command = Some(b.clone()),
            _ => {}
        }
        self.environment.extend(other.environment.iter().cloned());
        self.pty &= other.pty;
        self.port_forwarding &= other.port_forwarding;
        self.agent_forwarding &= other.agent_forwarding;
        self.x11_forwarding &= other.x11_forwarding;
        self.user_rc &= other.user_rc;
        Ok(self)
    }
}

/// Whether `name` can be an environment variable's name (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_limits_permit_only_what_both_permit() {
        let mut cert = Restrictions::restricted();
        cert.pty = true;
        cert.force_command = Some("backup".into());
        let mut line = Restrictions::unrestricted();
        line.pty = false;
        let both = cert.clone().and(&line).unwrap();
        assert!(!both.pty);
        assert_eq!(both.force_command.as_deref(), Some("backup"));
        line.force_command = Some("other".into());
        assert!(cert.and(&line).is_err());
    }
}
