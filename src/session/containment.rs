//! Keeping each session's processes together, so that the session's end takes every one of them
//! whatever they did to their environment, process group, session or parentage.
//!
//! Three mechanisms, strongest first; [`Containment::detect`] picks the first this machine
//! allows, and `sshvisor ctl stats` says which one runs:
//!
//! - **cgroup** (Linux cgroup v2, as systemd-logind does for login sessions): each session gets
//!   a cgroup of its own under the server's, its leader is moved in before it execs, and every
//!   descendant is born inside. Nothing but a process with write access to another cgroup can
//!   leave it. The session's processes are `cgroup.procs`; `cgroup.kill` ends them all in one
//!   write; `cgroup.events` says when the last one is gone. The cost of a session's end is its
//!   own: no scan of the server's children or of /proc. Needs a writable cgroup v2 subtree:
//!   root, or a delegated subtree (systemd `Delegate=yes`).
//! - **reaper**: the session's leader is a small reaper process of ours (`sshvisor`'s own
//!   binary, see [`crate::session::reaper`]): a child subreaper that starts the command, adopts every
//!   orphan of the session, mirrors the command's exit status, and before it exits kills every
//!   descendant left. A process cannot leave its subreaper's tree. Needs no privilege.
//! - **process group**: only the leader's process group and its descendants while they live:
//!   `setsid`, a double fork or an exited parent escape. The last resort, logged as a warning.
//!
//! Every session's scope is registered here while it lives, so `ctl ls` counts the processes
//! of each session by asking the session's scope, not by scanning /proc.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

/// Which mechanism keeps a session's processes together.
#[derive(Debug, Clone)]
pub enum Containment {
    /// A cgroup v2 per session, under this directory (the server's own).
    Cgroup(Arc<CgroupRoot>),
    /// A reaper process per session: this program run as `sshvisor-session-reaper`.
    Reaper(PathBuf),
    /// The leader's process group only.
    ProcessGroup,
}

impl Containment {
    /// The strongest mechanism this machine allows: a cgroup v2 subtree of the server's own
    /// if one can be made, else the reaper when `reaper` names a program that serves it (see
    /// [`crate::session::reaper::run_if_asked`]), else the process group only.
    pub fn detect(reaper: Option<PathBuf>) -> Self {
        match CgroupRoot::shared() {
            Ok(root) => return Containment::Cgroup(root),
            Err(e) => debug!(error = %e, "no cgroup v2 subtree for sessions"),
        }
        match reaper {
            Some(program) => Containment::Reaper(program),
            None => Containment::ProcessGroup,
        }
    }

    /// A cgroup v2 per session, or why not.
    pub fn cgroup() -> Result<Self, ContainmentError> {
        CgroupRoot::shared().map(Containment::Cgroup)
    }

    /// Its short name, as `ctl stats` and the configuration spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Containment::Cgroup(_) => "cgroup",
            Containment::Reaper(_) => "reaper",
            Containment::ProcessGroup => "process-group",
        }
    }

    /// Where it works: the cgroup directory or the reaper program.
    pub fn location(&self) -> Option<&Path> {
        match self {
            Containment::Cgroup(root) => Some(&root.dir),
            Containment::Reaper(program) => Some(program),
            Containment::ProcessGroup => None,
        }
    }

    /// A scope for a new session's processes (before its leader is started).
    pub(crate) fn enclose(&self, session: &str) -> io::Result<SessionScope> {
        let kind = match self {
            Containment::Cgroup(root) => ScopeKind::Cgroup(root.create()?),
            Containment::Reaper(program) => ScopeKind::Reaper(program.clone()),
            Containment::ProcessGroup => ScopeKind::ProcessGroup,
        };
        Ok(SessionScope {
            session: session.to_string(),
            kind,
            leader: OnceLock::new(),
        })
    }
}

/// Which containment an operator asks for (`containment` in the configuration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContainmentChoice {
    /// The strongest this machine allows.
    #[default]
    Auto,
    /// A cgroup per session, or the server does not start.
    Cgroup,
    /// A reaper per session (needs a binary that serves it: [`crate::session::reaper::run_if_asked`]).
    Reaper,
    /// The process group only (escapes are possible).
    ProcessGroup,
}

