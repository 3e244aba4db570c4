//! An embedding program serves its own session application through `SshOptions::sessions`,
//! without touching the russh handler: a real russh client against a listener on 127.0.0.1:0.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::server::Handle;
use russh::ChannelId;
use sshvisor::ssh::algorithms::Algorithms;
use sshvisor::ssh::keys::{load_or_create_key, AuthorizedKeys};
use sshvisor::ssh::server::{SshListener, SshOptions};
use sshvisor::ssh::sessions::{ConnectionSessions, Login, SessionChannel, SessionFactory};
use sshvisor_actors::link::{StdinRefusal, StdinSink};
use sshvisor_actors::{
    EndScope, SessionEvents, SessionExit, SessionLink, SessionRequest, SupervisorArgs,
    SupervisorHandle, Winding,
};

use common::{drain, russh_connect, text, WAIT};

/// The embedding program's application: `exec` of anything answers, at the client's EOF, with
/// who ran what and what they typed, shouted; the exit status is 3. Its stdin takes at most
/// `limit` bytes, then ends the session with its own reason. With `sink` false its links give
/// no stdin sink, and the client's bytes reach them through `SessionLink::data` only.
struct Shouting {
    limit: usize,
    sink: bool,
}

impl SessionFactory for Shouting {
    fn connection(&self, login: &Login<'_>) -> Box<dyn ConnectionSessions> {
        Box::new(ShoutingConnection {
            user: login.user.to_string(),
            limit: self.limit,
            sink: self.sink,
        })
    }
}

struct ShoutingConnection {
    user: String,
    limit: usize,
    sink: bool,
}

impl ConnectionSessions for ShoutingConnection {
    fn open(&mut self, channel: SessionChannel) -> Box<dyn SessionLink> {
        // Everything arrives through callbacks: the channel's own queue is not needed.
        channel.channel.release();
        Box::new(Shout {
            handle: channel.handle.clone(),
            id: channel.id(),
            user: self.user.clone(),
            typed: Input::new(self.limit),
            sink: self.sink,
            command: String::new(),
            events: None,
        })
    }
}

/// What the client typed, shared by the link and its stdin sink.
#[derive(Clone)]
struct Input {
    bytes: Arc<Mutex<Vec<u8>>>,
    limit: usize,
}

impl Input {
    fn new(limit: usize) -> Self {
        Self {
            bytes: Arc::default(),
            limit,
        }
    }
}

impl StdinSink for Input {
    fn push(&self, data: &[u8]) -> Result<(), StdinRefusal> {
        let mut bytes = self.bytes.lock().unwrap();
        if bytes.len() + data.len() > self.limit {
            return Err(StdinRefusal::EndSession {
                reason: "that is enough shouting".into(),
                grace: Duration::from_secs(1),
            });
        }
        bytes.extend_from_slice(data);
        Ok(())
    }
}

struct Shout {
    handle: Handle,
    id: ChannelId,
    user: String,
    typed: Input,
    /// Whether `stdin` gives a sink.
    sink: bool,
    command: String,
    events: Option<SessionEvents>,
}

impl Shout {
    /// Sends `answer` (if any), the exit status, EOF and CLOSE; then the session is over.
    fn finish(&mut self, answer: Option<String>, status: u32) {
        let (handle, id) = (self.handle.clone(), self.id);
        let events = self.events.take();
        tokio::spawn(async move {
            if let Some(answer) = answer {
                let _ = handle.data(id, answer.into_bytes()).await;
            }
            let _ = handle.exit_status_request(id, status).await;
            let _ = handle.eof(id).await;
            let _ = handle.close(id).await;
            if let Some(events) = events {
                events.finished(SessionExit::Status(status));
            }
        });
    }
}

impl SessionLink for Shout {
    fn start(&mut self, request: &SessionRequest, events: SessionEvents) -> Result<(), String> {
        let SessionRequest::Exec { command } = request else {
            return Err("this application only runs exec requests".into());
        };
        self.command = command.clone();
        self.events = Some(events);
        Ok(())
    }

