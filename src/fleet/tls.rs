//! The TLS of fleet links: `--fleet-tls-ca`, `--fleet-tls-cert`, `--fleet-tls-key` loaded into
//! a mutual-TLS acceptor and connector (what ractor_cluster's `IncomingEncryptionMode::Tls` and
//! `client::connect_enc` take).
//!
//! Both ends verify the other against the fleet CA, and only it: the acceptor refuses a node
//! that presents no certificate or one the CA did not sign; the connector checks the node it
//! joins by name against the same CA and presents its own certificate. TLS 1.3 only (every end
//! is an sshvisor). The crypto provider is aws-lc-rs, named explicitly, the one russh already
//! brings (no process-wide default to install, and no second backend in the build).
//!
//! Loading checks what would otherwise surface as a refused link on another machine: each file
//! readable and PEM, the key belonging to the certificate, the certificate signed by the CA and
//! within its dates. Each error names the file and what to do.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Why the fleet's TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read the fleet {what} {}: {source}", .path.display())]
    Read {
        /// Which file ("CA certificate", "node certificate", "node key").
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The system's reason.
        source: std::io::Error,
    },
    /// A certificate file has no PEM `CERTIFICATE` block.
    #[error(
        "the fleet {what} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----): \
         give the .pem made by `sshvisor fleet certs`",
        .path.display()
    )]
    NoCertificate {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
    /// The key file has no PEM private key.
    #[error(
        "the fleet node key {} holds no PEM private key (-----BEGIN PRIVATE KEY-----): \
         give the NODE.key made by `sshvisor fleet certs`",
        .path.display()
    )]
    NoKey {
        /// Its path.
        path: PathBuf,
    },
    /// The CA file cannot be a trust anchor, or the key is of a kind rustls cannot sign with.
    #[error("the fleet {what} {} cannot be used: {reason}", .path.display())]
    Unusable {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// rustls's reason.
        reason: String,
    },
    /// The key is not the certificate's.
    #[error(
        "the fleet node key {} does not belong to the certificate {}: give the NODE.key made \
         together with NODE.pem",
        .key.display(), .cert.display()
    )]
    KeyMismatch {
        /// The certificate.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
    },
    /// The node certificate does not chain to the CA.
    #[error(
        "the fleet node certificate {} is not signed by the CA {}: give the CA the fleet's \
         certificates were made with, or make new ones with `sshvisor fleet certs`",
        .cert.display(), .ca.display()
    )]
    NotSignedByCa {
        /// The node certificate.
        cert: PathBuf,
        /// The CA certificate.
        ca: PathBuf,
    },
    /// The node certificate is past its end date (or before its start).
    #[error(
        "the fleet node certificate {} is {state}: make a new one with `sshvisor fleet certs \
         --dir DIR --nodes NODE` (the CA is kept)",
        .cert.display()
    )]
    OutOfDate {
        /// The node certificate.
        cert: PathBuf,
        /// "expired" or "not valid yet".
        state: &'static str,
    },
    /// The CA refused the node certificate for another reason.
    #[error("the fleet node certificate {} is refused: {reason}", .cert.display())]
    Refused {
        /// The node certificate.
        cert: PathBuf,
        /// rustls's reason.
        reason: String,
    },
    /// rustls refused to build a configuration (not expected once the checks above pass).
    #[error("cannot set up the fleet's TLS: {0}")]
    Config(String),
    /// A name to join is neither a DNS name nor an IP address.
    #[error("{0:?} cannot be checked against a node certificate: give the node's name or address")]
    ServerName(String),
}

/// The three files of `--fleet-tls-ca`, `--fleet-tls-cert`, `--fleet-tls-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The fleet CA's certificate (`ca.pem`).
    pub ca: PathBuf,
    /// This node's certificate (`NODE.pem`).
    pub cert: PathBuf,
    /// This node's key (`NODE.key`).
    pub key: PathBuf,
}

/// A node's mutual TLS: the acceptor for links it accepts, the connector for links it opens.
#[derive(Clone)]
pub struct FleetTls {
    /// Requires a client certificate signed by the fleet CA.
    pub acceptor: TlsAcceptor,
    /// Checks the joined node against the fleet CA and presents this node's certificate.
    pub connector: TlsConnector,
}

