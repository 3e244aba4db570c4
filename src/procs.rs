//! Finding every process a session started, including the ones that left its process group.
//!
//! Each session leader is a child subreaper (`PR_SET_CHILD_SUBREAPER`, set before exec): while
//! it lives, a session process whose parent exits is re-parented to it. The server is one too:
//! once the leader is gone, the session's orphans come to the server instead of to init, so
//! nothing leaves the server's process tree. A session's processes are then its leader's descendants (walked through
//! `/proc/PID/task/TID/children`, cost proportional to the session) plus the orphans the server
//! adopted that carry the session's mark (`SSHVISOR_SESSION=<id>` in the environment, inherited
//! whatever a process does with process groups and sessions: `setsid`, `nohup cmd &`, a double
//! fork). Adopted orphans the server kills are reaped here.
//!
//! `count_by_session` (for `ctl ls`) scans all of /proc instead: it is an operator's command,
//! not a kill's hot path.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::sync::{Mutex, OnceLock};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

/// The environment variable that marks a session's processes.
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
pub fn reap_orphans() -> usize {
    let exited: Vec<i32> = adoptable().into_iter().filter(|c| !alive(*c)).collect();
    if exited.is_empty() {
        return 0;
    }
    let leaders = leaders().lock().unwrap_or_else(|e| e.into_inner());
    let mut reaped = 0;
    for child in exited {
        if !leaders.contains(&child)
            && waitpid(Pid::from_raw(child), Some(WaitPidFlag::WNOHANG)).is_ok()
        {
            reaped += 1;
        }
    }
    reaped
}

/// Forgets a session leader (it was reaped).
pub fn unregister_leader(pid: Pid) {
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
fn children_of(pid: i32) -> Vec<i32> {
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

/// What this module reads of a process's stat line.
struct Stat {
    /// It runs (is not a zombie, nor dead).
    alive: bool,
    /// The end address of its environment area (`env_end`, field 51): 0 while it has no
    /// memory of its own (a zombie) or none laid out yet (inside `execve`).
    env_end: Option<u64>,
}

/// A process's stat line, read once; `None` if it is gone.
fn stat(pid: i32) -> Option<Stat> {
    let line = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3, the state.
    let mut fields = line.get(line.rfind(')')? + 2..)?.split_whitespace();
    let alive = !matches!(fields.next(), Some("Z" | "X") | None);
    let env_end = fields.nth(51 - 4).and_then(|f| f.parse().ok());
    Some(Stat { alive, env_end })
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|s| s.alive)
}

/// What a process's environment says about its session.
#[derive(Debug, PartialEq, Eq)]
enum Mark {
    /// It carries this session mark.
    Is(String),
    /// It carries none, or cannot be read (gone, or not ours to read).
    Unmarked,
    /// It is inside `execve` (its new memory has no environment area yet), or execs again and
    /// again: the mark cannot be read now, but can be in a moment.
    Pending,
}

/// The session mark in a process's environment.
///
/// While a process execs, between the kernel switching it to the new program's memory and
/// laying out that program's stack, its `/proc/PID/environ` reads empty. A session's escaped
/// process is often exactly there when its leader exits (`cmd & exit`). So an empty read is
/// told apart from an empty environment (`env -i`) by the environment's end address (field 51
/// of `/proc/PID/stat`): 0 in that window (and in a zombie), and the same before and after
/// the read when the program did not change in between (its stack is placed anew at each
/// exec). And the file is read in one call: see [`read_in_one_call`].
fn mark_of(pid: i32) -> Mark {
    for _ in 0..3 {
        let before = stat(pid).and_then(|s| s.env_end);
        let environ = match read_in_one_call(&format!("/proc/{pid}/environ")) {
            Ok(environ) => environ,
            Err(_) => return Mark::Unmarked,
        };
        if !environ.is_empty() {
            let prefix = format!("{SESSION_ENV}=");
            return environ
                .split(|b| *b == 0)
                .find_map(|var| var.strip_prefix(prefix.as_bytes()))
                .map_or(Mark::Unmarked, |value| {
                    Mark::Is(String::from_utf8_lossy(value).into_owned())
                });
        }
        let Some(after) = stat(pid) else {
            return Mark::Unmarked;
        };
        match (before, after.env_end) {
            (_, None) => return Mark::Unmarked,
            // A zombie has no memory at all, so no end address either.
            (_, Some(0)) if after.alive => return Mark::Pending,
            (_, Some(0)) => return Mark::Unmarked,
            (Some(before), Some(after)) if before == after => return Mark::Unmarked,
            // It execed meanwhile: read again.
            _ => continue,
        }
    }
    // Execing again and again: look again later.
    Mark::Pending
}

/// Reads a `/proc` file in one `read` call (growing the buffer and starting over while it
/// fills up). The kernel serves each call of a process's environ from the memory it holds at
/// that moment, and the file keeps the memory it opened with: read in several calls across an
/// exec, the environment ends early, at the point where the old program's memory went away.
fn read_in_one_call(path: &str) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    // Linux limits a program's arguments and environment together to a quarter of its stack
    // limit; 8 MiB covers a 32 MiB stack limit.
    const MAX: usize = 8 << 20;
    let file = fs::File::open(path)?;
    let mut size = 4 << 10;
    loop {
        let mut buf = vec![0u8; size];
        let n = file.read_at(&mut buf, 0)?;
        if n < size || size >= MAX {
            buf.truncate(n);
            return Ok(buf);
        }
        size *= 4;
    }
}

