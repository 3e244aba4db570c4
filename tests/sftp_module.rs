//! The in-process SFTP server driven by the russh-sftp client (and by hand-written packets where
//! a test needs to cut the stream at a chosen byte) over an in-memory duplex stream, against
//! `LocalFs` in a temporary directory.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use russh_sftp::client::error::Error as ClientError;
use russh_sftp::client::{RawSftpSession, SftpSession};
use russh_sftp::protocol::{
    FileAttributes, Init, Open, OpenDir, OpenFlags, Packet, StatusCode, Write,
};
use sshvisor::session::sftp::{
    serve, DirEntry, LocalFs, SftpDir, SftpError, SftpFile, SftpFs, MAX_HANDLES,
};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);

struct Server {
    dir: TempDir,
    task: JoinHandle<Result<(), SftpError>>,
}

impl Server {
    /// The canonical path of the home directory.
    fn home(&self) -> PathBuf {
        self.dir.path().canonicalize().unwrap()
    }

    /// How many file descriptors of this process point into the home directory.
    fn open_fds(&self) -> usize {
        let home = self.home();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.starts_with(&home))
            .count()
    }

    async fn ended(self) -> (Result<(), SftpError>, Self) {
        let Server { dir, task } = self;
        let result = timeout(LIMIT, task)
            .await
            .expect("serve did not return after its stream ended")
            .expect("serve panicked");
        let done = Server {
            dir,
            task: tokio::spawn(async { Ok(()) }),
        };
        (result, done)
    }
}

/// A server on one end of a duplex stream; the other end is returned.
fn start() -> (Server, DuplexStream) {
    let dir = tempfile::tempdir().unwrap();
    let (client, server) = tokio::io::duplex(1 << 20);
    let fs = Arc::new(LocalFs::new(dir.path()));
    let task = tokio::spawn(serve(server, fs));
    (Server { dir, task }, client)
}

async fn client() -> (Server, SftpSession) {
    let (server, stream) = start();
    let sftp = timeout(LIMIT, SftpSession::new(stream))
        .await
        .unwrap()
        .unwrap();
    (server, sftp)
}

/// The status code of a request that must have failed.
fn code<T>(result: Result<T, ClientError>) -> StatusCode {
    match result {
        Ok(_) => panic!("the request succeeded"),
        Err(e) => status_of(e),
    }
}

fn status_of(error: ClientError) -> StatusCode {
    match error {
        ClientError::Status(status) => status.status_code,
        other => panic!("expected a status, got {other:?}"),
    }
}

/// Bytes that are not all the same, so a misplaced chunk shows.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn a_multi_mib_file_comes_back_identical() {
    let (server, sftp) = client().await;
    let data = pattern(5 * 1024 * 1024 + 123);

    let mut file = sftp.create("big.bin").await.unwrap();
    file.write_all(&data).await.unwrap();
    file.shutdown().await.unwrap();
    drop(file);

    let on_disk = std::fs::read(server.home().join("big.bin")).unwrap();
    assert!(
        on_disk == data,
        "the file on disk differs from what was sent"
    );
    assert_eq!(
        sftp.metadata("big.bin").await.unwrap().size,
        Some(data.len() as u64)
    );
    let back = sftp.read("big.bin").await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(
        back == data,
        "the file read back differs from what was sent"
    );

    sftp.close().await.unwrap();
    drop(sftp);
    let (result, server) = server.ended().await;
    result.unwrap();
    assert_eq!(server.open_fds(), 0);
}

