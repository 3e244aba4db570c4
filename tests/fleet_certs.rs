//! `sshvisor fleet certs` as an operator runs it: the files it writes load as a node's TLS, what
//! it prints, and its refusals (exit status 1 and a message saying what to do).

#![cfg(feature = "fleet")]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use sshvisor::fleet::tls::{FleetTls, TlsFiles};

fn certs(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sshvisor"))
        .args(["fleet", "certs", "--dir"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn fleet_certs_writes_a_ca_node_certificates_and_a_cookie_and_says_how_to_start_each_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fleet");
    let out = certs(
        &dir,
        &["--nodes", "a,b,c", "--ip", "a=127.0.0.1", "--days", "2"],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for file in ["ca.pem", "ca.key", "a.pem", "a.key", "c.key", "cookie"] {
        assert!(
            stdout.contains(&format!("wrote {}", dir.join(file).display())),
            "{stdout}"
        );
    }
    for secret in ["ca.key", "a.key", "b.key", "c.key", "cookie"] {
        let mode = std::fs::metadata(dir.join(secret))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{secret}");
    }
    // One start command per node, the first one joined by the others.
    assert_eq!(
        stdout.matches("sshvisor serve --fleet-node-name").count(),
        3
    );
    assert!(stdout.contains("--fleet-node-name c"), "{stdout}");
    assert!(stdout.contains("--fleet-join a:"), "{stdout}");
    for node in ["a", "b", "c"] {
        FleetTls::load(&TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{node}.pem")),
            key: dir.join(format!("{node}.key")),
        })
        .unwrap();
    }

    // Again: refused, nothing replaced.
    let key = std::fs::read(dir.join("a.key")).unwrap();
    let out = certs(&dir, &["--nodes", "a"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("a.pem exists already: give --force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(dir.join("a.key")).unwrap(), key);

    // With --force: replaced.
    let out = certs(&dir, &["--nodes", "a", "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_ne!(std::fs::read(dir.join("a.key")).unwrap(), key);
}

#[test]
fn fleet_certs_refuses_bad_node_lists() {
    let tmp = tempfile::tempdir().unwrap();
    for (nodes, says) in [
        ("a,a", "named twice"),
        ("a,b.c", "is not a DNS label"),
        (",", "no node names"),
    ] {
        let out = certs(tmp.path(), &["--nodes", nodes]);
        assert_eq!(out.status.code(), Some(1), "{nodes}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(says), "{nodes}: {stderr}");
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
