//! `sshvisor-bench`: a load generator for any SSH server reachable by address, the tools to
//! time kills through a server's control, and a bare russh server to compare with.
//!
//! - `hold N`: N connections with one exec session each, held; prints when each one ends.
//! - `churn`: connect, authenticate, run a command, disconnect, over and over.
//! - `kill`, `killall`: end live connections through sshvisor's control socket, a peer
//!   server's line protocol, or sshd's processes, timing each answer.
//! - `bare-server`: plain russh with sshvisor's configuration, auth and exec, and nothing else.
//! - `embedded-server`: sshvisor as a library, with the in-process command `@wait`.
//!
//! Modules: one per command (`bare`, `churn`, `embedded`, `hold`, `kill`), and what they share:
//! `client` (the SSH client side), `control` (listing and killing through each server's control),
//! `stats` (percentiles).

mod bare;
mod churn;
mod client;
mod control;
mod embedded;
mod hold;
mod kill;
mod stats;

use clap::{Parser, Subcommand};

/// The allocator `sshvisor serve` uses (see src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Load generator for SSH servers")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open N connections with one exec session each and hold them.
    Hold(hold::HoldArgs),
    /// Connect, authenticate, run a command and disconnect, over and over, from C tasks.
    Churn(churn::ChurnArgs),
    /// Kill live connections one at a time, oldest first, timing each.
    Kill(kill::KillArgs),
    /// Kill every live connection at once, timing the whole.
    Killall(kill::KillallArgs),
    /// A bare russh server (sshvisor's russh configuration, auth and exec, nothing else).
    BareServer(bare::BareArgs),
    /// sshvisor embedded as a library, with the in-process command `@wait` for held sessions.
    EmbeddedServer(embedded::EmbeddedArgs),
}

fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    // `hold` runs on one thread, like the one Python client of the reference figures:
    // when a kill-all ends thousands of its connections at once, it takes at most one of the
    // machine's two cores from the server it measures (on two threads it took both, and the
    // server's kill-all read 30 % slower for it). The rest runs on every core, on the runtime
    // `sshvisor serve` runs on (the bare server too: the two differ by the actors and the map).
    let mut runtime = match command {
        Cmd::Hold(_) => {
            let mut one = tokio::runtime::Builder::new_current_thread();
            one.enable_all();
            one
        }
        _ => sshvisor::daemon::runtime::builder(),
    };
    runtime.build()?.block_on(async move {
        match command {
            Cmd::Hold(args) => hold::run(args).await,
            Cmd::Churn(args) => churn::run(args).await,
            Cmd::Kill(args) => kill::kill(args).await,
            Cmd::Killall(args) => kill::killall(args).await,
            Cmd::BareServer(args) => bare::run(args).await,
            Cmd::EmbeddedServer(args) => embedded::run(args).await,
        }
    })
}
