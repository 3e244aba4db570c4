//! sshvisor: an SSH server in which every connection and every session is a supervised actor.
//!
//! This crate binds the pure actor tree of `sshvisor-actors` to russh and runs it as a daemon.
//!
//! # Layout
//!
//! - `ssh`: the russh binding: the listener and accept loop, the `Handler` adapter, the stream
//!   the tree can cut, the russh `ConnectionLink`, keys and who may log in.
//! - `session`: what runs behind a session channel: processes (with terminals, stdin, their
//!   containment and reaping), in-process commands, SFTP.
//! - `daemon`: `sshvisor serve` as a library ([`daemon::Daemon`]): configuration, the control
//!   socket, the runtime.
//! - `metrics`: Prometheus metrics fed by the tree's events, and their `/metrics` endpoint.
//! - `fleet`: many nodes as one (the `fleet` feature, on by default; without it only the
//!   answers' types): [`fleet::Fleet`], the agent, the links and their TLS, `fleet certs`.
//! - `audit`: the audit log ([`audit::Audit`]): its records, its file and their stream.
//! - `actors`: the `sshvisor-actors` crate re-exported: the tree, and its door
//!   [`actors::SupervisorHandle`].
//!
//! The command line (`sshvisor serve`, `sshvisor ctl`) is the binary's own module, `src/cli/`.

#![warn(missing_docs, unreachable_pub)]

pub mod audit;
pub mod daemon;
pub mod fleet;
pub mod metrics;
pub mod session;
pub mod ssh;

pub use sshvisor_actors as actors;

/// The README's examples, compiled as doctests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
