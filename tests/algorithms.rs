//! The algorithms offered, as clients meet them: a client held to an algorithm the policy
//! removed cannot connect, one on the hardened defaults can, a list the configuration changes
//! is what the server offers, and `serve --print-algorithms` shows the lists in force.

mod common;

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use common::{openssh, text, TestServer, WAIT};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{client, kex};
use tokio::process::Command;

struct Trusting;

impl client::Handler for Trusting {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// A russh client that offers only `kex` logs in; whether it was let in.
async fn russh_login_with_kex(server: &TestServer, kex: kex::Name) -> Result<bool, russh::Error> {
    let config = client::Config {
        preferred: russh::Preferred {
            kex: Cow::Owned(vec![
                kex,
                russh::kex::EXTENSION_SUPPORT_AS_CLIENT,
                russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
            ]),
            ..Default::default()
        },
        ..Default::default()
    };
    let connected = client::connect(Arc::new(config), ("127.0.0.1", server.port()), Trusting);
    let mut handle = tokio::time::timeout(WAIT, connected)
        .await
        .expect("in time")?;
    let key = PrivateKey::read_openssh_file(server.client_key_path()).expect("client key");
    let auth = handle
        .authenticate_publickey("kim", PrivateKeyWithHashAlg::new(Arc::new(key), None))
        .await?;
    Ok(auth.success())
}

/// `ssh -o OPTION... kim@server echo ok`: (exit code, stdout, stderr).
async fn ssh_with(server: &TestServer, options: &[&str]) -> (Option<i32>, String, String) {
    let out = openssh(server.port(), &server.client_key_path(), "kim", options)
        .arg("echo ok")
        .output();
    let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_held_to_a_removed_algorithm_cannot_connect_and_one_on_the_defaults_can() {
    let server = TestServer::start().await;
    // Finite-field Diffie-Hellman is not offered.
    let (code, _, err) = ssh_with(&server, &["KexAlgorithms=diffie-hellman-group14-sha256"]).await;
    assert_eq!(code, Some(255), "{err}");
    assert!(err.contains("no matching key exchange method"), "{err}");
    // Nor is encrypt-and-MAC.
    let (code, _, err) = ssh_with(&server, &["Ciphers=aes128-ctr", "MACs=hmac-sha2-256"]).await;
    assert_eq!(code, Some(255), "{err}");
    assert!(err.contains("no matching MAC"), "{err}");
    // curve25519, AES-CTR with an encrypt-then-MAC MAC, and delayed compression are.
    let (code, out, err) = ssh_with(
        &server,
        &[
            "KexAlgorithms=curve25519-sha256",
            "Ciphers=aes128-ctr",
            "MACs=hmac-sha2-256-etm@openssh.com",
            "Compression=yes",
        ],
    )
    .await;
    assert_eq!((code, out.as_str()), (Some(0), "ok\n"), "{err}");
    // The post-quantum hybrid (the OpenSSH client here predates it: russh's speaks it).
    assert!(russh_login_with_kex(&server, kex::MLKEM768X25519_SHA256)
        .await
        .unwrap());
    assert!(russh_login_with_kex(&server, kex::DH_G14_SHA256)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_the_configuration_changes_is_what_the_server_offers() {
    let server = TestServer::start_with(|options| {
        options.config.kex_algorithms = Some("+diffie-hellman-group14-sha256".into());
        options.config.ciphers = Some("-chacha20*".into());
    })
    .await;
    let (code, out, err) =
        ssh_with(&server, &["KexAlgorithms=diffie-hellman-group14-sha256"]).await;
    assert_eq!((code, out.as_str()), (Some(0), "ok\n"), "{err}");
    let (code, _, err) = ssh_with(&server, &["Ciphers=chacha20-poly1305@openssh.com"]).await;
    assert_eq!(code, Some(255), "{err}");
    assert!(err.contains("no matching cipher"), "{err}");
}

/// `sshvisor ARGS` in `cwd`: (success, stdout, stderr).
async fn sshvisor(cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sshvisor"))
        .args(args)
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .output();
    let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn print_algorithms_shows_the_lists_after_the_file_and_the_flags_and_starts_nothing() {
    let cwd = tempfile::tempdir().unwrap();
    let (ok, out, err) = sshvisor(cwd.path(), &["serve", "--print-algorithms"]).await;
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "kex_algorithms:\n  mlkem768x25519-sha256\n  curve25519-sha256\n  curve25519-sha256@libssh.org\n\
         ciphers:\n  chacha20-poly1305@openssh.com\n  aes256-gcm@openssh.com\n  aes128-gcm@openssh.com\n  \
         aes256-ctr\n  aes192-ctr\n  aes128-ctr\n\
         macs:\n  hmac-sha2-512-etm@openssh.com\n  hmac-sha2-256-etm@openssh.com\n\
         host_key_algorithms:\n  ssh-ed25519\n\
         compression:\n  none\n  zlib@openssh.com\n\
         (also in the key exchange list, always: ext-info-s, kex-strict-s-v00@openssh.com; \
         zlib@openssh.com starts after authentication)\n"
    );
    assert!(
        !cwd.path().join(".sshvisor").exists(),
        "--print-algorithms made the state directory"
    );

    std::fs::write(
        cwd.path().join("sshvisor.toml"),
        "kex_algorithms = \"^ecdh-sha2-nistp256\"\nmacs = \"hmac-sha1-etm@openssh.com\"\n",
    )
    .unwrap();
    let (ok, out, err) = sshvisor(
        cwd.path(),
        &[
            "serve",
            "--config",
            "sshvisor.toml",
            "--macs",
            "-hmac-sha2-512*",
            "--print-algorithms",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with("kex_algorithms:\n  ecdh-sha2-nistp256\n  mlkem768x25519-sha256\n"),
        "{out}"
    );
    // The flag replaces the file's list; its `-` is relative to the default.
    assert!(
        out.contains("macs:\n  hmac-sha2-256-etm@openssh.com\nhost_key_algorithms:"),
        "{out}"
    );

    // A bad list: the file and line, or the flag, and what is supported; nothing printed.
    std::fs::write(
        cwd.path().join("sshvisor.toml"),
        "# hardened\nciphers = \"aes256-ctr,arcfour\"\n",
    )
    .unwrap();
    let (ok, out, err) = sshvisor(
        cwd.path(),
        &["serve", "--config", "sshvisor.toml", "--print-algorithms"],
    )
    .await;
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.contains("sshvisor.toml:2: ciphers: \"arcfour\" is not a cipher sshvisor supports; supported: chacha20-poly1305@openssh.com,"),
        "{err}"
    );
    let (ok, _, err) = sshvisor(
        cwd.path(),
        &[
            "serve",
            "--kex-algorithms",
            "+sntrup761x25519-sha512@openssh.com",
            "--print-algorithms",
        ],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("--kex-algorithms: \"sntrup761x25519-sha512@openssh.com\" is not a key exchange algorithm"),
        "{err}"
    );
    // And serve itself refuses to start on it.
    let (ok, _, err) = sshvisor(
        cwd.path(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--host-key-algorithms",
            "rsa-sha2-512",
        ],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("--host-key-algorithms: \"rsa-sha2-512\" needs a host key"),
        "{err}"
    );
}
