//! `sshvisor serve`: the whole server on its embedded defaults.
//!
//! The state directory (mode 0700) holds the host key (`host_ed25519`, generated once and kept),
//! the control socket (`ctl.sock`) and, when no authorized keys file is given, a generated client
//! key (`client_ed25519` + `.pub`) that is authorized, plus a `known_hosts` file so the printed
//! `ssh` command line checks the host key strictly.
//!
//! - `config`: the configuration file and its defaults.
//! - `control`: the control socket (JSON lines) and its protocol; it reaches the tree through
//!   the [`SupervisorHandle`] and the daemon through [`control::Server`], which the daemon
//!   implements (kill grace, reload, drain).
//! - `runtime`: the tokio runtime to run it on (multi-threaded, no LIFO slot).
//!
//! The configuration has one owner per fact: [`config::Config`] holds the defaults (listen
//! address, state directory, timeouts, limits), [`DaemonOptions`] is made from it (`serve`'s
//! flags over the file), and [`config::Timeouts::policy`] turns it into the tree's `Policy`, at
//! start and at every reload. The kill grace is `timeouts.kill_grace` of the options in force.

pub mod config;
pub mod control;
pub mod runtime;

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::ActorRef;
use russh::keys::PrivateKey;
use sshvisor_actors::killed_by;
use sshvisor_actors::{
    Event, HandleError, KillReport, SupervisorArgs, SupervisorHandle, SupervisorMsg,
};
use tracing::info;

use crate::audit::{Audit, AuditRecord};
use crate::daemon::config::Config;
use crate::daemon::control::{ControlServer, Server};
use crate::metrics::http::MetricsServer;
use crate::metrics::Metrics;
use crate::session::app::{DefaultSessions, ExecEnv, InProcessCommands, SftpService};
use crate::session::containment::Containment;
use crate::session::sftp::HandleBudgets;
use crate::ssh::auth::KeyAuthority;
use crate::ssh::certs::{PrincipalsFiles, UserCas};
use crate::ssh::keys::{load_or_create_key, write_public_key, AuthorizedKeys, KeyError};
use crate::ssh::penalties::Penalties;
use crate::ssh::revoked::RevokedKeys;
use crate::ssh::server::{SshListener, SshOptions};

pub use config::{DEFAULT_LISTEN, DEFAULT_STATE_DIR};

/// The control socket's file name inside the state directory.
pub const CTL_SOCKET: &str = "ctl.sock";

/// What `serve` starts with: the settings a configuration file holds, and what no file can say.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The settings: the configuration file's values (or its defaults) with `serve`'s flags
    /// over them. Their only declaration is [`Config`]; a reload replaces them.
    pub config: Config,
    /// Reap the orphans the server adopts as subreaper. Leave on unless the embedding program
    /// spawns children of its own (the reaper would take their exit status).
    pub reap_orphans: bool,
    /// Where `reload` (`sshvisor ctl reload`, SIGHUP) reads new options from; `None`: the
    /// server cannot be reloaded.
    pub reload_from: Option<ConfigSource>,
    /// Commands an embedding program serves in-process (see [`InProcessCommand`]).
    ///
    /// [`InProcessCommand`]: crate::session::app::InProcessCommand
    pub commands: InProcessCommands,
}

/// Produces the options a reload applies: for `serve`, the configuration file read anew and
/// merged with the command-line flags. `Err` is shown to the operator as is.
#[derive(Clone)]
pub struct ConfigSource(pub Arc<dyn Fn() -> Result<DaemonOptions, String> + Send + Sync>);

impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigSource")
    }
}

impl DaemonOptions {
    /// What sessions run with: `containment` is chosen at start and `sftp_handles` is the
    /// server's, both kept across reloads (the budgets' counts are of what is open now).
    fn exec_env(&self, containment: &Containment, sftp_handles: &Arc<HandleBudgets>) -> ExecEnv {
        let defaults = ExecEnv::default();
        let config = &self.config;
        ExecEnv {
            containment: containment.clone(),
            path: config.session_path.clone().unwrap_or(defaults.path.clone()),
            sftp_handles: sftp_handles.clone(),
            accept_env: config.accept_env.clone(),
            sftp: match &config.sftp_server {
                Some(path) => SftpService::External(path.clone()),
                None => SftpService::InProcess(None),
            },
            commands: self.commands.clone(),
            ..defaults
        }
    }

