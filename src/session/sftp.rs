//! The in-process SFTP server: the `sftp` subsystem, spoken by the OpenSSH `sftp` client and by
//! `scp` (which speaks SFTP since OpenSSH 9), served over any byte stream by [`serve`].
//!
//! The wire format (packets, attributes, status codes) is the `russh-sftp` crate's; this module
//! owns the request loop, the per-session handle table and the mapping of filesystem errors to
//! SFTP status codes. What the files are is behind [`SftpFs`], so an embedding program can serve
//! its own virtual files; [`LocalFs`] is the local filesystem as the server's own user, starting
//! in a home directory, the way OpenSSH's `sftp-server` does.
//!
//! `budget` (a submodule): the open handles counted per session, connection and login user.
//!
//! # Why not `russh_sftp::server::run`
//!
//! It spawns a detached task and returns at once, so a session that is killed cannot take its
//! open files down with it, and it keeps reading after a stream error. [`serve`] runs the loop in
//! the caller's future instead: it returns when the stream ends, and dropping it (an aborted
//! session) drops every open handle with it.
//!
//! # Protocol notes
//!
//! - Version 3 (draft-ietf-secsh-filexfer-02), the one OpenSSH speaks, with the OpenSSH
//!   extensions `limits`, `posix-rename`, `hardlink`, `fsync`, `statvfs` and `expand-path`.
//! - `SSH_FXP_SYMLINK` takes its two paths in OpenSSH's order: the link's *target* first, then
//!   the path of the link to create (OpenSSH's PROTOCOL file, section 3.1). The OpenSSH client
//!   sends them that way; a client that follows the draft (russh-sftp's own) must swap them.
//! - `SSH_FXP_RENAME` never replaces an existing target (the draft's rule);
//!   `posix-rename@openssh.com` does.
//! - Requests are answered one at a time, in order; the OpenSSH client's pipelined reads and
//!   writes simply queue in the stream.
//! - Paths and handles are UTF-8 strings on this side: a name that is not valid UTF-8 is shown
//!   with replacement characters and cannot be opened by that name.
//!
//! Architecture Invariant: a session's open files and directories live only in its handle
//! table, and the table lives only in the future of [`serve`]. No task is spawned per session,
//! so nothing a session opened outlives it (a blocking filesystem call that is under way when
//! the session ends finishes first, then drops its file).

mod budget;

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, FileTimes, Metadata, Permissions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::{self, BoxFuture, FutureExt};
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Group, Uid, User};
use russh_sftp::extensions::{
    ExpandPathExtension, FsyncExtension, HardlinkExtension, LimitsExtension, StatvfsExtension,
};
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, Handle, Name, Packet, Status, StatusCode, Version,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};

pub use budget::{ConnectionHandles, HandleBudgets, HandleLimits};
pub use russh_sftp::extensions::Statvfs;
pub use russh_sftp::protocol::File as DirEntry;
pub use russh_sftp::protocol::{FileAttributes, OpenFlags};

/// The longest packet a client may send (after its length field), as OpenSSH's `sftp-server`.
/// A longer one ends the session: the stream cannot be resynchronised.
pub const MAX_PACKET: u32 = 256 * 1024;

/// The most data one read returns, so that its reply fits in a packet.
pub const MAX_READ: u32 = MAX_PACKET - 1024;

/// The most files and directories one session may hold open at once by default
/// (`max_sftp_handles_per_session`; see [`HandleLimits`]).
pub const MAX_HANDLES: usize = 256;

/// How many directory entries one `SSH_FXP_READDIR` reply carries at most.
const READDIR_BATCH: usize = 100;

/// Why a session ended other than by its stream ending cleanly between two packets.
#[derive(Debug, thiserror::Error)]
pub enum SftpError {
    /// Reading from or writing to the client's stream failed, or it ended inside a packet.
    #[error("the sftp stream failed: {0}")]
    Io(#[from] io::Error),
    /// The client sent a packet longer than [`MAX_PACKET`]; the stream cannot be followed past it.
    #[error(
        "the sftp client sent a packet of {len} bytes, over the limit of {MAX_PACKET}: \
         the session was ended (is the client speaking sftp?)"
    )]
    PacketTooLong {
        /// The length the packet claimed.
        len: u32,
    },
    /// A reply could not be encoded, not even as a failure status.
    #[error("could not encode an sftp reply: {0}")]
    Encode(String),
}

