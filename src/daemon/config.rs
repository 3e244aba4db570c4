//! The configuration file of `sshvisor serve --config FILE` (TOML).
//!
//! Every field has a default and the defaults make a safe server; every duration is a humantime
//! string (`"30s"`, `"10m"`, `"1h 30m"`) or `"off"`. A bad file (unknown key, wrong type,
//! unparsable duration, negative limit) is refused with the file, the line and what was
//! expected. docs/OPERATIONS.md documents every field.
//!
//! The algorithm lists (`kex_algorithms`, `ciphers`, `macs`, `host_key_algorithms`) are checked
//! when the file is read, against what russh supports and the host key `serve` holds (one
//! ed25519 key): a list that cannot be used is refused with `file:line` (see
//! `ssh::algorithms`).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use russh::keys::Algorithm;
use serde::{Deserialize, Deserializer};
use sshvisor_actors::PeerNet;

use crate::ssh::penalties::PenaltyPolicy;

use crate::ssh::algorithms::{AlgorithmError, Algorithms, Kind};

/// The default listen address (`listen`, `serve --listen`).
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2222));

/// The default state directory (`state_dir`, `--state-dir`), relative to the working directory.
pub const DEFAULT_STATE_DIR: &str = ".sshvisor";

/// The algorithms of the host key `sshvisor serve` holds (it generates an ed25519 key): the
/// host-key algorithms a configuration may name.
pub const SERVE_HOST_KEYS: &[Algorithm] = &[Algorithm::Ed25519];

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where to listen for SSH.
    pub listen: SocketAddr,
    /// Where keys and the control socket live.
    pub state_dir: PathBuf,
    /// An OpenSSH authorized_keys file; none generates and authorizes a client key.
    pub authorized_keys: Option<PathBuf>,
    /// Whether authorized_keys `environment=` options are applied (sshd's
    /// `PermitUserEnvironment`); off: they are ignored.
    pub permit_user_environment: bool,
    /// CA public keys whose user certificates may log in (sshd's `TrustedUserCAKeys`).
    pub trusted_user_ca_keys: Option<PathBuf>,
    /// The principals each user may log in as with a certificate, one file per user (`%u`);
    /// none: the user name must be among the certificate's principals.
    pub authorized_principals: Option<String>,
    /// Keys and certificates refused: an OpenSSH KRL or a file of public keys.
    pub revoked_keys: Option<PathBuf>,
    /// Client environment variables accepted besides `LANG`, `LC_*`, `TERM`.
    pub accept_env: Vec<String>,
    /// An external sftp-server binary instead of the in-process sftp.
    pub sftp_server: Option<PathBuf>,
    /// How each session's processes are kept together: `auto`, `cgroup`, `reaper` or
    /// `process-group` (see docs/OPERATIONS.md).
    pub containment: crate::session::containment::ContainmentChoice,
    /// `PATH` for sessions; none: the system's directories, as sshd gives them.
    pub session_path: Option<String>,
    /// Where to serve Prometheus metrics (`GET /metrics`, OpenMetrics text); none: off.
    pub metrics_listen: Option<SocketAddr>,
    /// Key exchange algorithms offered, in OpenSSH's list syntax (`a,b` replaces the default,
    /// `+a` appends, `-a` removes, `^a` puts first); none: the hardened default.
    pub kex_algorithms: Option<String>,
    /// Ciphers offered (the same syntax); none: the hardened default.
    pub ciphers: Option<String>,
    /// MACs offered (the same syntax); none: the hardened default.
    pub macs: Option<String>,
    /// Host-key algorithms offered (the same syntax); none: the hardened default.
    pub host_key_algorithms: Option<String>,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Limits.
    pub limits: Limits,
    /// Per-source penalties.
    pub penalties: Penalties,
    /// Joining a fleet of nodes (off unless `listen` is set).
    pub fleet: FleetConfig,
    /// The audit log (JSON lines, see docs/OPERATIONS.md); none: no audit file.
    pub audit_log: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            state_dir: DEFAULT_STATE_DIR.into(),
            authorized_keys: None,
            permit_user_environment: false,
            trusted_user_ca_keys: None,
            authorized_principals: None,
            revoked_keys: None,
            accept_env: Vec::new(),
            sftp_server: None,
            audit_log: None,
            containment: Default::default(),
            session_path: None,
            metrics_listen: None,
            kex_algorithms: None,
            ciphers: None,
            macs: None,
            host_key_algorithms: None,
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            penalties: Penalties::default(),
            fleet: FleetConfig::default(),
        }
    }
}

