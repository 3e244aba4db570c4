//! The default session application: `exec` runs the command through `sh -c` as the server's own
//! user, in its own process group, with the channel as stdin/stdout/stderr and the exit status
//! (or the signal) sent back to the client.
//!
//! It is the [`SessionLink`] of one session channel. Ending a session ends its process group:
//! SIGHUP on [`terminate`](SessionLink::terminate), SIGKILL on [`force`](SessionLink::force),
//! and SIGKILL to whatever is left of the group once the session is over or the link is dropped.
//!
//! The group's leader is watched through a pidfd and reaped only at the very end: until then
//! it holds its process ID, so the group ID can never be recycled under a signal of ours.
//! Stdin is a bounded queue written straight by the russh handler, so a client that floods a
//! command that does not read is held back by TCP instead of filling the server's memory.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use russh::server::Handle;
use russh::{ChannelId, Sig};
use sshvisor_actors::{EndScope, SessionEvents, SessionExit, SessionLink, SessionRequest, Winding};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;
use tracing::{debug, warn};

/// How long the last messages of a session (exit status, EOF, CLOSE) may wait for room in the
/// connection's send queue before they are given up.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many chunks of client data may wait for a command to read its stdin. Past that the
/// russh handler waits, which stops reading the client's TCP stream.
pub const STDIN_QUEUE: usize = 16;

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

/// A process group whose leader is not reaped yet, so its ID stays ours.
struct Group {
    pgid: Pid,
    reaped: Mutex<bool>,
}

impl Group {
    /// Signals the whole group, unless its leader was already reaped.
    fn signal(&self, signal: Signal) {
        let reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
        if *reaped {
            return;
        }
        match killpg(self.pgid, signal) {
            Ok(()) => debug!(
                pgid = self.pgid.as_raw(),
                ?signal,
                "signalled process group"
            ),
            Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => {
                warn!(pgid = self.pgid.as_raw(), ?signal, error = %e, "could not signal process group")
            }
        }
    }

