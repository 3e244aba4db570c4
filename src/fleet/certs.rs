//! `sshvisor fleet certs`: a fleet's CA, one certificate per node, and the fleet cookie.
//!
//! Every node is both a TLS server (it accepts links) and a TLS client (it joins others), so a
//! node certificate carries both `serverAuth` and `clientAuth`, and its subject alternative
//! names are the node's name (a DNS name: what a joining node checks) and any addresses given.
//! Keys are ECDSA P-256, which rustls verifies with any of its crypto providers.
//!
//! Files in the directory: `ca.pem`, `ca.key`, `NODE.pem`, `NODE.key` and `cookie`; keys and the
//! cookie are written mode 0600. Nothing is overwritten without `force`. When `ca.pem` and
//! `ca.key` are already there (and `force` is not given) they are kept and the new nodes are
//! signed by that CA, so a node can be added to a running fleet.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The CA's subject. A kept CA is re-read from its key and this name (the only parts of it a
/// signature needs), so it must not change.
const CA_NAME: &str = "sshvisor fleet CA";

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// `--nodes` named no node.
    #[error("no node names given: list them with --nodes a,b,c")]
    NoNodes,
    /// A node name is not a DNS label (it goes into the certificate as a DNS name).
    #[error(
        "node name {0:?} is not a DNS label: use 1 to 63 letters, digits and '-', \
         not starting or ending with '-'"
    )]
    BadNodeName(String),
    /// The same node twice in `--nodes`.
    #[error("node {0:?} is named twice in --nodes")]
    DuplicateNode(String),
    /// An `--ip` for a node that is not in `--nodes`, or not `NODE=ADDR`.
    #[error("--ip {0:?}: {1}")]
    BadIp(String, String),
    /// `--days 0`, or so many days that the end date cannot be written.
    #[error("--days {0}: give a number of days from 1 to 36500")]
    BadDays(u32),
    /// A file to be written exists already.
    #[error("{} exists already: give --force to replace it (or another --dir)", .0.display())]
    Exists(PathBuf),
    /// Only one of `ca.pem` and `ca.key` is there, so the CA can be neither kept nor replaced.
    #[error(
        "{} is there but {} is not: give --force to make a new CA (every node then needs a new \
         certificate)",
        .present.display(), .missing.display()
    )]
    HalfCa {
        /// The CA file that exists.
        present: PathBuf,
        /// The CA file that does not.
        missing: PathBuf,
    },
    /// The kept CA's key could not be read.
    #[error("cannot use the CA key {}: {reason}", .path.display())]
    BadCaKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rcgen refused to make a key or a certificate.
    #[error("cannot make the {what}: {source}")]
    Generate {
        /// What was being made.
        what: String,
        /// rcgen's reason.
        source: rcgen::Error,
    },
    /// A file or the directory could not be written.
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The system's reason.
        source: std::io::Error,
    },
}

/// One node to certify: its name (a DNS label) and the addresses it may be reached at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The node's name: its certificate's DNS name, and the file names `NAME.pem`, `NAME.key`.
    pub name: String,
    /// Addresses put in the certificate as IP names, for joins by address.
    pub ips: Vec<IpAddr>,
}

/// What `sshvisor fleet certs` was asked for.
#[derive(Debug, Clone)]
pub struct CertsRequest {
    /// Where the files go (made if missing).
    pub dir: PathBuf,
    /// The nodes, in the order given.
    pub nodes: Vec<NodeSpec>,
    /// How long the certificates are valid, from now.
    pub days: u32,
    /// Replace files that exist (a new CA included).
    pub force: bool,
}

/// What [`make`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Every file written, in order.
    pub files: Vec<PathBuf>,
    /// Whether an existing CA was kept (and used to sign the nodes).
    pub kept_ca: bool,
    /// Whether an existing cookie was kept.
    pub kept_cookie: bool,
}

/// A validity window for certificates.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// From when.
    pub not_before: SystemTime,
    /// Until when.
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour ago (clocks of the fleet's machines differ a little) for `days` days.
    pub fn days_from_now(days: u32) -> Result<Self, CertsError> {
        if days == 0 || days > 36_500 {
            return Err(CertsError::BadDays(days));
        }
        let now = SystemTime::now();
        Ok(Self {
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        })
    }
}

