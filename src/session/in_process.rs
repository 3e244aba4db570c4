//! Sessions served inside the server process over the channel's own stream, without a child
//! process: the in-process sftp subsystem, and an embedding program's [`InProcessCommand`]s.
//!
//! One task serves and says goodbye. Killing the session drops the serving future (closing
//! every file it opened) and closes the channel, as for any session.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::FutureExt;
use russh::server::{Handle, Msg};
use sshvisor_actors::{EndScope, SessionEvents, SessionExit};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tracing::debug;

use crate::session::channel_session::GOODBYE_TIMEOUT;
use crate::session::sftp::{self, LocalFs, SftpFs};
use crate::ssh::activity::Activity;
use crate::ssh::after_goodbye::AfterGoodbye;
use crate::ssh::counted::CountedWrites;

/// The channel as an in-process command or subsystem sees it: reading gives what the client
/// sends (end of stream at the client's EOF), writing goes to the client.
pub type ChannelIo = CountedWrites<russh::ChannelStream<russh::server::Msg>>;

/// Serves one in-process session over its channel; returns how it ended.
pub(crate) type Serve = Box<
    dyn for<'a> FnOnce(&'a mut ChannelIo) -> Pin<Box<dyn Future<Output = SessionExit> + Send + 'a>>
        + Send,
>;

/// A command served inside the server process, without a child process: an embedding
/// program's own application behind `exec` (a git service, a menu, a game), as AsyncSSH's
/// `process_factory` or OTP's exec fun would be. Killing its session cancels the future (drops
/// it) and closes the channel, as for any session.
pub trait InProcessCommand: Send + Sync + 'static {
    /// Serves `command` (the whole command line the client sent) over `io`; returns the exit
    /// status sent to the client.
    fn run<'a>(
        &'a self,
        command: &'a str,
        io: &'a mut ChannelIo,
    ) -> Pin<Box<dyn Future<Output = u32> + Send + 'a>>;
}

/// In-process commands by program name: an `exec` whose first word is one of these names runs
/// in-process; every other command runs as a process.
#[derive(Clone, Default)]
pub struct InProcessCommands(Vec<(String, Arc<dyn InProcessCommand>)>);

impl InProcessCommands {
    /// Adds (or replaces) the command `name`.
    pub fn with(mut self, name: &str, command: Arc<dyn InProcessCommand>) -> Self {
        self.0.retain(|(n, _)| n != name);
        self.0.push((name.to_string(), command));
        self
    }

    pub(crate) fn find(&self, command_line: &str) -> Option<Arc<dyn InProcessCommand>> {
        let program = command_line.split_whitespace().next()?;
        self.0
            .iter()
            .find(|(name, _)| name == program)
            .map(|(_, command)| command.clone())
    }
}

impl std::fmt::Debug for InProcessCommands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| n))
            .finish()
    }
}

/// An in-process session (sftp, or an in-process command): the task serving it.
pub(crate) struct InProcessRun {
    task: AbortHandle,
    /// Stops the serving future (a kill).
    stop: Arc<Notify>,
    /// Cuts the goodbye short (the kill's grace ran out).
    force: Arc<Notify>,
    done: Arc<AtomicBool>,
    leave_channel_open: Arc<AtomicBool>,
}

