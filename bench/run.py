#!/usr/bin/env python3
"""Side-by-side benchmark of sshvisor and its peers; writes docs/BENCHMARKS.md and a plot.

Run it through bench/run.sh, which installs the peers and builds the release binaries. Every
server is started here on 127.0.0.1, loaded with `sshvisor-bench`, measured, and stopped:

- sshvisor: `sshvisor-bench embedded-server` (sshvisor as a library, in-process `@wait`)
- bare: `sshvisor-bench bare-server` (plain russh, same config/auth/exec; no kill: no map)
- asyncssh: bench/peers/asyncssh_server.py (the dict-of-connections recipe)
- otp: bench/peers/otp_server.sh (Erlang/OTP ssh:daemon, parallel_login on)
- sshd: bench/peers/sshd.sh (OpenSSH, run by hand; kill = SIGTERM to the connection's process)

Figures: kill latency at each size (in-process for sshvisor, the control round trip for every
server, and when the client sees the disconnect), kill-all, PSS per held connection, the
handshake rate (churn) at 1/8/64 parallel clients, and sshvisor's state after a long churn.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(ROOT, "bench", "peers")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = max(0, min(len(xs) - 1, int(round(p * len(xs) + 0.5)) - 1))
    return xs[k]


def children(pid):
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Server:
    """One server under test: how to start it, which processes are it, how to kill through it."""

    def __init__(self, name, run):
        self.name, self.run = name, run
        self.proc = None
        self.dir = tempfile.mkdtemp(prefix=f"bench-{name}-")
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.control = os.path.join(self.dir, "ctl.sock")
        self.user = "bench"
        self.hold_command = "@wait"
        self.proto = {"sshvisor": "sshvisor", "asyncssh": "line", "otp": "line",
                      "sshd": "sshd"}.get(name)

    def start(self):
        r = self.run
        if self.name == "sshvisor":
            self.control = os.path.join(self.dir, "state", "ctl.sock")
            cmd = [r.bench, "embedded-server", "--listen", self.addr, "--state-dir",
                   os.path.join(self.dir, "state"), "--authorized-keys", r.authorized]
        elif self.name == "bare":
            cmd = [r.bench, "bare-server", "--listen", self.addr, "--host-key", r.host_key,
                   "--authorized-keys", r.authorized]
        elif self.name == "asyncssh":
            cmd = [sys.executable, os.path.join(PEERS, "asyncssh_server.py"), "--listen", self.addr,
                   "--host-key", r.host_key, "--authorized-keys", r.authorized,
                   "--control", self.control]
        elif self.name == "otp":
            os.environ["OTP_PEER_DIR"] = os.path.join(self.dir, "otp")
            cmd = [os.path.join(PEERS, "otp_server.sh"), "--listen", self.addr, "--host-key",
                   r.host_key, "--authorized-keys", r.authorized, "--control", self.control,
                   "--parallel-login"]
        elif self.name == "sshd":
            cmd = [os.path.join(PEERS, "sshd.sh"), "--listen", self.addr, "--host-key", r.host_key,
                   "--authorized-keys", r.authorized, "--dir", self.dir]
            self.user = r.sshd_user
            # sshd runs every command through the user's shell: a process per session.
            self.hold_command = "sleep 100000"
        else:
            raise SystemExit(f"unknown server {self.name}")
        self.out = open(os.path.join(self.dir, "server.log"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited at start: see {self.out.name}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.settimeout(5)
                    if s.recv(4).startswith(b"SSH-"):
                        break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"{self.name} did not start listening")
        if self.proto in ("sshvisor", "line"):
            while not os.path.exists(self.control) and time.time() < deadline:
                time.sleep(0.05)
        time.sleep(0.5)

    def server_pids(self):
        """The processes that are the server (not the commands its sessions run)."""
        pid = self.proc.pid
        if self.name == "otp":
            return [pid] + [c for c in children(pid) if comm(c) == "erl_child_setup"]
        if self.name == "sshd":
            out, queue = [pid], [pid]
            while queue:
                for c in children(queue.pop()):
                    if comm(c) == "sshd":
                        out.append(c)
                        queue.append(c)
            return out
        return [pid]

    def pss(self):
        return sum(pss_kib(p) for p in self.server_pids())

    def target(self):
        if self.proto == "sshd":
            return ["--proto", "sshd", "--pid", str(self.proc.pid)]
        return ["--control", self.control, "--proto", self.proto]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        # Peers leave their sessions' processes behind on purpose (their kill semantics).
        subprocess.run(["pkill", "-KILL", "-f", "^(sh -c )?sleep 100000$"], check=False)
        subprocess.run(["pkill", "-KILL", "-f", "^bash -c sleep 100000$"], check=False)
        self.out.close()


class Run:
    def __init__(self, args):
        self.args = args
        self.bench = args.bench_bin
        # The machine's own hold-ups (before and after) and the CPU steal during the run.
        self.hiccups = []
        self.steal = 0.0
        self.work = tempfile.mkdtemp(prefix="sshvisor-bench-")
        # sshd reads authorized_keys as the logged-in user.
        os.chmod(self.work, 0o755)
        self.key = os.path.join(self.work, "client_ed25519")
        self.host_key = os.path.join(self.work, "host_ed25519")
        for path in (self.key, self.host_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
        self.authorized = os.path.join(self.work, "authorized_keys")
        shutil.copy(self.key + ".pub", self.authorized)
        os.chmod(self.authorized, 0o644)
        self.sshd_user = args.sshd_user
        self.results = {}
        self.commands = []

    def sh(self, cmd, timeout=None, check=True):
        self.commands.append(" ".join(cmd))
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr}")
        return p

    def hold(self, server, n):
        """Starts `hold n`; returns the process and its output file once all are up."""
        path = os.path.join(server.dir, f"hold-{n}.out")
        out = open(path, "w")
        cmd = [self.bench, "hold", str(n), "--addr", server.addr, "--key", self.key,
               "--user", server.user, "--command", server.hold_command, "--parallel", "32",
               "--hold-secs", "3600"]
        self.commands.append(" ".join(cmd))
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + max(120, n / 20)
        while time.time() < deadline:
            with open(path) as f:
                m = re.search(r"^up: (\d+) connections in ([\d.]+) s \((\d+) failed\)", f.read(), re.M)
            if m:
                if int(m.group(1)) == 0:
                    p.kill()
                    raise SystemExit(f"hold {n} against {server.name}: nothing came up: see {path}")
                return p, path, int(m.group(1)), int(m.group(3)), float(m.group(2))
            if p.poll() is not None:
                break
            time.sleep(0.2)
        p.kill()
        raise SystemExit(f"hold {n} against {server.name} did not come up: see {path}")

    def measure_size(self, name, n, repeat):
        server = Server(name, self)
        server.start()
        settle = 0.2 if self.args.smoke else 1
        try:
            time.sleep(settle)
            pss0 = server.pss()
            hold, path, up, failed, up_s = self.hold(server, n)
            time.sleep(3 * settle)
            pss1 = server.pss()
            r = {"n": n, "up": up, "failed": failed, "up_s": up_s,
                 "pss_per_conn_kib": (pss1 - pss0) / max(up, 1)}
            if server.proto:
                k = min(self.args.kills, up // 2)
                p = self.sh([self.bench, "kill", *server.target(), "--count", str(k),
                             "--gap-ms", "20"], timeout=600)
                sent, rtt, inproc = [], [], []
                for line in p.stdout.splitlines():
                    m = re.match(r"kill: \d+ sent_unix_us (\d+) rtt_us (\d+) inproc_us (\S+)", line)
                    if m:
                        sent.append(int(m.group(1)))
                        rtt.append(int(m.group(2)) / 1000)
                        if m.group(3) != "-":
                            inproc.append(float(m.group(3)) / 1000)
                time.sleep(settle)
                with open(path) as f:
                    ended = [int(x) for x in re.findall(r"^ended: \d+ at [\d.]+ unix_us (\d+)", f.read(), re.M)]
                seen = [(e - s) / 1000 for s, e in zip(sent, ended[: len(sent)])]
                r.update({
                    "kills": len(rtt),
                    "rtt_p50": pct(rtt, .5), "rtt_p99": pct(rtt, .99),
                    "inproc_p50": pct(inproc, .5), "inproc_p99": pct(inproc, .99),
                    "seen_p50": pct(seen, .5), "seen_p99": pct(seen, .99),
                })
                live = up - len(rtt)
                p = self.sh([self.bench, "killall", *server.target()], timeout=900)
                m = re.search(r"killall: (\d+) connections in ([\d.]+) ms", p.stdout)
                if m:
                    r.update({"killall_n": int(m.group(1)), "killall_ms": float(m.group(2))})
                r["killall_live"] = live
            hold.kill()
            hold.wait()
            log(f"  {name} n={n} #{repeat}: {json.dumps(r)}")
            return r
        finally:
            server.stop()

    def churn(self, name, parallel, secs):
        server = Server(name, self)
        server.start()
        try:
            p = self.sh([self.bench, "churn", "--addr", server.addr, "--key", self.key, "--user",
                         server.user, "--parallel", str(parallel), "--duration", str(secs)],
                        timeout=secs + 120)
            m = re.search(r"= ([\d.]+)/s \((\d+) failed\)", p.stdout)
            rate, failed = (float(m.group(1)), int(m.group(2))) if m else (None, None)
            log(f"  churn {name} parallel {parallel}: {p.stdout.strip()}")
            return {"rate": rate, "failed": failed, "cpu": None}
        finally:
            server.stop()

    def long_churn(self, total, parallel):
        """sshvisor after `total` connections: PSS, fds, actors and map size against the start."""
        server = Server("sshvisor", self)
        server.start()
        try:
            def stats():
                s = socket.socket(socket.AF_UNIX)
                s.connect(server.control)
                s.sendall(b'{"id":1,"cmd":"stats"}\n')
                data = b""
                while not data.endswith(b"\n"):
                    data += s.recv(65536)
                s.close()
                return json.loads(data)["result"]
            # One connection first, so that lazily made things exist at the baseline.
            self.sh([self.bench, "churn", "--addr", server.addr, "--key", self.key, "--parallel", "1",
                     "--duration", "1"])
            time.sleep(1)
            before = stats()
            done, t0 = 0, time.time()
            while done < total:
                p = self.sh([self.bench, "churn", "--addr", server.addr, "--key", self.key,
                             "--parallel", str(parallel), "--duration", "20"], timeout=300)
                m = re.search(r"churn: parallel \d+, (\d+) handshakes", p.stdout)
                done += int(m.group(1)) if m else 0
                log(f"  long churn: {done}/{total}")
            secs = time.time() - t0
            time.sleep(3)
            after = stats()
            return {"total": done, "secs": secs, "before": before, "after": after}
        finally:
            server.stop()


def machine():
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) / 1024 / 1024
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Linux {platform.release()}"


def hiccups(secs):
    """How often this machine stops a thread that only sleeps: 1 ms sleeps for `secs` seconds,
    nothing else of the benchmark running. Each overshoot over 1 ms is time the thread was ready
    but did not run (preempted, or its virtual CPU descheduled by the hypervisor); a kill that
    meets one waits for it, so these bound what a p99 can read here."""
    over, end = [], time.monotonic() + secs
    last = time.perf_counter()
    while time.monotonic() < end:
        time.sleep(0.001)
        now = time.perf_counter()
        if now - last > 0.002:
            over.append((now - last - 0.001) * 1e3)
        last = now
    return {"secs": secs, "per_s": len(over) / secs, "worst_ms": max(over, default=0.0)}


def cpu_steal():
    """(stolen, total) jiffies of every CPU since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return fields[7], sum(fields)


