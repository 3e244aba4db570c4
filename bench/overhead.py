#!/usr/bin/env python3
"""What observing costs (issue 18): kill latency and handshake rate through `sshvisor serve`
with extra serve flags (the metrics endpoint by default) against without, in one run.

Build first (release): `cargo build --release -p sshvisor -p sshvisor-bench`. Then
`python3 bench/overhead.py` (about 2 minutes on 2 cores; `--smoke`: seconds).

Rounds alternate off, on, off, on, ... (each a fresh server on the same binary), so a slow
minute of the machine falls on both. Each round:

1. churn: `sshvisor-bench churn --parallel P --duration D` (connect, authenticate, exec `true`,
   disconnect): handshakes per second;
2. hold N connections with a `sleep` session each, then `sshvisor-bench kill --count K` through
   the control socket, one at a time: the round trip and the server's own `elapsed_ms`.

3. the same through the OpenSSH client (`--ssh-secs`, `--ssh-kills`; 0 skips it): `ssh ...
   true` in a loop from `--ssh-parallel` workers, handshakes per second; then `ssh ... sleep`
   clients one at a time, each killed through the control socket: the round trip, and the time
   until the `ssh` process has exited.

`--paired` runs both servers at once instead, and alternates between them at every step: churn
in slices of `--slice-secs` (off, on, on, off, ...), each kill (one on off, one on on, ...) over
one control connection per server, each OpenSSH client. Noise from the rest of the machine then
falls on both sides alike, which rounds of whole servers one after the other cannot promise on
a shared machine; its figures are medians over the samples of each side.

With the "on" flags a scraper reads `/metrics` every `--scrape-every` seconds meanwhile (as
Prometheus would, more often). `--on` takes any serve flags: `--on "--metrics-listen
127.0.0.1:0 --audit-log {dir}/audit.log"` measures the audit log too (`{dir}` is the round's
own directory). Prints a markdown table for docs/BENCHMARKS.md §10.
"""
import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import machine, median, pct  # noqa: E402
from procs import Build, log, wait_for  # noqa: E402
from fleet import Ctl, Node  # noqa: E402
import openssh  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Scraper(threading.Thread):
    """GET /metrics every `every` seconds until stopped; counts the scrapes."""

    def __init__(self, url, every):
        super().__init__(daemon=True)
        self.url, self.every, self.done, self.count = url, every, threading.Event(), 0

    def run(self):
        while not self.done.wait(self.every):
            with urllib.request.urlopen(self.url, timeout=10) as r:
                if r.status == 200 and r.read().endswith(b"# EOF\n"):
                    self.count += 1


def metrics_url(node):
    """The metrics URL `serve` printed, if it serves metrics."""
    with open(node.err.name) as f:
        m = re.search(r"^metrics on (http://\S+)", f.read(), re.M)
    return m.group(1) if m else None


