//! No process outlives its session, whatever it does to its environment, session, process
//! group or parentage: checked for every containment this machine allows (a cgroup per
//! session where the server may make one, and the reaper everywhere), on a normal end and on a
//! kill.

mod common;

use std::time::Duration;

use common::{drain, processes_with_argv, read_until, text, wait_started, TestServer, WAIT};
use sshvisor::session::containment::{Containment, ContainmentChoice};
use sshvisor_actors::{SupervisorMsg, Target};

/// The containments to test here: the reaper always, a cgroup where this machine allows one.
fn containments() -> Vec<ContainmentChoice> {
    sshvisor::session::reaper::use_program(env!("CARGO_BIN_EXE_sshvisor").into());
    let mut all = vec![ContainmentChoice::Reaper];
    match Containment::cgroup() {
        Ok(_) => all.push(ContainmentChoice::Cgroup),
        Err(e) => eprintln!("cgroup containment not tested here: {e}"),
    }
    all
}

async fn server_with(containment: ContainmentChoice) -> TestServer {
    TestServer::start_with(|o| o.config.containment = containment).await
}

/// Every way out we know of, each a `sleep` tagged `{tag}N`, all quiet on stdio but the last.
fn escapes(tag: &str) -> (String, Vec<String>) {
    let quiet = "</dev/null >/dev/null 2>&1";
    let tags: Vec<String> = (1..=7).map(|n| format!("{tag}{n}")).collect();
    let t = |n: usize| &tags[n - 1];
    let line = [
        format!("setsid -f sleep {} {quiet}", t(1)),
        format!("(sleep {} {quiet} &)", t(2)),
        format!("nohup sleep {} {quiet} &", t(3)),
        format!("env -i setsid -f sleep {} {quiet}", t(4)),
        format!(
            "python3 -c 'import os; os.setpgid(0, 0); os.execvp(\"sleep\", [\"sleep\", \"{}\"])' {quiet} &",
            t(5)
        ),
        format!("env -i sh -c '(sleep {} &)' {quiet}", t(6)),
        // Out of the session, blind to hangups, and without the session's variable.
        format!(
            "env -i setsid -f sh -c 'trap \"\" HUP; exec sleep {}' {quiet}",
            t(7)
        ),
    ]
    .join("\n");
    (line, tags)
}