    fn keepalive(&self) -> (Option<Duration>, usize) {
        (
            self.config.timeouts.keepalive_interval,
            self.config.timeouts.keepalive_count as usize,
        )
    }
}

impl From<Config> for DaemonOptions {
    /// The file's settings; what no file says (the reaper, reloading, in-process commands) at
    /// its default.
    fn from(config: Config) -> Self {
        Self {
            config,
            reap_orphans: true,
            reload_from: None,
            commands: InProcessCommands::default(),
        }
    }
}

impl Default for DaemonOptions {
    /// The defaults of an empty configuration file.
    fn default() -> Self {
        Config::default().into()
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The state directory could not be created or used.
    #[error("cannot use the state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A key could not be loaded or created.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The SSH address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another server using it? pick another with --listen)")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The control socket could not be created.
    #[error("cannot create the control socket {path}: {source}")]
    Control {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// The supervisor could not be spawned.
    #[error("cannot start the supervisor: {0}")]
    Supervisor(String),
    /// The node could not join its fleet (`[fleet]`, `--fleet-*`): the reason says what to do.
    #[error("{0}")]
    Fleet(String),
    /// The metrics endpoint (`metrics_listen`) could not start.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The process containment asked for is not available here.
    #[error("cannot contain session processes: {0}")]
    Containment(String),
    /// An algorithm list cannot be used (with the host key held).
    #[error("{}: {error}", error.kind)]
    Algorithms {
        /// The list at fault and why.
        error: crate::ssh::algorithms::AlgorithmError,
    },
}

/// A running server: supervisor, SSH listener and control socket.
pub struct Daemon {
    /// What the control socket shares with the daemon: the tree, the listener, the options.
    running: Arc<Running>,
    /// The tree's event port (also in the handle), for [`Daemon::events`].
    events: Arc<ractor::OutputPort<Event>>,
    ssh_addr: SocketAddr,
    control: ControlServer,
    connect_hint: Option<String>,
    /// The metrics and their endpoint, when `metrics_listen` is set.
    metrics: Option<(Arc<Metrics>, MetricsServer)>,
    /// The task that turns the tree's events into audit records; it ends after the tree's
    /// last event ([`Event::Stopped`]).
    recorder: Option<tokio::task::JoinHandle<()>>,
}

impl Daemon {
    /// Prepares the state directory and keys, then starts everything.
    pub async fn start(options: DaemonOptions) -> Result<Self, DaemonError> {
        let dir = &options.config.state_dir;
        let dir_err = |source| DaemonError::StateDir {
            path: dir.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(dir_err)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(dir_err)?;

        let (host_key, created) =
            load_or_create_key(&dir.join("host_ed25519"), "sshvisor host key")?;
        if created {
            info!(path = %dir.join("host_ed25519").display(), "generated the host key");
        }
        let host_keys = vec![host_key.algorithm()];
        let algorithms = options
            .config
            .algorithms(&host_keys)
            .map_err(|error| DaemonError::Algorithms { error })?;
        let (authorized, client_key, generated) = match &options.config.authorized_keys {
            Some(path) => (
                key_authority(&options.config, AuthorizedKeys::read_file(path)?)?,
                None,
                None,
            ),
            None => {
                let path = dir.join("client_ed25519");
                let (key, _) = load_or_create_key(&path, "sshvisor generated client key")?;
                write_public_key(&key, &dir.join("client_ed25519.pub")).map_err(dir_err)?;
                (
                    key_authority(
                        &options.config,
                        AuthorizedKeys::from_keys([key.public_key().clone()]),
                    )?,
                    Some(path),
                    Some(key.public_key().clone()),
                )
            }
        };

        // Session processes whose parent exits come to us, not to init: none escapes the tree.
        if let Err(e) = crate::session::procs::become_subreaper() {
            tracing::warn!(error = %e, "cannot become a child subreaper: escaped processes are found by their mark only while their parent lives");
        }
        let containment = options
            .config
            .containment
            .resolve()
            .map_err(DaemonError::Containment)?;
        match &containment {
            Containment::ProcessGroup => tracing::warn!("sessions are contained by their process group only: a process that leaves it (setsid, a double fork) can outlive its session; run as root or give the server a delegated cgroup (systemd Delegate=yes)"),
            other => info!(containment = other.name(), location = ?other.location(), "session processes are contained"),
        }
        crate::session::containment::set_in_use(containment.clone());
        if options.reap_orphans {
            spawn_orphan_reaper(matches!(containment, Containment::Reaper(_)));
        }
        let audit = match &options.config.audit_log {
            Some(path) => Audit::open(path).await?,
            None => Audit::stream_only(),
        };
        let events = Arc::new(ractor::OutputPort::default());
        let tree = SupervisorHandle::spawn(
            None,
            SupervisorArgs {
                events: events.clone(),
                policy: options.config.timeouts.policy(&options.config.limits),
            },
        )
        .await
        .map_err(|e| DaemonError::Supervisor(e.to_string()))?;
        let supervisor = tree.actor().clone();
        // Subscribed before the first connection, so every event is counted.
        let metrics = match options.config.metrics_listen {
            Some(addr) => match start_metrics(&tree, &events, addr).await {
                Ok(metrics) => Some(metrics),
                Err(e) => {
                    supervisor.stop(None);
                    return Err(e.into());
                }
            },
            None => None,
        };

        let ctl_path = dir.join(CTL_SOCKET);
        let sftp_handles = Arc::new(HandleBudgets::new(options.config.limits.sftp_handles()));
        let sessions = Arc::new(DefaultSessions::new(
            options.exec_env(&containment, &sftp_handles),
        ));
        let running = Arc::new(Running {
            tree: tree.clone(),
            listener: tokio::sync::Mutex::new(None),
            reloading: tokio::sync::Mutex::new(()),
            applied: std::sync::Mutex::new(options.clone()),
            sftp_handles: sftp_handles.clone(),
            generated,
            containment: containment.clone(),
            host_keys,
            penalties: std::sync::OnceLock::new(),
            #[cfg(feature = "fleet")]
            fleet: std::sync::OnceLock::new(),
            audit: audit.clone(),
        });
        let control = match ControlServer::bind(&ctl_path, tree.clone(), running.clone()).await {
            Ok(control) => control,
            Err(source) => {
                supervisor.stop(None);
                return Err(DaemonError::Control {
                    path: ctl_path,
                    source,
                });
            }
        };
        let listener = match SshListener::bind(
            SshOptions {
                listen: options.config.listen,
                host_key: host_key.clone(),
                auth: Arc::new(authorized),
                keepalive: options.keepalive(),
                sessions,
                algorithms,
                penalties: options.config.penalties.policy(),
            },
            tree,
        )
        .await
        {
            Ok(listener) => listener,
            Err(source) => {
                control.close();
                supervisor.stop(None);
                return Err(DaemonError::Listen {
                    addr: options.config.listen,
                    source,
                });
            }
        };
        let addr = listener.local_addr();
        listener.set_audit(audit.clone());
        let recorder = match running.tree.subscribe().await {
            Ok(events) => Some(tokio::spawn(crate::audit::record_events(
                audit.clone(),
                events,
            ))),
            Err(e) => {
                tracing::warn!(error = %e, "the audit log will not hear the tree's events");
                None
            }
        };
        let _ = running.penalties.set(listener.penalties());
        if let Some((metrics, _)) = &metrics {
            metrics.watch_penalties(listener.penalties());
        }
        *running.listener.lock().await = Some(listener);
        if let Err(e) = running.join_fleet(&options.config.fleet, addr).await {
            running.close_listener().await;
            control.close();
            supervisor.stop(None);
            return Err(DaemonError::Fleet(e));
        }
        let known_hosts = dir.join("known_hosts");
        write_known_hosts(&known_hosts, addr, &host_key).map_err(dir_err)?;
        let connect_hint = client_key.map(|key| connect_command(&key, &known_hosts, addr));
        Ok(Self {
            running,
            events,
            ssh_addr: addr,
            control,
            connect_hint,
            metrics,
            recorder,
        })
    }

    /// The metrics, when `metrics_listen` is set: encode them, or register more in their
    /// registry.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref().map(|(metrics, _)| metrics)
    }

    /// The address the metrics endpoint actually bound, when `metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, server)| server.local_addr())
    }

    /// Reads the options anew from their source and applies them; see [`Server::reload`] (the
    /// same as `sshvisor ctl reload`).
    pub async fn reload(&self) -> Result<String, String> {
        self.reload_by("the embedding program").await
    }

    /// [`Daemon::reload`], audited as asked for by `by` (`SIGHUP`, ...).
    pub async fn reload_by(&self, by: &str) -> Result<String, String> {
        let result = self.running.reload().await;
        self.running.audit.record(AuditRecord::reload(by, &result));
        result
    }

    /// The audit log: [`Audit::subscribe`] streams its records.
    pub fn audit(&self) -> &Audit {
        &self.running.audit
    }

    /// The SSH address actually bound.
    pub fn ssh_addr(&self) -> SocketAddr {
        self.ssh_addr
    }

    /// The door into the tree: list, kill, drain, subscribe, ...
    pub fn handle(&self) -> &SupervisorHandle {
        &self.running.tree
    }

    /// The supervisor's actor (to link or monitor it; requests go through [`Daemon::handle`]).
    pub fn supervisor(&self) -> &ActorRef<SupervisorMsg> {
        self.running.tree.actor()
    }

    /// The SSH listener's per-source penalty table (`ctl penalties`).
    pub fn penalties(&self) -> Option<Arc<Penalties>> {
        self.running.penalties.get().cloned()
    }

    /// The lifecycle event port.
    pub fn events(&self) -> &Arc<ractor::OutputPort<Event>> {
        &self.events
    }

    /// The `ssh` command line that connects with the generated client key, when one was made.
    pub fn connect_hint(&self) -> Option<&str> {
        self.connect_hint.as_deref()
    }

    /// Stops accepting, kills every connection with `grace` (the kill grace in force when
    /// `None`), and stops everything once the tree is empty: the drain of `ctl drain`, then
    /// the end. Returns one report per connection (none if the tree did not answer).
    pub async fn shutdown(self, grace: Option<Duration>) -> Vec<KillReport> {
        let grace = grace.unwrap_or_else(|| self.running.kill_grace());
        let reports = match self
            .running
            .drain(grace, Some(killed_by::SHUTDOWN.into()))
            .await
        {
            Ok(reports) => reports,
            Err(e) => {
                tracing::warn!(error = %e, "shutdown: the drain did not finish");
                Vec::new()
            }
        };
        self.control.close();
        if let Some((_, server)) = &self.metrics {
            server.close();
        }
        #[cfg(feature = "fleet")]
        if let Some(parts) = self.running.fleet.get() {
            parts.fleet.leave();
            parts.links.close();
        }
        self.running.tree.stop(Duration::from_secs(5)).await;
        // The drain's records (its kills, the connections' ends) are made from the tree's
        // events: the process must not end before they are in the file.
        if let Some(recorder) = self.recorder {
            if tokio::time::timeout(Duration::from_secs(5), recorder)
                .await
                .is_err()
            {
                tracing::warn!("shutdown: the audit log did not hear the tree's last event");
            }
        }
        self.running.audit.flush();
        reports
    }

    /// This node's fleet, when it is in one (`[fleet]`): list, kill and watch every node.
    #[cfg(feature = "fleet")]
    pub fn fleet(&self) -> Option<&crate::fleet::Fleet> {
        self.running.fleet.get().map(|parts| &parts.fleet)
    }

    /// Where this node accepts fleet links, when it is in a fleet.
    #[cfg(feature = "fleet")]
    pub fn fleet_addr(&self) -> Option<SocketAddr> {
        self.running
            .fleet
            .get()
            .map(|parts| parts.links.local_addr())
    }
}

/// A node's place in its fleet: its view and door ([`Fleet`](crate::fleet::Fleet)) and its links.
#[cfg(feature = "fleet")]
struct FleetParts {
    fleet: crate::fleet::Fleet,
    links: crate::fleet::links::Links,
}

/// The running server as the control socket sees it (through [`Server`]) and as
/// [`Daemon`] drives it.
struct Running {
    /// The tree.
    tree: SupervisorHandle,
    /// The SSH listener; taken (and closed) by the first drain.
    listener: tokio::sync::Mutex<Option<SshListener>>,
    /// Held for the whole of a reload: one at a time, so each compares against the last.
    reloading: tokio::sync::Mutex<()>,
    /// The options in force; replaced at the end of a successful reload. Locked only briefly,
    /// never across an await (the kill grace is read from it for every kill).
    applied: std::sync::Mutex<DaemonOptions>,
    /// The public half of the generated client key, when no authorized_keys file is used.
    generated: Option<russh::keys::PublicKey>,
    /// Chosen at start; a reload keeps it (live sessions are contained by it).
    containment: Containment,
    /// This node's place in a fleet, once its links are up (`[fleet]`).
    #[cfg(feature = "fleet")]
    fleet: std::sync::OnceLock<FleetParts>,
    /// The server's sftp handle budgets; a reload changes their limits, not their counts.
    sftp_handles: Arc<HandleBudgets>,
    /// The algorithms of the host key held: which host-key algorithms a reload may name.
    host_keys: Vec<russh::keys::Algorithm>,
    /// The listener's penalty table, set once it is bound; kept after a drain closes it.
    penalties: std::sync::OnceLock<Arc<Penalties>>,
    /// The audit log (its file, if any, and its subscribers).
    audit: Audit,
}

impl Running {
    /// Joins the fleet `[fleet]` describes, if any: links first, then the agent.
    #[cfg(feature = "fleet")]
    async fn join_fleet(
        &self,
        config: &crate::daemon::config::FleetConfig,
        ssh_addr: SocketAddr,
    ) -> Result<(), String> {
        use crate::fleet::{links::Links, options, Fleet, FleetSetup};
        let Some(link_options) = options::link_options(config).await? else {
            return Ok(());
        };
        let name = link_options.name.clone();
        let links = Links::start(link_options)
            .await
            .map_err(|e| e.to_string())?;
        let setup = FleetSetup {
            fleet_addr: Some(links.local_addr().to_string()),
            ssh_addr: Some(ssh_addr.to_string()),
            ..FleetSetup::named(name)
        };
        let audit = Some(self.audit.clone());
        let fleet = match Fleet::start_audited(self.tree.clone(), setup, audit).await {
            Ok(fleet) => fleet,
            Err(e) => {
                links.close();
                return Err(e.to_string());
            }
        };
        let _ = self.fleet.set(FleetParts { fleet, links });
        Ok(())
    }

