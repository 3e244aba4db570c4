//! The command line: `sshvisor serve` and `sshvisor ctl`.
//!
//! - `args`: the clap definitions (commands, flags, and `serve`'s options from file and flags).
//! - `serve`: the server's main loop around [`sshvisor::daemon::Daemon`], with its signals.
//! - `ctl`: the operator's client of the control socket, and each `ctl` command.
//! - `print`: what `ctl` prints for people (tables, reports, events, stats).
//! - `fleet`: `sshvisor fleet certs` (with the `fleet` feature).
//! - `completions`: `sshvisor completions SHELL`, the shell's completion script.

mod args;
mod completions;
pub mod ctl;
#[cfg(feature = "fleet")]
mod fleet;
pub mod print;
mod serve;

use std::process::ExitCode;

use clap::Parser;

use self::args::{Cli, Cmd};

/// The `sshvisor` binary's whole main: parses the command line, runs it on the runtime, and
/// turns an error into a message and a failing exit status.
pub fn main() -> ExitCode {
    // Run again as a session's reaper (where no cgroup contains sessions): that and nothing
    // else, before anything is set up.
    sshvisor::session::reaper::run_if_asked();
    let cli = Cli::parse();
    let runtime = match sshvisor::daemon::runtime::builder().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sshvisor: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Serve(args) => {
                let options = args.options().map_err(anyhow::Error::msg)?;
                if args.print_algorithms {
                    return serve::print_algorithms(&options);
                }
                serve::serve(options).await
            }
            Cmd::Ctl { state_dir, command } => ctl::run(state_dir, command).await,
            Cmd::Completions { shell } => Ok(completions::print(shell)),
            #[cfg(feature = "fleet")]
            Cmd::Fleet { command } => fleet::run(command),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sshvisor: {e}");
            ExitCode::FAILURE
        }
    }
}
