//! Host and client keys, and the authorized_keys check.
//!
//! The host key is ed25519, generated once and kept in the state directory in OpenSSH format
//! (mode 0600), so clients see the same host key across restarts. Public keys are compared by
//! their key data only: the comment in an authorized_keys line never matters. The options of
//! an authorized_keys line are `key_options`'; what they leave a login is a `Restrictions`.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::net::IpAddr;
use std::time::SystemTime;

use russh::keys::ssh_key::{public::KeyData, Certificate, LineEnding};
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};
use tracing::{debug, info, warn};

use crate::ssh::auth::Verdict;
use crate::ssh::certs;
use crate::ssh::key_options::{split_options, KeyOptions};
use crate::ssh::restrictions::Restrictions;

/// Errors while loading or creating keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file exists but could not be read or parsed.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: russh::keys::ssh_key::Error,
    },
    /// A key could not be written.
    #[error("cannot write key file {path}: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The authorized keys file could not be used.
    #[error("cannot read authorized keys from {path}: {message}")]
    Authorized {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The revoked keys file could not be used.
    #[error("cannot read revoked keys from {path}: {message}")]
    Revoked {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The trusted user CA keys file could not be used.
    #[error("cannot read trusted user CA keys from {path}: {message}")]
    Certificates {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Generating a key failed.
    #[error("cannot generate a key: {0}")]
    Generate(russh::keys::ssh_key::Error),
}

/// Reads the private key at `path`, or generates an ed25519 key there (mode 0600) if the file
/// does not exist. Returns the key and whether it was created now.
pub fn load_or_create_key(path: &Path, comment: &str) -> Result<(PrivateKey, bool), KeyError> {
    if path.exists() {
        let key = PrivateKey::read_openssh_file(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        return Ok((key, false));
    }
    let mut key =
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(KeyError::Generate)?;
    key.set_comment(comment);
    let write_err = |message: String| KeyError::Write {
        path: path.to_path_buf(),
        message,
    };
    key.write_openssh_file(path, LineEnding::LF)
        .map_err(|e| write_err(e.to_string()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| write_err(e.to_string()))?;
    Ok((key, true))
}

/// Writes the public half of `key` next to it as `<path>.pub`.
pub fn write_public_key(key: &PrivateKey, path: &Path) -> io::Result<()> {
    let line = key
        .public_key()
        .to_openssh()
        .map_err(|e| io::Error::other(e.to_string()))?;
    fs::write(path, format!("{line}\n"))
}

/// The lines of an authorized_keys file: each a key (or, with `cert-authority`, a CA) and its
/// options. A key may stand on several lines: the first line whose options admit a login wins,
/// as in sshd.
#[derive(Debug, Clone, Default)]
pub struct AuthorizedKeys {
    lines: Vec<KeyLine>,
    /// Whether `environment=` options are applied (`permit_user_environment`); else ignored.
    permit_user_environment: bool,
}

/// One usable line of an authorized_keys file.
#[derive(Debug, Clone)]
struct KeyLine {
    /// The key, or the CA key on a `cert-authority` line.
    key: KeyData,
    options: KeyOptions,
    /// `file:line`, for the log.
    place: String,
}

impl AuthorizedKeys {
    /// Reads an OpenSSH authorized_keys file, options included (see `key_options`). A line
    /// that cannot be used (a broken key, an unknown or malformed option) is refused alone,
    /// with its reason logged as `file:line`: never read as giving more access than written.
    /// A file with no usable line is an error: nobody could log in.
    pub fn read_file(path: &Path) -> Result<Self, KeyError> {
        let text = fs::read_to_string(path).map_err(|e| KeyError::Authorized {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut lines = Vec::new();
        let mut refused = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let place = format!("{}:{}", path.display(), n + 1);
            match parse_line(line) {
                Ok((key, options)) => lines.push(KeyLine {
                    key,
                    options,
                    place,
                }),
                Err(reason) => {
                    warn!("{place}: line refused: {reason}");
                    refused.push(format!("{place}: {reason}"));
                }
            }
        }
        if lines.is_empty() {
            let mut message = "the file holds no usable key: nobody could log in".to_string();
            if !refused.is_empty() {
                message = format!("{message} ({})", refused.join("; "));
            }
            return Err(KeyError::Authorized {
                path: path.to_path_buf(),
                message,
            });
        }
        Ok(Self {
            lines,
            permit_user_environment: false,
        })
    }

    /// A set holding just these keys, with no options.
    pub fn from_keys(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        let lines = keys
            .into_iter()
            .map(|k| KeyLine {
                key: k.key_data().clone(),
                options: KeyOptions::parse("").unwrap_or_default(),
                place: "generated".into(),
            })
            .collect();
        Self {
            lines,
            permit_user_environment: false,
        }
    }

    /// Applies `environment=` options (sshd's `PermitUserEnvironment`) or ignores them (the
    /// default), saying so for each line that has one.
    pub fn with_user_environment(mut self, permit: bool) -> Self {
        self.permit_user_environment = permit;
        if !permit {
            for line in &self.lines {
                if !line.options.restrictions.environment.is_empty() {
                    info!(
                        "{}: environment= ignored: permit_user_environment is off",
                        line.place
                    );
                }
            }
        }
        self
    }

    /// Whether `key` stands on a line as a key (not as a CA), whatever that line's options.
    pub fn allows(&self, key: &PublicKey) -> bool {
        self.recognises(key.key_data())
    }

    /// Whether `key` stands on a line as a key (not as a CA).
    pub fn recognises(&self, key: &KeyData) -> bool {
        self.lines
            .iter()
            .any(|l| !l.options.cert_authority && &l.key == key)
    }

    /// Whether some line is a `cert-authority` line.
    pub fn has_cert_authorities(&self) -> bool {
        self.lines.iter().any(|l| l.options.cert_authority)
    }

    /// Whether `key` is a CA on a `cert-authority` line.
    pub fn is_cert_authority(&self, key: &KeyData) -> bool {
        self.lines
            .iter()
            .any(|l| l.options.cert_authority && &l.key == key)
    }

    /// The verdict on a login with `key`, proved held, from `peer` at `now`: the restrictions
    /// of the first line of `key` whose options admit it; refused with the first line's
    /// reason when it stands on lines that all refuse it; rejected when it stands on none.
    pub fn login(&self, key: &KeyData, peer: IpAddr, now: SystemTime) -> Verdict {
        let candidates = self
            .lines
            .iter()
            .filter(|l| !l.options.cert_authority && &l.key == key);
        self.first_admitting(candidates, peer, now, |_| Ok(()))
    }

    /// The verdict on a certificate (signature checked by russh) signed by a CA of a
    /// `cert-authority` line: its principals must include one of the line's `principals=`
    /// (or `user`), and the line's options and the certificate's own must admit the login.
    /// Rejected when no such line names its CA.
    pub fn certificate_login(
        &self,
        user: &str,
        cert: &Certificate,
        peer: IpAddr,
        now: SystemTime,
    ) -> Verdict {
        let candidates = self
            .lines
            .iter()
            .filter(|l| l.options.cert_authority && &l.key == cert.signature_key());
        self.first_admitting(candidates, peer, now, |line| {
            let wanted: Vec<&str> = match &line.options.principals {
                Some(list) => list.iter().map(String::as_str).collect(),
                None => vec![user],
            };
            certs::check_principals(cert, user, &wanted)
        })
        .and_certificate(cert, peer)
    }

    /// The first of `candidates` whose options (and `check`) admit the login.
    fn first_admitting<'a>(
        &self,
        candidates: impl Iterator<Item = &'a KeyLine>,
        peer: IpAddr,
        now: SystemTime,
        check: impl Fn(&KeyLine) -> Result<(), String>,
    ) -> Verdict {
        let mut first_refusal = None;
        for line in candidates {
            match check(line).and_then(|()| line.options.admit(peer, now)) {
                Ok(restrictions) => {
                    debug!("{}: login admitted", line.place);
                    return Verdict::Accept(self.with_environment(restrictions));
                }
                Err(reason) => {
                    debug!("{}: login refused: {reason}", line.place);
                    first_refusal.get_or_insert(reason);
                }
            }
        }
        match first_refusal {
            Some(reason) => Verdict::Refuse(reason),
            None => Verdict::Reject,
        }
    }

    /// `restrictions` with its `environment=` variables dropped unless they are permitted.
    pub(crate) fn with_environment(&self, mut restrictions: Restrictions) -> Restrictions {
        if !self.permit_user_environment {
            restrictions.environment.clear();
        }
        restrictions
    }

    /// How many usable lines the file has.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether no line is usable.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// One authorized_keys line: its key and options, or why it cannot be used.
fn parse_line(line: &str) -> Result<(KeyData, KeyOptions), String> {
    let (options, key) = split_options(line, |s| PublicKey::from_openssh(s).is_ok())?;
    let key = PublicKey::from_openssh(key).map_err(|e| format!("not a public key: {e}"))?;
    let options = KeyOptions::parse(options)?;
    Ok((key.key_data().clone(), options))
}

/// The SHA-256 fingerprint of a public key, as OpenSSH prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_kept_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host_ed25519");
        let (first, created) = load_or_create_key(&path, "test").unwrap();
        assert!(created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (second, created) = load_or_create_key(&path, "test").unwrap();
        assert!(!created);
        assert_eq!(
            first.public_key().key_data(),
            second.public_key().key_data()
        );
    }

    #[test]
    fn authorized_keys_match_by_key_data_not_comment() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = load_or_create_key(&dir.path().join("k"), "alice@laptop").unwrap();
        let (other, _) = load_or_create_key(&dir.path().join("o"), "x").unwrap();
        let mut line = key.public_key().to_openssh().unwrap();
        line = line.replace("alice@laptop", "a different comment");
        let file = dir.path().join("authorized_keys");
        fs::write(&file, format!("# comment line\n\n{line}\n")).unwrap();
        let auth = AuthorizedKeys::read_file(&file).unwrap();
        assert!(auth.allows(key.public_key()));
        assert!(!auth.allows(other.public_key()));
    }

    #[test]
    fn an_empty_or_broken_authorized_keys_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("authorized_keys");
        fs::write(&file, "# nothing\n").unwrap();
        assert!(AuthorizedKeys::read_file(&file).is_err());
        fs::write(&file, "ssh-ed25519 not-base64!!\n").unwrap();
        assert!(AuthorizedKeys::read_file(&file).is_err());
        assert!(AuthorizedKeys::read_file(&dir.path().join("missing")).is_err());
        let (key, _) = load_or_create_key(&dir.path().join("k"), "x").unwrap();
        let line = key.public_key().to_openssh().unwrap();
        fs::write(&file, format!("bogus-option {line}\n")).unwrap();
        let err = AuthorizedKeys::read_file(&file).unwrap_err().to_string();
        assert!(
            err.contains("authorized_keys:1: the option bogus-option is not supported"),
            "{err}"
        );
    }

    #[test]
    fn a_line_with_a_bad_option_is_refused_alone_and_the_others_load() {
        let dir = tempfile::tempdir().unwrap();
        let (alice, _) = load_or_create_key(&dir.path().join("a"), "alice").unwrap();
        let (bob, _) = load_or_create_key(&dir.path().join("b"), "bob").unwrap();
        let a = alice.public_key().to_openssh().unwrap();
        let b = bob.public_key().to_openssh().unwrap();
        let file = dir.path().join("authorized_keys");
        fs::write(
            &file,
            format!("no-such-option {a}\nfrom=\"10.0.0.1\",no-pty {b}\n"),
        )
        .unwrap();
        let auth = AuthorizedKeys::read_file(&file).unwrap();
        assert_eq!(auth.len(), 1);
        assert!(!auth.allows(alice.public_key()));
        assert!(auth.allows(bob.public_key()));
        let now = SystemTime::now();
        let bob_key = bob.public_key().key_data();
        assert!(
            matches!(auth.login(bob_key, "10.0.0.1".parse().unwrap(), now), Verdict::Accept(r) if !r.pty)
        );
        assert!(matches!(
            auth.login(bob_key, "10.0.0.2".parse().unwrap(), now),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            auth.login(
                alice.public_key().key_data(),
                "10.0.0.1".parse().unwrap(),
                now
            ),
            Verdict::Reject
        ));
    }

    #[test]
    fn the_first_line_whose_options_admit_the_login_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = load_or_create_key(&dir.path().join("k"), "k").unwrap();
        let k = key.public_key().to_openssh().unwrap();
        let file = dir.path().join("authorized_keys");
        fs::write(
            &file,
            format!("from=\"10.0.0.0/8\" {k}\ncommand=\"date\",environment=\"A=1\" {k}\n"),
        )
        .unwrap();
        let auth = AuthorizedKeys::read_file(&file).unwrap();
        let now = SystemTime::now();
        let Verdict::Accept(r) = auth.login(
            key.public_key().key_data(),
            "10.1.1.1".parse().unwrap(),
            now,
        ) else {
            panic!("admitted by the first line")
        };
        assert_eq!(r.force_command, None);
        let Verdict::Accept(r) = auth.login(
            key.public_key().key_data(),
            "127.0.0.1".parse().unwrap(),
            now,
        ) else {
            panic!("admitted by the second line")
        };
        assert_eq!(r.force_command.as_deref(), Some("date"));
        assert!(r.environment.is_empty(), "environment= is off by default");
        let auth = auth.with_user_environment(true);
        let Verdict::Accept(r) = auth.login(
            key.public_key().key_data(),
            "127.0.0.1".parse().unwrap(),
            now,
        ) else {
            panic!("admitted by the second line")
        };
        assert_eq!(r.environment, vec![("A".to_string(), "1".to_string())]);
    }
}
