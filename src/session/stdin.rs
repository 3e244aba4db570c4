//! A session's stdin: a bounded queue the russh handler writes straight into, and the feeder
//! that writes it to the command.
//!
//! The handler must never wait inside russh's loop (the command may be waiting for that very
//! loop to send its output), so the queue never blocks: it is bounded in bytes instead, and a
//! command that leaves more than [`STDIN_LIMIT`] unread ends its session (decided here, in
//! [`StdinSink::push`]), so a client that floods a command that does not read cannot fill the
//! server's memory. Window changes travel in the same queue, in order with the data.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use futures::StreamExt;
use sshvisor_actors::link::{StdinRefusal, StdinSink};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tracing::warn;

use crate::session::pty;

/// How many bytes of client data may wait for a command to read its stdin. russh refills the
/// channel window by itself and the handler must never wait inside russh's loop (the command
/// may be waiting for that very loop to send its output), so past this the session ends.
pub const STDIN_LIMIT: usize = 16 * 1024 * 1024;

/// How long a session whose command leaves too much input unread gets to end.
pub const STDIN_OVERFLOW_GRACE: Duration = Duration::from_secs(5);

/// The writing end of a session's stdin queue: never blocks, bounded in bytes.
///
/// A `futures` channel, not a tokio one: tokio's allocates a block of 32 slots up front (about
/// 1.5 KiB with its state), which every idle session would hold; this one allocates per
/// message.
#[derive(Clone)]
pub struct StdinSender {
    tx: mpsc::UnboundedSender<Input>,
    pending: Arc<AtomicUsize>,
}

/// What the stdin queue carries: the client's data, and its window changes, which a terminal
/// must get in the order the client sent them (`stty size` typed right after a resize must see
/// the new size).
enum Input {
    Data(Bytes),
    Resize {
        cols: u32,
        rows: u32,
        pix_width: u32,
        pix_height: u32,
    },
}

/// Why client data could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum StdinError {
    /// Nothing reads this session's stdin any more.
    Closed,
    /// The command left more than [`STDIN_LIMIT`] bytes unread.
    Full,
}

impl StdinSender {
    /// Queues `data` for the command's stdin.
    pub fn push(&self, data: Bytes) -> Result<(), StdinError> {
        let len = data.len();
        if self.pending.fetch_add(len, Ordering::SeqCst) + len > STDIN_LIMIT {
            self.pending.fetch_sub(len, Ordering::SeqCst);
            return Err(StdinError::Full);
        }
        self.tx
            .unbounded_send(Input::Data(data))
            .map_err(|_| StdinError::Closed)
    }

    /// Queues a window change for the session's terminal, after the data queued before it (a
    /// session without a terminal, or whose command is gone, ignores it).
    pub fn resize(&self, cols: u32, rows: u32, pix_width: u32, pix_height: u32) {
        let _ = self.tx.unbounded_send(Input::Resize {
            cols,
            rows,
            pix_width,
            pix_height,
        });
    }
}

pub(crate) struct StdinReceiver {
    rx: mpsc::UnboundedReceiver<Input>,
    pending: Arc<AtomicUsize>,
}

pub(crate) fn stdin_queue() -> (StdinSender, StdinReceiver) {
    let (tx, rx) = mpsc::unbounded();
    let pending = Arc::new(AtomicUsize::new(0));
    (
        StdinSender {
            tx,
            pending: pending.clone(),
        },
        StdinReceiver { rx, pending },
    )
}

impl StdinSink for StdinSender {
    fn push(&self, data: &[u8]) -> Result<(), StdinRefusal> {
        match StdinSender::push(self, Bytes::copy_from_slice(data)) {
            Ok(()) => Ok(()),
            Err(StdinError::Closed) => Err(StdinRefusal::Closed),
            Err(StdinError::Full) => {
                warn!(
                    limit = STDIN_LIMIT,
                    "the command leaves its input unread: ending the session"
                );
                Err(StdinRefusal::EndSession {
                    reason: format!(
                        "the command left {} MiB of input unread",
                        STDIN_LIMIT / (1024 * 1024)
                    ),
                    grace: STDIN_OVERFLOW_GRACE,
                })
            }
        }
    }

    fn resize(&self, cols: u32, rows: u32, pix_width: u32, pix_height: u32) {
        StdinSender::resize(self, cols, rows, pix_width, pix_height);
    }
}

/// Where the client's data goes: the terminal, or the stdin pipe.
pub(crate) enum Stdin {
    Pty(pty::Master),
    Pipe(pipe::Sender),
}

/// Writes the client's data to the command's stdin and applies its window changes to the
/// terminal, if the session has one, in the order the client sent them.
pub(crate) async fn feed_stdin(stdin: Stdin, rx: StdinReceiver) {
    match stdin {
        Stdin::Pty(master) => feed(master.clone(), rx, Some(&master)).await,
        Stdin::Pipe(pipe) => feed(pipe, rx, None).await,
    }
}

async fn feed(
    mut stdin: impl AsyncWrite + Unpin,
    mut rx: StdinReceiver,
    terminal: Option<&pty::Master>,
) {
    while let Some(input) = rx.rx.next().await {
        match input {
            Input::Data(data) => {
                let written = stdin.write_all(&data).await;
                rx.pending.fetch_sub(data.len(), Ordering::SeqCst);
                if written.is_err() {
                    return;
                }
            }
            Input::Resize {
                cols,
                rows,
                pix_width,
                pix_height,
            } => {
                if let Some(terminal) = terminal {
                    terminal.resize(cols, rows, pix_width, pix_height);
                }
            }
        }
    }
    // Dropping stdin closes the pipe: the command sees EOF. (A terminal stays open: the client
    // ends a shell with Ctrl-D, which the terminal turns into EOF.)
}