    /// Without the `fleet` feature, `[fleet]` can only be refused.
    #[cfg(not(feature = "fleet"))]
    async fn join_fleet(
        &self,
        config: &crate::daemon::config::FleetConfig,
        _ssh_addr: SocketAddr,
    ) -> Result<(), String> {
        match config.listen {
            Some(_) => {
                Err("[fleet] is set but this sshvisor was built without the `fleet` feature".into())
            }
            None => Ok(()),
        }
    }

    /// Closes the SSH listener (a start that failed after binding it).
    async fn close_listener(&self) {
        if let Some(listener) = self.listener.lock().await.take() {
            listener.stop_accepting().await;
        }
    }

    /// The options in force (a copy).
    fn applied(&self) -> DaemonOptions {
        self.applied
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Reads the options anew and applies them. Everything is read and checked before anything
    /// changes: on `Err` the old configuration stays in force, whole. New limits and timeouts
    /// apply to new connections at once, and to live ones where that makes sense (the kill
    /// grace, the idle timeouts counted from now, the session limit); limits govern admission
    /// only, so no live connection or session is dropped. The listen address and the state
    /// directory need a restart. `Ok` says what changed.
    async fn reload(&self) -> Result<String, String> {
        let _one_at_a_time = self.reloading.lock().await;
        // First, so that logrotate's SIGHUP reopens the file even when the new configuration
        // is refused.
        if let Err(e) = self.audit.reopen().await {
            tracing::warn!(error = %e, "audit log not reopened");
        }
        let applied = self.applied();
        let source = applied
            .reload_from
            .clone()
            .ok_or("this server was started without a configuration to reload")?;
        let mut new = (source.0)()?;
        // In-process commands are code, not configuration: they stay.
        new.commands = applied.commands.clone();
        let authorized = match (&new.config.authorized_keys, &self.generated) {
            (Some(path), _) => AuthorizedKeys::read_file(path).map_err(|e| e.to_string())?,
            (None, Some(key)) => AuthorizedKeys::from_keys([key.clone()]),
            (None, None) => {
                return Err("authorized_keys cannot be removed by a reload (nobody could log in); restart the server to generate a client key".into())
            }
        };
        let algorithms = new
            .config
            .algorithms(&self.host_keys)
            .map_err(|e| format!("{}: {e}", e.kind))?;
        let authorized = key_authority(&new.config, authorized).map_err(|e| e.to_string())?;
        let mut changes = changes(&applied.config, &new.config);
        let mut kept = Vec::new();
        if new.config.listen != applied.config.listen {
            kept.push(format!(
                "listen stays {} until a restart",
                applied.config.listen
            ));
        }
        if new.config.state_dir != applied.config.state_dir {
            kept.push(format!(
                "state_dir stays {} until a restart",
                applied.config.state_dir.display()
            ));
        }
        if new.config.audit_log != applied.config.audit_log {
            kept.push("audit_log stays as it was until a restart".to_string());
        }
        if new.config.fleet != applied.config.fleet {
            kept.push("[fleet] stays as it was until a restart".to_string());
        }
        if new.config.metrics_listen != applied.config.metrics_listen {
            kept.push("metrics_listen stays as it was until a restart".to_string());
        }
        new.config.metrics_listen = applied.config.metrics_listen;
        // What needs a restart stays as it is.
        new.config.listen = applied.config.listen;
        new.config.state_dir = applied.config.state_dir.clone();
        new.config.fleet = applied.config.fleet.clone();
        let (policy, sftp_limits) = (
            new.config.timeouts.policy(&new.config.limits),
            new.config.limits.sftp_handles(),
        );
        if let Err(e) = self.tree.set_policy(policy).await {
            return Err(format!("the supervisor did not take the new policy: {e}"));
        }
        let sessions = Arc::new(DefaultSessions::new(
            new.exec_env(&self.containment, &self.sftp_handles),
        ));
        if let Some(listener) = self.listener.lock().await.as_ref() {
            // Resolved against the host key above: `update` cannot refuse them.
            listener
                .update(Arc::new(authorized), sessions, new.keepalive(), &algorithms)
                .map_err(|e| format!("{}: {e}", e.kind))?;
        }
        self.sftp_handles.set_limits(sftp_limits);
        if let Some(penalties) = self.penalties.get() {
            penalties.set_policy(new.config.penalties.policy());
        }
        *self
            .applied
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = new;
        if changes.is_empty() {
            changes.push("nothing changed (authorized keys read anew)".into());
        }
        changes.extend(kept);
        Ok(changes.join("; "))
    }

    /// Stops accepting (the listener is taken, so only the first drain closes it), then
    /// empties the tree.
    async fn drain(
        &self,
        grace: Duration,
        by: Option<String>,
    ) -> Result<Vec<KillReport>, HandleError> {
        if let Some(listener) = self.listener.lock().await.take() {
            listener.stop_accepting().await;
        }
        self.tree.drain(grace, by).await
    }
}

impl Server for Running {
    fn kill_grace(&self) -> Duration {
        self.applied
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .config
            .timeouts
            .kill_grace
    }

