//! The session channels of one connection, as its russh handler keeps them: the actor each
//! channel's messages go to, where its stdin goes, its held russh queue; and the application that
//! opens new ones.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{ActorRef, ActorStatus};
use russh::server::{Handle, Msg};
use russh::ChannelId;
use sshvisor_actors::link::StdinSink;
use sshvisor_actors::{Credential, SessionLink, SessionMsg};

use crate::ssh::activity::Activity;
use crate::ssh::after_goodbye::AfterGoodbye;
use crate::ssh::held_channel::HeldChannel;
use crate::ssh::restrictions::Restrictions;
use crate::ssh::sessions::{ConnectionSessions, Endpoints, Login, SessionChannel, SessionFactory};

/// One session channel.
pub(crate) struct Channel {
    /// The session's actor.
    pub(crate) actor: ActorRef<SessionMsg>,
    /// The session's traffic (counts for the connection's too).
    pub(crate) activity: Arc<Activity>,
    /// Where the client's bytes go.
    pub(crate) stdin: Stdin,
    /// The channel's own russh queue, drained until the session starts (see `held_channel`).
    pub(crate) held: HeldChannel,
}

/// Where the client's bytes on a session channel go.
pub(crate) enum Stdin {
    /// Straight into the link's own sink, without a hop through the session actor.
    Sink(Box<dyn StdinSink>),
    /// The link gave no sink: to its session actor (`SessionMsg::Data`), which hands them to
    /// the link's `data`.
    Actor,
    /// Nowhere: the client sent EOF, or the sink refused more and ended the session.
    Closed,
}

/// A session channel whose link is on its way to its actor (see [`SessionChannels::added`]).
pub(crate) struct Opening {
    activity: Arc<Activity>,
    stdin: Stdin,
    held: HeldChannel,
}

/// The session channels of one connection, and how to open more.
pub(crate) struct SessionChannels {
    /// Who makes the connection's session applications, and with what.
    factory: Arc<dyn SessionFactory>,
    ends: Endpoints,
    /// What the login may do, and with what key: set once authenticated.
    restrictions: Restrictions,
    credential: Option<Credential>,
    /// This connection's session applications, made at its first session.
    apps: Option<Box<dyn ConnectionSessions>>,
    /// The connection's traffic.
    activity: Arc<Activity>,
    /// What the connection keeps until its DISCONNECT is queued.
    after_goodbye: Arc<AfterGoodbye>,
    open: HashMap<ChannelId, Channel>,
}

impl SessionChannels {
    /// No channel yet; sessions will be made by `factory`.
    pub(crate) fn new(
        factory: Arc<dyn SessionFactory>,
        ends: Endpoints,
        activity: Arc<Activity>,
        after_goodbye: Arc<AfterGoodbye>,
    ) -> Self {
        Self {
            factory,
            ends,
            restrictions: Restrictions::unrestricted(),
            credential: None,
            apps: None,
            activity,
            after_goodbye,
            open: HashMap::new(),
        }
    }

    /// The connection's two ends.
    pub(crate) fn ends(&self) -> Endpoints {
        self.ends
    }

    /// The login is decided: its sessions are made within `restrictions`.
    pub(crate) fn logged_in(&mut self, restrictions: Restrictions, credential: Option<Credential>) {
        self.restrictions = restrictions;
        self.credential = credential;
    }

    /// The connection's traffic.
    pub(crate) fn activity(&self) -> &Activity {
        &self.activity
    }

    /// The session of `channel`.
    pub(crate) fn get(&self, channel: ChannelId) -> Option<&Channel> {
        self.open.get(&channel)
    }

    /// The session of `channel`, to change.
    pub(crate) fn get_mut(&mut self, channel: ChannelId) -> Option<&mut Channel> {
        self.open.get_mut(&channel)
    }

    /// Forgets `channel`'s session.
    pub(crate) fn remove(&mut self, channel: ChannelId) -> Option<Channel> {
        self.open.remove(&channel)
    }

    /// The link of a new session on `channel` for `user`, made by the connection's
    /// application, with what the handler keeps of it ([`added`](Self::added) once the
    /// session's actor runs, dropped if it was refused).
    pub(crate) fn opening(
        &mut self,
        user: &str,
        handle: Handle,
        channel: russh::Channel<Msg>,
    ) -> (Box<dyn SessionLink>, Opening) {
        // Channels the server closed itself never get a `channel_close` callback: forget the
        // sessions that are over.
        self.open.retain(|_, c| {
            !matches!(
                c.actor.get_status(),
                ActorStatus::Stopping | ActorStatus::Stopped
            )
        });
        let apps = self.apps.get_or_insert_with(|| {
            self.factory.connection(&Login {
                user,
                ends: self.ends,
                restrictions: &self.restrictions,
                credential: self.credential.as_ref(),
            })
        });
        let activity = self.activity.child();
        let held = HeldChannel::new(channel);
        let mut link = apps.open(SessionChannel {
            handle,
            channel: held.clone(),
            activity: activity.clone(),
            after_goodbye: self.after_goodbye.clone(),
        });
        let stdin = link.stdin().map_or(Stdin::Actor, Stdin::Sink);
        let opening = Opening {
            activity,
            stdin,
            held,
        };
        (link, opening)
    }

    /// The session on `channel` runs: its actor is `actor`.
    pub(crate) fn added(
        &mut self,
        channel: ChannelId,
        actor: ActorRef<SessionMsg>,
        opening: Opening,
    ) {
        let Opening {
            activity,
            stdin,
            held,
        } = opening;
        self.open.insert(
            channel,
            Channel {
                actor,
                activity,
                stdin,
                held,
            },
        );
    }
}
