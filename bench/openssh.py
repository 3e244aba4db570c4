"""The OpenSSH client in the benchmarks: its command line against a `procs.Server`, and a held
client killed through the control socket, timed until its `ssh` process has exited."""
import os
import select
import subprocess
import time


def ssh_argv(server, command, user="op"):
    """`ssh` to `server` as `user` running `command`, with the server's client key only."""
    return ["ssh", "-F", "/dev/null", "-i", server.key, "-o", "IdentitiesOnly=yes", "-o",
            "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
            "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-p", str(server.port),
            f"{user}@127.0.0.1", command]


def hold(server, command="sleep 100000"):
    """An `ssh` client running `command` on `server`, in the background."""
    return subprocess.Popen(ssh_argv(server, command), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def exec_session(ctl, user="op"):
    """The ID of a connection of `user` whose exec session has its processes running, asked over
    `ctl` (a `fleet.Ctl`), or None."""
    result, _, _, _ = ctl.ok("ls", filter={"user": user})
    live = [x for x in result if x["sessions"] and x["sessions"][0].get("kind") == "exec"
            and (x["sessions"][0].get("processes") or 0) > 0]
    return live[0]["id"] if live else None


def kill_timed(ctl, proc, cid, reason):
    """Kills `cid` over `ctl` and waits for the `ssh` process `proc` to exit: (response, round
    trip ms, ms until the exit, whether `ssh` printed the reason)."""
    fd = os.pidfd_open(proc.pid)
    t0 = time.perf_counter()
    r, ms, _, _ = ctl.call("kill", target=cid, reason=reason)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.poll(30000)
    gone = (time.perf_counter() - t0) * 1e3
    os.close(fd)
    _, err = proc.communicate(timeout=30)
    return r, ms, gone, reason.encode() in err
