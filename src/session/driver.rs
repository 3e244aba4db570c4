//! The driver of a process session: one task that pumps the process's output to the channel,
//! feeds its stdin, waits for its leader to exit, ends what the leader left running, says the
//! session's goodbye (exit status or signal, EOF, CLOSE) and reports how it ended.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use russh::server::Handle;
use russh::ChannelId;
use sshvisor_actors::{SessionEvents, SessionExit};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tracing::warn;

use crate::session::channel_session::GOODBYE_TIMEOUT;
use crate::session::group::Group;
use crate::session::pty;
use crate::session::stdin::{feed_stdin, Stdin, StdinReceiver};
use crate::ssh::activity::Activity;
use crate::ssh::signals::sig_of;

/// After a terminal session's shell exits, how long its remaining output may take to drain
/// (background jobs may hold the terminal open forever).
const PTY_DRAIN: Duration = Duration::from_millis(200);

/// How long the session's processes may take to disappear after the final SIGKILL.
const VANISH_TIMEOUT: Duration = Duration::from_millis(500);

/// Once every process of a session is gone, how long its output pumps may take to deliver what
/// the pipes still hold. Bounded: a descriptor passed to a process outside the session could
/// hold a pipe open forever.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// What the session's link tells its driver, and what the driver tells back: one allocation
/// shared by both.
#[derive(Default)]
pub(crate) struct DriverControl {
    /// End the session now (the kill's grace ran out, or the link went away).
    pub(crate) forced: Notify,
    /// Stop writing the client's data to the command (its stdin pipe closes).
    pub(crate) stop_feed: Notify,
    /// The driver has said its goodbye and reported the exit.
    pub(crate) done: AtomicBool,
    /// Ended with its connection: the channel is left for the DISCONNECT to close.
    pub(crate) leave_channel_open: AtomicBool,
}

/// Where a session's output comes from: its terminal, or its stdout and stderr pipes.
pub(crate) enum Outputs {
    Pty(pty::Master),
    Pipes(pipe::Receiver, pipe::Receiver),
}

/// Drives one process: pumps its output to the channel and its stdin from the client, then
/// reports how it ended.
///
/// All in one task: the output pumps and the stdin feeder are futures polled by the driver,
/// not tasks of their own (four tasks per session cost about 1.3 KB more per connection:
/// tokio's 128-byte-aligned task cells, a copy of the handles in each, and the channel
/// that told a terminal's pump that the leader exited).
pub(crate) struct Driver {
    pub(crate) handle: Handle,
    pub(crate) channel: ChannelId,
    pub(crate) group: Arc<Group>,
    pub(crate) control: Arc<DriverControl>,
    pub(crate) activity: Arc<Activity>,
    pub(crate) events: SessionEvents,
}

/// Set once the session's leader has exited: from then on, a terminal that stays silent for
/// PTY_DRAIN is done (background jobs may hold it open forever), however long the client takes
/// to accept what was already read. The terminal's pump is polled by the same task as the
/// driver, so a flag and a wake-up are enough.
#[derive(Default)]
struct LeaderExited {
    exited: AtomicBool,
    changed: Notify,
}

impl LeaderExited {
    fn set(&self) {
        self.exited.store(true, Ordering::SeqCst);
        self.changed.notify_one();
    }

    fn get(&self) -> bool {
        self.exited.load(Ordering::SeqCst)
    }
}

/// The output pumps and the stdin feeder of a session, polled while the driver awaits
/// something else.
struct Background<'a, O, F> {
    outputs: Pin<&'a mut futures::future::Fuse<O>>,
    feed: Pin<&'a mut futures::future::Fuse<F>>,
}

impl<O, F> Background<'_, O, F>
where
    O: Future<Output = ()>,
    F: Future<Output = ()>,
{
    /// Awaits `main`, keeping the output flowing and stdin fed meanwhile.
    async fn alongside<T>(&mut self, main: impl Future<Output = T>) -> T {
        use futures::future::FusedFuture;
        let mut main = std::pin::pin!(main);
        loop {
            tokio::select! {
                biased;
                value = &mut main => return value,
                () = &mut self.outputs, if !self.outputs.is_terminated() => {}
                () = &mut self.feed, if !self.feed.is_terminated() => {}
            }
        }
    }

    /// Until every output has reached its end.
    async fn drained(&mut self) {
        use futures::future::FusedFuture;
        while !self.outputs.is_terminated() {
            tokio::select! {
                () = &mut self.outputs => {}
                () = &mut self.feed, if !self.feed.is_terminated() => {}
            }
        }
    }
}

