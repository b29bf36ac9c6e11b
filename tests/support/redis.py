"""A real ``redis-server`` for tests (Debian's, ``/usr/bin/redis-server``), on a free loopback port, no persistence.

:func:`redis_fixture` is the session-scoped fixture ``redis_server``: a test module imports it, and
its tests ask for ``redis_server``. Without the binary every test that needs it is skipped with the
reason (``make redis`` installs it).

Example:
    >>> from tests.support.redis import redis_fixture  # noqa: F401 - provides the redis_server fixture
    >>> def test_x(redis_server: RedisServer) -> None:  # doctest: +SKIP
    ...     assert redis.Redis.from_url(redis_server.url).ping()
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from eval.process import free_port

__all__ = ["REDIS_SERVER", "RedisServer", "redis_fixture", "start_redis"]

REDIS_SERVER = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").is_file()
                                                 else None)  # fmt: skip


@dataclass(frozen=True)
class RedisServer:
    """Where a test's Redis listens."""

    host: str
    port: int

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


@contextmanager
def start_redis(workdir: Path, *, attempts: int = 3) -> Iterator[RedisServer]:
    """Start ``redis-server`` in ``workdir`` and stop it on exit; skips the test when the binary is missing."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (`make redis` installs Debian's)")
    for attempt in range(attempts):
        # free_port() can race another process for the port: a server that exits at once gets another one.
        port = free_port()
        argv = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(workdir)]  # fmt: skip
        log = workdir / f"redis-{attempt}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            if _wait_ready(proc, port):
                yield RedisServer("127.0.0.1", port)
                return
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    raise RuntimeError(f"redis-server did not start in {attempts} attempts: {log.read_text(errors='replace')[-2000:]}")


def _wait_ready(proc: subprocess.Popen[bytes], port: int, guard_s: float = 30.0) -> bool:
    # A hang guard, not a measurement: redis-server answers within milliseconds on an idle machine.
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1.0, socket_timeout=1.0)
    deadline = time.monotonic() + guard_s
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                if client.ping():
                    return True
            except redis.ConnectionError:
                time.sleep(0.02)
        return False
    finally:
        client.close()


@pytest.fixture(scope="session", name="redis_server")
def redis_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A ``redis-server`` for the session (each test keeps to its own key prefix)."""
    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server