def openssh_churn(node, args, secs=None):
    """`ssh ... true` in a loop from `--ssh-parallel` threads for `secs` (`--ssh-secs`): (per
    second, failed)."""
    done, failed, lock = [0], [0], threading.Lock()
    stop = time.monotonic() + (secs or args.ssh_secs)

    def worker():
        while time.monotonic() < stop:
            ok = subprocess.run(openssh.ssh_argv(node, "true"), stdin=subprocess.DEVNULL,
                                capture_output=True, timeout=60).returncode == 0
            with lock:
                (done if ok else failed)[0] += 1
    t0 = time.monotonic()
    workers = [threading.Thread(target=worker) for _ in range(args.ssh_parallel)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return done[0] / (time.monotonic() - t0), failed[0]


def openssh_kills(node, args):
    """`ssh ... sleep` clients one at a time, each killed through the control socket:
    [(round trip ms, ms until the ssh process exited)], and how many printed the reason."""
    ctl = Ctl(node.control)
    out, shown = [], 0
    try:
        for _ in range(args.ssh_kills):
            p = openssh.hold(node)
            cid = wait_for("the ssh client's session", lambda: openssh.exec_session(ctl), 30)
            r, ms, gone, said = openssh.kill_timed(ctl, p, cid, "bye from the overhead bench")
            shown += said
            if r.get("ok"):
                out.append((ms, gone))
            else:
                log(f"  ssh kill of {cid} failed: {r.get('error')}")
    finally:
        ctl.close()
    return out, shown


def one_round(build, args, on):
    node = Node(build, args, "on" if on else "off")
    node.extra = [a.replace("{dir}", node.dir) for a in shlex.split(args.on)] if on else []
    node.start()
    scraper = None
    try:
        if on and "--metrics-listen" in args.on:
            url = wait_for("the metrics line", lambda: metrics_url(node), 10)
            scraper = Scraper(url, args.scrape_every)
            scraper.start()
        rate, failed = churn(args, node, args.churn_secs)
        up = node.hold(args.conns)
        out = node.bench("kill", "--count", str(min(args.kills, up)), "--json")
        summary = json.loads(out.strip().splitlines()[-1])
        rtt = [json.loads(line)["rtt_us"] / 1000 for line in out.splitlines()
               if line.startswith('{"') and '"rtt_us"' in line]
        inproc = [json.loads(line)["inproc_us"] / 1000 for line in out.splitlines()
                  if '"inproc_us"' in line and json.loads(line).get("inproc_us") is not None]
        r = {"on": on, "rate": rate, "churn_failed": failed, "kills": len(rtt),
             "rtt_p50": median(rtt), "rtt_p99": pct(rtt, .99),
             "inproc_p50": median(inproc) if inproc else None, "summary": summary}
        if args.ssh_secs > 0:
            r["ssh_rate"], r["ssh_failed"] = openssh_churn(node, args)
        if args.ssh_kills > 0:
            kills, r["ssh_shown"] = openssh_kills(node, args)
            r["ssh_kill_rtt_p50"] = median([k[0] for k in kills])
            r["ssh_gone_p50"] = median([k[1] for k in kills])
            r["ssh_kills"] = len(kills)
        r["scrapes"] = scraper.count if scraper else 0
        return r
    finally:
        if scraper:
            scraper.done.set()
        node.stop()


def churn(args, node, secs):
    """`sshvisor-bench churn` against `node` for `secs`: (handshakes per second, failed)."""
    p = subprocess.run([args.bench_bin, "churn", "--addr", node.addr, "--key", node.key,
                        "--parallel", str(args.parallel), "--duration", str(secs)],
                       capture_output=True, text=True, timeout=600)
    m = re.search(r"churn: parallel \d+, (\d+) handshakes in ([\d.]+) s = ([\d.]+)/s \((\d+) failed\)",
                  p.stdout)
    if not m:
        raise SystemExit(f"churn said nothing usable:\n{p.stdout}\n{p.stderr}")
    return float(m.group(3)), int(m.group(4))


def alternating(i, pair):
    """off, on for even steps, on, off for odd ones."""
    return pair if i % 2 == 0 else pair[::-1]


def paired_run(build, args):
    """Both servers at once; every step alternates between them. Returns per side the lists of
    samples: churn rates, kill round trips and `elapsed_ms`, OpenSSH rates and kills."""
    off, on = Node(build, args, "off"), Node(build, args, "on")
    on.extra = [a.replace("{dir}", on.dir) for a in shlex.split(args.on)]
    S = {side: {"rate": [], "rtt": [], "elapsed": [], "ssh_rate": [], "ssh_rtt": [],
                "ssh_gone": [], "ssh_shown": 0} for side in ("off", "on")}
    scraper = None
    ctls = {}
    try:
        off.start()
        on.start()
        if "--metrics-listen" in args.on:
            scraper = Scraper(wait_for("the metrics line", lambda: metrics_url(on), 10),
                              args.scrape_every)
            scraper.start()
        pair = ((off, S["off"]), (on, S["on"]))
        for i in range(args.slices):
            for node, side in alternating(i, pair):
                side["rate"].append(churn(args, node, args.slice_secs)[0])
        log(f"  churn: off {median(S['off']['rate']):.0f}/s, on {median(S['on']['rate']):.0f}/s")
        for node, _ in pair:
            node.hold(args.conns)
            ctls[node.name] = Ctl(node.control)
        ids = {}
        for node, _ in pair:
            listed, _, _, _ = ctls[node.name].ok("ls")
            ids[node.name] = [c["id"] for c in listed]
        for i in range(min(args.kills, *(len(v) for v in ids.values()))):
            for node, side in alternating(i, pair):
                r, ms, _, _ = ctls[node.name].call("kill", target=ids[node.name].pop(),
                                                   reason="overhead bench")
                if not r.get("ok"):
                    raise SystemExit(f"kill on {node.name}: {r.get('error')}")
                side["rtt"].append(ms)
                side["elapsed"].append(r["result"]["elapsed_ms"])
                time.sleep(0.02)
        log(f"  kills: off p50 {median(S['off']['rtt']):.2f} ms, on {median(S['on']['rtt']):.2f} ms")
        for i in range(args.ssh_slices):
            for node, side in alternating(i, pair):
                rate, _ = openssh_churn(node, args, args.slice_secs)
                side["ssh_rate"].append(rate)
        for i in range(args.ssh_kills):
            for node, side in alternating(i, pair):
                p = openssh.hold(node)
                ctl = ctls[node.name]
                cid = wait_for("the ssh client's session", lambda: openssh.exec_session(ctl), 30)
                r, ms, gone, said = openssh.kill_timed(ctl, p, cid, "bye from the overhead bench")
                if r.get("ok"):
                    side["ssh_rtt"].append(ms)
                    side["ssh_gone"].append(gone)
                side["ssh_shown"] += said
        S["scrapes"] = scraper.count if scraper else 0
        return S
    finally:
        if scraper:
            scraper.done.set()
        for ctl in ctls.values():
            ctl.close()
        off.stop()
        on.stop()


def paired_report(S, args, R):
    scraped = (f" (/metrics scraped every {args.scrape_every:g} s, {S['scrapes']} scrapes)"
               if "--metrics-listen" in args.on else "")
    L = [f"{R['machine']}, {R['date']}. `python3 bench/overhead.py {' '.join(R['argv'])}`: "
         f"both servers at once, off = `serve`, on = `serve {args.on}`{scraped}; "
         f"every step alternates between them. Churn: {args.slices} slices of {args.slice_secs:g} s "
         f"a side, {args.parallel} parallel clients; kills: {len(S['off']['rtt'])} a side, one at a "
         f"time, 20 ms apart, of {args.conns} held connections a side (a `sleep` session each); "
         f"OpenSSH: {args.ssh_slices} slices of `ssh … true` from {args.ssh_parallel} workers and "
         f"{len(S['off']['ssh_rtt'])} `ssh … sleep` clients killed, a side.", "",
         "| figure (median of samples) | off | on | on vs off |", "|---|---|---|---|"]
    for key, what, unit, f in [("rate", "handshakes per second (churn slices)", "/s", median),
                               ("rtt", "kill round trip p50", " ms", median),
                               ("rtt", "kill round trip p90", " ms", lambda xs: pct(xs, .9)),
                               ("rtt", "kill round trip p99", " ms", lambda xs: pct(xs, .99)),
                               ("elapsed", "kill `elapsed_ms` p50 (the server's own)", " ms", median),
                               ("ssh_rate", "OpenSSH `ssh … true` per second", "/s", median),
                               ("ssh_rtt", "OpenSSH client: kill round trip p50", " ms", median),
                               ("ssh_gone", "OpenSSH client: kill until `ssh` exits, p50", " ms",
                                median)]:
        if not S["off"][key] or not S["on"][key]:
            continue
        a, b = f(S["off"][key]), f(S["on"][key])
        L.append(f"| {what} | {a:.2f}{unit} | {b:.2f}{unit} | {change(b, a)} |")
    L.append("")
    L.append(f"OpenSSH clients that printed the kill's reason: off {S['off']['ssh_shown']}, "
             f"on {S['on']['ssh_shown']}.")
    return "\n".join(L)


def change(on, off):
    return f"{(on - off) / off * 100:+.1f} %"


def report(R, args):
    L = []
    off = [r for r in R["rounds"] if not r["on"]]
    on = [r for r in R["rounds"] if r["on"]]
    L.append(f"{R['machine']}, {R['date']}. `python3 bench/overhead.py {' '.join(R['argv'])}`: "
             f"{len(off)} rounds off and {len(on)} on, alternating; on = `serve {args.on}`"
             f"{f', /metrics scraped every {args.scrape_every:g} s' if '--metrics-listen' in args.on else ''}. "
             f"Churn: {args.parallel} parallel clients for {args.churn_secs:g} s; kills: "
             f"{args.kills} one at a time of {args.conns} held connections (a `sleep` session each).")
    L.append("")
    L.append("| figure (median of rounds) | off | on | on vs off |")
    L.append("|---|---|---|---|")
    for key, what, unit in [("rate", "handshakes per second (churn)", "/s"),
                            ("rtt_p50", "kill round trip p50", " ms"),
                            ("rtt_p99", "kill round trip p99", " ms"),
                            ("inproc_p50", "kill `elapsed_ms` p50 (the server's own)", " ms"),
                            ("ssh_rate", "OpenSSH `ssh … true` per second", "/s"),
                            ("ssh_kill_rtt_p50", "OpenSSH client: kill round trip p50", " ms"),
                            ("ssh_gone_p50", "OpenSSH client: kill until `ssh` exits, p50", " ms")]:
        if any(key not in r for r in R["rounds"]):
            continue
        a = median([r[key] for r in off])
        b = median([r[key] for r in on])
        L.append(f"| {what} | {a:.2f}{unit} | {b:.2f}{unit} | {change(b, a)} |")
    L.append("")
    L.append("Each round: " + "; ".join(
        f"{'on' if r['on'] else 'off'} {r['rate']:.0f}/s, kill p50 {r['rtt_p50']:.2f} ms"
        for r in R["rounds"]) + ".")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--on", default="--metrics-listen 127.0.0.1:0",
                    help="serve flags of the 'on' rounds ({dir}: the round's directory)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each")
    ap.add_argument("--conns", type=int, default=200, help="held connections per round")
    ap.add_argument("--kills", type=int, default=100, help="kills per round")
    ap.add_argument("--parallel", type=int, default=8, help="churn clients")
    ap.add_argument("--churn-secs", type=float, default=8.0)
    ap.add_argument("--scrape-every", type=float, default=1.0)
    ap.add_argument("--ssh-secs", type=float, default=8.0, help="OpenSSH churn seconds (0: none)")
    ap.add_argument("--ssh-parallel", type=int, default=4, help="OpenSSH churn workers")
    ap.add_argument("--ssh-kills", type=int, default=20, help="OpenSSH clients killed (0: none)")
    ap.add_argument("--paired", action="store_true",
                    help="both servers at once, alternating at every step (see above)")
    ap.add_argument("--slices", type=int, default=16, help="--paired: churn slices a side")
    ap.add_argument("--slice-secs", type=float, default=2.0, help="--paired: a slice's seconds")
    ap.add_argument("--ssh-slices", type=int, default=6, help="--paired: OpenSSH churn slices a side")
    ap.add_argument("--grace", type=float, default=5.0, help="the kill grace, s")
    ap.add_argument("--smoke", action="store_true", help="a quick check")
    ap.add_argument("--bench-bin", default=os.path.join(ROOT, "target", "release", "sshvisor-bench"))
    ap.add_argument("--sshvisor-bin", default=os.path.join(ROOT, "target", "release", "sshvisor"))
    ap.add_argument("--json", help="raw figures to this file")
    ap.add_argument("--report", metavar="JSON", help="print the report of a --paired run's --json again")
    args = ap.parse_args()
    if args.report:
        with open(args.report) as f:
            R = json.load(f)
        print(paired_report(R["samples"], ap.parse_args(R["argv"]), R))
        return
    if args.smoke:
        args.rounds, args.conns, args.kills, args.churn_secs = 1, 20, 10, 1.0
        args.ssh_secs, args.ssh_kills = 1.0, 3
        args.slices, args.slice_secs, args.ssh_slices = 2, 1.0, 1
    build = Build("sshvisor", args.sshvisor_bin)
    R = {"machine": machine(), "date": datetime.date.today().isoformat(), "argv": sys.argv[1:],
         "rounds": []}
    if args.paired:
        S = paired_run(build, args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({**R, "samples": S}, f, indent=1)
        print(paired_report(S, args, R))
        return
    for i in range(args.rounds):
        for on in (False, True) if i % 2 == 0 else (True, False):
            log(f"round {i + 1}, {'on' if on else 'off'}")
            r = one_round(build, args, on)
            log(f"  {r['rate']:.0f} handshakes/s, kill p50 {r['rtt_p50']:.2f} ms "
                f"(elapsed {r['inproc_p50']} ms), {r['scrapes']} scrapes")
            R["rounds"].append(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(R, f, indent=1)
    print(report(R, args))


if __name__ == "__main__":
    main()
