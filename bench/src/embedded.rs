//! `embedded-server`: sshvisor embedded as a library, the way a host program runs it, with one
//! in-process command, `@wait`, so that held sessions need no process (a process per session
//! costs a server four or five descriptors, and 10,000 of them do not fit in 20,000).
//!
//! `@wait` starts nothing: it reads and discards the client's input and exits 0 at its EOF.
//! Every other command runs as a process, as in `sshvisor serve`. Limits are raised out of the
//! way; logging is off, like the peers'.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sshvisor::daemon::config::{Config, Limits, Penalties, Timeouts};
use sshvisor::daemon::{Daemon, DaemonOptions};
use sshvisor::session::app::{ChannelIo, InProcessCommand, InProcessCommands};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, SignalKind};

/// Where and how the embedded server runs.
#[derive(clap::Args)]
pub struct EmbeddedArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:2222")]
    listen: std::net::SocketAddr,
    /// State directory (host key, control socket, generated client key).
    #[arg(long, default_value = ".sshvisor")]
    state_dir: PathBuf,
    /// OpenSSH authorized_keys file (without it a client key is generated in the state dir).
    #[arg(long)]
    authorized_keys: Option<PathBuf>,
    /// Keepalive interval in seconds, 0 for none (sshvisor's default is 15).
    #[arg(long, default_value_t = 15)]
    keepalive: u64,
}

/// The in-process `@wait` command.
struct Wait;

impl InProcessCommand for Wait {
    fn run<'a>(
        &'a self,
        _command: &'a str,
        io: &'a mut ChannelIo,
    ) -> Pin<Box<dyn std::future::Future<Output = u32> + Send + 'a>> {
        Box::pin(async move {
            let mut buf = [0u8; 256];
            while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
            0
        })
    }
}

pub async fn run(args: EmbeddedArgs) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let big = 1_000_000;
    let daemon = Daemon::start(DaemonOptions {
        config: Config {
            listen: args.listen,
            state_dir: args.state_dir,
            authorized_keys: args.authorized_keys,
            limits: Limits {
                max_connections: big,
                max_per_source: big,
                max_per_prefix: big,
                max_per_user: big,
                max_unauthenticated: big,
                max_sessions_per_connection: 10,
                ..Limits::default()
            },
            timeouts: Timeouts {
                keepalive_interval: (args.keepalive > 0)
                    .then(|| Duration::from_secs(args.keepalive)),
                ..Timeouts::default()
            },
            // The load comes from 127.0.0.1: penalties would refuse it.
            penalties: Penalties {
                exempt: vec!["127.0.0.0/8".parse().map_err(anyhow::Error::msg)?],
                ..Penalties::default()
            },
            ..Config::default()
        },
        commands: InProcessCommands::default().with("@wait", Arc::new(Wait)),
        ..DaemonOptions::default()
    })
    .await?;
    println!("listening on {}", daemon.ssh_addr());
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    daemon.shutdown(Some(Duration::from_secs(1))).await;
    Ok(())
}