#[tokio::test]
async fn directories_are_made_listed_renamed_and_removed() {
    let (server, sftp) = client().await;
    sftp.create_dir("d").await.unwrap();
    assert!(server.home().join("d").is_dir());
    for name in ["a", "b"] {
        let mut f = sftp.create(format!("d/{name}")).await.unwrap();
        f.write_all(name.as_bytes()).await.unwrap();
        f.shutdown().await.unwrap();
    }

    let mut names: Vec<String> = sftp
        .read_dir("d")
        .await
        .unwrap()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    // The client's iterator hides `.` and `..`; the batches test sees them.
    assert_eq!(names, ["a", "b"]);

    sftp.rename("d/a", "d/c").await.unwrap();
    assert_eq!(std::fs::read(server.home().join("d/c")).unwrap(), b"a");
    // SSH_FXP_RENAME does not replace; posix-rename would.
    let err = sftp.rename("d/b", "d/c").await.unwrap_err();
    assert_eq!(status_of(err), StatusCode::Failure);
    assert_eq!(std::fs::read(server.home().join("d/c")).unwrap(), b"a");

    let err = sftp.remove_dir("d").await.unwrap_err();
    assert_eq!(status_of(err), StatusCode::Failure, "d is not empty");
    sftp.remove_file("d/b").await.unwrap();
    sftp.remove_file("d/c").await.unwrap();
    sftp.remove_dir("d").await.unwrap();
    assert!(!sftp.try_exists("d").await.unwrap());
    assert!(!server.home().join("d").exists());
}

#[tokio::test]
async fn readdir_comes_in_batches_with_ls_style_longnames_then_eof() {
    let (server, stream) = start();
    for i in 0..250 {
        std::fs::write(server.home().join(format!("f{i:03}")), b"12345").unwrap();
    }
    let raw = RawSftpSession::new(stream);
    raw.init().await.unwrap();
    let handle = raw.opendir(".").await.unwrap().handle;
    let mut entries = HashMap::new();
    let mut batches = 0;
    loop {
        match raw.readdir(handle.as_str()).await {
            Ok(name) => {
                batches += 1;
                assert!(name.files.len() <= 100, "a batch of {}", name.files.len());
                for f in name.files {
                    entries.insert(f.filename, f.longname);
                }
            }
            Err(e) => {
                assert_eq!(status_of(e), StatusCode::Eof);
                break;
            }
        }
    }
    assert!(batches >= 3, "{batches} batches");
    assert_eq!(entries.len(), 252, "250 files, . and ..");
    let line = &entries["f007"];
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert!(fields[0].starts_with("-rw"), "{line}");
    assert_eq!(fields[4], "5", "{line}");
    assert_eq!(fields.last(), Some(&"f007"), "{line}");
    assert!(entries["."].starts_with('d'), "{}", entries["."]);
    // Still EOF when asked again, and the handle closes.
    assert_eq!(
        status_of(raw.readdir(handle.as_str()).await.unwrap_err()),
        StatusCode::Eof
    );
    raw.close(handle).await.unwrap();
}

#[tokio::test]
async fn stat_reports_sizes_permissions_and_times_and_setstat_changes_them() {
    let (server, sftp) = client().await;
    let attrs = FileAttributes {
        permissions: Some(0o600),
        ..Default::default()
    };
    let mut f = sftp
        .open_with_flags_and_attributes(
            "f",
            OpenFlags::CREATE | OpenFlags::WRITE | OpenFlags::TRUNCATE,
            attrs,
        )
        .await
        .unwrap();
    f.write_all(&[7; 1000]).await.unwrap();
    f.flush().await.unwrap();
    let meta = f.metadata().await.unwrap();
    assert_eq!(meta.size, Some(1000));
    assert_eq!(meta.permissions.unwrap() & 0o777, 0o600);
    assert!(meta.file_type().is_file());
    f.shutdown().await.unwrap();

    let set = FileAttributes {
        size: Some(10),
        permissions: Some(0o640),
        atime: Some(1_000_000_000),
        mtime: Some(1_100_000_000),
        ..Default::default()
    };
    sftp.set_metadata("f", set).await.unwrap();
    let meta = sftp.metadata("f").await.unwrap();
    assert_eq!(meta.size, Some(10));
    assert_eq!(meta.permissions.unwrap() & 0o7777, 0o640);
    assert_eq!(meta.mtime, Some(1_100_000_000));
    assert_eq!(meta.atime, Some(1_000_000_000));
    let disk = std::fs::metadata(server.home().join("f")).unwrap();
    assert_eq!(disk.len(), 10);
    assert_eq!(disk.permissions().mode() & 0o7777, 0o640);

    let dir = sftp.metadata(".").await.unwrap();
    assert!(dir.file_type().is_dir());
}

