#!/usr/bin/env bash
# Peer server for the side-by-side benchmark: OpenSSH sshd (Debian bookworm: OpenSSH 9.2p1) run by hand,
# not as the system service. Debian: apt-get install -y openssh-server
#
#   bench/peers/sshd.sh --listen 127.0.0.1:PORT --host-key FILE --authorized-keys FILE --dir WORKDIR
#
# Writes WORKDIR/sshd_config (+ a 0600 copy of the host key, the pid file) and `exec`s
# `/usr/sbin/sshd -D -e -f WORKDIR/sshd_config`, so this script's PID is the listener.
# Public-key auth only; AuthorizedKeysFile is the given file for every user. sshd logs in real
# accounts only: connect as the user that runs it (root here). Run as a normal user, sshd can only
# log that user in (no privilege separation then). The command runs as `$SHELL -c CMD` with the
# user's login shell (bash for root), not `sh -c`.
#
# No control socket. A connection is killed by SIGTERM to its own sshd process, the child of the
# listener (`sshd: root@notty` for a root login, see below); the listener goes on serving.
#
# Processes, as seen with `ps -ef --forest` (sshd run as root, two `ssh root@127.0.0.1 ...`):
#   sshd: /usr/sbin/sshd -D -e -f .../sshd_config [listener] 0 of 10000-10000 startups   (this PID)
#    \_ sshd: root@notty             per connection, child of the listener  <- SIGTERM here
#    |   \_ bash -c sleep 1000; true  the command (the user's shell) ...
#    |       \_ sleep 1000
#    \_ sshd: root@notty
#        \_ sleep 1000                ... bash execs a lone simple command itself
# A root login has no post-auth privilege separation, so it is one sshd process per connection.
# A connection not yet authenticated shows as `sshd: [accepted]` (the listener counts it in
# "N of 10000-10000 startups"); during key exchange/auth OpenSSH adds an unprivileged `[net]` child.
# A non-root account (not tried here) would get two: `sshd: USER [priv]` (child of the listener,
# the one to SIGTERM) and `sshd: USER@notty` under it. Run as a normal user, sshd has no privsep:
# listener -> `sshd: USER@notty` (name may vary) -> command.
# SIGTERM to the per-connection sshd closes the connection (the client exits at once) but does
# not kill the command: `bash -c ...`/`sleep` are reparented to init and live on.
# For memory, the server is the listener plus the per-connection sshd processes (not the command).
set -euo pipefail
LISTEN= HOST_KEY= AUTH_KEYS= DIR=
while [ $# -gt 0 ]; do
  case $1 in
    --listen) LISTEN=$2; shift 2 ;;
    --host-key) HOST_KEY=$2; shift 2 ;;
    --authorized-keys) AUTH_KEYS=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    *) echo "sshd.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$LISTEN" ] || [ -z "$HOST_KEY" ] || [ -z "$AUTH_KEYS" ] || [ -z "$DIR" ]; then
  echo "usage: $0 --listen HOST:PORT --host-key FILE --authorized-keys FILE --dir WORKDIR" >&2
  exit 2
fi
mkdir -p "$DIR"
DIR=$(realpath "$DIR")
AUTH_KEYS=$(realpath "$AUTH_KEYS")
install -m 600 "$HOST_KEY" "$DIR/ssh_host_ed25519_key"
# Privilege separation directory (pre-auth chroot); only needed, and only creatable, as root.
if [ "$(id -u)" = 0 ] && [ ! -d /run/sshd ]; then
  mkdir -p /run/sshd && chmod 755 /run/sshd
fi
cat >"$DIR/sshd_config" <<EOF
Port ${LISTEN##*:}
ListenAddress ${LISTEN%:*}
HostKey $DIR/ssh_host_ed25519_key
PidFile $DIR/sshd.pid
AuthorizedKeysFile $AUTH_KEYS
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
UseDNS no
MaxStartups 10000:30:10000
MaxSessions 10000
X11Forwarding no
AllowTcpForwarding no
PrintMotd no
PrintLastLog no
LogLevel ERROR
EOF
exec /usr/sbin/sshd -D -e -f "$DIR/sshd_config"
