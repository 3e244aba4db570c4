//! Starting session leaders and reaping what the server adopts.
//!
//! A session's leader is started like `posix_spawn` does ([`spawn_leader_vfork`]), moved into
//! its session's cgroup before it execs when the session has one (see `containment`), with
//! every signal at its default. The daemon is a child subreaper: a session process whose parent
//! exits comes to it rather than to init, and it reaps those orphans on SIGCHLD
//! ([`reap_orphans`]); session leaders are reaped by their sessions, so the reaper tells them
//! apart through the registry of leaders kept here.

use std::collections::HashSet;
use std::fs;
use std::sync::{Mutex, OnceLock};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

/// The environment variable that tells a session's processes which session they belong to
/// (information for them; containment does not rely on it).
pub const SESSION_ENV: &str = "SSHVISOR_SESSION";

/// Session leaders this process spawned and has not reaped yet: its own children that are not
/// adopted orphans.
fn leaders() -> &'static Mutex<HashSet<i32>> {
    static LEADERS: OnceLock<Mutex<HashSet<i32>>> = OnceLock::new();
    LEADERS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Spawns a session leader and records it, under the lock the orphan reaper takes, so the
/// reaper can never mistake a leader that exits at once for an orphan.
pub fn spawn_leader(
    spawn: impl FnOnce() -> std::io::Result<std::process::Child>,
) -> std::io::Result<std::process::Child> {
    let mut leaders = leaders().lock().unwrap_or_else(|e| e.into_inner());
    let child = spawn()?;
    leaders.insert(child.id() as i32);
    Ok(child)
}

/// Reaps every exited child of this process that is not a session leader: orphans the server
/// adopted as subreaper. Only for a process whose other children are all session leaders (the
/// daemon): it would steal the exit status of any other child.
///
/// /proc is read before the lock, so that a session's spawn or reap never waits on it: a
/// leader that exits at once may be in the list unregistered, but its spawn holds the lock
/// until it is registered, so under the lock it is known.
///
/// With `kill_live`, an adopted orphan that still runs is killed too: where every session has
/// a reaper of its own (see `reaper`), an orphan reaches the server only when its session's
/// reaper was killed, and it must not outlive its session.
pub fn reap_orphans(kill_live: bool) -> usize {
    let (exited, live): (Vec<i32>, Vec<i32>) = adoptable().into_iter().partition(|c| !alive(*c));
    if exited.is_empty() && (live.is_empty() || !kill_live) {
        return 0;
    }
    let leaders = leaders().lock().unwrap_or_else(|e| e.into_inner());
    if kill_live {
        for child in live.iter().filter(|c| !leaders.contains(c)) {
            let _ = kill(Pid::from_raw(*child), Signal::SIGKILL);
        }
    }
    let mut reaped = 0;
    for child in exited {
        if !leaders.contains(&child)
            && waitpid(Pid::from_raw(child), Some(WaitPidFlag::WNOHANG)).is_ok()
        {
            reaped += 1;
        }
    }
    if kill_live {
        let caught = live.iter().filter(|c| !leaders.contains(c)).count();
        crate::session::tally::caught(caught);
    }
    crate::session::tally::reaped(reaped);
    reaped
}

/// Forgets a session leader (it was reaped).
pub fn unregister_leader(pid: Pid) {
    crate::session::tally::reaped(1);
    leaders()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&pid.as_raw());
}

