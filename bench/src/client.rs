//! The SSH client side shared by `hold` and `churn`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use russh::client::{self, DisconnectReason};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};

/// Which server to log in to, and as whom: the options `hold` and `churn` share.
#[derive(clap::Args)]
pub struct Login {
    /// The server.
    #[arg(long, default_value = "127.0.0.1:2222")]
    pub addr: String,
    /// Private key to authenticate with.
    #[arg(long, default_value = ".sshvisor/client_ed25519")]
    pub key: PathBuf,
    /// User name.
    #[arg(long, default_value = "bench")]
    pub user: String,
}

/// A client handler that trusts any host key and keeps the server's disconnect message.
pub struct Quiet {
    said: Arc<OnceLock<String>>,
}

impl client::Handler for Quiet {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn disconnected(
        &mut self,
        reason: DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        match reason {
            DisconnectReason::ReceivedDisconnect(info) => {
                let _ = self.said.set(info.message);
                Ok(())
            }
            DisconnectReason::Error(e) => Err(e),
        }
    }
}

/// The client configuration of every connection: nodelay, no inactivity timeout.
pub fn config() -> Arc<client::Config> {
    Arc::new(client::Config {
        nodelay: true,
        inactivity_timeout: None,
        ..Default::default()
    })
}

/// Reads an OpenSSH private key.
pub fn read_key(path: &Path) -> anyhow::Result<Arc<PrivateKey>> {
    Ok(Arc::new(
        PrivateKey::read_openssh_file(path)
            .with_context(|| format!("reading {}", path.display()))?,
    ))
}

/// Connects, authenticates by public key and opens one session running `command`. A failure
/// carries the server's disconnect message, if it sent one.
pub async fn open(
    config: Arc<client::Config>,
    addr: &str,
    key: Arc<PrivateKey>,
    user: &str,
    command: &str,
) -> anyhow::Result<(client::Handle<Quiet>, russh::Channel<client::Msg>)> {
    let said = Arc::new(OnceLock::new());
    let quiet = Quiet { said: said.clone() };
    match try_open(config, addr, key, user, command, quiet).await {
        Ok(opened) => Ok(opened),
        Err(e) => match said.get() {
            Some(message) => Err(e.context(format!("the server said {message:?}"))),
            None => Err(e),
        },
    }
}

async fn try_open(
    config: Arc<client::Config>,
    addr: &str,
    key: Arc<PrivateKey>,
    user: &str,
    command: &str,
    quiet: Quiet,
) -> anyhow::Result<(client::Handle<Quiet>, russh::Channel<client::Msg>)> {
    let mut handle = client::connect(config, addr, quiet)
        .await
        .context("connecting")?;
    let auth = handle
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, None))
        .await
        .context("authenticating")?;
    if !auth.success() {
        bail!("authentication refused");
    }
    let channel = handle
        .channel_open_session()
        .await
        .context("opening a session")?;
    channel.exec(true, command).await.context("exec")?;
    Ok((handle, channel))
}

/// Microseconds since the UNIX epoch (wall clock, comparable across processes).
pub fn unix_us(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}
