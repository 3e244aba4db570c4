//! The command line.
//!
//! - `ctl`: the operator's client of the control socket.

pub mod ctl;
