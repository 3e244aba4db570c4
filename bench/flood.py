#!/usr/bin/env python3
"""A handshake flood from one address against `sshvisor serve`, beside a legitimate user.

What it measures (docs/BENCHMARKS.md, "Handshake flood and per-source penalties"): a flooder on
127.0.0.2 opens connections as fast as it can and makes the server do a key exchange on each
(SSH banner, KEXINIT, then KEX_ECDH_INIT with curve25519-sha256, as ssh-audit's DHEat test
does: the server computes the shared secret and signs the exchange hash, the flooder leaves
without reading further). Meanwhile a legitimate user on 127.0.0.3 logs in with the OpenSSH
client (`ssh -b 127.0.0.3 ... true`) every 0.5 s. For each arm, a fresh `sshvisor serve`
(release build, default configuration but for `[penalties]`):

- `no flood`: the legitimate user alone (penalties on, the defaults);
- `flood, penalties off`: `[penalties] enabled = false`;
- `flood, penalties on`: the defaults.

Reported per arm: the server's CPU seconds over the arm (utime + stime from /proc/PID/stat),
the legitimate login's wall time (median, p90, failures), and the flooder's key exchanges
completed and connections refused at the door.

The flooder runs at `nice 19`: on this one machine it shares two cores with the server and the
legitimate client, and at normal priority its own spinning (it reconnects at once when refused)
would slow the legitimate login as much as the server's work does. Niced, it stands for an
attacker on another machine: what the legitimate user meets is the server's load.

Usage: bench/flood.py [--secs 20] [--flooders 2] [--concurrency 16] [--bin target/release/sshvisor]
(build first: cargo build --release -p sshvisor). Loopback only; the flooder is a child
process of its own so that it does not share an interpreter with the timing loop.
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

KEX = "curve25519-sha256"
HOSTKEY = "ssh-ed25519"
CIPHERS = "chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-ctr"
IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h
MACS = "hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com,hmac-sha2-256"


def packet(payload: bytes) -> bytes:
    pad = 8 - ((5 + len(payload)) % 8)
    if pad < 4:
        pad += 8
    return struct.pack(">IB", 1 + len(payload) + pad, pad) + payload + os.urandom(pad)


def namelist(text: str) -> bytes:
    b = text.encode()
    return struct.pack(">I", len(b)) + b


def client_hello() -> bytes:
    lists = [KEX, HOSTKEY, CIPHERS, CIPHERS, MACS, MACS, "none", "none", "", ""]
    kexinit = bytes([20]) + os.urandom(16) + b"".join(map(namelist, lists)) + b"\0" + b"\0" * 4
    # Any 32 bytes are a curve25519 public value to the server: it does the work either way.
    ecdh_init = bytes([30]) + struct.pack(">I", 32) + os.urandom(32)
    return b"SSH-2.0-flood\r\n" + packet(kexinit) + packet(ecdh_init)


async def one_handshake(host: str, port: int, source: str) -> str:
    """One connection: 'kex' when the server answered the key exchange, 'refused' when it sent
    a refusal line, 'other' otherwise."""
    sock = socket.socket()
    # The kernel picks the source port at connect, by the whole 4-tuple: a bind to port 0
    # would scan for a port no socket of this address holds, which grows slow (and eats the
    # flooder's CPU) once tens of thousands sit in TIME_WAIT.
    sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    # Closed with a reset, so the flooder leaves no TIME_WAIT behind either.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.bind((source, 0))
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(client_hello())
        line = await reader.readline()
        if line.startswith(b"sshvisor: refused"):
            return "refused"
        if not line.startswith(b"SSH-"):
            return "other"
        while True:  # packets until KEX_ECDH_REPLY (31)
            head = await reader.readexactly(5)
            length, _pad = struct.unpack(">IB", head)
            body = await reader.readexactly(length - 1)
            if body[0] == 31:
                return "kex"
    finally:
        writer.close()


async def flood(host: str, port: int, source: str, secs: float, concurrency: int) -> dict:
    counts = {"kex": 0, "refused": 0, "other": 0, "error": 0}
    deadline = time.monotonic() + secs

    async def worker():
        while time.monotonic() < deadline:
            try:
                what = await asyncio.wait_for(one_handshake(host, port, source), 5)
                counts[what] += 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                counts["error"] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command: state is field 3, utime 14 and stime 15 (1-based, man proc).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_arm(args, name: str, penalties_toml: str, with_flood: bool) -> dict:
    work = tempfile.mkdtemp(prefix="sshvisor-flood-")
    cfg = os.path.join(work, "flood.toml")
    with open(cfg, "w") as f:
        f.write(penalties_toml)
    port = free_port()
    log = open(os.path.join(work, "serve.log"), "w")
    server = subprocess.Popen([args.bin, "serve", "--listen", f"127.0.0.1:{port}", "--config", cfg],
                              cwd=work, stdout=log, stderr=subprocess.STDOUT)
    state = os.path.join(work, ".sshvisor")
    for _ in range(200):
        if os.path.exists(os.path.join(state, "ctl.sock")) and os.path.exists(os.path.join(state, "known_hosts")):
            break
        time.sleep(0.05)
    ssh = ["ssh", "-F", "/dev/null", "-b", "127.0.0.3", "-i", os.path.join(state, "client_ed25519"),
           "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
           "-o", f"UserKnownHostsFile={os.path.join(state, 'known_hosts')}", "-o", "ConnectTimeout=30",
           "-p", str(port), "bench@127.0.0.1", "true"]
    cpu0 = cpu_seconds(server.pid)
    flooders = [
        subprocess.Popen([sys.executable, __file__, "--flood-only", "--port", str(port),
                          "--secs", str(args.secs), "--concurrency", str(args.concurrency)],
                         stdout=subprocess.PIPE, text=True, preexec_fn=lambda: os.nice(19))
        for _ in range(args.flooders if with_flood else 0)
    ]
    times, failures = [], 0
    start = time.monotonic()
    while time.monotonic() - start < args.secs:
        t0 = time.monotonic()
        ok = subprocess.run(ssh, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, timeout=60).returncode == 0
        took = time.monotonic() - t0
        if ok:
            times.append(took)
        else:
            failures += 1
        time.sleep(max(0.0, 0.5 - took))
    counts = {}
    for flooder in flooders:
        for k, v in json.loads(flooder.communicate()[0]).items():
            counts[k] = round(counts.get(k, 0) + v, 2)
    cpu1 = cpu_seconds(server.pid)
    stats = subprocess.run([args.bin, "ctl", "--state-dir", state, "stats", "--json"],
                           capture_output=True, text=True)
    penalties = json.loads(stats.stdout).get("penalties") if stats.returncode == 0 else None
    server.terminate()
    server.wait(timeout=30)
    times.sort()
    q = lambda p: times[min(len(times) - 1, int(p * len(times)))] * 1e3 if times else float("nan")
    return {"arm": name, "cpu_s": round(cpu1 - cpu0, 2), "logins": len(times), "failed": failures,
            "times_ms": [round(t * 1e3) for t in times],
            "median_ms": statistics.median(times) * 1e3 if times else float("nan"), "p90_ms": q(0.9),
            "flood": counts, "penalties": penalties}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secs", type=float, default=20)
    ap.add_argument("--concurrency", type=int, default=16, help="connections at once per flooder")
    ap.add_argument("--flooders", type=int, default=2, help="flooder processes")
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "sshvisor"))
    ap.add_argument("--flood-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.flood_only:
        counts = asyncio.run(flood("127.0.0.1", args.port, "127.0.0.2", args.secs, args.concurrency))
        counts["cpu_s"] = round(time.process_time(), 2)
        print(json.dumps(counts))
        return
    args.bin = os.path.abspath(args.bin)
    arms = [
        ("no flood", "", False),
        ("flood, penalties off", "[penalties]\nenabled = false\n", True),
        ("flood, penalties on", "", True),
    ]
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.secs:g} s per arm, "
          f"{args.flooders} flooders x {args.concurrency} connections at once")
    print("| arm | server CPU s | logins ok / failed | login median ms | login p90 ms | flood key exchanges | flood refused at the door | flooder CPU s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, toml, with_flood in arms:
        r = run_arm(args, name, toml, with_flood)
        f = r["flood"]
        print(f"| {name} | {r['cpu_s']:.2f} | {r['logins']} / {r['failed']} | {r['median_ms']:.0f} | "
              f"{r['p90_ms']:.0f} | {f.get('kex', '-')} | {f.get('refused', '-')} | {f.get('cpu_s', '-')} |", flush=True)
        print(f"<!-- {json.dumps(r)} -->", flush=True)


if __name__ == "__main__":
    main()
