//! sshvisor: an SSH server in which every connection and every session is a supervised actor.
//!
//! This crate binds the pure actor tree of `sshvisor-actors` to russh and runs it as a daemon.
//!
//! # Layout
//!
//! - `server`: the accept loop; one task per connection driving `russh::server::run_stream`.
//! - `stream`: the TCP stream wrapper the connection actor can cut (the forced path).
//! - `handler`: the russh `Handler`, a thin adapter from callbacks to actor messages.
//! - `held_channel`: a session channel's russh queue, kept empty until the session starts.
//! - `link`: the russh implementation of the tree's `ConnectionLink`.
//! - `app`: the default session application (exec, shells, terminals), the `SessionLink`.
//! - `pty`: pseudo-terminals: open with size and modes, resize, async master.
//! - `containment`: keeping each session's processes together (a cgroup, or a reaper) so that
//!   its end takes them all; `reaper`: the per-session reaper process, the unprivileged way.
//! - `procs`: starting session leaders; reaping the orphans the daemon adopts.
//! - `sftp`: the in-process SFTP server (`serve`) over the `SftpFs` trait; `LocalFs` by default.
//! - `keys`: host key, generated client key, authorized_keys.
//! - `control`: the control socket (JSON lines) and its protocol.
//! - `ctl`: the operator's client of the control socket.
//! - `daemon`: `sshvisor serve`, everything put together.
//! - `runtime`: the tokio runtime to run it on (multi-threaded, no LIFO slot).

#![warn(missing_docs, unreachable_pub)]

pub mod app;
pub mod config;
pub mod containment;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod handler;
pub mod held_channel;
pub mod keys;
pub mod link;
pub mod procs;
pub mod pty;
pub mod reaper;
pub mod runtime;
pub mod server;
pub mod sftp;
pub mod stream;

pub use sshvisor_actors as actors;

/// The README's examples, compiled as doctests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