#[tokio::test]
async fn open_flags_append_exclusive_and_truncate_behave_as_open_2() {
    let (server, stream) = start();
    let path = server.home().join("f");
    std::fs::write(&path, b"hello").unwrap();
    let raw = RawSftpSession::new(stream);
    raw.init().await.unwrap();

    let append = OpenFlags::WRITE | OpenFlags::APPEND;
    let h = raw
        .open("f", append, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    raw.write(h.as_str(), 0, b" world".to_vec()).await.unwrap();
    raw.close(h).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"hello world");

    let exclusive = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUDE;
    let err = raw
        .open("f", exclusive, FileAttributes::default())
        .await
        .unwrap_err();
    assert_eq!(status_of(err), StatusCode::Failure);

    let truncate = OpenFlags::WRITE | OpenFlags::TRUNCATE;
    let h = raw
        .open("f", truncate, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    raw.close(h).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"");

    // Reading past the end is EOF, writing through a read-only handle fails.
    let h = raw
        .open("f", OpenFlags::READ, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    assert_eq!(
        status_of(raw.read(h.as_str(), 0, 100).await.unwrap_err()),
        StatusCode::Eof
    );
    let err = raw.write(h.as_str(), 0, b"x".to_vec()).await.unwrap_err();
    assert_ne!(status_of(err), StatusCode::Ok);
    raw.close(h).await.unwrap();
}

#[tokio::test]
async fn missing_files_are_no_such_file_and_bad_handles_are_bad_messages() {
    let (_server, stream) = start();
    let raw = RawSftpSession::new(stream);
    raw.init().await.unwrap();
    assert_eq!(
        code(
            raw.open("nope", OpenFlags::READ, FileAttributes::default())
                .await
        ),
        StatusCode::NoSuchFile
    );
    assert_eq!(code(raw.stat("nope").await), StatusCode::NoSuchFile);
    assert_eq!(code(raw.lstat("a/b/c").await), StatusCode::NoSuchFile);
    assert_eq!(code(raw.opendir("nope").await), StatusCode::NoSuchFile);
    assert_eq!(code(raw.remove("nope").await), StatusCode::NoSuchFile);
    assert_eq!(code(raw.readlink("nope").await), StatusCode::NoSuchFile);

    assert_eq!(
        code(raw.read("no-such-handle", 0, 10).await),
        StatusCode::BadMessage
    );
    assert_eq!(
        code(raw.close("no-such-handle").await),
        StatusCode::BadMessage
    );
    match raw.extended("nothing@example.com", vec![]).await.unwrap() {
        Packet::Status(status) => assert_eq!(status.status_code, StatusCode::OpUnsupported),
        other => panic!("expected a status, got {other:?}"),
    }
}

#[tokio::test]
async fn what_the_os_forbids_is_permission_denied() {
    let (server, sftp) = client().await;
    std::fs::create_dir(server.home().join("dir")).unwrap();
    // link(2) to a directory is EPERM, even for root.
    let err = sftp.hardlink("dir", "dir2").await.unwrap_err();
    assert_eq!(status_of(err), StatusCode::PermissionDenied);

    if !nix::unistd::geteuid().is_root() {
        // root reads anything: EACCES only for others.
        let path = server.home().join("secret");
        std::fs::write(&path, b"x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        assert_eq!(
            code(sftp.open("secret").await),
            StatusCode::PermissionDenied
        );
    }
}

#[tokio::test]
async fn symlinks_are_made_in_openssh_order_and_read_back() {
    let (server, sftp) = client().await;
    std::fs::write(server.home().join("target.txt"), b"abc").unwrap();
    // OpenSSH's SSH_FXP_SYMLINK sends the target first; russh-sftp's client sends its first
    // argument first, so this makes `link` -> `target.txt`.
    sftp.symlink("target.txt", "link").await.unwrap();
    assert_eq!(
        std::fs::read_link(server.home().join("link")).unwrap(),
        Path::new("target.txt")
    );
    assert_eq!(sftp.read_link("link").await.unwrap(), "target.txt");
    assert!(sftp
        .symlink_metadata("link")
        .await
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(sftp.metadata("link").await.unwrap().size, Some(3));
    assert_eq!(sftp.read("link").await.unwrap(), b"abc");
}

#[tokio::test]
async fn realpath_starts_at_home_and_extensions_answer() {
    let (server, sftp) = client().await;
    let home = server.home();
    std::fs::create_dir(home.join("sub")).unwrap();
    let canon = |p: PathBuf| p.to_string_lossy().into_owned();
    assert_eq!(sftp.canonicalize(".").await.unwrap(), canon(home.clone()));
    assert_eq!(sftp.canonicalize("").await.unwrap(), canon(home.clone()));
    assert_eq!(
        sftp.canonicalize("sub/../sub").await.unwrap(),
        canon(home.join("sub"))
    );
    // A name yet to be created, in a directory that exists.
    assert_eq!(
        sftp.canonicalize("sub/new.txt").await.unwrap(),
        canon(home.join("sub/new.txt"))
    );
    assert_eq!(
        status_of(sftp.canonicalize("nope/new.txt").await.unwrap_err()),
        StatusCode::NoSuchFile
    );
    assert_eq!(
        sftp.expand_path("~/sub").await.unwrap(),
        Some(canon(home.join("sub")))
    );
    let fs = sftp.fs_info(".").await.unwrap().expect("statvfs served");
    assert!(fs.blocks > 0 && fs.block_size > 0);
    std::fs::write(home.join("orig"), b"x").unwrap();
    assert!(sftp.hardlink("orig", "linked").await.unwrap());
    assert_eq!(std::fs::read(home.join("linked")).unwrap(), b"x");
}

#[tokio::test]
async fn open_handles_are_bounded_per_session() {
    // The virtual filesystem: a session's worth of handles without as many descriptors.
    let (client, server) = tokio::io::duplex(1 << 16);
    let task = tokio::spawn(serve(server, Arc::new(OneFile)));
    let raw = RawSftpSession::new(client);
    raw.init().await.unwrap();
    assert_eq!(
        raw.limits().await.unwrap().max_open_handles,
        MAX_HANDLES as u64
    );
    let mut handles = Vec::new();
    for _ in 0..MAX_HANDLES {
        let h = raw
            .open("hello.txt", OpenFlags::READ, FileAttributes::default())
            .await
            .unwrap();
        handles.push(h.handle);
    }
    let err = raw
        .open("hello.txt", OpenFlags::READ, FileAttributes::default())
        .await
        .unwrap_err();
    let ClientError::Status(status) = err else {
        panic!("expected a status, got {err:?}")
    };
    assert_eq!(status.status_code, StatusCode::Failure);
    assert!(
        status.error_message.contains("too many open handles"),
        "{}",
        status.error_message
    );
    assert_eq!(code(raw.opendir(".").await), StatusCode::Failure);

    raw.close(handles.pop().unwrap()).await.unwrap();
    let again = raw
        .open("hello.txt", OpenFlags::READ, FileAttributes::default())
        .await
        .unwrap();
    assert!(!handles.contains(&again.handle), "handles are not reused");
    drop(raw);
    timeout(LIMIT, task).await.unwrap().unwrap().unwrap();
}

async fn send(stream: &mut DuplexStream, packet: Packet) {
    let bytes = Bytes::try_from(packet).unwrap();
    stream.write_all(&bytes).await.unwrap();
}

async fn recv(stream: &mut DuplexStream) -> Packet {
    let len = stream.read_u32().await.unwrap();
    let mut buf = vec![0; len as usize];
    stream.read_exact(&mut buf).await.unwrap();
    Packet::try_from(&mut Bytes::from(buf)).unwrap()
}

async fn open_handle(stream: &mut DuplexStream, id: u32, path: &str, pflags: OpenFlags) -> String {
    send(
        stream,
        Packet::Open(Open {
            id,
            filename: path.to_string(),
            pflags,
            attrs: FileAttributes::default(),
        }),
    )
    .await;
    match recv(stream).await {
        Packet::Handle(h) => h.handle,
        other => panic!("expected a handle, got {other:?}"),
    }
}

/// Opens a file being written, a file being read and a directory, and writes one chunk.
async fn mid_transfer(server: &Server, stream: &mut DuplexStream) -> String {
    std::fs::write(server.home().join("src"), pattern(1 << 20)).unwrap();
    send(stream, Packet::Init(Init::new())).await;
    assert!(matches!(recv(stream).await, Packet::Version(_)));
    let dst = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
    let out = open_handle(stream, 1, "dst", dst).await;
    open_handle(stream, 2, "src", OpenFlags::READ).await;
    send(
        stream,
        Packet::OpenDir(OpenDir {
            id: 3,
            path: ".".to_string(),
        }),
    )
    .await;
    assert!(matches!(recv(stream).await, Packet::Handle(_)));
    send(
        stream,
        Packet::Write(Write {
            id: 4,
            handle: out.clone(),
            offset: 0,
            data: pattern(32 * 1024),
        }),
    )
    .await;
    match recv(stream).await {
        Packet::Status(s) => assert_eq!(s.status_code, StatusCode::Ok),
        other => panic!("expected a status, got {other:?}"),
    }
    assert_eq!(server.open_fds(), 3);
    out
}

#[tokio::test]
async fn a_stream_cut_mid_packet_ends_serve_with_nothing_left_open() {
    let (server, mut stream) = start();
    let out = mid_transfer(&server, &mut stream).await;
    // Half of the next write, then the client is gone.
    let next = Bytes::try_from(Packet::Write(Write {
        id: 5,
        handle: out,
        offset: 32 * 1024,
        data: pattern(32 * 1024),
    }))
    .unwrap();
    stream.write_all(&next[..next.len() / 2]).await.unwrap();
    drop(stream);

    let (result, server) = server.ended().await;
    assert!(
        matches!(result, Err(SftpError::Io(_))),
        "a packet cut in half is a broken stream: {result:?}"
    );
    assert_eq!(server.open_fds(), 0, "a handle was left open");
    assert_eq!(
        std::fs::metadata(server.home().join("dst")).unwrap().len(),
        32 * 1024
    );
}

#[tokio::test]
async fn a_stream_closed_between_packets_ends_serve_cleanly() {
    let (server, mut stream) = start();
    mid_transfer(&server, &mut stream).await;
    drop(stream);
    let (result, server) = server.ended().await;
    result.unwrap();
    assert_eq!(server.open_fds(), 0, "a handle was left open");
}

#[tokio::test]
async fn aborting_serve_closes_what_the_session_had_open() {
    let (server, mut stream) = start();
    mid_transfer(&server, &mut stream).await;
    server.task.abort();
    let Server { dir, task } = server;
    let joined = timeout(LIMIT, task).await.unwrap();
    assert!(joined.unwrap_err().is_cancelled());
    let server = Server {
        dir,
        task: tokio::spawn(async { Ok(()) }),
    };
    assert_eq!(server.open_fds(), 0, "a handle was left open");
    drop(stream);
}

#[tokio::test]
async fn a_packet_over_the_limit_ends_the_session() {
    let (server, mut stream) = start();
    stream.write_u32(10 * 1024 * 1024).await.unwrap();
    let (result, _server) = server.ended().await;
    assert!(
        matches!(result, Err(SftpError::PacketTooLong { .. })),
        "{result:?}"
    );
}

/// A virtual filesystem of one read-only file, as an embedding program would write one.
struct OneFile;

struct OneFileHandle;

struct OneFileDir {
    listed: bool,
}

const CONTENT: &[u8] = b"virtual bytes\n";

fn one_file_attrs() -> FileAttributes {
    FileAttributes {
        size: Some(CONTENT.len() as u64),
        permissions: Some(0o100444),
        mtime: Some(0),
        ..Default::default()
    }
}

fn not_found<T>() -> std::io::Result<T> {
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "no such virtual file",
    ))
}