impl InProcessRun {
    /// Starts serving the session over `stream` (the channel's own), on `handle`'s connection.
    pub(crate) fn start(
        stream: russh::Channel<Msg>,
        handle: Handle,
        activity: Arc<Activity>,
        after_goodbye: Arc<AfterGoodbye>,
        serve: Serve,
        events: SessionEvents,
    ) -> Self {
        let channel = stream.id();
        let stream = stream.into_stream();
        let done = Arc::new(AtomicBool::new(false));
        let leave_channel_open = Arc::new(AtomicBool::new(false));
        let (done2, leave_open) = (done.clone(), leave_channel_open.clone());
        let (stop, force) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (stopped, forced) = (stop.clone(), force.clone());
        // Made here, not in the task: what the task captures and what it makes from that
        // would each take their own room in it, for as long as the session lives.
        let mut io = CountedWrites::new(stream, activity);
        // One task serves and says goodbye. A stop (a kill) drops the serving future, which
        // closes every file it opened; the force cuts the goodbye short (two notifies: a stop
        // left unused by a serving future that ended by itself must not cut the goodbye). A
        // panic in the serving future ends the session like a stop.
        let task = tokio::spawn(async move {
            let exit = tokio::select! {
                exit = AssertUnwindSafe(serve(&mut io)).catch_unwind() => {
                    exit.unwrap_or(SessionExit::Closed)
                }
                () = stopped.notified() => SessionExit::Closed,
            };
            // Ended with its connection, the channel is left for the DISCONNECT to close.
            let leave = leave_open.load(Ordering::SeqCst);
            if leave && exit == SessionExit::Closed {
                // Stopped by its connection's kill: the EOF goes out with the DISCONNECT, in
                // one write, and the stream is kept until then (its drop closes the channel).
                after_goodbye.hold_with_eof(channel, Box::new(io));
                done2.store(true, Ordering::SeqCst);
                events.finished(exit);
                return;
            }
            // Boxed: inline, the goodbye would make every idle session's task bigger.
            let goodbye = Box::pin(async {
                if let SessionExit::Status(code) = exit {
                    let _ = handle.exit_status_request(channel, code).await;
                }
                let _ = handle.eof(channel).await;
                if !leave {
                    let _ = handle.close(channel).await;
                }
            });
            tokio::select! {
                _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbye) => {}
                () = forced.notified() => {}
            }
            if leave {
                // Dropping the stream closes the channel too, which may only follow the
                // DISCONNECT: the connection drops it once that is queued.
                after_goodbye.hold(Box::new(io));
            } else {
                // After the exit status, EOF and CLOSE, never racing them.
                drop(io);
            }
            done2.store(true, Ordering::SeqCst);
            events.finished(exit);
        })
        .abort_handle();
        Self {
            task,
            stop,
            force,
            done,
            leave_channel_open,
        }
    }

    /// Asks the serving future to stop (a kill); `scope` says who closes the channel.
    pub(crate) fn terminate(&self, scope: EndScope) {
        self.leave_channel_open
            .store(scope == EndScope::Connection, Ordering::SeqCst);
        self.stop.notify_one();
    }

    /// Stops serving and cuts the goodbye short (the kill's grace ran out).
    pub(crate) fn force(&self) {
        self.stop.notify_one();
        self.force.notify_one();
    }

    /// Aborts the task if it has not said its goodbye: true when the channel is then left for
    /// the caller to close (the link went away without a finished session).
    pub(crate) fn abandon(&self) -> bool {
        if self.done.load(Ordering::SeqCst) {
            return false;
        }
        self.task.abort();
        true
    }
}

/// Serves the in-process sftp subsystem from `fs` (the user's home on the local filesystem by
/// default), within the connection's share of the handle budgets.
pub(crate) fn sftp(
    fs: Option<Arc<dyn SftpFs>>,
    home: std::path::PathBuf,
    share: sftp::ConnectionHandles,
) -> Serve {
    let fs = fs.unwrap_or_else(|| Arc::new(LocalFs::new(home)));
    Box::new(move |io| {
        Box::pin(async move {
            match sftp::serve_within(io, fs, Some(share)).await {
                Ok(()) => SessionExit::Status(0),
                Err(e) => {
                    debug!(error = %e, "sftp session ended with an error");
                    SessionExit::Status(1)
                }
            }
        })
    })
}

/// Serves `command_line` with the in-process `command`.
pub(crate) fn command(command: Arc<dyn InProcessCommand>, command_line: String) -> Serve {
    Box::new(move |io| {
        Box::pin(async move { SessionExit::Status(command.run(&command_line, io).await) })
    })
}