/// The filesystem behind an SFTP session.
///
/// The trait is object safe (the server holds an `Arc<dyn SftpFs>`), so its methods return
/// boxed futures: write `async move { … }.boxed()` with [`futures::FutureExt`]. Paths are the
/// client's, as sent: resolving relative ones (against a home directory) is the filesystem's
/// job, and an empty path means the home directory.
///
/// Errors are [`io::Error`]s; the server turns them into SFTP status codes: `NotFound` (and
/// `ENOTDIR`, `ELOOP`) into `NoSuchFile`, `PermissionDenied` (`EACCES`, `EPERM`) into
/// `PermissionDenied`, `Unsupported` (`ENOSYS`) into `OpUnsupported`, `EINVAL` and
/// `ENAMETOOLONG` into `BadMessage`, anything else into `Failure`, with the error's text. The
/// methods with a default implementation refuse with `Unsupported`, so a read-only virtual
/// filesystem implements only [`realpath`](Self::realpath), [`stat`](Self::stat),
/// [`open`](Self::open) and [`open_dir`](Self::open_dir).
pub trait SftpFs: Send + Sync + 'static {
    /// The canonical absolute form of `path`: `.` and the empty path are the home directory.
    /// The last component need not exist (clients canonicalise the name of a file to create).
    fn realpath<'a>(&'a self, path: &'a str) -> BoxFuture<'a, io::Result<String>>;

    /// The attributes of `path`, following symbolic links.
    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, io::Result<FileAttributes>>;

    /// The attributes of `path` itself, a symbolic link included. Defaults to [`stat`](Self::stat).
    fn lstat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, io::Result<FileAttributes>> {
        self.stat(path)
    }

    /// Opens the file at `path` as `flags` say (read, write, append, create, truncate,
    /// exclusive); `attrs.permissions` is the mode of a file it creates.
    fn open<'a>(
        &'a self,
        path: &'a str,
        flags: OpenFlags,
        attrs: FileAttributes,
    ) -> BoxFuture<'a, io::Result<Box<dyn SftpFile>>>;

    /// Opens the directory at `path` for listing.
    fn open_dir<'a>(&'a self, path: &'a str) -> BoxFuture<'a, io::Result<Box<dyn SftpDir>>>;

    /// Changes the attributes `attrs` carries (size, permissions, times, owner) of `path`.
    fn setstat<'a>(
        &'a self,
        _path: &'a str,
        _attrs: FileAttributes,
    ) -> BoxFuture<'a, io::Result<()>> {
        unsupported("setstat")
    }

    /// Creates the directory `path`, with `attrs.permissions` as its mode if given.
    fn mkdir<'a>(
        &'a self,
        _path: &'a str,
        _attrs: FileAttributes,
    ) -> BoxFuture<'a, io::Result<()>> {
        unsupported("mkdir")
    }

    /// Removes the empty directory `path`.
    fn rmdir<'a>(&'a self, _path: &'a str) -> BoxFuture<'a, io::Result<()>> {
        unsupported("rmdir")
    }

    /// Removes the file (or symbolic link) `path`.
    fn remove<'a>(&'a self, _path: &'a str) -> BoxFuture<'a, io::Result<()>> {
        unsupported("remove")
    }

    /// Renames `from` to `to`. Unless `replace`, an existing `to` is an `AlreadyExists` error.
    fn rename<'a>(
        &'a self,
        _from: &'a str,
        _to: &'a str,
        _replace: bool,
    ) -> BoxFuture<'a, io::Result<()>> {
        unsupported("rename")
    }

    /// The target of the symbolic link `path`, as stored.
    fn readlink<'a>(&'a self, _path: &'a str) -> BoxFuture<'a, io::Result<String>> {
        unsupported("readlink")
    }

    /// Creates a symbolic link at `link` that points to `target` (stored as given).
    fn symlink<'a>(&'a self, _target: &'a str, _link: &'a str) -> BoxFuture<'a, io::Result<()>> {
        unsupported("symlink")
    }

    /// Creates `new` as a hard link to `old` (`hardlink@openssh.com`, the client's `ln`).
    fn hardlink<'a>(&'a self, _old: &'a str, _new: &'a str) -> BoxFuture<'a, io::Result<()>> {
        unsupported("hardlink")
    }

    /// The filesystem statistics of the filesystem holding `path` (`statvfs@openssh.com`, the
    /// client's `df`).
    fn statvfs<'a>(&'a self, _path: &'a str) -> BoxFuture<'a, io::Result<Statvfs>> {
        unsupported("statvfs")
    }
}

/// A file opened by [`SftpFs::open`]; dropping it closes it.
pub trait SftpFile: Send + 'static {
    /// Up to `len` bytes from `offset`; fewer only at the end of the file, none past it.
    fn read(&mut self, offset: u64, len: u32) -> BoxFuture<'_, io::Result<Vec<u8>>>;

    /// Writes all of `data` at `offset` (at the end of the file if it was opened to append).
    fn write(&mut self, _offset: u64, _data: Vec<u8>) -> BoxFuture<'_, io::Result<()>> {
        unsupported("write")
    }

    /// The attributes of the open file.
    fn stat(&mut self) -> BoxFuture<'_, io::Result<FileAttributes>>;

    /// Changes the attributes `attrs` carries, as [`SftpFs::setstat`].
    fn setstat(&mut self, _attrs: FileAttributes) -> BoxFuture<'_, io::Result<()>> {
        unsupported("fsetstat")
    }

    /// Flushes the file to stable storage (`fsync@openssh.com`). Defaults to nothing to do.
    fn sync(&mut self) -> BoxFuture<'_, io::Result<()>> {
        future::ready(Ok(())).boxed()
    }

    /// Closes the file at the client's request, reporting what failed. A session that ends
    /// drops its files instead, after closing them when it ends cleanly.
    fn close(self: Box<Self>) -> BoxFuture<'static, io::Result<()>> {
        future::ready(Ok(())).boxed()
    }
}

/// A directory opened by [`SftpFs::open_dir`]; dropping it closes it.
pub trait SftpDir: Send + 'static {
    /// The next entries (a batch, any size up to a hundred or so); none at the end. An entry
    /// whose `longname` is empty gets an `ls -l` style one made from its attributes.
    fn next_batch(&mut self) -> BoxFuture<'_, io::Result<Vec<DirEntry>>>;
}

/// A refusal of an optional operation.
fn unsupported<'a, T: Send + 'a>(what: &str) -> BoxFuture<'a, io::Result<T>> {
    let error = io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{what} is not supported by this filesystem"),
    );
    future::ready(Err(error)).boxed()
}

/// Serves one SFTP session over `stream`, backed by `fs`, until the client ends the stream.
///
/// Returns `Ok` when the stream ends between two packets (the client closed the channel), an
/// error when it broke. Either way the session is over and every file and directory it had
/// open is closed. Dropping the future (killing the session) closes them too.
pub async fn serve<S>(stream: S, fs: Arc<dyn SftpFs>) -> Result<(), SftpError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve_within(stream, fs, None).await
}

/// [`serve`], with the session's open handles counted against its connection's and its user's
/// budgets as well as its own (`share`'s limits; [`MAX_HANDLES`] a session without one). An
/// open over a budget is refused with a status that names the limit; the session goes on.
pub async fn serve_within<S>(
    mut stream: S,
    fs: Arc<dyn SftpFs>,
    share: Option<ConnectionHandles>,
) -> Result<(), SftpError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut session = Session {
        fs,
        held: budget::Held::new(share),
        handles: HashMap::new(),
        next_handle: 0,
        requests: 0,
    };
    let result = session.run(&mut stream).await;
    let left_open = session.handles.len();
    session.close_all().await;
    debug!(
        requests = session.requests,
        left_open,
        ok = result.is_ok(),
        "sftp session ended"
    );
    result
}

/// What a handle refers to.
enum Node {
    File(Box<dyn SftpFile>),
    Dir(Box<dyn SftpDir>),
}