impl SftpFs for OneFile {
    fn realpath<'a>(&'a self, path: &'a str) -> BoxFuture<'a, std::io::Result<String>> {
        let real = match path {
            "" | "." | "/" => "/".to_string(),
            p => format!("/{}", p.trim_start_matches('/')),
        };
        async move { Ok(real) }.boxed()
    }

    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, std::io::Result<FileAttributes>> {
        async move {
            match path.trim_start_matches('/') {
                "" | "." => Ok(FileAttributes {
                    permissions: Some(0o040555),
                    ..Default::default()
                }),
                "hello.txt" => Ok(one_file_attrs()),
                _ => not_found(),
            }
        }
        .boxed()
    }

    fn open<'a>(
        &'a self,
        path: &'a str,
        flags: OpenFlags,
        _attrs: FileAttributes,
    ) -> BoxFuture<'a, std::io::Result<Box<dyn SftpFile>>> {
        async move {
            if flags.contains(OpenFlags::WRITE) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "read-only",
                ));
            }
            match path.trim_start_matches('/') {
                "hello.txt" => Ok(Box::new(OneFileHandle) as Box<dyn SftpFile>),
                _ => not_found(),
            }
        }
        .boxed()
    }

    fn open_dir<'a>(&'a self, path: &'a str) -> BoxFuture<'a, std::io::Result<Box<dyn SftpDir>>> {
        async move {
            match path.trim_start_matches('/') {
                "" | "." => Ok(Box::new(OneFileDir { listed: false }) as Box<dyn SftpDir>),
                _ => not_found(),
            }
        }
        .boxed()
    }
}

