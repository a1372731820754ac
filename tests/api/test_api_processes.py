"""`python -m api` with KD_API_WORKERS > 1: one SO_REUSEPORT listening socket per process, so the
kernel spreads connections over the processes (issue 13 item 2).

With one socket shared by every process, asyncio's accept loop took all pending connections at once
and a burst of clients landed on whichever process woke first: B4 saw 16/0, 0/64 and 14/2 splits,
one core serving a whole cell. These tests read which process holds each connection from /proc."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections import Counter

import pytest

from harness.services import ROOT, wait_until

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads connections from /proc (Linux)")]
CONNECTIONS = 32
AT_LEAST = 4  # of 32 per process; an even split falls below it with probability ~3e-6


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def established(port: int) -> dict[int, int]:
    """Client port -> inode of the server's end, for the established connections to `port`."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], int(fields[9])
                if int(local.rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # ESTABLISHED
                    found[int(remote.rsplit(":", 1)[1], 16)] = inode
    return found


def listening_inodes(port: int) -> set[int]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            found |= {int(line.split()[9]) for line in f.read().splitlines()[1:]
                      if int(line.split()[1].rsplit(":", 1)[1], 16) == port and line.split()[3] == "0A"}
    return found


def burst(port: int) -> Counter:
    """Open CONNECTIONS connections at once, then one /healthz on each: how many each API process holds."""
    clients = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(CONNECTIONS)]
    try:
        for c in clients:
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        for c in clients:
            assert c.recv(65536).startswith(b"HTTP/1.1 200"), "a connection was not answered"
        return owners(port, [c.getsockname()[1] for c in clients])
    finally:
        for c in clients:
            c.close()


def owners(port: int, client_ports: list[int]) -> Counter:
    server_inode = established(port)
    return Counter(pid for pid in api_processes.pids for client_port in client_ports
                   if server_inode.get(client_port) in socket_inodes(pid))


class api_processes:
    pids: list[int] = []


def wait_serving(stack, count: int, started_before: int = 0) -> list[int]:
    """The supervisor's children once `count` of them (after `started_before` earlier start-ups) say
    their application started."""
    wait_until(lambda: stack.api.output().count("Application startup complete") >= started_before + count,
               what=f"{count} API processes", timeout=90, proc=stack.api)
    listening = listening_inodes(stack.port)
    api_processes.pids = [pid for pid in children(stack.api.pid) if socket_inodes(pid) & listening]
    return api_processes.pids


def test_connections_are_spread_over_the_processes_and_a_dead_one_is_replaced(live_stack):
    stack = live_stack(workers=0, stop_timeout=10, KD_API_WORKERS="2")
    first = wait_serving(stack, 2)
    assert len(first) == 2
    held = burst(stack.port)
    assert sum(held.values()) == CONNECTIONS
    assert len(held) == 2 and min(held.values()) >= AT_LEAST, f"connections per process: {dict(held)}"

    os.kill(first[0], signal.SIGKILL)  # the supervisor replaces it, on the same socket
    replaced = wait_serving(stack, 1, started_before=2)
    assert first[0] not in replaced and first[1] in replaced and len(replaced) == 2
    assert "died" in stack.api.output()
    held = burst(stack.port)
    assert sum(held.values()) == CONNECTIONS
    assert len(held) == 2 and min(held.values()) >= AT_LEAST, f"connections per process: {dict(held)}"

    stack.stop()  # SIGTERM: the supervisor stops its processes and exits
    assert stack.api.popen.returncode == 0
    assert not any(os.path.exists(f"/proc/{pid}") for pid in replaced)


@pytest.mark.parametrize("workers", ["2", "1"])
def test_a_second_api_on_the_same_port_is_refused(live_stack, workers):
    """SO_REUSEPORT would let a second instance join the first's group and take half its clients: the
    port is probed with a plain bind first, so it fails as a single process does."""
    stack = live_stack(workers=0, stop_timeout=10, KD_API_WORKERS="2")
    second = subprocess.run([sys.executable, "-m", "api"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**stack.env, "KD_API_WORKERS": workers})
    assert second.returncode != 0
    assert f"cannot listen on 127.0.0.1:{stack.port}" in second.stderr
    assert "Traceback" not in second.stderr
    assert stack.client().get("/healthz").status_code == 200
