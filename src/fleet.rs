//! The fleet: many sshvisor nodes seen and controlled as one (behind the `fleet` feature), on
//! ractor_cluster's nodes and process groups. Only `report` (what the fleet answers, plain
//! data) is there without the feature, for `ctl` to read a fleet's answers in any build.
//!
//! - `view`: [`Fleet`], the typed door: `nodes`, `list`, `resolve`, `kill`, `kill_where`,
//!   `watch`, each asking every node in parallel with a timeout and answering once.
//! - `agent`: the `FleetAgent`, one per node in the fleet's process group, serving the others
//!   through the node's `SupervisorHandle`.
//! - `members`: the table of nodes and its heartbeat (up, or unreachable since when).
//! - `report`: the answers' types (`NodeOutcome`, `Located`, `FleetListing`, `FleetKill`,
//!   `NodeView`).
//! - `wire`: what crosses between nodes: one remotable message carrying plain data as JSON.
//! - `links`: ractor_cluster's node server, with the TCP and TLS of every link done here
//!   (handshake timeouts, refusals logged with their reason, joins retried).
//! - `options`: `--fleet-*` and `[fleet]` checked into what `links` needs.
//! - `certs`: `sshvisor fleet certs`: the fleet's CA, node certificates and cookie.
//! - `tls`: the mutual TLS of links between nodes, loaded from `--fleet-tls-ca`,
//!   `--fleet-tls-cert`, `--fleet-tls-key`.

#[cfg(feature = "fleet")]
pub mod agent;
#[cfg(feature = "fleet")]
pub mod certs;
#[cfg(feature = "fleet")]
pub mod links;
#[cfg(feature = "fleet")]
pub mod members;
#[cfg(feature = "fleet")]
pub mod options;
pub mod report;
#[cfg(feature = "fleet")]
pub mod tls;
#[cfg(feature = "fleet")]
pub mod view;
#[cfg(feature = "fleet")]
pub mod wire;

pub use report::{
    FleetKill, FleetListing, Located, NodeOutcome, NodeState, NodeStatus, NodeView, Reply,
};
#[cfg(feature = "fleet")]
pub use view::{Fleet, FleetError, FleetEvent, FleetSetup, Watched};