impl SftpFile for OneFileHandle {
    fn read(&mut self, offset: u64, len: u32) -> BoxFuture<'_, std::io::Result<Vec<u8>>> {
        let start = (offset as usize).min(CONTENT.len());
        let end = start.saturating_add(len as usize).min(CONTENT.len());
        async move { Ok(CONTENT[start..end].to_vec()) }.boxed()
    }

    fn stat(&mut self) -> BoxFuture<'_, std::io::Result<FileAttributes>> {
        async { Ok(one_file_attrs()) }.boxed()
    }
}

impl SftpDir for OneFileDir {
    fn next_batch(&mut self) -> BoxFuture<'_, std::io::Result<Vec<DirEntry>>> {
        let first = !std::mem::replace(&mut self.listed, true);
        async move {
            Ok(if first {
                vec![DirEntry {
                    filename: "hello.txt".to_string(),
                    longname: String::new(),
                    attrs: one_file_attrs(),
                }]
            } else {
                Vec::new()
            })
        }
        .boxed()
    }
}

#[tokio::test]
async fn an_embedder_serves_its_own_virtual_files() {
    let (client, server) = tokio::io::duplex(1 << 16);
    let task = tokio::spawn(serve(server, Arc::new(OneFile)));
    let raw = RawSftpSession::new(client);
    raw.init().await.unwrap();

    assert_eq!(raw.realpath(".").await.unwrap().files[0].filename, "/");
    let h = raw.opendir(".").await.unwrap().handle;
    let listing = raw.readdir(h.as_str()).await.unwrap().files;
    assert_eq!(listing.len(), 1);
    let line = &listing[0].longname;
    assert!(
        line.starts_with("-r--r--r-- "),
        "made from the attributes: {line}"
    );
    assert!(line.ends_with(" hello.txt"), "{line}");
    assert_eq!(code(raw.readdir(h.as_str()).await), StatusCode::Eof);
    raw.close(h).await.unwrap();

    let h = raw
        .open("hello.txt", OpenFlags::READ, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    assert_eq!(raw.read(h.as_str(), 0, 1000).await.unwrap().data, CONTENT);
    assert_eq!(code(raw.read(h.as_str(), 1000, 10).await), StatusCode::Eof);
    raw.close(h).await.unwrap();

    let write = OpenFlags::WRITE | OpenFlags::CREATE;
    assert_eq!(
        code(raw.open("new", write, FileAttributes::default()).await),
        StatusCode::PermissionDenied
    );
    assert_eq!(code(raw.stat("nope").await), StatusCode::NoSuchFile);
    // What the filesystem does not implement is refused as unsupported.
    assert_eq!(
        code(raw.mkdir("d", FileAttributes::default()).await),
        StatusCode::OpUnsupported
    );
    assert_eq!(
        code(raw.remove("hello.txt").await),
        StatusCode::OpUnsupported
    );

    drop(raw);
    timeout(LIMIT, task).await.unwrap().unwrap().unwrap();
}
