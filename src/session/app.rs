//! The default session application: commands and interactive shells as the server's own user.
//!
//! `exec` runs the command through `sh -c`; `shell` runs the user's login shell. With a terminal
//! (`pty-req` first) the process gets its own session with the terminal as its controlling tty;
//! without, it runs in its own process group with pipes. Either way the exit status (or the
//! signal) goes back to the client.
//!
//! It is the [`SessionLink`] of one session channel. Ending a session ends every process it
//! started: SIGHUP on [`terminate`](SessionLink::terminate), SIGKILL on
//! [`force`](SessionLink::force), and SIGKILL to whatever is left once the leader has exited or
//! the link is dropped: every process of the session's scope (its cgroup, or its reaper's
//! tree; see `containment`), so `setsid`, `nohup`, double forks and `env -i` do not escape, and
//! no orphan holding the output pipes can keep the session from ending.
//!
//! The leader is watched through a pidfd and reaped only at the very end: until then it holds
//! its process ID, so the group ID can never be recycled under a client's `signal`. Stdin is a
//! bounded queue written straight by the russh handler, so a client that floods a command that
//! does not read is held back by TCP instead of filling the server's memory.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use futures::{FutureExt, StreamExt};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use russh::server::Handle;
use russh::{ChannelId, Sig};
use sshvisor_actors::{
    EndScope, PtySpec, SessionEvents, SessionExit, SessionLink, SessionRequest, Traffic, Winding,
};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use crate::session::containment::{Containment, SessionScope};
use crate::session::procs;
use crate::session::pty;
use crate::session::sftp::{self, LocalFs, SftpFs};
use crate::ssh::held_channel::HeldChannel;
use crate::ssh::link::{Activity, AfterGoodbye, CountedWrites};

/// How long the last messages of a session (exit status, EOF, CLOSE) may wait for room in the
/// connection's send queue before they are given up.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many bytes of client data may wait for a command to read its stdin. russh refills the
/// channel window by itself and the handler must never wait inside russh's loop (the command
/// may be waiting for that very loop to send its output), so past this the session ends.
pub const STDIN_LIMIT: usize = 16 * 1024 * 1024;

/// The writing end of a session's stdin queue: never blocks, bounded in bytes.
///
/// A `futures` channel, not a tokio one: tokio's allocates a block of 32 slots up front (about
/// 1.5 KiB with its state), which every idle session would hold; this one allocates per
/// message.
#[derive(Clone)]
pub struct StdinSender {
    tx: mpsc::UnboundedSender<Input>,
    pending: Arc<AtomicUsize>,
}

/// What the stdin queue carries: the client's data, and its window changes, which a terminal
/// must get in the order the client sent them (`stty size` typed right after a resize must see
/// the new size).
enum Input {
    Data(Bytes),
    Resize {
        cols: u32,
        rows: u32,
        pix_width: u32,
        pix_height: u32,
    },
}

/// Why client data could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum StdinError {
    /// Nothing reads this session's stdin any more.
    Closed,
    /// The command left more than [`STDIN_LIMIT`] bytes unread.
    Full,
}

impl StdinSender {
    /// Queues `data` for the command's stdin.
    pub fn push(&self, data: Bytes) -> Result<(), StdinError> {
        let len = data.len();
        if self.pending.fetch_add(len, Ordering::SeqCst) + len > STDIN_LIMIT {
            self.pending.fetch_sub(len, Ordering::SeqCst);
            return Err(StdinError::Full);
        }
        self.tx
            .unbounded_send(Input::Data(data))
            .map_err(|_| StdinError::Closed)
    }

    /// Queues a window change for the session's terminal, after the data queued before it (a
    /// session without a terminal, or whose command is gone, ignores it).
    pub fn resize(&self, cols: u32, rows: u32, pix_width: u32, pix_height: u32) {
        let _ = self.tx.unbounded_send(Input::Resize {
            cols,
            rows,
            pix_width,
            pix_height,
        });
    }
}

struct StdinReceiver {
    rx: mpsc::UnboundedReceiver<Input>,
    pending: Arc<AtomicUsize>,
}

fn stdin_queue() -> (StdinSender, StdinReceiver) {
    let (tx, rx) = mpsc::unbounded();
    let pending = Arc::new(AtomicUsize::new(0));
    (
        StdinSender {
            tx,
            pending: pending.clone(),
        },
        StdinReceiver { rx, pending },
    )
}

/// After a terminal session's shell exits, how long its remaining output may take to drain
/// (background jobs may hold the terminal open forever).
const PTY_DRAIN: Duration = Duration::from_millis(200);

/// How long the session's processes may take to disappear after the final SIGKILL.
const VANISH_TIMEOUT: Duration = Duration::from_millis(500);

/// Once every process of a session is gone, how long its output pumps may take to deliver what
/// the pipes still hold. Bounded: a descriptor passed to a process outside the session could
/// hold a pipe open forever.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

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