/// A CA in memory: its PEM files and the issuer that signs node certificates.
pub struct Ca {
    /// `ca.pem`'s text.
    pub cert_pem: String,
    /// `ca.key`'s text.
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A node certificate and its key, in PEM.
#[derive(Debug, Clone)]
pub struct NodePem {
    /// `NODE.pem`'s text.
    pub cert_pem: String,
    /// `NODE.key`'s text.
    pub key_pem: String,
}

fn generate(what: &str) -> impl FnOnce(rcgen::Error) -> CertsError + '_ {
    move |source| CertsError::Generate {
        what: what.to_owned(),
        source,
    }
}

fn to_time(t: SystemTime) -> time::OffsetDateTime {
    // Before the epoch cannot happen on a working clock; the epoch itself is a harmless answer.
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    time::OffsetDateTime::UNIX_EPOCH
        .checked_add(time::Duration::seconds(secs))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn ca_params(validity: Validity) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = to_time(validity.not_before);
    params.not_after = to_time(validity.not_after);
    params
}

impl Ca {
    /// A new self-signed CA (CA:true, path length 0: it signs node certificates only).
    pub fn generate(validity: Validity) -> Result<Self, CertsError> {
        let key = KeyPair::generate().map_err(generate("CA key"))?;
        let params = ca_params(validity);
        let cert = params
            .self_signed(&key)
            .map_err(generate("CA certificate"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA made earlier by [`Ca::generate`], from its two files' text.
    fn from_pem(cert_pem: String, key_pem: String) -> Result<Self, rcgen::Error> {
        let key = KeyPair::from_pem(&key_pem)?;
        // Signing needs the issuer's name and key only; the dates here are not written anywhere.
        let now = SystemTime::now();
        let params = ca_params(Validity {
            not_before: now,
            not_after: now,
        });
        Ok(Self {
            cert_pem,
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// A certificate for `node`, signed by this CA, for both ends of a link.
    pub fn issue(&self, node: &NodeSpec, validity: Validity) -> Result<NodePem, CertsError> {
        let what = format!("certificate of node {}", node.name);
        let key = KeyPair::generate().map_err(generate(&what))?;
        let mut params =
            CertificateParams::new(vec![node.name.clone()]).map_err(generate(&what))?;
        params
            .subject_alt_names
            .extend(node.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params
            .distinguished_name
            .push(DnType::CommonName, node.name.as_str());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_time(validity.not_before);
        params.not_after = to_time(validity.not_after);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate(&what))?;
        Ok(NodePem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Whether `name` is a DNS label: 1 to 63 ASCII letters, digits and hyphens, no hyphen at
/// either end.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The nodes of `--nodes a,b,c` with the addresses of each `--ip NODE=ADDR`, checked: at least
/// one, each a DNS label, none twice, every `--ip` for a listed node.
pub fn parse_nodes(nodes: &str, ips: &[String]) -> Result<Vec<NodeSpec>, CertsError> {
    let mut specs: Vec<NodeSpec> = Vec::new();
    let mut seen = HashSet::new();
    for name in nodes.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !is_dns_label(name) {
            return Err(CertsError::BadNodeName(name.to_owned()));
        }
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(CertsError::DuplicateNode(name.to_owned()));
        }
        specs.push(NodeSpec {
            name: name.to_owned(),
            ips: Vec::new(),
        });
    }
    if specs.is_empty() {
        return Err(CertsError::NoNodes);
    }
    for given in ips {
        let Some((node, addr)) = given.split_once('=') else {
            return Err(CertsError::BadIp(
                given.clone(),
                "write it as NODE=ADDR, e.g. a=10.0.0.1".into(),
            ));
        };
        let ip: IpAddr = addr.trim().parse().map_err(|_| {
            CertsError::BadIp(given.clone(), format!("{addr:?} is not an IP address"))
        })?;
        let Some(spec) = specs.iter_mut().find(|s| s.name == node.trim()) else {
            return Err(CertsError::BadIp(
                given.clone(),
                format!("node {node:?} is not in --nodes"),
            ));
        };
        spec.ips.push(ip);
    }
    Ok(specs)
}

/// Makes the CA (or keeps the one in the directory), a certificate per node and the cookie, and
/// writes them. Checks every file first: on a refusal nothing has been written.
pub fn make(req: &CertsRequest) -> Result<Written, CertsError> {
    let validity = Validity::days_from_now(req.days)?;
    if req.nodes.is_empty() {
        return Err(CertsError::NoNodes);
    }
    let dir = &req.dir;
    let ca_pem = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let cookie = dir.join("cookie");
    let keep_ca = !req.force && ca_pem.exists() && ca_key.exists();
    if !req.force {
        match (ca_pem.exists(), ca_key.exists()) {
            (true, false) => {
                return Err(CertsError::HalfCa {
                    present: ca_pem,
                    missing: ca_key,
                })
            }
            (false, true) => {
                return Err(CertsError::HalfCa {
                    present: ca_key,
                    missing: ca_pem,
                })
            }
            _ => {}
        }
        for node in &req.nodes {
            for path in node_files(dir, &node.name) {
                if path.exists() {
                    return Err(CertsError::Exists(path));
                }
            }
        }
    }
    let kept_cookie = cookie.exists();

    let ca = if keep_ca {
        let read = |p: &Path| {
            fs::read_to_string(p).map_err(|e| CertsError::BadCaKey {
                path: p.to_owned(),
                reason: e.to_string(),
            })
        };
        Ca::from_pem(read(&ca_pem)?, read(&ca_key)?).map_err(|e| CertsError::BadCaKey {
            path: ca_key.clone(),
            reason: e.to_string(),
        })?
    } else {
        Ca::generate(validity)?
    };
    let issued = req
        .nodes
        .iter()
        .map(|n| ca.issue(n, validity))
        .collect::<Result<Vec<_>, _>>()?;

    fs::create_dir_all(dir).map_err(|source| CertsError::Write {
        path: dir.clone(),
        source,
    })?;
    let mut files = Vec::new();
    if !keep_ca {
        write_file(&ca_pem, ca.cert_pem.as_bytes(), 0o644)?;
        write_file(&ca_key, ca.key_pem.as_bytes(), 0o600)?;
        files.extend([ca_pem, ca_key]);
    }
    for (node, pem) in req.nodes.iter().zip(issued) {
        let [cert, key] = node_files(dir, &node.name);
        write_file(&cert, pem.cert_pem.as_bytes(), 0o644)?;
        write_file(&key, pem.key_pem.as_bytes(), 0o600)?;
        files.extend([cert, key]);
    }
    if !kept_cookie {
        write_file(&cookie, new_cookie().as_bytes(), 0o600)?;
        files.push(cookie);
    }
    Ok(Written {
        files,
        kept_ca: keep_ca,
        kept_cookie,
    })
}

/// `NODE.pem` and `NODE.key` in `dir`.
pub fn node_files(dir: &Path, node: &str) -> [PathBuf; 2] {
    [
        dir.join(format!("{node}.pem")),
        dir.join(format!("{node}.key")),
    ]
}

/// 32 random bytes in hex: the shared secret ractor_cluster's handshake checks.
fn new_cookie() -> String {
    let bytes: [u8; 32] = rand::random();
    // No newline: the file holds the cookie exactly, whatever reads it.
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `path` with `mode` set from its creation (a key is never readable by others, not even
/// for a moment), replacing a file that is there.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertsError> {
    let err = |source| CertsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    // `mode` applies to a new file only: a replaced one keeps its old bits otherwise.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::fleet::tls::{FleetTls, TlsFiles};

    fn request(dir: &Path, nodes: &str, force: bool) -> CertsRequest {
        CertsRequest {
            dir: dir.to_owned(),
            nodes: parse_nodes(nodes, &[]).unwrap(),
            days: 30,
            force,
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn loads(dir: &Path, node: &str) -> bool {
        let [cert, key] = node_files(dir, node);
        FleetTls::load(&TlsFiles {
            ca: dir.join("ca.pem"),
            cert,
            key,
        })
        .is_ok()
    }

    #[test]
    fn keys_and_the_cookie_are_readable_by_the_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let written = make(&request(dir.path(), "a,b", false)).unwrap();
        let names: Vec<_> = written
            .files
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            ["ca.pem", "ca.key", "a.pem", "a.key", "b.pem", "b.key", "cookie"]
        );
        for secret in ["ca.key", "a.key", "b.key", "cookie"] {
            assert_eq!(mode(&dir.path().join(secret)), 0o600, "{secret}");
        }
        assert_eq!(mode(&dir.path().join("ca.pem")), 0o644);
        let cookie = fs::read_to_string(dir.path().join("cookie")).unwrap();
        assert_eq!(cookie.len(), 64);
        assert!(cookie.bytes().all(|b| b.is_ascii_hexdigit()), "{cookie:?}");
    }

    #[test]
    fn nothing_is_replaced_without_force() {
        let dir = tempfile::tempdir().unwrap();
        make(&request(dir.path(), "a,b", false)).unwrap();
        let before = fs::read(dir.path().join("b.key")).unwrap();
        let err = make(&request(dir.path(), "c,b", false)).unwrap_err();
        assert!(
            err.to_string()
                .contains("b.pem exists already: give --force"),
            "{err}"
        );
        // Refused before anything was written: not even c's files.
        assert!(!dir.path().join("c.pem").exists());
        assert_eq!(fs::read(dir.path().join("b.key")).unwrap(), before);

        // With force: a new CA and new keys; a replaced key file stays 0600.
        fs::set_permissions(dir.path().join("b.key"), fs::Permissions::from_mode(0o644)).unwrap();
        let ca_before = fs::read(dir.path().join("ca.pem")).unwrap();
        let written = make(&request(dir.path(), "b", true)).unwrap();
        assert!(!written.kept_ca);
        assert_ne!(fs::read(dir.path().join("b.key")).unwrap(), before);
        assert_ne!(fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
        assert_eq!(mode(&dir.path().join("b.key")), 0o600);
        assert!(loads(dir.path(), "b"));
    }

    #[test]
    fn a_node_added_later_is_signed_by_the_kept_ca_and_keeps_the_cookie() {
        let dir = tempfile::tempdir().unwrap();
        make(&request(dir.path(), "a", false)).unwrap();
        let ca = fs::read(dir.path().join("ca.pem")).unwrap();
        let cookie = fs::read(dir.path().join("cookie")).unwrap();
        let written = make(&request(dir.path(), "d", false)).unwrap();
        assert!(written.kept_ca && written.kept_cookie);
        assert_eq!(written.files.len(), 2, "{:?}", written.files);
        assert_eq!(fs::read(dir.path().join("ca.pem")).unwrap(), ca);
        assert_eq!(fs::read(dir.path().join("cookie")).unwrap(), cookie);
        assert!(loads(dir.path(), "a") && loads(dir.path(), "d"));
    }

    #[test]
    fn half_a_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        make(&request(dir.path(), "a", false)).unwrap();
        fs::remove_file(dir.path().join("ca.key")).unwrap();
        let err = make(&request(dir.path(), "b", false)).unwrap_err();
        assert!(matches!(err, CertsError::HalfCa { .. }), "{err:?}");
    }

    #[test]
    fn node_lists_are_checked() {
        let err = |nodes: &str, ips: &[&str]| {
            let ips: Vec<String> = ips.iter().map(|s| s.to_string()).collect();
            parse_nodes(nodes, &ips).unwrap_err().to_string()
        };
        assert!(err("", &[]).contains("no node names"));
        assert!(err(" , ", &[]).contains("no node names"));
        assert!(err("a,b,a", &[]).contains("\"a\" is named twice"));
        assert!(err("a,B,b", &[]).contains("named twice"));
        for bad in ["a.b", "-a", "a-", "a_b", "é", &"x".repeat(64)] {
            assert!(err(bad, &[]).contains("is not a DNS label"), "{bad}");
        }
        assert!(err("a", &["a"]).contains("NODE=ADDR"));
        assert!(err("a", &["a=host"]).contains("is not an IP address"));
        assert!(err("a", &["b=10.0.0.1"]).contains("\"b\" is not in --nodes"));

        let nodes = parse_nodes("a, b-2", &["b-2=10.0.0.2".into(), "b-2=::1".into()]).unwrap();
        assert_eq!(nodes[0].name, "a");
        assert!(nodes[0].ips.is_empty());
        assert_eq!(nodes[1].name, "b-2");
        assert_eq!(nodes[1].ips.len(), 2);
    }

    #[test]
    fn days_must_be_sensible() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = request(dir.path(), "a", false);
        req.days = 0;
        assert!(matches!(make(&req), Err(CertsError::BadDays(0))));
        assert!(!dir.path().join("ca.pem").exists());
    }
}
