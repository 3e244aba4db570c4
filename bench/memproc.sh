#!/usr/bin/env bash
# Memory per held connection with a process session against an in-process one (bench/memproc.py
# says what and how). Builds the release binaries of this checkout first. Loopback only.
#
#   bench/memproc.sh                          # 1,000 connections; serve, embedded-sleep, embedded-wait; 3 runs
#   bench/memproc.sh -n 2000 --variant serve  # one variant, another size
#   bench/memproc.sh --heaptrack DIR --runs 1 # under heaptrack (needs a build without mimalloc)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${NO_BUILD:-}" ]; then cargo build --release -q -p sshvisor -p sshvisor-bench; fi
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/memproc.py "$@"
