//! `[fleet]` (and `serve --fleet-*`) checked into what the links need, with a refusal that
//! says what to do for every way it can be wrong:
//!
//! - no cookie file, an empty one, or one others may read;
//! - only some of the three TLS files;
//! - no TLS without `--fleet-insecure`, and `--fleet-insecure` with any address (the listen
//!   address or a join target, as resolved) off loopback;
//! - a node name that is not a plain word (it is shown in every answer and log line).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::daemon::config::FleetConfig;

use super::links::LinkOptions;
use super::tls::{FleetTls, TlsFiles};

/// The longest node name.
pub const MAX_NAME: usize = 64;

/// What `[fleet]` asks for, checked; `None` when the node is not in a fleet.
pub async fn link_options(config: &FleetConfig) -> Result<Option<LinkOptions>, String> {
    let Some(listen) = config.listen else {
        if !config.join.is_empty() {
            return Err("fleet: --fleet-join needs --fleet-listen (every node in a fleet accepts links too)".into());
        }
        return Ok(None);
    };
    let name = match &config.node_name {
        Some(name) => name.clone(),
        None => nix::unistd::gethostname()
            .map_err(|e| format!("fleet: no --fleet-node-name and cannot read the host name: {e}"))?
            .to_string_lossy()
            .into_owned(),
    };
    check_name(&name)?;
    let cookie_file = config.cookie_file.as_deref().ok_or(
        "fleet: --fleet-cookie-file is needed (every node of a fleet shares one; `sshvisor fleet certs --dir DIR --nodes a,b,c` writes DIR/cookie)",
    )?;
    let cookie = read_cookie(cookie_file)?;
    let tls = match (&config.tls_ca, &config.tls_cert, &config.tls_key) {
        (Some(ca), Some(cert), Some(key)) => Some(
            FleetTls::load(&TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            })
            .map_err(|e| format!("fleet: {e}"))?,
        ),
        (None, None, None) => None,
        _ => return Err("fleet: give all three of --fleet-tls-ca, --fleet-tls-cert and --fleet-tls-key (`sshvisor fleet certs` makes them)".into()),
    };
    if tls.is_none() {
        if !config.insecure {
            return Err("fleet: links between nodes are encrypted: give --fleet-tls-ca, --fleet-tls-cert and --fleet-tls-key (made by `sshvisor fleet certs --dir DIR --nodes a,b,c`), or, for a test on one machine only, --fleet-insecure".into());
        }
        insecure_only_on_loopback(listen, &config.join).await?;
    }
    Ok(Some(LinkOptions {
        name,
        listen,
        join: config.join.clone(),
        cookie,
        tls,
    }))
}

fn check_name(name: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(plain) {
        return Err(format!(
            "fleet: node name {name:?} must be 1 to {MAX_NAME} letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

fn read_cookie(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("fleet: cannot read the cookie file {shown}: {e}"))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "fleet: the cookie file {shown} may be read by others (mode {:o}): `chmod 600 {shown}`",
            meta.permissions().mode() & 0o777
        ));
    }
    let cookie = std::fs::read_to_string(path)
        .map_err(|e| format!("fleet: cannot read the cookie file {shown}: {e}"))?
        .trim()
        .to_string();
    if cookie.is_empty() {
        return Err(format!("fleet: the cookie file {shown} is empty"));
    }
    Ok(cookie)
}

async fn insecure_only_on_loopback(listen: SocketAddr, join: &[String]) -> Result<(), String> {
    let refuse = |what: &str| {
        Err(format!(
            "fleet: --fleet-insecure is refused for {what}, which is off loopback: links that leave this machine must use TLS (`sshvisor fleet certs`)"
        ))
    };
    if !listen.ip().is_loopback() {
        return refuse(&format!("--fleet-listen {listen}"));
    }
    for target in join {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target.as_str())
            .await
            .map_err(|e| format!("fleet: cannot resolve --fleet-join {target}: {e}"))?
            .collect();
        if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
            return refuse(&format!("--fleet-join {target}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insecure(listen: &str, join: &[&str]) -> FleetConfig {
        let dir = std::env::temp_dir().join(format!("sshvisor-cookie-{}", std::process::id()));
        std::fs::write(&dir, "secret\n").unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o600)).unwrap();
        FleetConfig {
            listen: Some(listen.parse().unwrap()),
            join: join.iter().map(|s| s.to_string()).collect(),
            cookie_file: Some(dir),
            node_name: Some("a".into()),
            insecure: true,
            ..FleetConfig::default()
        }
    }

    #[tokio::test]
    async fn insecure_links_are_refused_off_loopback() {
        let ok = link_options(&insecure(
            "127.0.0.1:0",
            &["127.0.0.1:7001", "localhost:7002"],
        ))
        .await
        .unwrap()
        .unwrap();
        assert_eq!(ok.cookie, "secret");
        let e = link_options(&insecure("0.0.0.0:7000", &[]))
            .await
            .err()
            .unwrap();
        assert!(
            e.contains("--fleet-listen 0.0.0.0:7000") && e.contains("off loopback"),
            "{e}"
        );
        let e = link_options(&insecure("127.0.0.1:0", &["10.1.2.3:7000"]))
            .await
            .err()
            .unwrap();
        assert!(e.contains("--fleet-join 10.1.2.3:7000"), "{e}");
        let mut plain = insecure("127.0.0.1:0", &[]);
        plain.insecure = false;
        let e = link_options(&plain).await.err().unwrap();
        assert!(e.contains("--fleet-tls-ca"), "{e}");
    }

    #[test]
    fn names_and_cookies_are_checked() {
        assert!(check_name("node-1.eu").is_ok());
        assert!(check_name("a b").is_err());
        assert!(check_name("").is_err());
        let path =
            std::env::temp_dir().join(format!("sshvisor-open-cookie-{}", std::process::id()));
        std::fs::write(&path, "secret").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_cookie(&path).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_cookie(&path).unwrap(), "secret");
        let _ = std::fs::remove_file(path);
    }
}