    fn stdin(&mut self) -> Option<Box<dyn StdinSink>> {
        self.sink
            .then(|| Box::new(self.typed.clone()) as Box<dyn StdinSink>)
    }

    fn data(&mut self, data: Vec<u8>) {
        let _ = self.typed.push(&data);
    }

    fn eof(&mut self) {
        let typed = String::from_utf8_lossy(&self.typed.bytes.lock().unwrap()).to_uppercase();
        let answer = format!("{} ran {:?} and typed {typed}", self.user, self.command);
        self.finish(Some(answer), 3);
    }

    fn terminate(&mut self, _scope: EndScope) -> Winding {
        if self.events.is_some() {
            self.finish(None, 1);
            Winding::Pending
        } else {
            Winding::Done
        }
    }

    fn force(&mut self) -> Winding {
        Winding::Done
    }
}

/// A listener serving `Shouting` on 127.0.0.1:0, and the client key that may log in.
async fn shouting_server(limit: usize, sink: bool) -> (SshListener, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (host_key, _) = load_or_create_key(&dir.path().join("host"), "host").expect("host key");
    let (client_key, _) =
        load_or_create_key(&dir.path().join("client"), "client").expect("client key");
    let tree = SupervisorHandle::spawn(None, SupervisorArgs::new())
        .await
        .expect("supervisor");
    let listener = SshListener::bind(
        SshOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            host_key,
            auth: Arc::new(AuthorizedKeys::from_keys([client_key.public_key().clone()])),
            keepalive: (None, 3),
            sessions: Arc::new(Shouting { limit, sink }),
            algorithms: Algorithms::default(),
            penalties: sshvisor::ssh::penalties::PenaltyPolicy::loopback_exempt(),
        },
        tree,
    )
    .await
    .expect("listener");
    (listener, dir)
}

/// Runs `greet` on a `Shouting` server (stdin limit `limit`, with or without its own sink) as
/// "ann", sends `input` in the given pieces (then EOF when `eof`), and returns what the client
/// got once the session ended.
async fn shout(limit: usize, sink: bool, input: &[&[u8]], eof: bool) -> common::ExecResult {
    let (listener, dir) = shouting_server(limit, sink).await;
    let client = russh_connect(
        listener.local_addr().port(),
        &dir.path().join("client"),
        "ann",
    )
    .await
    .expect("connect");
    assert!(client.authenticated);
    let mut channel = client.handle.channel_open_session().await.expect("open");
    channel.exec(true, "greet").await.expect("exec");
    for piece in input {
        channel.data(*piece).await.expect("data");
    }
    if eof {
        channel.eof().await.expect("eof");
    }
    tokio::time::timeout(WAIT, drain(&mut channel))
        .await
        .expect("the session ends")
}

#[tokio::test]
async fn an_embedders_own_session_application_is_served_with_the_clients_input() {
    let result = shout(1024, true, &[b"hello ", b"there"], true).await;
    assert_eq!(
        text(&result.stdout),
        "ann ran \"greet\" and typed HELLO THERE"
    );
    assert_eq!(result.status, Some(3));
}

#[tokio::test]
async fn an_embedders_stdin_sink_ends_its_session_with_its_own_reason() {
    let result = shout(8, true, &[b"far more than eight bytes"], false).await;
    assert_eq!(
        text(&result.stderr),
        "sshvisor: session ended: that is enough shouting\r\n"
    );
    assert_eq!(result.status, Some(1));
    assert!(result.stdout.is_empty());
}

#[tokio::test]
async fn an_application_without_a_stdin_sink_gets_the_clients_input_through_data() {
    let result = shout(1024, false, &[b"hello ", b"there"], true).await;
    assert_eq!(
        text(&result.stdout),
        "ann ran \"greet\" and typed HELLO THERE"
    );
    assert_eq!(result.status, Some(3));
}