/// `[fleet]`: this node's part in a fleet (docs/FLEET.md). The `serve` flags of the same names
/// (`--fleet-listen`, ...) override it; `fleet::options` checks it when the server starts.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// Where to accept links from other nodes; none: not in a fleet.
    pub listen: Option<SocketAddr>,
    /// `HOST:PORT` of other nodes to link to (their `listen`).
    pub join: Vec<String>,
    /// The file holding the fleet's shared cookie (`sshvisor fleet certs` writes one).
    pub cookie_file: Option<PathBuf>,
    /// This node's name in the fleet (unique); the host name when none.
    pub node_name: Option<String>,
    /// The fleet CA's certificate.
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate.
    pub tls_cert: Option<PathBuf>,
    /// This node's key.
    pub tls_key: Option<PathBuf>,
    /// Links without TLS: refused unless every address is on loopback.
    pub insecure: bool,
}

/// `[timeouts]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Authentication must finish within this.
    #[serde(deserialize_with = "duration")]
    pub login_grace: Duration,
    /// No channel data either way for this long ends a connection (`off` by default).
    #[serde(deserialize_with = "optional_duration")]
    pub idle: Option<Duration>,
    /// With `idle`: each terminal of the connection is told this long before the idle cut
    /// (`off` by default); traffic after the warning starts the count again.
    #[serde(deserialize_with = "optional_duration")]
    pub idle_warning: Option<Duration>,
    /// The longest a connection may live (`off` by default).
    #[serde(deserialize_with = "optional_duration")]
    pub max_lifetime: Option<Duration>,
    /// No data on a session for this long ends the session (`off` by default).
    #[serde(deserialize_with = "optional_duration")]
    pub session_idle: Option<Duration>,
    /// How often a silent client is probed.
    #[serde(deserialize_with = "optional_duration")]
    pub keepalive_interval: Option<Duration>,
    /// Unanswered probes before the connection is dropped.
    pub keepalive_count: u32,
    /// How long sessions get to end politely on a kill that names no grace, and at shutdown.
    #[serde(deserialize_with = "duration")]
    pub kill_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            login_grace: sshvisor_actors::DEFAULT_LOGIN_GRACE,
            idle: None,
            idle_warning: None,
            max_lifetime: None,
            session_idle: None,
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_count: 3,
            kill_grace: sshvisor_actors::DEFAULT_KILL_GRACE,
        }
    }
}

/// `[limits]`: the file's face of the tree's [`sshvisor_actors::Limits`] (counts as `u32`, so a
/// mistake reads "expected u32"), plus the sftp handle budgets the tree knows nothing of.
/// [`Timeouts::policy`] is the one conversion into the tree's type.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections in all.
    pub max_connections: u32,
    /// Connections from one address.
    pub max_per_source: u32,
    /// Connections from one network (`prefix_v4` / `prefix_v6` bits of the address).
    pub max_per_prefix: u32,
    /// The IPv4 prefix length `max_per_prefix` counts by.
    #[serde(deserialize_with = "prefix_v4")]
    pub prefix_v4: u8,
    /// The IPv6 prefix length `max_per_prefix` counts by.
    #[serde(deserialize_with = "prefix_v6")]
    pub prefix_v6: u8,
    /// Connections of one user (checked at authentication).
    pub max_per_user: u32,
    /// Connections not yet authenticated, at once.
    pub max_unauthenticated: u32,
    /// Sessions on one connection.
    pub max_sessions_per_connection: u32,
    /// Files and directories one in-process sftp session may hold open.
    pub max_sftp_handles_per_session: u32,
    /// Files and directories the sftp sessions of one connection may hold open.
    pub max_sftp_handles_per_connection: u32,
    /// Files and directories the sftp sessions of one login user may hold open, over all
    /// their connections.
    pub max_sftp_handles_per_user: u32,
}

