//! The ways of listing and killing a server's live connections: sshvisor's control socket
//! (JSON lines), the line protocol of the peer servers, and OpenSSH's sshd (one child process
//! of the listener per connection, ended by SIGTERM).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// How a server is controlled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    /// sshvisor's control socket: JSON lines (`ls`, `kill`, `kill_all`).
    Sshvisor,
    /// The peer servers' line protocol (`count`, `list`, `kill ID`, `killall`).
    Line,
    /// OpenSSH sshd: the connections are the children of the listener (`--pid`).
    Sshd,
}

/// Where to reach the server's control, shared by `kill` and `killall`.
#[derive(clap::Args)]
pub struct Target {
    /// The control socket (sshvisor, line).
    #[arg(long, default_value = ".sshvisor/ctl.sock")]
    control: PathBuf,
    /// How to talk to the server.
    #[arg(long, value_enum, default_value = "sshvisor")]
    proto: Proto,
    /// The listener sshd's process ID (sshd).
    #[arg(long)]
    pid: Option<i32>,
}

/// How one kill went, as seen from here.
#[derive(Debug, Clone, Copy)]
pub struct Killed {
    /// Wall-clock time just before the request was written (the signal sent, for sshd).
    pub sent: SystemTime,
    /// From writing the request to reading its reply (to the process's exit, for sshd).
    pub rtt: Duration,
    /// The server's own measure of the kill (sshvisor's `elapsed_ms`), when it gives one.
    pub inproc: Option<Duration>,
}

/// A kill of everything: how many connections the server says it ended, and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct KilledAll {
    /// Connections ended, by the server's count.
    pub count: usize,
    /// From writing the request to reading its reply.
    pub rtt: Duration,
}

/// One persistent control connection.
pub enum Control {
    /// sshvisor's JSON lines.
    Sshvisor(Lines, u64),
    /// The peers' line protocol.
    Line(Lines),
    /// The listener sshd's process ID.
    Sshd(i32),
}

/// A line-oriented Unix socket connection.
pub struct Lines {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
    line: String,
}

impl Lines {
    async fn connect(path: &Path) -> anyhow::Result<Self> {
        let stream = UnixStream::connect(path)
            .await
            .with_context(|| format!("connecting to {}", path.display()))?;
        let (read, write) = stream.into_split();
        Ok(Self {
            read: BufReader::new(read),
            write,
            line: String::new(),
        })
    }

    async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        let mut bytes = Vec::with_capacity(text.len() + 1);
        bytes.extend_from_slice(text.as_bytes());
        bytes.push(b'\n');
        self.write
            .write_all(&bytes)
            .await
            .context("writing to the control socket")
    }

    async fn recv(&mut self) -> anyhow::Result<&str> {
        self.line.clear();
        let n = self
            .read
            .read_line(&mut self.line)
            .await
            .context("reading from the control socket")?;
        if n == 0 {
            bail!("the control socket closed");
        }
        Ok(self.line.trim_end())
    }
}

