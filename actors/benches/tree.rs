//! Micro-benchmarks of the actor tree alone: the supervisor, its connections and their sessions
//! over minimal fake links (`common`; no sockets, no russh, no event subscriber).
//!
//! Every connection is authenticated (as one of [`USERS`] users) with one started session, the
//! way the actor-harness tests set one up. The fake client honours a disconnect at once and the
//! fake work ends at once on terminate, so a kill never waits for a grace: what is timed is the
//! tree's own cost, from sending the message to receiving its reply. Everything else (making the
//! population, replacing what a kill took) is done outside the timed part with `iter_custom`.
//!
//! - `kill/N`: `Kill` of one live connection among N; the population is topped up to N after
//!   every kill, untimed.
//! - `connect/N`: `Connect` (admission and the spawn of the connection actor) with N live; the
//!   oldest connection is killed afterwards, untimed, to stay at N.
//! - `query/*`: `List` (all connections with their sessions), `Get` of one, `Select` of one
//!   user's connections, with 10,000 live.
//! - `kill_all/N`: `KillAll` of N connections; a fresh population for every iteration.
//!
//! The runtime is tokio's multi-thread one with 2 workers (group names start with `mt2/`), with
//! its LIFO slot off as `sshvisor serve` has it (builds with `--cfg tokio_unstable`, which the
//! repository's `.cargo/config.toml` sets; see the sshvisor crate's `runtime` module); set
//! `SSHVISOR_BENCH_RT=current` for the current-thread runtime (`ct/`).
//!
//! Run: `cargo bench -p sshvisor-actors --bench tree`. Under `cargo test --benches` every
//! benchmark runs once, with smaller populations.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use sshvisor_actors::{
    ConnId, ConnectionInfo, Filter, KillReport, SupervisorMsg, Target, DEFAULT_KILL_GRACE,
};
use tokio::runtime::Runtime;
use tokio::sync::{Mutex, MutexGuard};

mod common;

use common::{replied, Conn, Tree, WAIT};

/// Connections are spread over this many users (`user0` ...).
const USERS: usize = 100;

/// Whether this is a real measurement (`cargo bench`) rather than criterion's test mode (`cargo
/// test --benches`, which runs every benchmark once): test mode uses smaller populations.
fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The population sizes for `kill` and `connect`, the size for `query`, and the sizes for
/// `kill_all`.
fn sizes() -> (Vec<usize>, usize, Vec<usize>) {
    if measuring() {
        (vec![100, 1_000, 10_000], 10_000, vec![1_000, 10_000])
    } else {
        (vec![10, 100], 100, vec![10, 100])
    }
}

fn runtime() -> (Runtime, &'static str) {
    match std::env::var("SSHVISOR_BENCH_RT").as_deref() {
        Ok("current") => (
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime"),
            "ct",
        ),
        _ => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(2).enable_all();
            #[cfg(tokio_unstable)]
            builder.disable_lifo_slot();
            (builder.build().expect("a tokio runtime"), "mt2")
        }
    }
}

/// A supervisor with live connections, each authenticated with one started session.
struct Population {
    tree: Tree,
    /// Oldest first.
    live: VecDeque<Conn>,
    made: usize,
}

impl Population {
    async fn new(n: usize) -> Self {
        let mut pop = Self {
            tree: Tree::start().await,
            live: VecDeque::with_capacity(n),
            made: 0,
        };
        for _ in 0..n {
            let conn = pop.connect().await;
            pop.log_in(conn).await;
        }
        pop.settle().await;
        pop
    }

    /// Admits one more connection (not yet logged in).
    async fn connect(&mut self) -> Conn {
        let conn = self.tree.connect(self.made).await;
        self.made += 1;
        conn
    }

    /// Authenticates `conn`, starts a session on it and adds it to the live ones.
    async fn log_in(&mut self, conn: Conn) {
        let user = format!("user{}", self.made % USERS);
        self.tree.log_in(&conn, user).await;
        self.live.push_back(conn);
    }