/// The processes of one session (without its leader).
#[derive(Debug, Default)]
pub struct SessionProcs {
    /// Every live process of the session.
    pub all: Vec<Pid>,
    /// Those adopted by this process (orphans): its own children, to reap once killed.
    pub adopted: Vec<Pid>,
    /// Adopted orphans caught inside `execve`, whose session cannot be told yet: look again
    /// in a moment.
    pub pending: usize,
}

/// The live processes of the session marked `mark` whose leader is `leader` (`None` once the
/// leader was reaped: its ID may belong to someone else then).
pub fn session_processes(leader: Option<Pid>, mark: &str) -> SessionProcs {
    let mut seen = HashSet::new();
    let mut out = SessionProcs::default();
    let mut queue: Vec<i32> = Vec::new();
    if let Some(leader) = leader {
        seen.insert(leader.as_raw());
        queue.push(leader.as_raw());
    }
    let candidates = adoptable();
    let orphans: Vec<i32> = {
        let known_leaders = leaders().lock().unwrap_or_else(|e| e.into_inner());
        candidates
            .into_iter()
            .filter(|pid| !known_leaders.contains(pid))
            .collect()
    };
    for orphan in orphans {
        if seen.contains(&orphan) {
            continue;
        }
        match mark_of(orphan) {
            Mark::Is(m) if m == mark => {}
            Mark::Pending => {
                out.pending += 1;
                continue;
            }
            _ => continue,
        }
        seen.insert(orphan);
        queue.push(orphan);
        out.adopted.push(Pid::from_raw(orphan));
        if alive(orphan) {
            out.all.push(Pid::from_raw(orphan));
        }
    }
    while let Some(pid) = queue.pop() {
        for child in children_of(pid) {
            if seen.insert(child) {
                queue.push(child);
                if alive(child) {
                    out.all.push(Pid::from_raw(child));
                }
            }
        }
    }
    out
}

/// Sends `signal` to every live process of the session; returns them.
pub fn signal_session(leader: Option<Pid>, mark: &str, signal: Signal) -> SessionProcs {
    let procs = session_processes(leader, mark);
    for pid in &procs.all {
        let _ = kill(*pid, signal);
    }
    procs
}

/// Reaps adopted orphans that have exited (they are this process's children).
pub fn reap_adopted(pids: &[Pid]) {
    for pid in pids {
        let _ = waitpid(*pid, Some(WaitPidFlag::WNOHANG));
    }
}