/// One client's session: its filesystem and its open handles.
///
/// Its methods take `&mut self` even to read: a `&Session` held across an await would need
/// `Session: Sync`, which an open file need not be.
struct Session {
    fs: Arc<dyn SftpFs>,
    /// What `handles` holds of the budgets: one per entry, given back as entries leave (and
    /// all of it when the session is dropped).
    held: budget::Held,
    handles: HashMap<String, Node>,
    /// Handles are never reused within a session, so a stale one cannot reach a newer file.
    next_handle: u64,
    requests: u64,
}

/// A request refused with a status code and a message for the client.
struct Refusal {
    code: StatusCode,
    message: String,
}

impl Refusal {
    fn new(code: StatusCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `what` failed with `error`: the status the error maps to.
    fn io(error: &io::Error, what: impl fmt::Display) -> Self {
        Self::new(status_code(error), format!("{what}: {error}"))
    }

    fn bad_handle() -> Self {
        Self::new(StatusCode::BadMessage, "invalid handle")
    }
}

type Reply = Result<Packet, Refusal>;

/// The SFTP status code for a filesystem error, as OpenSSH's `errno_to_portable`.
fn status_code(error: &io::Error) -> StatusCode {
    match error.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::EBADF | libc::ELOOP) => StatusCode::NoSuchFile,
        Some(libc::EPERM | libc::EACCES | libc::EFAULT) => StatusCode::PermissionDenied,
        Some(libc::ENAMETOOLONG | libc::EINVAL) => StatusCode::BadMessage,
        Some(libc::ENOSYS | libc::EOPNOTSUPP) => StatusCode::OpUnsupported,
        Some(_) => StatusCode::Failure,
        None => match error.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => StatusCode::NoSuchFile,
            io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
            io::ErrorKind::Unsupported => StatusCode::OpUnsupported,
            io::ErrorKind::InvalidInput => StatusCode::BadMessage,
            _ => StatusCode::Failure,
        },
    }
}

fn status(id: u32, code: StatusCode, message: impl Into<String>) -> Packet {
    Packet::Status(Status {
        id,
        status_code: code,
        error_message: message.into(),
        language_tag: "en".to_string(),
    })
}

fn ok(id: u32) -> Reply {
    Ok(status(id, StatusCode::Ok, "Success"))
}

