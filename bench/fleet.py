#!/usr/bin/env python3
"""The fleet (issue 17): three `sshvisor serve` nodes joined over TLS on loopback, 1,000 held
connections each with a real process session, measured in one run.

Build first (release): `cargo build --release -p sshvisor -p sshvisor-bench`. Then
`python3 bench/fleet.py` (about 2 minutes on 2 cores; `--smoke`: seconds). Steps:

1. A lone node (no fleet flags, same binary): PSS before and after 1,000 held connections
   (`sshvisor-bench hold 1000 --command "sleep 100000"`: one exec session each, `/bin/sh -c`
   and its `sleep`), then a local kill-all of them (for comparison with the fleet's).
2. `sshvisor fleet certs` for a, b, c; a starts, b joins a, c joins a and b; wait until every
   node's `nodes` says 3 up. 1,000 held on each node in turn, each node's PSS before and after
   its own 1,000 (memory per connection in a fleet).
3. `ls --fleet` of 3,000 on a, N times on one control connection (the control round trip,
   timed from here over the unix socket), beside a local `ls` of a's 1,000; one `sshvisor ctl
   ls --fleet --json` process timed a few times (and `sshvisor --version` as the process floor).
4. 100 kills from a of connections held by c (full IDs: a misses locally, asks every node to
   resolve, then kills on c) interleaved with 100 local kills (a's own), 20 ms apart, on one
   control connection: the round trip, the owner's `elapsed_ms`, and when the hold client saw
   its connection end. Then 20 dry-run kills of IDs on c (the resolve alone).
5. The OpenSSH client: 20 `ssh` clients on a and 20 on c, one at a time, each killed from a
   (local and remote alternately), timed until the `ssh` process exited.
6. Top up to 3,000, then one `kill_where --fleet` with an empty filter (`ctl kill --fleet
   --all`) on a: time to the answer, and until every session's processes are gone.
7. A second lone node, as in 1 (the memory figure moves between runs of one binary).

Prints a markdown report (docs/BENCHMARKS.md section 9) and writes the raw figures to --json.
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
from run import cpu_steal, free_port, hiccups, machine, median, pct, pss_kib  # noqa: E402
from procs import Build, Server, answers_ssh, descendants, log, wait_for  # noqa: E402
import openssh  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rollup(pid, field):
    """One field of /proc/PID/smaps_rollup, KiB."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Ctl:
    """One persistent control connection (JSON lines), timed from here."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")
        self.id = 0

    def call(self, cmd, **fields):
        """(response, round trip ms, reply bytes, wall-clock time the request was sent)."""
        self.id += 1
        line = json.dumps({"id": self.id, "cmd": cmd, **fields}).encode() + b"\n"
        sent = time.time()
        t0 = time.perf_counter()
        self.sock.sendall(line)
        reply = self.reader.readline()
        ms = (time.perf_counter() - t0) * 1e3
        if not reply:
            raise SystemExit(f"the control socket closed during {cmd}")
        r = json.loads(reply)
        if r.get("id") != self.id:
            raise SystemExit(f"reply to {r.get('id')} for request {self.id}")
        return r, ms, len(reply), sent

    def ok(self, cmd, **fields):
        r, ms, size, sent = self.call(cmd, **fields)
        if not r.get("ok"):
            raise SystemExit(f"{cmd} {fields}: {r.get('error')}")
        return r["result"], ms, size, sent

    def close(self):
        self.reader.close()
        self.sock.close()


class Node(Server):
    """One `sshvisor serve`, alone or in the fleet (extra flags after the usual ones)."""

    def __init__(self, build, args, name, extra=()):
        super().__init__(build, args)
        self.name, self.extra = name, list(extra)

    def start(self):
        cfg = os.path.join(self.dir, "fleet.toml")
        with open(cfg, "w") as f:
            f.write("[limits]\nmax_connections = 20000\nmax_per_source = 20000\n"
                    "max_per_prefix = 20000\nmax_per_user = 20000\nmax_unauthenticated = 20000\n"
                    "[penalties]\nexempt = [\"127.0.0.0/8\"]\n")
        cmd = [self.build.path, "serve", "--listen", self.addr, "--config", cfg, "--state-dir",
               self.state, "--kill-grace", f"{self.args.grace}s", *self.extra]
        self.err = open(os.path.join(self.dir, "serve.log"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.err, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid

        def up():
            if self.proc.poll() is not None:
                raise SystemExit(f"node {self.name} exited at start: see {self.err.name}")
            return os.path.exists(self.control) and answers_ssh(self.port)
        wait_for(f"node {self.name} to listen", up, 60)

    def ended(self, hold_index):
        """The wall-clock times (unix µs) the hold client saw its connections end, in order."""
        out = []
        with open(os.path.join(self.dir, f"hold-{hold_index}.out")) as f:
            for line in f:
                m = re.match(r"ended: \d+ at \S+ unix_us (\d+)", line)
                if m:
                    out.append(int(m.group(1)))
        return out


def memory(node):
    return {"pss": pss_kib(node.pid), "private_dirty": rollup(node.pid, "Private_Dirty")}


def per_conn(before, after, n):
    return {k: (after[k] - before[k]) / n for k in before}


def lone(build, args, tag):
    """A node without fleet flags: memory per connection with N held, and a local kill-all."""
    node = Node(build, args, f"lone-{tag}")
    node.start()
    try:
        time.sleep(args.settle)
        m0 = memory(node)
        up = node.hold(args.conns)
        time.sleep(args.settle)
        m1 = memory(node)
        ctl = Ctl(node.control)
        result, ms, _, _ = ctl.ok("kill_all")
        ctl.close()
        r = {"up": up, "before": m0, "after": m1, "per_conn": per_conn(m0, m1, up),
             "kill_all_ms": ms, "killed": len(result) if isinstance(result, list) else None}
        log(f"  lone {tag}: {up} held, PSS {r['per_conn']['pss']:.1f} KiB/conn, kill-all {ms:.0f} ms")
        return r
    finally:
        node.stop()


def start_fleet(build, args):
    certs = tempfile.mkdtemp(prefix="sshvisor-fleet-certs-")
    names = ["a", "b", "c"]
    subprocess.run([build.path, "fleet", "certs", "--dir", certs, "--nodes", ",".join(names),
                    *[x for n in names for x in ("--ip", f"{n}=127.0.0.1")]],
                   check=True, capture_output=True)
    ports = {n: free_port() for n in names}
    joins = {"a": [], "b": ["a"], "c": ["a", "b"]}
    nodes = {}
    for n in names:
        extra = ["--fleet-listen", f"127.0.0.1:{ports[n]}", "--fleet-node-name", n,
                 "--fleet-cookie-file", os.path.join(certs, "cookie"),
                 "--fleet-tls-ca", os.path.join(certs, "ca.pem"),
                 "--fleet-tls-cert", os.path.join(certs, f"{n}.pem"),
                 "--fleet-tls-key", os.path.join(certs, f"{n}.key")]
        for j in joins[n]:
            extra += ["--fleet-join", f"127.0.0.1:{ports[j]}"]
        nodes[n] = Node(build, args, n, extra)
        nodes[n].start()
    t0 = time.monotonic()
    for n, node in nodes.items():
        ctl = Ctl(node.control)

        def all_up():
            result, _, _, _ = ctl.ok("nodes")
            return sum(1 for v in result if v.get("state") == "up") == len(names)
        wait_for(f"node {n} to see 3 nodes up", all_up, 60)
        ctl.close()
    log(f"  fleet up: every node sees 3 up {time.monotonic() - t0:.1f} s after the last start")
    return nodes


def ctl_process(build, node, argv, times):
    out = []
    for _ in range(times):
        t0 = time.perf_counter()
        subprocess.run([build.path, "ctl", "--state-dir", node.state, *argv], check=True,
                       capture_output=True)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def openssh_sample(a, c, args):
    """`ssh` clients on a and on c, one at a time, each killed from a: (local, remote) lists of
    (ctl round trip ms, ssh exit ms after the request)."""
    ctl_a = Ctl(a.control)
    local, remote = [], []
    shown = 0
    for i in range(2 * args.ssh):
        owner, into = (a, local) if i % 2 == 0 else (c, remote)
        p = openssh.hold(owner)
        ctl_owner = Ctl(owner.control)
        try:
            cid = wait_for("the ssh client's session", lambda: openssh.exec_session(ctl_owner), 30)
        finally:
            ctl_owner.close()
        r, ms, gone, said = openssh.kill_timed(ctl_a, p, cid, "bye from the fleet bench")
        shown += said
        if not r.get("ok"):
            log(f"  ssh kill of {cid} failed: {r.get('error')}")
            continue
        into.append((ms, gone))
    ctl_a.close()
    return local, remote, shown


def fleet_run(build, args, R):
    nodes = start_fleet(build, args)
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    try:
        time.sleep(args.settle)
        R["fleet_memory"] = {}
        for n, node in nodes.items():
            m0 = memory(node)
            up = node.hold(args.conns)
            time.sleep(args.settle)
            m1 = memory(node)
            R["fleet_memory"][n] = {"up": up, "before": m0, "after": m1, "per_conn": per_conn(m0, m1, up)}
            log(f"  node {n}: {up} held, PSS {R['fleet_memory'][n]['per_conn']['pss']:.1f} KiB/conn")
        R["fleet_memory"]["a_after_all"] = memory(a)

        # (b) ls --fleet of everything, beside a local ls of a's own.
        ctl = Ctl(a.control)
        fleet_ls, local_ls = [], []
        for i in range(args.ls):
            result, ms, size, _ = ctl.ok("ls", fleet=True)
            fleet_ls.append(ms)
            if i == 0:
                R["ls_fleet_count"] = len(result["connections"])
                R["ls_fleet_bytes"] = size
                R["ls_fleet_nodes"] = result["nodes"]
            result, ms, size, _ = ctl.ok("ls")
            local_ls.append(ms)
            if i == 0:
                R["ls_local_count"], R["ls_local_bytes"] = len(result), size
        R["ls_fleet_ms"], R["ls_local_ms"] = fleet_ls, local_ls
        log(f"  ls --fleet of {R['ls_fleet_count']}: median {median(fleet_ls):.1f} ms "
            f"({R['ls_fleet_bytes']} bytes); local ls of {R['ls_local_count']}: {median(local_ls):.1f} ms")
        R["ctl_ls_fleet_ms"] = ctl_process(build, a, ["ls", "--fleet", "--json"], args.ctl_runs)
        R["ctl_ls_local_ms"] = ctl_process(build, a, ["ls", "--json"], args.ctl_runs)
        floor = []
        for _ in range(args.ctl_runs):
            t0 = time.perf_counter()
            subprocess.run([build.path, "--version"], check=True, capture_output=True)
            floor.append((time.perf_counter() - t0) * 1e3)
        R["process_floor_ms"] = floor
        log(f"  ctl ls --fleet --json process: median {median(R['ctl_ls_fleet_ms']):.1f} ms")

        # (a) kills: local (a's own) and remote (c's, from a), interleaved.
        mine = [x["id"] for x in ctl.ok("ls")[0]]
        ctl_c = Ctl(c.control)
        theirs = [x["id"] for x in ctl_c.ok("ls")[0]]
        ctl_c.close()
        kills = {"local": [], "remote": []}
        for i in range(args.kills):
            for kind, ids in (("local", mine), ("remote", theirs)):
                time.sleep(args.gap_ms / 1000)
                r, ms, _, sent = ctl.call("kill", target=ids[i])
                if not r.get("ok"):
                    log(f"  {kind} kill of {ids[i]} failed: {r.get('error')}")
                    continue
                kills[kind].append({"rtt_ms": ms, "elapsed_ms": r["result"].get("elapsed_ms"),
                                    "node": r["result"].get("node"), "sent_us": sent * 1e6})
        # The hold clients' view: the i-th connection each saw end is the i-th kill on it.
        for kind, node in (("local", a), ("remote", c)):
            wait_for(f"the {kind} kills' clients to see the end",
                     lambda: len(node.ended(0)) >= len(kills[kind]), 30)
            for k, end in zip(kills[kind], node.ended(0)):
                k["client_ms"] = (end - k["sent_us"]) / 1e3
        R["kills"] = kills
        nodes_seen = {k["node"] for k in kills["remote"]}
        log(f"  kills: local p50 {pct([k['rtt_ms'] for k in kills['local']], .5):.3f} ms, "
            f"remote p50 {pct([k['rtt_ms'] for k in kills['remote']], .5):.3f} ms (owner {nodes_seen})")
        resolve = []
        for cid in theirs[args.kills:args.kills + args.resolves]:
            time.sleep(args.gap_ms / 1000)
            result, ms, _, _ = ctl.ok("kill", target=cid, dry_run=True)
            resolve.append(ms)
        R["resolve_ms"] = resolve

        # The OpenSSH client, through the same nodes.
        if args.ssh:
            local, remote, shown = openssh_sample(a, c, args)
            R["ssh"] = {"local": local, "remote": remote, "reason_shown": shown}
            log(f"  ssh: local exit p50 {median([g for _, g in local]):.1f} ms, "
                f"remote {median([g for _, g in remote]):.1f} ms")

        # (c) back to 3,000, then one fleet kill-all.
        for node, killed in ((a, len(kills["local"])), (c, len(kills["remote"]))):
            node.hold(killed)
        live = len(ctl.ok("ls", fleet=True)[0]["connections"])
        t0 = time.perf_counter()
        result, ms, size, _ = ctl.ok("kill_where", filter={}, fleet=True)
        wait_for("every session's processes to go",
                 lambda: not any(descendants(n.pid) for n in nodes.values()), 120)
        gone = (time.perf_counter() - t0) * 1e3
        R["kill_all"] = {"live": live, "ms": ms, "reports": len(result["reports"]),
                         "nodes": result["nodes"], "bytes": size, "gone_ms": gone}
        log(f"  fleet kill-all of {live}: {ms:.0f} ms, {len(result['reports'])} reports, "
            f"processes gone after {gone:.0f} ms")
        ctl.close()
    finally:
        for node in nodes.values():
            node.stop()


def f3(x):
    return "–" if x is None else f"{x:.3f}"


def report(args, R):
    L = []
    ka, kl, kr = R["kill_all"], R["kills"]["local"], R["kills"]["remote"]
    q = lambda xs, p: pct(xs, p)
    L.append(f"`{' '.join(['python3', 'bench/fleet.py', *args.argv])}` on {R['started']} – "
             f"{R['finished']} UTC, {machine()}, load average at the end {R['load']:.2f}. "
             f"Build: {R['commit']} (release). Machine stillness: a thread sleeping 1 ms was "
             f"held up > 1 ms {R['probes'][0]['per_s']:.1f}/s before (worst "
             f"{R['probes'][0]['worst_ms']:.1f} ms) and {R['probes'][1]['per_s']:.1f}/s after "
             f"(worst {R['probes'][1]['worst_ms']:.1f} ms); steal {R['steal'] * 100:.1f} %.\n")
    L.append("### Kills from node a: its own (local) and c's (remote), interleaved, 20 ms apart\n")
    L.append("| kill | count | round trip p50 | p99 | owner's `elapsed_ms` p50 | p99 | client sees p50 | p99 |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, ks in (("local (a kills a's)", kl), ("remote (a kills c's)", kr)):
        rtt = [k["rtt_ms"] for k in ks]
        el = [k["elapsed_ms"] for k in ks if k["elapsed_ms"] is not None]
        cl = [k["client_ms"] for k in ks if "client_ms" in k]
        L.append(f"| {name} | {len(ks)} | {f3(q(rtt, .5))} | {f3(q(rtt, .99))} | {f3(q(el, .5))} | "
                 f"{f3(q(el, .99))} | {f3(q(cl, .5))} | {f3(q(cl, .99))} |")
    L.append(f"\nThe resolve alone (a dry-run kill of an ID on c, from a): p50 "
             f"{f3(q(R['resolve_ms'], .5))} ms, p99 {f3(q(R['resolve_ms'], .99))} ms over "
             f"{len(R['resolve_ms'])}.\n")
    if "ssh" in R:
        s = R["ssh"]
        L.append(f"OpenSSH client (`ssh op@127.0.0.1 'sleep 100000'`), one at a time, killed from a, "
                 f"time from the request to the `ssh` process's exit: local ({len(s['local'])}) "
                 f"median {median([g for _, g in s['local']]):.2f} ms (round trip "
                 f"{median([m for m, _ in s['local']]):.2f}), remote on c ({len(s['remote'])}) median "
                 f"{median([g for _, g in s['remote']]):.2f} ms (round trip "
                 f"{median([m for m, _ in s['remote']]):.2f}); the reason printed by "
                 f"{s['reason_shown']} of {len(s['local']) + len(s['remote'])}.\n")
    L.append("### Listing\n")
    L.append(f"| request on a | connections | reply bytes | median ms | min | max |")
    L.append("|---|---:|---:|---:|---:|---:|")
    L.append(f"| `ls` fleet (control socket, {len(R['ls_fleet_ms'])} times) | {R['ls_fleet_count']:,} | "
             f"{R['ls_fleet_bytes']:,} | {median(R['ls_fleet_ms']):.1f} | {min(R['ls_fleet_ms']):.1f} | "
             f"{max(R['ls_fleet_ms']):.1f} |")
    L.append(f"| `ls` local (control socket, {len(R['ls_local_ms'])} times) | {R['ls_local_count']:,} | "
             f"{R['ls_local_bytes']:,} | {median(R['ls_local_ms']):.1f} | {min(R['ls_local_ms']):.1f} | "
             f"{max(R['ls_local_ms']):.1f} |")
    L.append(f"| `sshvisor ctl ls --fleet --json` process ({len(R['ctl_ls_fleet_ms'])} times) | "
             f"{R['ls_fleet_count']:,} | – | {median(R['ctl_ls_fleet_ms']):.1f} | "
             f"{min(R['ctl_ls_fleet_ms']):.1f} | {max(R['ctl_ls_fleet_ms']):.1f} |")
    L.append(f"| `sshvisor ctl ls --json` process | {R['ls_local_count']:,} | – | "
             f"{median(R['ctl_ls_local_ms']):.1f} | {min(R['ctl_ls_local_ms']):.1f} | "
             f"{max(R['ctl_ls_local_ms']):.1f} |")
    L.append(f"| `sshvisor --version` (process floor) | – | – | {median(R['process_floor_ms']):.1f} | "
             f"{min(R['process_floor_ms']):.1f} | {max(R['process_floor_ms']):.1f} |")
    L.append("\n### Fleet kill-all\n")
    L.append(f"One `kill_where` with an empty filter and `fleet: true` on a (`ctl kill --fleet --all`) "
             f"with {ka['live']:,} live: answered after {ka['ms']:.0f} ms with {ka['reports']:,} "
             f"reports ({ka['ms'] * 1000 / max(ka['reports'], 1):.0f} µs per connection; nodes: "
             + ", ".join(f"{x['node']} {x['status']} {x.get('count')}" for x in ka["nodes"])
             + f"); every session's processes gone after {ka['gone_ms']:.0f} ms. A lone node's "
             f"local `kill_all` of {R['lone'][0]['up']:,}: "
             + " and ".join(f"{x['kill_all_ms']:.0f} ms" for x in R["lone"]) + ".\n")
    L.append("### Memory per held connection (PSS, KiB; Private_Dirty beside it)\n")
    L.append("| node | held | PSS per connection | Private_Dirty per connection | PSS before, MiB | after | "
             "Private_Dirty before, MiB | after |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    mib = lambda kib: f"{kib / 1024:.1f}"
    rows = [(f"lone, run {i + 1}", x) for i, x in enumerate(R["lone"])]
    rows += [(f"fleet node {n}", R["fleet_memory"][n]) for n in ("a", "b", "c")]
    for name, x in rows:
        L.append(f"| {name} | {x['up']:,} | {x['per_conn']['pss']:.1f} | {x['per_conn']['private_dirty']:.1f} | "
                 f"{mib(x['before']['pss'])} | {mib(x['after']['pss'])} | "
                 f"{mib(x['before']['private_dirty'])} | {mib(x['after']['private_dirty'])} |")
    a = R["fleet_memory"]
    L.append(f"\nNode a's PSS while b and c took their {a['b']['up'] + a['c']['up']:,}: "
             f"{(R['fleet_memory']['a_after_all']['pss'] - a['a']['after']['pss']) / 1024:+.1f} MiB.\n")
    L.append("### Against the targets of issue 17\n")
    L.append("| target | measured | |")
    L.append("|---|---|---|")
    lp = pct([k["rtt_ms"] for k in kl], .5)
    rp = pct([k["rtt_ms"] for k in kr], .5)
    bound = 2 * lp + 1
    L.append(f"| fleet kill p50 within 2× the local kill + 1 ms | {rp:.3f} ms against local {lp:.3f} ms "
             f"({rp / lp:.2f}×; bound {bound:.3f} ms) | {'met' if rp <= bound else 'missed'} |")
    ls = median(R["ls_fleet_ms"])
    L.append(f"| `ls --fleet` of 3,000 under 50 ms | median {ls:.1f} ms over {len(R['ls_fleet_ms'])} on the "
             f"control socket ({R['ls_fleet_count']:,} connections); the `ctl ls --fleet --json` process "
             f"{median(R['ctl_ls_fleet_ms']):.1f} ms | {'met' if ls < 50 else 'missed'} |")
    fl = sum(a[n]["per_conn"]["pss"] for n in ("a", "b", "c")) / 3
    lo = sum(x["per_conn"]["pss"] for x in R["lone"]) / len(R["lone"])
    d = (fl - lo) / lo * 100
    L.append(f"| memory per connection in a fleet within 5 % of a lone node's | {fl:.1f} KiB (mean of a, b, c) "
             f"against {lo:.1f} KiB (mean of the lone runs): {d:+.1f} % | "
             f"{'met' if abs(d) <= 5 else ('missed' if d > 0 else 'met (lower; outside 5 % but in the direction that costs nothing)')} |")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=1000, help="held connections per node")
    ap.add_argument("--kills", type=int, default=100, help="local and remote kills, each")
    ap.add_argument("--resolves", type=int, default=20, help="dry-run kills of IDs on c")
    ap.add_argument("--ls", type=int, default=20, help="ls --fleet requests")
    ap.add_argument("--ctl-runs", type=int, default=5, help="ctl processes timed")
    ap.add_argument("--ssh", type=int, default=20, help="OpenSSH clients on a and on c, each")
    ap.add_argument("--gap-ms", type=float, default=20)
    ap.add_argument("--grace", type=float, default=5.0, help="the nodes' kill grace, s")
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--smoke", action="store_true", help="a quick check: 30 per node, few samples")
    ap.add_argument("--bench-bin", default=os.path.join(ROOT, "target", "release", "sshvisor-bench"))
    ap.add_argument("--sshvisor-bin", default=os.path.join(ROOT, "target", "release", "sshvisor"))
    ap.add_argument("--json", help="raw figures to this file")
    args = ap.parse_args()
    args.argv = sys.argv[1:]
    if args.smoke:
        args.conns, args.kills, args.resolves, args.ls, args.ctl_runs, args.ssh = 30, 5, 3, 3, 2, 2
        args.settle = 0.2
    build = Build("sshvisor", args.sshvisor_bin)
    R = {"started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
         "commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                  capture_output=True, text=True).stdout.strip()}
    R["probes"] = [hiccups(1 if args.smoke else 5)]
    steal0 = cpu_steal()
    R["lone"] = [lone(build, args, "1")]
    fleet_run(build, args, R)
    R["lone"].append(lone(build, args, "2"))
    steal1 = cpu_steal()
    R["probes"].append(hiccups(1 if args.smoke else 5))
    R["steal"] = (steal1[0] - steal0[0]) / max(1, steal1[1] - steal0[1])
    R["finished"] = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M")
    R["load"] = os.getloadavg()[0]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(R, f, indent=1)
    print(report(args, R))


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    main()