impl std::fmt::Debug for FleetTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetTls").finish_non_exhaustive()
    }
}

impl FleetTls {
    /// Loads and checks the three files (see the module's documentation).
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let ca = read_certs("CA certificate", &files.ca)?;
        let chain = read_certs("node certificate", &files.cert)?;
        let key = read_key(&files.key)?;

        let mut roots = RootCertStore::empty();
        for cert in ca {
            roots.add(cert).map_err(|e| TlsError::Unusable {
                what: "CA certificate",
                path: files.ca.clone(),
                reason: e.to_string(),
            })?;
        }
        let roots = Arc::new(roots);

        check_key_matches(&provider, &chain, &key, files)?;
        // The node's own certificate, checked as its peers will check it.
        let verifier = client_verifier(&roots, &provider).map_err(|reason| TlsError::Unusable {
            what: "CA certificate",
            path: files.ca.clone(),
            reason,
        })?;
        let (end_entity, intermediates) = chain.split_first().ok_or(TlsError::NoCertificate {
            what: "node certificate",
            path: files.cert.clone(),
        })?;
        verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map_err(|e| refusal(e, files))?;
        Self::build(provider, roots, chain, key).map_err(TlsError::Config)
    }

    /// The acceptor and connector, from checked parts.
    fn build(
        provider: Arc<CryptoProvider>,
        roots: Arc<RootCertStore>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, String> {
        let config = |e: rustls::Error| e.to_string();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config)?
            .with_client_cert_verifier(client_verifier(&roots, &provider)?)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config)?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(config)?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }
}

/// Requires a client certificate (no anonymous clients) chaining to `roots`.
fn client_verifier(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| e.to_string())
}

/// The name a joining node checks the joined node's certificate against: `host` of
/// `--fleet-join HOST:PORT`, a node name (its certificate's DNS name) or an address given with
/// `fleet certs --ip`.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .map_err(|_| TlsError::ServerName(host.to_owned()))
}

/// Says why a fleet link's TLS handshake failed, for both logs: the unknown CA that every
/// misconfiguration comes down to is named as such.
pub fn explain_handshake_error(e: &std::io::Error) -> String {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => "the other node's certificate is not signed by this fleet's CA (--fleet-tls-ca)"
            .to_owned(),
        Some(rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => "the other node's certificate has expired".to_owned(),
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => "the other node's certificate is not for the name or address joined".to_owned(),
        Some(rustls::Error::NoCertificatesPresented) => {
            "the other node presented no certificate (is it set up with --fleet-tls-cert?)"
                .to_owned()
        }
        Some(rustls::Error::AlertReceived(alert)) => format!(
            "the other node refused this node's certificate ({alert:?}): are both made by \
             the same `sshvisor fleet certs` CA?"
        ),
        _ => format!("TLS handshake failed: {e}"),
    }
}

