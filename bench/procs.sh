#!/usr/bin/env bash
# Kill-all, drain, single kills and memory with one real process per session, measured through
# `sshvisor serve` itself (bench/procs.py says what and how). Builds the release binaries of
# this checkout first. Loopback only; the server stays within 20,000 open files.
#
#   bench/procs.sh                       # 250, 500, 1000, 2000 and the most 20,000 files hold; 3 runs each
#   bench/procs.sh 1000 2000             # some sizes
#   bench/procs.sh --smoke               # a few seconds: proves the script works
#   bench/procs.sh --profile perf 2000   # one run per size with perf attached to the kill-all
#   SSHVISOR_BIN=old=/path/to/sshvisor,new=/work/checkout bench/procs.sh 2000
#                                        # two builds side by side, run by run (a checkout
#                                        # means its target/release/sshvisor, built already)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p sshvisor -p sshvisor-bench
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/procs.py "$@"