    /// Waits until the supervisor has handled every notice sent so far (it handles its queue in
    /// order, so one round trip does).
    async fn settle(&self) {
        if let Some(conn) = self.live.back() {
            let info = get(&self.tree.sup, conn.id)
                .await
                .expect("the newest is live");
            assert_eq!(info.sessions.len(), 1);
        }
    }

    /// Kills what is left and stops the supervisor.
    async fn close(self) {
        let reports = kill_all(&self.tree.sup).await;
        assert_eq!(reports.len(), self.live.len());
        self.tree.sup.stop(None);
    }
}

type Sup = ractor::ActorRef<SupervisorMsg>;

async fn get(sup: &Sup, conn: ConnId) -> Option<ConnectionInfo> {
    replied(
        sup.call(|reply| SupervisorMsg::Get { conn, reply }, Some(WAIT))
            .await,
        "get",
    )
}

async fn kill(sup: &Sup, conn: ConnId) -> KillReport {
    replied(
        sup.call(
            |reply| SupervisorMsg::Kill {
                target: Target::Connection(conn),
                reason: "bench".into(),
                grace: DEFAULT_KILL_GRACE,
                by: Some("bench".into()),
                reply,
            },
            Some(WAIT),
        )
        .await,
        "kill",
    )
    .expect("the connection is live")
}

async fn kill_all(sup: &Sup) -> Vec<KillReport> {
    replied(
        sup.call(
            |reply| SupervisorMsg::KillAll {
                reason: "bench".into(),
                grace: DEFAULT_KILL_GRACE,
                by: Some("bench".into()),
                reply,
            },
            Some(WAIT),
        )
        .await,
        "kill all",
    )
}

/// Every connection had one session, and no kill should have had to force anything.
fn check_report(report: &KillReport) {
    assert_eq!(report.sessions_closed, 1, "{report:?}");
    assert!(
        !report.forced,
        "a kill in the benchmark was forced: {report:?}"
    );
}

/// A population shared by the benchmarks of one size. It is made before the benchmarks run (so
/// that criterion's warm-up and iteration estimates are not thrown off by the making of it).
struct Shared {
    n: usize,
    pop: Arc<Mutex<Population>>,
}

impl Shared {
    fn new(rt: &Runtime, n: usize) -> Self {
        Self {
            n,
            pop: Arc::new(Mutex::new(rt.block_on(Population::new(n)))),
        }
    }

    async fn get(&self) -> MutexGuard<'_, Population> {
        self.pop.lock().await
    }

    /// Ends the population.
    fn close(self, rt: &Runtime) {
        let pop = Arc::into_inner(self.pop)
            .expect("no benchmark holds it")
            .into_inner();
        assert_eq!(pop.live.len(), self.n);
        rt.block_on(pop.close());
    }
}

/// A group of quick measurements (one kill or connect each): half a second of warm-up, two of
/// measurement, 50 samples.
fn short_group(
    c: &mut Criterion,
    name: String,
) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    group
}

/// `Kill` of one connection among N, and `Connect` with N live, each to its reply.
fn bench_kill_connect(c: &mut Criterion, rt: &Runtime, flavor: &str, ns: &[usize]) {
    let pops: Vec<Shared> = ns.iter().map(|&n| Shared::new(rt, n)).collect();
    let mut group = short_group(c, format!("{flavor}/kill"));
    for shared in &pops {
        group.bench_function(BenchmarkId::from_parameter(shared.n), |b| {
            b.to_async(rt).iter_custom(|iters| async move {
                let mut pop = shared.get().await;
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let victim = pop.live.pop_front().expect("a live connection");
                    let start = Instant::now();
                    let report = kill(&pop.tree.sup, victim.id).await;
                    timed += start.elapsed();
                    check_report(&report);
                    let conn = pop.connect().await;
                    pop.log_in(conn).await;
                    pop.settle().await;
                }
                timed
            });
        });
    }
    group.finish();

    let mut group = short_group(c, format!("{flavor}/connect"));
    for shared in &pops {
        group.bench_function(BenchmarkId::from_parameter(shared.n), |b| {
            b.to_async(rt).iter_custom(|iters| async move {
                let mut pop = shared.get().await;
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let conn = pop.connect().await;
                    timed += start.elapsed();
                    pop.log_in(conn).await;
                    let oldest = pop.live.pop_front().expect("a live connection");
                    check_report(&kill(&pop.tree.sup, oldest.id).await);
                    pop.settle().await;
                }
                timed
            });
        });
    }
    group.finish();
    for shared in pops {
        shared.close(rt);
    }
}

