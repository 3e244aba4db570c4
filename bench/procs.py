#!/usr/bin/env python3
"""Kills of connections whose sessions run real processes, through `sshvisor serve` itself.

Run it through bench/procs.sh, which builds the release binaries. For each size N and each
build under test (SSHVISOR_BIN), three times (each run: a fresh server, fresh connections):

1. `sshvisor serve` on 127.0.0.1 with the limits raised; `sshvisor-bench hold N --command
   "sleep 100000"`: N connections, one exec session each, each running `/bin/sh -c 'sleep
   100000'` (dash runs `sleep` as a child: two processes per session).
2. Memory and descriptors: the server's PSS and RSS before and after, its descriptors by kind
   (/proc/PID/fd) and its epoll registrations (/proc/PID/fdinfo), the sessions' processes' own
   PSS, and the kernel's memory (Slab + KernelStack + PageTables of /proc/meminfo: system-wide,
   so other work on the machine shows in it).
3. Single kills: `sshvisor-bench kill --count K --gap-ms 20` (K = min(--kills, N/2)), oldest
   first, on one persistent control connection: the control round trip and the server's own
   figure (`elapsed_ms`), p50 and p99.
4. Kill-all of everything still live (`kill_all`, one persistent control connection): time to
   the reply, per connection, the server's CPU time meanwhile, processes left after the reply.
5. N connections again, then `drain`: time to the reply.

Every kill-all and drain must reply within the kill grace plus the documented margin
(docs/ARCHITECTURE.md: "bounded by grace + ~1 s": at the grace, the sessions' SIGKILL, 100 ms
for the DISCONNECT, the cut, then 1 s before whatever is left is killed outright): the bound is
printed with whether each run held it.

A size `max` is the largest N the server can hold within its open-files limit (20,000 here),
from the descriptors a process session was measured to cost in an earlier run.

`--profile perf|strace` instead runs each size once with `perf record --call-graph dwarf` (or
`strace -c -f`) attached to the server during the kill-all and prints the top of the profile
(these runs are slowed by the profiler and are not figures).
"""
import argparse
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import children, comm, cpu_steal, free_port, hiccups, machine, median, pct, pss_kib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD_COMMAND = "sleep 100000"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def descendants(pid):
    """Every process below `pid` (through the children lists of all its threads)."""
    out, queue = [], [pid]
    while queue:
        for c in children(queue.pop()):
            out.append(c)
            queue.append(c)
    return out


def status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_secs(pid):
    """User and system CPU time of `pid` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(rest[11]) / tick, int(rest[12]) / tick


def kernel_kib():
    """The kernel's own memory (slab, kernel stacks, page tables), system-wide."""
    want = {"Slab", "KernelStack", "PageTables"}
    total = 0
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            if k in want:
                total += int(v.split()[0])
    return total


def fd_kinds(pid):
    """The descriptors of `pid` by kind, and how many descriptors its epoll instances watch."""
    kinds, instances = {}, set()
    base = f"/proc/{pid}/fd"
    for fd in os.listdir(base):
        try:
            target = os.readlink(f"{base}/{fd}")
        except OSError:
            continue
        if target.startswith("anon_inode:"):
            kind = target[len("anon_inode:"):].strip("[]")
        elif target.startswith(("socket:", "pipe:")):
            kind = target.split(":", 1)[0]
        else:
            kind = "file"
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "eventpoll":
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    # tokio's epoll is there twice (dup'd): one instance, one set of watches.
                    instances.add(frozenset(line.split()[1] for line in f if line.startswith("tfd:")))
            except OSError:
                pass
    kinds["total"] = sum(kinds.values())
    kinds["epoll_watched"] = sum(len(w) for w in instances)
    return kinds


def open_files_limit(pid):
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return 1024