impl Control {
    /// Opens the control connection of `target`.
    pub async fn connect(target: &Target) -> anyhow::Result<Self> {
        Ok(match target.proto {
            Proto::Sshvisor => Control::Sshvisor(Lines::connect(&target.control).await?, 0),
            Proto::Line => Control::Line(Lines::connect(&target.control).await?),
            Proto::Sshd => {
                let pid = target
                    .pid
                    .context("--proto sshd needs --pid LISTENER_PID")?;
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    bail!("no process {pid}");
                }
                Control::Sshd(pid)
            }
        })
    }

    /// The live connections, oldest first.
    pub async fn list(&mut self) -> anyhow::Result<Vec<String>> {
        match self {
            Control::Sshvisor(lines, next) => {
                let result = sshvisor_call(lines, next, json!({"cmd": "ls"})).await?.0;
                let all = result
                    .as_array()
                    .context("`ls` did not answer with a list")?;
                let mut live: Vec<(&str, &str)> = all
                    .iter()
                    .filter(|c| c.get("state").and_then(Value::as_str) != Some("closing"))
                    .filter_map(|c| {
                        let id = c.get("id")?.as_str()?;
                        let started = c.get("started").and_then(Value::as_str).unwrap_or("");
                        Some((started, id))
                    })
                    .collect();
                // RFC 3339 times in one format and zone sort as text; ties keep the server's order.
                live.sort_by(|a, b| a.0.cmp(b.0));
                Ok(live.into_iter().map(|(_, id)| id.to_string()).collect())
            }
            Control::Line(lines) => {
                let rest = line_call(lines, "list").await?.0;
                Ok(rest.split_whitespace().map(str::to_string).collect())
            }
            Control::Sshd(pid) => {
                let pid = *pid;
                let mut children = tokio::task::spawn_blocking(move || sshd_children(pid))
                    .await
                    .context("listing children")??;
                children.sort();
                Ok(children
                    .into_iter()
                    .map(|(_, pid)| pid.to_string())
                    .collect())
            }
        }
    }

    /// Kills one connection and waits until it is gone.
    pub async fn kill(&mut self, id: &str) -> anyhow::Result<Killed> {
        match self {
            Control::Sshvisor(lines, next) => {
                let (result, sent, rtt) =
                    sshvisor_call(lines, next, json!({"cmd": "kill", "target": id})).await?;
                let inproc = result
                    .get("elapsed_ms")
                    .and_then(Value::as_f64)
                    .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1e3));
                Ok(Killed { sent, rtt, inproc })
            }
            Control::Line(lines) => {
                let (_, sent, rtt) = line_call(lines, &format!("kill {id}")).await?;
                Ok(Killed {
                    sent,
                    rtt,
                    inproc: None,
                })
            }
            Control::Sshd(_) => {
                let pid: i32 = id.parse().context("not a process ID")?;
                let fd = PidFd::open(pid)?;
                let sent = SystemTime::now();
                let t0 = Instant::now();
                fd.signal(libc::SIGTERM)?;
                fd.exited().await?;
                Ok(Killed {
                    sent,
                    rtt: t0.elapsed(),
                    inproc: None,
                })
            }
        }
    }

    /// Stops the server accepting and kills every connection (sshvisor's `drain`); answers once
    /// all are gone.
    pub async fn drain(&mut self) -> anyhow::Result<KilledAll> {
        let Control::Sshvisor(lines, next) = self else {
            bail!("only sshvisor drains");
        };
        let (result, _, rtt) = sshvisor_call(lines, next, json!({"cmd": "drain"})).await?;
        let reports = result
            .as_array()
            .context("`drain` did not answer with a list of reports")?;
        Ok(KilledAll {
            count: reports.len(),
            rtt,
        })
    }

    /// Kills every connection and waits until all are gone.
    pub async fn kill_all(&mut self) -> anyhow::Result<KilledAll> {
        match self {
            Control::Sshvisor(lines, next) => {
                let (result, _, rtt) =
                    sshvisor_call(lines, next, json!({"cmd": "kill_all"})).await?;
                let reports = result
                    .as_array()
                    .context("`kill_all` did not answer with a list of reports")?;
                Ok(KilledAll {
                    count: reports.len(),
                    rtt,
                })
            }
            Control::Line(lines) => {
                let (rest, _, rtt) = line_call(lines, "killall").await?;
                let count = rest
                    .trim()
                    .parse()
                    .with_context(|| format!("`killall` answered `ok {rest}`, not a count"))?;
                Ok(KilledAll { count, rtt })
            }
            Control::Sshd(_) => {
                let ids = self.list().await?;
                // Open every pidfd first: a process that exits meanwhile is simply not counted.
                let fds: Vec<PidFd> = ids
                    .iter()
                    .filter_map(|id| PidFd::open(id.parse().ok()?).ok())
                    .collect();
                let t0 = Instant::now();
                for fd in &fds {
                    // One that already exited has nothing left to end.
                    let _ = fd.signal(libc::SIGTERM);
                }
                for fd in &fds {
                    fd.exited().await?;
                }
                Ok(KilledAll {
                    count: fds.len(),
                    rtt: t0.elapsed(),
                })
            }
        }
    }
}

