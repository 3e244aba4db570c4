//! `bare-server`: the floor to compare sshvisor with. A plain russh server with the same russh
//! configuration, public-key authentication and `exec` handling as sshvisor, but no actors, no
//! connection registry and no control socket: one task per connection, one per command.
//!
//! The exec command [`WAIT`] runs no process: the channel stays open, client data is dropped,
//! and the client's EOF is answered with exit-status 0, EOF and CLOSE.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::AuthorizedKeys;
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{
    Auth, ChannelOpenHandle, Config, Handle, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{ChannelId, MethodKind, MethodSet, Sig, SshId};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::AbortHandle;

/// The in-process exec command: no child, ends with status 0 on the client's EOF.
const WAIT: &str = "@wait";

/// What `bare-server` needs.
#[derive(clap::Args)]
pub struct BareArgs {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:2223")]
    listen: String,
    /// The host key (OpenSSH format).
    #[arg(long)]
    host_key: PathBuf,
    /// Public keys allowed to log in, as any user.
    #[arg(long)]
    authorized_keys: PathBuf,
    /// Keepalive probe interval in seconds, 0 for none (sshvisor's default is 15).
    #[arg(long, default_value_t = 15)]
    keepalive_secs: u64,
}

/// The russh configuration: sshvisor's (see its `server::russh_config`), under another name.
fn config(host_key: PrivateKey, keepalive: Option<Duration>) -> Config {
    Config {
        server_id: SshId::Standard("SSH-2.0-bare_russh_0.65.1".into()),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(500),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        inactivity_timeout: None,
        keepalive_interval: keepalive,
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    }
}

fn read_authorized(path: &Path) -> anyhow::Result<Vec<KeyData>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut keys = Vec::new();
    for (n, entry) in AuthorizedKeys::new(&text).enumerate() {
        let entry = entry.with_context(|| format!("{}: entry {}", path.display(), n + 1))?;
        keys.push(entry.public_key().key_data().clone());
    }
    if keys.is_empty() {
        anyhow::bail!("{} holds no keys", path.display());
    }
    Ok(keys)
}

