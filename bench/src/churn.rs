//! `churn`: C tasks, each connecting, authenticating, running one command to its end and
//! disconnecting, over and over until the duration is up. Reports handshakes per second and
//! the latency of one whole cycle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use russh::keys::PrivateKey;
use russh::{client, ChannelMsg, Disconnect};

use crate::client::{self as ssh, Login};
use crate::stats::Samples;

/// What `churn` needs.
#[derive(clap::Args)]
pub struct ChurnArgs {
    #[command(flatten)]
    login: Login,
    /// Connections in flight at once (one task each).
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// How long to keep connecting, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// The command each session runs (it should exit 0).
    #[arg(long, default_value = "true")]
    command: String,
    /// A cycle taking longer than this many seconds counts as failed.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
}

/// One connection's whole life: connect, authenticate, exec, exit status and channel close,
/// disconnect, transport gone.
async fn cycle(
    config: Arc<client::Config>,
    addr: &str,
    key: Arc<PrivateKey>,
    user: &str,
    command: &str,
) -> anyhow::Result<()> {
    let (handle, mut channel) = ssh::open(config, addr, key, user, command).await?;
    let mut status = None;
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            ChannelMsg::ExitSignal { signal_name, .. } => {
                bail!("the command was killed by signal {signal_name:?}")
            }
            ChannelMsg::Failure => bail!("the server refused the exec request"),
            _ => {}
        }
    }
    match status {
        Some(0) => {}
        Some(code) => bail!("the command exited with status {code}"),
        None => bail!("the channel closed without an exit status"),
    }
    handle
        .disconnect(Disconnect::ByApplication, "", "en")
        .await
        .context("disconnecting")?;
    // Wait for our side of the transport to wind down, so sockets do not pile up.
    let _ = handle.await;
    Ok(())
}

/// What one task saw.
struct Tally {
    latencies: Samples,
    failed: usize,
}

/// Runs the churn and prints its summary.
pub async fn run(args: ChurnArgs) -> anyhow::Result<()> {
    if !(args.duration > 0.0 && args.timeout > 0.0) {
        bail!("--duration and --timeout must be positive");
    }
    let key = ssh::read_key(&args.login.key)?;
    let config = ssh::config();
    let parallel = args.parallel.max(1);
    let timeout = Duration::from_secs_f64(args.timeout);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let reported = Arc::new(AtomicBool::new(false));
    let addr: Arc<str> = args.login.addr.into();
    let user: Arc<str> = args.login.user.into();
    let command: Arc<str> = args.command.into();
    let mut tasks = Vec::with_capacity(parallel);
    for _ in 0..parallel {
        let (config, key, addr, user, command, reported) = (
            config.clone(),
            key.clone(),
            addr.clone(),
            user.clone(),
            command.clone(),
            reported.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally {
                latencies: Samples::new(),
                failed: 0,
            };
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let done = tokio::time::timeout(
                    timeout,
                    cycle(config.clone(), &addr, key.clone(), &user, &command),
                )
                .await
                .unwrap_or_else(|_| Err(anyhow!("no end within {timeout:?}")));
                match done {
                    Ok(()) => tally.latencies.push_ms(t0.elapsed()),
                    Err(e) => {
                        tally.failed += 1;
                        if !reported.swap(true, Ordering::SeqCst) {
                            eprintln!("churn: first error: {e:#}");
                        }
                        // Do not spin on a server that refuses at once.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            tally
        }));
    }
    let mut latencies = Samples::new();
    let mut failed = 0;
    for task in tasks {
        let tally = task.await.context("a churn task panicked")?;
        latencies.extend(tally.latencies);
        failed += tally.failed;
    }
    let secs = started.elapsed().as_secs_f64();
    let done = latencies.len();
    println!(
        "churn: parallel {parallel}, {done} handshakes in {secs:.3} s = {:.1}/s ({failed} failed), latency {}",
        done as f64 / secs,
        latencies.p50_p99(" ms")
    );
    Ok(())
}
