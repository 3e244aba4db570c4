//! The default session application: `exec` runs the command through `sh -c` as the server's own
//! user, in its own process group, with the channel as stdin/stdout/stderr and the exit status
//! (or the signal) sent back to the client.
//!
//! It is the [`SessionLink`] of one session channel. Ending a session ends its process group:
//! SIGHUP on [`terminate`](SessionLink::terminate), SIGKILL on [`force`](SessionLink::force),
//! and SIGKILL to whatever is left of the group once the session is over or the link is dropped.
//! No process outlives its session.

use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use russh::server::Handle;
use russh::{ChannelId, Sig};
use sshvisor_actors::{EndScope, SessionEvents, SessionExit, SessionLink, SessionRequest, Winding};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, warn};

/// How long the last messages of a session (exit status, EOF, CLOSE) may wait for room in the
/// connection's send queue before they are given up.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a session's process runs with, beyond its command.
#[derive(Debug, Clone)]
pub struct ExecEnv {
    /// The user's home directory: the working directory of every command.
    pub home: std::path::PathBuf,
    /// The shell that runs commands (`/bin/sh`).
    pub shell: std::path::PathBuf,
}

impl Default for ExecEnv {
    fn default() -> Self {
        Self {
            home: std::env::var_os("HOME")
                .map(Into::into)
                .unwrap_or_else(|| "/".into()),
            shell: "/bin/sh".into(),
        }
    }
}

struct Running {
    pgid: Pid,
    stdin: Option<mpsc::UnboundedSender<Vec<u8>>>,
    forced: Arc<Notify>,
    done: Arc<AtomicBool>,
    leave_channel_open: Arc<AtomicBool>,
}

/// One session channel and the process it runs.
pub struct ChannelSession {
    handle: Handle,
    channel: ChannelId,
    env: Arc<ExecEnv>,
    running: Option<Running>,
}

impl ChannelSession {
    /// The session of `channel` on the connection behind `handle`.
    pub fn new(handle: Handle, channel: ChannelId, env: Arc<ExecEnv>) -> Self {
        Self {
            handle,
            channel,
            env,
            running: None,
        }
    }

    fn close_channel_later(&self) {
        let handle = self.handle.clone();
        let channel = self.channel;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(GOODBYE_TIMEOUT, handle.close(channel)).await;
            });
        }
    }

    fn signal_group(&self, signal: Signal) {
        if let Some(running) = &self.running {
            signal_group(running.pgid, signal);
        }
    }
}

fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) => debug!(pgid = pgid.as_raw(), ?signal, "signalled process group"),
        Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => {
            warn!(pgid = pgid.as_raw(), ?signal, error = %e, "could not signal process group")
        }
    }
}

impl SessionLink for ChannelSession {
    fn start(&mut self, request: &SessionRequest, events: SessionEvents) -> Result<(), String> {
        let command = match request {
            SessionRequest::Exec { command } => command.clone(),
            SessionRequest::Shell => {
                return Err(
                    "interactive shells are not supported yet: give a command to run, e.g. `ssh HOST uptime`"
                        .into(),
                );
            }
            SessionRequest::Subsystem { name } => {
                return Err(format!(
                    "subsystem {name:?} is not available on this server"
                ));
            }
        };
        let mut child = Command::new(&self.env.shell)
            .arg("-c")
            .arg(&command)
            .current_dir(&self.env.home)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.env.shell.display()))?;
        let pgid = child
            .id()
            .map(|pid| Pid::from_raw(pid as i32))
            .ok_or_else(|| "the command exited before it could be tracked".to_string())?;
        let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
        let forced = Arc::new(Notify::new());
        let done = Arc::new(AtomicBool::new(false));
        let leave_channel_open = Arc::new(AtomicBool::new(false));
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            // Provably impossible: all three were configured as pipes above.
            signal_group(pgid, Signal::SIGKILL);
            return Err("the command's pipes could not be set up".into());
        };
        tokio::spawn(feed_stdin(stdin, stdin_rx));
        let driver = Driver {
            handle: self.handle.clone(),
            channel: self.channel,
            pgid,
            forced: forced.clone(),
            done: done.clone(),
            leave_channel_open: leave_channel_open.clone(),
            events,
        };
        tokio::spawn(driver.run(child, stdout, stderr));
        self.running = Some(Running {
            pgid,
            stdin: Some(stdin_tx),
            forced,
            done,
            leave_channel_open,
        });
        Ok(())
    }

    fn data(&mut self, data: Vec<u8>) {
        if let Some(stdin) = self.running.as_ref().and_then(|r| r.stdin.as_ref()) {
            let _ = stdin.send(data);
        }
    }

    fn eof(&mut self) {
        if let Some(running) = self.running.as_mut() {
            running.stdin = None;
        }
    }

    fn terminate(&mut self, scope: EndScope) -> Winding {
        match self.running.as_mut() {
            None => {
                if scope == EndScope::Session {
                    self.close_channel_later();
                }
                Winding::Done
            }
            Some(running) => {
                running
                    .leave_channel_open
                    .store(scope == EndScope::Connection, Ordering::SeqCst);
                running.stdin = None;
                signal_group(running.pgid, Signal::SIGHUP);
                signal_group(running.pgid, Signal::SIGCONT);
                Winding::Pending
            }
        }
    }

    fn force(&mut self) -> Winding {
        match &self.running {
            // Nothing runs: whatever the scope, the channel is not ours to wait for.
            None => Winding::Done,
            Some(running) => {
                signal_group(running.pgid, Signal::SIGKILL);
                running.forced.notify_one();
                Winding::Pending
            }
        }
    }
}