/// Makes this process the subreaper of its descendants (Linux). Idempotent.
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes a plain integer argument.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The children of `pid` (all its threads).
pub(crate) fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        if let Ok(list) = fs::read_to_string(task.path().join("children")) {
            out.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// The children of this process's main thread: where the kernel puts the orphans this process
/// adopts as subreaper (the first live thread of the reaper's thread group, and the main thread
/// lives as long as the process). Session leaders are children of whichever thread spawned them
/// (the runtime's workers, normally), so this list stays short however many sessions run;
/// leaders spawned on the main thread, or whose thread exited, are here too and are told apart
/// by the caller.
fn adoptable() -> Vec<i32> {
    let me = std::process::id();
    let Ok(list) = fs::read_to_string(format!("/proc/{me}/task/{me}/children")) else {
        return Vec::new();
    };
    list.split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .collect()
}

/// Whether `pid` runs (exists and is not a zombie).
pub(crate) fn alive(pid: i32) -> bool {
    let Ok(line) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which may hold spaces and parentheses.
    let state = line
        .rfind(')')
        .and_then(|end| line.get(end + 2..))
        .and_then(|rest| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// A session leader started by [`spawn_leader_vfork`], with our ends of its stdio pipes.
pub struct VforkChild {
    /// Its process ID (also its process group ID).
    pub pid: Pid,
    /// Writes to its stdin.
    pub stdin: std::os::fd::OwnedFd,
    /// Reads its stdout.
    pub stdout: std::os::fd::OwnedFd,
    /// Reads its stderr.
    pub stderr: std::os::fd::OwnedFd,
}

/// What the child needs, all of it prepared before the clone: the child may not allocate.
struct VforkPlan {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    stdio: [libc::c_int; 3],
    /// The session cgroup's `cgroup.procs`, open for writing (-1: none).
    cgroup_procs: libc::c_int,
    errno: std::sync::atomic::AtomicI32,
}

/// Sets every signal's disposition back to the default, in a child between fork (or vfork) and
/// exec: handlers of ours mean nothing after exec (and must not run in a vfork child), and an
/// ignored signal would be inherited through exec. Rust ignores SIGPIPE, and a daemon started
/// under `nohup` ignores SIGHUP: a session would then outlive the hangup a kill sends it.
///
/// # Safety
///
/// Only in a child before exec: it changes the whole process's signal dispositions. It makes
/// only async-signal-safe calls.
pub unsafe fn default_signal_dispositions() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: sigaction with valid pointers; the caller is a child before exec.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction != libc::SIG_DFL
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
    }
}

/// Between fork and exec, in the child: a session of its own with the terminal at fd 0 as its
/// controlling tty (`terminal`), or a process group of its own. Async-signal-safe.
///
/// # Safety
///
/// Only for a child between fork and exec.
pub unsafe fn own_session_or_group(terminal: bool) -> std::io::Result<()> {
    // SAFETY: plain system calls on this process and its fd 0; the caller is a child before exec.
    let failed = unsafe {
        if terminal {
            libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0
        } else {
            libc::setpgid(0, 0) < 0
        }
    };
    if failed {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

extern "C" fn vfork_child(plan: *mut libc::c_void) -> libc::c_int {
    // SAFETY: runs in the child between clone(CLONE_VM | CLONE_VFORK) and exec, on its own
    // stack, with our memory shared and the parent suspended: it only reads the plan and makes
    // async-signal-safe system calls, and ends in execve or _exit.
    unsafe {
        let plan = &*(plan as *const VforkPlan);
        let fail = |plan: &VforkPlan| -> ! {
            plan.errno.store(
                *libc::__errno_location(),
                std::sync::atomic::Ordering::SeqCst,
            );
            libc::_exit(127)
        };
        // Into the session's cgroup first: whatever it starts from here on is born inside.
        if plan.cgroup_procs >= 0 && libc::write(plan.cgroup_procs, b"0".as_ptr().cast(), 1) != 1 {
            fail(plan);
        }
        default_signal_dispositions();
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        if libc::setpgid(0, 0) < 0 {
            fail(plan);
        }
        for (target, fd) in plan.stdio.iter().enumerate() {
            // Our ends are all at 3 or above: dup2 never overwrites one we still need, and it
            // clears close-on-exec on the copy.
            if libc::dup2(*fd, target as libc::c_int) < 0 {
                fail(plan);
            }
        }
        if libc::chdir(plan.cwd) < 0 {
            fail(plan);
        }
        libc::execve(plan.program, plan.argv, plan.envp);
        fail(plan)
    }
}

/// Starts a session leader the way `posix_spawn` does: the child shares this process's memory
/// until it execs (`clone(CLONE_VM | CLONE_VFORK)`), so none of a big server's page tables are
/// copied, unlike `fork`. In between it moves itself into the cgroup whose `cgroup.procs` is
/// open as `cgroup_procs` (if any), gets its own process group, three pipes as
/// stdin/stdout/stderr, the working directory `cwd`, and default signal handling. `argv[0]` is
/// `arg0`; `env` is the whole environment. The leader is recorded like [`spawn_leader`]'s.
pub fn spawn_leader_vfork(
    program: &std::path::Path,
    arg0: &std::ffi::OsStr,
    args: &[&std::ffi::OsStr],
    env: &[(std::ffi::OsString, std::ffi::OsString)],
    cwd: &std::path::Path,
    cgroup_procs: Option<std::os::fd::RawFd>,
) -> std::io::Result<VforkChild> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;

    let c = |bytes: &[u8]| {
        CString::new(bytes).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL byte in a command")
        })
    };
    let program_c = c(program.as_os_str().as_bytes())?;
    let mut argv_c = vec![c(arg0.as_bytes())?];
    for arg in args {
        argv_c.push(c(arg.as_bytes())?);
    }
    let mut env_c = Vec::with_capacity(env.len());
    for (k, v) in env {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        env_c.push(c(&kv)?);
    }
    let cwd_c = c(cwd.as_os_str().as_bytes())?;
    let argv: Vec<*const libc::c_char> = argv_c
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = env_c
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();

    // Three pipes, close-on-exec; the child's ends moved to 3 or above.
    let pipe = || -> std::io::Result<(OwnedFd, OwnedFd)> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills two descriptors that nobody else owns.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both are fresh descriptors owned from here on.
        Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
    };
    let high = |fd: OwnedFd| -> std::io::Result<OwnedFd> {
        if fd.as_raw_fd() > 2 {
            return Ok(fd);
        }
        // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor that nobody else owns.
        let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
        if new < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: as above.
        Ok(unsafe { OwnedFd::from_raw_fd(new) })
    };
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (in_r, out_w, err_w) = (high(in_r)?, high(out_w)?, high(err_w)?);

    let plan = VforkPlan {
        program: program_c.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: cwd_c.as_ptr(),
        stdio: [in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
        cgroup_procs: cgroup_procs.unwrap_or(-1),
        errno: std::sync::atomic::AtomicI32::new(0),
    };
    let mut stack = vec![0u8; 64 * 1024];
    // The stack grows down: its top, aligned to 16 bytes.
    let top = ((stack.as_mut_ptr() as usize + stack.len()) & !15) as *mut libc::c_void;

    let mut leaders = leaders().lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: every signal is blocked around the clone so that no handler of ours runs in the
    // child before it resets them; the child runs `vfork_child` on `stack` and this thread
    // waits (CLONE_VFORK) until it has exec'd or exited, so the plan, the strings and the stack
    // outlive its use of them.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            vfork_child,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &plan as *const VforkPlan as *mut libc::c_void,
        );
        let clone_errno = std::io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(clone_errno);
        }
        pid
    };
    drop(stack);
    let failed = plan.errno.load(std::sync::atomic::Ordering::SeqCst);
    if failed != 0 {
        let _ = waitpid(Pid::from_raw(pid), None);
        return Err(std::io::Error::from_raw_os_error(failed));
    }
    leaders.insert(pid);
    Ok(VforkChild {
        pid: Pid::from_raw(pid),
        stdin: in_w,
        stdout: out_r,
        stderr: err_r,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zombie_is_not_alive_and_a_sleeper_is() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(alive(pid));
        child.kill().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // Killed, not yet waited for: a zombie.
        while alive(pid) {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(fs::metadata(format!("/proc/{pid}")).is_ok());
        child.wait().unwrap();
    }
}