/// A path operation of `fs` that answers with a plain status.
async fn fs_op<'a, F>(fs: &'a dyn SftpFs, id: u32, what: &str, path: &str, op: F) -> Reply
where
    F: FnOnce(&'a dyn SftpFs) -> BoxFuture<'a, io::Result<()>>,
{
    op(fs)
        .await
        .map_err(|e| Refusal::io(&e, format_args!("{what} {path}")))?;
    ok(id)
}

/// A reply naming one path, as for `SSH_FXP_REALPATH` and `SSH_FXP_READLINK`.
fn one_name(id: u32, path: String) -> Packet {
    Packet::Name(Name {
        id,
        files: vec![DirEntry {
            longname: path.clone(),
            filename: path,
            attrs: FileAttributes::default(),
        }],
    })
}

/// Decodes the payload of an extended request.
fn parse<T: serde::de::DeserializeOwned>(data: Vec<u8>, request: &str) -> Result<T, Refusal> {
    russh_sftp::de::from_bytes(&mut Bytes::from(data)).map_err(|e| {
        Refusal::new(
            StatusCode::BadMessage,
            format!("malformed {request} request: {e}"),
        )
    })
}

/// Encodes the payload of an extended reply.
fn extended_reply<T: serde::Serialize>(id: u32, value: &T) -> Reply {
    let data = russh_sftp::ser::to_bytes(value).map_err(|e| {
        Refusal::new(
            StatusCode::Failure,
            format!("could not encode the reply: {e}"),
        )
    })?;
    Ok(Packet::ExtendedReply(ExtendedReply {
        id,
        data: data.to_vec(),
    }))
}

/// The request ID of a raw packet, if it has one where requests keep it (right after the type).
fn raw_request_id(bytes: &[u8]) -> u32 {
    match bytes.get(1..5) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}

/// Whether `kind` is a packet type of protocol version 3 (a request or a reply).
fn known_packet_type(kind: u8) -> bool {
    matches!(kind, 1..=20 | 101..=105 | 200 | 201)
}

impl Session {
    async fn run<S>(&mut self, stream: &mut S) -> Result<(), SftpError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            let len = match stream.read_u32().await {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            if len > MAX_PACKET {
                return Err(SftpError::PacketTooLong { len });
            }
            let mut buf = vec![0; len as usize];
            stream.read_exact(&mut buf).await?;
            self.requests += 1;
            let reply = self.answer(Bytes::from(buf)).await?;
            stream.write_all(&reply).await?;
            stream.flush().await?;
        }
    }

    /// The encoded reply to one raw packet.
    async fn answer(&mut self, mut bytes: Bytes) -> Result<Bytes, SftpError> {
        let id = raw_request_id(&bytes);
        let kind = bytes.first().copied();
        let reply = match Packet::try_from(&mut bytes) {
            Ok(packet) => self.dispatch(packet).await,
            Err(e) => match kind {
                Some(kind) if !known_packet_type(kind) => status(
                    id,
                    StatusCode::OpUnsupported,
                    format!("packet type {kind} is not supported"),
                ),
                _ => status(id, StatusCode::BadMessage, format!("malformed packet: {e}")),
            },
        };
        match Bytes::try_from(reply) {
            Ok(bytes) => Ok(bytes),
            Err(e) => {
                warn!(error = %e, "could not encode an sftp reply");
                Bytes::try_from(status(
                    id,
                    StatusCode::Failure,
                    "could not encode the reply",
                ))
                .map_err(|e| SftpError::Encode(e.to_string()))
            }
        }
    }

    async fn dispatch(&mut self, packet: Packet) -> Packet {
        let id = packet.get_request_id();
        let reply = match packet {
            Packet::Init(_) => return Packet::Version(version()),
            Packet::Open(p) => self.open(p.id, p.filename, p.pflags, p.attrs).await,
            Packet::Close(p) => self.close(p.id, &p.handle).await,
            Packet::Read(p) => self.read(p.id, &p.handle, p.offset, p.len).await,
            Packet::Write(p) => self.write(p.id, &p.handle, p.offset, p.data).await,
            Packet::Lstat(p) => self.stat(p.id, &p.path, false).await,
            Packet::Stat(p) => self.stat(p.id, &p.path, true).await,
            Packet::Fstat(p) => self.fstat(p.id, &p.handle).await,
            Packet::SetStat(p) => self.setstat(p.id, &p.path, p.attrs).await,
            Packet::FSetStat(p) => self.fsetstat(p.id, &p.handle, p.attrs).await,
            Packet::OpenDir(p) => self.opendir(p.id, &p.path).await,
            Packet::ReadDir(p) => self.readdir(p.id, &p.handle).await,
            Packet::Remove(p) => {
                fs_op(&*self.fs, p.id, "remove", &p.filename, |fs| {
                    fs.remove(&p.filename)
                })
                .await
            }
            Packet::MkDir(p) => {
                fs_op(&*self.fs, p.id, "mkdir", &p.path, |fs| {
                    fs.mkdir(&p.path, p.attrs)
                })
                .await
            }
            Packet::RmDir(p) => {
                fs_op(&*self.fs, p.id, "rmdir", &p.path, |fs| fs.rmdir(&p.path)).await
            }
            Packet::RealPath(p) => self.realpath(p.id, &p.path).await,
            Packet::Rename(p) => self.rename(p.id, &p.oldpath, &p.newpath, false).await,
            Packet::ReadLink(p) => self.readlink(p.id, &p.path).await,
            // OpenSSH's order: the target first, then the link (see the module docs).
            Packet::Symlink(p) => {
                let (target, link) = (&p.linkpath, &p.targetpath);
                fs_op(&*self.fs, p.id, "symlink", link, |fs| {
                    fs.symlink(target, link)
                })
                .await
            }
            Packet::Extended(p) => self.extended(p.id, &p.request, p.data).await,
            Packet::Version(_)
            | Packet::Status(_)
            | Packet::Handle(_)
            | Packet::Data(_)
            | Packet::Name(_)
            | Packet::Attrs(_)
            | Packet::ExtendedReply(_) => Err(Refusal::new(
                StatusCode::BadMessage,
                "a client may only send requests",
            )),
        };
        reply.unwrap_or_else(|refusal| status(id, refusal.code, refusal.message))
    }

    /// Stores `node` under a new handle, counted against the budgets; the refusal names the
    /// limit that is reached (and `node` is dropped, which closes it).
    fn insert(&mut self, node: Node) -> Result<String, Refusal> {
        self.held
            .take()
            .map_err(|text| Refusal::new(StatusCode::Failure, text))?;
        self.next_handle += 1;
        let handle = format!("h{}", self.next_handle);
        self.handles.insert(handle.clone(), node);
        Ok(handle)
    }

    /// Refuses early (before the filesystem is asked) when the session's own budget is spent.
    fn room(&self) -> Result<(), Refusal> {
        let limit = self.held.per_session();
        if self.handles.len() >= limit {
            return Err(Refusal::new(
                StatusCode::Failure,
                format!(
                    "too many open handles: max_sftp_handles_per_session ({limit}) reached; close some"
                ),
            ));
        }
        Ok(())
    }

    /// Takes `handle` out of the table, giving its budget back.
    fn remove(&mut self, handle: &str) -> Option<Node> {
        let node = self.handles.remove(handle)?;
        self.held.give_back_one();
        Some(node)
    }

    fn file(&mut self, handle: &str) -> Result<&mut Box<dyn SftpFile>, Refusal> {
        match self.handles.get_mut(handle) {
            Some(Node::File(file)) => Ok(file),
            _ => Err(Refusal::bad_handle()),
        }
    }

    async fn open(
        &mut self,
        id: u32,
        path: String,
        flags: OpenFlags,
        attrs: FileAttributes,
    ) -> Reply {
        self.room()?;
        let file = self
            .fs
            .open(&path, flags, attrs)
            .await
            .map_err(|e| Refusal::io(&e, format_args!("open {path}")))?;
        let handle = self.insert(Node::File(file))?;
        Ok(Packet::Handle(Handle { id, handle }))
    }

    async fn opendir(&mut self, id: u32, path: &str) -> Reply {
        self.room()?;
        let dir = self
            .fs
            .open_dir(path)
            .await
            .map_err(|e| Refusal::io(&e, format_args!("opendir {path}")))?;
        let handle = self.insert(Node::Dir(dir))?;
        Ok(Packet::Handle(Handle { id, handle }))
    }

    async fn close(&mut self, id: u32, handle: &str) -> Reply {
        match self.remove(handle) {
            Some(Node::File(file)) => file
                .close()
                .await
                .map_err(|e| Refusal::io(&e, "close"))
                .and_then(|()| ok(id)),
            Some(Node::Dir(_)) => ok(id),
            None => Err(Refusal::bad_handle()),
        }
    }

    async fn read(&mut self, id: u32, handle: &str, offset: u64, len: u32) -> Reply {
        let len = len.min(MAX_READ);
        let data = self
            .file(handle)?
            .read(offset, len)
            .await
            .map_err(|e| Refusal::io(&e, "read"))?;
        if data.is_empty() && len > 0 {
            return Err(Refusal::new(StatusCode::Eof, "end of file"));
        }
        Ok(Packet::Data(Data { id, data }))
    }

    async fn write(&mut self, id: u32, handle: &str, offset: u64, data: Vec<u8>) -> Reply {
        self.file(handle)?
            .write(offset, data)
            .await
            .map_err(|e| Refusal::io(&e, "write"))?;
        ok(id)
    }

    async fn stat(&mut self, id: u32, path: &str, follow: bool) -> Reply {
        let (what, attrs) = if follow {
            ("stat", self.fs.stat(path).await)
        } else {
            ("lstat", self.fs.lstat(path).await)
        };
        let attrs = attrs.map_err(|e| Refusal::io(&e, format_args!("{what} {path}")))?;
        Ok(Packet::Attrs(Attrs { id, attrs }))
    }

    async fn fstat(&mut self, id: u32, handle: &str) -> Reply {
        let attrs = self
            .file(handle)?
            .stat()
            .await
            .map_err(|e| Refusal::io(&e, "fstat"))?;
        Ok(Packet::Attrs(Attrs { id, attrs }))
    }

    async fn setstat(&mut self, id: u32, path: &str, attrs: FileAttributes) -> Reply {
        fs_op(&*self.fs, id, "setstat", path, |fs| fs.setstat(path, attrs)).await
    }

    async fn fsetstat(&mut self, id: u32, handle: &str, attrs: FileAttributes) -> Reply {
        self.file(handle)?
            .setstat(attrs)
            .await
            .map_err(|e| Refusal::io(&e, "fsetstat"))?;
        ok(id)
    }

    async fn readdir(&mut self, id: u32, handle: &str) -> Reply {
        let Some(Node::Dir(dir)) = self.handles.get_mut(handle) else {
            return Err(Refusal::bad_handle());
        };
        let mut files = dir
            .next_batch()
            .await
            .map_err(|e| Refusal::io(&e, "readdir"))?;
        if files.is_empty() {
            return Err(Refusal::new(StatusCode::Eof, "end of directory"));
        }
        let now = unix_now();
        for file in files.iter_mut().filter(|f| f.longname.is_empty()) {
            let user = file.attrs.uid.unwrap_or(0).to_string();
            let group = file.attrs.gid.unwrap_or(0).to_string();
            file.longname = longname(&file.filename, &file.attrs, 1, &user, &group, now);
        }
        Ok(Packet::Name(Name { id, files }))
    }

    async fn realpath(&mut self, id: u32, path: &str) -> Reply {
        let real = self
            .fs
            .realpath(path)
            .await
            .map_err(|e| Refusal::io(&e, format_args!("realpath {path}")))?;
        Ok(one_name(id, real))
    }

    async fn readlink(&mut self, id: u32, path: &str) -> Reply {
        let target = self
            .fs
            .readlink(path)
            .await
            .map_err(|e| Refusal::io(&e, format_args!("readlink {path}")))?;
        Ok(one_name(id, target))
    }

    async fn rename(&mut self, id: u32, from: &str, to: &str, replace: bool) -> Reply {
        self.fs
            .rename(from, to, replace)
            .await
            .map_err(|e| Refusal::io(&e, format_args!("rename {from} to {to}")))?;
        ok(id)
    }

    async fn extended(&mut self, id: u32, request: &str, data: Vec<u8>) -> Reply {
        match request {
            "limits@openssh.com" => extended_reply(
                id,
                &LimitsExtension {
                    max_packet_len: u64::from(MAX_PACKET),
                    max_read_len: u64::from(MAX_READ),
                    max_write_len: u64::from(MAX_READ),
                    max_open_handles: self.held.per_session() as u64,
                },
            ),
            // Same payload as hardlink: two paths.
            "posix-rename@openssh.com" => {
                let p: HardlinkExtension = parse(data, request)?;
                self.rename(id, &p.oldpath, &p.newpath, true).await
            }
            "hardlink@openssh.com" => {
                let p: HardlinkExtension = parse(data, request)?;
                self.fs
                    .hardlink(&p.oldpath, &p.newpath)
                    .await
                    .map_err(|e| {
                        Refusal::io(&e, format_args!("hardlink {} to {}", p.newpath, p.oldpath))
                    })?;
                ok(id)
            }
            "fsync@openssh.com" => {
                let p: FsyncExtension = parse(data, request)?;
                self.file(&p.handle)?
                    .sync()
                    .await
                    .map_err(|e| Refusal::io(&e, "fsync"))?;
                ok(id)
            }
            "statvfs@openssh.com" => {
                let p: StatvfsExtension = parse(data, request)?;
                let stats = self
                    .fs
                    .statvfs(&p.path)
                    .await
                    .map_err(|e| Refusal::io(&e, format_args!("statvfs {}", p.path)))?;
                extended_reply(id, &stats)
            }
            "expand-path@openssh.com" => {
                let p: ExpandPathExtension = parse(data, request)?;
                let path = match p.path.as_str() {
                    "~" => "",
                    path => match path.strip_prefix("~/") {
                        Some(rest) => rest,
                        None if path.starts_with('~') => {
                            return Err(Refusal::new(
                                StatusCode::NoSuchFile,
                                format!("expand-path {path}: only ~ and ~/ can be expanded here"),
                            ))
                        }
                        None => path,
                    },
                };
                self.realpath(id, path).await
            }
            other => Err(Refusal::new(
                StatusCode::OpUnsupported,
                format!("extension {other} is not supported"),
            )),
        }
    }

    /// Closes what the session left open: files through [`SftpFile::close`], so a virtual
    /// filesystem can commit them; directories by dropping them.
    async fn close_all(&mut self) {
        // Their budget goes back when the session is dropped, right after.
        for (_, node) in self.handles.drain() {
            if let Node::File(file) = node {
                if let Err(e) = file.close().await {
                    warn!(error = %e, "closing a file the sftp client left open failed");
                }
            }
        }
    }
}

