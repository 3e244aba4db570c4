//! sshvisor-actors: the supervised actor tree of sshvisor.
//!
//! Every SSH connection is a `ConnectionActor` and every session channel a `SessionActor`, under
//! one `SupervisorActor` that owns the ID map. The tree knows nothing of russh or sockets: it
//! reaches a connection through a [`ConnectionLink`] and a session through a [`SessionLink`], so
//! the same tree runs over russh in production and over fakes in the actor harness.
//!
//! # Layout
//!
//! - `handle`: [`SupervisorHandle`], the typed door into the tree: every request an embedding
//!   program or the daemon makes, with one error type and one timeout story.
//! - `ids`: [`ConnId`], [`SessionId`], [`Target`] and prefix resolution for operators.
//! - `link`: the link traits, the only way out of the tree, and [`SessionEvents`].
//! - `policy`: [`Policy`] and [`Limits`], what the tree applies and admits by.
//! - `filter`: [`Filter`], which connections a `KillWhere` or `Select` means.
//! - `report`: plain data handed out: snapshots, kill reports, refusals.
//! - `killed_by`: [`killed_by::KilledBy`], who asked for a kill, as its `by` text names it.
//! - `events`: lifecycle [`Event`]s, and [`events::subscribe`] to hear them as a channel.
//! - `supervisor`: the root actor; its pieces (the ID map, admission counts, the login timer,
//!   kill groups) in files of their own below it.
//! - `connection`: one actor per transport; its phase and transitions in `connection::phase`.
//! - `session`: one actor per session channel.
//! - `notice`: what children tell the supervisor (sealed: built only inside this crate).
//! - `idle`, `timers`: the idle clock, and the messages an actor sends itself later.
//! - `message`: ractor's `Message` impls with the `cluster` feature; without it, a check that
//!   names the fix when something else turned on ractor's `cluster` (see Embedding).
//!
//! # Embedding
//!
//! Spawn the tree linked under your own actor with [`SupervisorHandle::spawn`] and talk to it
//! through the handle's methods (list, kill, kill where, drain, subscribe, ...); the request
//! variants of [`SupervisorMsg`] stay public for programs that send messages themselves.
//! `examples/embed.rs` is a complete program.
//!
//! A build with ractor's `cluster` feature on (ractor_cluster anywhere in it) needs this crate's
//! `cluster` feature too: it gives every message type of the tree its own `Message` impl.

#![warn(missing_docs, unreachable_pub)]

// First, so that its check's error comes first when ractor's `cluster` is on without ours.
mod message;

pub mod connection;
pub mod events;
pub mod filter;
pub mod handle;
mod idle;
pub mod ids;
pub mod killed_by;
pub mod link;
pub mod notice;
pub mod policy;
pub mod report;
pub mod session;
pub mod supervisor;
mod timers;

use ractor::{Actor, ActorCell, ActorRef, SpawnErr};

pub use connection::{ConnectionActor, ConnectionMsg};
pub use events::{EndFigures, Event};
pub use filter::{Filter, PeerNet};
pub use handle::{Admitted, HandleError, SupervisorHandle};
pub use ids::{resolve_prefix, ConnId, PrefixMatch, SessionId, Target};
pub use link::{
    ConnectionLink, EndScope, PtySpec, SessionEvents, SessionLink, SessionRequest, Traffic,
    TransportEnd, Winding,
};
pub use policy::{Limits, Policy, DEFAULT_KILL_GRACE, DEFAULT_LOGIN_GRACE, MIN_PENDING_AGE};
pub use report::{
    Census, CertificateInfo, ConnState, ConnectionInfo, Credential, DisconnectCause, KillError,
    KillReport, PendingKill, PtyInfo, Refusal, SessionExit, SessionInfo, SessionKind, TreeStats,
};
pub use session::{SessionActor, SessionMsg, StartRefusal};
pub use supervisor::{Selection, SupervisorActor, SupervisorArgs, SupervisorMsg};

/// Spawns the supervisor, unnamed, linked under `parent` when given (the embedding program's own
/// supervisor) or standalone otherwise.
pub async fn spawn_supervisor(
    parent: Option<ActorCell>,
    args: SupervisorArgs,
) -> Result<ActorRef<SupervisorMsg>, SpawnErr> {
    let (actor, _) = match parent {
        Some(parent) => Actor::spawn_linked(None, SupervisorActor, args, parent).await?,
        None => Actor::spawn(None, SupervisorActor, args).await?,
    };
    Ok(actor)
}
