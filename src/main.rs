//! The `sshvisor` binary: `serve` runs the server, `ctl` talks to a running one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sshvisor::cli::ctl::{self, CtlClient, CtlError};
use sshvisor::daemon::control::Command as CtlCommand;
use sshvisor::daemon::{ConfigSource, Daemon, DaemonOptions, DEFAULT_STATE_DIR};
use sshvisor_actors::{ConnectionInfo, KillReport};
use tokio::signal::unix::{signal, SignalKind};

/// mimalloc: kills and kill-alls cost much less CPU per connection than with glibc's malloc
/// (whose chunk coalescing dominated a kill-all's profile), for about 10 KiB more per idle
/// connection; docs/BENCHMARKS.md has both figures.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An SSH server in which every connection and session is a supervised actor.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (127.0.0.1:2222, state in ./.sshvisor by default).
    Serve(ServeArgs),
    /// Inspect and control a running server through its control socket.
    Ctl {
        /// The state directory of the server to talk to.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[command(subcommand)]
        command: CtlCmd,
    },
}

#[derive(Subcommand)]
enum CtlCmd {
    /// List live connections and their sessions.
    Ls {
        #[command(flatten)]
        filter: FilterArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop accepting (the port is released), kill every connection, return once all are gone.
    Drain {
        /// How long sessions get to end politely before they are forced (humantime)
        /// [default: the server's kill grace, `--kill-grace` or `kill_grace` in its config].
        #[arg(long, value_parser = sshvisor::daemon::control::grace_from_str)]
        grace: Option<Duration>,
        /// Print the reports as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-read the server's configuration file (as SIGHUP does): new limits and timeouts apply
    /// to new connections at once and to live ones where that makes sense; nothing live is
    /// dropped. A bad file changes nothing and the error says why.
    Reload,
    /// How big the server is: connections and sessions in the map, live actors, waiting
    /// kills, and the process's memory (PSS), open descriptors and threads.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stream lifecycle events as they happen (Ctrl-C to stop).
    Watch {
        /// One JSON object per event.
        #[arg(long)]
        json: bool,
    },
    /// Show one connection (by its ID, a session's ID, or a unique prefix).
    Show {
        /// The ID or a unique prefix.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Kill connections or sessions (full IDs or unique prefixes), or every connection a filter
    /// selects (--user, --peer, --older-than, --idle-over combine with AND; --all for every
    /// connection); returns once they are gone. IDs and filters do not mix.
    Kill {
        /// IDs or unique prefixes of connections or sessions.
        ids: Vec<String>,
        /// Kill every connection (with filters: every connection they select).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
        /// List what would be killed (with IDs, filters or --all), kill nothing.
        #[arg(long)]
        dry_run: bool,
        /// Shown to the client that is cut off.
        #[arg(long)]
        reason: Option<String>,
        /// How long sessions get to end politely before they are forced (humantime)
        /// [default: the server's kill grace, `--kill-grace` or `kill_grace` in its config].
        #[arg(long, value_parser = sshvisor::daemon::control::grace_from_str)]
        grace: Option<Duration>,
        /// Print each report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `serve`'s flags: they override the configuration file, also on reload.
#[derive(clap::Args, Debug, Clone)]
struct ServeArgs {
    /// Configuration file (TOML; see docs/OPERATIONS.md). Flags override it. Re-read on
    /// SIGHUP and `sshvisor ctl reload`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on for SSH [default: 127.0.0.1:2222].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory for the host key, the control socket and generated keys [default: .sshvisor].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// OpenSSH authorized_keys file; without it a client key is generated and authorized.
    #[arg(long)]
    authorized_keys: Option<PathBuf>,
    /// Grace of kills that name none, and of the shutdown (humantime: 5s, 500ms) [default: 5s].
    #[arg(long, value_parser = sshvisor::daemon::control::grace_from_str)]
    kill_grace: Option<Duration>,
    /// Also accept this client environment variable (besides LANG, LC_*, TERM); repeatable.
    #[arg(long = "accept-env", value_name = "NAME")]
    accept_env: Vec<String>,
    /// Run this sftp-server binary for the sftp subsystem instead of the in-process one.
    #[arg(long, value_name = "PATH")]
    sftp_server: Option<PathBuf>,
    /// How each session's processes are kept together: auto, cgroup, reaper, process-group
    /// [default: auto: a cgroup per session where the server may make one, else a reaper].
    #[arg(long, value_parser = clap::value_parser!(sshvisor::session::containment::ContainmentChoice))]
    containment: Option<sshvisor::session::containment::ContainmentChoice>,
    /// PATH for sessions [default: /usr/local/bin:/usr/bin:/bin, plus the sbin directories
    /// for root].
    #[arg(long, value_name = "PATH")]
    session_path: Option<String>,
}

impl ServeArgs {
    /// The configuration file (when given) read now, with the flags over it.
    fn options(&self) -> Result<DaemonOptions, String> {
        let file = match &self.config {
            Some(path) => {
                sshvisor::daemon::config::Config::load(path).map_err(|e| e.to_string())?
            }
            None => sshvisor::daemon::config::Config::default(),
        };
        let mut accept = file.accept_env.clone();
        accept.extend(self.accept_env.iter().cloned());
        let flags = self.clone();
        Ok(DaemonOptions {
            listen: self.listen.unwrap_or(file.listen),
            state_dir: self.state_dir.clone().unwrap_or(file.state_dir),
            authorized_keys: self.authorized_keys.clone().or(file.authorized_keys),
            kill_grace: self.kill_grace.unwrap_or(file.timeouts.kill_grace),
            accept_env: accept,
            sftp_server: self.sftp_server.clone().or(file.sftp_server),
            timeouts: file.timeouts,
            limits: file.limits,
            reap_orphans: true,
            containment: self.containment.unwrap_or(file.containment),
            session_path: self.session_path.clone().or(file.session_path),
            reload_from: Some(ConfigSource(Arc::new(move || flags.options()))),
            commands: Default::default(),
        })
    }
}

/// Selecting connections by user, peer and age.
#[derive(clap::Args, Debug, Default)]
struct FilterArgs {
    /// Connections of this user.
    #[arg(long)]
    user: Option<String>,
    /// Connections from this address or network (CIDR: 10.0.0.0/8).
    #[arg(long, value_parser = |s: &str| s.parse::<sshvisor_actors::PeerNet>())]
    peer: Option<sshvisor_actors::PeerNet>,
    /// Connections older than this (humantime: 10m, 1h 30m).
    #[arg(long, value_parser = humantime::parse_duration)]
    older_than: Option<Duration>,
    /// Connections with no channel data either way for longer than this (humantime).
    #[arg(long, value_parser = humantime::parse_duration)]
    idle_over: Option<Duration>,
}

impl FilterArgs {
    fn filter(&self) -> sshvisor_actors::Filter {
        sshvisor_actors::Filter {
            user: self.user.clone(),
            peer: self.peer,
            older_than: self.older_than,
            idle_over: self.idle_over,
        }
    }
}

fn main() -> ExitCode {
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
            Cmd::Serve(args) => serve(args.options().map_err(anyhow::Error::msg)?).await,
            Cmd::Ctl { state_dir, command } => run_ctl(state_dir, command).await,
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

async fn serve(options: DaemonOptions) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,russh=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match sshvisor::daemon::raise_open_files_limit() {
        Ok((before, after)) => tracing::info!(
            before,
            limit = after,
            "open files limit (RLIMIT_NOFILE): the soft limit is raised to the hard one"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit (RLIMIT_NOFILE)"),
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let daemon = Daemon::start(options).await?;
    println!("sshvisor listening on {}", daemon.ssh_addr());
    if let Some(hint) = daemon.connect_hint() {
        println!(
            "No --authorized-keys given: a client key was generated and authorized. Connect with:"
        );
        println!("  {hint}");
    }
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match daemon.reload().await {
                Ok(changes) => tracing::info!(changes = %changes, "SIGHUP: configuration reloaded"),
                Err(why) => tracing::warn!(error = %why, "SIGHUP: reload refused; the old configuration stays in force"),
            },
        }
    }
    tracing::info!("signal received: shutting down (a second signal forces)");
    let shutdown = daemon.shutdown(None);
    tokio::select! {
        reports = shutdown => {
            tracing::info!(connections = reports.len(), "all connections closed; bye");
            Ok(ExitCode::SUCCESS)
        }
        _ = term.recv() => forced_exit(),
        _ = int.recv() => forced_exit(),
    }
}

fn forced_exit() -> anyhow::Result<ExitCode> {
    tracing::warn!("second signal: exiting at once");
    Ok(ExitCode::from(130))
}

async fn run_ctl(state_dir: PathBuf, command: CtlCmd) -> anyhow::Result<ExitCode> {
    // `sshvisor ctl ls | head` should end quietly, like any Unix tool, not panic on EPIPE.
    // SAFETY: called before any other thread of ours writes to stdout; restoring the default
    // disposition of SIGPIPE has no other effect on this short-lived client.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    // A mistake in the arguments is told before anything is asked of the server.
    if let CtlCmd::Kill {
        ids, all, filter, ..
    } = &command
    {
        kill_by_filter(ids, *all, filter).map_err(anyhow::Error::msg)?;
    }
    let mut client = CtlClient::connect(&state_dir).await?;
    match command {
        CtlCmd::Ls { filter, json } => {
            let all = client.list(filter.filter()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", ctl::format_table(&all));
            }
            Ok(ExitCode::SUCCESS)
        }
        CtlCmd::Drain { grace, json } => {
            let grace = grace_text(grace);
            let value = client.request(CtlCommand::Drain { grace }).await?;
            let reports: Vec<KillReport> = serde_json::from_value(value)?;
            for report in &reports {
                if json {
                    println!("{}", serde_json::to_string(report)?);
                } else {
                    println!("{}", ctl::format_report(report));
                }
            }
            if !json {
                println!(
                    "drained: no longer accepting; {} connection(s) closed",
                    reports.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CtlCmd::Stats { json } => {
            let value = client.request(CtlCommand::Stats).await?;
            if json {
                println!("{value}");
            } else {
                print!("{}", ctl::format_stats(&value));
            }
            Ok(ExitCode::SUCCESS)
        }
        CtlCmd::Reload => {
            let value = client.request(CtlCommand::Reload).await?;
            let changes = value["changes"].as_str().unwrap_or_default();
            println!("reloaded: {changes}");
            Ok(ExitCode::SUCCESS)
        }
        CtlCmd::Watch { json } => {
            let id = client.send(CtlCommand::Watch).await?;
            loop {
                let response = client.recv().await?;
                if response.id != id {
                    continue;
                }
                let value = ctl::into_result(response)?;
                if json {
                    println!("{value}");
                } else {
                    let event: sshvisor_actors::Event = serde_json::from_value(value)?;
                    println!("{}", ctl::format_event(&event));
                }
            }
        }
        CtlCmd::Show { id, json } => {
            let value = client.request(CtlCommand::Show { target: id }).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let info: ConnectionInfo = serde_json::from_value(value)?;
                print!("{}", ctl::format_show(&info));
            }
            Ok(ExitCode::SUCCESS)
        }
        CtlCmd::Kill {
            ids,
            all,
            filter,
            dry_run,
            reason,
            grace,
            json,
        } => {
            let by_filter = kill_by_filter(&ids, all, &filter).map_err(anyhow::Error::msg)?;
            let filter = filter.filter();
            if by_filter {
                kill_where(&mut client, filter, dry_run, reason, grace, json).await
            } else if dry_run {
                kill_dry_run(&mut client, ids, json).await
            } else {
                kill(&mut client, ids, reason, grace, json).await
            }
        }
    }
}

/// Whether `ctl kill` selects by filter (`true`) or by IDs (`false`), or why its arguments are
/// wrong.
fn kill_by_filter(ids: &[String], all: bool, filter: &FilterArgs) -> Result<bool, String> {
    let by_filter = all || !filter.filter().is_empty();
    if by_filter && !ids.is_empty() {
        return Err(
            "give IDs, or filters (--all, --user, --peer, --older-than, --idle-over), not both"
                .into(),
        );
    }
    if !by_filter && ids.is_empty() {
        return Err(
            "nothing to kill: give IDs, or --all, --user, --peer, --older-than, --idle-over".into(),
        );
    }
    Ok(by_filter)
}

/// The grace as sent to the server: `None` leaves the server's own kill grace in force.
fn grace_text(grace: Option<Duration>) -> Option<String> {
    grace.map(|g| humantime::format_duration(g).to_string())
}

async fn kill_where(
    client: &mut CtlClient,
    filter: sshvisor_actors::Filter,
    dry_run: bool,
    reason: Option<String>,
    grace: Option<Duration>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let grace = grace_text(grace);
    let value = client
        .request(CtlCommand::KillWhere {
            filter,
            reason,
            grace,
            dry_run,
        })
        .await?;
    if dry_run {
        let matched: Vec<ConnectionInfo> = serde_json::from_value(value)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&matched)?);
        } else {
            print!("{}", ctl::format_table(&matched));
            println!("{} connection(s) would be killed", matched.len());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let reports: Vec<KillReport> = serde_json::from_value(value)?;
    for report in &reports {
        if json {
            println!("{}", serde_json::to_string(report)?);
        } else {
            println!("{}", ctl::format_report(report));
        }
    }
    if !json {
        println!("{} connection(s) killed", reports.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// `ctl kill ID… --dry-run`: what each ID would kill, in the shape of a filter's dry run (the
/// connections, a session's connection listing only that session); nothing is killed.
async fn kill_dry_run(
    client: &mut CtlClient,
    ids: Vec<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut matched: Vec<ConnectionInfo> = Vec::new();
    let (mut connections, mut sessions) = (0, 0);
    let mut failed = false;
    for id in ids {
        let request = CtlCommand::Kill {
            target: id.clone(),
            reason: None,
            grace: None,
            dry_run: true,
        };
        let info = match client.request(request).await {
            Ok(value) => serde_json::from_value::<ConnectionInfo>(value)?,
            Err(CtlError::Refused(error)) => {
                eprintln!("sshvisor: cannot kill {id:?}: {error}");
                failed = true;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // IDs resolve by unique prefix among connections and sessions alike: when the
        // connection's ID starts with it, the ID named the connection.
        if info.id.to_string().starts_with(id.trim()) {
            connections += 1;
        } else {
            sessions += 1;
        }
        matched.push(info);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&matched)?);
    } else {
        print!("{}", ctl::format_table(&matched));
        println!(
            "{connections} connection(s) and {sessions} session(s) would be killed (dry run: nothing was)"
        );
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn kill(
    client: &mut CtlClient,
    ids: Vec<String>,
    reason: Option<String>,
    grace: Option<Duration>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let grace = grace_text(grace);
    let print = |report: &KillReport| -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(report)?);
        } else {
            println!("{}", ctl::format_report(report));
        }
        Ok(())
    };
    // Kills go out together (a bounded window of them); each report is printed as soon as its
    // target is gone.
    const WINDOW: usize = 64;
    let mut queue = ids.into_iter();
    let mut pending = std::collections::HashMap::new();
    let mut failed = false;
    loop {
        while pending.len() < WINDOW {
            let Some(id) = queue.next() else { break };
            let request = CtlCommand::Kill {
                target: id.clone(),
                reason: reason.clone(),
                grace: grace.clone(),
                dry_run: false,
            };
            pending.insert(client.send(request).await?, id);
        }
        if pending.is_empty() {
            break;
        }
        let response = client.recv().await?;
        let Some(id) = pending.remove(&response.id) else {
            continue;
        };
        match ctl::into_result(response) {
            Ok(value) => print(&serde_json::from_value(value)?)?,
            Err(CtlError::Refused(error)) => {
                eprintln!("sshvisor: cannot kill {id:?}: {error}");
                failed = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
