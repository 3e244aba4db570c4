#!/usr/bin/env bash
# Quick figures for sshvisor alone (bench/run.sh compares it with its peers): resident memory per idle connection with one session, and
# kill latency (supervisor Kill->reply, `ctl kill` round trip, ssh client exit).
# Usage: bench/quick.sh [CONNECTIONS]   (default 500; loopback only)
# BIN_DIR=DIR bench/quick.sh runs the sshvisor and sshvisor-bench binaries in DIR instead of
# building them (to set a saved build beside today's).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-500}
PORT=${PORT:-2399}
if [ -n "${BIN_DIR:-}" ]; then
  BIN=$(cd "$BIN_DIR" && pwd)
else
  cargo build --release -q -p sshvisor -p sshvisor-bench
  BIN=$PWD/target/release
fi
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
cd "$WORK"
# The default limits (100 per source address) would refuse most of the load.
printf '[limits]\nmax_connections = 20000\nmax_per_source = 20000\nmax_per_prefix = 20000\nmax_per_user = 20000\nmax_unauthenticated = 20000\n[penalties]\nexempt = ["127.0.0.0/8"]\n' >quick.toml
"$BIN/sshvisor" serve --listen 127.0.0.1:$PORT --config quick.toml >serve.out 2>serve.err &
SERVER=$!
for _ in $(seq 1 100); do [ -S .sshvisor/ctl.sock ] && break; sleep 0.1; done
rss() { awk '/^VmRSS/ {print $2}' /proc/$SERVER/status; }
pss() { awk '/^Pss:/ {print $2}' /proc/$SERVER/smaps_rollup; }
R0=$(rss); P0=$(pss)
"$BIN/sshvisor-bench" hold "$N" --addr 127.0.0.1:$PORT --command "sleep 100000" --hold-secs 600 >hold.out 2>&1 &
for _ in $(seq 1 600); do grep -q '^up:' hold.out && break; sleep 0.1; done
cat hold.out
sleep 2
R1=$(rss); P1=$(pss)
python3 - "$N" "$R0" "$R1" "$P0" "$P1" <<'PY'
import sys
n, r0, r1, p0, p1 = map(int, sys.argv[1:])
print(f"server RSS {r0} -> {r1} KiB, PSS {p0} -> {p1} KiB with {n} connections")
print(f"per idle connection with one exec session: RSS {(r1-r0)/n:.1f} KiB, PSS {(p1-p0)/n:.1f} KiB")
PY
python3 - "$BIN/sshvisor" "$PORT" <<'PY'
import json, subprocess, sys, time
B, port = sys.argv[1], sys.argv[2]
q = lambda xs, p: sorted(xs)[int(p * (len(xs) - 1))]
ids = [c["id"] for c in json.loads(subprocess.check_output([B, "ctl", "ls", "--json"]))]
live = len(ids)
wall, inproc = [], []
for cid in ids[:100]:
    t = time.perf_counter()
    out = subprocess.check_output([B, "ctl", "kill", cid, "--json"])
    wall.append((time.perf_counter() - t) * 1e3)
    inproc.append(json.loads(out)["elapsed_ms"])
floor = []
for _ in range(50):
    t = time.perf_counter(); subprocess.check_output([B, "--version"]); floor.append((time.perf_counter() - t) * 1e3)
print(f"kills with {live}..{live-100} live connections (100 kills, one at a time):")
print(f"  supervisor Kill -> reply (KillReport.elapsed): p50 {q(inproc,.5):.3f} ms, p99 {q(inproc,.99):.3f} ms")
print(f"  `sshvisor ctl kill ID` process wall time:     p50 {q(wall,.5):.2f} ms, p99 {q(wall,.99):.2f} ms")
print(f"  (process start floor, `sshvisor --version`:    p50 {q(floor,.5):.2f} ms)")
ssh = ["ssh", "-F", "/dev/null", "-i", ".sshvisor/client_ed25519", "-o", "IdentitiesOnly=yes",
       "-o", "BatchMode=yes", "-o", "UserKnownHostsFile=.sshvisor/known_hosts", "-p", port,
       "op@127.0.0.1", "sleep 100000"]
ctl, gone, shown = [], [], 0
for _ in range(20):
    p = subprocess.Popen(ssh, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cid = None
    while cid is None:
        d = json.loads(subprocess.check_output([B, "ctl", "ls", "--json"]))
        d = [c for c in d if c["user"] == "op" and c["sessions"] and c["sessions"][0]["kind"] == "exec"]
        cid = d[0]["id"] if d else None
        time.sleep(0.01)
    time.sleep(0.05)
    t = time.perf_counter()
    subprocess.check_output([B, "ctl", "kill", cid, "--reason", "bye"])
    ctl.append((time.perf_counter() - t) * 1e3)
    _, err = p.communicate()
    gone.append((time.perf_counter() - t) * 1e3)
    shown += p.returncode == 255 and b"bye" in err
print(f"OpenSSH client held by `sleep`, killed by `ctl kill` (20 runs):")
print(f"  ctl kill returned after p50 {q(ctl,.5):.2f} ms; ssh exited after p50 {q(gone,.5):.2f} ms (max {max(gone):.2f}); reason printed {shown}/20")
PY
