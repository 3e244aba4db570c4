//! `sshvisor completions SHELL`: the shell's completion script, generated from the command
//! line's own definitions (clap_complete), so it cannot fall behind a new flag or command.

use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

use super::args::Cli;

/// Writes the completion script for `shell` to stdout.
pub(crate) fn print(shell: Shell) -> ExitCode {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "sshvisor", &mut std::io::stdout());
    ExitCode::SUCCESS
}
