//! Finding every process a session started, including the ones that left its process group.
//!
//! Each session's processes carry `SSHVISOR_SESSION=<session id>` in their environment, which
//! their descendants inherit whatever they do with process groups and sessions (`setsid`,
//! `nohup cmd &`, a double fork). To end a session, sshvisor signals its process group and every
//! live process that carries its mark. Only a process that wipes its own environment *and*
//! leaves the group escapes this; a cgroup per session would close that gap.

use std::collections::HashMap;
use std::fs;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The environment variable that marks a session's processes.
pub const SESSION_ENV: &str = "SSHVISOR_SESSION";

/// One process as read from /proc.
struct Proc {
    pid: i32,
    start_ticks: u64,
}

/// Live (non-zombie) processes other than this one, with their start times.
fn live_processes() -> Vec<Proc> {
    let me = std::process::id() as i32;
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may hold spaces and parentheses: fields follow the last ')'.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split(' ').collect();
            // fields[0] is the state (field 3), start time is field 22 (index 19 here).
            if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
                return None;
            }
            let start_ticks = fields.get(19)?.parse().ok()?;
            Some(Proc { pid, start_ticks })
        })
        .collect()
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

/// The live processes marked as belonging to `session`, started at or after `since_ticks`
/// (the session leader's start time: nothing of the session is older).
pub fn session_processes(session: &str, since_ticks: u64) -> Vec<Pid> {
    live_processes()
        .into_iter()
        .filter(|p| p.start_ticks >= since_ticks)
        .filter(|p| mark_of(p.pid).as_deref() == Some(session))
        .map(|p| Pid::from_raw(p.pid))
        .collect()
}

/// How many live processes each session has, by session ID text.
pub fn count_by_session() -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for p in live_processes() {
        if let Some(session) = mark_of(p.pid) {
            *counts.entry(session).or_insert(0) += 1;
        }
    }
    counts
}

/// The start time of `pid` in clock ticks since boot.
pub fn start_ticks(pid: Pid) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Sends `signal` to every live process of `session`; returns how many there were.
pub fn signal_session(session: &str, since_ticks: u64, signal: Signal) -> usize {
    let pids = session_processes(session, since_ticks);
    for pid in &pids {
        let _ = kill(*pid, signal);
    }
    pids.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn marked_processes_are_found_even_in_a_new_session() {
        let mark = format!("test-{}", std::process::id());
        let mut child = Command::new("setsid")
            .args(["sleep", "30"])
            .env(SESSION_ENV, &mark)
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let since = start_ticks(pid).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while session_processes(&mark, since).is_empty() {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(count_by_session().get(&mark), Some(&1));
        assert_eq!(signal_session(&mark, since, Signal::SIGKILL), 1);
        child.wait().unwrap();
        assert!(session_processes(&mark, since).is_empty());
        assert!(session_processes("some-other-session", 0).is_empty());
    }
}