impl Driver {
    pub(crate) async fn run(
        self,
        pidfd: AsyncFd<OwnedFd>,
        outputs: Outputs,
        stdin: Stdin,
        rx: StdinReceiver,
    ) {
        let exited = LeaderExited::default();
        let control = &self.control;
        let (left, forced) = {
            let outputs =
                pump_outputs(outputs, &self.handle, self.channel, &exited, &self.activity);
            // The feed stops when the link says so (its stdin pipe closes with it).
            let feed = async {
                tokio::select! {
                    () = feed_stdin(stdin, rx) => {}
                    () = control.stop_feed.notified() => {}
                }
            };
            let mut background = Background {
                outputs: std::pin::pin!(outputs.fuse()),
                feed: std::pin::pin!(feed.fuse()),
            };
            // The leader exits (it stays a zombie, pinning the group ID until `reap`).
            let forced_early = background
                .alongside(Box::pin(async {
                    tokio::select! {
                        _ = pidfd.readable() => false,
                        () = control.forced.notified() => true,
                    }
                }))
                .await;
            if forced_early {
                self.group.kill();
                control.forced.notify_one();
                let _ = background.alongside(Box::pin(pidfd.readable())).await;
            }
            exited.set();
            // No process outlives its session: what the leader left running (background
            // jobs, escapees) is killed now. That also closes every copy of the output
            // pipes, so the pumps end even when an orphan held them open.
            // Boxed, like the drain below: what only the end needs is not carried while idle.
            let left = background
                .alongside(Box::pin(self.group.scope.end_the_rest(VANISH_TIMEOUT)))
                .await;
            // Output written before the end is still buffered: deliver it, unless the
            // session is being forced (then nothing more is owed to the client). Bounded all
            // the same.
            let forced = tokio::select! {
                _ = Box::pin(tokio::time::timeout(OUTPUT_DRAIN, background.drained())) => false,
                () = control.forced.notified() => true,
            };
            // Dropping the pumps and the feeder closes the pipes: stdin has no reader any more.
            (left, forced)
        };
        let exit = self.group.reap();
        if left > 0 {
            warn!(left, "processes of the session outlived it");
        }
        // Boxed: inline, these request futures would sit in the driver's task, idle or not.
        let goodbye = {
            let handle = self.handle.clone();
            let channel = self.channel;
            let exit = exit.clone();
            let control = self.control.clone();
            Box::pin(async move {
                match &exit {
                    SessionExit::Status(code) => {
                        let _ = handle.exit_status_request(channel, *code).await;
                    }
                    SessionExit::Signal(name) => {
                        let _ = handle
                            .exit_signal_request(
                                channel,
                                sig_of(name),
                                false,
                                String::new(),
                                "en".into(),
                            )
                            .await;
                    }
                    _ => {}
                }
                let _ = handle.eof(channel).await;
                if !control.leave_channel_open.load(Ordering::SeqCst) {
                    let _ = handle.close(channel).await;
                }
            })
        };
        if forced {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbye).await;
            });
        } else {
            // Boxed with its timer: only the end needs them.
            let _ = Box::pin(tokio::time::timeout(GOODBYE_TIMEOUT, goodbye)).await;
        }
        self.control.done.store(true, Ordering::SeqCst);
        self.events.finished_leaving(exit, left);
    }
}

/// Pumps a session's output to its channel: the terminal's, or stdout and stderr at once.
async fn pump_outputs(
    outputs: Outputs,
    handle: &Handle,
    channel: ChannelId,
    exited: &LeaderExited,
    activity: &Activity,
) {
    match outputs {
        Outputs::Pty(master) => pump(master, handle, channel, None, Some(exited), activity).await,
        Outputs::Pipes(stdout, stderr) => {
            futures::join!(
                pump(stdout, handle, channel, None, None, activity),
                pump(stderr, handle, channel, Some(1), None, activity),
            );
        }
    }
}

/// The read buffer of an output pump that finds output waiting: small at first.
const PUMP_MIN: usize = 1024;
/// The read buffer a busy pump grows to.
const PUMP_MAX: usize = 32 * 1024;

/// Waits for output holding one byte, not a buffer (most sessions sit idle), then takes what
/// else is ready at once, up to `size` bytes in all. Empty at the end of the output.
async fn read_chunk(from: &mut (impl AsyncRead + Unpin), size: usize) -> std::io::Result<Bytes> {
    let mut first = [0u8; 1];
    if from.read(&mut first).await? == 0 {
        return Ok(Bytes::new());
    }
    let mut buf = vec![0u8; size];
    buf[0] = first[0];
    let more = match from.read(&mut buf[1..]).now_or_never() {
        Some(Ok(n)) => n,
        // Nothing more yet, or an error the next read reports again.
        None | Some(Err(_)) => 0,
    };
    Ok(Bytes::copy_from_slice(&buf[..1 + more]))
}

/// One read from a terminal: once the leader has exited, `None` when the terminal stays silent
/// for PTY_DRAIN.
async fn read_terminal(
    from: &mut (impl AsyncRead + Unpin),
    size: usize,
    exited: &LeaderExited,
) -> Option<std::io::Result<Bytes>> {
    loop {
        if exited.get() {
            return tokio::time::timeout(PTY_DRAIN, read_chunk(from, size))
                .await
                .ok();
        }
        tokio::select! {
            read = read_chunk(from, size) => return Some(read),
            () = exited.changed.notified() => {}
        }
    }
}

async fn pump(
    mut from: impl AsyncRead + Unpin,
    handle: &Handle,
    channel: ChannelId,
    ext: Option<u32>,
    leader_exited: Option<&LeaderExited>,
    activity: &Activity,
) {
    // A pump that fills its buffer gets a bigger one next time.
    let mut size = PUMP_MIN;
    loop {
        let read = match leader_exited {
            None => read_chunk(&mut from, size).await,
            // Boxed: inline, a terminal's timer and wake-up would sit in every pipe's pump too.
            Some(exited) => match Box::pin(read_terminal(&mut from, size, exited)).await {
                Some(read) => read,
                None => return,
            },
        };
        let data = match read {
            Ok(data) if !data.is_empty() => data,
            Ok(_) | Err(_) => return,
        };
        let len = data.len();
        if len == size && size < PUMP_MAX {
            size *= 4;
        }
        // Boxed: the send's future would otherwise sit in every idle pump's state.
        let sent = match ext {
            None => Box::pin(handle.data(channel, data)).await,
            Some(code) => Box::pin(handle.extended_data(channel, code, data)).await,
        };
        activity.sent(len);
        if sent.is_err() {
            // The connection is gone; keep draining so the process never blocks on a full pipe.
            let mut buf = vec![0u8; PUMP_MIN];
            while matches!(from.read(&mut buf).await, Ok(n) if n > 0) {}
            return;
        }
    }
}
