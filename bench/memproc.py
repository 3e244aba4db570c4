#!/usr/bin/env python3
"""Memory per held connection, with a process session or an in-process one (bench/NOTES.md,
"Memory with process sessions"). Run it through bench/memproc.sh, which builds the release
binaries.

Each run starts a fresh server on 127.0.0.1, measures, opens N connections with
`sshvisor-bench hold N --command CMD` (one exec session each), waits until every session's
processes run, measures again and stops everything. Variants (`--variant`, repeatable):

- `serve`: `sshvisor serve` (limits raised in a config file, its default logging to a file),
  each session running `sleep 100000` (`/bin/sh -c`, which forks `sleep`: two processes);
- `embedded-sleep`: `sshvisor-bench embedded-server` (logging off), the same `sleep` sessions;
- `embedded-wait`: `sshvisor-bench embedded-server`, the in-process `@wait` sessions (no
  process, no pipes): against `embedded-sleep`, what a process session adds.

Per connection: the server's PSS and RSS growth; the session processes' own PSS (count and
total); the kernel's growth from /proc/meminfo (system-wide: Slab, its unreclaimable part,
KernelStack, PageTables), with the same fields read across an idle window of the same length
before the hold as a noise figure; descriptors by kind.

`--heaptrack DIR` runs each server under heaptrack instead (data in DIR, one file per run):
figures of PSS are then not the server's own and are left out. The server is killed with
SIGKILL while the connections are held, so heaptrack's "leaked" figure is the heap at the hold
(`heaptrack_print -l`); heaptrack needs the system allocator to see Rust's allocations (the
shipped binaries use mimalloc: build with it removed for this).
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import answers_ssh, descendants, fd_kinds, status_kib, wait_for  # noqa: E402
from run import comm, free_port, machine, median, pss_kib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL_FIELDS = ("Slab", "SUnreclaim", "KernelStack", "PageTables")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            if k in KERNEL_FIELDS:
                out[k] = int(v.split()[0])
    return out


def delta(a, b, n):
    return {k: (b[k] - a[k]) / n for k in KERNEL_FIELDS}


def smaps(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                m = re.match(r"(\w+):\s+(\d+) kB", line)
                if m:
                    out[m.group(1)] = int(m.group(2))
    except OSError:
        pass
    return out


class Server:
    def __init__(self, args, variant, heaptrack_out=None):
        self.args, self.variant = args, variant
        self.dir = tempfile.mkdtemp(prefix="sshvisor-mem-")
        self.state = os.path.join(self.dir, "state")
        self.key = os.path.join(self.state, "client_ed25519")
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.heaptrack_out = heaptrack_out
        self.hold_proc = None

    def start(self):
        bins = self.args.bin_dir
        if self.variant == "serve":
            cfg = os.path.join(self.dir, "mem.toml")
            with open(cfg, "w") as f:
                f.write("[limits]\nmax_connections = 20000\nmax_per_source = 20000\n"
                        "max_per_prefix = 20000\nmax_per_user = 20000\nmax_unauthenticated = 20000\n"
                        # The load comes from 127.0.0.1: penalties would refuse it.
                        "[penalties]\nexempt = [\"127.0.0.0/8\"]\n")
            cmd = [os.path.join(bins, "sshvisor"), "serve", "--listen", self.addr, "--config", cfg,
                   "--state-dir", self.state]
        else:
            cmd = [os.path.join(bins, "sshvisor-bench"), "embedded-server", "--listen", self.addr,
                   "--state-dir", self.state]
        if self.heaptrack_out:
            cmd = ["heaptrack", "-o", self.heaptrack_out] + cmd
        self.log = open(os.path.join(self.dir, "server.log"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

        def up():
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited at start: see {self.log.name}")
            return os.path.exists(self.key) and answers_ssh(self.port)
        wait_for("the server to listen", up, 120)
        # Under heaptrack the server is a child of heaptrack's script.
        self.pid = self.proc.pid
        if self.heaptrack_out:
            self.pid = wait_for("the server under heaptrack", lambda: next(
                (p for p in descendants(self.proc.pid) if comm(p).startswith("sshvisor")), None), 30)

    def command(self):
        return "@wait" if self.variant == "embedded-wait" else "sleep 100000"

    def hold(self, n):
        path = os.path.join(self.dir, "hold.out")
        out = open(path, "w")
        cmd = [os.path.join(self.args.bin_dir, "sshvisor-bench"), "hold", str(n), "--addr",
               self.addr, "--key", self.key, "--command", self.command(), "--parallel", "32",
               "--hold-secs", "3600"]
        self.hold_proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)

        def up():
            with open(path) as f:
                m = re.search(r"^up: (\d+) connections", f.read(), re.M)
            if m:
                return int(m.group(1))
            if self.hold_proc.poll() is not None:
                raise SystemExit(f"hold {n} ended early: see {path}")
            return None
        count = wait_for(f"{n} connections", up, max(300, n / 5))
        if self.variant != "embedded-wait":
            wait_for(f"{count} sleeps", lambda: sum(
                1 for p in descendants(self.pid) if comm(p) == "sleep") >= count, 120)
        return count

    def stop(self, hard=False):
        if self.hold_proc and self.hold_proc.poll() is None:
            self.hold_proc.kill()
            self.hold_proc.wait()
        left = descendants(self.pid) if self.proc.poll() is None else []
        if hard:
            # The heap as held is what heaptrack reports as leaked.
            os.kill(self.pid, signal.SIGKILL)
        else:
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def measure(args, variant, run):
    ht = None
    if args.heaptrack:
        ht = os.path.join(os.path.abspath(args.heaptrack), f"{variant}-{args.n}-{run}")
    s = Server(args, variant, ht)
    s.start()
    try:
        time.sleep(args.settle)
        # Noise: the kernel's figures across an idle window as long as the settle below.
        k_idle0 = meminfo()
        time.sleep(args.settle)
        k0, m0, f0 = meminfo(), smaps(s.pid), fd_kinds(s.pid)
        t0 = time.monotonic()
        up = s.hold(args.n)
        hold_secs = time.monotonic() - t0
        time.sleep(args.settle)
        k1, m1, f1 = meminfo(), smaps(s.pid), fd_kinds(s.pid)
        procs = [p for p in descendants(s.pid)]
        r = {"variant": variant, "n": args.n, "up": up, "run": run,
             "hold_secs": round(hold_secs, 1),
             "kernel_idle_window": {k: k0[k] - k_idle0[k] for k in KERNEL_FIELDS},
             "kernel_per_conn_kib": delta(k0, k1, up),
             "fds_per_conn": {k: (f1.get(k, 0) - f0.get(k, 0)) / up for k in set(f0) | set(f1)},
             "procs_per_conn": len(procs) / up,
             "procs_pss_per_conn_kib": sum(pss_kib(p) for p in procs) / up,
             "procs_rss_per_conn_kib": sum(status_kib(p, "VmRSS") for p in procs) / up}
        if not ht:
            r.update({"pss_per_conn_kib": (m1["Pss"] - m0["Pss"]) / up,
                      "rss_per_conn_kib": (m1["Rss"] - m0["Rss"]) / up,
                      "anon_per_conn_kib": (m1.get("Pss_Anon", 0) - m0.get("Pss_Anon", 0)) / up,
                      "pss_before_kib": m0["Pss"], "pss_after_kib": m1["Pss"]})
        else:
            r["heaptrack"] = ht
    finally:
        s.stop(hard=bool(ht))
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", action="append",
                    choices=["serve", "embedded-sleep", "embedded-wait"])
    ap.add_argument("-n", type=int, default=1000, help="connections (default 1000)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds before each reading")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--heaptrack", metavar="DIR", help="run the servers under heaptrack")
    ap.add_argument("--json", help="append each run's figures to this file")
    args = ap.parse_args()
    variants = args.variant or ["serve", "embedded-sleep", "embedded-wait"]
    if args.heaptrack:
        os.makedirs(args.heaptrack, exist_ok=True)
    log(f"{machine()}; load {os.getloadavg()}")
    results = []
    for run in range(args.runs):
        for v in variants:
            r = measure(args, v, run)
            results.append(r)
            log(json.dumps(r))
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(r) + "\n")
    print(f"\n{args.n} connections, medians of {args.runs} (KiB per connection):")
    print("| variant | server PSS | server RSS | anon PSS | processes | their PSS | Slab | SUnreclaim"
          " | KernelStack | PageTables | fds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda x: "–" if x is None else f"{x:.1f}"  # noqa: E731
    for v in variants:
        rs = [r for r in results if r["variant"] == v]
        k = lambda f: median([r["kernel_per_conn_kib"][f] for r in rs])  # noqa: E731
        print(f"| {v} | {fmt(median([r.get('pss_per_conn_kib') for r in rs]))} | "
              f"{fmt(median([r.get('rss_per_conn_kib') for r in rs]))} | "
              f"{fmt(median([r.get('anon_per_conn_kib') for r in rs]))} | "
              f"{fmt(median([r['procs_per_conn'] for r in rs]))} | "
              f"{fmt(median([r['procs_pss_per_conn_kib'] for r in rs]))} | "
              f"{fmt(k('Slab'))} | {fmt(k('SUnreclaim'))} | {fmt(k('KernelStack'))} | "
              f"{fmt(k('PageTables'))} | {fmt(median([r['fds_per_conn'].get('total') for r in rs]))} |")
    idle = {f: [r["kernel_idle_window"][f] for r in results] for f in KERNEL_FIELDS}
    print("kernel growth across an idle window of the same length, KiB in all (noise): "
          + ", ".join(f"{f} {min(v)}..{max(v)}" for f, v in idle.items()))


if __name__ == "__main__":
    main()