/// The channel as an in-process command or subsystem sees it: reading gives what the client
/// sends (end of stream at the client's EOF), writing goes to the client.
pub type ChannelIo = CountedWrites<russh::ChannelStream<russh::server::Msg>>;

/// Serves one in-process session over its channel; returns how it ended.
type Serve = Box<
    dyn for<'a> FnOnce(&'a mut ChannelIo) -> Pin<Box<dyn Future<Output = SessionExit> + Send + 'a>>
        + Send,
>;

/// A command served inside the server process, without a child process: an embedding
/// program's own application behind `exec` (a git service, a menu, a game), as AsyncSSH's
/// `process_factory` or OTP's exec fun would be. Killing its session cancels the future (drops
/// it) and closes the channel, as for any session.
pub trait InProcessCommand: Send + Sync + 'static {
    /// Serves `command` (the whole command line the client sent) over `io`; returns the exit
    /// status sent to the client.
    fn run<'a>(
        &'a self,
        command: &'a str,
        io: &'a mut ChannelIo,
    ) -> Pin<Box<dyn Future<Output = u32> + Send + 'a>>;
}

/// In-process commands by program name: an `exec` whose first word is one of these names runs
/// in-process; every other command runs as a process.
#[derive(Clone, Default)]
pub struct InProcessCommands(Vec<(String, Arc<dyn InProcessCommand>)>);

impl InProcessCommands {
    /// Adds (or replaces) the command `name`.
    pub fn with(mut self, name: &str, command: Arc<dyn InProcessCommand>) -> Self {
        self.0.retain(|(n, _)| n != name);
        self.0.push((name.to_string(), command));
        self
    }

    fn find(&self, command_line: &str) -> Option<Arc<dyn InProcessCommand>> {
        let program = command_line.split_whitespace().next()?;
        self.0
            .iter()
            .find(|(name, _)| name == program)
            .map(|(_, command)| command.clone())
    }
}

impl std::fmt::Debug for InProcessCommands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| n))
            .finish()
    }
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

/// The two ends of the connection a session runs on (for `SSH_CONNECTION`, `SSH_CLIENT`).
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    /// The client's address.
    pub peer: SocketAddr,
    /// The server's address the client reached.
    pub local: SocketAddr,
}

/// The processes of one session: its leader, not reaped until the end (so the process group ID
/// stays ours), and its scope, which holds every process the session started.
struct Group {
    pgid: Pid,
    scope: Arc<SessionScope>,
    reaped: Mutex<bool>,
}

impl Group {
    /// Asks every process of the session to end (SIGHUP, then SIGCONT).
    fn hang_up(&self) {
        self.scope.hang_up();
    }

    /// Kills every process of the session.
    fn kill(&self) {
        self.scope.kill_all();
    }

    /// Signals the command's process group (what a client's `signal` request reaches).
    fn signal_group(&self, signal: Signal) -> Result<(), String> {
        let reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
        if *reaped {
            return Err("the session's processes have exited".into());
        }
        self.scope.signal_command(signal).map_err(|e| e.to_string())
    }