impl std::str::FromStr for ContainmentChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            "cgroup" => Ok(Self::Cgroup),
            "reaper" => Ok(Self::Reaper),
            "process-group" => Ok(Self::ProcessGroup),
            other => Err(format!(
                "unknown containment {other:?}: auto, cgroup, reaper or process-group"
            )),
        }
    }
}

impl ContainmentChoice {
    /// The mechanism this choice gives on this machine, or why it cannot be had.
    pub fn resolve(self) -> Result<Containment, String> {
        let reaper = crate::session::reaper::program();
        match self {
            Self::Auto => Ok(Containment::detect(reaper)),
            Self::Cgroup => Containment::cgroup().map_err(|e| e.to_string()),
            Self::Reaper => reaper.map(Containment::Reaper).ok_or_else(|| {
                "the reaper needs a binary that serves it (sshvisor's own, or one whose main calls sshvisor::session::reaper::run_if_asked)".to_string()
            }),
            Self::ProcessGroup => Ok(Containment::ProcessGroup),
        }
    }
}

/// Why a containment mechanism cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ContainmentError {
    /// An earlier attempt in this process failed, for this reason.
    #[error("{0}")]
    Unavailable(String),
    /// No cgroup v2 hierarchy is mounted.
    #[error("no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo)")]
    NoCgroup2,
    /// This process's own cgroup is unknown.
    #[error("this process's cgroup v2 path is not in /proc/self/cgroup")]
    NoOwnCgroup,
    /// The server may not create cgroups where it is.
    #[error("cannot create a cgroup under {dir}: {source} (run as root, or give the server a delegated subtree: systemd Delegate=yes)")]
    NotWritable {
        /// The server's cgroup directory.
        dir: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
}

/// The directory under which this server makes its sessions' cgroups: `sshvisor-<pid>` inside
/// the server's own cgroup; each session's is `s<N>` in it, reused once empty.
#[derive(Debug)]
pub struct CgroupRoot {
    dir: PathBuf,
    /// Empty session cgroups kept for the next sessions: a cgroup's creation and removal cost
    /// the kernel more than everything else in a session's start and end.
    spare: Mutex<Vec<PathBuf>>,
    /// Names the next new session cgroup.
    next: std::sync::atomic::AtomicU64,
}

/// The most empty session cgroups kept for reuse; more are removed.
const MAX_SPARE: usize = 4096;

impl CgroupRoot {
    /// This process's root (made once, shared by every listener in the process).
    fn shared() -> Result<Arc<Self>, ContainmentError> {
        static ROOT: OnceLock<Result<Arc<CgroupRoot>, String>> = OnceLock::new();
        let made = ROOT.get_or_init(|| Self::make().map(Arc::new).map_err(|e| e.to_string()));
        // Tried once per process: where it failed, it is not tried again at every session.
        match made {
            Ok(root) => Ok(root.clone()),
            Err(reason) => Err(ContainmentError::Unavailable(reason.clone())),
        }
    }

