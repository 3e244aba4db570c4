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
//! - `daemon`: `sshvisor serve` as a library ([`daemon::Daemon`]): configuration, keys, the
//!   control socket, the runtime.
//! - `cli`: the command line (the binary's `main` is [`cli::main`]): clap definitions, `serve`'s
//!   loop and signals, the operator's `ctl` client and what it prints.
//! - `actors`: the `sshvisor-actors` crate re-exported: the tree, and its door
//!   [`actors::SupervisorHandle`].

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
