//! `sshvisor ctl reload` and SIGHUP: a new configuration file applies to new connections at
//! once, drops nothing live, and a bad file leaves the old configuration in force.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{drain, openssh, russh_connect, text, Client, WAIT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

struct Served {
    child: Child,
    cwd: tempfile::TempDir,
    port: u16,
    config: PathBuf,
}

impl Served {
    /// `sshvisor serve --config FILE` in a fresh directory, FILE holding `config`.
    async fn start(config: &str) -> Self {
        let cwd = tempfile::tempdir().unwrap();
        let path = cwd.path().join("sshvisor.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sshvisor"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .current_dir(cwd.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(WAIT, async {
            loop {
                let line = lines.next_line().await.unwrap().expect("serve prints");
                if let Some(addr) = line.strip_prefix("sshvisor listening on ") {
                    break addr.rsplit(':').next().unwrap().parse::<u16>().unwrap();
                }
            }
        })
        .await
        .expect("serve starts");
        // The rest of stdout (the ssh hint) is not needed.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            cwd,
            port,
            config: path,
        }
    }

    fn key(&self) -> PathBuf {
        self.cwd.path().join(".sshvisor/client_ed25519")
    }

    /// Replaces the file whole (a new file renamed over it), so that a reload still reading
    /// the previous round's never sees it half written.
    fn write_config(&self, config: &str) {
        let fresh = self.config.with_extension("new");
        std::fs::write(&fresh, config).unwrap();
        std::fs::rename(&fresh, &self.config).unwrap();
    }

    async fn ctl(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new(env!("CARGO_BIN_EXE_sshvisor"))
            .arg("ctl")
            .arg("--state-dir")
            .arg(self.cwd.path().join(".sshvisor"))
            .args(args)
            .output();
        tokio::time::timeout(WAIT, out).await.unwrap().unwrap()
    }

    fn hangup(&self) {
        kill(
            Pid::from_raw(self.child.id().unwrap() as i32),
            Signal::SIGHUP,
        )
        .unwrap();
    }

    async fn login(&self, user: &str) -> Result<Client, String> {
        let client = russh_connect(self.port, &self.key(), user)
            .await
            .map_err(|e| e.to_string())?;
        if !client.authenticated {
            return Err("not authenticated".into());
        }
        Ok(client)
    }
}

/// These tests churn connections from 127.0.0.1, which the default penalties would refuse.
const LOOPBACK_EXEMPT: &str = "[penalties]\nexempt = [\"127.0.0.0/8\"]\n";

fn config(max_per_user: u32, idle: &str, extra: &str) -> String {
    format!(
        "{LOOPBACK_EXEMPT}[timeouts]\nidle = \"{idle}\"\nsession_idle = \"{idle}\"\nkill_grace = \"2s\"\n\
         keepalive_interval = \"7s\"\n\
         [limits]\nmax_per_user = {max_per_user}\nmax_per_source = 500\n{extra}"
    )
}

/// Runs `echo` through a held `cat` session: proof that it is alive end to end.
async fn echo(channel: &mut russh::Channel<russh::client::Msg>, word: &str) {
    channel.data(format!("{word}\n").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"\n") {
        match tokio::time::timeout(WAIT, channel.wait()).await.unwrap() {
            Some(russh::ChannelMsg::Data { data }) => got.extend_from_slice(&data),
            Some(russh::ChannelMsg::WindowAdjusted { .. } | russh::ChannelMsg::Success) => {}
            other => panic!("the held session ended: {other:?}"),
        }
    }
    assert_eq!(text(&got), format!("{word}\n"));
}

/// A user logging in with a policy that a reload lowers: a refusal shows as a disconnect
/// naming the limit.
async fn refused_text(served: &Served, user: &str) -> Option<String> {
    let client = served.login(user).await.ok()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if let Some(said) = client.disconnect.lock().unwrap().clone() {
            return Some(said);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_drop_nothing_and_a_bad_file_keeps_the_old_configuration() {
    let served = Served::start(&config(50, "off", "")).await;
    // Live work: twelve connections of one user, each with a `cat` session.
    let mut held = Vec::new();
    for i in 0..12 {
        let client = served.login("held").await.expect("held login");
        let mut channel = client.handle.channel_open_session().await.unwrap();
        channel.exec(true, "cat").await.unwrap();
        echo(&mut channel, &format!("hello{i}")).await;
        held.push((client, channel));
    }
    // Churn beside it: log in, run `true`, leave, over and over, during every reload.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let churn = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let (port, key) = (served.port, served.key());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let result = async {
                    let client = russh_connect(port, &key, "churner")
                        .await
                        .map_err(|e| e.to_string())?;
                    let mut channel = client
                        .handle
                        .channel_open_session()
                        .await
                        .map_err(|e| e.to_string())?;
                    channel
                        .exec(true, "true")
                        .await
                        .map_err(|e| e.to_string())?;
                    let done = drain(&mut channel).await;
                    client
                        .handle
                        .disconnect(russh::Disconnect::ByApplication, "", "en")
                        .await
                        .map_err(|e| e.to_string())?;
                    (done.status == Some(0))
                        .then_some(())
                        .ok_or(format!("{done:?}"))
                }
                .await;
                match result {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("churn failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };
    // Ten reloads, half by ctl and half by SIGHUP, lowering and raising limits and timeouts
    // below what the live connections already use.
    for round in 0..10 {
        let (max, idle) = if round % 2 == 0 {
            (5, "1h")
        } else {
            (50, "off")
        };
        served.write_config(&config(max, idle, "max_sessions_per_connection = 1\n"));
        if round % 2 == 0 {
            let out = served.ctl(&["reload"]).await;
            assert!(out.status.success(), "{}", text(&out.stderr));
            let said = text(&out.stdout);
            assert!(said.starts_with("reloaded: "), "{said}");
            if round == 0 {
                assert!(said.contains("limits.max_per_user: 50 -> 5"), "{said}");
                assert!(said.contains("timeouts.idle: off -> 1h"), "{said}");
            }
        } else {
            served.hangup();
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // The last file in force lowered max_per_user to 5 and the idle timeouts to 1h.
    served.write_config(&config(5, "1h", ""));
    let out = served.ctl(&["reload"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(WAIT, churn).await.unwrap().unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "a reload broke a login");
    assert!(ok.load(Ordering::Relaxed) > 0);
    // Nothing live was dropped: every held session still echoes.
    for (i, (_, channel)) in held.iter_mut().enumerate() {
        echo(channel, &format!("still{i}")).await;
    }
    // The lowered per-user limit applies to new logins only.
    assert_eq!(
        refused_text(&served, "held").await.as_deref(),
        Some("max_per_user (5) reached for held")
    );

    // A bad file: refused with the file, the line and what was expected; the old configuration
    // stays in force and the server serves on.
    served.write_config("[limits]\nmax_per_user = 50\nmax_per_source = -3\n");
    let out = served.ctl(&["reload"]).await;
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(
        said.contains("sshvisor.toml") && said.contains("line 3") && said.contains("-3"),
        "{said}"
    );
    served.hangup();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        refused_text(&served, "held").await.as_deref(),
        Some("max_per_user (5) reached for held"),
        "the bad file's max_per_user = 50 was applied"
    );
    let fresh = served.login("someone").await.expect("still serving");
    let mut channel = fresh.handle.channel_open_session().await.unwrap();
    channel.exec(true, "echo serving").await.unwrap();
    assert_eq!(text(&drain(&mut channel).await.stdout), "serving\n");
    for (i, (_, channel)) in held.iter_mut().enumerate() {
        echo(channel, &format!("end{i}")).await;
    }
    let listed = served.ctl(&["ls", "--user", "held", "--json"]).await;
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reads_a_new_authorized_keys_file_for_new_logins() {
    let cwd = tempfile::tempdir().unwrap();
    let keys = cwd.path().join("authorized_keys");
    let make_key = |name: &str| -> (PathBuf, String) {
        let path = cwd.path().join(name);
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
        (path, public.trim().to_string())
    };
    let (first, first_pub) = make_key("first");
    let (second, second_pub) = make_key("second");
    std::fs::write(&keys, format!("{first_pub}\n")).unwrap();
    let served = Served::start(&format!("authorized_keys = \"{}\"\n", keys.display())).await;
    let login = |key: PathBuf| {
        let port = served.port;
        async move {
            russh_connect(port, &key, "kim")
                .await
                .map(|c| c.authenticated)
                .unwrap_or(false)
        }
    };
    assert!(login(first.clone()).await);
    assert!(!login(second.clone()).await);
    let held = russh_connect(served.port, &first, "kim").await.unwrap();
    std::fs::write(&keys, format!("{second_pub}\n")).unwrap();
    let out = served.ctl(&["reload"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(login(second.clone()).await, "the new key is accepted");
    assert!(!login(first.clone()).await, "the removed key is refused");
    // The connection that logged in with the removed key is not dropped.
    let mut channel = held.handle.channel_open_session().await.unwrap();
    channel.exec(true, "echo kept").await.unwrap();
    assert_eq!(text(&drain(&mut channel).await.stdout), "kept\n");
    // A missing file is refused and the keys in force stay.
    std::fs::remove_file(&keys).unwrap();
    let out = served.ctl(&["reload"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("authorized_keys"),
        "{}",
        text(&out.stderr)
    );
    assert!(login(second).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_leaves_connections_accepted_before_it_with_the_sessions_settings_they_had() {
    let served = Served::start("session_path = \"/opt/before:/bin:/usr/bin\"\n").await;
    // Logged in before the reload, its first session opened after it.
    let held = served.login("kim").await.expect("login");
    served.write_config("session_path = \"/opt/after:/bin:/usr/bin\"\n");
    let out = served.ctl(&["reload"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path_of = |client: Client| async move {
        let mut channel = client.handle.channel_open_session().await.unwrap();
        channel.exec(true, "echo $PATH").await.unwrap();
        text(&drain(&mut channel).await.stdout)
    };
    assert_eq!(path_of(held).await, "/opt/before:/bin:/usr/bin\n");
    let fresh = served.login("kim").await.expect("login after the reload");
    assert_eq!(path_of(fresh).await, "/opt/after:/bin:/usr/bin\n");
}

/// `ssh -o KexAlgorithms=KEX` with the served key: whether `echo ok` ran.
async fn ssh_with_kex(served: &Served, kex: &str) -> bool {
    let kex = format!("KexAlgorithms={kex}");
    let out = openssh(served.port, &served.key(), "kim", &[&kex])
        .arg("echo ok")
        .output();
    let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
    out.status.success() && text(&out.stdout) == "ok\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_algorithms_for_new_connections_and_a_bad_list_is_refused_whole() {
    let served = Served::start("").await;
    assert!(ssh_with_kex(&served, "curve25519-sha256").await);
    assert!(!ssh_with_kex(&served, "diffie-hellman-group14-sha256").await);
    let held = served.login("kim").await.expect("login");

    served.write_config("kex_algorithms = \"+diffie-hellman-group14-sha256\"\n");
    let out = served.ctl(&["reload"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("kex_algorithms: default -> +diffie-hellman-group14-sha256"),
        "{}",
        text(&out.stdout)
    );
    assert!(ssh_with_kex(&served, "diffie-hellman-group14-sha256").await);

    // A bad list, with another change beside it: refused with the file and the line, and
    // nothing of that file applies.
    served.write_config(
        "kex_algorithms = \"curve25519-sha256\"\nciphers = \"-aes*,chacha20*\"\n[timeouts]\nkill_grace = \"9s\"\n",
    );
    let out = served.ctl(&["reload"]).await;
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(
        said.contains("sshvisor.toml:2: ciphers:") && said.contains("leaves no cipher"),
        "{said}"
    );
    // The old lists stay in force and the server serves on.
    assert!(ssh_with_kex(&served, "diffie-hellman-group14-sha256").await);
    assert!(ssh_with_kex(&served, "curve25519-sha256@libssh.org").await);
    let mut channel = held.handle.channel_open_session().await.unwrap();
    channel.exec(true, "echo kept").await.unwrap();
    assert_eq!(text(&drain(&mut channel).await.stdout), "kept\n");
}