/// How many live processes each session has, by session ID text (a scan of all of /proc).
pub fn count_by_session() -> HashMap<String, usize> {
    let me = std::process::id() as i32;
    let mut counts = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return counts;
    };
    for pid in dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        if pid != me && alive(pid) {
            if let Mark::Is(session) = mark_of(pid) {
                *counts.entry(session).or_insert(0) += 1;
            }
        }
    }
    counts
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
        default_signal_dispositions();
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        if libc::setpgid(0, 0) < 0 {
            fail(plan);
        }
        // The leader adopts the session's orphans while it lives (see the module docs).
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
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
/// copied, unlike `fork`. In between it gets its own process group, becomes the subreaper of
/// its descendants, gets three pipes as stdin/stdout/stderr, the working directory `cwd`, and
/// default signal handling. `argv[0]` is `arg0`; `env` is the whole environment. The leader is
/// recorded like [`spawn_leader`]'s.
pub fn spawn_leader_vfork(
    program: &std::path::Path,
    arg0: &str,
    args: &[&std::ffi::OsStr],
    env: &[(std::ffi::OsString, std::ffi::OsString)],
    cwd: &std::path::Path,
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
    use std::process::Command;

    /// A child killed and waited for when the test ends, failed or not.
    struct KillOnDrop(std::process::Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn descendants_are_found_through_the_leader_and_others_are_not() {
        let mark = format!("test-{}", std::process::id());
        let mut leader = Command::new("sh")
            .args(["-c", "sleep 30 & sleep 31 & wait"])
            .env(SESSION_ENV, &mark)
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(leader.id() as i32);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while session_processes(Some(pid), &mark).all.len() < 2 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // The leader and two sleeps (not counted for the moment one is inside its exec).
        while count_by_session().get(&mark) != Some(&3) {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                count_by_session().get(&mark)
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(session_processes(None, "some-other-session").all.is_empty());
        assert_eq!(
            signal_session(Some(pid), &mark, Signal::SIGKILL).all.len(),
            2
        );
        let _ = kill(pid, Signal::SIGKILL);
        leader.wait().unwrap();
    }

    #[test]
    fn a_process_inside_exec_is_never_taken_for_an_unmarked_one() {
        // Execs itself over and over under the same ID, mark and all.
        let again = r#"exec sh -c "$0" "$0""#;
        // Killed when the test ends, failed or not: it would run forever.
        let looping = KillOnDrop(
            Command::new("sh")
                .args(["-c", again, again])
                .env(SESSION_ENV, "looping")
                .spawn()
                .unwrap(),
        );
        let pid = looping.0.id() as i32;
        // Spawned the way posix_spawn does, it may still run in this test's memory, with this
        // test's environment, for a moment after the spawn returns.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while mark_of(pid) != Mark::Is("looping".into()) {
            assert!(std::time::Instant::now() < deadline);
        }
        // Until twenty reads caught it inside execve (a few hundred per second here), or 2 s.
        let (mut reads, mut pending) = (0, 0);
        let start = std::time::Instant::now();
        while pending < 20 && start.elapsed() < std::time::Duration::from_secs(2) {
            reads += 1;
            match mark_of(pid) {
                Mark::Is(m) => assert_eq!(m, "looping"),
                Mark::Pending => pending += 1,
                Mark::Unmarked => panic!("the mark was lost while the process execs"),
            }
        }
        drop(looping);
        eprintln!("{pending} of {reads} reads caught the process inside execve");
    }

    #[test]
    fn an_empty_environment_and_a_zombie_are_unmarked_not_pending() {
        let mut bare = KillOnDrop(Command::new("sleep").arg("30").env_clear().spawn().unwrap());
        let pid = bare.0.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // Until its exec is done it is still this test's copy, with this test's environment.
        while fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default()
            != "sleep\x0030\x00"
        {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(mark_of(pid), Mark::Unmarked);
        bare.0.kill().unwrap();
        while alive(pid) {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // Killed, not yet waited for: a zombie.
        assert_eq!(mark_of(pid), Mark::Unmarked);
    }
}