impl Default for Limits {
    /// The actor tree's defaults (`sshvisor_actors::Limits::default`): one set of numbers.
    fn default() -> Self {
        let tree = sshvisor_actors::Limits::default();
        let sftp = crate::session::sftp::HandleLimits::default();
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Self {
            max_connections: n(tree.max_connections),
            max_per_source: n(tree.max_per_source),
            max_per_prefix: n(tree.max_per_prefix),
            prefix_v4: tree.prefix_v4,
            prefix_v6: tree.prefix_v6,
            max_per_user: n(tree.max_per_user),
            max_unauthenticated: n(tree.max_unauthenticated),
            max_sessions_per_connection: n(tree.max_sessions_per_connection),
            max_sftp_handles_per_session: n(sftp.per_session),
            max_sftp_handles_per_connection: n(sftp.per_connection),
            max_sftp_handles_per_user: n(sftp.per_user),
        }
    }
}

impl From<&Limits> for sshvisor_actors::Limits {
    fn from(limits: &Limits) -> Self {
        Self {
            max_connections: limits.max_connections as usize,
            max_per_source: limits.max_per_source as usize,
            max_per_prefix: limits.max_per_prefix as usize,
            prefix_v4: limits.prefix_v4,
            prefix_v6: limits.prefix_v6,
            max_per_user: limits.max_per_user as usize,
            max_unauthenticated: limits.max_unauthenticated as usize,
            max_sessions_per_connection: limits.max_sessions_per_connection as usize,
        }
    }
}

impl Limits {
    /// The budgets of open sftp handles.
    pub fn sftp_handles(&self) -> crate::session::sftp::HandleLimits {
        crate::session::sftp::HandleLimits {
            per_session: self.max_sftp_handles_per_session as usize,
            per_connection: self.max_sftp_handles_per_connection as usize,
            per_user: self.max_sftp_handles_per_user as usize,
        }
    }
}

/// `[penalties]`: the file's face of [`PenaltyPolicy`] (see `ssh::penalties` and
/// docs/OPERATIONS.md); [`Penalties::policy`] is the one conversion.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Penalties {
    /// Off: nothing is counted and nobody is refused.
    pub enabled: bool,
    /// Connections per second one source may sustain.
    #[serde(deserialize_with = "positive_rate")]
    pub rate: f64,
    /// Connections one source may open at once above the rate.
    pub burst: u32,
    /// Penalty time per connection over the rate.
    #[serde(deserialize_with = "duration")]
    pub over_rate: Duration,
    /// Penalty time per connection that ends after a refused login and no success.
    #[serde(deserialize_with = "duration")]
    pub auth_failed: Duration,
    /// Penalty time per connection refused by a limit.
    #[serde(deserialize_with = "duration")]
    pub refused_by_limit: Duration,
    /// Penalty time per connection that ends without authenticating or trying to.
    #[serde(deserialize_with = "duration")]
    pub no_auth: Duration,
    /// A penalty is enforced once the time left reaches this.
    #[serde(deserialize_with = "duration")]
    pub min: Duration,
    /// The longest a penalty runs.
    #[serde(deserialize_with = "duration")]
    pub max: Duration,
    /// IPv4 sources are counted by this many leading bits.
    #[serde(deserialize_with = "prefix_v4")]
    pub prefix_v4: u8,
    /// IPv6 sources are counted by this many leading bits.
    #[serde(deserialize_with = "prefix_v6")]
    pub prefix_v6: u8,
    /// Networks never penalized (`"10.0.0.0/8"`, `"2001:db8::/32"`, `"192.0.2.7"`).
    #[serde(deserialize_with = "networks")]
    pub exempt: Vec<PeerNet>,
    /// Sources tracked at most.
    pub max_sources: u32,
}

