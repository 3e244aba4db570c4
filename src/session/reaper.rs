//! The session reaper: the containment that needs no privilege (see [`crate::session::containment`]).
//!
//! Where the server may not create cgroups, each session's leader is this program run again as
//! `sshvisor-session-reaper`: a child subreaper (`PR_SET_CHILD_SUBREAPER`) that starts the
//! session's command and adopts every orphan of the session, whatever it did with `setsid`,
//! double forks or its environment: a process cannot leave its subreaper's tree. The reaper:
//!
//! - reaps every process of the session, so no zombie piles up under a command that never
//!   waits;
//! - passes a hangup (SIGHUP, the server's polite end) on to every process of the session, and
//!   any other signal to the command's process group (a client's `signal` request);
//! - on the server's force signal ([`force_signal`]) kills every process of the session;
//! - once the command has exited, kills what is left, waits until nothing is, and exits the
//!   way the command did (its status, or its signal): to the server the reaper's end is the
//!   command's, and the session's processes are all gone by then;
//! - if the server itself dies (its parent changes), ends the whole session the same way.
//!
//! The `sshvisor` binary serves it: its `main` calls [`run_if_asked`] first. An embedding
//! program that wants this fallback does the same in its own `main` and names its binary in
//! [`crate::session::containment::Containment::Reaper`].

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// The `argv[0]` that makes this program a session reaper.
pub const REAPER_ARG0: &str = "sshvisor-session-reaper";

/// Set once this program's `main` called [`run_if_asked`]: it can be its own sessions' reaper.
static SERVED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Another program named to serve as the session reaper (see [`use_program`]).
static PROGRAM: std::sync::Mutex<Option<std::path::PathBuf>> = std::sync::Mutex::new(None);

/// Names the program that serves as the session reaper, for a process whose own `main` does
/// not call [`run_if_asked`] (an embedding program, a test): the `sshvisor` binary will do.
pub fn use_program(program: std::path::PathBuf) {
    *PROGRAM.lock().unwrap_or_else(|e| e.into_inner()) = Some(program);
}

/// The program that serves as the session reaper: the one named by [`use_program`], else this
/// one if its `main` called [`run_if_asked`].
pub fn program() -> Option<std::path::PathBuf> {
    if let Some(program) = PROGRAM.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        return Some(program);
    }
    if !SERVED.load(std::sync::atomic::Ordering::SeqCst) {
        return None;
    }
    std::env::current_exe().ok()
}

/// The signal with which the server forces a session's end (a real-time one: no client's
/// `signal` request can name it).
pub fn force_signal() -> libc::c_int {
    libc::SIGRTMIN() + 4
}

/// Runs the reaper and exits, if this process was started as one (its `argv[0]` is
/// [`REAPER_ARG0`]); returns otherwise. Call it first thing in `main`.
pub fn run_if_asked() {
    let mut args = std::env::args_os();
    if args.next().as_deref() != Some(std::ffi::OsStr::new(REAPER_ARG0)) {
        SERVED.store(true, std::sync::atomic::Ordering::SeqCst);
        return;
    }
    let code = run(args.collect());
    std::process::exit(code);
}

/// The signals the reaper waits for (all blocked, taken with `sigwait`), every catchable one
/// but those a fault raises.
fn waited() -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is valid storage; sigfillset/sigdelset fill it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for s in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGFPE,
            libc::SIGILL,
            libc::SIGTRAP,
        ] {
            libc::sigdelset(&mut set, s);
        }
        set
    }
}

