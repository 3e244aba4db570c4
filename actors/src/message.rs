//! ractor's `Message` trait for every message type of the tree, when ractor's `cluster` feature is
//! on (this crate's `cluster` feature).
//!
//! Without `cluster`, ractor implements `Message` for every `Send + 'static` type itself. With it,
//! that blanket impl is gone and each type needs its own; an impl of our own would then conflict
//! with the blanket one, so these exist only together with the feature. Cargo unifies features
//! across a build: a host program that turns on `ractor/cluster` (directly or through
//! ractor_cluster) turns it on for this crate too, and must turn on `sshvisor-actors/cluster` to
//! get these impls. All of them are local-only: the trait's defaults say "not serializable", so
//! none of these messages can cross nodes (they carry reply ports, links and actor references).

#[cfg(feature = "cluster")]
macro_rules! local_message {
    ($($ty:ty),+ $(,)?) => {
        $(impl ractor::Message for $ty {})+
    };
}

// Every type an actor of this crate receives (`Actor::Msg`) or an output port carries.
#[cfg(feature = "cluster")]
local_message!(
    crate::supervisor::SupervisorMsg,
    crate::connection::ConnectionMsg,
    crate::session::SessionMsg,
    crate::events::Event,
);

/// Named so that the compiler says what to do: without our feature this type is a `Message`
/// only through ractor's blanket impl, so when something else in the build turns on
/// `ractor/cluster`, the bound below fails with this name, first of the tree's errors (lib.rs
/// declares this module first).
#[cfg(not(feature = "cluster"))]
struct RactorClusterIsOnSoTurnOnTheClusterFeatureOfSshvisorActors;

#[cfg(not(feature = "cluster"))]
#[allow(dead_code)]
struct Guard
where
    RactorClusterIsOnSoTurnOnTheClusterFeatureOfSshvisorActors: ractor::Message;