def answers_ssh(port):
    """Whether an SSH server on 127.0.0.1:port sends its banner."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.settimeout(5)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def wait_for(what, cond, secs):
    deadline = time.time() + secs
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


class Build:
    """One sshvisor binary under test."""

    def __init__(self, name, path):
        if os.path.isdir(path):
            path = os.path.join(path, "target", "release", "sshvisor")
        if not os.access(path, os.X_OK):
            raise SystemExit(f"{path}: not an executable (build it: cargo build --release -p sshvisor)")
        self.name, self.path = name, os.path.abspath(path)
        # Descriptors: the server's own at start, and what one process session adds.
        self.base_fds = None
        self.fds_per_session = None


def builds_from_env(default):
    """SSHVISOR_BIN: a binary or a checkout, or several as NAME=PATH,NAME=PATH."""
    spec = os.environ.get("SSHVISOR_BIN") or default
    out = []
    for i, part in enumerate(p for p in spec.split(",") if p):
        name, _, path = part.rpartition("=")
        out.append(Build(name or (f"build{i + 1}" if "," in spec else "sshvisor"), path))
    return out


class Server:
    """One `sshvisor serve` under test, in a directory of its own."""

    def __init__(self, build, args):
        self.build, self.args = build, args
        self.dir = tempfile.mkdtemp(prefix="sshvisor-procs-")
        self.state = os.path.join(self.dir, "state")
        self.control = os.path.join(self.state, "ctl.sock")
        self.key = os.path.join(self.state, "client_ed25519")
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.holds = []
        self.proc = None

    def start(self):
        cfg = os.path.join(self.dir, "procs.toml")
        with open(cfg, "w") as f:
            # The default limits (100 per source address) would refuse most of the load.
            f.write("[limits]\nmax_connections = 20000\nmax_per_source = 20000\n"
                    "max_per_prefix = 20000\nmax_per_user = 20000\nmax_unauthenticated = 20000\n"
                    # The load comes from 127.0.0.1: penalties would refuse it.
                    "[penalties]\nexempt = [\"127.0.0.0/8\"]\n")
        cmd = [self.build.path, "serve", "--listen", self.addr, "--config", cfg, "--state-dir",
               self.state, "--kill-grace", f"{self.args.grace}s"]
        self.err = open(os.path.join(self.dir, "serve.log"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.err, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        def up():
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.build.path} exited at start: see {self.err.name}")
            return os.path.exists(self.control) and answers_ssh(self.port)
        wait_for("the server to listen", up, 60)
        self.pid = self.proc.pid

    def sleeps(self):
        return sum(1 for p in descendants(self.pid) if comm(p) == "sleep")

    def hold(self, n):
        """N held connections with a `sleep` each; returns how many came up."""
        path = os.path.join(self.dir, f"hold-{len(self.holds)}.out")
        out = open(path, "w")
        cmd = [self.args.bench_bin, "hold", str(n), "--addr", self.addr, "--key", self.key,
               "--command", HOLD_COMMAND, "--parallel", "32", "--hold-secs", "3600"]
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.holds.append(p)
        def up():
            with open(path) as f:
                m = re.search(r"^up: (\d+) connections in ([\d.]+) s \((\d+) failed\)", f.read(), re.M)
            if m:
                return m
            if p.poll() is not None:
                raise SystemExit(f"hold {n} ended early: see {path}")
            return None
        m = wait_for(f"{n} connections", up, max(120, n / 20))
        count = int(m.group(1))
        if count < n:
            log(f"  hold {n}: only {count} came up ({m.group(3)} failed): see {path}")
        # Each session's `sleep` runs (the hold is up once the sessions are open).
        try:
            wait_for(f"{count} sleeps", lambda: self.sleeps() >= count, 60)
        except SystemExit:
            log(f"  hold {n}: {self.sleeps()} sleeps of {count} sessions after 60 s; going on")
        return count

    def bench(self, *args, timeout=900):
        cmd = [self.args.bench_bin, *args, "--control", self.control]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr}")
        return p.stdout

    def stop(self):
        for h in self.holds:
            if h.poll() is None:
                h.kill()
            h.wait()
        if self.proc and self.proc.poll() is None:
            left = descendants(self.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            # Whatever the server did not end: ours, by process ID.
            for p in left:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc:
            self.err.close()


def killall(server, drain=False):
    """One kill-all (or drain) on a fresh control connection: its reply, the server's CPU time
    meanwhile, and the processes left just after the reply."""
    u0, s0 = cpu_secs(server.pid)
    t0 = time.monotonic()
    out = server.bench("killall", "--json", *(["--drain"] if drain else []))
    u1, s1 = cpu_secs(server.pid)
    r = json.loads(out.strip().splitlines()[-1])
    left = len(descendants(server.pid))
    # A reply that timed out leaves the kill going: the next step waits until it is done.
    wait_for("the sessions' processes to go", lambda: not descendants(server.pid), 900)
    gone = (time.monotonic() - t0) * 1000
    if r.get("error"):
        log(f"  {'drain' if drain else 'kill-all'} of {r['live']} answered {r['error']!r} "
            f"after {r['ms']:.0f} ms; all processes gone after {gone:.0f} ms")
    return {"live": r["live"], "killed": r.get("killed"), "ms": r["ms"], "error": r.get("error"),
            "cpu_user_s": u1 - u0, "cpu_sys_s": s1 - s0, "left": left, "gone_ms": gone}


def measure(build, n, args, repeat, profile=None):
    server = Server(build, args)
    server.start()
    settle = 0.2 if args.smoke else 1.0
    try:
        time.sleep(settle)
        fds0, pss0, rss0, k0 = fd_kinds(server.pid), pss_kib(server.pid), status_kib(server.pid, "VmRSS"), kernel_kib()
        limit = open_files_limit(server.pid)
        up = server.hold(n)
        time.sleep(settle)
        fds1, pss1, rss1, k1 = fd_kinds(server.pid), pss_kib(server.pid), status_kib(server.pid, "VmRSS"), kernel_kib()
        procs = descendants(server.pid)
        r = {"build": build.name, "n": n, "repeat": repeat, "up": up, "open_files_limit": limit,
             "fds_before": fds0, "fds_after": fds1,
             "fds_per_session": {k: (fds1.get(k, 0) - fds0.get(k, 0)) / up for k in set(fds0) | set(fds1)},
             "pss_per_conn_kib": (pss1 - pss0) / up, "rss_per_conn_kib": (rss1 - rss0) / up,
             "procs_per_session": len(procs) / up,
             "procs_pss_per_session_kib": sum(pss_kib(p) for p in procs) / up,
             "kernel_per_session_kib": (k1 - k0) / up}
        build.base_fds = fds0["total"]
        build.fds_per_session = r["fds_per_session"]["total"]
        kills = min(args.kills, up // 2)
        out = server.bench("kill", "--count", str(kills), "--gap-ms", "20")
        rtt, inproc = [], []
        for line in out.splitlines():
            m = re.match(r"kill: \d+ sent_unix_us \d+ rtt_us (\d+) inproc_us (\S+)", line)
            if m:
                rtt.append(int(m.group(1)) / 1000)
                if m.group(2) != "-":
                    inproc.append(float(m.group(2)) / 1000)
        r.update({"kills": len(rtt), "kill_live": up, "rtt_p50": pct(rtt, .5), "rtt_p99": pct(rtt, .99),
                  "inproc_p50": pct(inproc, .5), "inproc_p99": pct(inproc, .99)})
        wait_for("the killed sessions' processes to go", lambda: server.sleeps() <= up - len(rtt), 60)
        attached = start_profiler(profile, server, n, args)
        r["killall"] = killall(server)
        stop_profiler(attached, r)
        if profile:
            return r
        for h in server.holds:
            h.kill()
            h.wait()
        server.holds.clear()
        again = server.hold(n)
        r["drain"] = killall(server, drain=True)
        r["drain"]["held"] = again
        return r
    finally:
        server.stop()


def start_profiler(profile, server, n, args):
    if not profile:
        return None
    os.makedirs(args.profile_dir, exist_ok=True)
    base = os.path.join(args.profile_dir, f"{profile}-{server.build.name}-{n}")
    if profile == "perf":
        cmd = ["perf", "record", "--call-graph", "dwarf,16384", "-F", "250", "-p", str(server.pid),
               "-o", base + ".data"]
    else:
        cmd = ["strace", "-c", "-f", "-p", str(server.pid), "-o", base + ".txt"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)  # attached to every thread before the kill-all starts
    return p, profile, base


def stop_profiler(attached, r):
    if not attached:
        return
    p, profile, base = attached
    p.send_signal(signal.SIGINT)
    p.wait()
    r["profile"] = base + (".data" if profile == "perf" else ".txt")


def perf_top(path, lines=25):
    """The functions of sshvisor (and what they call into) by inclusive share of samples."""
    p = subprocess.run(["perf", "report", "-i", path, "--children", "--stdio", "--sort", "sym",
                        "-g", "none"], capture_output=True, text=True)
    out = []
    for line in p.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+([\d.]+)%\s+\[(.)\]\s+(.*)", line)
        if m and float(m.group(1)) >= 0.5:
            out.append((float(m.group(1)), float(m.group(2)), m.group(3), m.group(4)))
    ours = [o for o in out if o[2] == "." and re.search(r"sshvisor|ractor|russh", o[3])][:lines]
    kernel = sorted([o for o in out if o[2] == "k"], key=lambda o: -o[1])[:10]
    return ours, kernel


def fmt(x, digits=2):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def resolve_size(s, builds):
    if s != "max":
        return int(s)
    known = [b for b in builds if b.fds_per_session]
    if not known:
        raise SystemExit("`max` needs a smaller size first (to count what a session costs)")
    # Room for the control connections, the listener and the log files.
    reserve = 64
    return min(int((20000 - b.base_fds - reserve) // b.fds_per_session) for b in known)


def report(args, builds, sized, started, finished, probes, steal):
    bound = args.grace + args.margin
    L = []
    L.append(f"# Process sessions through `sshvisor serve`\n")
    L.append(f"`bench/procs.sh{' ' + ' '.join(args.argv) if args.argv else ''}` on {started:%Y-%m-%d} "
             f"({started:%H:%M}–{finished:%H:%M} UTC), {machine()}. Medians over the runs "
             f"of each row (each run a fresh server and fresh connections; {args.repeats} per size "
             f"unless the row says), the builds in turn run by run.")
    L.append(f"Builds: " + ", ".join(f"**{b.name}** `{b.path}`" for b in builds) + ".")
    L.append(f"Machine stillness: a thread sleeping 1 ms at a time was held up > 1 ms "
             f"{probes[0]['per_s']:.1f}/s before (worst {probes[0]['worst_ms']:.1f} ms) and "
             f"{probes[-1]['per_s']:.1f}/s after (worst {probes[-1]['worst_ms']:.1f} ms); "
             f"steal {steal * 100:.1f} % of CPU time during the run; load average at the end "
             f"{os.getloadavg()[0]:.2f}.\n")
    L.append(f"Kill grace {args.grace:g} s; every kill-all and drain must reply within "
             f"{bound:g} s (grace + {args.margin:g} s: docs/ARCHITECTURE.md).\n")
    L.append("## Kills\n")
    L.append("| build | live | runs | single kills | rtt p50 | p99 | in-process p50 | p99 | kill-all of | ms | ms per conn | "
             "server CPU ms per conn | processes gone, ms | drain of | ms | within bound |")
    L.append("|" + "---|" * 16)
    for (name, n), runs in sized.items():
        ka = [r["killall"] for r in runs]
        dr = [r["drain"] for r in runs if "drain" in r]
        held = sum(1 for x in ka + dr if x["ms"] <= bound * 1000 and not x.get("error"))
        errors = sum(1 for x in ka + dr if x.get("error"))
        per = median([x["ms"] / max(x["killed"] or x["live"], 1) for x in ka])
        cpu = median([(x["cpu_user_s"] + x["cpu_sys_s"]) * 1000 / max(x["killed"] or x["live"], 1) for x in ka])
        L.append(f"| {name} | {n:,} | {len(runs)} | {fmt(median([r['kills'] for r in runs]), 0)} | "
                 f"{fmt(median([r['rtt_p50'] for r in runs]), 3)} | {fmt(median([r['rtt_p99'] for r in runs]), 3)} | "
                 f"{fmt(median([r['inproc_p50'] for r in runs]), 3)} | {fmt(median([r['inproc_p99'] for r in runs]), 3)} | "
                 f"{fmt(median([x['killed'] or x['live'] for x in ka]), 0)} | {fmt(median([x['ms'] for x in ka]), 0)} | "
                 f"{fmt(per, 3)} | {fmt(cpu, 3)} | {fmt(median([x.get('gone_ms') for x in ka]), 0)} | "
                 f"{fmt(median([x['killed'] or x['live'] for x in dr]), 0)} | {fmt(median([x['ms'] for x in dr]), 0)} | "
                 f"{held}/{len(ka) + len(dr)}" + (f" ({errors} errors)" if errors else "") + " |")
    L.append("")
    L.append("Each run's kill-all and drain, ms: " + "; ".join(
        f"{name} {n:,}: " + ", ".join(f"{r['killall']['ms']:.0f}" + (f"/{r['drain']['ms']:.0f}" if 'drain' in r else '')
                                      for r in runs)
        for (name, n), runs in sized.items()) + " (kill-all/drain).\n")
    L.append("## Memory and descriptors per connection with a process session\n")
    L.append("Server PSS and RSS with N held minus before, over N; the session's processes "
             "(`sh -c` and its `sleep`) counted apart; the kernel's slab, kernel stacks and page "
             "tables (system-wide: noisy) over N. KiB. Descriptors the server holds per session, "
             "by kind, and its epoll registrations.\n")
    L.append("| build | live | server PSS | server RSS | session processes (count) | their PSS | kernel | fds | socket | pipe | pidfd | epoll watched |")
    L.append("|" + "---|" * 12)
    for (name, n), runs in sized.items():
        f = lambda k: median([r["fds_per_session"].get(k, 0) for r in runs])
        L.append(f"| {name} | {n:,} | {fmt(median([r['pss_per_conn_kib'] for r in runs]), 1)} | "
                 f"{fmt(median([r['rss_per_conn_kib'] for r in runs]), 1)} | "
                 f"{fmt(median([r['procs_per_session'] for r in runs]), 2)} | "
                 f"{fmt(median([r['procs_pss_per_session_kib'] for r in runs]), 1)} | "
                 f"{fmt(median([r['kernel_per_session_kib'] for r in runs]), 1)} | "
                 f"{fmt(f('total'), 2)} | {fmt(f('socket'), 2)} | {fmt(f('pipe'), 2)} | {fmt(f('pidfd'), 2)} | "
                 f"{fmt(f('epoll_watched'), 2)} |")
    L.append("")
    for b in builds:
        if b.fds_per_session:
            L.append(f"{b.name}: {b.base_fds} descriptors at start, {b.fds_per_session:.2f} per process "
                     f"session: within 20,000 the server holds {resolve_size('max', [b]):,} "
                     f"(64 kept for the control socket and logs).")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sizes", nargs="*", default=["250", "500", "1000", "2000", "max"])
    ap.add_argument("--smoke", action="store_true", help="a few seconds: 20 connections, one run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kills", type=int, default=300, help="single kills per run (at most N/2)")
    ap.add_argument("--grace", type=float, default=5.0, help="the server's kill grace, s")
    ap.add_argument("--margin", type=float, default=3.0,
                    help="the documented margin over the grace, s (docs/ARCHITECTURE.md: "
                         "GIVE_UP_MARGIN twice)")
    ap.add_argument("--profile", choices=["perf", "strace"],
                    help="one profiled run per size instead of the figures")
    ap.add_argument("--profile-dir", default=os.path.join(tempfile.gettempdir(), "sshvisor-procs-profile"))
    ap.add_argument("--bench-bin", default=os.path.join(ROOT, "target", "release", "sshvisor-bench"))
    ap.add_argument("--sshvisor-bin", default=os.path.join(ROOT, "target", "release", "sshvisor"),
                    help="the build when SSHVISOR_BIN is not set")
    ap.add_argument("--max-repeats", type=int,
                    help="runs of the size `max` (default --repeats; the current code's kill-all "
                         "there takes minutes)")
    ap.add_argument("--json", help="raw figures to this file, rewritten after every run")
    ap.add_argument("--out", help="the report to this file too (bench/PROCS.md is what "
                    "docs/BENCHMARKS.md includes)")
    ap.add_argument("--append", action="store_true",
                    help="keep the runs already in --json (and report them with the new ones)")
    args = ap.parse_args()
    args.argv = sys.argv[1:]
    if args.smoke:
        args.sizes, args.repeats, args.kills = ["20"], 1, 5
    builds = builds_from_env(args.sshvisor_bin)
    started = datetime.datetime.now(datetime.timezone.utc)
    probes = [hiccups(2 if args.smoke else 10)]
    steal0 = cpu_steal()
    sized = {}
    if args.append and args.json and os.path.exists(args.json):
        with open(args.json) as f:
            for runs in json.load(f)["sized"].values():
                for r in runs:
                    sized.setdefault((r["build"], r["n"]), []).append(r)
                    for b in builds:
                        if b.name == r["build"]:
                            b.base_fds = r["fds_before"]["total"]
                            b.fds_per_session = r["fds_per_session"]["total"]
    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"sized": {f"{k[0]}@{k[1]}": v for k, v in sized.items()}}, f, indent=1)
    for s in args.sizes:
        n = resolve_size(s, builds)
        repeats = args.repeats if s != "max" or args.max_repeats is None else args.max_repeats
        for i in range(1 if args.profile else repeats):
            for b in builds:
                r = measure(b, n, args, i + 1, args.profile)
                log(f"  {b.name} n={n} #{i + 1}: kill-all {r['killall']['ms']:.0f} ms, "
                    f"drain {r['drain']['ms'] if 'drain' in r else float('nan'):.0f} ms, "
                    f"kills p50 {r['rtt_p50']} p99 {r['rtt_p99']}, PSS {r['pss_per_conn_kib']:.1f} KiB/conn")
                sized.setdefault((b.name, n), []).append(r)
                save()
    steal1 = cpu_steal()
    probes.append(hiccups(2 if args.smoke else 10))
    steal = (steal1[0] - steal0[0]) / max(1, steal1[1] - steal0[1])
    finished = datetime.datetime.now(datetime.timezone.utc)
    save()
    text = report(args, builds, sized, started, finished, probes, steal)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if args.profile == "perf":
        for (name, n), runs in sized.items():
            ours, kernel = perf_top(runs[0]["profile"])
            ka = runs[0]["killall"]
            print(f"## perf, {name}, kill-all of {ka['killed'] or ka['live']} in {ka['ms']:.0f} ms "
                  f"(CPU user {ka['cpu_user_s']:.2f} s, system {ka['cpu_sys_s']:.2f} s): {runs[0]['profile']}\n")
            print("| inclusive % | self % | function |\n|---|---|---|")
            for total, own, _, sym in ours:
                print(f"| {total:.1f} | {own:.1f} | `{sym[:110]}` |")
            print("\nKernel, by self %: " + ", ".join(f"{sym} {own:.1f}" for _, own, _, sym in kernel) + "\n")
    elif args.profile == "strace":
        for (name, n), runs in sized.items():
            print(f"## strace -c -f, {name}, kill-all of {runs[0]['killall']['live']}: {runs[0]['profile']}\n")
            with open(runs[0]["profile"]) as f:
                print("```\n" + "".join(f.readlines()[:22]) + "```\n")


if __name__ == "__main__":
    main()