fn running(tags: &[String]) -> Vec<&String> {
    tags.iter()
        .filter(|t| !processes_with_argv(&["sleep", t]).is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_escaped_process_outlives_a_session_that_ends_by_itself() {
    for (round, containment) in containments().into_iter().enumerate() {
        let server = server_with(containment).await;
        let client = server.russh_client("ada").await;
        let mut ch = client.handle.channel_open_session().await.unwrap();
        let (line, tags) = escapes(&format!("98711{round}"));
        // The shell waits for the client's EOF, then exits normally.
        ch.exec(true, format!("{line}\necho started; read _; exit 0"))
            .await
            .unwrap();
        read_until(&mut ch, &mut String::new(), "started").await;
        common::eventually("every escapee runs", || running(&tags).len() == tags.len()).await;
        // The shell and its seven escapees, however far they went.
        let mut listed = serde_json::Value::Null;
        common::eventually("ctl ls counts every process of the session", || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_sshvisor"))
                .args(["ctl", "--state-dir"])
                .arg(server.state_dir())
                .args(["ls", "--json"])
                .output()
                .unwrap();
            listed = serde_json::from_slice(&out.stdout).unwrap_or_default();
            listed[0]["sessions"][0]["processes"] == 8
        })
        .await;
        ch.eof().await.unwrap();
        let end = drain(&mut ch).await;
        assert_eq!(end.status, Some(0), "{containment:?}");
        // The exit status is sent once the session's processes are gone.
        assert_eq!(
            running(&tags),
            Vec::<&String>::new(),
            "{containment:?}: escaped processes outlived their session"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_escaped_process_outlives_a_kill_and_the_report_says_none_was_left() {
    for (round, containment) in containments().into_iter().enumerate() {
        let server = server_with(containment).await;
        let mut events = server.events().await;
        let client = server.russh_client("bea").await;
        let mut ch = client.handle.channel_open_session().await.unwrap();
        let (line, tags) = escapes(&format!("98712{round}"));
        let command = format!("trap '' HUP\n{line}\necho started; sleep {}9", tags[0]);
        ch.exec(true, command.as_str()).await.unwrap();
        wait_started(&mut events, &command).await;
        read_until(&mut ch, &mut String::new(), "started").await;
        common::eventually("every escapee runs", || running(&tags).len() == tags.len()).await;
        let conn = server.list().await[0].id;
        let report = ractor::call_t!(
            server.daemon.supervisor(),
            |reply| SupervisorMsg::Kill {
                target: Target::Connection(conn),
                reason: "containment test".into(),
                grace: Duration::from_millis(500),
                by: None,
                reply,
            },
            20_000
        )
        .expect("the kill is answered")
        .expect("the connection is known");
        // The leader ignores the hangup: the end is forced.
        assert!(report.forced, "{containment:?}: {report:?}");
        assert_eq!(report.processes_left, 0, "{containment:?}: {report:?}");
        assert_eq!(
            running(&tags),
            Vec::<&String>::new(),
            "{containment:?}: escaped processes outlived the kill"
        );
        assert!(processes_with_argv(&["sleep", &format!("{}9", tags[0])]).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escaped_process_holding_the_output_does_not_keep_the_session_open() {
    for (round, containment) in containments().into_iter().enumerate() {
        let server = server_with(containment).await;
        let client = server.russh_client("cy").await;
        let mut ch = client.handle.channel_open_session().await.unwrap();
        let tag = format!("98713{round}");
        // The escapee keeps the session's stdout and stderr open.
        ch.exec(true, format!("setsid -f sleep {tag}; echo done"))
            .await
            .unwrap();
        let end = drain(&mut ch).await;
        assert_eq!(text(&end.stdout), "done\n", "{containment:?}");
        assert_eq!(end.status, Some(0), "{containment:?}");
        assert!(
            processes_with_argv(&["sleep", &tag]).is_empty(),
            "{containment:?}: the escapee outlived its session"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_get_the_system_path_not_the_servers() {
    let server = TestServer::start().await;
    let client = server.russh_client("dee").await;
    let mut ch = client.handle.channel_open_session().await.unwrap();
    ch.exec(true, "echo $PATH").await.unwrap();
    let end = drain(&mut ch).await;
    assert_eq!(
        text(&end.stdout).trim(),
        sshvisor::session::app::default_path(nix::unistd::getuid().is_root())
    );
    drop(server);
    let server =
        TestServer::start_with(|o| o.config.session_path = Some("/opt/tools/bin:/bin".into()))
            .await;
    let client = server.russh_client("dee").await;
    let mut ch = client.handle.channel_open_session().await.unwrap();
    ch.exec(true, "echo $PATH").await.unwrap();
    assert_eq!(text(&drain(&mut ch).await.stdout), "/opt/tools/bin:/bin\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_of_a_command_that_never_reaps_are_not_left_as_zombies() {
    for (round, containment) in containments().into_iter().enumerate() {
        let name = format!("{containment:?}").to_lowercase();
        let cwd = tempfile::tempdir().unwrap();
        let (server, ssh) = common::serve_process(cwd.path(), &["--containment", &name]).await;
        let server_pid = server.id().unwrap();
        let tag = format!("98714{round}");
        // 300 orphans, then a process that never waits for anything.
        let mut client = common::printed_ssh(
            &ssh,
            cwd.path(),
            &format!(
                "i=0; while [ $i -lt 300 ]; do (true &); i=$((i+1)); done; echo started; exec sleep {tag}"
            ),
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
        let mut out = client.stdout.take().unwrap();
        let mut seen = Vec::new();
        tokio::time::timeout(WAIT, async {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 64];
            while !text(&seen).contains("started") {
                let n = out.read(&mut buf).await.unwrap();
                assert!(n > 0, "{name}: the session ended early");
                seen.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("the command starts");
        let mut leader = Vec::new();
        common::eventually("the command runs its sleep", || {
            leader = processes_with_argv(&["sleep", &tag]);
            leader.len() == 1
        })
        .await;
        // The reaper (if any) is the sleep's parent; zombies could pile up under any of them.
        let parent = std::fs::read_to_string(format!("/proc/{}/stat", leader[0]))
            .unwrap()
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
            .unwrap();
        common::eventually("no zombie piles up", || {
            common::zombies_of(leader[0])
                + common::zombies_of(server_pid)
                + common::zombies_of(parent)
                == 0
        })
        .await;
        drop(client);
        // Drained: the session and its sleep end with the server.
        let mut server = server;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(server_pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        tokio::time::timeout(WAIT, server.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(processes_with_argv(&["sleep", &tag]).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_outright_leaves_no_session_process_for_long() {
    for (round, containment) in containments().into_iter().enumerate() {
        let name = format!("{containment:?}").to_lowercase();
        let cwd = tempfile::tempdir().unwrap();
        let (server, ssh) = common::serve_process(cwd.path(), &["--containment", &name]).await;
        let tag = format!("98715{round}");
        let client = common::printed_ssh(
            &ssh,
            cwd.path(),
            &format!("setsid -f sleep {tag} </dev/null >/dev/null 2>&1; sleep {tag}1"),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
        let sleeps = || {
            processes_with_argv(&["sleep", &tag]).len()
                + processes_with_argv(&["sleep", &format!("{tag}1")]).len()
        };
        common::eventually("the session runs", || sleeps() == 2).await;
        // SIGKILL: no drain, no clean-up of its own.
        drop(server);
        drop(client);
        if containment == ContainmentChoice::Cgroup {
            // Nothing in the kernel ends a cgroup whose owner died: the next server on the
            // machine ends what the dead one left.
            let cwd = tempfile::tempdir().unwrap();
            let (_next, _) = common::serve_process(cwd.path(), &["--containment", &name]).await;
            common::eventually("the next server ends what was left", || sleeps() == 0).await;
        } else {
            // The reaper sees its server gone and ends the session.
            common::eventually("the reaper ends the session", || sleeps() == 0).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_session_is_contained_too_and_keeps_its_exit_status() {
    for (round, containment) in containments().into_iter().enumerate() {
        let server = server_with(containment).await;
        let tag = format!("98716{round}");
        let out = server
            .ssh("eve")
            .arg("-tt")
            .arg(format!(
                "tty >/dev/null && echo on-a-terminal; setsid -f sleep {tag} >/dev/null 2>&1; exit 7"
            ))
            .output()
            .await
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(7),
            "{containment:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains("on-a-terminal"),
            "{containment:?}"
        );
        assert!(
            processes_with_argv(&["sleep", &tag]).is_empty(),
            "{containment:?}: the escapee outlived its terminal session"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_stats_says_which_containment_holds_the_sessions() {
    for containment in containments() {
        let name = format!("{containment:?}").to_lowercase();
        let cwd = tempfile::tempdir().unwrap();
        let (_server, _) = common::serve_process(cwd.path(), &["--containment", &name]).await;
        let ctl = |args: &[&str]| {
            std::process::Command::new(env!("CARGO_BIN_EXE_sshvisor"))
                .arg("ctl")
                .args(args)
                .current_dir(cwd.path())
                .output()
                .unwrap()
        };
        let json: serde_json::Value =
            serde_json::from_slice(&ctl(&["stats", "--json"]).stdout).unwrap();
        assert_eq!(json["process"]["containment"], name.as_str(), "{json}");
        let human = text(&ctl(&["stats"]).stdout);
        assert!(human.contains(&format!("contained by {name}")), "{human}");
    }
}
