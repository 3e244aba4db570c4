//! Host and client keys, and the authorized_keys check.
//!
//! The host key is ed25519, generated once and kept in the state directory in OpenSSH format
//! (mode 0600), so clients see the same host key across restarts. Public keys are compared by
//! their key data only: the comment in an authorized_keys line never matters.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::{public::KeyData, AuthorizedKeys as KeyFile, LineEnding};
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};

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

/// The set of public keys allowed to log in.
#[derive(Debug, Clone, Default)]
pub struct AuthorizedKeys {
    keys: Vec<KeyData>,
}

impl AuthorizedKeys {
    /// Reads an OpenSSH authorized_keys file. A line with options (`from=`, `command=`,
    /// `restrict`, ...) is refused: sshvisor does not enforce them yet, and silently granting
    /// full access to a key meant to be restricted would be worse than not starting.
    pub fn read_file(path: &Path) -> Result<Self, KeyError> {
        let text = fs::read_to_string(path).map_err(|e| KeyError::Authorized {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut keys = Vec::new();
        for entry in KeyFile::new(&text) {
            let entry = entry.map_err(|e| KeyError::Authorized {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            if !entry.config_opts().is_empty() {
                return Err(KeyError::Authorized {
                    path: path.to_path_buf(),
                    message: format!(
                        "the key {} has options ({}), which sshvisor does not support yet: remove them or the line",
                        fingerprint(entry.public_key()),
                        entry.config_opts().as_str()
                    ),
                });
            }
            keys.push(entry.public_key().key_data().clone());
        }
        if keys.is_empty() {
            return Err(KeyError::Authorized {
                path: path.to_path_buf(),
                message: "the file holds no public key: nobody could log in".into(),
            });
        }
        Ok(Self { keys })
    }

    /// A set holding just these keys.
    pub fn from_keys(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        Self {
            keys: keys.into_iter().map(|k| k.key_data().clone()).collect(),
        }
    }

    /// Whether `key` may log in (by key data; the comment does not matter).
    pub fn allows(&self, key: &PublicKey) -> bool {
        self.keys.iter().any(|k| k == key.key_data())
    }

    /// How many keys are authorized.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is authorized.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
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
        fs::write(&file, format!("from=\"10.0.0.1\" {line}\n")).unwrap();
        let err = AuthorizedKeys::read_file(&file).unwrap_err().to_string();
        assert!(err.contains("has options (from=\"10.0.0.1\")"), "{err}");
    }
}
