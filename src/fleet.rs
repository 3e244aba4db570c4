//! The fleet: many sshvisor nodes seen and controlled as one (behind the `fleet` feature).
//!
//! - `certs`: `sshvisor fleet certs`: the fleet's CA, node certificates and cookie.
//! - `tls`: the mutual TLS of links between nodes, loaded from `--fleet-tls-ca`,
//!   `--fleet-tls-cert`, `--fleet-tls-key`.

pub mod certs;
pub mod tls;