impl Default for Penalties {
    /// [`PenaltyPolicy::default`]: one set of numbers.
    fn default() -> Self {
        let p = PenaltyPolicy::default();
        Self {
            enabled: p.enabled,
            rate: p.rate,
            burst: p.burst,
            over_rate: p.over_rate,
            auth_failed: p.auth_failed,
            refused_by_limit: p.refused_by_limit,
            no_auth: p.no_auth,
            min: p.min,
            max: p.max,
            prefix_v4: p.prefix_v4,
            prefix_v6: p.prefix_v6,
            exempt: p.exempt,
            max_sources: u32::try_from(p.max_sources).unwrap_or(u32::MAX),
        }
    }
}

impl Penalties {
    /// The listener's policy.
    pub fn policy(&self) -> PenaltyPolicy {
        PenaltyPolicy {
            enabled: self.enabled,
            rate: self.rate,
            burst: self.burst,
            over_rate: self.over_rate,
            auth_failed: self.auth_failed,
            refused_by_limit: self.refused_by_limit,
            no_auth: self.no_auth,
            min: self.min,
            max: self.max,
            prefix_v4: self.prefix_v4,
            prefix_v6: self.prefix_v6,
            exempt: self.exempt.clone(),
            max_sources: self.max_sources as usize,
        }
    }

    /// Each setting as `name = value`, for a reload's list of changes.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let exempt: Vec<String> = self.exempt.iter().map(|n| n.to_string()).collect();
        vec![
            ("enabled", self.enabled.to_string()),
            ("rate", self.rate.to_string()),
            ("burst", self.burst.to_string()),
            ("over_rate", d(self.over_rate)),
            ("auth_failed", d(self.auth_failed)),
            ("refused_by_limit", d(self.refused_by_limit)),
            ("no_auth", d(self.no_auth)),
            ("min", d(self.min)),
            ("max", d(self.max)),
            ("prefix_v4", self.prefix_v4.to_string()),
            ("prefix_v6", self.prefix_v6.to_string()),
            ("exempt", format!("{exempt:?}")),
            ("max_sources", self.max_sources.to_string()),
        ]
    }
}

fn positive_rate<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let rate = f64::deserialize(d)?;
    if rate.is_finite() && rate > 0.0 {
        Ok(rate)
    } else {
        Err(serde::de::Error::custom(format!(
            "expected a rate in connections per second above 0 (e.g. 5 or 0.5), got {rate}"
        )))
    }
}

fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PeerNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|text| text.parse::<PeerNet>())
        .collect::<Result<_, _>>()
        .map_err(serde::de::Error::custom)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("expected a duration such as \"30s\", \"10m\" or \"1h 30m\", got {text:?} ({e})")
    })
}

fn prefix_length<'de, D: Deserializer<'de>>(d: D, max: u8) -> Result<u8, D::Error> {
    let bits = i64::deserialize(d)?;
    u8::try_from(bits)
        .ok()
        .filter(|b| *b <= max)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "expected a prefix length from 0 to {max}, got {bits}"
            ))
        })
}

fn prefix_v4<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    prefix_length(d, 32)
}

fn prefix_v6<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    prefix_length(d, 128)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim() == "off" {
        return Ok(None);
    }
    parse_duration(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("{e}, or \"off\"")))
}

/// Where the algorithm lists are in a file, to name the line of a bad one.
#[derive(Deserialize)]
struct AlgorithmSpans {
    kex_algorithms: Option<toml::Spanned<String>>,
    ciphers: Option<toml::Spanned<String>>,
    macs: Option<toml::Spanned<String>>,
    host_key_algorithms: Option<toml::Spanned<String>>,
}

impl AlgorithmSpans {
    fn get(&self, kind: Kind) -> Option<&toml::Spanned<String>> {
        match kind {
            Kind::Kex => self.kex_algorithms.as_ref(),
            Kind::Cipher => self.ciphers.as_ref(),
            Kind::Mac => self.macs.as_ref(),
            Kind::HostKey => self.host_key_algorithms.as_ref(),
        }
    }
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A value at a known line cannot be used.
    #[error("{path}:{line}: {message}")]
    AtLine {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// The key and what is wrong with its value.
        message: String,
    },
    /// The file is not a valid configuration.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where and what (toml's message names the line and column).
        message: String,
    },
}

