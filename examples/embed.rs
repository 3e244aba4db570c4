//! Embedding sshvisor in a program of your own: the README's example, run end to end.
//!
//! A host actor (the embedding program's own ractor supervisor) spawns the tree linked under
//! itself and binds an SSH listener on 127.0.0.1:0. A russh client logs in; the program kills
//! its connection through the [`SupervisorHandle`] and checks the report: the client was told
//! why, and nothing of the connection is left.
//!
//! `cargo run --example embed` runs it; `cargo test` runs it too (see the test at the end).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use russh::client;
use russh::keys::PrivateKeyWithHashAlg;
use sshvisor::actors::{Event, SupervisorArgs, SupervisorHandle, Target};
use sshvisor::session::app::{DefaultSessions, ExecEnv};
use sshvisor::ssh::algorithms::Algorithms;
use sshvisor::ssh::keys::{load_or_create_key, AuthorizedKeys};
use sshvisor::ssh::penalties::PenaltyPolicy;
use sshvisor::ssh::server::{SshListener, SshOptions};
use tokio::sync::oneshot;

/// The embedding program's own supervisor.
struct Host;

/// What the host is asked.
enum HostMsg {
    /// The tree's door and the SSH address, for the rest of the program.
    Door(RpcReplyPort<(SupervisorHandle, SocketAddr)>),
}

// A build with ractor's `cluster` feature on has no blanket `Message` impl: each message type
// gets its own (and sshvisor's `cluster` feature gives the tree's types theirs).
#[cfg(feature = "cluster")]
impl ractor::Message for HostMsg {}

/// The host's state: the tree's door and its listener.
struct HostState {
    sshvisor: SupervisorHandle,
    listener: Option<SshListener>,
}

impl Actor for Host {
    type Msg = HostMsg;
    type State = HostState;
    /// The directory the keys are kept in.
    type Arguments = std::path::PathBuf;

    async fn pre_start(
        &self,
        myself: ActorRef<HostMsg>,
        keys: std::path::PathBuf,
    ) -> Result<HostState, ActorProcessingErr> {
        // Linked under this actor: the tree is part of the host's own supervision tree.
        let sshvisor =
            SupervisorHandle::spawn(Some(myself.get_cell()), SupervisorArgs::new()).await?;
        let (host_key, _) = load_or_create_key(&keys.join("host_ed25519"), "my host key")?;
        let (client_key, _) = load_or_create_key(&keys.join("client_ed25519"), "my client")?;
        let listener = SshListener::bind(
            SshOptions {
                listen: "127.0.0.1:0".parse()?,
                host_key,
                auth: Arc::new(AuthorizedKeys::from_keys([client_key.public_key().clone()])),
                keepalive: (Some(Duration::from_secs(15)), 3),
                // The default application: processes, in-process commands, sftp.
                sessions: Arc::new(DefaultSessions::new(ExecEnv::default())),
                // The hardened algorithm policy (`Algorithms::with` changes a list).
                algorithms: Algorithms::default(),
                // Sources that connect too fast or misbehave are refused at the door.
                penalties: PenaltyPolicy::default(),
            },
            sshvisor.clone(),
        )
        .await?;
        Ok(HostState {
            sshvisor,
            listener: Some(listener),
        })
    }

    async fn handle(
        &self,
        _: ActorRef<HostMsg>,
        msg: HostMsg,
        state: &mut HostState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HostMsg::Door(reply) => {
                let addr = state.listener.as_ref().map(SshListener::local_addr);
                if let Some(addr) = addr {
                    let _ = reply.send((state.sshvisor.clone(), addr));
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<HostMsg>,
        state: &mut HostState,
    ) -> Result<(), ActorProcessingErr> {
        // Stop admitting, then empty the tree: the drain's two halves.
        if let Some(listener) = state.listener.take() {
            listener.stop_accepting().await;
        }
        state
            .sshvisor
            .drain(Duration::from_secs(5), Some("host".into()))
            .await?;
        Ok(())
    }
}

/// A client that trusts any host key (this example made the key itself) and passes on the
/// disconnect text.
struct Client {
    told: Option<oneshot::Sender<String>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        match reason {
            client::DisconnectReason::ReceivedDisconnect(info) => {
                if let Some(told) = self.told.take() {
                    let _ = told.send(info.message);
                }
                Ok(())
            }
            client::DisconnectReason::Error(e) => Err(e),
        }
    }
}

/// Runs the whole example with its keys in `keys`: host, login, kill, report.
async fn run(keys: &Path) -> anyhow::Result<()> {
    let (host, _) = Actor::spawn(None, Host, keys.to_path_buf()).await?;
    let (sshvisor, addr) = ractor::call!(host, HostMsg::Door)?;
    let mut events = sshvisor.subscribe().await?;

    // A russh client logs in with the authorized key.
    let (told, said) = oneshot::channel();
    let mut ssh = client::connect(
        Arc::new(client::Config::default()),
        addr,
        Client { told: Some(told) },
    )
    .await?;
    let key = russh::keys::PrivateKey::read_openssh_file(keys.join("client_ed25519"))?;
    let auth = ssh
        .authenticate_publickey("mallory", PrivateKeyWithHashAlg::new(Arc::new(key), None))
        .await?;
    anyhow::ensure!(auth.success(), "the authorized key was refused");

    // The tree says who logged in; the program decides mallory goes.
    let conn = loop {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await? {
            Some(Event::Authenticated { conn, user, .. }) if user == "mallory" => break conn,
            Some(_) => continue,
            None => anyhow::bail!("the event stream ended before mallory logged in"),
        }
    };
    let report = sshvisor
        .kill(
            Target::Connection(conn),
            "access revoked",
            Duration::from_secs(5),
            Some("policy".into()),
        )
        .await?;
    println!("{report:?}");
    anyhow::ensure!(report.target == Target::Connection(conn), "{report:?}");
    anyhow::ensure!(
        !report.forced,
        "a healthy client ended politely: {report:?}"
    );
    anyhow::ensure!(sshvisor.list().await?.is_empty(), "the connection is gone");

    // The client was told why.
    let said = tokio::time::timeout(Duration::from_secs(30), said).await??;
    anyhow::ensure!(said == "access revoked", "the client was told {said:?}");
    let _ = ssh
        .disconnect(russh::Disconnect::ByApplication, "", "")
        .await;

    host.stop_and_wait(None, Some(Duration::from_secs(30)))
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let keys = tempfile::tempdir()?;
    run(keys.path()).await?;
    println!("killed mallory's connection through the handle; the report checks out");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_embedding_example_kills_a_real_connection_through_the_handle() {
        let keys = tempfile::tempdir().unwrap();
        super::run(keys.path()).await.unwrap();
    }
}
