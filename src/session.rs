//! What runs behind a session channel: the default application, behind the binding's
//! `ssh::sessions::SessionFactory` (session/ uses the binding's channel pieces; ssh/ never
//! imports session/).
//!
//! - `app`: the default application (`DefaultSessions`, which holds the `ExecEnv` a reload
//!   replaces, and `ChannelSession`) and what an embedding program configures of it
//!   (`ExecEnv`, `InProcessCommand`, the limits).
//! - `channel_session`: one session of the default application: its `SessionLink`.
//! - `env`: what sessions run with (`ExecEnv`), the client's variables and their limits.
//! - `stdin`: a session's stdin queue, bounded in bytes, and its feeder; the stdin sink.
//! - `process`: starting a session's process (command line, environment, terminal or pipes).
//! - `group`: a session's processes as one (leader and scope): signal, kill, reap.
//! - `driver`: the one task that runs a process session to its end (output pumps, goodbye).
//! - `in_process`: sessions served inside the server (sftp, `InProcessCommand`s).
//! - `pty`: pseudo-terminals: open with size and modes, resize, async master.
//! - `containment`: keeping each session's processes together (a cgroup, or a reaper) so that
//!   its end takes them all; `reaper`: the per-session reaper process, the unprivileged way.
//! - `procs`: starting session leaders; reaping the orphans the daemon adopts.
//! - `sftp`: the in-process SFTP server (`serve`) over the `SftpFs` trait; `LocalFs` by default.

pub mod app;
pub(crate) mod channel_session;
pub mod containment;
pub(crate) mod driver;
pub(crate) mod env;
pub(crate) mod group;
pub(crate) mod in_process;
pub(crate) mod process;
pub mod procs;
pub mod pty;
pub mod reaper;
pub mod sftp;
pub(crate) mod stdin;
pub mod tally;
