#!/usr/bin/env python3
"""Peer server for the side-by-side benchmark: the hand-written asyncssh recipe that sshvisor replaces.

A dict of live connections filled by the `acceptor` callback and emptied by `connection_lost`;
kill = conn.close() + await conn.wait_closed(); killall = close all, then gather all wait_closed().
Exec runs `sh -c CMD` with asyncio.create_subprocess_exec and process.redirect(), then sends the
exit status. Written plainly, the way a user of asyncssh would; no tuning.
The exec command `@wait` runs in-process, no child: stdin is read and dropped until the client's
EOF, then exit status 0 (what the benchmark's held sessions run, to cost no descriptors for pipes).

    python3 bench/peers/asyncssh_server.py --listen 127.0.0.1:PORT --host-key FILE \
        --authorized-keys FILE --control PATH

Control socket (Unix stream, mode 0600), one request per line:
    count -> ok N | list -> ok ID... | kill ID -> ok / err unknown ID | killall -> ok N
"""
import argparse
import asyncio
import itertools
import os
import sys

import asyncssh

connections = {}  # id -> SSHServerConnection, insertion order = oldest first
_ids = itertools.count(1)
WAIT = "@wait"  # the in-process exec command


class Server(asyncssh.SSHServer):
    """Only here to hear connection_lost; auth is asyncssh's own authorized_client_keys check."""

    def __init__(self):
        self.conn_id = None

    def connection_lost(self, exc):
        if self.conn_id is not None:
            connections.pop(self.conn_id, None)


def acceptor(conn):
    conn_id = f"c{next(_ids)}"
    conn.get_owner().conn_id = conn_id
    connections[conn_id] = conn


async def handle_process(process):
    cmd = process.command
    if cmd is None:  # shell requests are not supported
        process.stderr.write(b"only exec is supported\n")
        process.exit(1)
        return
    if cmd == WAIT:
        while await process.stdin.read(65536):  # b'' at the client's EOF
            pass
        process.stdout.write_eof()
        process.exit(0)
        return
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", cmd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    # send_eof=False: with two sources, the first one to end must not send the channel EOF.
    await process.redirect(stdin=proc.stdin, stdout=proc.stdout, stderr=proc.stderr, send_eof=False)
    await process.stdout.drain()  # returns once the child's stdout is at EOF and forwarded
    await process.stderr.drain()
    status = await proc.wait()
    process.stdout.write_eof()  # EOF, then exit() sends exit-status and CLOSE (OpenSSH's order)
    process.exit(status)
    await process.wait_closed()  # also runs asyncssh's cleanup of the stdin redirect


async def kill(conn):
    conn.close()
    await conn.wait_closed()


async def handle_control(reader, writer):
    try:
        while line := await reader.readline():
            words = line.decode(errors="replace").split()
            if words == ["count"]:
                reply = f"ok {len(connections)}"
            elif words == ["list"]:
                reply = " ".join(["ok", *connections])
            elif len(words) == 2 and words[0] == "kill":
                conn = connections.get(words[1])
                if conn is None:
                    reply = f"err unknown {words[1]}"
                else:
                    await kill(conn)
                    reply = "ok"
            elif words == ["killall"]:
                conns = list(connections.values())
                await asyncio.gather(*(kill(c) for c in conns))
                reply = f"ok {len(conns)}"
            else:
                reply = f"err bad request: {' '.join(words)}"
            writer.write(reply.encode() + b"\n")
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True, help="HOST:PORT")
    p.add_argument("--host-key", required=True)
    p.add_argument("--authorized-keys", required=True)
    p.add_argument("--control", required=True)
    args = p.parse_args()
    host, port = args.listen.rsplit(":", 1)

    await asyncssh.create_server(
        Server, host, int(port),
        server_host_keys=[args.host_key],
        authorized_client_keys=args.authorized_keys,
        acceptor=acceptor,
        process_factory=handle_process,
        encoding=None,  # bytes in, bytes out
    )

    if os.path.exists(args.control):
        os.unlink(args.control)
    control = await asyncio.start_unix_server(handle_control, path=args.control)
    os.chmod(args.control, 0o600)

    print(f"listening on {host}:{port}", flush=True)
    async with control:
        await control.serve_forever()


if __name__ == "__main__":
    # Python 3.11's default child watcher starts one thread per live child; the pidfd watcher
    # (the default from 3.12 on where pidfds exist) is what a careful user would pick, and it
    # keeps thousands of sessions from costing thousands of threads.
    if sys.version_info < (3, 12) and hasattr(asyncio, "PidfdChildWatcher"):
        asyncio.set_child_watcher(asyncio.PidfdChildWatcher())
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
