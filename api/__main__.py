"""`python -m api`: serve the API with uvicorn on KD_API_HOST:KD_API_PORT, KD_API_WORKERS processes.

Every listening socket is bound here, as an IPPROTO_TCP socket. uvicorn's own bind uses protocol 0;
accepted connections inherit it and asyncio sets TCP_NODELAY only when the protocol is IPPROTO_TCP, so
every keep-alive response after the first waited for the client's delayed ACK (about 40 ms: Nagle).

With one process, uvicorn serves the one socket. With KD_API_WORKERS = N > 1, `ReusePortSupervisor`
(uvicorn's supervisor, one socket per process slot) binds N sockets to the address with SO_REUSEPORT,
so the kernel spreads new connections over the processes by their address hash. When all processes
accepted from one shared socket, asyncio's accept loop took every pending connection at once, and
whichever process woke first served most of a burst of clients on one core. The supervisor holds
each slot's socket: a process that dies is replaced on the same socket, and connections that arrive
meanwhile wait in its queue instead of being refused.

The Dockerfile and docker-compose.yml start the API through this module.
"""

from __future__ import annotations

import logging
import socket
import sys

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from jobs.settings import settings

logger = logging.getLogger("uvicorn.error")
LISTEN_BACKLOG = 2048  # uvicorn's default; asyncio listens again with the same value


def listening_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound TCP listening socket that its accepted connections (and child processes) inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def reuse_port_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` sockets on (host, port) in one SO_REUSEPORT group. A plain socket binds first, so a
    port that anything listens on already (another `python -m api` included, whose own group would
    otherwise take this one's sockets in and share its clients) is an error, as with one process."""
    listening_socket(host, port).close()
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(listening_socket(host, port, reuse_port=True))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class ReusePortSupervisor(Multiprocess):
    """uvicorn's multiprocess supervisor (health pings, SIGHUP restarts, SIGTERM/SIGINT shutdown,
    SIGTTIN/SIGTTOU to add or remove a process), with a listening socket of its own per process slot."""

    def __init__(self, config: uvicorn.Config, host: str, port: int):
        super().__init__(config, sockets=[])
        self.host, self.port = host, port
        self.slot_sockets = reuse_port_sockets(host, port, self.processes_num)

    def _start(self, slot: int) -> Process:
        process = Process(self.config, [self.slot_sockets[slot]])
        process.start()
        return process

    def init_processes(self) -> None:
        self.processes = [self._start(slot) for slot in range(len(self.slot_sockets))]

    def keep_subprocess_alive(self) -> None:
        """As uvicorn's: a dead or hung process is replaced, on its slot's socket; a process that
        failed before it served (app, settings) stops the supervisor."""
        for slot, process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                logger.error(f"Child process [{process.pid}] failed to start, stopping the parent process.")
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logger.info(f"Child process [{process.pid}] died")
            self.processes[slot] = self._start(slot)

    def restart_all(self) -> None:
        """SIGHUP: each process is replaced by a new one on the same socket, which serves before the
        old one is stopped."""
        for slot, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._start(slot)
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                if not self.should_exit.is_set():
                    logger.error(f"New child process [{new.pid}] was not ready in time; keeping worker "
                                 f"[{old.pid}] and aborting the restart.")
                return
            old.terminate()
            old.join()
            self.processes[slot] = new

    def handle_ttin(self) -> None:
        logger.info("Received SIGTTIN, increasing the number of processes.")
        self.slot_sockets.append(listening_socket(self.host, self.port, reuse_port=True))
        self.processes.append(self._start(len(self.slot_sockets) - 1))
        self.processes_num = len(self.processes)

    def handle_ttou(self) -> None:
        """The last slot's process is stopped, then its socket closed: connections still queued on it
        are reset, as when any listener closes."""
        logger.info("Received SIGTTOU, decreasing number of processes.")
        if len(self.processes) <= 1:
            logger.info("Already reached one process, cannot decrease the number of processes anymore.")
            return
        process = self.processes.pop()
        process.terminate()
        process.join()
        self.slot_sockets.pop().close()
        self.processes_num = len(self.processes)

    def run(self) -> None:
        try:
            super().run()
        finally:
            for sock in self.slot_sockets:
                sock.close()


def main() -> None:
    config = uvicorn.Config("api.app:create_app", factory=True, host=settings.api_host, port=settings.api_port,
                            workers=settings.api_workers, log_level="info", proxy_headers=True,
                            backlog=LISTEN_BACKLOG, access_log=settings.api_access_log)
    try:
        if settings.api_workers > 1:
            supervisor = ReusePortSupervisor(config, settings.api_host, settings.api_port)
        else:
            sock = listening_socket(settings.api_host, settings.api_port)
    except OSError as exc:
        sys.exit(f"cannot listen on {settings.api_host}:{settings.api_port}: {exc.strerror or exc}")
    if settings.api_workers > 1:
        supervisor.run()
    else:
        uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