impl Drop for ChannelSession {
    fn drop(&mut self) {
        let finished = self
            .running
            .as_ref()
            .is_none_or(|r| r.done.load(Ordering::SeqCst));
        if !finished {
            // The session actor went away without a finished session (killed outright or
            // crashed): nothing of it may stay behind.
            self.signal_group(Signal::SIGKILL);
            if let Some(running) = &self.running {
                running.forced.notify_one();
            }
            self.close_channel_later();
        }
    }
}

async fn feed_stdin(
    mut stdin: tokio::process::ChildStdin,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    while let Some(data) = rx.recv().await {
        if stdin.write_all(&data).await.is_err() {
            return;
        }
    }
    // Dropping stdin closes the pipe: the command sees EOF.
}

/// Drives one process: pumps its output to the channel, then reports how it ended.
struct Driver {
    handle: Handle,
    channel: ChannelId,
    pgid: Pid,
    forced: Arc<Notify>,
    done: Arc<AtomicBool>,
    leave_channel_open: Arc<AtomicBool>,
    events: SessionEvents,
}

impl Driver {
    async fn run(
        self,
        mut child: tokio::process::Child,
        stdout: tokio::process::ChildStdout,
        stderr: tokio::process::ChildStderr,
    ) {
        let out = tokio::spawn(pump(stdout, self.handle.clone(), self.channel, None));
        let err = tokio::spawn(pump(stderr, self.handle.clone(), self.channel, Some(1)));
        let (out_abort, err_abort) = (out.abort_handle(), err.abort_handle());
        let status = tokio::select! {
            status = child.wait() => status,
            () = self.forced.notified() => {
                signal_group(self.pgid, Signal::SIGKILL);
                self.forced.notify_one();
                child.wait().await
            }
        };
        // Output written just before the exit is still in the pipes: deliver it, unless the
        // session is being forced (then nothing more is owed to the client).
        let forced = tokio::select! {
            _ = async { let _ = out.await; let _ = err.await; } => false,
            () = self.forced.notified() => true,
        };
        if forced {
            out_abort.abort();
            err_abort.abort();
        }
        // Nothing started by the session outlives it.
        signal_group(self.pgid, Signal::SIGKILL);
        let exit = match status {
            Ok(status) => exit_of(status),
            Err(e) => SessionExit::Failed(format!("waiting for the command failed: {e}")),
        };
        let goodbye = {
            let handle = self.handle.clone();
            let channel = self.channel;
            let exit = exit.clone();
            let leave_open = self.leave_channel_open.clone();
            async move {
                match &exit {
                    SessionExit::Status(code) => {
                        let _ = handle.exit_status_request(channel, *code).await;
                    }
                    SessionExit::Signal(name) => {
                        let _ = handle
                            .exit_signal_request(
                                channel,
                                sig_of(name),
                                false,
                                String::new(),
                                "en".into(),
                            )
                            .await;
                    }
                    _ => {}
                }
                let _ = handle.eof(channel).await;
                if !leave_open.load(Ordering::SeqCst) {
                    let _ = handle.close(channel).await;
                }
            }
        };
        if forced {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbye).await;
            });
        } else {
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbye).await;
        }
        self.done.store(true, Ordering::SeqCst);
        self.events.finished(exit);
    }
}

/// The first read buffer of an output pump: small, because most sessions sit idle.
const PUMP_MIN: usize = 1024;
/// The read buffer a busy pump grows to.
const PUMP_MAX: usize = 32 * 1024;

async fn pump(
    mut from: impl AsyncRead + Unpin,
    handle: Handle,
    channel: ChannelId,
    ext: Option<u32>,
) {
    // An idle session holds only a small buffer; one that fills it gets a bigger one.
    let mut buf = vec![0u8; PUMP_MIN];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let data = bytes::Bytes::copy_from_slice(&buf[..n]);
        if n == buf.len() && buf.len() < PUMP_MAX {
            buf.resize(buf.len() * 4, 0);
        }
        let sent = match ext {
            None => handle.data(channel, data).await,
            Some(code) => handle.extended_data(channel, code, data).await,
        };
        if sent.is_err() {
            // The connection is gone; keep draining so the process never blocks on a full pipe.
            while matches!(from.read(&mut buf).await, Ok(n) if n > 0) {}
            return;
        }
    }
}

fn exit_of(status: ExitStatus) -> SessionExit {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return SessionExit::Status(code as u32);
    }
    match status.signal().and_then(|s| Signal::try_from(s).ok()) {
        Some(signal) => SessionExit::Signal(signal.as_str().trim_start_matches("SIG").to_string()),
        None => SessionExit::Failed(format!("the command ended oddly: {status}")),
    }
}

fn sig_of(name: &str) -> Sig {
    match name {
        "ABRT" => Sig::ABRT,
        "ALRM" => Sig::ALRM,
        "FPE" => Sig::FPE,
        "HUP" => Sig::HUP,
        "ILL" => Sig::ILL,
        "INT" => Sig::INT,
        "KILL" => Sig::KILL,
        "PIPE" => Sig::PIPE,
        "QUIT" => Sig::QUIT,
        "SEGV" => Sig::SEGV,
        "TERM" => Sig::TERM,
        "USR1" => Sig::USR1,
        other => Sig::Custom(other.to_string()),
    }
}
