//! The russh `Handler`: a thin adapter that turns russh callbacks into actor messages.
//!
//! It decides nothing. Logins are the [`Authenticator`]'s to accept (a refused one, whose key
//! the client proved it holds, ends the connection with a DISCONNECT that says why); the connection's life and
//! every session request are the actors'; which application serves a session is the listener's
//! `SessionFactory`'s (see `channels`); what a session's stdin can take is its `StdinSink`'s.
//! The actors answer without waiting on the network, so a callback never stalls russh's session
//! loop for long; and a wait for an answer ends when the actor is gone (its reply port drops) or
//! the connection is cut (the end of a kill's grace), so no callback can outlive a kill either.
//! The client's bytes go straight into the session's stdin sink, never through an actor: the
//! per-packet path does not wait and costs no message. Only a link that gives no sink gets them
//! through its session actor (`SessionMsg::Data`).
//!
//! Those waits have no timer of their own: a timer whose deadline is the earliest one pending
//! wakes tokio's driver to re-arm it (a write to its eventfd, and a parked worker woken), and a
//! login waited on four of them (admission, the login's verdict, the session's open and start).

use std::sync::Arc;

use ractor::{ActorRef, RpcReplyPort};
use russh::keys::ssh_key::Certificate;
use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{ChannelId, ChannelOpenFailure, Disconnect};
use sshvisor_actors::link::StdinRefusal;
use sshvisor_actors::{
    ConnId, ConnectionMsg, Credential, EndScope, PtySpec, SessionMsg, SessionRequest, StartRefusal,
};
use tracing::{debug, info};

use crate::audit::{Audit, AuditRecord};
use crate::ssh::auth::{Authenticator, Verdict};
use crate::ssh::certs;
use crate::ssh::channels::{SessionChannels, Stdin};
use crate::ssh::penalties::LoginTally;
use crate::ssh::signals::sig_name;
use crate::ssh::stream::CutSwitch;

/// Errors that end a connection from inside a callback.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// russh itself failed.
    #[error(transparent)]
    Russh(#[from] russh::Error),
    /// The connection's actor is gone, or the connection was cut while waiting for it.
    #[error("the connection's actor is gone, or the connection was cut")]
    ActorGone,
}

/// One connection's russh handler.
///
/// Callbacks that wait on an actor box what they wait on: every callback's future is stored
/// inline in russh's per-connection task, twice over (russh-util's spawn keeps the future it
/// awaits beside the one it polls), so the largest of them costs every idle connection twice its
/// size. Boxed, they cost a small allocation while a request is answered.
pub struct SshHandler {
    /// The connection's actor: logins and new sessions go there.
    conn: ActorRef<ConnectionMsg>,
    /// Who may log in.
    auth: Arc<dyn Authenticator>,
    /// The connection's cut: ends any wait for an actor.
    switch: Arc<CutSwitch>,
    /// The user, once authenticated.
    user: Option<String>,
    /// The key or certificate the user logged in with, once authenticated.
    credential: Option<Credential>,
    /// Why a login whose key the client proved it holds was refused: said in the DISCONNECT
    /// that ends the connection (see [`SshHandler::decide`]).
    refused: Option<String>,
    /// The session channels, and the application that opens them.
    sessions: SessionChannels,
    /// How the logins went, for the source's penalties (see `penalties`).
    tally: Arc<LoginTally>,
    /// Where logins are recorded, if anywhere, and the connection's ID for the records.
    audit: Option<(Audit, ConnId)>,
}

impl SshHandler {
    /// The handler of the connection whose actor is `conn`.
    pub(crate) fn new(
        conn: ActorRef<ConnectionMsg>,
        auth: Arc<dyn Authenticator>,
        switch: Arc<CutSwitch>,
        sessions: SessionChannels,
    ) -> Self {
        Self {
            conn,
            auth,
            switch,
            user: None,
            credential: None,
            refused: None,
            sessions,
            tally: Arc::default(),
            audit: None,
        }
    }

    /// Records the logins of connection `conn` in `audit`.
    pub(crate) fn with_audit(mut self, audit: Option<Audit>, conn: ConnId) -> Self {
        self.audit = audit.map(|audit| (audit, conn));
        self
    }

    /// Records a login's verdict: `refused` says why, `None` accepted.
    fn audit_login(
        &self,
        user: &str,
        key: &PublicKey,
        credential: &Credential,
        refused: Option<&str>,
    ) {
        let Some((audit, conn)) = &self.audit else {
            return;
        };
        let conn = *conn;
        let peer = self.sessions.ends().peer;
        let key_type = key.algorithm().as_str().to_string();
        let fingerprint = credential.key_fingerprint.clone();
        audit.record(match refused {
            None => AuditRecord::LoginAccepted {
                conn,
                user: user.to_string(),
                key_type,
                fingerprint,
                certificate: credential.certificate.clone(),
                peer,
            },
            Some(reason) => AuditRecord::LoginRefused {
                conn,
                user: user.to_string(),
                key_type,
                fingerprint,
                peer,
                reason: reason.to_string(),
            },
        });
    }