    fn audit(&self) -> Option<&Audit> {
        Some(&self.audit)
    }

    fn reload(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(Running::reload(self))
    }

    fn penalties(&self) -> Option<Arc<Penalties>> {
        self.penalties.get().cloned()
    }

    #[cfg(feature = "fleet")]
    fn fleet(&self) -> Option<crate::fleet::Fleet> {
        self.fleet.get().map(|parts| parts.fleet.clone())
    }

    fn drain(
        &self,
        grace: Duration,
        by: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<KillReport>, HandleError>> {
        Box::pin(Running::drain(self, grace, by))
    }
}

/// Who may log in as `config` says: `keys`, plus certificates of its trusted CAs (with its
/// authorized principals), less its revoked keys. Every file is read now: one that cannot be
/// used stops the start (or the reload) with the reason.
fn key_authority(config: &Config, keys: AuthorizedKeys) -> Result<KeyAuthority, KeyError> {
    let mut authority =
        KeyAuthority::new(keys.with_user_environment(config.permit_user_environment));
    if let Some(path) = &config.trusted_user_ca_keys {
        let cas = UserCas::read_file(path)?;
        info!(path = %path.display(), cas = cas.len(), "user certificates of these CAs may log in");
        authority = authority.with_user_cas(cas);
    }
    if let Some(template) = &config.authorized_principals {
        authority = authority.with_principals(PrincipalsFiles::new(template.clone()));
    }
    if let Some(path) = &config.revoked_keys {
        let revoked = RevokedKeys::read_file(path)?;
        info!(path = %path.display(), entries = revoked.len(), "revoked keys loaded");
        authority = authority.with_revoked(revoked);
    }
    Ok(authority)
}

/// What differs between two configurations, one `name: old -> new` per setting a reload applies
/// (the listen address and the state directory are reported apart: they need a restart).
fn changes(old: &Config, new: &Config) -> Vec<String> {
    fn off(d: Option<Duration>) -> String {
        d.map_or("off".into(), |d| humantime::format_duration(d).to_string())
    }
    let mut out = Vec::new();
    let mut field = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name}: {a} -> {b}"));
        }
    };
    let (t0, t1, l0, l1) = (&old.timeouts, &new.timeouts, &old.limits, &new.limits);
    field(
        "authorized_keys",
        format!("{:?}", old.authorized_keys),
        format!("{:?}", new.authorized_keys),
    );
    for (name, a, b) in [
        (
            "trusted_user_ca_keys",
            format!("{:?}", old.trusted_user_ca_keys),
            format!("{:?}", new.trusted_user_ca_keys),
        ),
        (
            "authorized_principals",
            format!("{:?}", old.authorized_principals),
            format!("{:?}", new.authorized_principals),
        ),
        (
            "revoked_keys",
            format!("{:?}", old.revoked_keys),
            format!("{:?}", new.revoked_keys),
        ),
        (
            "permit_user_environment",
            old.permit_user_environment.to_string(),
            new.permit_user_environment.to_string(),
        ),
    ] {
        field(name, a, b);
    }
    field(
        "accept_env",
        format!("{:?}", old.accept_env),
        format!("{:?}", new.accept_env),
    );
    field(
        "sftp_server",
        format!("{:?}", old.sftp_server),
        format!("{:?}", new.sftp_server),
    );
    for kind in crate::ssh::algorithms::Kind::ALL {
        let list = |config: &Config| config.algorithm_list(kind).unwrap_or("default").to_string();
        field(kind.key(), list(old), list(new));
    }
    field(
        "timeouts.kill_grace",
        off(Some(t0.kill_grace)),
        off(Some(t1.kill_grace)),
    );
    field(
        "timeouts.login_grace",
        off(Some(t0.login_grace)),
        off(Some(t1.login_grace)),
    );
    field("timeouts.idle", off(t0.idle), off(t1.idle));
    field(
        "timeouts.idle_warning",
        off(t0.idle_warning),
        off(t1.idle_warning),
    );
    field(
        "timeouts.max_lifetime",
        off(t0.max_lifetime),
        off(t1.max_lifetime),
    );
    field(
        "timeouts.session_idle",
        off(t0.session_idle),
        off(t1.session_idle),
    );
    field(
        "timeouts.keepalive_interval",
        off(t0.keepalive_interval),
        off(t1.keepalive_interval),
    );
    field(
        "timeouts.keepalive_count",
        t0.keepalive_count.to_string(),
        t1.keepalive_count.to_string(),
    );
    for (name, a, b) in [
        ("max_connections", l0.max_connections, l1.max_connections),
        ("max_per_source", l0.max_per_source, l1.max_per_source),
        ("max_per_prefix", l0.max_per_prefix, l1.max_per_prefix),
        ("prefix_v4", l0.prefix_v4.into(), l1.prefix_v4.into()),
        ("prefix_v6", l0.prefix_v6.into(), l1.prefix_v6.into()),
        ("max_per_user", l0.max_per_user, l1.max_per_user),
        (
            "max_unauthenticated",
            l0.max_unauthenticated,
            l1.max_unauthenticated,
        ),
        (
            "max_sessions_per_connection",
            l0.max_sessions_per_connection,
            l1.max_sessions_per_connection,
        ),
        (
            "max_sftp_handles_per_session",
            l0.max_sftp_handles_per_session,
            l1.max_sftp_handles_per_session,
        ),
        (
            "max_sftp_handles_per_connection",
            l0.max_sftp_handles_per_connection,
            l1.max_sftp_handles_per_connection,
        ),
        (
            "max_sftp_handles_per_user",
            l0.max_sftp_handles_per_user,
            l1.max_sftp_handles_per_user,
        ),
    ] {
        field(&format!("limits.{name}"), a.to_string(), b.to_string());
    }
    for ((name, a), (_, b)) in old
        .penalties
        .settings()
        .into_iter()
        .zip(new.penalties.settings())
    {
        field(&format!("penalties.{name}"), a, b);
    }
    out
}