/// The reply to `SSH_FXP_INIT`: version 3 and the extensions served.
fn version() -> Version {
    let mut version = Version::new();
    for (name, revision) in [
        ("posix-rename@openssh.com", "1"),
        ("statvfs@openssh.com", "2"),
        ("hardlink@openssh.com", "1"),
        ("fsync@openssh.com", "1"),
        ("limits@openssh.com", "1"),
        ("expand-path@openssh.com", "1"),
    ] {
        version
            .extensions
            .insert(name.to_string(), revision.to_string());
    }
    version
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// An `ls -l` line, as OpenSSH's `ls_file`: mode, links, owner, group, size, date, name.
fn longname(
    name: &str,
    attrs: &FileAttributes,
    nlink: u64,
    user: &str,
    group: &str,
    now: i64,
) -> String {
    let mode = attrs.permissions.unwrap_or(0);
    let size = attrs.size.unwrap_or(0);
    let mtime = i64::from(attrs.mtime.unwrap_or(0));
    format!(
        "{} {nlink:>3} {user:<8} {group:<8} {size:>8} {} {name}",
        mode_string(mode),
        date_string(mtime, now)
    )
}

/// `drwxr-xr-x` for a mode, with the set-ID and sticky bits as `ls` shows them, and the
/// trailing space BSD's `strmode` leaves for an ACL mark.
fn mode_string(mode: u32) -> String {
    let kind = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFREG => '-',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        _ => '?',
    };
    let bit = |mask: u32, c: char| if mode & mask != 0 { c } else { '-' };
    let exec =
        |x: u32, special: u32, set: char, unset: char| match (mode & x != 0, mode & special != 0) {
            (true, true) => set,
            (false, true) => unset,
            (true, false) => 'x',
            (false, false) => '-',
        };
    [
        kind,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        exec(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        exec(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        exec(0o001, 0o1000, 't', 'T'),
        ' ',
    ]
    .iter()
    .collect()
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Jan  5 12:34` for a time within six months of now, `Jan  5  2020` otherwise, in the
/// server's local time zone, as `ls` and OpenSSH's `sftp-server` print it.
fn date_string(time: i64, now: i64) -> String {
    let Some(tm) = local_time(time) else {
        return "?".to_string();
    };
    let month = usize::try_from(tm.tm_mon)
        .ok()
        .and_then(|m| MONTHS.get(m))
        .copied()
        .unwrap_or("???");
    if now.saturating_sub(time) < 365 * 24 * 60 * 60 / 2 {
        format!(
            "{month} {:>2} {:02}:{:02}",
            tm.tm_mday, tm.tm_hour, tm.tm_min
        )
    } else {
        format!(
            "{month} {:>2}  {}",
            tm.tm_mday,
            i64::from(tm.tm_year) + 1900
        )
    }
}

fn local_time(time: i64) -> Option<libc::tm> {
    let time = libc::time_t::try_from(time).ok()?;
    // SAFETY: `tm` is plain integers and a pointer (tm_zone) for which all-zero is valid;
    // localtime_r only writes into it and is thread safe.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call.
    let result = unsafe { libc::localtime_r(&time, &mut tm) };
    (!result.is_null()).then_some(tm)
}

/// The local filesystem, as the server's own user, starting in a home directory.
///
/// Relative paths resolve against the home directory; absolute paths, `..` and symbolic links
/// are followed as given, as OpenSSH's `sftp-server` does: this is not a jail, the operating
/// system's permissions are the only limit.
#[derive(Debug, Clone)]
pub struct LocalFs {
    home: PathBuf,
}

impl LocalFs {
    /// The local filesystem with `home` as the directory relative paths start from.
    pub fn new(home: impl Into<PathBuf>) -> Self {
        Self { home: home.into() }
    }

    /// The directory relative paths start from.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The local path for a client's path.
    fn resolve(&self, path: &str) -> PathBuf {
        if path.is_empty() {
            self.home.clone()
        } else {
            self.home.join(path)
        }
    }
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T, F>(work: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| io::Error::other(format!("a filesystem task failed: {e}")))?
}

/// SFTP version 3 carries times as 32-bit seconds.
fn secs32(secs: i64) -> u32 {
    u32::try_from(secs.max(0)).unwrap_or(u32::MAX)
}

/// The SFTP attributes of a file: size, owner, the whole `st_mode` (type bits included, which
/// clients read), and times.
fn attributes(meta: &Metadata) -> FileAttributes {
    FileAttributes {
        size: Some(meta.size()),
        uid: Some(meta.uid()),
        user: None,
        gid: Some(meta.gid()),
        group: None,
        permissions: Some(meta.mode()),
        atime: Some(secs32(meta.atime())),
        mtime: Some(secs32(meta.mtime())),
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message.to_string())
}

fn time_spec(secs: Option<u32>) -> TimeSpec {
    match secs {
        Some(secs) => TimeSpec::new(i64::from(secs), 0),
        None => TimeSpec::UTIME_OMIT,
    }
}

/// Applies `attrs` to `path` in OpenSSH's order: size, permissions, times, owner.
fn set_path_attributes(path: &Path, attrs: &FileAttributes) -> io::Result<()> {
    if let Some(size) = attrs.size {
        let size = i64::try_from(size).map_err(|_| invalid("size too large"))?;
        nix::unistd::truncate(path, size)?;
    }
    if let Some(mode) = attrs.permissions {
        fs::set_permissions(path, Permissions::from_mode(mode & 0o7777))?;
    }
    if attrs.atime.is_some() || attrs.mtime.is_some() {
        utimensat(
            None,
            path,
            &time_spec(attrs.atime),
            &time_spec(attrs.mtime),
            UtimensatFlags::FollowSymlink,
        )?;
    }
    if attrs.uid.is_some() || attrs.gid.is_some() {
        std::os::unix::fs::chown(path, attrs.uid, attrs.gid)?;
    }
    Ok(())
}

fn set_file_attributes(file: &fs::File, attrs: &FileAttributes) -> io::Result<()> {
    if let Some(size) = attrs.size {
        file.set_len(size)?;
    }
    if let Some(mode) = attrs.permissions {
        file.set_permissions(Permissions::from_mode(mode & 0o7777))?;
    }
    if attrs.atime.is_some() || attrs.mtime.is_some() {
        let at = |secs: u32| UNIX_EPOCH + Duration::from_secs(u64::from(secs));
        let mut times = FileTimes::new();
        if let Some(atime) = attrs.atime {
            times = times.set_accessed(at(atime));
        }
        if let Some(mtime) = attrs.mtime {
            times = times.set_modified(at(mtime));
        }
        file.set_times(times)?;
    }
    if attrs.uid.is_some() || attrs.gid.is_some() {
        std::os::unix::fs::fchown(file, attrs.uid, attrs.gid)?;
    }
    Ok(())
}

/// `rename` that fails with `AlreadyExists` rather than replace `to`.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{renameat2, RenameFlags};
        match renameat2(None, from, None, to, RenameFlags::RENAME_NOREPLACE) {
            // EINVAL: this filesystem cannot rename without replacing; check, then rename.
            Err(nix::errno::Errno::EINVAL) => {}
            result => return result.map_err(io::Error::from),
        }
    }
    match fs::symlink_metadata(to) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the target already exists",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::rename(from, to),
        Err(e) => Err(e),
    }
}

impl SftpFs for LocalFs {
    fn realpath<'a>(&'a self, path: &'a str) -> BoxFuture<'a, io::Result<String>> {
        let path = self.resolve(path);
        blocking(move || {
            let real = match fs::canonicalize(&path) {
                Ok(real) => real,
                // A name to be created: its directory must exist.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match (path.parent(), path.file_name()) {
                        (Some(parent), Some(name)) => fs::canonicalize(parent)?.join(name),
                        _ => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            Ok(real.to_string_lossy().into_owned())
        })
        .boxed()
    }

    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, io::Result<FileAttributes>> {
        let path = self.resolve(path);
        blocking(move || fs::metadata(&path).map(|m| attributes(&m))).boxed()
    }

    fn lstat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, io::Result<FileAttributes>> {
        let path = self.resolve(path);
        blocking(move || fs::symlink_metadata(&path).map(|m| attributes(&m))).boxed()
    }

    fn open<'a>(
        &'a self,
        path: &'a str,
        flags: OpenFlags,
        attrs: FileAttributes,
    ) -> BoxFuture<'a, io::Result<Box<dyn SftpFile>>> {
        let path = self.resolve(path);
        blocking(move || {
            // The flags go to open(2) as they are, as OpenSSH's sftp-server passes them: std's
            // own create/truncate/append rules refuse combinations that open(2) allows.
            let mut extra = 0;
            for (flag, bit) in [
                (OpenFlags::APPEND, libc::O_APPEND),
                (OpenFlags::CREATE, libc::O_CREAT),
                (OpenFlags::TRUNCATE, libc::O_TRUNC),
                (OpenFlags::EXCLUDE, libc::O_EXCL),
            ] {
                if flags.contains(flag) {
                    extra |= bit;
                }
            }
            let write = flags.contains(OpenFlags::WRITE);
            let file = fs::OpenOptions::new()
                .read(flags.contains(OpenFlags::READ) || !write)
                .write(write)
                .custom_flags(extra)
                .mode(attrs.permissions.map_or(0o666, |p| p & 0o7777))
                .open(&path)?;
            Ok(Box::new(LocalFile {
                file: Arc::new(file),
            }) as Box<dyn SftpFile>)
        })
        .boxed()
    }

    fn open_dir<'a>(&'a self, path: &'a str) -> BoxFuture<'a, io::Result<Box<dyn SftpDir>>> {
        let path = self.resolve(path);
        blocking(move || {
            let entries = fs::read_dir(&path)?;
            Ok(Box::new(LocalDir {
                path,
                entries: Some(entries),
                dots_sent: false,
                names: Some(Names::default()),
            }) as Box<dyn SftpDir>)
        })
        .boxed()
    }

    fn setstat<'a>(
        &'a self,
        path: &'a str,
        attrs: FileAttributes,
    ) -> BoxFuture<'a, io::Result<()>> {
        let path = self.resolve(path);
        blocking(move || set_path_attributes(&path, &attrs)).boxed()
    }

    fn mkdir<'a>(&'a self, path: &'a str, attrs: FileAttributes) -> BoxFuture<'a, io::Result<()>> {
        let path = self.resolve(path);
        let mode = attrs.permissions.map_or(0o777, |p| p & 0o7777);
        blocking(move || {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new().mode(mode).create(&path)
        })
        .boxed()
    }

    fn rmdir<'a>(&'a self, path: &'a str) -> BoxFuture<'a, io::Result<()>> {
        let path = self.resolve(path);
        blocking(move || fs::remove_dir(&path)).boxed()
    }

    fn remove<'a>(&'a self, path: &'a str) -> BoxFuture<'a, io::Result<()>> {
        let path = self.resolve(path);
        blocking(move || fs::remove_file(&path)).boxed()
    }

    fn rename<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        replace: bool,
    ) -> BoxFuture<'a, io::Result<()>> {
        let (from, to) = (self.resolve(from), self.resolve(to));
        blocking(move || {
            if replace {
                fs::rename(&from, &to)
            } else {
                rename_no_replace(&from, &to)
            }
        })
        .boxed()
    }

    fn readlink<'a>(&'a self, path: &'a str) -> BoxFuture<'a, io::Result<String>> {
        let path = self.resolve(path);
        blocking(move || Ok(fs::read_link(&path)?.to_string_lossy().into_owned())).boxed()
    }

    fn symlink<'a>(&'a self, target: &'a str, link: &'a str) -> BoxFuture<'a, io::Result<()>> {
        let (target, link) = (PathBuf::from(target), self.resolve(link));
        blocking(move || std::os::unix::fs::symlink(&target, &link)).boxed()
    }

    fn hardlink<'a>(&'a self, old: &'a str, new: &'a str) -> BoxFuture<'a, io::Result<()>> {
        let (old, new) = (self.resolve(old), self.resolve(new));
        blocking(move || fs::hard_link(&old, &new)).boxed()
    }

    fn statvfs<'a>(&'a self, path: &'a str) -> BoxFuture<'a, io::Result<Statvfs>> {
        let path = self.resolve(path);
        blocking(move || {
            let s = nix::sys::statvfs::statvfs(&path)?;
            let flags = s.flags();
            let mut mount_flags = 0;
            // The values of OpenSSH's SSH2_FXE_STATVFS_ST_RDONLY and _ST_NOSUID.
            if flags.contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
                mount_flags |= 0x1;
            }
            if flags.contains(nix::sys::statvfs::FsFlags::ST_NOSUID) {
                mount_flags |= 0x2;
            }
            #[allow(clippy::useless_conversion)] // the field widths differ between platforms
            Ok(Statvfs {
                block_size: u64::from(s.block_size()),
                fragment_size: u64::from(s.fragment_size()),
                blocks: u64::from(s.blocks()),
                blocks_free: u64::from(s.blocks_free()),
                blocks_avail: u64::from(s.blocks_available()),
                inodes: u64::from(s.files()),
                inodes_free: u64::from(s.files_free()),
                inodes_avail: u64::from(s.files_available()),
                fs_id: u64::from(s.filesystem_id()),
                flags: mount_flags,
                name_max: u64::from(s.name_max()),
            })
        })
        .boxed()
    }
}

/// A local file. Shared with the blocking task that reads or writes it, so a session that
/// ends mid-call closes it when that call returns.
struct LocalFile {
    file: Arc<fs::File>,
}

impl SftpFile for LocalFile {
    fn read(&mut self, offset: u64, len: u32) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        let file = Arc::clone(&self.file);
        blocking(move || {
            // One read, as OpenSSH's: a regular file returns short only at its end, and a
            // pipe or device must not be waited on for more than it has.
            let mut buf = vec![0; len as usize];
            let n = loop {
                match file.read_at(&mut buf, offset) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    result => break result?,
                }
            };
            buf.truncate(n);
            Ok(buf)
        })
        .boxed()
    }

    fn write(&mut self, offset: u64, data: Vec<u8>) -> BoxFuture<'_, io::Result<()>> {
        let file = Arc::clone(&self.file);
        blocking(move || file.write_all_at(&data, offset)).boxed()
    }

    fn stat(&mut self) -> BoxFuture<'_, io::Result<FileAttributes>> {
        let file = Arc::clone(&self.file);
        blocking(move || file.metadata().map(|m| attributes(&m))).boxed()
    }

    fn setstat(&mut self, attrs: FileAttributes) -> BoxFuture<'_, io::Result<()>> {
        let file = Arc::clone(&self.file);
        blocking(move || set_file_attributes(&file, &attrs)).boxed()
    }

    fn sync(&mut self) -> BoxFuture<'_, io::Result<()>> {
        let file = Arc::clone(&self.file);
        blocking(move || file.sync_all()).boxed()
    }
}

/// User and group names by ID, looked up once per listing.
#[derive(Default)]
struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    fn user(&mut self, uid: u32) -> &str {
        self.users
            .entry(uid)
            .or_insert_with(|| match User::from_uid(Uid::from_raw(uid)) {
                Ok(Some(user)) => user.name,
                _ => uid.to_string(),
            })
    }

    fn group(&mut self, gid: u32) -> &str {
        self.groups
            .entry(gid)
            .or_insert_with(|| match Group::from_gid(Gid::from_raw(gid)) {
                Ok(Some(group)) => group.name,
                _ => gid.to_string(),
            })
    }

    /// A listing entry for `name` with its (not followed) metadata.
    fn entry(&mut self, name: String, meta: &Metadata, now: i64) -> DirEntry {
        let attrs = attributes(meta);
        let user = self.user(meta.uid()).to_string();
        let group = self.group(meta.gid());
        let longname = longname(&name, &attrs, meta.nlink(), &user, group, now);
        DirEntry {
            filename: name,
            longname,
            attrs,
        }
    }
}

/// A local directory being listed. The iterator and the name cache move into each blocking
/// batch and back; `None` while a batch runs.
struct LocalDir {
    path: PathBuf,
    entries: Option<fs::ReadDir>,
    /// `.` and `..` come first, as readdir(3) gives them and OpenSSH's clients expect.
    dots_sent: bool,
    names: Option<Names>,
}

impl SftpDir for LocalDir {
    fn next_batch(&mut self) -> BoxFuture<'_, io::Result<Vec<DirEntry>>> {
        async move {
            let (Some(mut entries), Some(mut names)) = (self.entries.take(), self.names.take())
            else {
                // A batch failed or was cancelled half way: the listing is over.
                return Ok(Vec::new());
            };
            let path = self.path.clone();
            let dots = !std::mem::replace(&mut self.dots_sent, true);
            let (entries, names, batch) = blocking(move || {
                let now = unix_now();
                let mut batch = Vec::with_capacity(READDIR_BATCH);
                if dots {
                    for (name, path) in [(".", path.clone()), ("..", path.join(".."))] {
                        if let Ok(meta) = fs::symlink_metadata(&path) {
                            batch.push(names.entry(name.to_string(), &meta, now));
                        }
                    }
                }
                while batch.len() < READDIR_BATCH {
                    let Some(entry) = entries.next() else { break };
                    // An entry that vanished since the directory was read is skipped.
                    let Ok(entry) = entry else { continue };
                    let Ok(meta) = entry.metadata() else { continue };
                    let name = entry.file_name().to_string_lossy().into_owned();
                    batch.push(names.entry(name, &meta, now));
                }
                Ok((entries, names, batch))
            })
            .await?;
            self.entries = Some(entries);
            self.names = Some(names);
            Ok(batch)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_strings_read_like_ls() {
        assert_eq!(mode_string(libc::S_IFDIR | 0o755), "drwxr-xr-x ");
        assert_eq!(mode_string(libc::S_IFREG | 0o644), "-rw-r--r-- ");
        assert_eq!(mode_string(libc::S_IFLNK | 0o777), "lrwxrwxrwx ");
        assert_eq!(mode_string(libc::S_IFREG | 0o4755), "-rwsr-xr-x ");
        assert_eq!(mode_string(libc::S_IFDIR | 0o1777), "drwxrwxrwt ");
        assert_eq!(mode_string(libc::S_IFREG | 0o2644), "-rw-r-Sr-- ");
    }

    #[test]
    fn longname_lines_up_as_openssh_ls_l() {
        let attrs = FileAttributes {
            size: Some(4096),
            permissions: Some(libc::S_IFDIR | 0o755),
            mtime: Some(0),
            ..Default::default()
        };
        // Far from "now": the year is shown instead of the time of day.
        let line = longname("dir", &attrs, 2, "alice", "staff", 400 * 24 * 3600);
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[..5], ["drwxr-xr-x", "2", "alice", "staff", "4096"]);
        assert_eq!(fields.last(), Some(&"dir"));
        assert!(
            line.starts_with("drwxr-xr-x    2 alice    staff        4096 "),
            "{line}"
        );
        assert!(fields[7] == "1970" || fields[7] == "1969", "{line}");
    }

    #[test]
    fn errors_map_to_the_status_codes_openssh_uses() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(status_code(&os(libc::ENOENT)), StatusCode::NoSuchFile);
        assert_eq!(status_code(&os(libc::EACCES)), StatusCode::PermissionDenied);
        assert_eq!(status_code(&os(libc::EPERM)), StatusCode::PermissionDenied);
        assert_eq!(status_code(&os(libc::EEXIST)), StatusCode::Failure);
        let kind = |k| io::Error::new(k, "virtual");
        assert_eq!(
            status_code(&kind(io::ErrorKind::NotFound)),
            StatusCode::NoSuchFile
        );
        assert_eq!(
            status_code(&kind(io::ErrorKind::Unsupported)),
            StatusCode::OpUnsupported
        );
        assert_eq!(
            status_code(&kind(io::ErrorKind::Other)),
            StatusCode::Failure
        );
    }
}
