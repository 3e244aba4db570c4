//! ssh-audit (the Python package security teams run against every SSH server they expose)
//! against `sshvisor serve` on its defaults: no failure, and no warning but the post-quantum
//! note on the curve25519 exchanges kept for clients older than OpenSSH 9.9. The same defaults
//! pass ssh-audit's policy mode with the hardened profile (`tests/audit/hardened.policy`).
//!
//! ssh-audit must be installed (`python3 -m pip install ssh-audit==3.9.0`; `.ci/run` does it):
//! without it these tests fail and say so.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::text;
use tokio::process::{Child, Command};

/// How long one audit may take (it opens dozens of connections for its rate test).
const AUDIT_TIMEOUT: Duration = Duration::from_secs(120);

/// The note ssh-audit gives every exchange without a post-quantum part.
const NOT_PQ: &str = "does not provide protection against post-quantum attacks";

/// The note of ssh-audit's rate test (DHEat, CVE-2002-20001) when one address may open
/// connections faster than 20 a second.
const THROTTLING: &str = "insufficient connection throttling";

/// `sshvisor serve` with `extra` flags, in a fresh directory; its port.
async fn serve(cwd: &Path, extra: &[&str]) -> (Child, u16) {
    let (child, lines) = common::serve_lines(cwd, extra).await;
    let port = lines
        .iter()
        .find_map(|l| l.strip_prefix("sshvisor listening on "))
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("serve printed no address: {lines:?}"));
    (child, port)
}

/// `ssh-audit -n -t 20 ARGS -p PORT 127.0.0.1`: its whole output, and whether it exited 0.
async fn ssh_audit(port: u16, args: &[&str]) -> (String, bool) {
    let spawned = Command::new("ssh-audit")
        .args(["-n", "-t", "20"])
        .args(args)
        .args(["-p", &port.to_string(), "127.0.0.1"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(AUDIT_TIMEOUT, spawned).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "ssh-audit is not installed: these tests need it on the PATH. Install it with \
             `python3 -m pip install ssh-audit==3.9.0` (as .ci/run does), then run again."
        ),
        Ok(Err(e)) => panic!("cannot run ssh-audit: {e}"),
        Err(_) => panic!("ssh-audit did not finish within {AUDIT_TIMEOUT:?}"),
    };
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    (said, out.status.success())
}

/// Every `[fail]` and every `[warn]` of a standard audit, each with the algorithm it is about,
/// except the post-quantum note on curve25519.
fn findings(report: &str) -> Vec<String> {
    let mut algorithm = String::new();
    let mut found = Vec::new();
    for line in report.lines() {
        // `(kex) curve25519-sha256  -- [warn] ...`, then `  `- [info] ...` continuations.
        if let Some(rest) = line.strip_prefix('(') {
            if let Some((_, after)) = rest.split_once(") ") {
                algorithm = after.split_whitespace().next().unwrap_or("").to_string();
            }
        }
        let fail = line.contains("[fail]");
        let warn = line.contains("[warn]");
        let post_quantum_only =
            warn && line.contains(NOT_PQ) && algorithm.starts_with("curve25519");
        if fail || (warn && !post_quantum_only) {
            found.push(format!("{algorithm}: {}", line.trim()));
        }
    }
    found
}

/// The audit read the server's whole offer (not a connection error).
fn audited(report: &str) {
    for section in [
        "# key exchange algorithms",
        "# encryption algorithms",
        "# message authentication code algorithms",
    ] {
        assert!(
            report.contains(section),
            "ssh-audit did not audit the server:\n{report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_audit_finds_no_failure_and_no_warning_but_the_post_quantum_note_on_curve25519() {
    let cwd = tempfile::tempdir().unwrap();
    let (mut server, port) = serve(cwd.path(), &[]).await;
    let (report, _) = ssh_audit(port, &[]).await;
    audited(&report);
    let found = findings(&report);
    assert!(
        found.is_empty(),
        "ssh-audit found {found:#?}\nits whole output:\n{report}"
    );
    // What the hardened profile promises, as the auditor saw it.
    assert!(report.contains("(kex) mlkem768x25519-sha256"), "{report}");
    assert!(!report.contains("diffie-hellman"), "{report}");
    assert!(
        report.contains("compression: enabled (zlib@openssh.com)"),
        "{report}"
    );
    let _ = server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_defaults_pass_ssh_audits_policy_mode_with_the_hardened_profile() {
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/audit/hardened.policy");
    let cwd = tempfile::tempdir().unwrap();
    let (mut server, port) = serve(cwd.path(), &[]).await;
    let (report, passed) = ssh_audit(port, &["-P", policy.to_str().unwrap()]).await;
    assert!(
        passed && report.contains("Passed"),
        "the hardened policy failed:\n{report}"
    );
    // The policy is no rubber stamp: one finite-field group more fails it.
    let other = tempfile::tempdir().unwrap();
    let (mut loose, loose_port) = serve(
        other.path(),
        &["--kex-algorithms", "+diffie-hellman-group14-sha256"],
    )
    .await;
    let (report, passed) = ssh_audit(loose_port, &["-P", policy.to_str().unwrap()]).await;
    assert!(
        !passed && report.contains("Failed"),
        "a server offering diffie-hellman-group14-sha256 passed the hardened policy:\n{report}"
    );
    let _ = loose.kill().await;
    let _ = server.kill().await;
}

/// ssh-audit's rate test runs whenever the server offers an exchange in its DHEat list, and
/// curve25519 is in it: the defaults need sources throttled too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_audits_rate_test_finds_connections_throttled_on_the_defaults() {
    let cwd = tempfile::tempdir().unwrap();
    let (mut server, port) = serve(cwd.path(), &[]).await;
    let (report, _) = ssh_audit(port, &[]).await;
    audited(&report);
    assert!(
        !report.contains(THROTTLING),
        "one address may start key exchanges as fast as it connects:\n{report}"
    );
    let _ = server.kill().await;
}

/// With a finite-field group offered (what DHEat makes expensive), one address still cannot
/// start key exchanges faster than ssh-audit's 20 a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_finite_field_group_offered_ssh_audits_rate_test_finds_connections_throttled() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(
        cwd.path().join("sshvisor.toml"),
        "kex_algorithms = \"+diffie-hellman-group16-sha512\"\n",
    )
    .unwrap();
    let (mut server, port) = serve(cwd.path(), &["--config", "sshvisor.toml"]).await;
    let (report, _) = ssh_audit(port, &[]).await;
    audited(&report);
    assert!(
        report.contains("(kex) diffie-hellman-group16-sha512"),
        "{report}"
    );
    assert!(
        !report.contains(THROTTLING),
        "one address may start Diffie-Hellman exchanges as fast as it connects:\n{report}"
    );
    let _ = server.kill().await;
}
