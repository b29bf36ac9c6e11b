"""Network fault doubles: a black hole, a TCP server that accepts connections and never answers.

A dependency that hangs is the failure timeouts exist for: a refused connection fails at once, a
black hole only fails when the caller's own deadline fires. Use it as any server's URL.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["BlackHole", "black_hole"]


@dataclass
class BlackHole:
    """Where the black hole listens, and how many connections it has swallowed."""

    host: str
    port: int
    accepted: int = 0
    _held: list[socket.socket] = field(default_factory=list, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextmanager
def black_hole() -> Iterator[BlackHole]:
    """A loopback TCP server that accepts every connection, reads nothing and sends nothing until it closes."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    hole = BlackHole("127.0.0.1", server.getsockname()[1])
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            hole._held.append(conn)  # kept open: the peer sees a live connection that never answers
            hole.accepted += 1

    thread = threading.Thread(target=accept, name="black-hole", daemon=True)
    thread.start()
    try:
        yield hole
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in hole._held:
            conn.close()
        server.close()
