"""`python -m api`: serve the API with uvicorn on KD_API_HOST:KD_API_PORT, KD_API_WORKERS processes.

The listening socket is bound here, as an IPPROTO_TCP socket, and handed to uvicorn (one process, or
its multiprocess supervisor). uvicorn's own multiprocess bind uses protocol 0; accepted connections
inherit it and asyncio sets TCP_NODELAY only when the protocol is IPPROTO_TCP, so every keep-alive
response after the first waited for the client's delayed ACK (about 40 ms: Nagle's algorithm).
The Dockerfile and docker-compose.yml start the API through this module.
"""

from __future__ import annotations

import socket

import uvicorn
from uvicorn.supervisors import Multiprocess

from jobs.settings import settings


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP listening socket that its accepted connections (and worker processes) inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def main() -> None:
    config = uvicorn.Config("api.app:create_app", factory=True, host=settings.api_host, port=settings.api_port,
                            workers=settings.api_workers, log_level="info", proxy_headers=True)
    sock = listening_socket(settings.api_host, settings.api_port)
    if settings.api_workers > 1:
        Multiprocess(config, sockets=[sock]).run()  # each process serves the inherited socket
    else:
        uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
