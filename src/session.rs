//! What runs behind a session channel.
//!
//! - `app`: the default session application (exec, shells, terminals), the `SessionLink`.
//! - `pty`: pseudo-terminals: open with size and modes, resize, async master.
//! - `containment`: keeping each session's processes together (a cgroup, or a reaper) so that
//!   its end takes them all; `reaper`: the per-session reaper process, the unprivileged way.
//! - `procs`: starting session leaders; reaping the orphans the daemon adopts.
//! - `sftp`: the in-process SFTP server (`serve`) over the `SftpFs` trait; `LocalFs` by default.

pub mod app;
pub mod containment;
pub mod procs;
pub mod pty;
pub mod reaper;
pub mod sftp;