/// Sends one sshvisor request and waits for the response with its ID: the result, when the
/// request was written, and the round trip.
async fn sshvisor_call(
    lines: &mut Lines,
    next: &mut u64,
    mut request: Value,
) -> anyhow::Result<(Value, SystemTime, Duration)> {
    *next += 1;
    let id = *next;
    request["id"] = json!(id);
    let text = request.to_string();
    let sent = SystemTime::now();
    let t0 = Instant::now();
    lines.send(&text).await?;
    loop {
        let line = lines.recv().await?;
        let rtt = t0.elapsed();
        let response: Value =
            serde_json::from_str(line).with_context(|| format!("not a JSON response: {line}"))?;
        if response.get("id").and_then(Value::as_u64) != Some(id) {
            continue;
        }
        if response.get("ok").and_then(Value::as_bool) != Some(true) {
            let error = response
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("(no error text)");
            bail!("{error}");
        }
        let result = response.get("result").cloned().unwrap_or(Value::Null);
        return Ok((result, sent, rtt));
    }
}

/// Sends one line request and reads its reply: what follows `ok`, when the request was
/// written, and the round trip.
async fn line_call(
    lines: &mut Lines,
    request: &str,
) -> anyhow::Result<(String, SystemTime, Duration)> {
    let sent = SystemTime::now();
    let t0 = Instant::now();
    lines.send(request).await?;
    let reply = lines.recv().await?;
    let rtt = t0.elapsed();
    match reply.strip_prefix("ok") {
        Some(rest) if rest.is_empty() || rest.starts_with(' ') => {
            Ok((rest.trim().to_string(), sent, rtt))
        }
        _ => Err(anyhow!("`{request}` failed: {reply}")),
    }
}

/// The direct children of `pid` with their start times (clock ticks since boot).
fn sshd_children(pid: i32) -> anyhow::Result<Vec<(u64, i32)>> {
    let mut pids = Vec::new();
    let tasks = format!("/proc/{pid}/task");
    let mut have_children_files = false;
    for task in std::fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
        let Ok(task) = task else { continue };
        let Ok(text) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        have_children_files = true;
        pids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    if !have_children_files {
        // Kernels without CONFIG_PROC_CHILDREN: look for processes whose parent is `pid`.
        for entry in std::fs::read_dir("/proc").context("reading /proc")? {
            let Ok(entry) = entry else { continue };
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if stat_fields(child).is_some_and(|(ppid, _)| ppid == pid) {
                pids.push(child);
            }
        }
    }
    Ok(pids
        .into_iter()
        .filter_map(|child| Some((stat_fields(child)?.1, child)))
        .collect())
}

/// The parent and the start time of `pid`, from /proc/PID/stat.
fn stat_fields(pid: i32) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields resume after the last `)`.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): ppid is field 4, starttime field 22.
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start))
}

/// A process file descriptor: signals reach exactly this process, and it becomes readable
/// when the process exits.
struct PidFd(AsyncFd<OwnedFd>);

impl PidFd {
    fn open(pid: i32) -> anyhow::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("pidfd_open({pid})"));
        }
        // SAFETY: the kernel just returned this descriptor and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the AsyncFd owns the descriptor; nothing closes or replaces it while it is
        // registered.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .context("registering a pidfd")?;
        Ok(Self(fd))
    }

    fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let fd = self.0.get_ref().as_raw_fd();
        // SAFETY: pidfd_send_signal takes a descriptor, a signal, a null siginfo and flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error()).context("pidfd_send_signal");
        }
        Ok(())
    }

    async fn exited(&self) -> anyhow::Result<()> {
        let _ = self.0.readable().await.context("waiting on a pidfd")?;
        Ok(())
    }
}