fn run(args: Vec<OsString>) -> i32 {
    let [mode, program, arg0, rest @ ..] = args.as_slice() else {
        eprintln!("{REAPER_ARG0}: started by sshvisor only (mode, program, argv[0], args)");
        return 127;
    };
    let pty = mode == "--pty";
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes a plain integer.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    let set = waited();
    // SAFETY: blocks the signals of a valid set in this (only) thread.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let mut command = Command::new(program);
    command.arg0(arg0).args(rest);
    // SAFETY: this process has one thread; between fork and exec the child only unblocks its
    // signals and makes setpgid/setsid/ioctl calls.
    unsafe {
        command.pre_exec(move || {
            let _ = SigSet::empty().thread_set_mask();
            crate::session::procs::own_session_or_group(pty)
        });
    }
    let child = match command.spawn() {
        Ok(child) => Pid::from_raw(child.id() as i32),
        Err(e) => {
            eprintln!("sshvisor: cannot run {}: {e}", program.to_string_lossy());
            return 127;
        }
    };
    // The session's stdio is the command's now: holding it would keep the channel open.
    release_stdio();
    let server = nix::unistd::getppid();
    let mut status: Option<WaitStatus> = None;
    let mut ending = false;
    loop {
        reap(child, &mut status);
        if status.is_some() || ending {
            ending = true;
            if !end_everything(child, &mut status) {
                return exit_like(status);
            }
            continue;
        }
        // SAFETY: waits (at most a second) for one signal of a valid set, all of them blocked.
        let signal = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ONE_SECOND) };
        if nix::unistd::getppid() != server {
            // The server is gone (it crashed, or was killed outright): nobody is left to end
            // the session, and none of it may outlive its server.
            ending = true;
            continue;
        }
        match signal {
            libc::SIGCHLD => {}
            libc::SIGHUP => {
                for pid in crate::session::containment::descendants(Pid::this()) {
                    let _ = kill(pid, Signal::SIGHUP);
                    let _ = kill(pid, Signal::SIGCONT);
                }
            }
            s if s == force_signal() => ending = true,
            s if s > 0 => {
                // SAFETY: kill with a process group ID and a signal number the kernel gave us.
                unsafe {
                    libc::kill(-child.as_raw(), s);
                }
            }
            _ => {}
        }
    }
}

/// How often the reaper looks whether its server still runs.
const ONE_SECOND: libc::timespec = libc::timespec {
    tv_sec: 1,
    tv_nsec: 0,
};

/// Reaps every child that has exited; keeps the command's status.
fn reap(command: Pid, status: &mut Option<WaitStatus>) {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(s) => {
                if s.pid() == Some(command) {
                    *status = Some(s);
                }
            }
        }
    }
}

/// One round of the end: SIGKILL to every descendant, then reap (keeping the command's
/// status). False once no child is left.
fn end_everything(command: Pid, status: &mut Option<WaitStatus>) -> bool {
    let all = crate::session::containment::descendants(Pid::this());
    for pid in &all {
        let _ = kill(*pid, Signal::SIGKILL);
    }
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                // Killed ones take a moment to die; their children come to us meanwhile.
                std::thread::sleep(Duration::from_millis(1));
                return true;
            }
            Ok(s) => {
                if s.pid() == Some(command) && status.is_none() {
                    *status = Some(s);
                }
            }
            Err(_) => return false,
        }
    }
}

/// Exits as the command did: its exit code, or death by its signal (without a core dump).
fn exit_like(status: Option<WaitStatus>) -> i32 {
    match status {
        Some(WaitStatus::Exited(_, code)) => code,
        Some(WaitStatus::Signaled(_, signal, _)) => {
            let off = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: setrlimit with a valid struct; signal() and raise() with a valid signal.
            unsafe {
                libc::setrlimit(libc::RLIMIT_CORE, &off);
                libc::signal(signal as libc::c_int, libc::SIG_DFL);
            }
            let mut one = SigSet::empty();
            one.add(signal);
            let _ = one.thread_unblock();
            let _ = nix::sys::signal::raise(signal);
            128 + signal as i32
        }
        // Forced before the command exited: killed like it.
        _ => 128 + libc::SIGKILL,
    }
}

/// Points stdin, stdout and stderr at /dev/null.
fn release_stdio() {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    use std::os::fd::AsRawFd;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, which this process owns.
        unsafe {
            libc::dup2(null.as_raw_fd(), fd);
        }
    }
}