    fn make() -> Result<Self, ContainmentError> {
        let mount = cgroup2_mount().ok_or(ContainmentError::NoCgroup2)?;
        let own = own_cgroup().ok_or(ContainmentError::NoOwnCgroup)?;
        let parent = mount.join(own.trim_start_matches('/'));
        remove_stale(&parent);
        let dir = parent.join(format!("sshvisor-{}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(ContainmentError::NotWritable {
                    dir: parent,
                    source,
                })
            }
        }
        // A session's leader is moved in by writing to cgroup.procs: check that it is allowed
        // here (a delegated subtree may allow mkdir and not that) by moving nobody: a probe
        // cgroup made and removed.
        let probe = dir.join("probe");
        let usable = fs::create_dir(&probe)
            .and_then(|()| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(probe.join("cgroup.procs"))
            })
            .map(drop);
        let _ = fs::remove_dir(&probe);
        if let Err(source) = usable {
            let _ = fs::remove_dir(&dir);
            return Err(ContainmentError::NotWritable {
                dir: parent,
                source,
            });
        }
        info!(dir = %dir.display(), "sessions are contained in cgroups");
        Ok(Self {
            dir,
            spare: Mutex::new(Vec::new()),
            next: Default::default(),
        })
    }

    /// The directory of this server's session cgroups.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An empty cgroup for a new session: a spare one, or a new one.
    fn create(self: &Arc<Self>) -> io::Result<SessionCgroup> {
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let dir = match spare {
            Some(dir) => dir,
            None => {
                let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let dir = self.dir.join(format!("s{n}"));
                fs::create_dir(&dir)?;
                dir
            }
        };
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"));
        match procs {
            Ok(procs) => Ok(SessionCgroup {
                dir,
                procs: Mutex::new(Some(procs.into())),
                root: self.clone(),
                emptied: std::sync::atomic::AtomicBool::new(false),
            }),
            Err(e) => {
                let _ = fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// Takes back a session's cgroup once nothing runs in it.
    fn give_back(&self, dir: PathBuf) {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < MAX_SPARE {
            spare.push(dir);
        } else if let Err(e) = fs::remove_dir(&dir) {
            debug!(dir = %dir.display(), error = %e, "cannot remove a session's cgroup");
        }
    }
}

/// Ends and removes what a server that is gone left in `parent`: `sshvisor-<pid>` directories
/// whose process no longer runs (a crash, a SIGKILL), and every process still in them.
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("sshvisor-"))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() as i32 || kill(Pid::from_raw(pid), None).is_ok() {
            continue;
        }
        let dir = entry.path();
        let mut left = 0;
        for session in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if session.path().is_dir() {
                left += cgroup_kill(&session.path());
                let _ = wait_unpopulated_blocking(&session.path(), Duration::from_secs(1));
                let _ = fs::remove_dir(session.path());
            }
        }
        if left > 0 {
            warn!(dir = %dir.display(), killed = left, "killed processes left by a server that is gone");
        }
        let _ = fs::remove_dir(&dir);
    }
}

/// Writes `cgroup.kill` (SIGKILL to every process inside, atomically, kernel 5.14 and later);
/// on an older kernel, SIGKILL to each process listed. Returns how many were listed.
fn cgroup_kill(dir: &Path) -> usize {
    let listed = cgroup_procs(dir);
    kill_all_in(dir);
    listed.len()
}

