#!/usr/bin/env bash
# The side-by-side benchmark: installs what the peers need (asyncssh from PyPI; erlang-base,
# erlang-ssh and openssh-server from Debian), builds the release binaries, then runs
# bench/run.py, which starts each server on 127.0.0.1, measures it, and writes
# docs/BENCHMARKS.md (+ .svg plot, + .json raw figures).
#
#   bench/run.sh                 # everything: 100, 1,000, 10,000 connections; 30-60 minutes
#   bench/run.sh --smoke         # a few seconds: proves the script works (sshvisor and bare)
#   bench/run.sh --servers sshvisor,asyncssh --sizes 1000 --repeats 1   # a part
#
# Loopback only; loads stay within 20,000 open files per process (held sessions use the
# in-process `@wait` command: about one descriptor per connection on each side).
set -euo pipefail
cd "$(dirname "$0")/.."
args=("$@")
smoke=0
for a in "$@"; do [ "$a" = "--smoke" ] && smoke=1; done
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if [ "$smoke" = 0 ]; then
  python3 -c 'import asyncssh' 2>/dev/null || python3 -m pip install --quiet asyncssh
  missing=()
  command -v erl >/dev/null || missing+=(erlang-base erlang-ssh)
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  command -v ssh-keygen >/dev/null || missing+=(openssh-client)
  if [ ${#missing[@]} -gt 0 ]; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  # sshd logs in real accounts and runs commands through their shell: a plain account with
  # /bin/sh (root's shell rc files would dominate sshd's figures).
  if [ "$(id -u)" = 0 ] && ! id sshvbench >/dev/null 2>&1; then
    useradd --system --create-home --shell /bin/sh sshvbench
    usermod -p '*' sshvbench
  fi
  if id sshvbench >/dev/null 2>&1; then args+=(--sshd-user sshvbench); fi
  cargo build --release -q -p sshvisor-bench
  args+=(--bench-bin "$PWD/target/release/sshvisor-bench")
fi
ulimit -n "$(ulimit -Hn)"
exec python3 bench/run.py --command-line "bench/run.sh${*:+ $*}" "${args[@]}"