    /// Tells `tally` how the logins go (the accept loop reads it when the connection ends).
    pub(crate) fn with_tally(mut self, tally: Arc<LoginTally>) -> Self {
        self.tally = tally;
        self
    }

    /// Asks `actor` and waits for its answer: `None` if the actor is gone or the connection
    /// is cut first (see the module docs: no timer).
    async fn reply_of<M: ractor::Message, T: Send + 'static>(
        &self,
        actor: &ActorRef<M>,
        msg: impl FnOnce(RpcReplyPort<T>) -> M,
    ) -> Option<T> {
        let (tx, rx) = ractor::concurrency::oneshot();
        actor.cast(msg(tx.into())).ok()?;
        tokio::select! {
            biased;
            answer = rx => answer.ok(),
            () = self.switch.cut_off() => None,
        }
    }

    fn check(&self, user: &str, key: &PublicKey) -> Auth {
        if self.auth.publickey(user, key) {
            Auth::Accept
        } else {
            if self.audit.is_some() {
                let credential = certs::key_credential(key.key_data());
                self.audit_login(user, key, &credential, Some("key not authorized"));
            }
            self.tally.refused();
            Auth::reject()
        }
    }

    /// Carries out the verdict on a login whose key the client proved it holds.
    ///
    /// A refusal must reach the person: an authentication failure cannot carry a text, and
    /// OpenSSH gives up at a failure when it has no other key, before it would read a
    /// DISCONNECT sent after it. So a refused login is let past authentication only to be
    /// ended at once, in `auth_succeeded`, with a DISCONNECT that says why: russh calls that
    /// right after, while handling the same request, so nothing the client sends next is read
    /// (and the tree never hears of the login). A max_per_user refusal goes the same way.
    fn decide(
        &mut self,
        user: &str,
        key: &PublicKey,
        verdict: Verdict,
        credential: Credential,
    ) -> Auth {
        let refused = match &verdict {
            Verdict::Accept(_) => None,
            Verdict::Reject => Some("key not authorized"),
            Verdict::Refuse(reason) => Some(reason.as_str()),
        };
        self.audit_login(user, key, &credential, refused);
        match verdict {
            Verdict::Accept(restrictions) => {
                info!(user, key = %credential.key_fingerprint, certificate = ?credential.certificate, ?restrictions, "login accepted");
                self.user = Some(user.to_string());
                self.sessions
                    .logged_in(restrictions, Some(credential.clone()));
                self.credential = Some(credential);
                Auth::Accept
            }
            Verdict::Reject => {
                debug!(user, key = %credential.key_fingerprint, "login rejected: key not known");
                self.tally.refused();
                Auth::reject()
            }
            Verdict::Refuse(reason) => {
                let peer = self.sessions.ends().peer;
                info!(user, %peer, key = %credential.key_fingerprint, certificate = ?credential.certificate, reason = %reason, "login refused");
                self.refused = Some(reason);
                // A failed login for the per-source penalties, though russh is told "accept".
                self.tally.refused();
                Auth::Accept
            }
        }
    }

    /// Reports the login and waits for the verdict: a login over a limit (`max_per_user`) is
    /// refused here, with the limit's text, before the client can open a channel (the
    /// connection is killed with the same reason, which then finds it gone).
    async fn authenticated(&mut self, session: &mut Session) -> Result<(), HandlerError> {
        let client_version = String::from_utf8_lossy(session.remote_sshid())
            .trim()
            .to_string();
        let user = self.user.clone().unwrap_or_default();
        let verdict = self
            .reply_of(&self.conn, |verdict| ConnectionMsg::Authenticated {
                user,
                method: "publickey".into(),
                client_version: Some(client_version),
                credential: self.credential.clone(),
                verdict: Some(verdict),
            })
            .await
            .ok_or(HandlerError::ActorGone)?;
        if let Err(reason) = verdict {
            session.disconnect(Disconnect::TooManyConnections, &reason, "en")?;
        }
        Ok(())
    }

    /// Ends a refused login's connection with a DISCONNECT that says why.
    fn say_refused(&self, session: &mut Session) -> Result<(), HandlerError> {
        if let Some(reason) = &self.refused {
            let text = format!("login refused: {reason}");
            session.disconnect(Disconnect::ByApplication, &text, "en")?;
        }
        Ok(())
    }

    /// Empties `channel`'s russh queue: called on every callback that follows a message russh
    /// queued there, so the queue never fills up before the session starts.
    fn drain(&self, channel: ChannelId) {
        if let Some(c) = self.sessions.get(channel) {
            c.held.drain();
        }
    }

    fn session(&self, channel: ChannelId) -> Option<&ActorRef<SessionMsg>> {
        self.sessions.get(channel).map(|c| &c.actor)
    }

    /// Asks the session actor of `channel` something answered with `Ok`/`Err(reason)`.
    async fn ask(
        &self,
        channel: ChannelId,
        msg: impl FnOnce(RpcReplyPort<Result<(), String>>) -> SessionMsg,
    ) -> bool {
        let Some(actor) = self.session(channel) else {
            return false;
        };
        matches!(self.reply_of(actor, msg).await, Some(Ok(())))
    }

    /// Answers a channel request that wanted a reply.
    fn answer(
        &self,
        channel: ChannelId,
        ok: bool,
        session: &mut Session,
    ) -> Result<(), HandlerError> {
        if ok {
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    /// Starts what the client asked for on `channel`; answers the request.
    async fn start(
        &mut self,
        channel: ChannelId,
        request: SessionRequest,
        session: &mut Session,
    ) -> Result<(), HandlerError> {
        self.drain(channel);
        let Some(actor) = self.session(channel).cloned() else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        let answer = self
            .reply_of(&actor, |reply| SessionMsg::Start { request, reply })
            .await;
        match answer {
            Some(Ok(())) => session.channel_success(channel)?,
            Some(Err(StartRefusal::Failed(text))) => {
                // A failed request makes OpenSSH exit before it prints anything the server
                // sent: accept it, explain on stderr, and end with status 1. The session actor
                // ends itself and closes the channel (queued behind these messages).
                info!(reason = %text, "session request refused");
                session.channel_success(channel)?;
                session.extended_data(channel, 1, format!("sshvisor: {text}\r\n").into_bytes())?;
                session.exit_status_request(channel, 1)?;
                session.eof(channel)?;
            }
            // The connection is being ended: its disconnect, with the reason, is on its way.
            // A failure now would make OpenSSH exit before it could print that reason.
            Some(Err(StartRefusal::Closing)) => {}
            Some(Err(StartRefusal::AlreadyStarted)) | None => session.channel_failure(channel)?,
        }
        Ok(())
    }

    /// Opens a session channel: the application's link, handed to a new session actor.
    async fn open_session(
        &mut self,
        channel: russh::Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), HandlerError> {
        let id = channel.id();
        if self.refused.is_some() || self.user.is_none() {
            // A refused login never gets a session: its DISCONNECT goes now if it was held
            // back (see `may_compress_after_login`).
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            self.say_refused(session)?;
            return Ok(());
        }
        let user = self.user.as_deref().unwrap_or_default();
        let (link, opening) = self.sessions.opening(user, session.handle(), channel);
        let answer = self
            .reply_of(&self.conn, |reply| ConnectionMsg::OpenSession {
                link,
                reply,
            })
            .await;
        match answer {
            Some(Ok((_, actor))) => {
                self.sessions.added(id, actor, opening);
                reply.accept().await;
            }
            Some(Err(text)) => {
                debug!(reason = %text, "session refused");
                // The refusal's text is what OpenSSH prints ("open failed: administratively
                // prohibited: <text>"): it names the limit, so the user knows what to change.
                reply
                    .reject(ChannelOpenFailure::Other {
                        code: ChannelOpenFailure::AdministrativelyProhibited.code(),
                        reason: text,
                    })
                    .await;
            }
            None => {
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }
}

/// Whether the connection may have agreed on compression that starts after the login
/// (`zlib@openssh.com`, what `ssh -C` asks for). russh begins compressing what it sends only
/// once the client's next packet is in, so a DISCONNECT sent right after the login's success
/// would reach OpenSSH uncompressed ("invalid format"). Then a refused login is told why at
/// the client's next request (its session channel: what OpenSSH sends next); a client that
/// sends none is ended by the login grace.
fn may_compress_after_login(session: &Session) -> bool {
    session
        .config()
        .preferred
        .compression
        .iter()
        .any(|c| c.as_ref() == "zlib@openssh.com")
}

impl russh::server::Handler for SshHandler {
    type Error = HandlerError;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.check(user, offer.public_key))
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let peer = self.sessions.ends().peer.ip();
        let verdict = self.auth.login(user, key.public_key, peer);
        let credential = certs::key_credential(key.public_key.key_data());
        Ok(self.decide(user, key.public_key, verdict, credential))
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &Certificate,
    ) -> Result<Auth, Self::Error> {
        let peer = self.sessions.ends().peer.ip();
        let verdict = self.auth.certificate(user, certificate, peer);
        let credential = certs::certificate_credential(certificate);
        let key = PublicKey::from(certificate.public_key().clone());
        Ok(self.decide(user, &key, verdict, credential))
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        if self.refused.is_some() {
            if !may_compress_after_login(session) {
                self.say_refused(session)?;
            }
            return Ok(());
        }
        self.tally.succeeded();
        Box::pin(self.authenticated(session)).await
    }

    async fn channel_open_session(
        &mut self,
        channel: russh::Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        Box::pin(self.open_session(channel, reply, session)).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        Box::pin(self.start(channel, SessionRequest::Exec { command }, session)).await
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        Box::pin(self.start(channel, SessionRequest::Shell, session)).await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let request = SessionRequest::Subsystem {
            name: name.to_string(),
        };
        Box::pin(self.start(channel, request, session)).await
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let pty = PtySpec {
            term: term.to_string(),
            cols: col_width,
            rows: row_height,
            pix_width,
            pix_height,
            modes: modes.iter().map(|(op, v)| (*op as u8, *v)).collect(),
        };
        self.drain(channel);
        let ok = Box::pin(self.ask(channel, |reply| SessionMsg::Pty { pty, reply })).await;
        self.answer(channel, ok, session)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.drain(channel);
        // Which names a session takes is its link's business (the default one refuses what is
        // not a variable name, see `session::env`).
        let (name, value) = (name.to_string(), value.to_string());
        let ok = Box::pin(self.ask(channel, |reply| SessionMsg::Env { name, value, reply })).await;
        self.answer(channel, ok, session)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        cols: u32,
        rows: u32,
        pix_width: u32,
        pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.drain(channel);
        let Some(c) = self.sessions.get(channel) else {
            return Ok(());
        };
        // As the client sent it: the link clamps it to what its terminal takes. The terminal
        // gets it through the stdin queue, in order with what the client types (through the
        // actor it could come after the next command read the size); the actor only keeps the
        // size the link used for listings (and applies it once the client sent its EOF).
        if let Stdin::Sink(stdin) = &c.stdin {
            stdin.resize(cols, rows, pix_width, pix_height);
        }
        let _ = c.actor.cast(SessionMsg::Resize {
            cols,
            rows,
            pix_width,
            pix_height,
        });
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: russh::Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.drain(channel);
        if let Some(actor) = self.session(channel) {
            let _ = actor.cast(SessionMsg::Signal {
                name: sig_name(&signal),
            });
        }
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Straight into the session's stdin sink, never waiting: russh's loop must keep running
        // to send the command's output, which the command may be blocked on. The sink decides
        // what it cannot take; the handler only delivers that decision. A link without a sink
        // gets every byte through its actor instead (`SessionLink::stdin`'s promise).
        let Some(c) = self.sessions.get_mut(channel) else {
            self.sessions.activity().received(data.len());
            return Ok(());
        };
        c.held.drain();
        c.activity.received(data.len());
        let stdin = match &c.stdin {
            Stdin::Sink(stdin) => stdin,
            Stdin::Actor => {
                let data = data.to_vec();
                let _ = c.actor.cast(SessionMsg::Data { data });
                return Ok(());
            }
            Stdin::Closed => return Ok(()),
        };
        if let Err(StdinRefusal::EndSession { reason, grace }) = stdin.push(data) {
            c.stdin = Stdin::Closed;
            // The client is told why on stderr; the exit status (or signal) follows when the
            // command has ended.
            session.extended_data(
                channel,
                1,
                format!("sshvisor: session ended: {reason}\r\n").into_bytes(),
            )?;
            let _ = c.actor.cast(SessionMsg::Terminate {
                reason: Some(reason),
                grace,
                scope: EndScope::Session,
            });
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(c) = self.sessions.get_mut(channel) {
            c.held.drain();
            c.stdin = Stdin::Closed;
            let _ = c.actor.cast(SessionMsg::ClientEof);
        }
        Ok(())
    }

    async fn extended_data(
        &mut self,
        channel: ChannelId,
        _code: u32,
        _data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // A client's stderr means nothing to a session; only its queued copy must go.
        self.drain(channel);
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: russh::Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.refused.is_some() {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return self.say_refused(session);
        }
        debug!("TCP forwarding is not served");
        reply
            .reject(ChannelOpenFailure::Other {
                code: ChannelOpenFailure::AdministrativelyProhibited.code(),
                reason: "TCP forwarding is not served".into(),
            })
            .await;
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.drain(channel);
        debug!("X11 forwarding is not served");
        self.answer(channel, false, session)
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.drain(channel);
        debug!("agent forwarding is not served");
        Ok(false)
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(c) = self.sessions.remove(channel) {
            let _ = c.actor.cast(SessionMsg::ClientClosed);
        }
        Ok(())
    }
}
