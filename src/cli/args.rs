//! The command line's definitions (clap): `serve` and its flags, `ctl` and its subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use sshvisor::daemon::config::{Config, DEFAULT_STATE_DIR, SERVE_HOST_KEYS};
use sshvisor::daemon::{ConfigSource, DaemonOptions};
use sshvisor::ssh::algorithms::Kind;

/// An SSH server in which every connection and session is a supervised actor.
#[derive(Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(crate) enum Cmd {
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
    /// Print a completion script for a shell (`sshvisor completions bash > /etc/bash_completion.d/sshvisor`).
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Set up a fleet of nodes: `fleet certs` makes its CA, node certificates and cookie.
    #[cfg(feature = "fleet")]
    Fleet {
        #[command(subcommand)]
        command: super::fleet::FleetCmd,
    },
}

#[derive(Subcommand)]
pub(crate) enum CtlCmd {
    /// List live connections and their sessions.
    Ls {
        #[command(flatten)]
        filter: FilterArgs,
        /// Every node of the fleet (a NODE column; a node that does not answer is named).
        #[arg(long)]
        fleet: bool,
        /// With --fleet: how long each node may take to answer (humantime).
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Withdraw the announced kill (`kill --warn`) of these connections (IDs or unique
    /// prefixes); their terminals are told.
    Cancel {
        /// Connection IDs or unique prefixes.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// The nodes of the server's fleet: name, address, up or unreachable since when, when
    /// last heard, connections and sessions.
    Nodes {
        /// Print JSON.
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
    /// List the sources with penalty time (address or network, time left, offences, last
    /// reason), or with --clear forget some: an address, a network (10.0.0.0/8) or `all`.
    Penalties {
        /// Forget the penalties of this address or network (`all`: every source).
        #[arg(long, value_name = "ADDR|NET|all")]
        clear: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stream lifecycle events as they happen (Ctrl-C to stop).
    Watch {
        /// Every node's events, each tagged with its node.
        #[arg(long)]
        fleet: bool,
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
    /// selects (--user, --peer, --older-than, --idle-over, --key-fingerprint, --cert-serial,
    /// --cert-key-id combine with AND; --all for every connection); returns once they are gone.
    /// IDs and filters do not mix.
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
        /// Filters and --all on every node of the fleet: one answer, with a report per
        /// connection and per node. (An ID is found on any node without it.)
        #[arg(long)]
        fleet: bool,
        /// In a fleet: how long each node may take to answer beyond the kill's own time
        /// (humantime).
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Tell each terminal of the connections now that they will be closed after this long
        /// (humantime: 60s, 5m), list the kill as pending, and kill then; `ctl cancel ID`
        /// withdraws it (on the node that holds it). Connections only (not sessions); with
        /// --fleet, by filter or --all on every node.
        #[arg(long, value_name = "DURATION", value_parser = sshvisor::daemon::control::notice_from_str)]
        warn: Option<Duration>,
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
pub(crate) struct ServeArgs {
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
    /// Append the audit log (one JSON object a line: logins, sessions, kills, refusals,
    /// reloads) to this file; reopened on SIGHUP and reload, for logrotate.
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,
    /// How each session's processes are kept together: auto, cgroup, reaper, process-group
    /// [default: auto: a cgroup per session where the server may make one, else a reaper].
    #[arg(long, value_parser = clap::value_parser!(sshvisor::session::containment::ContainmentChoice))]
    containment: Option<sshvisor::session::containment::ContainmentChoice>,
    /// PATH for sessions [default: /usr/local/bin:/usr/bin:/bin, plus the sbin directories
    /// for root].
    #[arg(long, value_name = "PATH")]
    session_path: Option<String>,
    /// Serve Prometheus metrics (`GET /metrics`, OpenMetrics text) on this address, e.g.
    /// 127.0.0.1:9101 [default: off]. Replaces the file's `metrics_listen`.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Key exchange algorithms, in OpenSSH's list syntax: `a,b` replaces the default, `+a`
    /// appends, `-a*` removes, `^a` puts first (docs/OPERATIONS.md). Replaces the file's
    /// `kex_algorithms`.
    #[arg(long, value_name = "LIST", allow_hyphen_values = true)]
    kex_algorithms: Option<String>,
    /// Ciphers, in the same syntax; replaces the file's `ciphers`.
    #[arg(long, value_name = "LIST", allow_hyphen_values = true)]
    ciphers: Option<String>,
    /// MACs, in the same syntax; replaces the file's `macs`.
    #[arg(long, value_name = "LIST", allow_hyphen_values = true)]
    macs: Option<String>,
    /// Host-key algorithms, in the same syntax; replaces the file's `host_key_algorithms`.
    #[arg(long, value_name = "LIST", allow_hyphen_values = true)]
    host_key_algorithms: Option<String>,
    /// Print the algorithms offered (after the configuration file and the flags) and exit,
    /// without starting anything.
    #[arg(long)]
    pub(crate) print_algorithms: bool,
    #[command(flatten)]
    fleet: FleetArgs,
}

/// `serve`'s fleet flags (docs/FLEET.md); each overrides the same key of `[fleet]`.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Fleet")]
pub(crate) struct FleetArgs {
    /// Join a fleet: accept links from other nodes on this address (HOST:PORT).
    #[arg(long, value_name = "ADDR")]
    fleet_listen: Option<SocketAddr>,
    /// Link to this node's --fleet-listen (HOST:PORT; the HOST is checked against its
    /// certificate); repeatable. Retried while it is down (every 1 to 5 s).
    #[arg(long, value_name = "HOST:PORT")]
    fleet_join: Vec<String>,
    /// The fleet's shared cookie (mode 0600; `sshvisor fleet certs` writes DIR/cookie).
    #[arg(long, value_name = "FILE")]
    fleet_cookie_file: Option<PathBuf>,
    /// This node's name in the fleet [default: the host name].
    #[arg(long, value_name = "NAME")]
    fleet_node_name: Option<String>,
    /// The fleet CA's certificate (`sshvisor fleet certs`: DIR/ca.pem).
    #[arg(long, value_name = "FILE")]
    fleet_tls_ca: Option<PathBuf>,
    /// This node's certificate (DIR/NAME.pem).
    #[arg(long, value_name = "FILE")]
    fleet_tls_cert: Option<PathBuf>,
    /// This node's key (DIR/NAME.key).
    #[arg(long, value_name = "FILE")]
    fleet_tls_key: Option<PathBuf>,
    /// Links without TLS, for a fleet on one machine: refused for any address off loopback.
    #[arg(long)]
    fleet_insecure: bool,
}

impl FleetArgs {
    /// Puts the flags given over `fleet`.
    fn apply(&self, fleet: &mut sshvisor::daemon::config::FleetConfig) {
        if let Some(addr) = self.fleet_listen {
            fleet.listen = Some(addr);
        }
        if !self.fleet_join.is_empty() {
            fleet.join = self.fleet_join.clone();
        }
        let paths = [
            (&self.fleet_cookie_file, &mut fleet.cookie_file),
            (&self.fleet_tls_ca, &mut fleet.tls_ca),
            (&self.fleet_tls_cert, &mut fleet.tls_cert),
            (&self.fleet_tls_key, &mut fleet.tls_key),
        ];
        for (flag, key) in paths {
            if let Some(path) = flag {
                *key = Some(path.clone());
            }
        }
        if let Some(name) = &self.fleet_node_name {
            fleet.node_name = Some(name.clone());
        }
        fleet.insecure |= self.fleet_insecure;
    }
}

impl ServeArgs {
    /// The configuration file (when given) read now, with the flags over it.
    pub(crate) fn options(&self) -> Result<DaemonOptions, String> {
        let file = match &self.config {
            Some(path) => Config::load(path).map_err(|e| e.to_string())?,
            None => Config::default(),
        };
        let flags = self.clone();
        let mut config = file;
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(dir) = &self.state_dir {
            config.state_dir = dir.clone();
        }
        if let Some(path) = &self.authorized_keys {
            config.authorized_keys = Some(path.clone());
        }
        if let Some(grace) = self.kill_grace {
            config.timeouts.kill_grace = grace;
        }
        config.accept_env.extend(self.accept_env.iter().cloned());
        if let Some(path) = &self.audit_log {
            config.audit_log = Some(path.clone());
        }
        if let Some(path) = &self.sftp_server {
            config.sftp_server = Some(path.clone());
        }
        if let Some(containment) = self.containment {
            config.containment = containment;
        }
        if let Some(path) = &self.session_path {
            config.session_path = Some(path.clone());
        }
        if let Some(addr) = self.metrics_listen {
            config.metrics_listen = Some(addr);
        }
        for (kind, flag) in [
            (Kind::Kex, &self.kex_algorithms),
            (Kind::Cipher, &self.ciphers),
            (Kind::Mac, &self.macs),
            (Kind::HostKey, &self.host_key_algorithms),
        ] {
            let Some(list) = flag else { continue };
            let set = match kind {
                Kind::Kex => &mut config.kex_algorithms,
                Kind::Cipher => &mut config.ciphers,
                Kind::Mac => &mut config.macs,
                Kind::HostKey => &mut config.host_key_algorithms,
            };
            *set = Some(list.clone());
            // The file's lists were checked as it was read: a flag's is checked here, so that
            // the error names the flag.
            config
                .algorithms(SERVE_HOST_KEYS)
                .map_err(|e| format!("{}: {e}", e.kind.flag()))?;
        }
        self.fleet.apply(&mut config.fleet);
        let mut options = DaemonOptions::from(config);
        options.reload_from = Some(ConfigSource(Arc::new(move || flags.options())));
        Ok(options)
    }
}

/// Selecting connections by user, peer and age.
#[derive(clap::Args, Debug, Default)]
pub(crate) struct FilterArgs {
    /// Connections of this user.
    #[arg(long)]
    user: Option<String>,
    /// Connections from this address or network (CIDR: 10.0.0.0/8).
    #[arg(long, value_parser = |s: &str| s.parse::<sshvisor::actors::PeerNet>())]
    peer: Option<sshvisor::actors::PeerNet>,
    /// Connections older than this (humantime: 10m, 1h 30m).
    #[arg(long, value_parser = humantime::parse_duration)]
    older_than: Option<Duration>,
    /// Connections with no channel data either way for longer than this (humantime).
    #[arg(long, value_parser = humantime::parse_duration)]
    idle_over: Option<Duration>,
    /// Connections that logged in with this key, alone or in a certificate (its fingerprint as
    /// `ssh-keygen -l` prints it: SHA256:...).
    #[arg(long, value_parser = parse_fingerprint)]
    key_fingerprint: Option<String>,
    /// Connections that logged in with a certificate of this serial number.
    #[arg(long)]
    cert_serial: Option<u64>,
    /// Connections that logged in with a certificate of this key ID.
    #[arg(long)]
    cert_key_id: Option<String>,
}

/// A key fingerprint as OpenSSH prints it; anything else could never match.
fn parse_fingerprint(text: &str) -> Result<String, String> {
    match text.strip_prefix("SHA256:") {
        Some(rest) if !rest.is_empty() => Ok(text.to_string()),
        _ => Err(format!(
            "{text:?} is not a SHA-256 key fingerprint: give it as `ssh-keygen -l -f KEY` prints it (SHA256:...)"
        )),
    }
}

impl FilterArgs {
    pub(crate) fn filter(&self) -> sshvisor::actors::Filter {
        sshvisor::actors::Filter {
            user: self.user.clone(),
            peer: self.peer,
            older_than: self.older_than,
            idle_over: self.idle_over,
            key_fingerprint: self.key_fingerprint.clone(),
            cert_serial: self.cert_serial,
            cert_key_id: self.cert_key_id.clone(),
        }
    }
}