/// Serves until killed.
pub async fn run(args: BareArgs) -> anyhow::Result<()> {
    let host_key = PrivateKey::read_openssh_file(&args.host_key)
        .with_context(|| format!("reading {}", args.host_key.display()))?;
    let authorized = Arc::new(read_authorized(&args.authorized_keys)?);
    let keepalive = (args.keepalive_secs > 0).then(|| Duration::from_secs(args.keepalive_secs));
    let config = Arc::new(config(host_key, keepalive));
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        match listener.accept().await {
            Ok((socket, _)) => {
                tokio::spawn(serve(config.clone(), authorized.clone(), socket));
            }
            Err(e) => {
                eprintln!("bare-server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(config: Arc<Config>, authorized: Arc<Vec<KeyData>>, socket: TcpStream) {
    // russh's run_stream does not look at Config::nodelay.
    let _ = socket.set_nodelay(true);
    let handler = Bare {
        authorized,
        commands: HashMap::new(),
        waits: HashSet::new(),
    };
    if let Ok(running) = russh::server::run_stream(config, socket, handler).await {
        let _ = running.await;
    }
}

/// One connection.
struct Bare {
    authorized: Arc<Vec<KeyData>>,
    /// The task of each channel's command; aborting it kills the command.
    commands: HashMap<ChannelId, AbortHandle>,
    /// The channels running [`WAIT`].
    waits: HashSet<ChannelId>,
}

impl Bare {
    fn check(&self, key: &PublicKey) -> Auth {
        if self.authorized.iter().any(|k| k == key.key_data()) {
            Auth::Accept
        } else {
            Auth::reject()
        }
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        // The connection is over: so are its commands.
        for (_, task) in self.commands.drain() {
            task.abort();
        }
    }
}

impl russh::server::Handler for Bare {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.check(offer.public_key))
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.check(key.public_key))
    }

    async fn channel_open_session(
        &mut self,
        _channel: russh::Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Everything goes through callbacks and the handle: the channel's own queue is unused.
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.commands.contains_key(&channel) || self.waits.contains(&channel) {
            return session.channel_failure(channel);
        }
        if data == WAIT.as_bytes() {
            self.waits.insert(channel);
            return session.channel_success(channel);
        }
        let command = String::from_utf8_lossy(data).into_owned();
        let spawned = Command::new("/bin/sh")
            .arg("-c")
            .arg(&command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn();
        match spawned {
            Ok(child) => {
                session.channel_success(channel)?;
                let task = tokio::spawn(drive(Group::new(child), session.handle(), channel));
                self.commands.insert(channel, task.abort_handle());
            }
            Err(e) => {
                eprintln!("bare-server: cannot run {command:?}: {e}");
                session.channel_failure(channel)?;
                session.close(channel)?;
            }
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Only `@wait` ends on EOF; a real command's stdin is /dev/null, so EOF means nothing.
        if self.waits.remove(&channel) {
            session.exit_status_request(channel, 0)?;
            session.eof(channel)?;
            session.close(channel)?;
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(task) = self.commands.remove(&channel) {
            task.abort();
        }
        self.waits.remove(&channel);
        Ok(())
    }
}

/// A command in its own process group. Dropped before the command was reaped (its task was
/// aborted: the channel or the connection ended), it kills the whole group; the unreaped
/// leader keeps the group ID from being reused until then.
struct Group {
    child: Child,
    reaped: bool,
}

impl Group {
    fn new(child: Child) -> Self {
        Self {
            child,
            reaped: false,
        }
    }

    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let status = self.child.wait().await;
        self.reaped = status.is_ok();
        status
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        if let Some(pid) = self.child.id() {
            // SAFETY: killpg takes plain integers; the group is ours (see above).
            unsafe {
                libc::killpg(pid as i32, libc::SIGKILL);
            }
        }
        // tokio reaps a dropped child in the background.
    }
}

/// Copies the command's output to the channel, then sends how it ended, EOF and CLOSE.
async fn drive(mut group: Group, handle: Handle, channel: ChannelId) {
    let stdout = group.child.stdout.take();
    let stderr = group.child.stderr.take();
    let ((), (), status) = tokio::join!(
        copy(stdout, &handle, channel, None),
        copy(stderr, &handle, channel, Some(1)),
        group.wait()
    );
    match status {
        Ok(status) => {
            if let Some(code) = status.code() {
                let _ = handle.exit_status_request(channel, code as u32).await;
            } else if let Some(signal) = status.signal() {
                let _ = handle
                    .exit_signal_request(
                        channel,
                        sig_of(signal),
                        status.core_dumped(),
                        String::new(),
                        "en".into(),
                    )
                    .await;
            }
        }
        Err(e) => eprintln!("bare-server: waiting for a command failed: {e}"),
    }
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

/// The first read buffer of an output copy: small, since most commands are quiet.
const COPY_MIN: usize = 1024;
/// The read buffer a busy copy grows to.
const COPY_MAX: usize = 32 * 1024;

async fn copy(
    from: Option<impl AsyncRead + Unpin>,
    handle: &Handle,
    channel: ChannelId,
    ext: Option<u32>,
) {
    let Some(mut from) = from else { return };
    let mut buf = Vec::new();
    let mut size = COPY_MIN;
    loop {
        let data = match read_chunk(&mut from, &mut buf, size).await {
            Some(data) => data,
            None => return,
        };
        if data.len() == size {
            size = (size * 4).min(COPY_MAX);
        }
        let sent = match ext {
            None => handle.data(channel, data).await,
            Some(code) => handle.extended_data(channel, code, data).await,
        };
        if sent.is_err() {
            // The connection is gone; drain so the command never blocks on a full pipe.
            while read_chunk(&mut from, &mut buf, COPY_MAX).await.is_some() {}
            return;
        }
    }
}

/// Reads at most `size` bytes into `buf` and hands out a copy; None at end of stream or on
/// error.
async fn read_chunk(
    from: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    size: usize,
) -> Option<Vec<u8>> {
    buf.resize(size, 0);
    match from.read(&mut buf[..]).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(buf[..n].to_vec()),
    }
}

fn sig_of(signal: i32) -> Sig {
    match signal {
        libc::SIGABRT => Sig::ABRT,
        libc::SIGALRM => Sig::ALRM,
        libc::SIGFPE => Sig::FPE,
        libc::SIGHUP => Sig::HUP,
        libc::SIGILL => Sig::ILL,
        libc::SIGINT => Sig::INT,
        libc::SIGKILL => Sig::KILL,
        libc::SIGPIPE => Sig::PIPE,
        libc::SIGQUIT => Sig::QUIT,
        libc::SIGSEGV => Sig::SEGV,
        libc::SIGTERM => Sig::TERM,
        libc::SIGUSR1 => Sig::USR1,
        libc::SIGUSR2 => Sig::Custom("USR2".into()),
        other => Sig::Custom(other.to_string()),
    }
}
