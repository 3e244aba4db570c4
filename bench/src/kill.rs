//! `kill` and `killall`: how long a server takes to end live connections, measured on one
//! persistent control connection.

use std::time::Duration;

use anyhow::bail;
use serde_json::json;

use crate::client::unix_us;
use crate::control::{Control, Target};
use crate::stats::Samples;

/// What `kill` needs.
#[derive(clap::Args)]
pub struct KillArgs {
    #[command(flatten)]
    target: Target,
    /// How many connections to kill, oldest first, one at a time.
    #[arg(long)]
    count: usize,
    /// Pause between kills, in milliseconds (lets each client-side disconnect settle).
    #[arg(long, default_value_t = 20)]
    gap_ms: u64,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

/// What `killall` needs.
#[derive(clap::Args)]
pub struct KillallArgs {
    #[command(flatten)]
    target: Target,
    /// Drain instead (sshvisor): stop accepting, then kill every connection.
    #[arg(long)]
    drain: bool,
    /// A JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn micros(d: Duration) -> u128 {
    d.as_micros()
}

/// Kills connections one at a time and reports each round trip.
pub async fn kill(args: KillArgs) -> anyhow::Result<()> {
    let mut control = Control::connect(&args.target).await?;
    let ids = control.list().await?;
    let live = ids.len();
    if live < args.count {
        eprintln!("kill: only {live} live connections, killing them all");
    }
    let mut rtt = Samples::new();
    let mut inproc = Samples::new();
    let mut failed = 0;
    for (i, id) in ids.iter().take(args.count).enumerate() {
        let i = i + 1;
        if i > 1 && args.gap_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
        }
        let killed = match control.kill(id).await {
            Ok(killed) => killed,
            Err(e) => {
                failed += 1;
                eprintln!("kill: {i} {id} failed: {e:#}");
                continue;
            }
        };
        rtt.push_ms(killed.rtt);
        if let Some(d) = killed.inproc {
            inproc.push_ms(d);
        }
        if args.json {
            println!(
                "{}",
                json!({
                    "kill": i,
                    "id": id,
                    "sent_unix_us": unix_us(killed.sent) as u64,
                    "rtt_us": micros(killed.rtt) as u64,
                    "inproc_us": killed.inproc.map(|d| micros(d) as u64),
                })
            );
        } else {
            let inproc_us = killed
                .inproc
                .map_or_else(|| "-".to_string(), |d| micros(d).to_string());
            println!(
                "kill: {i} sent_unix_us {} rtt_us {} inproc_us {inproc_us}",
                unix_us(killed.sent),
                micros(killed.rtt)
            );
        }
    }
    let kills = rtt.len();
    if args.json {
        let pair =
            |s: &mut Samples| json!({"p50_ms": s.percentile(50.0), "p99_ms": s.percentile(99.0)});
        let inproc_json = if inproc.is_empty() {
            json!(null)
        } else {
            pair(&mut inproc)
        };
        println!(
            "{}",
            json!({
                "summary": "kill",
                "live": live,
                "kills": kills,
                "failed": failed,
                "rtt": pair(&mut rtt),
                "inproc": inproc_json,
            })
        );
    } else {
        let mut line = format!(
            "kill-summary: live {live}, {kills} kills, rtt {}",
            rtt.p50_p99(" ms")
        );
        if !inproc.is_empty() {
            line.push_str(&format!(", inproc {}", inproc.p50_p99(" ms")));
        }
        if failed > 0 {
            line.push_str(&format!(" ({failed} failed)"));
        }
        println!("{line}");
    }
    if kills == 0 && args.count > 0 {
        bail!("no kill succeeded");
    }
    Ok(())
}

/// Kills everything at once and reports how long the server took to answer.
pub async fn killall(args: KillallArgs) -> anyhow::Result<()> {
    let mut control = Control::connect(&args.target).await?;
    let live = control.list().await?.len();
    let what = if args.drain { "drain" } else { "killall" };
    let t0 = std::time::Instant::now();
    let done = if args.drain {
        control.drain().await
    } else {
        control.kill_all().await
    };
    let done = match done {
        Ok(done) => done,
        // A refusal or a timeout is a result too: when it came is part of it.
        Err(e) if args.json => {
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            println!(
                "{}",
                json!({"summary": what, "live": live, "error": format!("{e:#}"), "ms": ms})
            );
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let ms = done.rtt.as_secs_f64() * 1e3;
    if args.json {
        println!(
            "{}",
            json!({"summary": what, "live": live, "killed": done.count, "ms": ms})
        );
    } else {
        println!("{what}: {} connections in {ms:.3} ms", done.count);
        if done.count != live {
            eprintln!("killall: {live} were live just before");
        }
    }
    Ok(())
}
