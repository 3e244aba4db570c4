//! `sshvisor-bench`: a load generator for any SSH server reachable by address.
//!
//! `hold N`: opens N connections (nodelay), each authenticated by public key with one exec
//! session, reports when all are up, then holds them and reports, per connection, when the
//! server ended it (client-side timing of a kill), until all are gone or the hold time ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use tokio::sync::mpsc;

#[derive(Parser)]
#[command(about = "Load generator for SSH servers")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open N connections with one exec session each and hold them.
    Hold {
        /// How many connections.
        count: usize,
        /// The server.
        #[arg(long, default_value = "127.0.0.1:2222")]
        addr: String,
        /// Private key to authenticate with.
        #[arg(long, default_value = ".sshvisor/client_ed25519")]
        key: PathBuf,
        /// User name.
        #[arg(long, default_value = "bench")]
        user: String,
        /// Command each session runs.
        #[arg(long, default_value = "sleep 100000")]
        command: String,
        /// Connections opened at once.
        #[arg(long, default_value_t = 32)]
        parallel: usize,
        /// How long to hold before exiting (humantime-free: seconds).
        #[arg(long, default_value_t = 600)]
        hold_secs: u64,
    },
}

struct Quiet;

impl client::Handler for Quiet {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

async fn open(
    config: Arc<client::Config>,
    addr: &str,
    key: Arc<PrivateKey>,
    user: &str,
    command: &str,
) -> anyhow::Result<(client::Handle<Quiet>, russh::Channel<client::Msg>)> {
    let mut handle = client::connect(config, addr, Quiet).await?;
    let auth = handle
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, None))
        .await?;
    if !auth.success() {
        bail!("authentication refused");
    }
    let channel = handle.channel_open_session().await?;
    channel.exec(true, command).await?;
    Ok((handle, channel))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cmd::Hold {
        count,
        addr,
        key,
        user,
        command,
        parallel,
        hold_secs,
    } = Cli::parse().command;
    let key = Arc::new(
        PrivateKey::read_openssh_file(&key)
            .with_context(|| format!("reading {}", key.display()))?,
    );
    let config = Arc::new(client::Config {
        nodelay: true,
        inactivity_timeout: None,
        ..Default::default()
    });
    let started = Instant::now();
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<Instant>();
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut opening = Vec::with_capacity(count);
    for _ in 0..count {
        let (config, addr, key, user, command, sem) = (
            config.clone(),
            addr.clone(),
            key.clone(),
            user.clone(),
            command.clone(),
            sem.clone(),
        );
        let ended_tx = ended_tx.clone();
        let (up_tx, up_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let opened = {
                let _permit = sem.acquire().await;
                open(config, &addr, key, &user, &command).await
            };
            match opened {
                Ok((handle, mut channel)) => {
                    let _ = up_tx.send(Ok(()));
                    while channel.wait().await.is_some() {}
                    // The session channel ended; the connection ends with it or right after.
                    let _ = handle.await;
                    let _ = ended_tx.send(Instant::now());
                }
                Err(e) => {
                    let _ = up_tx.send(Err(e));
                }
            }
        });
        opening.push(up_rx);
    }
    drop(ended_tx);
    let mut failed = 0;
    for up in opening {
        if !matches!(up.await, Ok(Ok(()))) {
            failed += 1;
        }
    }
    println!(
        "up: {} connections in {:.3} s ({} failed)",
        count - failed,
        started.elapsed().as_secs_f64(),
        failed
    );
    let deadline = tokio::time::sleep(Duration::from_secs(hold_secs));
    tokio::pin!(deadline);
    let mut ended = 0;
    loop {
        tokio::select! {
            at = ended_rx.recv() => match at {
                Some(at) => {
                    ended += 1;
                    println!("ended: {ended} at {:.6}", at.duration_since(started).as_secs_f64());
                }
                None => break,
            },
            () = &mut deadline => break,
        }
    }
    Ok(())
}