fn refusal(e: rustls::Error, files: &TlsFiles) -> TlsError {
    match e {
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => TlsError::NotSignedByCa {
            cert: files.cert.clone(),
            ca: files.ca.clone(),
        },
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => TlsError::OutOfDate {
            cert: files.cert.clone(),
            state: "expired",
        },
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => TlsError::OutOfDate {
            cert: files.cert.clone(),
            state: "not valid yet",
        },
        other => TlsError::Refused {
            cert: files.cert.clone(),
            reason: other.to_string(),
        },
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(what, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read("node key", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| TlsError::NoKey {
        path: path.to_owned(),
    })
}

fn check_key_matches(
    provider: &CryptoProvider,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    files: &TlsFiles,
) -> Result<(), TlsError> {
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsError::Unusable {
            what: "node key",
            path: files.key.clone(),
            reason: e.to_string(),
        })?;
    rustls::sign::CertifiedKey::new(chain.to_vec(), signing)
        .keys_match()
        .map_err(|_| TlsError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, SystemTime};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::fleet::certs::{self, Ca, CertsRequest, NodeSpec, Validity};

    const DEADLINE: Duration = Duration::from_secs(20);

    fn node(name: &str) -> NodeSpec {
        NodeSpec {
            name: name.to_owned(),
            ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        }
    }

    /// A fleet made the way `sshvisor fleet certs` makes it.
    fn fleet(dir: &Path, nodes: &[&str]) -> Vec<TlsFiles> {
        certs::make(&CertsRequest {
            dir: dir.to_owned(),
            nodes: nodes.iter().map(|n| node(n)).collect(),
            days: 1,
            force: false,
        })
        .unwrap();
        nodes.iter().map(|n| files(dir, dir, n)).collect()
    }

    fn files(ca_dir: &Path, node_dir: &Path, name: &str) -> TlsFiles {
        let [cert, key] = certs::node_files(node_dir, name);
        TlsFiles {
            ca: ca_dir.join("ca.pem"),
            cert,
            key,
        }
    }

    /// Server `server` accepts one link on loopback; client `client` opens it to `name`, writes
    /// "ping" and reads "pong". Returns both ends' results, errors as the handshake gave them.
    async fn link(
        server: &FleetTls,
        client: &FleetTls,
        name: &str,
    ) -> (Result<(), std::io::Error>, Result<(), std::io::Error>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = server.acceptor.clone();
        let server_side = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"ping");
            tls.write_all(b"pong").await?;
            tls.shutdown().await
        });
        let connector = client.connector.clone();
        let name = server_name(name).unwrap();
        let client_side = async move {
            let tcp = TcpStream::connect(addr).await?;
            let mut tls = connector.connect(name, tcp).await?;
            tls.write_all(b"ping").await?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"pong");
            Ok(())
        };
        let client_result = tokio::time::timeout(DEADLINE, client_side)
            .await
            .expect("client side ended");
        let server_result = tokio::time::timeout(DEADLINE, server_side)
            .await
            .expect("server side ended")
            .unwrap();
        (server_result, client_result)
    }

    #[test]
    fn certificates_made_by_fleet_certs_load() {
        let dir = tempfile::tempdir().unwrap();
        for files in fleet(dir.path(), &["a", "b", "c"]) {
            FleetTls::load(&files).unwrap();
        }
    }

    #[tokio::test]
    async fn two_nodes_of_one_fleet_link_with_mutual_tls_by_name_and_by_address() {
        let dir = tempfile::tempdir().unwrap();
        let files = fleet(dir.path(), &["a", "b"]);
        let a = FleetTls::load(&files[0]).unwrap();
        let b = FleetTls::load(&files[1]).unwrap();
        for name in ["a", "127.0.0.1"] {
            let (server, client) = link(&a, &b, name).await;
            server.unwrap();
            client.unwrap();
        }
    }

    #[tokio::test]
    async fn the_joined_node_must_have_the_name_joined() {
        let dir = tempfile::tempdir().unwrap();
        let files = fleet(dir.path(), &["a", "b"]);
        let a = FleetTls::load(&files[0]).unwrap();
        let b = FleetTls::load(&files[1]).unwrap();
        let (_, client) = link(&a, &b, "b").await;
        let err = client.unwrap_err();
        assert!(
            explain_handshake_error(&err).contains("not for the name or address joined"),
            "{err}"
        );
    }

    /// A node that trusts the CA of `ca_dir` but holds a certificate of another CA (which
    /// `FleetTls::load` itself refuses): what a peer sees of a node of another fleet.
    fn impostor(ca_dir: &Path, node_dir: &Path, name: &str) -> FleetTls {
        let f = files(ca_dir, node_dir, name);
        let mut roots = RootCertStore::empty();
        for cert in read_certs("CA certificate", &f.ca).unwrap() {
            roots.add(cert).unwrap();
        }
        FleetTls::build(
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            Arc::new(roots),
            read_certs("node certificate", &f.cert).unwrap(),
            read_key(&f.key).unwrap(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_node_of_another_ca_is_refused_by_the_server_and_by_the_client() {
        let ours = tempfile::tempdir().unwrap();
        let theirs = tempfile::tempdir().unwrap();
        let a = FleetTls::load(&fleet(ours.path(), &["a"])[0]).unwrap();
        fleet(theirs.path(), &["x"]);
        let x = impostor(ours.path(), theirs.path(), "x");

        // x joins a: a's acceptor refuses x's certificate (x may see the alert only when it
        // reads, TLS 1.3 finishing the client's side of the handshake first).
        let (server, client) = link(&a, &x, "a").await;
        let server = server.unwrap_err();
        assert!(
            explain_handshake_error(&server).contains("not signed by this fleet's CA"),
            "{server}"
        );
        assert!(client.is_err(), "the refused client could talk");

        // a joins x: a's connector refuses x's certificate.
        let (server, client) = link(&x, &a, "x").await;
        let client = client.unwrap_err();
        assert!(
            explain_handshake_error(&client).contains("not signed by this fleet's CA"),
            "{client}"
        );
        assert!(server.is_err(), "the refused server could talk");
    }

    #[tokio::test]
    async fn a_client_without_a_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = fleet(dir.path(), &["a"]);
        let a = FleetTls::load(&files[0]).unwrap();
        let mut roots = RootCertStore::empty();
        for cert in read_certs("CA certificate", &files[0].ca).unwrap() {
            roots.add(cert).unwrap();
        }
        let anonymous = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let anonymous = FleetTls {
            acceptor: a.acceptor.clone(),
            connector: TlsConnector::from(Arc::new(anonymous)),
        };
        let (server, client) = link(&a, &anonymous, "a").await;
        let server = server.unwrap_err();
        assert!(
            explain_handshake_error(&server).contains("presented no certificate"),
            "{server}"
        );
        assert!(client.is_err(), "the anonymous client could talk");
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        fleet(dir.path(), &["a", "b"]);
        let mut crossed = files(dir.path(), dir.path(), "a");
        crossed.key = dir.path().join("b.key");
        let err = FleetTls::load(&crossed).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("b.key") && text.contains("a.pem"), "{text}");
        assert!(
            text.contains("does not belong to the certificate"),
            "{text}"
        );
    }

    #[test]
    fn a_node_certificate_of_another_ca_is_refused_at_load() {
        let ours = tempfile::tempdir().unwrap();
        let theirs = tempfile::tempdir().unwrap();
        fleet(ours.path(), &["a"]);
        fleet(theirs.path(), &["x"]);
        let err = FleetTls::load(&files(ours.path(), theirs.path(), "x")).unwrap_err();
        assert!(matches!(err, TlsError::NotSignedByCa { .. }), "{err:?}");
        assert!(err.to_string().contains("is not signed by the CA"), "{err}");
    }

    #[test]
    fn an_expired_node_certificate_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let ca = Ca::generate(Validity::days_from_now(1).unwrap()).unwrap();
        let old = ca
            .issue(
                &node("a"),
                Validity {
                    not_before: now - Duration::from_secs(3 * 86_400),
                    not_after: now - Duration::from_secs(86_400),
                },
            )
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        std::fs::write(dir.path().join("a.pem"), &old.cert_pem).unwrap();
        std::fs::write(dir.path().join("a.key"), &old.key_pem).unwrap();
        let err = FleetTls::load(&files(dir.path(), dir.path(), "a")).unwrap_err();
        assert!(err.to_string().contains("is expired"), "{err}");
    }

    #[test]
    fn missing_and_non_pem_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        fleet(dir.path(), &["a"]);
        let mut f = files(dir.path(), dir.path(), "a");
        f.ca = dir.path().join("nope.pem");
        let err = FleetTls::load(&f).unwrap_err().to_string();
        assert!(
            err.contains("CA certificate") && err.contains("nope.pem"),
            "{err}"
        );

        let f = TlsFiles {
            ca: dir.path().join("cookie"),
            ..files(dir.path(), dir.path(), "a")
        };
        let err = FleetTls::load(&f).unwrap_err().to_string();
        assert!(err.contains("holds no PEM certificate"), "{err}");

        let f = TlsFiles {
            key: dir.path().join("a.pem"),
            ..files(dir.path(), dir.path(), "a")
        };
        let err = FleetTls::load(&f).unwrap_err().to_string();
        assert!(err.contains("holds no PEM private key"), "{err}");
    }
}
