//! `hold N`: opens N connections (nodelay), each authenticated by public key with one exec
//! session, reports when all are up, then holds them and reports, per connection, when the
//! server ended it (client-side timing of a kill), until all are gone or the hold time ends.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::client::{self, unix_us, Login};

/// What `hold` needs.
#[derive(clap::Args)]
pub struct HoldArgs {
    /// How many connections.
    count: usize,
    #[command(flatten)]
    login: Login,
    /// Command each session runs.
    #[arg(long, default_value = "sleep 100000")]
    command: String,
    /// Connections opened at once.
    #[arg(long, default_value_t = 32)]
    parallel: usize,
    /// How long to hold before exiting, in seconds.
    #[arg(long, default_value_t = 600)]
    hold_secs: u64,
}

/// Opens and holds the connections.
pub async fn run(args: HoldArgs) -> anyhow::Result<()> {
    let HoldArgs {
        count,
        login: Login { addr, key, user },
        command,
        parallel,
        hold_secs,
    } = args;
    let key = client::read_key(&key)?;
    let config = client::config();
    let started = Instant::now();
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(Instant, SystemTime)>();
    let sem = Arc::new(Semaphore::new(parallel.max(1)));
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
        let (up_tx, up_rx) = oneshot::channel();
        tokio::spawn(async move {
            let opened = {
                let _permit = sem.acquire().await;
                client::open(config, &addr, key, &user, &command).await
            };
            match opened {
                Ok((handle, mut channel)) => {
                    let _ = up_tx.send(Ok(()));
                    while channel.wait().await.is_some() {}
                    // The session channel ended; the connection ends with it or right after.
                    let _ = handle.await;
                    let _ = ended_tx.send((Instant::now(), SystemTime::now()));
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
    let mut first_error = None;
    for up in opening {
        match up.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Err(_) => failed += 1,
        }
    }
    if let Some(e) = first_error {
        eprintln!("hold: first error: {e:#}");
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
    // One write per batch, not per line: a kill-all ends thousands of connections at once, and
    // this client shares the machine's cores with the server it measures.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    loop {
        let first = tokio::select! {
            at = ended_rx.recv() => match at {
                Some(at) => at,
                None => break,
            },
            () = &mut deadline => break,
        };
        let mut next = Some(first);
        while let Some((at, wall)) = next {
            ended += 1;
            writeln!(
                out,
                "ended: {ended} at {:.6} unix_us {}",
                at.duration_since(started).as_secs_f64(),
                unix_us(wall)
            )?;
            next = ended_rx.try_recv().ok();
        }
        out.flush()?;
    }
    Ok(())
}
