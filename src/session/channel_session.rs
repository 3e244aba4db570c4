//! One session channel of the default application and what it runs: a process (see `process`),
//! an in-process command or the in-process sftp subsystem (see `in_process`).
//!
//! It is the [`SessionLink`] of one session channel. Ending a session ends every process it
//! started: SIGHUP on [`terminate`](SessionLink::terminate), SIGKILL on
//! [`force`](SessionLink::force), and SIGKILL to whatever is left once the leader has exited or
//! the link is dropped: every process of the session's scope (its cgroup, or its reaper's
//! tree; see `containment`), so `setsid`, `nohup`, double forks and `env -i` do not escape, and
//! no orphan holding the output pipes can keep the session from ending.
//!
//! The client's data reaches the command through the stdin queue (see `stdin`), which the link
//! hands the russh handler at open ([`SessionLink::stdin`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh::server::Handle;
use russh::ChannelId;
use sshvisor_actors::link::StdinSink;
use sshvisor_actors::{
    EndScope, PtySpec, SessionEvents, SessionLink, SessionRequest, Traffic, Winding,
};
use tracing::debug;

use crate::session::env::{ClientVars, ExecEnv, SftpService};
use crate::session::in_process::{self, InProcessRun, Serve};
use crate::session::process::{Launch, Running};
use crate::session::pty;
use crate::session::sftp;
use crate::session::stdin::{stdin_queue, StdinReceiver, StdinSender};
use crate::ssh::activity::Activity;
use crate::ssh::after_goodbye::AfterGoodbye;
use crate::ssh::held_channel::HeldChannel;
use crate::ssh::restrictions::Restrictions;
use crate::ssh::sessions::Endpoints;
use crate::ssh::signals::signal_named;

/// How long the last messages of a session (exit status, EOF, CLOSE) may wait for room in the
/// connection's send queue before they are given up.
pub(crate) const GOODBYE_TIMEOUT: Duration = Duration::from_secs(5);

/// One session channel and the process it runs.
pub struct ChannelSession {
    handle: Handle,
    channel: ChannelId,
    env: Arc<ExecEnv>,
    ends: Endpoints,
    pty: Option<PtySpec>,
    vars: ClientVars,
    stdin_tx: Option<StdinSender>,
    stdin_rx: Option<StdinReceiver>,
    /// The channel's own stream, kept until we know whether a subsystem wants it.
    stream: HeldChannel,
    running: Option<Running>,
    in_process: Option<InProcessRun>,
    activity: Arc<Activity>,
    after_goodbye: Arc<AfterGoodbye>,
    /// The connection's share of the sftp handle budgets.
    sftp_handles: sftp::ConnectionHandles,
    /// What the login may do (a forced command, a terminal, variables).
    restrictions: Arc<Restrictions>,
}

impl ChannelSession {
    /// The session of `stream`'s channel on the connection behind `handle`. Its stdin queue's
    /// writing end goes to the russh handler through [`SessionLink::stdin`].
    ///
    /// `stream` is the russh channel itself: kept only until the session starts (an in-process
    /// subsystem reads it as a stream; everything else drops it, so it never fills up).
    pub fn new(
        handle: Handle,
        stream: HeldChannel,
        env: Arc<ExecEnv>,
        ends: Endpoints,
        activity: Arc<Activity>,
        after_goodbye: Arc<AfterGoodbye>,
        sftp_handles: sftp::ConnectionHandles,
    ) -> Self {
        let (tx, rx) = stdin_queue();
        let channel = stream.id();
        Self {
            handle,
            channel,
            stream,
            in_process: None,
            activity,
            after_goodbye,
            sftp_handles,
            env,
            ends,
            pty: None,
            vars: ClientVars::default(),
            stdin_tx: Some(tx),
            stdin_rx: Some(rx),
            running: None,
            restrictions: Arc::new(Restrictions::unrestricted()),
        }
    }

    /// The session of a login with these restrictions (its key options, its certificate):
    /// a terminal only if permitted, a forced command instead of what the client asks (with
    /// the client's command in `SSH_ORIGINAL_COMMAND`), the login's variables set.
    pub fn with_restrictions(mut self, restrictions: Arc<Restrictions>) -> Self {
        self.restrictions = restrictions;
        self
    }

    /// What runs for `request`: the login's forced command, if it has one, as sshd runs it
    /// (`SSH_ORIGINAL_COMMAND` set to the client's command, or to the subsystem's name; unset
    /// for a shell); and the login's own variables.
    fn effective(&mut self, request: &SessionRequest) -> SessionRequest {
        for (name, value) in &self.restrictions.environment {
            self.vars.put(name, value);
        }
        let Some(forced) = &self.restrictions.force_command else {
            return request.clone();
        };
        let original = match request {
            SessionRequest::Exec { command } => Some(command.as_str()),
            SessionRequest::Subsystem { name } => Some(name.as_str()),
            SessionRequest::Shell => None,
        };
        if let Some(original) = original {
            self.vars.put("SSH_ORIGINAL_COMMAND", original);
        }
        if forced == "internal-sftp" {
            // As in sshd: the in-process sftp server, whatever the client asked for.
            return SessionRequest::Subsystem {
                name: "sftp".into(),
            };
        }
        SessionRequest::Exec {
            command: forced.clone(),
        }
    }

