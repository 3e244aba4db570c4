//! What the control socket keeps in reserve so that it answers when the rest of the server has
//! run out of descriptors: it is the operator's way to find and kill whatever took them.
//!
//! - A spare descriptor ([`Spare`]), taken at start. When an accept fails for want of a
//!   descriptor, the spare is given up and the accept tried again, so the waiting operator is
//!   let in on it; it is taken again as soon as that client is gone (the "reserve fd" trick).
//! - This process's /proc files that `stats` reads ([`ProcSelf`]), opened once at start and
//!   read again from their start each time: `stats` needs no descriptor of its own.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, OnceLock, PoisonError};

use nix::dir::Dir;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use serde_json::{json, Value};

/// Whether `error` says the process (or the system) is out of descriptors.
pub(super) fn out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// One descriptor held for the operator.
#[derive(Debug, Default)]
pub(super) struct Spare(Mutex<Option<File>>);

impl Spare {
    /// A spare, taken now if a descriptor is free.
    pub(super) fn new() -> Self {
        let spare = Self::default();
        spare.retake();
        spare
    }

    /// Takes the spare again if it was given up and a descriptor is free.
    pub(super) fn retake(&self) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = File::open("/dev/null").ok();
        }
    }

    /// Gives the spare up (closes it); false when it was not held.
    pub(super) fn release(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .is_some()
    }
}

/// This process's /proc files, opened once.
struct ProcSelf {
    smaps_rollup: Option<File>,
    status: Option<File>,
    fds: Option<Mutex<Dir>>,
}

static PROC_SELF: OnceLock<ProcSelf> = OnceLock::new();

impl ProcSelf {
    fn get() -> &'static ProcSelf {
        PROC_SELF.get_or_init(|| ProcSelf {
            smaps_rollup: File::open("/proc/self/smaps_rollup").ok(),
            status: File::open("/proc/self/status").ok(),
            fds: Dir::open(
                "/proc/self/fd",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .ok()
            .map(Mutex::new),
        })
    }
}

/// Opens the /proc files `stats` reads (at start, while descriptors are free).
pub(super) fn open_proc_self() {
    ProcSelf::get();
}

/// The whole of a /proc file, read from its start (procfs makes it anew at offset 0).
fn read_again(file: Option<&File>) -> String {
    let Some(file) = file else {
        return String::new();
    };
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match file.read_at(&mut buf, out.len() as u64) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return String::new(),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Open descriptors of this process (its own /proc directory handle included).
fn open_fds() -> Option<usize> {
    let mut dir = ProcSelf::get()
        .fds
        .as_ref()?
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    // The iterator rewinds the directory when dropped, so every count starts from the top.
    let entries = dir.iter().filter_map(Result::ok);
    Some(
        entries
            .filter(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
            .count(),
    )
}

/// This process's memory, descriptors and threads (`None` where unreadable), read without
/// opening anything.
pub(super) fn process_stats() -> Value {
    fn field(text: &str, name: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }
    let proc_self = ProcSelf::get();
    let rollup = read_again(proc_self.smaps_rollup.as_ref());
    let status = read_again(proc_self.status.as_ref());
    let containment = crate::session::containment::in_use();
    json!({
        "containment": containment.as_ref().map(|c| c.name()),
        "containment_location": containment
            .as_ref()
            .and_then(|c| c.location())
            .map(|p| p.display().to_string()),
        "pss_kib": field(&rollup, "Pss:"),
        "rss_kib": field(&status, "VmRSS:"),
        "open_fds": open_fds(),
        "threads": field(&status, "Threads:"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_read_from_the_kept_files_and_the_spare_comes_and_goes() {
        let before = process_stats();
        assert!(
            before["pss_kib"].as_u64().is_some_and(|k| k > 0),
            "{before}"
        );
        assert!(
            before["threads"].as_u64().is_some_and(|t| t >= 1),
            "{before}"
        );
        assert!(
            before["open_fds"].as_u64().is_some_and(|n| n >= 3),
            "{before}"
        );
        let spare = Spare::new();
        assert!(spare.release());
        assert!(!spare.release(), "released once");
        spare.retake();
        assert!(spare.release());
    }
}
