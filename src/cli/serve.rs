//! `sshvisor serve`: logging, the open files limit, the daemon, and its signals (SIGHUP
//! reloads; SIGINT or SIGTERM drains and exits; a second one exits at once). And
//! `serve --print-algorithms`, which prints what would be offered and starts nothing.

use std::process::ExitCode;

use tokio::signal::unix::{signal, SignalKind};

use sshvisor::daemon::config::SERVE_HOST_KEYS;
use sshvisor::daemon::{Daemon, DaemonOptions};
use sshvisor::ssh::algorithms::{Kind, COMPRESSION};

/// `serve --print-algorithms`: the lists offered with these options (the configuration file
/// and the flags applied), one section per kind, most preferred first.
pub(crate) fn print_algorithms(options: &DaemonOptions) -> anyhow::Result<ExitCode> {
    let algorithms = options
        .config
        .algorithms(SERVE_HOST_KEYS)
        .map_err(|e| anyhow::anyhow!("{}: {e}", e.kind))?;
    let mut out = String::new();
    for kind in Kind::ALL {
        let names = match kind {
            Kind::HostKey => algorithms.offered_host_keys(SERVE_HOST_KEYS),
            _ => algorithms.names(kind).to_vec(),
        };
        out.push_str(&format!("{}:\n", kind.key()));
        for name in names {
            out.push_str(&format!("  {name}\n"));
        }
    }
    out.push_str("compression:\n");
    for name in COMPRESSION {
        out.push_str(&format!("  {name}\n"));
    }
    out.push_str(
        "(also in the key exchange list, always: ext-info-s, kex-strict-s-v00@openssh.com; \
         zlib@openssh.com starts after authentication)\n",
    );
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// Whether the log may carry color codes: only to a terminal, and never when `NO_COLOR` is set
/// to anything but the empty string (no-color.org). A log redirected to a file or read by
/// journald gets plain text.
fn log_colors() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// Tells the service manager (systemd `Type=notify`) of a state change; nothing without
/// `NOTIFY_SOCKET`. A failure is logged and changes nothing else: the server runs as well
/// unsupervised. The variable stays set in this process, but sessions never see it (their
/// environment is built from scratch).
fn notify(state: sd_notify::NotifyState<'_>, what: &str) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "cannot tell the service manager (NOTIFY_SOCKET) {what}");
    }
}

pub(crate) async fn serve(options: DaemonOptions) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,russh=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(log_colors())
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
    if let Some(addr) = daemon.metrics_addr() {
        println!("metrics on http://{addr}/metrics");
    }
    #[cfg(feature = "fleet")]
    if let (Some(fleet), Some(addr)) = (daemon.fleet(), daemon.fleet_addr()) {
        println!("fleet node {} listening for links on {addr}", fleet.name());
    }
    if let Some(hint) = daemon.connect_hint() {
        println!(
            "No --authorized-keys given: a client key was generated and authorized. Connect with:"
        );
        println!("  {hint}");
    }
    // The SSH listener and the control socket are up: `systemctl start` may return.
    notify(sd_notify::NotifyState::Ready, "that the server is ready");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match daemon.reload_by("SIGHUP").await {
                Ok(changes) => tracing::info!(changes = %changes, "SIGHUP: configuration reloaded"),
                Err(why) => tracing::warn!(error = %why, "SIGHUP: reload refused; the old configuration stays in force"),
            },
        }
    }
    tracing::info!("signal received: shutting down (a second signal forces)");
    notify(
        sd_notify::NotifyState::Stopping,
        "that the server is stopping",
    );
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