    fn close_channel_later(&self) {
        let handle = self.handle.clone();
        let channel = self.channel;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(GOODBYE_TIMEOUT, handle.close(channel)).await;
            });
        }
    }

    /// Serves the session inside this process over the channel's own stream: an in-process
    /// subsystem (sftp) or command.
    fn start_in_process(&mut self, serve: Serve, events: SessionEvents) -> Result<(), String> {
        let stream = self
            .stream
            .take()
            .ok_or("the channel cannot carry a subsystem any more")?;
        // Data reaches it through the channel's stream: the stdin path must fail fast.
        self.stdin_tx = None;
        self.stdin_rx = None;
        self.in_process = Some(InProcessRun::start(
            stream,
            self.handle.clone(),
            self.activity.clone(),
            self.after_goodbye.clone(),
            serve,
            events,
        ));
        Ok(())
    }
}

impl SessionLink for ChannelSession {
    fn pty(&mut self, spec: &PtySpec) -> Result<PtySpec, String> {
        if !self.restrictions.pty {
            return Err("this login may not have a terminal (no-pty, restrict, or a certificate without permit-pty)".into());
        }
        if self.pty.is_some() {
            return Err("this session already has a terminal".into());
        }
        let used = pty::validate(spec)?;
        self.pty = Some(used.clone());
        Ok(used)
    }

    fn env(&mut self, name: &str, value: &str) -> Result<(), String> {
        self.vars.set(&self.env, name, value)
    }

    fn resize(&mut self, cols: u32, rows: u32, pix_width: u32, pix_height: u32) -> (u32, u32) {
        // As the client sent it: clamped here to what a terminal takes.
        let cols = cols.clamp(1, pty::MAX_DIMENSION);
        let rows = rows.clamp(1, pty::MAX_DIMENSION);
        if let Some(master) = self.running.as_ref().and_then(|r| r.master.as_ref()) {
            // While the client may still type, the handler queues its window changes with its
            // data (`StdinSink::resize`), in order; after its EOF they come only this way.
            if self.stdin_tx.is_none() {
                master.resize(cols, rows, pix_width, pix_height);
            }
        } else if let Some(pty) = self.pty.as_mut() {
            pty.cols = cols;
            pty.rows = rows;
        }
        (cols, rows)
    }

    fn signal(&mut self, name: &str) -> Result<(), String> {
        let signal = signal_named(name)?;
        match &self.running {
            Some(running) => running.signal(signal),
            None => Err("nothing runs in this session yet".into()),
        }
    }

    fn start(&mut self, request: &SessionRequest, events: SessionEvents) -> Result<(), String> {
        let effective = self.effective(request);
        let request = &effective;
        if let (SessionRequest::Subsystem { name }, SftpService::InProcess(fs)) =
            (request, &self.env.sftp)
        {
            if name == "sftp" {
                let serve =
                    in_process::sftp(fs.clone(), self.env.home.clone(), self.sftp_handles.clone());
                return self.start_in_process(serve, events);
            }
        }
        if let SessionRequest::Exec { command } = request {
            if let Some(handler) = self.env.commands.find(command) {
                return self
                    .start_in_process(in_process::command(handler, command.clone()), events);
            }
        }
        // Everything else talks through callbacks: the channel's own queue must not fill up.
        self.stream.release();
        let launch = Launch {
            env: &self.env,
            ends: self.ends,
            pty: self.pty.as_ref(),
            vars: &self.vars,
            handle: &self.handle,
            channel: self.channel,
            activity: &self.activity,
        };
        self.running = Some(launch.spawn(request, events, &mut self.stdin_rx)?);
        Ok(())
    }

    fn stdin(&mut self) -> Option<Box<dyn StdinSink>> {
        let sink = self.stdin_tx.clone()?;
        Some(Box::new(sink))
    }

    fn data(&mut self, data: Vec<u8>) {
        if let Some(stdin) = &self.stdin_tx {
            // Data routed through the session actor (the russh handler writes stdin directly).
            if let Err(e) = stdin.push(Bytes::from(data)) {
                debug!(?e, "stdin data dropped");
            }
        }
    }

    fn notify(&mut self, text: &str) {
        // Only a terminal shows it: on a pipe (scp, sftp, `ssh host cmd | ...`) it would be
        // data. Written between two line starts, as `wall` does; not counted as traffic, so a
        // warning never resets an idle timeout.
        if self.pty.is_none() {
            return;
        }
        let line = format!("\r\n{text}\r\n");
        let (handle, channel) = (self.handle.clone(), self.channel);
        tokio::spawn(async move {
            let _ = handle.data(channel, Bytes::from(line)).await;
        });
    }

    fn eof(&mut self) {
        self.stdin_tx = None;
    }

    fn idle_for(&self) -> Option<Duration> {
        Some(self.activity.idle_for())
    }

    fn terminate(&mut self, scope: EndScope) -> Winding {
        self.stdin_tx = None;
        if let Some(run) = &self.in_process {
            run.terminate(scope);
            return Winding::Pending;
        }
        match &self.running {
            None => {
                if scope == EndScope::Session {
                    self.close_channel_later();
                }
                Winding::Done
            }
            Some(running) => {
                running.terminate(scope);
                Winding::Pending
            }
        }
    }

    fn force(&mut self) -> Winding {
        if let Some(run) = &self.in_process {
            run.force();
            return Winding::Pending;
        }
        match &self.running {
            // Nothing runs: whatever the scope, the channel is not ours to wait for.
            None => Winding::Done,
            Some(running) => {
                running.force();
                Winding::Pending
            }
        }
    }
}

impl Drop for ChannelSession {
    fn drop(&mut self) {
        // The session actor went away without a finished session (killed outright or
        // crashed): nothing of it may stay behind.
        let abandoned = self.in_process.as_ref().is_some_and(InProcessRun::abandon)
            || self.running.as_ref().is_some_and(Running::abandon);
        if abandoned {
            self.close_channel_later();
        }
    }
}