/// Raises this process's soft limit of open files (`RLIMIT_NOFILE`) to its hard limit, as
/// `serve` does at start: every connection, session pipe and open sftp handle is a descriptor,
/// and the usual soft limit (1,024) is far below what a server holds. Returns the soft limit
/// before and after.
pub fn raise_open_files_limit() -> Result<(u64, u64), nix::Error> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft, soft.max(hard)))
}

/// The metrics of `tree` and their endpoint on `addr`.
async fn start_metrics(
    tree: &SupervisorHandle,
    events: &ractor::OutputPort<Event>,
    addr: SocketAddr,
) -> Result<(Arc<Metrics>, MetricsServer), crate::metrics::MetricsError> {
    let metrics = Metrics::start(tree.clone(), events).await?;
    let server = MetricsServer::bind(addr, metrics.clone()).await?;
    info!(addr = %server.local_addr(), "serving metrics at /metrics");
    Ok((metrics, server))
}

/// Reaps adopted orphans whenever a child exits.
///
/// In place, not on the blocking pool: it reads this process's list of children and the state
/// of each (procfs, no disk), and waits for no one. On the blocking pool every session's end
/// cost a wake-up of a blocking thread and another of a worker for its answer.
///
/// `kill_live`: where each session has a reaper of its own, a live orphan reached the server
/// only because its session's reaper was killed: it is killed too.
fn spawn_orphan_reaper(kill_live: bool) {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::child()) {
        Ok(mut children) => {
            tokio::spawn(async move {
                while children.recv().await.is_some() {
                    let reaped = crate::session::procs::reap_orphans(kill_live);
                    if reaped > 0 {
                        tracing::debug!(reaped, "reaped adopted orphans");
                    }
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGCHLD: adopted orphans are reaped only when killed")
        }
    }
}

fn host_for(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        match addr {
            SocketAddr::V4(_) => "127.0.0.1".to_string(),
            SocketAddr::V6(_) => "::1".to_string(),
        }
    } else {
        addr.ip().to_string()
    }
}

fn write_known_hosts(path: &Path, addr: SocketAddr, key: &PrivateKey) -> std::io::Result<()> {
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let host = host_for(addr);
    let name = if addr.port() == 22 {
        host
    } else {
        format!("[{host}]:{}", addr.port())
    };
    fs::write(path, format!("{name} {public}\n"))
}

fn connect_command(key: &Path, known_hosts: &Path, addr: SocketAddr) -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "sshvisor".into());
    format!(
        "ssh -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -p {} {} 'echo hello from sshvisor'",
        shell_quote(&key.display().to_string()),
        shell_quote(&known_hosts.display().to_string()),
        addr.port(),
        shell_quote(&format!("{user}@{}", host_for(addr)))
    )
}

/// Quotes `text` for a POSIX shell when it needs it, so the printed line can be pasted as is.
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_spaces_and_quotes_are_quoted_for_the_shell() {
        assert_eq!(
            shell_quote(".sshvisor/client_ed25519"),
            ".sshvisor/client_ed25519"
        );
        assert_eq!(shell_quote("my dir/key"), "'my dir/key'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("::1"), "::1");
    }
}
