//! The fleet: many sshvisor nodes seen and controlled as one (behind the `fleet` feature), on
//! ractor_cluster's nodes and process groups.
//!
//! - `view`: [`Fleet`], the typed door: `nodes`, `list`, `resolve`, `kill`, `kill_where`,
//!   `watch`, each asking every node in parallel with a timeout and answering once.
//! - `agent`: the `FleetAgent`, one per node in the fleet's process group, serving the others
//!   through the node's `SupervisorHandle`.
//! - `members`: the table of nodes and its heartbeat (up, or unreachable since when).
//! - `wire`: what crosses between nodes: one remotable message carrying plain data as JSON.
//! - `links`: ractor_cluster's node server, with the TCP and TLS of every link done here
//!   (handshake timeouts, refusals logged with their reason, joins retried).
//! - `options`: `--fleet-*` and `[fleet]` checked into what `links` needs.
//! - `certs`: `sshvisor fleet certs`: the fleet's CA, node certificates and cookie.
//! - `tls`: the mutual TLS of links between nodes, loaded from `--fleet-tls-ca`,
//!   `--fleet-tls-cert`, `--fleet-tls-key`.

pub mod agent;
pub mod certs;
pub mod links;
pub mod members;
pub mod options;
pub mod tls;
pub mod view;
pub mod wire;

pub use view::{
    Fleet, FleetError, FleetEvent, FleetKill, FleetListing, FleetSetup, Located, NodeOutcome,
    NodeView, Watched,
};