/// `List`, `Get` and `Select` with N connections live.
fn bench_query(c: &mut Criterion, rt: &Runtime, flavor: &str, n: usize) {
    let made = Shared::new(rt, n);
    let shared = &made;
    let mut group = c.benchmark_group(format!("{flavor}/query"));
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    group.bench_function(BenchmarkId::new("list", n), |b| {
        b.to_async(rt).iter_custom(|iters| async move {
            let pop = shared.get().await;
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let all = replied(
                    pop.tree
                        .sup
                        .call(|reply| SupervisorMsg::List { reply }, Some(WAIT))
                        .await,
                    "list",
                );
                timed += start.elapsed();
                assert_eq!(all.len(), n);
                drop(all);
            }
            timed
        });
    });

    let mut next = 0;
    group.bench_function(BenchmarkId::new("get", n), |b| {
        b.to_async(rt).iter_custom(|iters| {
            let first = next;
            next += iters as usize;
            async move {
                let pop = shared.get().await;
                let mut timed = Duration::ZERO;
                for i in first..first + iters as usize {
                    let conn = pop.live[i % pop.live.len()].id;
                    let start = Instant::now();
                    let info = get(&pop.tree.sup, conn).await;
                    timed += start.elapsed();
                    assert_eq!(info.expect("a live connection").id, conn);
                }
                timed
            }
        });
    });

    let per_user = n.div_ceil(USERS);
    group.bench_function(BenchmarkId::new("select_user", n), |b| {
        b.to_async(rt).iter_custom(|iters| async move {
            let pop = shared.get().await;
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let filter = Filter {
                    user: Some("user7".into()),
                    ..Filter::default()
                };
                let start = Instant::now();
                let selected = replied(
                    pop.tree
                        .sup
                        .call(|reply| SupervisorMsg::Select { filter, reply }, Some(WAIT))
                        .await,
                    "select",
                );
                timed += start.elapsed();
                assert_eq!(selected.len(), per_user);
                drop(selected);
            }
            timed
        });
    });
    group.finish();
    made.close(rt);
}

/// `KillAll` of N connections, to its reply; a fresh population for every iteration.
fn bench_kill_all(c: &mut Criterion, rt: &Runtime, flavor: &str, ns: &[usize]) {
    let mut group = c.benchmark_group(format!("{flavor}/kill_all"));
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100));
    for &n in ns {
        // Criterion budgets in wall time, the making of each population included: up to about
        // 3.5 ms per connection (at 10,000; admission and login scan every live connection), 10
        // samples of one iteration. Fewer than 10 iterations are never run anyway.
        group.measurement_time(Duration::from_micros(n as u64 * 3_500));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.to_async(rt).iter_custom(|iters| async move {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let pop = Population::new(n).await;
                    let start = Instant::now();
                    let reports = kill_all(&pop.tree.sup).await;
                    timed += start.elapsed();
                    assert_eq!(reports.len(), n);
                    reports.iter().for_each(check_report);
                    pop.tree.sup.stop(None);
                }
                timed
            });
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let (rt, flavor) = runtime();
    let (kill_sizes, query_size, kill_all_sizes) = sizes();
    bench_kill_connect(c, &rt, flavor, &kill_sizes);
    bench_query(c, &rt, flavor, query_size);
    bench_kill_all(c, &rt, flavor, &kill_all_sizes);
}

criterion_group!(tree, benches);
criterion_main!(tree);
