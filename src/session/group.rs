//! The processes of one session, as one: its leader (the process group), and its scope (every
//! process the session started, escapees included; see `containment`).

use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use sshvisor_actors::SessionExit;

use crate::session::containment::SessionScope;
use crate::session::procs;

/// The processes of one session: its leader, not reaped until the end (so the process group ID
/// stays ours), and its scope, which holds every process the session started.
pub(crate) struct Group {
    pub(crate) pgid: Pid,
    pub(crate) scope: Arc<SessionScope>,
    pub(crate) reaped: Mutex<bool>,
}

impl Group {
    /// Asks every process of the session to end (SIGHUP, then SIGCONT).
    pub(crate) fn hang_up(&self) {
        self.scope.hang_up();
    }

    /// Kills every process of the session.
    pub(crate) fn kill(&self) {
        self.scope.kill_all();
    }

    /// Signals the command's process group (what a client's `signal` request reaches).
    pub(crate) fn signal_group(&self, signal: Signal) -> Result<(), String> {
        let reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
        if *reaped {
            return Err("the session's processes have exited".into());
        }
        self.scope.signal_command(signal).map_err(|e| e.to_string())
    }

    /// Reaps the leader: called once the pidfd said it exited and the rest of the session was
    /// ended ([`SessionScope::end_the_rest`]), or after a SIGKILL to it, when a start fails.
    pub(crate) fn reap(&self) -> SessionExit {
        let mut reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
        let status = waitpid(self.pgid, None);
        *reaped = true;
        procs::unregister_leader(self.pgid);
        match status {
            Ok(WaitStatus::Exited(_, code)) => SessionExit::Status(code as u32),
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                SessionExit::Signal(signal.as_str().trim_start_matches("SIG").to_string())
            }
            Ok(other) => SessionExit::Failed(format!("the command ended oddly: {other:?}")),
            Err(e) => SessionExit::Failed(format!("waiting for the command failed: {e}")),
        }
    }
}
