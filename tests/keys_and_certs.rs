//! The front door with the OpenSSH client: authorized_keys options (`from=`, `command=`,
//! `environment=`, `restrict`, `pty`, `no-pty`, `expiry-time=`, `cert-authority` with
//! `principals=`, an unknown option), user certificates made by `ssh-keygen -s` (valid,
//! expired, wrong principal, wrong source address, revoked, force-command, no permit-pty), and
//! kills by who holds the key. Every refusal is checked for what the person sees, and the
//! server for serving on.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use sshvisor::daemon::config::Config;
use sshvisor_actors::ConnectionInfo;
use tokio::process::Command;

/// Keys, certificates and files for one test, in a directory of their own.
struct Kit {
    dir: tempfile::TempDir,
}

impl Kit {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new ed25519 key `name` (and `name.pub`).
    fn key(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        path
    }

    /// The public line of key `path`.
    fn public(&self, path: &Path) -> String {
        std::fs::read_to_string(path.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// The SHA-256 fingerprint of `path`'s key as `ssh-keygen -l` prints it.
    fn fingerprint(&self, path: &Path) -> String {
        let out = std::process::Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(path.with_extension("pub"))
            .output()
            .unwrap();
        text(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    }

    /// Signs `key` with CA `ca` (`ssh-keygen -s`): `key-cert.pub` next to it.
    fn certify(&self, ca: &Path, key: &Path, id: &str, principals: &str, extra: &[&str]) {
        let out = std::process::Command::new("ssh-keygen")
            .arg("-s")
            .arg(ca)
            .args(["-I", id, "-n", principals])
            .args(extra)
            .arg(key.with_extension("pub"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    /// A file `name` holding `lines`.
    fn file(&self, name: &str, lines: &[String]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }
}

/// A server whose configuration `tweak` sets (on top of the test defaults).
async fn server(tweak: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_with(|o| tweak(&mut o.config)).await
}

/// The OpenSSH client as `user` with key `key` (and its certificate, if one is next to it).
fn ssh(server: &TestServer, key: &Path, user: &str) -> Command {
    openssh(server.port(), key, user, &["LogLevel=ERROR"])
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn run(mut cmd: Command) -> Run {
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("ssh ends")
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: text(&out.stdout),
        stderr: text(&out.stderr),
    }
}

/// `ssh ... command` as `user` with `key`.
async fn exec(server: &TestServer, key: &Path, user: &str, command: &str) -> Run {
    let mut cmd = ssh(server, key, user);
    cmd.arg(command);
    run(cmd).await
}

/// Asserts the login was refused with a DISCONNECT saying `why`, and that the server serves
/// on: `ok_key` still logs in.
async fn refused(server: &TestServer, out: Run, why: &str, ok_key: &Path) {
    assert_eq!(out.code, Some(255), "{}", out.stderr);
    assert!(
        out.stderr.contains("Received disconnect from 127.0.0.1")
            && out.stderr.contains(&format!("login refused: {why}")),
        "ssh printed: {}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    serves_on(server, ok_key).await;
}

async fn serves_on(server: &TestServer, ok_key: &Path) {
    let out = exec(server, ok_key, "alice", "echo still here").await;
    assert_eq!(out.stdout, "still here\n", "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorized_keys_options_are_honoured_and_a_bad_line_refuses_only_itself() {
    let kit = Kit::new();
    let [plain, from_ok, from_bad, forced, restricted, restrict_pty, no_pty, expired, unknown, env] =
        [
            "plain",
            "from_ok",
            "from_bad",
            "forced",
            "restricted",
            "restrict_pty",
            "no_pty",
            "expired",
            "unknown",
            "env",
        ]
        .map(|n| kit.key(n));
    let keys = kit.file(
        "authorized_keys",
        &[
            kit.public(&plain),
            format!("from=\"127.0.0.0/8,!10.0.0.1\" {}", kit.public(&from_ok)),
            format!("from=\"10.0.0.0/8,192.168.*\" {}", kit.public(&from_bad)),
            format!(
                "command=\"echo forced: $SSH_ORIGINAL_COMMAND\" {}",
                kit.public(&forced)
            ),
            format!("restrict {}", kit.public(&restricted)),
            format!("restrict,pty {}", kit.public(&restrict_pty)),
            format!("no-pty {}", kit.public(&no_pty)),
            format!("expiry-time=\"20200101\" {}", kit.public(&expired)),
            format!("no-such-option {}", kit.public(&unknown)),
            format!("environment=\"GREETING=hello there\" {}", kit.public(&env)),
        ],
    );
    let server = server(|c| c.authorized_keys = Some(keys)).await;

    let out = exec(&server, &from_ok, "alice", "echo from ok").await;
    assert_eq!(out.stdout, "from ok\n", "{}", out.stderr);

    let out = exec(&server, &from_bad, "alice", "echo nope").await;
    refused(
        &server,
        out,
        "this key may not log in from 127.0.0.1",
        &plain,
    )
    .await;
    // With compression after login (ssh -C) too: the reason must not reach the client
    // uncompressed ("invalid format").
    let mut compressed = ssh(&server, &from_bad, "alice");
    compressed.args(["-C", "echo nope"]);
    let out = run(compressed).await;
    refused(
        &server,
        out,
        "this key may not log in from 127.0.0.1",
        &plain,
    )
    .await;

    // The forced command runs instead of the client's, which it finds in SSH_ORIGINAL_COMMAND;
    // for a subsystem too (sftp), and for a shell (no original command).
    let out = exec(&server, &forced, "alice", "echo mine").await;
    assert_eq!(out.stdout, "forced: echo mine\n", "{}", out.stderr);
    let mut sub = ssh(&server, &forced, "alice");
    sub.args(["-s", "sftp"]);
    let out = run(sub).await;
    assert_eq!(out.stdout, "forced: sftp\n", "{}", out.stderr);

    // restrict: no terminal; restrict,pty: a terminal.
    let mut tty = ssh(&server, &restricted, "alice");
    tty.args(["-tt", "tty"]);
    let out = run(tty).await;
    assert!(
        out.stderr.contains("PTY allocation request failed"),
        "{}",
        out.stderr
    );
    // OpenSSH treats a refused terminal it was told to want (-t) as fatal, as with sshd.
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(255), ""),
        "{}",
        out.stderr
    );
    let out = exec(&server, &restricted, "alice", "tty").await;
    assert_eq!(out.stdout, "not a tty\n", "{}", out.stderr);
    let mut tty = ssh(&server, &restrict_pty, "alice");
    tty.args(["-tt", "tty"]);
    let out = run(tty).await;
    assert!(
        out.stdout.contains("/dev/pts/"),
        "{} {}",
        out.stdout,
        out.stderr
    );
    let mut tty = ssh(&server, &no_pty, "alice");
    tty.args(["-tt", "tty"]);
    let out = run(tty).await;
    assert!(
        out.stderr.contains("PTY allocation request failed"),
        "{}",
        out.stderr
    );

    let out = exec(&server, &expired, "alice", "echo nope").await;
    refused(&server, out, "this key expired at 20", &plain).await;

    // The line with an unknown option is not read: its key is simply not authorized.
    let out = exec(&server, &unknown, "alice", "echo nope").await;
    assert_eq!(out.code, Some(255));
    assert!(
        out.stderr.contains("Permission denied (publickey)"),
        "{}",
        out.stderr
    );
    serves_on(&server, &plain).await;

    // environment= is ignored while permit_user_environment is off (the default).
    let out = exec(&server, &env, "alice", "echo \"${GREETING:-unset}\"").await;
    assert_eq!(out.stdout, "unset\n", "{}", out.stderr);
    server
        .daemon
        .shutdown(Some(std::time::Duration::from_secs(5)))
        .await;

    let keys = kit.file(
        "authorized_keys_env",
        &[format!(
            "environment=\"GREETING=hello there\" {}",
            kit.public(&env)
        )],
    );
    let server = self::server(|c| {
        c.authorized_keys = Some(keys);
        c.permit_user_environment = true;
    })
    .await;
    let out = exec(&server, &env, "alice", "echo \"${GREETING:-unset}\"").await;
    assert_eq!(out.stdout, "hello there\n", "{}", out.stderr);
}

/// The connection listed for `user` (one expected).
async fn listed(server: &TestServer, user: &str) -> ConnectionInfo {
    let all = server.list().await;
    all.into_iter()
        .find(|c| c.user.as_deref() == Some(user))
        .expect("the connection is listed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_certificates_of_a_trusted_ca_log_in_within_what_they_permit() {
    let kit = Kit::new();
    let ca = kit.key("ca");
    let [plain, valid, expired, wrong_principal, wrong_source, forced, no_pty, unknown_ca] = [
        "plain",
        "valid",
        "expired",
        "wrong_principal",
        "wrong_source",
        "forced",
        "no_pty",
        "unknown_ca",
    ]
    .map(|n| kit.key(n));
    kit.certify(
        &ca,
        &valid,
        "alice@corp",
        "alice,ops",
        &["-z", "42", "-V", "-5m:+1h"],
    );
    kit.certify(&ca, &expired, "old", "alice", &["-V", "20200101:20200102"]);
    kit.certify(&ca, &wrong_principal, "bob@corp", "bob", &[]);
    kit.certify(
        &ca,
        &wrong_source,
        "far",
        "alice",
        &["-O", "source-address=10.0.0.0/8"],
    );
    kit.certify(
        &ca,
        &forced,
        "forced",
        "alice",
        &[
            "-O",
            "force-command=echo cert-forced: $SSH_ORIGINAL_COMMAND",
        ],
    );
    kit.certify(&ca, &no_pty, "nopty", "alice", &["-O", "no-pty"]);
    let other_ca = kit.key("other_ca");
    kit.certify(&other_ca, &unknown_ca, "stranger", "alice", &[]);
    let keys = kit.file("authorized_keys", &[kit.public(&plain)]);
    let cas = kit.file("cas", &[kit.public(&ca)]);
    let server = server(|c| {
        c.authorized_keys = Some(keys);
        c.trusted_user_ca_keys = Some(cas);
    })
    .await;

    // A valid certificate logs in; its key ID and serial are listed (ls --json).
    let mut held = ssh(&server, &valid, "alice")
        .arg("sleep 987401")
        .spawn()
        .unwrap();
    eventually("the certificate's connection is listed", || {
        processes_with_argv(&["sleep", "987401"]).len() == 1
    })
    .await;
    let out = server.ctl(&["ls", "--json"]).output().await.unwrap();
    let all: Vec<ConnectionInfo> = serde_json::from_slice(&out.stdout).unwrap();
    let conn = all
        .iter()
        .find(|c| c.user.as_deref() == Some("alice"))
        .expect("listed");
    let credential = conn.credential.as_ref().expect("a credential");
    assert_eq!(credential.key_fingerprint, kit.fingerprint(&valid));
    let cert = credential.certificate.as_ref().expect("a certificate");
    assert_eq!((cert.key_id.as_str(), cert.serial), ("alice@corp", 42));
    assert_eq!(cert.ca_fingerprint, kit.fingerprint(&ca));
    let out = server.ctl(&["ls"]).output().await.unwrap();
    assert!(
        text(&out.stdout).contains("certificate id \"alice@corp\" serial 42"),
        "{}",
        text(&out.stdout)
    );
    held.kill().await.unwrap();

    // Expired: russh refuses it before sshvisor is asked; the client is just denied.
    let out = exec(&server, &expired, "alice", "echo nope").await;
    assert_eq!(out.code, Some(255));
    assert!(
        out.stderr.contains("Permission denied (publickey)"),
        "{}",
        out.stderr
    );
    serves_on(&server, &plain).await;

    let out = exec(&server, &wrong_principal, "alice", "echo nope").await;
    refused(
        &server,
        out,
        "the certificate is not valid for user alice",
        &plain,
    )
    .await;

    let out = exec(&server, &wrong_source, "alice", "echo nope").await;
    refused(
        &server,
        out,
        "this certificate may not log in from 127.0.0.1",
        &plain,
    )
    .await;

    // A CA nobody trusts: not known here, so just denied.
    let out = exec(&server, &unknown_ca, "alice", "echo nope").await;
    assert_eq!(out.code, Some(255));
    assert!(
        out.stderr.contains("Permission denied (publickey)"),
        "{}",
        out.stderr
    );

    let out = exec(&server, &forced, "alice", "echo mine").await;
    assert_eq!(out.stdout, "cert-forced: echo mine\n", "{}", out.stderr);

    let mut tty = ssh(&server, &no_pty, "alice");
    tty.args(["-tt", "tty"]);
    let out = run(tty).await;
    assert!(
        out.stderr.contains("PTY allocation request failed"),
        "{}",
        out.stderr
    );
    let mut tty = ssh(&server, &valid, "alice");
    tty.args(["-tt", "tty"]);
    let out = run(tty).await;
    assert!(
        out.stdout.contains("/dev/pts/"),
        "{} {}",
        out.stdout,
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principals_files_and_cert_authority_lines_choose_who_a_certificate_may_be() {
    let kit = Kit::new();
    let ca = kit.key("ca");
    let line_ca = kit.key("line_ca");
    let [plain, ops, dev, line_ops, line_dev] =
        ["plain", "ops", "dev", "line_ops", "line_dev"].map(|n| kit.key(n));
    kit.certify(&ca, &ops, "ops-cert", "ops", &[]);
    kit.certify(&ca, &dev, "dev-cert", "dev", &[]);
    kit.certify(&line_ca, &line_ops, "line-ops", "ops", &[]);
    kit.certify(&line_ca, &line_dev, "line-dev", "dev", &[]);
    let keys = kit.file(
        "authorized_keys",
        &[
            kit.public(&plain),
            format!(
                "cert-authority,principals=\"ops,admins\" {}",
                kit.public(&line_ca)
            ),
        ],
    );
    let cas = kit.file("cas", &[kit.public(&ca)]);
    kit.file("principals-alice", &["command=\"echo via ops\" ops".into()]);
    let template = format!("{}/principals-%u", kit.dir.path().display());
    let server = server(|c| {
        c.authorized_keys = Some(keys);
        c.trusted_user_ca_keys = Some(cas);
        c.authorized_principals = Some(template);
    })
    .await;

    // The principals file lets alice in with an `ops` certificate, within its line's options.
    let out = exec(&server, &ops, "alice", "echo mine").await;
    assert_eq!(out.stdout, "via ops\n", "{}", out.stderr);
    let out = exec(&server, &dev, "alice", "echo nope").await;
    refused(
        &server,
        out,
        "the certificate names no principal authorized for alice",
        &plain,
    )
    .await;

    // A cert-authority line with principals=: `ops` may, `dev` may not.
    let out = exec(&server, &line_ops, "alice", "echo line ops").await;
    assert_eq!(out.stdout, "line ops\n", "{}", out.stderr);
    let out = exec(&server, &line_dev, "alice", "echo nope").await;
    refused(
        &server,
        out,
        "the certificate is not valid for user alice",
        &plain,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_keys_and_certificates_are_refused_by_a_plain_list_and_by_a_krl() {
    let kit = Kit::new();
    let ca = kit.key("ca");
    let [plain, revoked_plain, revoked_cert_key, by_serial, fine] = [
        "plain",
        "revoked_plain",
        "revoked_cert_key",
        "by_serial",
        "fine",
    ]
    .map(|n| kit.key(n));
    kit.certify(&ca, &revoked_cert_key, "leaked", "alice", &["-z", "7"]);
    kit.certify(&ca, &by_serial, "serial-9", "alice", &["-z", "9"]);
    kit.certify(&ca, &fine, "fine", "alice", &["-z", "10"]);
    let keys = kit.file(
        "authorized_keys",
        &[kit.public(&plain), kit.public(&revoked_plain)],
    );
    let cas = kit.file("cas", &[kit.public(&ca)]);
    let list = kit.file(
        "revoked",
        &[kit.public(&revoked_plain), kit.public(&revoked_cert_key)],
    );
    let server = server(|c| {
        c.authorized_keys = Some(keys.clone());
        c.trusted_user_ca_keys = Some(cas.clone());
        c.revoked_keys = Some(list);
    })
    .await;
    let out = exec(&server, &revoked_plain, "alice", "echo nope").await;
    refused(&server, out, "this key is revoked", &plain).await;
    let out = exec(&server, &revoked_cert_key, "alice", "echo nope").await;
    refused(&server, out, "this certificate is revoked", &plain).await;
    let out = exec(&server, &by_serial, "alice", "echo serial 9").await;
    assert_eq!(out.stdout, "serial 9\n", "{}", out.stderr);
    server
        .daemon
        .shutdown(Some(std::time::Duration::from_secs(5)))
        .await;

    // A KRL revoking serial 9 of this CA (ssh-keygen -k -s ca.pub).
    let spec = kit.file("krl-spec", &["serial: 9".into()]);
    let krl = kit.path("krl");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-k", "-f"])
        .arg(&krl)
        .arg("-s")
        .arg(ca.with_extension("pub"))
        .arg(&spec)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made.stderr));
    let server = self::server(|c| {
        c.authorized_keys = Some(keys);
        c.trusted_user_ca_keys = Some(cas);
        c.revoked_keys = Some(krl);
    })
    .await;
    let out = exec(&server, &by_serial, "alice", "echo nope").await;
    refused(&server, out, "this certificate is revoked", &plain).await;
    let out = exec(&server, &fine, "alice", "echo serial 10").await;
    assert_eq!(out.stdout, "serial 10\n", "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_by_key_fingerprint_cert_serial_or_key_id_ends_exactly_the_matching_connections() {
    let kit = Kit::new();
    let ca = kit.key("ca");
    let [leaked, other, cert_a, cert_b] =
        ["leaked", "other", "cert_a", "cert_b"].map(|n| kit.key(n));
    kit.certify(&ca, &cert_a, "build-bot", "alice", &["-z", "100"]);
    kit.certify(&ca, &cert_b, "deploy-bot", "alice", &["-z", "200"]);
    let keys = kit.file(
        "authorized_keys",
        &[kit.public(&leaked), kit.public(&other)],
    );
    let cas = kit.file("cas", &[kit.public(&ca)]);
    let server = server(|c| {
        c.authorized_keys = Some(keys);
        c.trusted_user_ca_keys = Some(cas);
    })
    .await;
    let start = |key: &Path, tag: &str| {
        let mut cmd = ssh(&server, key, "alice");
        cmd.arg(format!("sleep {tag}"));
        cmd.spawn().unwrap()
    };
    let leaked_1 = start(&leaked, "987501");
    let leaked_2 = start(&leaked, "987502");
    let mut other_1 = start(&other, "987503");
    let a = start(&cert_a, "987504");
    let b = start(&cert_b, "987505");
    eventually("all five sessions run", || {
        (1..=5).all(|i| processes_with_argv(&["sleep", &format!("98750{i}")]).len() == 1)
    })
    .await;

    let ends_with = |mut child: tokio::process::Child, why: &'static str| async move {
        let status = tokio::time::timeout(WAIT, child.wait())
            .await
            .expect("ssh ends")
            .unwrap();
        let mut stderr = String::new();
        use tokio::io::AsyncReadExt;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .await
            .unwrap();
        assert_eq!(status.code(), Some(255), "{stderr}");
        assert!(stderr.contains(why), "ssh printed: {stderr}");
    };

    let fp = kit.fingerprint(&leaked);
    let out = server
        .ctl(&[
            "kill",
            "--key-fingerprint",
            &fp,
            "--reason",
            "key leaked",
            "--json",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).lines().count(),
        2,
        "{}",
        text(&out.stdout)
    );
    ends_with(leaked_1, "key leaked").await;
    ends_with(leaked_2, "key leaked").await;

    let out = server
        .ctl(&[
            "kill",
            "--cert-serial",
            "100",
            "--reason",
            "serial 100 revoked",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    ends_with(a, "serial 100 revoked").await;

    // A dry run names the connection and ends nothing.
    let out = server
        .ctl(&["kill", "--cert-key-id", "deploy-bot", "--dry-run", "--json"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("deploy-bot"),
        "{}",
        text(&out.stdout)
    );
    let out = server
        .ctl(&[
            "kill",
            "--cert-key-id",
            "deploy-bot",
            "--reason",
            "bot retired",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    ends_with(b, "bot retired").await;

    // The other key's connection is untouched.
    let left = server.list().await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(
        left[0].credential.as_ref().unwrap().key_fingerprint,
        kit.fingerprint(&other)
    );
    assert!(other_1.try_wait().unwrap().is_none());
    let _ = listed(&server, "alice").await;
    other_1.kill().await.unwrap();
}