    /// Reaps the leader: called once the pidfd said it exited and the rest of the session was
    /// ended ([`SessionScope::end_the_rest`]), or after a SIGKILL to it, when a start fails.
    fn reap(&self) -> SessionExit {
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

struct Running {
    group: Arc<Group>,
    master: Option<pty::Master>,
    control: Arc<DriverControl>,
}

/// What the session's link tells its driver, and what the driver tells back: one allocation
/// shared by both.
#[derive(Default)]
struct DriverControl {
    /// End the session now (the kill's grace ran out, or the link went away).
    forced: Notify,
    /// Stop writing the client's data to the command (its stdin pipe closes).
    stop_feed: Notify,
    /// The driver has said its goodbye and reported the exit.
    done: AtomicBool,
    /// Ended with its connection: the channel is left for the DISCONNECT to close.
    leave_channel_open: AtomicBool,
}

/// One session channel and the process it runs.
pub struct ChannelSession {
    handle: Handle,
    channel: ChannelId,
    env: Arc<ExecEnv>,
    ends: Endpoints,
    pty: Option<PtySpec>,
    vars: Vec<(String, String)>,
    stdin_tx: Option<StdinSender>,
    stdin_rx: Option<StdinReceiver>,
    /// The channel's own stream, kept until we know whether a subsystem wants it.
    stream: HeldChannel,
    running: Option<Running>,
    in_process: Option<InProcessRun>,
    activity: Arc<Activity>,
    after_goodbye: Arc<AfterGoodbye>,
    /// The connection's share of the sftp handle budgets.
    sftp_handles: sftp::ConnectionHandles,
}

/// An in-process session (sftp, or an in-process command): the task serving it.
struct InProcessRun {
    task: AbortHandle,
    /// Stops the serving future (a kill).
    stop: Arc<Notify>,
    /// Cuts the goodbye short (the kill's grace ran out).
    force: Arc<Notify>,
    done: Arc<AtomicBool>,
    leave_channel_open: Arc<AtomicBool>,
}

impl ChannelSession {
    /// The session of `channel` on the connection behind `handle`, and the sender the russh
    /// handler writes the client's data into (drop it on the client's EOF).
    ///
    /// `stream` is the russh channel itself: kept only until the session starts (an in-process
    /// subsystem reads it as a stream; everything else drops it, so it never fills up).
    pub fn new(
        handle: Handle,
        stream: HeldChannel,
        env: Arc<ExecEnv>,
        ends: Endpoints,
        activity: Arc<Activity>,
        after_goodbye: Arc<AfterGoodbye>,
        sftp_handles: sftp::ConnectionHandles,
    ) -> (Self, StdinSender) {
        let (tx, rx) = stdin_queue();
        let channel = stream.id();
        let session = Self {
            handle,
            channel,
            stream,
            in_process: None,
            activity,
            after_goodbye,
            sftp_handles,
            env,
            ends,
            pty: None,
            vars: Vec::new(),
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

    /// The command line and environment of a session.
    fn command(
        &self,
        request: &SessionRequest,
        mark: &str,
    ) -> Result<std::process::Command, String> {
        let env = &self.env;
        let mut cmd = match request {
            SessionRequest::Exec { command } => {
                let mut cmd = std::process::Command::new(&env.shell);
                cmd.arg("-c").arg(command);
                cmd
            }
            SessionRequest::Shell => {
                let mut cmd = std::process::Command::new(&env.login_shell);
                if let Some(arg0) = arg0_for(request, env) {
                    cmd.arg0(arg0);
                }
                cmd
            }
            SessionRequest::Subsystem { name } => match (name.as_str(), &env.sftp) {
                ("sftp", SftpService::External(path)) => std::process::Command::new(path),
                _ => {
                    return Err(format!(
                        "subsystem {:?} is not available on this server",
                        name.chars().take(64).collect::<String>()
                    ));
                }
            },
        };
        let Endpoints { peer, local } = self.ends;
        cmd.current_dir(&env.home)
            .env_clear()
            .env("USER", &env.user)
            .env("LOGNAME", &env.user)
            .env("HOME", &env.home)
            .env("SHELL", &env.login_shell)
            .env("PATH", &env.path)
            .env(
                "SSH_CONNECTION",
                format!(
                    "{} {} {} {}",
                    peer.ip(),
                    peer.port(),
                    local.ip(),
                    local.port()
                ),
            )
            .env(
                "SSH_CLIENT",
                format!("{} {} {}", peer.ip(), peer.port(), local.port()),
            )
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .env(procs::SESSION_ENV, mark);
        if let Some(pty) = &self.pty {
            cmd.env("TERM", &pty.term);
        }
        Ok(cmd)
    }

    fn spawn(
        &mut self,
        request: &SessionRequest,
        events: SessionEvents,
    ) -> Result<Running, String> {
        let mark = events.session().to_string();
        let cmd = self.command(request, &mark)?;
        let scope = Arc::new(
            self.env
                .containment
                .enclose(&mark)
                .map_err(|e| format!("cannot set up the session's process containment: {e}"))?,
        );
        let terminal = match &self.pty {
            Some(spec) => {
                Some(pty::open(spec).map_err(|e| format!("cannot open a terminal: {e}"))?)
            }
            None => None,
        };
        let envs: Vec<(std::ffi::OsString, std::ffi::OsString)> = cmd
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
            .collect();
        let args: Vec<&std::ffi::OsStr> = cmd.get_args().collect();
        let program = std::path::Path::new(cmd.get_program());
        let arg0 =
            arg0_for(request, &self.env).unwrap_or_else(|| program.to_string_lossy().into_owned());
        let cwd = cmd.get_current_dir().unwrap_or(&self.env.home);
        let launch = scope.launch(program, &arg0, &args, terminal.is_some());
        let cgroup_procs = scope.cgroup_procs_fd();
        let spawned = match &terminal {
            Some(t) => {
                let slave = |what: &str| {
                    t.slave
                        .try_clone()
                        .map(Stdio::from)
                        .map_err(|e| format!("cannot set up the terminal's {what}: {e}"))
                };
                let mut leader = std::process::Command::new(&launch.program);
                leader
                    .arg0(&launch.arg0)
                    .args(&launch.args)
                    .env_clear()
                    .envs(envs.iter().map(|(k, v)| (k, v)))
                    .current_dir(cwd)
                    .stdin(slave("stdin")?)
                    .stdout(slave("stdout")?)
                    .stderr(slave("stderr")?);
                let takes_terminal = scope.leader_takes_terminal();
                // SAFETY: between fork and exec only async-signal-safe calls are made: the move
                // into the session's cgroup, default signal dispositions, then either a new
                // session with the terminal (fd 0) as its controlling tty, or (a reaper, which
                // does that for the command) a process group of its own.
                unsafe {
                    leader.pre_exec(move || {
                        if let Some(fd) = cgroup_procs {
                            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                                return Err(std::io::Error::last_os_error());
                            }
                        }
                        procs::default_signal_dispositions();
                        if takes_terminal {
                            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                        } else if libc::setpgid(0, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                procs::spawn_leader(|| leader.spawn())
                    .map(|child| (Pid::from_raw(child.id() as i32), None))
            }
            None => {
                // Not `fork`: it would copy the page tables of the whole server for every
                // command, a cost that grows with the number of live connections.
                let args: Vec<&std::ffi::OsStr> =
                    launch.args.iter().map(|a| a.as_os_str()).collect();
                procs::spawn_leader_vfork(
                    &launch.program,
                    &launch.arg0,
                    &args,
                    &envs,
                    cwd,
                    cgroup_procs,
                )
                .map(|child| (child.pid, Some((child.stdin, child.stdout, child.stderr))))
            }
        };
        let (leader, pipes) = spawned.map_err(|e| format!("cannot start the session: {e}"))?;
        scope.started(leader);
        let group = Arc::new(Group {
            pgid: leader,
            scope,
            reaped: Mutex::new(false),
        });
        let io = (|| -> Result<(AsyncFd<OwnedFd>, Io), String> {
            let pidfd = pidfd_open(leader).map_err(|e| format!("cannot watch the command: {e}"))?;
            let io = match terminal {
                Some(t) => {
                    drop(t.slave);
                    let master = pty::Master::new(t.master)
                        .map_err(|e| format!("cannot use the terminal: {e}"))?;
                    Io::Pty(master)
                }
                None => {
                    let Some((stdin, stdout, stderr)) = pipes else {
                        return Err("the command's pipes could not be set up".into());
                    };
                    let pipe_err =
                        |e: std::io::Error| format!("cannot use the command's pipes: {e}");
                    Io::Pipes {
                        stdin: pipe::Sender::from_owned_fd(stdin).map_err(pipe_err)?,
                        stdout: pipe::Receiver::from_owned_fd(stdout).map_err(pipe_err)?,
                        stderr: pipe::Receiver::from_owned_fd(stderr).map_err(pipe_err)?,
                    }
                }
            };
            Ok((pidfd, io))
        })();
        let (pidfd, io) = match io {
            Ok(parts) => parts,
            Err(e) => {
                group.kill();
                let _ = nix::sys::signal::kill(leader, Signal::SIGKILL);
                let _ = group.reap();
                return Err(e);
            }
        };
        let rx = self.stdin_rx.take().unwrap_or_else(|| stdin_queue().1);
        let (stdin, outputs, master) = match io {
            Io::Pty(master) => (
                Stdin::Pty(master.clone()),
                Outputs::Pty(master.clone()),
                Some(master),
            ),
            Io::Pipes {
                stdin,
                stdout,
                stderr,
            } => (Stdin::Pipe(stdin), Outputs::Pipes(stdout, stderr), None),
        };
        let control = Arc::new(DriverControl::default());
        let driver = Driver {
            handle: self.handle.clone(),
            channel: self.channel,
            group: group.clone(),
            control: control.clone(),
            activity: self.activity.clone(),
            events,
        };
        // One task per session: the driver pumps the output and feeds stdin itself.
        tokio::spawn(driver.run(pidfd, outputs, stdin, rx));
        Ok(Running {
            group,
            master,
            control,
        })
    }
}

impl ChannelSession {
    fn start_sftp(
        &mut self,
        fs: Option<Arc<dyn SftpFs>>,
        events: SessionEvents,
    ) -> Result<(), String> {
        let fs = fs.unwrap_or_else(|| Arc::new(LocalFs::new(self.env.home.clone())));
        let share = self.sftp_handles.clone();
        self.start_in_process(
            Box::new(move |io| {
                Box::pin(async move {
                    match sftp::serve_within(io, fs, Some(share)).await {
                        Ok(()) => SessionExit::Status(0),
                        Err(e) => {
                            debug!(error = %e, "sftp session ended with an error");
                            SessionExit::Status(1)
                        }
                    }
                })
            }),
            events,
        )
    }

    /// Serves the session inside this process over the channel's own stream: an in-process
    /// subsystem (sftp) or command.
    fn start_in_process(&mut self, serve: Serve, events: SessionEvents) -> Result<(), String> {
        let stream = self
            .stream
            .take()
            .ok_or("the channel cannot carry a subsystem any more")?
            .into_stream();
        // Data reaches sftp through the channel's stream: the stdin path must fail fast.
        self.stdin_tx = None;
        self.stdin_rx = None;
        let done = Arc::new(AtomicBool::new(false));
        let leave_channel_open = Arc::new(AtomicBool::new(false));
        let (handle, channel) = (self.handle.clone(), self.channel);
        let (done2, leave_open) = (done.clone(), leave_channel_open.clone());
        let (stop, force) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (stopped, forced) = (stop.clone(), force.clone());
        let after_goodbye = self.after_goodbye.clone();
        // Made here, not in the task: what the task captures and what it makes from that
        // would each take their own room in it, for as long as the session lives.
        let mut io = CountedWrites::new(stream, self.activity.clone());
        // One task serves and says goodbye. A stop (a kill) drops the serving future, which
        // closes every file it opened; the force cuts the goodbye short (two notifies: a stop
        // left unused by a serving future that ended by itself must not cut the goodbye). A
        // panic in the serving future ends the session like a stop.
        let task = tokio::spawn(async move {
            let exit = tokio::select! {
                exit = AssertUnwindSafe(serve(&mut io)).catch_unwind() => {
                    exit.unwrap_or(SessionExit::Closed)
                }
                () = stopped.notified() => SessionExit::Closed,
            };
            // Ended with its connection, the channel is left for the DISCONNECT to close.
            let leave = leave_open.load(Ordering::SeqCst);
            if leave && exit == SessionExit::Closed {
                // Stopped by its connection's kill: the EOF goes out with the DISCONNECT, in
                // one write, and the stream is kept until then (its drop closes the channel).
                after_goodbye.hold_with_eof(channel, Box::new(io));
                done2.store(true, Ordering::SeqCst);
                events.finished(exit);
                return;
            }
            // Boxed: inline, the goodbye would make every idle session's task bigger.
            let goodbye = Box::pin(async {
                if let SessionExit::Status(code) = exit {
                    let _ = handle.exit_status_request(channel, code).await;
                }
                let _ = handle.eof(channel).await;
                if !leave {
                    let _ = handle.close(channel).await;
                }
            });
            tokio::select! {
                _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbye) => {}
                () = forced.notified() => {}
            }
            if leave {
                // Dropping the stream closes the channel too, which may only follow the
                // DISCONNECT: the connection drops it once that is queued.
                after_goodbye.hold(Box::new(io));
            } else {
                // After the exit status, EOF and CLOSE, never racing them.
                drop(io);
            }
            done2.store(true, Ordering::SeqCst);
            events.finished(exit);
        })
        .abort_handle();
        self.in_process = Some(InProcessRun {
            task,
            stop,
            force,
            done,
            leave_channel_open,
        });
        Ok(())
    }
}

enum Io {
    Pty(pty::Master),
    Pipes {
        stdin: pipe::Sender,
        stdout: pipe::Receiver,
        stderr: pipe::Receiver,
    },
}

/// Where a session's output comes from: its terminal, or its stdout and stderr pipes.
enum Outputs {
    Pty(pty::Master),
    Pipes(pipe::Receiver, pipe::Receiver),
}

/// Where the client's data goes: the terminal, or the stdin pipe.
enum Stdin {
    Pty(pty::Master),
    Pipe(pipe::Sender),
}

/// The `argv[0]` a session's program gets when it is not the program's path: a login shell's
/// name with a leading dash, as sshd does.
fn arg0_for(request: &SessionRequest, env: &ExecEnv) -> Option<String> {
    match request {
        SessionRequest::Shell => {
            let name = env
                .login_shell
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "sh".into());
            Some(format!("-{name}"))
        }
        _ => None,
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

/// The signal a client names (`INT`, `TERM`, ... without `SIG`).
fn signal_named(name: &str) -> Result<Signal, String> {
    let full = format!("SIG{name}");
    full.parse::<Signal>().map_err(|_| {
        format!(
            "unknown signal {:?}",
            name.chars().take(32).collect::<String>()
        )
    })
}

impl SessionLink for ChannelSession {
    fn pty(&mut self, spec: &PtySpec) -> Result<PtySpec, String> {
        if self.pty.is_some() {
            return Err("this session already has a terminal".into());
        }
        let used = pty::validate(spec)?;
        self.pty = Some(used.clone());
        Ok(used)
    }

    fn env(&mut self, name: &str, value: &str) -> Result<(), String> {
        if !is_env_name(name) {
            return Err(format!(
                "not a variable name ([A-Za-z_][A-Za-z0-9_]*, at most {MAX_ENV_NAME} bytes)"
            ));
        }
        if !self.env.accepts(name) {
            return Err(format!("{name} is not among the accepted variables"));
        }
        if value.len() > MAX_ENV_VALUE || value.contains('\0') {
            return Err(format!(
                "the value of {name} is too long or holds a NUL byte (at most {MAX_ENV_VALUE} bytes)"
            ));
        }
        if self.vars.len() >= MAX_ENV_VARS {
            return Err(format!("at most {MAX_ENV_VARS} variables per session"));
        }
        let size = |n: &str, v: &str| n.len() + v.len() + 2;
        let others: usize = (self.vars.iter())
            .filter(|(n, _)| n != name)
            .map(|(n, v)| size(n, v))
            .sum();
        if others + size(name, value) > MAX_ENV_TOTAL {
            return Err(format!(
                "the session's variables would exceed {MAX_ENV_TOTAL} bytes"
            ));
        }
        self.vars.retain(|(n, _)| n != name);
        self.vars.push((name.to_string(), value.to_string()));
        Ok(())
    }

    fn resize(&mut self, cols: u32, rows: u32, pix_width: u32, pix_height: u32) {
        if let Some(master) = self.running.as_ref().and_then(|r| r.master.as_ref()) {
            // While the client may still type, the handler queues its window changes with its
            // data (`StdinSender::resize`), in order; after its EOF they come only this way.
            if self.stdin_tx.is_none() {
                master.resize(cols, rows, pix_width, pix_height);
            }
        } else if let Some(pty) = self.pty.as_mut() {
            pty.cols = cols.clamp(1, pty::MAX_DIMENSION);
            pty.rows = rows.clamp(1, pty::MAX_DIMENSION);
        }
    }

    fn signal(&mut self, name: &str) -> Result<(), String> {
        let signal = signal_named(name)?;
        match &self.running {
            Some(running) => running.group.signal_group(signal),
            None => Err("nothing runs in this session yet".into()),
        }
    }

    fn start(&mut self, request: &SessionRequest, events: SessionEvents) -> Result<(), String> {
        if let (SessionRequest::Subsystem { name }, SftpService::InProcess(fs)) =
            (request, &self.env.sftp)
        {
            if name == "sftp" {
                let fs = fs.clone();
                return self.start_sftp(fs, events);
            }
        }
        if let SessionRequest::Exec { command } = request {
            if let Some(handler) = self.env.commands.find(command) {
                let command = command.clone();
                return self.start_in_process(
                    Box::new(move |io| {
                        Box::pin(
                            async move { SessionExit::Status(handler.run(&command, io).await) },
                        )
                    }),
                    events,
                );
            }
        }
        // Everything else talks through callbacks: the channel's own queue must not fill up.
        self.stream.release();
        self.running = Some(self.spawn(request, events)?);
        Ok(())
    }

    fn data(&mut self, data: Vec<u8>) {
        if let Some(stdin) = &self.stdin_tx {
            // Data routed through the session actor (the russh handler writes stdin directly).
            if let Err(e) = stdin.push(Bytes::from(data)) {
                debug!(?e, "stdin data dropped");
            }
        }
    }

    fn eof(&mut self) {
        self.stdin_tx = None;
    }

    fn idle_for(&self) -> Option<Duration> {
        Some(self.activity.idle_for())
    }

    fn terminate(&mut self, scope: EndScope) -> Winding {
        self.stdin_tx = None;
        if let Some(run) = &self.in_process {
            run.leave_channel_open
                .store(scope == EndScope::Connection, Ordering::SeqCst);
            run.stop.notify_one();
            return Winding::Pending;
        }
        match &self.running {
            None => {
                if scope == EndScope::Session {
                    self.close_channel_later();
                }
                Winding::Done
            }
            Some(running) => {
                running
                    .control
                    .leave_channel_open
                    .store(scope == EndScope::Connection, Ordering::SeqCst);
                running.control.stop_feed.notify_one();
                running.group.hang_up();
                Winding::Pending
            }
        }
    }

    fn force(&mut self) -> Winding {
        if let Some(run) = &self.in_process {
            run.stop.notify_one();
            run.force.notify_one();
            return Winding::Pending;
        }
        match &self.running {
            // Nothing runs: whatever the scope, the channel is not ours to wait for.
            None => Winding::Done,
            Some(running) => {
                running.group.kill();
                running.control.forced.notify_one();
                Winding::Pending
            }
        }
    }
}

impl Drop for ChannelSession {
    fn drop(&mut self) {
        if let Some(run) = &self.in_process {
            if !run.done.load(Ordering::SeqCst) {
                run.task.abort();
                self.close_channel_later();
            }
        }
        let Some(running) = &self.running else {
            return;
        };
        if !running.control.done.load(Ordering::SeqCst) {
            // The session actor went away without a finished session (killed outright or
            // crashed): nothing of it may stay behind. The driver reaps the leader.
            running.control.stop_feed.notify_one();
            running.group.kill();
            running.control.forced.notify_one();
            self.close_channel_later();
        }
    }
}

/// Writes the client's data to the command's stdin and applies its window changes to the
/// terminal, if the session has one, in the order the client sent them.
async fn feed_stdin(stdin: Stdin, rx: StdinReceiver) {
    match stdin {
        Stdin::Pty(master) => feed(master.clone(), rx, Some(&master)).await,
        Stdin::Pipe(pipe) => feed(pipe, rx, None).await,
    }
}

async fn feed(
    mut stdin: impl AsyncWrite + Unpin,
    mut rx: StdinReceiver,
    terminal: Option<&pty::Master>,
) {
    while let Some(input) = rx.rx.next().await {
        match input {
            Input::Data(data) => {
                let written = stdin.write_all(&data).await;
                rx.pending.fetch_sub(data.len(), Ordering::SeqCst);
                if written.is_err() {
                    return;
                }
            }
            Input::Resize {
                cols,
                rows,
                pix_width,
                pix_height,
            } => {
                if let Some(terminal) = terminal {
                    terminal.resize(cols, rows, pix_width, pix_height);
                }
            }
        }
    }
    // Dropping stdin closes the pipe: the command sees EOF. (A terminal stays open: the client
    // ends a shell with Ctrl-D, which the terminal turns into EOF.)
}

/// Drives one process: pumps its output to the channel and its stdin from the client, then
/// reports how it ended.
///
/// All in one task: the output pumps and the stdin feeder are futures polled by the driver,
/// not tasks of their own (four tasks per session cost about 1.3 KB more per connection:
/// tokio's 128-byte-aligned task cells, a copy of the handles in each, and the channel
/// that told a terminal's pump that the leader exited).
struct Driver {
    handle: Handle,
    channel: ChannelId,
    group: Arc<Group>,
    control: Arc<DriverControl>,
    activity: Arc<Activity>,
    events: SessionEvents,
}

/// Set once the session's leader has exited: from then on, a terminal that stays silent for
/// PTY_DRAIN is done (background jobs may hold it open forever), however long the client takes
/// to accept what was already read. The terminal's pump is polled by the same task as the
/// driver, so a flag and a wake-up are enough.
#[derive(Default)]
struct LeaderExited {
    exited: AtomicBool,
    changed: Notify,
}

impl LeaderExited {
    fn set(&self) {
        self.exited.store(true, Ordering::SeqCst);
        self.changed.notify_one();
    }

    fn get(&self) -> bool {
        self.exited.load(Ordering::SeqCst)
    }
}

/// The output pumps and the stdin feeder of a session, polled while the driver awaits
/// something else.
struct Background<'a, O, F> {
    outputs: Pin<&'a mut futures::future::Fuse<O>>,
    feed: Pin<&'a mut futures::future::Fuse<F>>,
}

impl<O, F> Background<'_, O, F>
where
    O: Future<Output = ()>,
    F: Future<Output = ()>,
{
    /// Awaits `main`, keeping the output flowing and stdin fed meanwhile.
    async fn alongside<T>(&mut self, main: impl Future<Output = T>) -> T {
        use futures::future::FusedFuture;
        let mut main = std::pin::pin!(main);
        loop {
            tokio::select! {
                biased;
                value = &mut main => return value,
                () = &mut self.outputs, if !self.outputs.is_terminated() => {}
                () = &mut self.feed, if !self.feed.is_terminated() => {}
            }
        }
    }

    /// Until every output has reached its end.
    async fn drained(&mut self) {
        use futures::future::FusedFuture;
        while !self.outputs.is_terminated() {
            tokio::select! {
                () = &mut self.outputs => {}
                () = &mut self.feed, if !self.feed.is_terminated() => {}
            }
        }
    }
}

impl Driver {
    async fn run(self, pidfd: AsyncFd<OwnedFd>, outputs: Outputs, stdin: Stdin, rx: StdinReceiver) {
        let exited = LeaderExited::default();
        let control = &self.control;
        let (left, forced) = {
            let outputs =
                pump_outputs(outputs, &self.handle, self.channel, &exited, &self.activity);
            // The feed stops when the link says so (its stdin pipe closes with it).
            let feed = async {
                tokio::select! {
                    () = feed_stdin(stdin, rx) => {}
                    () = control.stop_feed.notified() => {}
                }
            };
            let mut background = Background {
                outputs: std::pin::pin!(outputs.fuse()),
                feed: std::pin::pin!(feed.fuse()),
            };
            // The leader exits (it stays a zombie, pinning the group ID until `reap`).
            let forced_early = background
                .alongside(Box::pin(async {
                    tokio::select! {
                        _ = pidfd.readable() => false,
                        () = control.forced.notified() => true,
                    }
                }))
                .await;
            if forced_early {
                self.group.kill();
                control.forced.notify_one();
                let _ = background.alongside(Box::pin(pidfd.readable())).await;
            }
            exited.set();
            // No process outlives its session: what the leader left running (background
            // jobs, escapees) is killed now. That also closes every copy of the output
            // pipes, so the pumps end even when an orphan held them open.
            // Boxed, like the drain below: what only the end needs is not carried while idle.
            let left = background
                .alongside(Box::pin(self.group.scope.end_the_rest(VANISH_TIMEOUT)))
                .await;
            // Output written before the end is still buffered: deliver it, unless the
            // session is being forced (then nothing more is owed to the client). Bounded all
            // the same.
            let forced = tokio::select! {
                _ = Box::pin(tokio::time::timeout(OUTPUT_DRAIN, background.drained())) => false,
                () = control.forced.notified() => true,
            };
            // Dropping the pumps and the feeder closes the pipes: stdin has no reader any more.
            (left, forced)
        };
        let exit = self.group.reap();
        if left > 0 {
            warn!(left, "processes of the session outlived it");
        }
        // Boxed: inline, these request futures would sit in the driver's task, idle or not.
        let goodbye = {
            let handle = self.handle.clone();
            let channel = self.channel;
            let exit = exit.clone();
            let control = self.control.clone();
            Box::pin(async move {
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
                if !control.leave_channel_open.load(Ordering::SeqCst) {
                    let _ = handle.close(channel).await;
                }
            })
        };
        if forced {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbye).await;
            });
        } else {
            // Boxed with its timer: only the end needs them.
            let _ = Box::pin(tokio::time::timeout(GOODBYE_TIMEOUT, goodbye)).await;
        }
        self.control.done.store(true, Ordering::SeqCst);
        self.events.finished_leaving(exit, left);
    }
}

/// Pumps a session's output to its channel: the terminal's, or stdout and stderr at once.
async fn pump_outputs(
    outputs: Outputs,
    handle: &Handle,
    channel: ChannelId,
    exited: &LeaderExited,
    activity: &Activity,
) {
    match outputs {
        Outputs::Pty(master) => pump(master, handle, channel, None, Some(exited), activity).await,
        Outputs::Pipes(stdout, stderr) => {
            futures::join!(
                pump(stdout, handle, channel, None, None, activity),
                pump(stderr, handle, channel, Some(1), None, activity),
            );
        }
    }
}

/// The read buffer of an output pump that finds output waiting: small at first.
const PUMP_MIN: usize = 1024;
/// The read buffer a busy pump grows to.
const PUMP_MAX: usize = 32 * 1024;

/// Waits for output holding one byte, not a buffer (most sessions sit idle), then takes what
/// else is ready at once, up to `size` bytes in all. Empty at the end of the output.
async fn read_chunk(from: &mut (impl AsyncRead + Unpin), size: usize) -> std::io::Result<Bytes> {
    let mut first = [0u8; 1];
    if from.read(&mut first).await? == 0 {
        return Ok(Bytes::new());
    }
    let mut buf = vec![0u8; size];
    buf[0] = first[0];
    let more = match from.read(&mut buf[1..]).now_or_never() {
        Some(Ok(n)) => n,
        // Nothing more yet, or an error the next read reports again.
        None | Some(Err(_)) => 0,
    };
    Ok(Bytes::copy_from_slice(&buf[..1 + more]))
}

/// One read from a terminal: once the leader has exited, `None` when the terminal stays silent
/// for PTY_DRAIN.
async fn read_terminal(
    from: &mut (impl AsyncRead + Unpin),
    size: usize,
    exited: &LeaderExited,
) -> Option<std::io::Result<Bytes>> {
    loop {
        if exited.get() {
            return tokio::time::timeout(PTY_DRAIN, read_chunk(from, size))
                .await
                .ok();
        }
        tokio::select! {
            read = read_chunk(from, size) => return Some(read),
            () = exited.changed.notified() => {}
        }
    }
}

async fn pump(
    mut from: impl AsyncRead + Unpin,
    handle: &Handle,
    channel: ChannelId,
    ext: Option<u32>,
    leader_exited: Option<&LeaderExited>,
    activity: &Activity,
) {
    // A pump that fills its buffer gets a bigger one next time.
    let mut size = PUMP_MIN;
    loop {
        let read = match leader_exited {
            None => read_chunk(&mut from, size).await,
            // Boxed: inline, a terminal's timer and wake-up would sit in every pipe's pump too.
            Some(exited) => match Box::pin(read_terminal(&mut from, size, exited)).await {
                Some(read) => read,
                None => return,
            },
        };
        let data = match read {
            Ok(data) if !data.is_empty() => data,
            Ok(_) | Err(_) => return,
        };
        let len = data.len();
        if len == size && size < PUMP_MAX {
            size *= 4;
        }
        // Boxed: the send's future would otherwise sit in every idle pump's state.
        let sent = match ext {
            None => Box::pin(handle.data(channel, data)).await,
            Some(code) => Box::pin(handle.extended_data(channel, code, data)).await,
        };
        activity.sent(len);
        if sent.is_err() {
            // The connection is gone; keep draining so the process never blocks on a full pipe.
            let mut buf = vec![0u8; PUMP_MIN];
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

/// The client's name for a signal russh parsed (`Sig` → `INT`, `TERM`, ...).
pub fn sig_name(sig: &Sig) -> String {
    match sig {
        Sig::ABRT => "ABRT".into(),
        Sig::ALRM => "ALRM".into(),
        Sig::FPE => "FPE".into(),
        Sig::HUP => "HUP".into(),
        Sig::ILL => "ILL".into(),
        Sig::INT => "INT".into(),
        Sig::KILL => "KILL".into(),
        Sig::PIPE => "PIPE".into(),
        Sig::QUIT => "QUIT".into(),
        Sig::SEGV => "SEGV".into(),
        Sig::TERM => "TERM".into(),
        Sig::USR1 => "USR1".into(),
        Sig::Custom(name) => name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_map_to_signals_and_unknown_ones_are_refused() {
        assert_eq!(signal_named("INT").unwrap(), Signal::SIGINT);
        assert_eq!(signal_named("USR2").unwrap(), Signal::SIGUSR2);
        assert!(signal_named("FROBNICATE")
            .unwrap_err()
            .contains("unknown signal"));
        assert!(signal_named("").is_err());
    }

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