    /// Kills what is left of the group, then reaps the (exited) leader. Called once the pidfd
    /// said the leader exited, so `waitpid` does not block.
    fn reap(&self) -> SessionExit {
        let mut reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
        // Nothing started by the session outlives it.
        let _ = killpg(self.pgid, Signal::SIGKILL);
        let status = waitpid(self.pgid, None);
        *reaped = true;
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

struct Running {
    group: Arc<Group>,
    feed: AbortHandle,
    forced: Arc<Notify>,
    done: Arc<AtomicBool>,
    leave_channel_open: Arc<AtomicBool>,
}

/// One session channel and the process it runs.
pub struct ChannelSession {
    handle: Handle,
    channel: ChannelId,
    env: Arc<ExecEnv>,
    stdin_tx: Option<mpsc::Sender<Bytes>>,
    stdin_rx: Option<mpsc::Receiver<Bytes>>,
    running: Option<Running>,
}

impl ChannelSession {
    /// The session of `channel` on the connection behind `handle`, and the sender the russh
    /// handler writes the client's data into (drop it on the client's EOF).
    pub fn new(
        handle: Handle,
        channel: ChannelId,
        env: Arc<ExecEnv>,
    ) -> (Self, mpsc::Sender<Bytes>) {
        let (tx, rx) = mpsc::channel(STDIN_QUEUE);
        let session = Self {
            handle,
            channel,
            env,
            stdin_tx: Some(tx.clone()),
            stdin_rx: Some(rx),
            running: None,
        };
        (session, tx)
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

    fn spawn(&mut self, command: &str, events: SessionEvents) -> Result<Running, String> {
        let mut child = std::process::Command::new(&self.env.shell)
            .arg("-c")
            .arg(command)
            .current_dir(&self.env.home)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.env.shell.display()))?;
        let group = Arc::new(Group {
            pgid: Pid::from_raw(child.id() as i32),
            reaped: Mutex::new(false),
        });
        let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let setup = (|| {
            let (Some(stdin), Some(stdout), Some(stderr)) = pipes else {
                return Err("the command's pipes could not be set up".to_string());
            };
            let pidfd =
                pidfd_open(group.pgid).map_err(|e| format!("cannot watch the command: {e}"))?;
            let stdin = pipe::Sender::from_owned_fd(OwnedFd::from(stdin))
                .map_err(|e| format!("cannot use the command's stdin: {e}"))?;
            let stdout = pipe::Receiver::from_owned_fd(OwnedFd::from(stdout))
                .map_err(|e| format!("cannot use the command's stdout: {e}"))?;
            let stderr = pipe::Receiver::from_owned_fd(OwnedFd::from(stderr))
                .map_err(|e| format!("cannot use the command's stderr: {e}"))?;
            Ok((pidfd, stdin, stdout, stderr))
        })();
        let (pidfd, stdin, stdout, stderr) = match setup {
            Ok(parts) => parts,
            Err(e) => {
                group.signal(Signal::SIGKILL);
                let _ = group.reap();
                return Err(e);
            }
        };
        let rx = self.stdin_rx.take().unwrap_or_else(|| mpsc::channel(1).1);
        let feed = tokio::spawn(feed_stdin(stdin, rx)).abort_handle();
        let forced = Arc::new(Notify::new());
        let done = Arc::new(AtomicBool::new(false));
        let leave_channel_open = Arc::new(AtomicBool::new(false));
        let driver = Driver {
            handle: self.handle.clone(),
            channel: self.channel,
            group: group.clone(),
            forced: forced.clone(),
            done: done.clone(),
            leave_channel_open: leave_channel_open.clone(),
            feed: feed.clone(),
            events,
        };
        tokio::spawn(driver.run(pidfd, stdout, stderr));
        Ok(Running {
            group,
            feed,
            forced,
            done,
            leave_channel_open,
        })
    }
}

/// A pidfd for `pid`: readable once the process has exited, without reaping it.
fn pidfd_open(pid: Pid) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; the
    // descriptor is owned by nobody else.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is not used anywhere else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the AsyncFd owns `fd` and nothing replaces or closes it while registered.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into())
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
        self.running = Some(self.spawn(&command, events)?);
        Ok(())
    }

    fn data(&mut self, data: Vec<u8>) {
        if let Some(stdin) = &self.stdin_tx {
            // This path (data routed through the session actor) must not block: drop on a
            // full queue. The russh handler writes stdin directly, with backpressure.
            if stdin.try_send(Bytes::from(data)).is_err() {
                debug!("stdin queue full: data dropped");
            }
        }
    }

    fn eof(&mut self) {
        self.stdin_tx = None;
    }

    fn terminate(&mut self, scope: EndScope) -> Winding {
        self.stdin_tx = None;
        match &self.running {
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
                running.feed.abort();
                running.group.signal(Signal::SIGHUP);
                running.group.signal(Signal::SIGCONT);
                Winding::Pending
            }
        }
    }

    fn force(&mut self) -> Winding {
        match &self.running {
            // Nothing runs: whatever the scope, the channel is not ours to wait for.
            None => Winding::Done,
            Some(running) => {
                running.group.signal(Signal::SIGKILL);
                running.forced.notify_one();
                Winding::Pending
            }
        }
    }
}

impl Drop for ChannelSession {
    fn drop(&mut self) {
        let Some(running) = &self.running else {
            return;
        };
        if !running.done.load(Ordering::SeqCst) {
            // The session actor went away without a finished session (killed outright or
            // crashed): nothing of it may stay behind. The driver reaps the leader.
            running.feed.abort();
            running.group.signal(Signal::SIGKILL);
            running.forced.notify_one();
            self.close_channel_later();
        }
    }
}

async fn feed_stdin(mut stdin: pipe::Sender, mut rx: mpsc::Receiver<Bytes>) {
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
    group: Arc<Group>,
    forced: Arc<Notify>,
    done: Arc<AtomicBool>,
    leave_channel_open: Arc<AtomicBool>,
    feed: AbortHandle,
    events: SessionEvents,
}

impl Driver {
    async fn run(self, pidfd: AsyncFd<OwnedFd>, stdout: pipe::Receiver, stderr: pipe::Receiver) {
        let out = tokio::spawn(pump(stdout, self.handle.clone(), self.channel, None));
        let err = tokio::spawn(pump(stderr, self.handle.clone(), self.channel, Some(1)));
        let (out_abort, err_abort) = (out.abort_handle(), err.abort_handle());
        // The leader exits (it stays a zombie, pinning the group ID until `reap`).
        tokio::select! {
            _ = pidfd.readable() => {}
            () = self.forced.notified() => {
                self.group.signal(Signal::SIGKILL);
                self.forced.notify_one();
                let _ = pidfd.readable().await;
            }
        }
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
        let exit = self.group.reap();
        // Stdin has no reader any more.
        self.feed.abort();
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
        let data = Bytes::copy_from_slice(&buf[..n]);
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