/// SIGKILL to every process in the cgroup `dir`: `cgroup.kill`, or on an older kernel each
/// process listed.
fn kill_all_in(dir: &Path) {
    if fs::write(dir.join("cgroup.kill"), "1").is_err() {
        for pid in cgroup_procs(dir) {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
}

/// The processes in a cgroup (not its descendants').
fn cgroup_procs(dir: &Path) -> Vec<Pid> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .map(Pid::from_raw)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a live process is left in a cgroup (`populated` in `cgroup.events`; a zombie does
/// not count). A cgroup that cannot be read is empty.
fn populated(dir: &Path) -> bool {
    fs::read(dir.join("cgroup.events")).is_ok_and(|text| says_populated(&text))
}

/// Whether the text of a `cgroup.events` says a live process is left.
fn says_populated(events: &[u8]) -> bool {
    events.split(|b| *b == b'\n').any(|l| l == b"populated 1")
}

/// Kills everything in the cgroup `dir` and waits until nothing runs there, at most `bound`;
/// whether it emptied. Woken by the kernel's notice on `cgroup.events` (a change of
/// `populated` raises EPOLLPRI on it), not by polling: a process takes well under a
/// millisecond to die, less than one tick of a timer.
async fn wait_emptied(dir: &Path, bound: Duration) -> bool {
    use std::os::unix::fs::FileExt;
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;
    // One descriptor for every look (read again from its start), and registered for the
    // kernel's notice only when there is something to wait for: most sessions are empty by
    // the time their leader's exit is seen.
    let Ok(events) = fs::File::open(dir.join("cgroup.events")) else {
        crate::session::tally::caught(cgroup_procs(dir).len());
        return wait_unpopulated_polling(dir, bound).await;
    };
    let is_populated = |file: &fs::File| {
        let mut buf = [0u8; 128];
        file.read_at(&mut buf, 0)
            .is_ok_and(|n| says_populated(&buf[..n]))
    };
    if !is_populated(&events) {
        return true;
    }
    // Still populated after the leader's end: what is left escaped or was left behind.
    crate::session::tally::caught(cgroup_procs(dir).len());
    // Registered before the kill, so no change after it can be missed.
    // SAFETY: the AsyncFd owns the file, and nothing replaces or closes its descriptor while
    // it is registered.
    let events = match unsafe { AsyncFd::register_with_interest(events, Interest::PRIORITY) } {
        Ok(events) => events,
        Err(_) => {
            kill_all_in(dir);
            return wait_unpopulated_polling(dir, bound).await;
        }
    };
    // Once: the kernel kills what forks during a cgroup.kill too.
    kill_all_in(dir);
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if !is_populated(events.get_ref()) {
            return true;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return false;
        }
        // A notice, or a slow tick should one be missed: the state is read again.
        let step = (deadline - now).min(Duration::from_millis(50));
        if let Ok(Ok(mut ready)) =
            tokio::time::timeout(step, events.ready(Interest::PRIORITY)).await
        {
            ready.clear_ready();
        }
    }
}

/// [`wait_emptied`] where `cgroup.events` cannot be watched: killed, then looked at every
/// millisecond.
async fn wait_unpopulated_polling(dir: &Path, bound: Duration) -> bool {
    kill_all_in(dir);
    let deadline = tokio::time::Instant::now() + bound;
    while populated(dir) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

fn wait_unpopulated_blocking(dir: &Path, bound: Duration) -> bool {
    let deadline = std::time::Instant::now() + bound;
    while populated(dir) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// One session's cgroup.
#[derive(Debug)]
pub(crate) struct SessionCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, open for the leader to move itself in before it execs; closed once it
    /// has started (a session holds no descriptor for its cgroup).
    procs: Mutex<Option<OwnedFd>>,
    /// Where the cgroup goes back once empty.
    root: Arc<CgroupRoot>,
    /// Seen empty after the leader's exit: it can go back as it is.
    emptied: std::sync::atomic::AtomicBool,
}

/// The processes of one session, however they are held together.
#[derive(Debug)]
pub(crate) struct SessionScope {
    session: String,
    kind: ScopeKind,
    /// The process the server started (the command, or the reaper), once it runs.
    leader: OnceLock<Pid>,
}

#[derive(Debug)]
enum ScopeKind {
    Cgroup(SessionCgroup),
    Reaper(PathBuf),
    ProcessGroup,
}

/// What the server starts for a session, given the command it runs.
pub(crate) struct Launch {
    /// The program to execute.
    pub(crate) program: PathBuf,
    /// Its `argv[0]`.
    pub(crate) arg0: OsString,
    /// The rest of its arguments.
    pub(crate) args: Vec<OsString>,
}

impl SessionScope {
    /// What to execute for `program arg0 args`: itself, or the reaper that runs it (`pty`:
    /// the command gets its own session with the terminal on fd 0 as its controlling tty).
    pub(crate) fn launch(
        &self,
        program: &Path,
        arg0: &str,
        args: &[&std::ffi::OsStr],
        pty: bool,
    ) -> Launch {
        match &self.kind {
            ScopeKind::Reaper(reaper) => {
                let mut all = vec![
                    OsString::from(if pty { "--pty" } else { "--pipes" }),
                    program.as_os_str().to_owned(),
                    OsString::from(arg0),
                ];
                all.extend(args.iter().map(|a| a.to_os_string()));
                Launch {
                    program: reaper.clone(),
                    arg0: crate::session::reaper::REAPER_ARG0.into(),
                    args: all,
                }
            }
            _ => Launch {
                program: program.to_owned(),
                arg0: arg0.into(),
                args: args.iter().map(|a| a.to_os_string()).collect(),
            },
        }
    }

    /// Whether the leader must get its own session and the terminal itself (false when a
    /// reaper starts the command and does it for the command).
    pub(crate) fn leader_takes_terminal(&self) -> bool {
        !matches!(self.kind, ScopeKind::Reaper(_))
    }

    /// The descriptor the leader writes `0` to before it execs, to move itself into the
    /// session's cgroup (`None`: nothing to do).
    pub(crate) fn cgroup_procs_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        match &self.kind {
            ScopeKind::Cgroup(cg) => cg
                .procs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|fd| fd.as_raw_fd()),
            _ => None,
        }
    }

    /// The leader runs: remember it, close what only its start needed, and register the
    /// scope for `ctl ls`.
    pub(crate) fn started(self: &Arc<Self>, leader: Pid) {
        let _ = self.leader.set(leader);
        if let ScopeKind::Cgroup(cg) = &self.kind {
            cg.procs.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
        registry()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.session.clone(), Arc::downgrade(self));
    }

    /// Asks every process of the session to end: SIGHUP then SIGCONT (a stopped process
    /// could not act on the hangup).
    pub(crate) fn hang_up(&self) {
        let Some(leader) = self.leader.get().copied() else {
            return;
        };
        match &self.kind {
            ScopeKind::Cgroup(cg) => {
                let pids = cgroup_procs(&cg.dir);
                for signal in [Signal::SIGHUP, Signal::SIGCONT] {
                    for pid in &pids {
                        let _ = kill(*pid, signal);
                    }
                }
                debug!(processes = pids.len(), "hung up the session's processes");
            }
            // The reaper passes the hangup on to every process under it.
            ScopeKind::Reaper(_) => {
                let _ = kill(leader, Signal::SIGHUP);
            }
            ScopeKind::ProcessGroup => {
                let _ = killpg(leader, Signal::SIGHUP);
                let _ = killpg(leader, Signal::SIGCONT);
            }
        }
    }

    /// Kills every process of the session at once.
    pub(crate) fn kill_all(&self) {
        match &self.kind {
            ScopeKind::Cgroup(cg) => {
                cgroup_kill(&cg.dir);
            }
            ScopeKind::Reaper(_) => {
                if let Some(leader) = self.leader.get() {
                    // SAFETY: kill with a process ID and a signal number.
                    unsafe {
                        libc::kill(leader.as_raw(), crate::session::reaper::force_signal());
                    }
                }
            }
            ScopeKind::ProcessGroup => {
                if let Some(leader) = self.leader.get() {
                    let _ = killpg(*leader, Signal::SIGKILL);
                }
            }
        }
    }

    /// Sends a client's signal (`signal` channel request) to the command's process group.
    /// Only while the leader is not reaped: its ID is the group's and cannot be reused.
    pub(crate) fn signal_command(&self, signal: Signal) -> nix::Result<()> {
        let Some(leader) = self.leader.get().copied() else {
            return Err(nix::errno::Errno::ESRCH);
        };
        match &self.kind {
            // The reaper passes it on to the command's process group.
            ScopeKind::Reaper(_) => kill(leader, signal),
            _ => killpg(leader, signal),
        }
    }

    /// How many live processes the session has.
    pub(crate) fn count(&self) -> usize {
        match &self.kind {
            ScopeKind::Cgroup(cg) => cgroup_procs(&cg.dir).len(),
            ScopeKind::Reaper(_) => self
                .leader
                .get()
                .map(|leader| descendants(*leader).len())
                .unwrap_or(0),
            ScopeKind::ProcessGroup => self
                .leader
                .get()
                .map(|leader| {
                    let mut all = descendants(*leader);
                    all.retain(|p| crate::session::procs::alive(p.as_raw()));
                    all.len() + usize::from(crate::session::procs::alive(leader.as_raw()))
                })
                .unwrap_or(0),
        }
    }

    /// Once the leader has exited: ends every process the session has left, and waits
    /// (bounded) until none runs. Returns how many still ran when the bound was reached (the
    /// target: zero).
    pub(crate) async fn end_the_rest(&self, bound: Duration) -> usize {
        match &self.kind {
            ScopeKind::Cgroup(cg) => {
                if wait_emptied(&cg.dir, bound).await {
                    cg.emptied.store(true, std::sync::atomic::Ordering::SeqCst);
                    return 0;
                }
                let left = cgroup_procs(&cg.dir).len();
                warn!(session = %self.session, left, "processes of the session survived SIGKILL");
                left
            }
            // The reaper exits only once every process under it is gone.
            ScopeKind::Reaper(_) => 0,
            ScopeKind::ProcessGroup => {
                if let Some(leader) = self.leader.get() {
                    let _ = killpg(*leader, Signal::SIGKILL);
                }
                0
            }
        }
    }
}

impl Drop for SessionScope {
    fn drop(&mut self) {
        if let Ok(mut scopes) = registry().lock() {
            if scopes
                .get(&self.session)
                .is_some_and(|w| w.strong_count() == 0)
            {
                scopes.remove(&self.session);
            }
        }
        if let ScopeKind::Cgroup(cg) = &self.kind {
            // Emptied by `end_the_rest` in the normal course; when it was not (the session was
            // dropped early), nothing of it may stay: killed, and taken back once empty.
            if cg.emptied.load(std::sync::atomic::Ordering::SeqCst) || !populated(&cg.dir) {
                cg.root.give_back(cg.dir.clone());
            } else {
                cgroup_kill(&cg.dir);
                let (dir, root) = (cg.dir.clone(), cg.root.clone());
                std::thread::spawn(move || {
                    if wait_unpopulated_blocking(&dir, Duration::from_secs(5)) {
                        root.give_back(dir);
                    }
                });
            }
        }
    }
}

/// The containment `sshvisor serve` chose at start (for `ctl stats`).
pub fn in_use() -> Option<Containment> {
    IN_USE.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Records the daemon's choice (see [`in_use`]).
pub(crate) fn set_in_use(containment: Containment) {
    *IN_USE.lock().unwrap_or_else(|e| e.into_inner()) = Some(containment);
}

static IN_USE: Mutex<Option<Containment>> = Mutex::new(None);

fn registry() -> &'static Mutex<HashMap<String, std::sync::Weak<SessionScope>>> {
    static SCOPES: OnceLock<Mutex<HashMap<String, std::sync::Weak<SessionScope>>>> =
        OnceLock::new();
    SCOPES.get_or_init(Default::default)
}

/// How many live processes each running session has, by session ID text.
pub fn count_by_session() -> HashMap<String, usize> {
    let scopes: Vec<(String, Arc<SessionScope>)> = registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(|(id, w)| Some((id.clone(), w.upgrade()?)))
        .collect();
    scopes
        .into_iter()
        .map(|(id, scope)| (id, scope.count()))
        .collect()
}

/// Every descendant of `pid` (not `pid` itself), through each thread's `children` list: cost
/// proportional to the subtree.
pub(crate) fn descendants(pid: Pid) -> Vec<Pid> {
    let mut out = Vec::new();
    let mut queue = vec![pid.as_raw()];
    while let Some(p) = queue.pop() {
        for child in crate::session::procs::children_of(p) {
            if !out.contains(&Pid::from_raw(child)) {
                out.push(Pid::from_raw(child));
                queue.push(child);
            }
        }
    }
    out
}

/// Where the cgroup v2 hierarchy is mounted (the `cgroup2` line of /proc/self/mountinfo): on a
/// hybrid layout it is not /sys/fs/cgroup.
fn cgroup2_mount() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        before
            .split_whitespace()
            .nth(4)
            .map(|p| PathBuf::from(unescape(p)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(code) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 8).ok())
            {
                out.push(code);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's cgroup v2 path (the `0::` line of /proc/self/cgroup).
fn own_cgroup() -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end_matches(" (deleted)").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_cgroup_is_emptied_with_everything_in_it_and_reused() {
        let Ok(Containment::Cgroup(root)) = Containment::cgroup() else {
            eprintln!("no cgroup v2 subtree here: nothing to check");
            return;
        };
        let cg = root.create().unwrap();
        let procs = cg.procs.lock().unwrap().as_ref().map(|fd| {
            use std::os::fd::AsRawFd;
            fd.as_raw_fd()
        });
        let mut command = std::process::Command::new("sh");
        // A process that ignores hangups, with a child of its own in a new session.
        command.args(["-c", "trap '' HUP; setsid sleep 1000 & exec sleep 1001"]);
        let fd = procs.unwrap();
        // SAFETY: only write(2) between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cgroup_procs(&cg.dir).len() < 2 {
            assert!(std::time::Instant::now() < deadline, "the sleeps start");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(wait_emptied(&cg.dir, Duration::from_secs(10)).await);
        assert!(cgroup_procs(&cg.dir).is_empty());
        child.wait().unwrap();
        let dir = cg.dir.clone();
        cg.emptied.store(true, std::sync::atomic::Ordering::SeqCst);
        let scope = SessionScope {
            session: "test".into(),
            kind: ScopeKind::Cgroup(cg),
            leader: OnceLock::new(),
        };
        drop(scope);
        // Kept for the next session rather than removed.
        assert!(dir.is_dir());
        assert_eq!(root.create().unwrap().dir, dir);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(
            unescape(r"/sys/fs/cgroup/my\040dir"),
            "/sys/fs/cgroup/my dir"
        );
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }
}
