#!/usr/bin/env python3
"""Functional check of one peer server, with the OpenSSH client (loopback only, small load).

    python3 bench/peers/check.py asyncssh|otp|sshd [--port N] [--sessions 20] [--churn 50]

Makes keys in a temp dir, starts the peer, then: exec output + exit status, auth refusals,
N parallel `sleep` sessions, control `count`/`list`/`kill`/`killall`/bad request (for sshd: SIGTERM
to the per-connection sshd process instead), sequential `true` churn, and whether the `sleep`
children outlive the kills; asyncssh and otp also: the in-process `@wait` command (exit 0 on EOF,
no output, N held sessions add no child process, kill ends the client). Prints one line per check
and `N passed, N failed` at the end.
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)


def wait_for(pred, timeout=10.0, step=0.005):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


class Control:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.f = self.s.makefile("rwb", buffering=0)

    def req(self, line):
        self.f.write(line.encode() + b"\n")
        return self.f.readline().decode().rstrip("\n")


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def procs_with(*cmdlines):
    """Processes whose command line is one of `cmdlines` (exactly; so not the ssh clients)."""
    return [int(d) for d in os.listdir("/proc") if d.isdigit() and cmdline(int(d)) in cmdlines]


def descendants(pid):
    return [d for c in children(pid) for d in [c, *descendants(c)]]


def tree(pid, depth=0):
    lines = [f"{'  ' * depth}{pid} {cmdline(pid)[:90]}"]
    for c in children(pid):
        lines += tree(c, depth + 1)
    return lines


class SshdControl:
    """Control-socket stand-in for sshd: a connection is a child of the listener
    (`sshd: root@notty` for a root login, `sshd: USER [priv]` for another account)."""

    def __init__(self, listener):
        self.listener = listener

    def conns(self):
        return [p for p in children(self.listener) if "[priv]" in cmdline(p) or "@" in cmdline(p)]

    def req(self, line):
        w = line.split()
        if w == ["count"]:
            return f"ok {len(self.conns())}"
        if w == ["list"]:
            return " ".join(["ok", *map(str, self.conns())])
        if len(w) == 2 and w[0] == "kill":
            pid = int(w[1]) if w[1].isdigit() else None
            if pid not in self.conns():
                return f"err unknown {w[1]}"
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not os.path.exists(f"/proc/{pid}") or pid not in children(self.listener))
            return "ok"
        if w == ["killall"]:
            pids = self.conns()
            for pid in pids:
                os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not any(p in children(self.listener) for p in pids))
            return f"ok {len(pids)}"
        return "err bad request"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["asyncssh", "otp", "sshd"])
    ap.add_argument("--port", type=int, default=24000 + os.getpid() % 1000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--churn", type=int, default=50)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix=f"peer-{a.kind}-")
    os.chdir(work)
    for name in ("hostkey", "client", "other"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", name], check=True)
    with open("client.pub") as src, open("authorized_keys", "w") as dst:
        dst.write(src.read())
    common = ["--listen", f"127.0.0.1:{a.port}", "--host-key", f"{work}/hostkey",
              "--authorized-keys", f"{work}/authorized_keys"]
    ctl_path = f"{work}/ctl.sock"
    if a.kind == "asyncssh":
        cmd = [sys.executable, f"{HERE}/asyncssh_server.py", *common, "--control", ctl_path]
    elif a.kind == "otp":
        cmd = [f"{HERE}/otp_server.sh", *common, "--control", ctl_path]
    else:
        cmd = [f"{HERE}/sshd.sh", *common, "--dir", f"{work}/sshd"]
    out = open("server.out", "w+")
    err = open("server.err", "w+")
    env = dict(os.environ, OTP_PEER_DIR=f"{work}/otp")  # so the OTP build dir goes with `work`
    server = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True, env=env)

    def port_open():
        try:
            socket.create_connection(("127.0.0.1", a.port), timeout=1).close()
            return True
        except OSError:
            return False

    t0 = time.monotonic()
    if a.kind == "sshd":
        ready = wait_for(port_open, 30)
    else:
        ready = wait_for(lambda: "listening on" in open("server.out").read(), 60)
    check("server ready", bool(ready), f"{time.monotonic() - t0:.2f}s, pid {server.pid}")
    if not ready:
        print(open("server.err").read())
        server.kill()
        return finish()

    ssh = ["ssh", "-F", "/dev/null", "-i", f"{work}/client", "-o", "IdentitiesOnly=yes",
           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-p", str(a.port)]
    user = os.environ.get("USER", "root") if a.kind == "sshd" and os.geteuid() != 0 else "bench"
    if a.kind == "sshd" and os.geteuid() == 0:
        user = "root"  # sshd only logs in real users
    dest = f"{user}@127.0.0.1"

    r = subprocess.run([*ssh, dest, "echo hi; echo oops >&2; exit 3"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=30)
    if a.kind == "otp":  # the port merges stderr into stdout
        ok = r.stdout == "hi\noops\n" and r.returncode == 3
    else:
        ok = r.stdout == "hi\n" and r.returncode == 3 and "oops" in r.stderr
    check("exec echo hi; echo oops >&2; exit 3", ok, f"stdout={r.stdout!r} rc={r.returncode} stderr={r.stderr!r}")
    r = subprocess.run([*ssh, dest, "head -c 300000 /dev/zero"], capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=30)
    check("exec 300 kB output", len(r.stdout) == 300000 and r.returncode == 0, f"{len(r.stdout)} bytes")
    r = subprocess.run([*ssh, dest, "head -n 1"], input="abc\n", capture_output=True, text=True, timeout=30)
    check("exec stdin to child", r.stdout == "abc\n", repr(r.stdout))
    try:
        r = subprocess.run([*ssh, dest, "cat"], input="abc\n", capture_output=True, text=True, timeout=5)
        eof = r.stdout == "abc\n" and r.returncode == 0
    except subprocess.TimeoutExpired:
        eof = False
    if a.kind == "otp":
        print(f"INFO client EOF reaches the child (`cat` ends): {eof} (a port's stdin cannot be half-closed)")
    else:
        check("client EOF reaches the child (`cat` ends)", eof)
    r = subprocess.run([*ssh[:3], "-i", f"{work}/other", *ssh[5:], dest, "true"], capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=30)
    check("unknown key refused", r.returncode == 255, r.stderr.strip())
    r = subprocess.run([*ssh, "-o", "PubkeyAuthentication=no", dest, "true"], capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=30)
    check("no-key (password/kbdint) refused", r.returncode == 255, r.stderr.strip())

    tag = str(100000 + os.getpid())  # `sleep TAG`: lets us find our children in /proc
    clients = [subprocess.Popen([*ssh, dest, f"sleep {tag}"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(a.sessions)]
    ctl = SshdControl(server.pid) if a.kind == "sshd" else Control(ctl_path)
    n = a.sessions
    got = wait_for(lambda: ctl.req("count") == f"ok {n}" and len(procs_with(f"sleep {tag}")) == n, 30)
    check(f"count with {n} sessions", bool(got), ctl.req("count"))
    sleeps_before = procs_with(f"sleep {tag}", f"sh -c sleep {tag}", f"/bin/sh -c sleep {tag}")
    print("  server process tree (first lines):")
    for line in tree(server.pid)[:10]:
        print("   ", line)
    listing = ctl.req("list")
    ids = listing.split()[1:]
    check("list", listing.startswith("ok") and len(ids) == n and len(set(ids)) == n, listing[:80])

    t = time.monotonic()
    reply = ctl.req(f"kill {ids[0]}")
    t_kill = time.monotonic() - t
    exited = wait_for(lambda: sum(c.poll() is not None for c in clients) == 1, 10)
    t_exit = time.monotonic() - t
    check("kill one", reply == "ok" and bool(exited) and ctl.req("count") == f"ok {n - 1}",
          f"reply={reply!r} in {t_kill * 1000:.1f} ms, 1 client exited after {t_exit * 1000:.1f} ms, "
          f"count now {ctl.req('count')!r}")
    check("kill unknown", ctl.req("kill nosuch").startswith("err"))

    t = time.monotonic()
    reply = ctl.req("killall")
    t_kill = time.monotonic() - t
    done = wait_for(lambda: all(c.poll() is not None for c in clients), 15)
    t_exit = time.monotonic() - t
    check("killall", reply == f"ok {n - 1}" and bool(done) and ctl.req("count") == "ok 0",
          f"reply={reply!r} in {t_kill * 1000:.1f} ms, all clients exited after {t_exit * 1000:.1f} ms")
    check("list empty", ctl.req("list") == "ok")
    codes = sorted({c.returncode for c in clients})
    print(f"  killed clients' exit codes: {codes}")

    if a.kind != "sshd":
        bad = ctl.req("frobnicate now")
        check("bad request -> err", bad.startswith("err"), bad)
        check("empty line -> err", ctl.req("").startswith("err"))
        second = Control(ctl_path)
        check("second control client", second.req("count") == "ok 0")
    r = subprocess.run([*ssh, dest, "echo still"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=30)
    check("still serving after bad request", r.stdout == "still\n")

    t = time.monotonic()
    fails = 0
    for _ in range(a.churn):
        r = subprocess.run([*ssh, dest, "true"], stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        fails += r.returncode != 0
    dt = time.monotonic() - t
    check(f"churn {a.churn} x true", fails == 0, f"{fails} failed, {dt / a.churn * 1000:.1f} ms each")
    check("count 0 after churn", bool(wait_for(lambda: ctl.req("count") == "ok 0", 5)), ctl.req("count"))

    if a.kind != "sshd":
        check_wait(a, ssh, dest, ctl, server.pid)

    time.sleep(0.5)
    survivors = procs_with(f"sleep {tag}", f"sh -c sleep {tag}", f"/bin/sh -c sleep {tag}")
    print(f"  `sleep` children: {len(sleeps_before)} before the kills, {len(survivors)} still alive after "
          f"(`sh -c` and `sleep` processes counted)")
    for pid in survivors:  # clean up what we started
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass

    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
    errtext = open(f"{work}/server.err").read().strip()
    if errtext:
        print("  server stderr (last lines):\n   " + "\n   ".join(errtext.splitlines()[-5:]))
    if not a.keep:
        subprocess.run(["rm", "-rf", work])
    return finish()


def check_wait(a, ssh, dest, ctl, server_pid):
    """The in-process exec command `@wait`: no child, stdin dropped, exit 0 at the client's EOF."""
    r = subprocess.run([*ssh, dest, "@wait"], stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    check("@wait < /dev/null: exit 0, no output", r.returncode == 0 and r.stdout == b"" and r.stderr == b"",
          f"rc={r.returncode} stdout={r.stdout[:40]!r} stderr={r.stderr[:80]!r}")
    r = subprocess.run([*ssh, dest, "@wait"], input=b"x" * 1_000_000, capture_output=True, timeout=30)
    check("@wait with 1 MB stdin: exit 0, no output", r.returncode == 0 and r.stdout == b"",
          f"rc={r.returncode} stdout={len(r.stdout)} bytes")

    before = descendants(server_pid)
    n = a.sessions
    held = [subprocess.Popen([*ssh, dest, "@wait"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for _ in range(n)]
    up = wait_for(lambda: ctl.req("count") == f"ok {n}", 30)
    time.sleep(0.5)  # the exec requests come after the connections count
    during = descendants(server_pid)
    alive = sum(c.poll() is None for c in held)
    new = sorted(set(during) - set(before))
    check(f"{n} held @wait sessions add no child process", bool(up) and alive == n and not new,
          f"{ctl.req('count')!r}, {alive} clients alive, new processes under the server: {new} "
          f"({len(before)} there before)")
    ids = ctl.req("list").split()[1:]
    reply = ctl.req(f"kill {ids[0]}") if ids else "no ids"
    exited = wait_for(lambda: sum(c.poll() is not None for c in held) == 1, 10)
    check("kill one @wait session ends its client", reply == "ok" and bool(exited),
          f"reply={reply!r}, exit codes {sorted({c.returncode for c in held if c.poll() is not None})}")
    for c in held:  # EOF on the rest: each ends with status 0
        if c.poll() is None:
            c.stdin.close()
    done = wait_for(lambda: all(c.poll() is not None for c in held), 15)
    codes = [c.returncode for c in held if c.returncode != 0]
    check(f"EOF ends the other {n - 1} @wait sessions with 0", bool(done) and len(codes) == 1,
          f"non-zero exit codes: {codes}")
    for c in held:
        if c.poll() is None:
            c.kill()
        if c.stdin:
            c.stdin.close()
    check("count 0 after @wait", bool(wait_for(lambda: ctl.req("count") == "ok 0", 5)), ctl.req("count"))


def finish():
    p = sum(results)
    f = len(results) - p
    print(f"{p} passed, {f} failed")
    return 1 if f else 0


if __name__ == "__main__":
    sys.exit(main())
