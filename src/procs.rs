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
pub fn reap_orphans() -> usize {
    let leaders = leaders().lock().unwrap_or_else(|e| e.into_inner());
    let mut reaped = 0;
    for child in adoptable() {
        if !leaders.contains(&child)
            && !alive(child)
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

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..i + 3))
        .unwrap_or("X");
    !matches!(state, "Z" | "X")
}

/// The session mark in a process's environment, if it has one.
fn mark_of(pid: i32) -> Option<String> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{SESSION_ENV}=");
    environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(prefix.as_bytes()))
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// The processes of one session (without its leader).
#[derive(Debug, Default)]
pub struct SessionProcs {
    /// Every live process of the session.
    pub all: Vec<Pid>,
    /// Those adopted by this process (orphans): its own children, to reap once killed.
    pub adopted: Vec<Pid>,
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
        if !seen.contains(&orphan) && mark_of(orphan).as_deref() == Some(mark) {
            seen.insert(orphan);
            queue.push(orphan);
            out.adopted.push(Pid::from_raw(orphan));
            if alive(orphan) {
                out.all.push(Pid::from_raw(orphan));
            }
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
            if let Some(session) = mark_of(pid) {
                *counts.entry(session).or_insert(0) += 1;
            }
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

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
        assert_eq!(
            count_by_session().get(&mark),
            Some(&3),
            "the leader and two sleeps"
        );
        assert!(session_processes(None, "some-other-session").all.is_empty());
        assert_eq!(
            signal_session(Some(pid), &mark, Signal::SIGKILL).all.len(),
            2
        );
        let _ = kill(pid, Signal::SIGKILL);
        leader.wait().unwrap();
    }
}