impl Timeouts {
    /// The actor tree's policy for these timeouts and `limits`: the one conversion of the
    /// configuration into the tree's terms, at start and at every reload.
    pub fn policy(&self, limits: &Limits) -> sshvisor_actors::Policy {
        sshvisor_actors::Policy {
            kill_grace: self.kill_grace,
            login_grace: Some(self.login_grace),
            max_lifetime: self.max_lifetime,
            idle: self.idle,
            idle_warning: self.idle_warning,
            session_idle: self.session_idle,
            limits: limits.into(),
        }
    }
}

impl Config {
    /// Parses a configuration text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |e: toml::de::Error| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        };
        let config: Self = toml::from_str(text).map_err(invalid)?;
        if let Err(e) = config.algorithms(SERVE_HOST_KEYS) {
            // Read again for where the list is: the error names its line.
            let spans: AlgorithmSpans = toml::from_str(text).map_err(invalid)?;
            let line = spans
                .get(e.kind)
                .and_then(|span| text.get(..span.span().start))
                .map(|before| before.matches('\n').count() + 1)
                .unwrap_or(1);
            return Err(ConfigError::AtLine {
                path: path.to_path_buf(),
                line,
                message: format!("{}: {e}", e.kind),
            });
        }
        Ok(config)
    }

    /// The algorithms these settings offer, for a server holding host keys of the algorithms
    /// `held` (`serve`'s: [`SERVE_HOST_KEYS`]); the error names the list at fault.
    pub fn algorithms(&self, held: &[Algorithm]) -> Result<Algorithms, AlgorithmError> {
        let mut algorithms = Algorithms::default();
        for kind in Kind::ALL {
            if let Some(spec) = self.algorithm_list(kind) {
                algorithms = algorithms.with(kind, spec, held)?;
            }
        }
        Ok(algorithms)
    }

    /// The `kind` list as written, if set.
    pub fn algorithm_list(&self, kind: Kind) -> Option<&str> {
        match kind {
            Kind::Kex => self.kex_algorithms.as_deref(),
            Kind::Cipher => self.ciphers.as_deref(),
            Kind::Mac => self.macs.as_deref(),
            Kind::HostKey => self.host_key_algorithms.as_deref(),
        }
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("test.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_documented_example_parses_and_an_empty_file_gives_the_defaults() {
        let text = r#"
listen = "127.0.0.1:2222"
state_dir = ".sshvisor"
authorized_keys = "path/to/authorized_keys"
[timeouts]
login_grace = "30s"
idle = "off"
max_lifetime = "1h 30m"
session_idle = "off"
keepalive_interval = "15s"
keepalive_count = 3
kill_grace = "5s"
[limits]
max_connections = 10000
max_per_source = 100
max_per_prefix = 1000
prefix_v4 = 24
prefix_v6 = 64
max_per_user = 50
max_unauthenticated = 100
max_sessions_per_connection = 10
max_sftp_handles_per_session = 256
max_sftp_handles_per_connection = 1024
max_sftp_handles_per_user = 4096
[penalties]
enabled = true
rate = 5
burst = 10
over_rate = "10s"
auth_failed = "5s"
refused_by_limit = "10s"
no_auth = "1s"
min = "15s"
max = "10m"
prefix_v4 = 32
prefix_v6 = 64
exempt = []
max_sources = 65536
"#;
        let c = parse(text).unwrap();
        assert_eq!(
            c.limits,
            Limits::default(),
            "the example shows the defaults"
        );
        assert_eq!(c.penalties, Penalties::default(), "and of the penalties");
        assert_eq!(c.timeouts.max_lifetime, Some(Duration::from_secs(5400)));
        assert_eq!(c.timeouts.idle, None);
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn each_kind_of_mistake_names_the_file_the_line_and_what_was_expected() {
        let e = parse("listen = \"127.0.0.1:2222\"\nlisten_address = \"x\"\n").unwrap_err();
        assert!(
            e.contains("test.toml") && e.contains("line 2") && e.contains("unknown field"),
            "{e}"
        );
        let e = parse("[limits]\nmax_connections = \"many\"\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("u32"), "{e}");
        let e = parse("[timeouts]\n\nlogin_grace = \"soon\"\n").unwrap_err();
        assert!(
            e.contains("line 3") && e.contains("expected a duration"),
            "{e}"
        );
        let e = parse("[limits]\nmax_per_user = -1\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("-1"), "{e}");
        let e = parse("[timeouts]\nidle = \"sometimes\"\n").unwrap_err();
        assert!(
            e.contains("or \\\"off\\\"") || e.contains("or \"off\""),
            "{e}"
        );
        let e = parse("[limits]\nprefix_v4 = 33\n").unwrap_err();
        assert!(
            e.contains("line 2") && e.contains("from 0 to 32, got 33"),
            "{e}"
        );
        let e = parse("[limits]\nprefix_v6 = -8\n").unwrap_err();
        assert!(e.contains("from 0 to 128, got -8"), "{e}");
        let e = parse("[penalties]\nexempt = [\"10.0.0.0/33\"]\n").unwrap_err();
        assert!(
            e.contains("line 2") && e.contains("prefix length must be 0 to 32"),
            "{e}"
        );
        let e = parse("[penalties]\nrate = 0\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("above 0"), "{e}");
        let p = parse("[penalties]\nexempt = [\"10.0.0.0/8\", \"::1\"]\nrate = 0.5\n").unwrap();
        assert_eq!(p.penalties.exempt.len(), 2);
        assert_eq!(p.penalties.policy().rate, 0.5);
        let e = parse("listen = [1, 2\n").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn an_algorithm_list_that_cannot_be_used_is_refused_with_the_file_and_its_line() {
        let e = parse("listen = \"127.0.0.1:2222\"\n\nciphers = \"+aes256-ctr,blowfish-cbc\"\n")
            .unwrap_err();
        assert!(
            e.starts_with("test.toml:3: ciphers: \"blowfish-cbc\" is not a cipher")
                && e.contains("supported: chacha20-poly1305@openssh.com,"),
            "{e}"
        );
        let e = parse("kex_algorithms = \"-*\"\n").unwrap_err();
        assert!(
            e.starts_with("test.toml:1: kex_algorithms:") && e.contains("leaves no"),
            "{e}"
        );
        let e = parse(
            "macs = \"hmac-sha2-256-etm@openssh.com\"\nhost_key_algorithms = \"rsa-sha2-512\"\n",
        )
        .unwrap_err();
        assert!(e.starts_with("test.toml:2: host_key_algorithms:"), "{e}");
        let e = parse("kex_algorithms = \"none\"\n").unwrap_err();
        assert!(e.contains("\"none\" is refused"), "{e}");
        let c =
            parse("kex_algorithms = \"^curve25519-sha256\"\nmacs = \"-hmac-sha2-512*\"\n").unwrap();
        let a = c.algorithms(SERVE_HOST_KEYS).unwrap();
        assert_eq!(a.names(Kind::Kex)[0], "curve25519-sha256");
        assert_eq!(a.names(Kind::Mac), ["hmac-sha2-256-etm@openssh.com"]);
    }

    #[test]
    fn the_fleet_table_parses_and_a_typo_is_refused() {
        let c = parse(
            "[fleet]\nlisten = \"0.0.0.0:7070\"\njoin = [\"a:7070\", \"b:7070\"]\nnode_name = \"c\"\ncookie_file = \"fleet/cookie\"\ntls_ca = \"fleet/ca.pem\"\ntls_cert = \"fleet/c.pem\"\ntls_key = \"fleet/c.key\"\n",
        )
        .unwrap();
        assert_eq!(c.fleet.listen, Some("0.0.0.0:7070".parse().unwrap()));
        assert_eq!(c.fleet.join, ["a:7070", "b:7070"]);
        assert_eq!(c.fleet.node_name.as_deref(), Some("c"));
        assert_eq!(c.fleet.tls_key, Some(PathBuf::from("fleet/c.key")));
        assert!(!c.fleet.insecure);
        assert_eq!(parse("").unwrap().fleet, FleetConfig::default());
        let e = parse("[fleet]\njoins = [\"a:7070\"]\n").unwrap_err();
        assert!(e.contains("joins"), "{e}");
    }
}
