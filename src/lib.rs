//! sshvisor: an SSH server in which every connection and every session is a supervised actor.
//!
//! This crate binds the pure actor tree of `sshvisor-actors` to russh and runs it as a daemon.
//!
//! # Layout
//!
//! - `ssh`: the russh binding: the listener and accept loop, the `Handler` adapter, the stream
//!   the tree can cut, the russh `ConnectionLink`.
//! - `session`: what runs behind a session channel: processes (with terminals, stdin, their
//!   containment and reaping), in-process commands, SFTP.
//! - `daemon`: `sshvisor serve`: configuration, keys, the control socket, the runtime.
//! - `cli`: the command line: `serve` and the operator's `ctl` client.

#![warn(missing_docs, unreachable_pub)]

pub mod cli;
pub mod daemon;
pub mod session;
pub mod ssh;

pub use sshvisor_actors as actors;

/// The README's examples, compiled as doctests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
