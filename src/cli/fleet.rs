//! `sshvisor fleet`: setting up a fleet of nodes. `fleet certs` writes the CA, one certificate
//! per node and the cookie, and says how to start each node.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use sshvisor::fleet::certs::{self, CertsRequest};

#[derive(Subcommand)]
pub(crate) enum FleetCmd {
    /// Make the fleet's CA (ca.pem, ca.key), a certificate per node (NODE.pem, NODE.key) and
    /// the fleet cookie (cookie) in DIR. Keys and the cookie are mode 0600. Nothing is
    /// replaced without --force; an existing CA is kept and signs the new nodes.
    Certs {
        /// Where to write the files (made if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The node names, comma-separated (DNS labels: each is its certificate's DNS name).
        #[arg(long, value_name = "a,b,c")]
        nodes: String,
        /// An address a node is joined at, also put in its certificate (repeatable).
        #[arg(long = "ip", value_name = "NODE=ADDR")]
        ips: Vec<String>,
        /// How many days the certificates are valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Replace files that exist (with a new CA, every node needs a new certificate).
        #[arg(long)]
        force: bool,
    },
}

/// Runs a `fleet` command.
pub(crate) fn run(command: FleetCmd) -> anyhow::Result<ExitCode> {
    match command {
        FleetCmd::Certs {
            dir,
            nodes,
            ips,
            days,
            force,
        } => {
            let nodes = certs::parse_nodes(&nodes, &ips)?;
            let req = CertsRequest {
                dir,
                nodes,
                days,
                force,
            };
            let written = certs::make(&req)?;
            print!("{}", summary(&req, &written));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What was written, and how each node is started with it.
fn summary(req: &CertsRequest, written: &certs::Written) -> String {
    let dir = req.dir.display();
    let mut out = String::new();
    if written.kept_ca {
        out.push_str(&format!("kept the CA in {dir} (ca.pem, ca.key)\n"));
    }
    for file in &written.files {
        out.push_str(&format!("wrote {}\n", file.display()));
    }
    if written.kept_cookie {
        out.push_str(&format!("kept the cookie {dir}/cookie\n"));
    }
    out.push_str(
        "\nCopy ca.pem, cookie, NODE.pem and NODE.key to each node (ca.key stays here), then \
         start each node, e.g. (each node joins the ones before it, so every pair is linked):\n",
    );
    for (i, node) in req.nodes.iter().enumerate() {
        let name = &node.name;
        let join: String = req.nodes[..i]
            .iter()
            .map(|before| format!(" --fleet-join {}:7070", before.name))
            .collect();
        out.push_str(&format!(
            "  sshvisor serve --fleet-node-name {name} --fleet-listen 0.0.0.0:7070{join} \
             --fleet-cookie-file {dir}/cookie --fleet-tls-ca {dir}/ca.pem \
             --fleet-tls-cert {dir}/{name}.pem --fleet-tls-key {dir}/{name}.key\n"
        ));
    }
    out
}