def versions():
    out = {}
    def first(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except Exception:
            return None
    out["asyncssh"] = first([sys.executable, "-c", "import asyncssh; print('asyncssh', asyncssh.__version__)"])
    out["otp"] = first(["erl", "-noshell", "-eval",
                        'io:format("OTP ~s, ssh ~s~n", [erlang:system_info(otp_release), element(3, lists:keyfind(ssh, 1, begin application:load(ssh), application:loaded_applications() end))]), halt().'])
    out["sshd"] = first(["/usr/sbin/sshd", "-V"]) or first(["ssh", "-V"])
    out["python"] = platform.python_version()
    return out


def fmt(x, digits=2):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def ratio(x, base):
    if x is None or base in (None, 0):
        return "–"
    return f"{x / base:.1f}×"


def svg_plot(path, series_by_panel, titles, ylabels):
    """Two panels side by side: a metric against live connections (log x) per server."""
    W, H, M = 460, 300, 55
    colors = {"sshvisor": "#d62728", "bare": "#7f7f7f", "asyncssh": "#1f77b4", "otp": "#2ca02c",
              "sshd": "#9467bd"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H + 40}" '
             f'font-family="sans-serif" font-size="11">', '<rect width="100%" height="100%" fill="white"/>']
    import math
    for i, series in enumerate(series_by_panel):
        x0 = i * W
        pts = [(n, v) for s in series.values() for n, v in s if v is not None]
        if not pts:
            continue
        xs = [math.log10(n) for n, _ in pts]
        xmin, xmax = min(xs), max(xs)
        if xmax == xmin:
            xmax = xmin + 1
        ymax = max(v for _, v in pts) * 1.1 or 1
        X = lambda n: x0 + M + (math.log10(n) - xmin) / (xmax - xmin) * (W - 2 * M)
        Y = lambda v: H - M + 20 - v / ymax * (H - 2 * M)
        parts.append(f'<text x="{x0 + W / 2}" y="16" text-anchor="middle" font-size="13">{titles[i]}</text>')
        parts.append(f'<line x1="{x0 + M}" y1="{Y(0)}" x2="{x0 + W - M}" y2="{Y(0)}" stroke="black"/>')
        parts.append(f'<line x1="{x0 + M}" y1="{Y(0)}" x2="{x0 + M}" y2="{Y(ymax)}" stroke="black"/>')
        for k in range(5):
            v = ymax * k / 4
            parts.append(f'<text x="{x0 + M - 4}" y="{Y(v) + 4}" text-anchor="end">{v:.3g}</text>')
        for n in sorted({n for n, _ in pts}):
            parts.append(f'<text x="{X(n)}" y="{Y(0) + 14}" text-anchor="middle">{n:,}</text>')
        parts.append(f'<text x="{x0 + W / 2}" y="{H + 8}" text-anchor="middle">live connections</text>')
        parts.append(f'<text x="{x0 + 14}" y="{Y(ymax / 2)}" transform="rotate(-90 {x0 + 14} {Y(ymax / 2)})" '
                     f'text-anchor="middle">{ylabels[i]}</text>')
        for j, (name, s) in enumerate(series.items()):
            s = [(n, v) for n, v in s if v is not None]
            if not s:
                continue
            c = colors.get(name, "black")
            parts.append('<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>'.format(
                c, " ".join(f"{X(n):.1f},{Y(v):.1f}" for n, v in s)))
            for n, v in s:
                parts.append(f'<circle cx="{X(n):.1f}" cy="{Y(v):.1f}" r="3" fill="{c}"/>')
            parts.append(f'<text x="{x0 + W - M - 60}" y="{40 + 14 * j}" fill="{c}">{name}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few seconds: tiny sizes, no long churn")
    ap.add_argument("--servers", default="sshvisor,bare,asyncssh,otp,sshd")
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--sshd-max", type=int, default=1000,
                    help="largest size for sshd (a process per connection: memory)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kills", type=int, default=100, help="kills timed per run")
    ap.add_argument("--churn-parallel", default="1,8,64")
    ap.add_argument("--churn-secs", type=int, default=10)
    ap.add_argument("--long-churn", type=int, default=100000)
    ap.add_argument("--sshd-user", default=os.environ.get("USER", "root"))
    ap.add_argument("--bench-bin", default=os.path.join(ROOT, "target", "release", "sshvisor-bench"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    ap.add_argument("--command-line", default="bench/run.sh")
    args = ap.parse_args()
    if args.smoke:
        args.sizes, args.repeats, args.kills = "10", 1, 4
        args.churn_parallel, args.churn_secs, args.long_churn = "2", 1, 0
    servers = [s for s in args.servers.split(",") if s]
    sizes = [int(x) for x in args.sizes.split(",")]
    run = Run(args)
    started = datetime.datetime.now(datetime.timezone.utc)
    probe_secs = 2 if args.smoke else 10
    run.hiccups = [hiccups(probe_secs)]
    steal0 = cpu_steal()
    sized = {}
    for n in sizes:
        for name in servers:
            if name == "sshd" and n > args.sshd_max:
                continue
            runs = [run.measure_size(name, n, i + 1) for i in range(args.repeats)]
            sized[(name, n)] = runs
    churned = {}
    for c in [int(x) for x in args.churn_parallel.split(",")]:
        # Round by round, every server in turn: the machine's speed drifts, and a server's
        # rounds in a row would carry that drift into its ratio.
        for _ in range(args.repeats):
            for name in servers:
                churned.setdefault((name, c), []).append(run.churn(name, c, args.churn_secs))
    long = run.long_churn(args.long_churn, 64) if args.long_churn and "sshvisor" in servers else None
    steal1 = cpu_steal()
    run.steal = (steal1[0] - steal0[0]) / max(1, steal1[1] - steal0[1])
    run.hiccups.append(hiccups(probe_secs))
    finished = datetime.datetime.now(datetime.timezone.utc)
    raw = {"sized": {f"{k[0]}@{k[1]}": v for k, v in sized.items()},
           "churn": {f"{k[0]}@{k[1]}": v for k, v in churned.items()}, "long": long,
           "machine": {"hiccups": run.hiccups, "steal": run.steal}}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(raw, f, indent=1)
    write_report(args, run, servers, sizes, sized, churned, long, started, finished)


def killall_per_conn(runs):
    """The median kill-all time per connection over `runs`, in µs (None without any)."""
    if not runs:
        return None
    return median([r["killall_ms"] * 1000 / max(r["killall_n"], 1) for r in runs if "killall_ms" in r])


def med(runs, key):
    return median([r.get(key) for r in runs])


def write_report(args, run, servers, sizes, sized, churned, long, started, finished):
    out = args.out
    plot = os.path.splitext(out)[0] + ".svg"
    v = versions()
    L = []
    L.append("# Benchmarks\n")
    L.append(f"Measured by `{args.command_line}` on {started:%Y-%m-%d} "
             f"({started:%H:%M}–{finished:%H:%M} UTC), in one run, on one machine: {machine()}. "
             "The machine is shared and noisy: read medians and ratios. Every figure is the median "
             f"over {args.repeats} runs (each run: a fresh server, fresh connections).\n")
    h = run.hiccups
    L.append("How still the machine holds: a thread that only sleeps 1 ms at a time, with nothing "
             f"of the benchmark running, was held up by more than 1 ms {h[0]['per_s']:.1f} times "
             f"per second before the run (worst {h[0]['worst_ms']:.1f} ms) and "
             f"{h[-1]['per_s']:.1f} after it (worst {h[-1]['worst_ms']:.1f} ms); the hypervisor "
             f"took {run.steal * 100:.1f} % of the CPU time during the run (steal). A kill that "
             "meets such a hold-up waits for it: they decide the p99s of 100 kills.\n")
    L.append("Servers, all on 127.0.0.1, all loaded by the same client (`sshvisor-bench`: russh, "
             "nodelay, ed25519 public key, one exec session per connection). The client that "
             "holds the connections (`hold`) runs on one thread, like the one Python client of "
             "the issue's reference figures, so it never takes both cores from the server it "
             "measures; `churn` runs on both:\n")
    L.append("- **sshvisor**: `sshvisor-bench embedded-server`, sshvisor as a library with the "
             "in-process command `@wait` (no process per session: 10,000 sessions with a process "
             "each need 40,000–50,000 descriptors, above this machine's 20,000 per process). "
             "Logging off.")
    L.append("- **bare**: `sshvisor-bench bare-server`, bare russh with sshvisor's russh "
             "configuration, auth and exec, no actors, no map: the floor. It cannot kill.")
    L.append(f"- **asyncssh**: `bench/peers/asyncssh_server.py` ({v.get('asyncssh')}, Python "
             f"{v.get('python')}): the dict-of-connections recipe, kill = `conn.close()` + "
             "`await conn.wait_closed()`, `@wait` in-process.")
    L.append(f"- **otp**: `bench/peers/otp_server.sh` ({v.get('otp')}): `ssh:daemon` with "
             "`parallel_login`, connections registered by `connectfun`, kill = `ssh:close/1`, "
             "answered when the connection process is down; `@wait` in-process.")
    L.append(f"- **sshd**: `bench/peers/sshd.sh` ({v.get('sshd')}), run by hand, logging in user "
             f"`{run.sshd_user}`; kill = SIGTERM to the connection's process. sshd runs every "
             "command through the user's shell, so its held sessions run `sleep 100000` (a process "
             f"each, not counted in its memory); measured up to {args.sshd_max:,} connections.\n")
    L.append("Peer kills do not end their sessions' processes (the recipes' real behaviour); "
             "sshvisor's do, and answer only once they are gone.\n")
    L.append(f"![kill latency and memory against live connections]({os.path.basename(plot)})\n")

    def base(name, n, key):
        runs = sized.get((name, n))
        return med(runs, key) if runs else None

    L.append("## 1. Kill latency\n")
    L.append("One connection at a time, oldest first, "
             f"{args.kills} per run, 20 ms apart, on one persistent control connection. "
             "*In-process*: the supervisor's `Kill` message to its reply (`KillReport.elapsed`). "
             "*Control*: the control-socket round trip (request written to reply read), for sshd "
             "SIGTERM to the process until its pidfd says it exited. *Client sees*: from the "
             "request to the moment the client's connection ended (`hold`'s clock). ms.\n")
    L.append("| live | server | in-process p50 | p99 | control p50 | p99 | × sshvisor (p50) | client sees p50 | p99 |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        for name in servers:
            runs = sized.get((name, n))
            if not runs or "rtt_p50" not in runs[0]:
                continue
            L.append(f"| {n:,} | {name} | {fmt(med(runs, 'inproc_p50'), 3)} | {fmt(med(runs, 'inproc_p99'), 3)} | "
                     f"{fmt(med(runs, 'rtt_p50'), 3)} | {fmt(med(runs, 'rtt_p99'), 3)} | "
                     f"{ratio(med(runs, 'rtt_p50'), base('sshvisor', n, 'rtt_p50'))} | "
                     f"{fmt(med(runs, 'seen_p50'), 3)} | {fmt(med(runs, 'seen_p99'), 3)} |")
    L.append("")
    L.append("## 2. Kill-all\n")
    L.append("After the single kills, every connection still live, in one request; time to the "
             "reply (sshvisor: `kill_all`; peers: `killall`; sshd: SIGTERM to all, until all "
             "exited).\n")
    L.append("| live | server | connections | ms | µs per connection | × sshvisor (per connection) |")
    L.append("|---|---|---|---|---|---|")
    for n in sizes:
        for name in servers:
            runs = sized.get((name, n))
            if not runs or "killall_ms" not in runs[0]:
                continue
            per = killall_per_conn(runs)
            sper = killall_per_conn(sized.get(("sshvisor", n)))
            L.append(f"| {n:,} | {name} | {fmt(med(runs, 'killall_n'), 0)} | {fmt(med(runs, 'killall_ms'), 1)} | "
                     f"{fmt(per, 1)} | {ratio(per, sper)} |")
    L.append("")
    L.append("## 3. Memory per held connection\n")
    L.append("Proportional set size (`Pss` of /proc/PID/smaps_rollup, summed over the server's "
             "processes: sshvisor, bare, asyncssh: the one process; otp: beam.smp + "
             "erl_child_setup; sshd: the listener and every per-connection sshd) with N held "
             "connections minus before, divided by N. KiB.\n")
    L.append("| live | " + " | ".join(servers) + " |")
    L.append("|---|" + "---|" * len(servers))
    for n in sizes:
        L.append(f"| {n:,} | " + " | ".join(fmt(base(s, n, 'pss_per_conn_kib'), 1) for s in servers) + " |")
    L.append("")
    L.append("## 4. Handshake rate\n")
    L.append(f"`sshvisor-bench churn`: connect, authenticate, exec `true` (a real process for "
             f"every server), wait for its exit status, disconnect; C clients in parallel for "
             f"{args.churn_secs} s, the servers in turn round by round. Handshakes per second "
             f"(failures in brackets when any).\n")
    cs = sorted({c for _, c in churned})
    L.append("| parallel | " + " | ".join(servers) + " | sshvisor ÷ bare |")
    L.append("|---|" + "---|" * (len(servers) + 1))
    for c in cs:
        cells = []
        for s in servers:
            runs = churned[(s, c)]
            rate = med(runs, "rate")
            failed = sum(r["failed"] or 0 for r in runs)
            cells.append(fmt(rate, 1) + (f" ({failed} failed)" if failed else ""))
        sv, ba = med(churned.get(("sshvisor", c), []), "rate"), med(churned.get(("bare", c), []), "rate")
        L.append(f"| {c} | " + " | ".join(cells) + f" | {fmt(sv / ba if sv and ba else None, 2)} |")
    L.append("")
    if long:
        b, a = long["before"], long["after"]
        L.append("## 5. After a long churn\n")
        L.append(f"sshvisor after {long['total']:,} connections (churn, 64 parallel, "
                 f"{long['secs']:.0f} s), from its control socket's `stats`:\n")
        L.append("| | before | after |")
        L.append("|---|---|---|")
        for k in ("connections", "sessions", "connection_actors", "session_actors", "waiting_kills"):
            L.append(f"| {k.replace('_', ' ')} | {b['tree'][k]} | {a['tree'][k]} |")
        for k, label in (("pss_kib", "PSS (KiB)"), ("open_fds", "open descriptors"), ("threads", "threads")):
            L.append(f"| {label} | {b['process'][k]} | {a['process'][k]} |")
        L.append("")
    L.append("## Commands\n")
    L.append("Each server's start command is in `bench/run.py` (`Server.start`). The client "
             "commands of this run, deduplicated (ports and paths vary):\n")
    L.append("```")
    seen = set()
    for c in run.commands:
        shown = re.sub(r"/tmp/[\w.-]+", "$WORK", c).replace(ROOT + "/", "")
        key = re.sub(r"\d+", "N", shown)
        if key not in seen:
            seen.add(key)
            L.append(shown)
    L.append("```")
    text = "\n".join(L) + "\n"
    svg_plot(plot,
             [{s: [(n, base(s, n, "inproc_p50" if s == "sshvisor" else "rtt_p50")) for n in sizes] for s in servers if s != "bare"},
              {s: [(n, base(s, n, "pss_per_conn_kib")) for n in sizes] for s in servers}],
             ["kill latency p50 (sshvisor: in-process; peers: control)", "PSS per held connection"],
             ["ms", "KiB"])
    procs = os.path.join(ROOT, "bench", "PROCS.md")
    if not args.smoke and os.path.exists(procs):
        # Process sessions through `sshvisor serve` (bench/procs.sh writes it; a run of its own,
        # about 20 minutes): the path users run, beside the figures above.
        with open(procs) as f:
            body = f.read().replace("\n## ", "\n### ")
            text += "\n" + body.replace("# Process sessions", "## 6. Process sessions", 1)
    notes = os.path.join(ROOT, "bench", "NOTES.md")
    if not args.smoke and os.path.exists(notes):
        # What the figures mean and where the costs are: written by hand after a run.
        with open(notes) as f:
            text += "\n" + f.read()
    with open(out, "w") as f:
        f.write(text)
    log(f"wrote {out} and {plot}")


if __name__ == "__main__":
    main()
