//! Starting a session's process: its command line and environment, its containment, its
//! terminal or pipes, and the driver that runs it to its end.
//!
//! `exec` runs the command through `sh -c`; `shell` runs the user's login shell. With a terminal
//! (`pty-req` first) the process gets its own session with the terminal as its controlling tty;
//! without, it runs in its own process group with pipes. The leader is watched through a pidfd
//! and reaped only at the very end: until then it holds its process ID, so the group ID can
//! never be recycled under a client's `signal`.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use russh::server::Handle;
use russh::ChannelId;
use sshvisor_actors::{EndScope, PtySpec, SessionEvents, SessionRequest};
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use crate::session::driver::{Driver, DriverControl, Outputs};
use crate::session::env::{ClientVars, ExecEnv, SftpService};
use crate::session::group::Group;
use crate::session::procs;
use crate::session::pty;
use crate::session::stdin::{stdin_queue, Stdin, StdinReceiver};
use crate::ssh::activity::Activity;
use crate::ssh::sessions::Endpoints;

/// What a session's process is started from.
pub(crate) struct Launch<'a> {
    /// What sessions run with.
    pub(crate) env: &'a ExecEnv,
    /// The connection's two ends (`SSH_CONNECTION`).
    pub(crate) ends: Endpoints,
    /// The terminal the client asked for, if any.
    pub(crate) pty: Option<&'a PtySpec>,
    /// The variables the client set.
    pub(crate) vars: &'a ClientVars,
    /// The connection the output goes to, and on which channel.
    pub(crate) handle: &'a Handle,
    pub(crate) channel: ChannelId,
    /// The session's traffic.
    pub(crate) activity: &'a Arc<Activity>,
}

impl Launch<'_> {
    /// The command line and environment of a session.
    fn command(
        &self,
        request: &SessionRequest,
        mark: &str,
    ) -> Result<std::process::Command, String> {
        let env = self.env;
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
            .envs(self.vars.iter())
            .env(procs::SESSION_ENV, mark);
        if let Some(pty) = self.pty {
            cmd.env("TERM", &pty.term);
        }
        Ok(cmd)
    }

    /// Starts the process `request` asks for, and its driver; `stdin` is the session's stdin
    /// queue, taken once the process runs.
    pub(crate) fn spawn(
        &self,
        request: &SessionRequest,
        events: SessionEvents,
        stdin: &mut Option<StdinReceiver>,
    ) -> Result<Running, String> {
        let mark = events.session().to_string();
        let cmd = self.command(request, &mark)?;
        let scope = Arc::new(
            self.env
                .containment
                .enclose(&mark)
                .map_err(|e| format!("cannot set up the session's process containment: {e}"))?,
        );
        let terminal = match self.pty {
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
            arg0_for(request, self.env).unwrap_or_else(|| program.to_string_lossy().into_owned());
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
                        procs::own_session_or_group(takes_terminal)
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
        let rx = stdin.take().unwrap_or_else(|| stdin_queue().1);
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

/// A session's running process, as its link holds it.
pub(crate) struct Running {
    group: Arc<Group>,
    /// The terminal, for window changes after the client's EOF.
    pub(crate) master: Option<pty::Master>,
    control: Arc<DriverControl>,
}

impl Running {
    /// Sends the client's `signal` to the command's process group.
    pub(crate) fn signal(&self, signal: Signal) -> Result<(), String> {
        self.group.signal_group(signal)
    }

    /// Asks every process to end (SIGHUP); `scope` says who closes the channel.
    pub(crate) fn terminate(&self, scope: EndScope) {
        self.control
            .leave_channel_open
            .store(scope == EndScope::Connection, Ordering::SeqCst);
        self.control.stop_feed.notify_one();
        self.group.hang_up();
    }

    /// Kills every process now and cuts the goodbye short.
    pub(crate) fn force(&self) {
        self.group.kill();
        self.control.forced.notify_one();
    }

    /// The link goes away: unless the driver has said its goodbye, nothing of the session may
    /// stay behind (the driver reaps the leader). True when the channel is then left for the
    /// caller to close.
    pub(crate) fn abandon(&self) -> bool {
        if self.control.done.load(Ordering::SeqCst) {
            return false;
        }
        self.control.stop_feed.notify_one();
        self.group.kill();
        self.control.forced.notify_one();
        true
    }
}

/// The process's terminal, or its three pipes.
enum Io {
    Pty(pty::Master),
    Pipes {
        stdin: pipe::Sender,
        stdout: pipe::Receiver,
        stderr: pipe::Receiver,
    },
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
