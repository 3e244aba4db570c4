//! `sshvisor serve` as a person runs it: embedded defaults, the printed ssh line, a host key kept
//! across restarts, and SIGTERM draining live connections with a reason.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use common::{text, WAIT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

async fn serve(cwd: &Path, extra: &[&str]) -> (Child, Vec<String>) {
    common::serve_lines(cwd, extra).await
}

async fn terminate(child: &mut Child) -> std::process::ExitStatus {
    kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_its_defaults_prints_an_ssh_line_that_works_and_keeps_its_host_key() {
    let cwd = tempfile::tempdir().unwrap();
    let (mut server, lines) = serve(cwd.path(), &[]).await;
    let ssh_line = lines.last().unwrap().trim().to_string();
    assert!(
        ssh_line.contains("-i .sshvisor/client_ed25519"),
        "{ssh_line}"
    );

    // The printed line, typed as is (the shell splits it), connects and runs its command.
    let out = Command::new("sh")
        .arg("-c")
        .arg(ssh_line.replacen("ssh ", "ssh -F /dev/null ", 1))
        .current_dir(cwd.path())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        "hello from sshvisor\n",
        "{}",
        text(&out.stderr)
    );

    let state = cwd.path().join(".sshvisor");
    for (file, mode) in [
        ("host_ed25519", 0o600),
        ("client_ed25519", 0o600),
        ("ctl.sock", 0o600),
    ] {
        let got = std::fs::metadata(state.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(got, mode, "{file}");
    }
    let host_key = std::fs::read(state.join("host_ed25519")).unwrap();

    assert!(terminate(&mut server).await.success());
    assert!(
        !state.join("ctl.sock").exists(),
        "the control socket is removed on exit"
    );

    // A restart reuses the host key, so the same known_hosts line still verifies it.
    let (mut server, lines) = serve(cwd.path(), &[]).await;
    assert_eq!(std::fs::read(state.join("host_ed25519")).unwrap(), host_key);
    let ssh_line = lines.last().unwrap().trim().to_string();
    let out = Command::new("sh")
        .arg("-c")
        .arg(ssh_line.replacen("ssh ", "ssh -F /dev/null -o StrictHostKeyChecking=yes ", 1))
        .current_dir(cwd.path())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        "hello from sshvisor\n",
        "{}",
        text(&out.stderr)
    );
    assert!(terminate(&mut server).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_live_connections_with_a_reason_and_exits() {
    let cwd = tempfile::tempdir().unwrap();
    let (mut server, lines) = serve(cwd.path(), &["--kill-grace", "2s"]).await;
    let ssh_line = lines.last().unwrap().trim().to_string();
    let held = ssh_line.replace("'echo hello from sshvisor'", "'sleep 987020'");
    let ssh = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec {}",
            held.replacen("ssh ", "ssh -F /dev/null ", 1)
        ))
        .current_dir(cwd.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    common::eventually("the held session runs", || {
        common::processes_with_argv(&["sleep", "987020"]).len() == 1
    })
    .await;

    assert!(terminate(&mut server).await.success());
    let out = tokio::time::timeout(WAIT, ssh.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("the server is shutting down"),
        "{}",
        text(&out.stderr)
    );
    assert!(common::processes_with_argv(&["sleep", "987020"]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_authorized_keys_file_stops_serve_with_a_clear_error() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(cwd.path().join("keys"), "not a key\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sshvisor"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--authorized-keys",
            "keys",
        ])
        .current_dir(cwd.path())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot read authorized keys from keys"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_churn_of_connections_the_map_actors_and_descriptors_are_back_at_the_baseline() {
    let cwd = tempfile::tempdir().unwrap();
    // A churn from 127.0.0.1 is what the default penalties refuse: exempt it.
    std::fs::write(
        cwd.path().join("churn.toml"),
        "[penalties]\nexempt = [\"127.0.0.0/8\"]\n",
    )
    .unwrap();
    let (_server, lines) = serve(cwd.path(), &["--config", "churn.toml"]).await;
    let port: u16 = lines
        .iter()
        .find_map(|l| l.strip_prefix("sshvisor listening on "))
        .and_then(|addr| addr.rsplit(':').next()?.parse().ok())
        .expect("the listening line");
    let key = cwd.path().join(".sshvisor/client_ed25519");
    let stats = |human: bool| {
        let dir = cwd.path().join(".sshvisor");
        async move {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_sshvisor"));
            cmd.arg("ctl").arg("--state-dir").arg(dir).arg("stats");
            if !human {
                cmd.arg("--json");
            }
            let out = cmd.output().await.unwrap();
            assert!(out.status.success(), "{}", text(&out.stderr));
            out.stdout
        }
    };
    let json = |bytes: Vec<u8>| serde_json::from_slice::<serde_json::Value>(&bytes).unwrap();
    // One round first, so that lazily made things (runtime threads, caches) exist at the baseline.
    let mut round = 0;
    let mut one_round = || {
        round += 1;
        let key = key.clone();
        let polite = round % 2 == 0;
        async move {
            let client = common::russh_connect(port, &key, "churn").await.unwrap();
            let mut channel = client.handle.channel_open_session().await.unwrap();
            channel.exec(true, "true").await.unwrap();
            assert_eq!(common::drain(&mut channel).await.status, Some(0));
            if polite {
                client
                    .handle
                    .disconnect(russh::Disconnect::ByApplication, "", "en")
                    .await
                    .unwrap();
            }
            // Otherwise the client is just dropped: the TCP end alone must clean up too.
        }
    };
    one_round().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    // The baseline once it holds still: no connection, and the same descriptors twice in a row
    // (a reading may catch the previous `ctl stats` connection not yet closed).
    let mut before = json(stats(false).await);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let again = json(stats(false).await);
        if before["tree"]["connections"] == 0
            && again["tree"]["connections"] == 0
            && before["process"]["open_fds"] == again["process"]["open_fds"]
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first round lingers: {again}"
        );
        before = again;
    }
    for _ in 0..40 {
        one_round().await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut after = json(stats(false).await);
    let fds = |v: &serde_json::Value| v["process"]["open_fds"].as_u64().expect("open_fds");
    while after["tree"]["connections"] != 0 || fds(&after) > fds(&before) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not back at the baseline: before {before} after {after}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        after = json(stats(false).await);
    }
    for key in [
        "connections",
        "sessions",
        "connection_actors",
        "session_actors",
        "waiting_kills",
    ] {
        assert_eq!(after["tree"][key], 0, "{key}: {after}");
    }
    let human = text(&stats(true).await);
    assert!(
        human.starts_with("connections 0 (actors 0)\nsessions    0 (actors 0)\n"),
        "{human}"
    );
}
