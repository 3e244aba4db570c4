#!/usr/bin/env bash
# Launcher for the Erlang/OTP ssh peer (otp_server.erl). Debian: apt-get install -y erlang-base erlang-ssh
#
#   bench/peers/otp_server.sh --listen 127.0.0.1:PORT --host-key FILE --authorized-keys FILE --control PATH
#       [--parallel-login]   (OTP's own knob, off by default: logins are then handled one at a time)
#
# Compiles otp_server.erl into a fresh directory (OTP_PEER_DIR, default mktemp -d; it is left behind,
# a few KiB), lays out what OTP wants there (system/ssh_host_ed25519_key, user/authorized_keys), then
# `exec`s erl: this script's PID becomes the beam.smp process (erl -> erlexec -> beam.smp all exec).
#
# Processes that are the server, for memory: beam.smp (this PID) and its child erl_child_setup
# (forked at boot; it forks the port programs). No epmd (no distribution, -start_epmd false).
# Per connection: no OS process, only Erlang processes; per exec session: `sh -c CMD`, a child of
# erl_child_setup (and its own children) -- the session's command, not the server.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
LISTEN= HOST_KEY= AUTH_KEYS= CONTROL= EXTRA=()
while [ $# -gt 0 ]; do
  case $1 in
    --listen) LISTEN=$2; shift 2 ;;
    --host-key) HOST_KEY=$2; shift 2 ;;
    --authorized-keys) AUTH_KEYS=$2; shift 2 ;;
    --control) CONTROL=$2; shift 2 ;;
    --parallel-login) EXTRA+=(--parallel-login); shift ;;
    *) echo "otp_server.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$LISTEN" ] || [ -z "$HOST_KEY" ] || [ -z "$AUTH_KEYS" ] || [ -z "$CONTROL" ]; then
  echo "usage: $0 --listen HOST:PORT --host-key FILE --authorized-keys FILE --control PATH [--parallel-login]" >&2
  exit 2
fi
DIR=${OTP_PEER_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/otp-peer.XXXXXX")}
mkdir -p "$DIR/ebin" "$DIR/system" "$DIR/user"
erlc -o "$DIR/ebin" "$HERE/otp_server.erl"
install -m 600 "$HOST_KEY" "$DIR/system/ssh_host_ed25519_key"
ln -sf "$(realpath "$AUTH_KEYS")" "$DIR/user/authorized_keys"
exec erl -noinput -start_epmd false -pa "$DIR/ebin" -s otp_server main \
  -extra --listen "$LISTEN" --control "$CONTROL" --system-dir "$DIR/system" --user-dir "$DIR/user" \
  ${EXTRA[@]+"${EXTRA[@]}"}
