//! The russh binding: everything that speaks SSH.
//!
//! - `server`: the listener and accept loop; one task per connection driving
//!   `russh::server::run_stream`.
//! - `handler`: the russh `Handler`, a thin adapter from callbacks to actor messages.
//! - `stream`: the TCP stream wrapper the connection actor can cut (the forced path).
//! - `link`: the russh implementation of the tree's `ConnectionLink`.
//! - `held_channel`: a session channel's russh queue, kept empty until the session starts.

pub mod handler;
pub mod held_channel;
pub mod link;
pub mod server;
pub mod stream;
