"""Test helpers: waiting on conditions, services, worker subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def wait_for(
    condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}: {last!r}")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(host: str, port: int, name: str) -> None:
    """A missing service fails in CI; on a laptop it skips, saying why."""
    if port_open(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if IN_CI:
        pytest.fail(message + " (CI must provide it: .ci/run starts it)")
    pytest.skip(message + " (start it, or run .ci/run which starts it)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without MONITOR_* variables, plus ``extra``: a subprocess
    gets only the settings its test gives it, never the developer's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env.update(extra)
    return env


def start_module(module: str, *args: str, env: dict[str, str] | None = None, **popen: Any):
    """``python -m <module> <args>`` from the repository root, in a session of its
    own (stop_process signals its whole group), with :func:`clean_env` by default."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=clean_env() if env is None else env,
        start_new_session=True,
        **popen,
    )


def start_serve(redis_url: str, prefix: str, port: int, *extra: str, **popen: Any):
    """``python -m monitor serve`` without the event receiver (see start_module)."""
    serve_args = ["--port", str(port), "--no-events", "--redis", redis_url, "--prefix", prefix]
    return start_module("monitor", "serve", *serve_args, *extra, **popen)


def http_get(url: str, timeout: float = 2.0) -> Any:
    """The response, or None while nothing answers (for wait_for)."""
    import requests  # a dev dependency; the worker helpers above do not need it

    try:
        return requests.get(url, timeout=timeout)
    except requests.RequestException:
        return None


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop a process we started (by PID): SIGTERM, then SIGKILL its group."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


class RedisServer:
    """A private redis-server on its own port: tests kill and restart it freely."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(lambda: port_open("127.0.0.1", self.port), 10, what="redis-server to listen")
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        wait_for(lambda: not port_open("127.0.0.1", self.port), 10, what="redis port closed")

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)


class WorkerProcess:
    """A real ``celery worker`` (prefork) running ``tests.workerapp`` as a subprocess."""

    def __init__(
        self,
        *,
        broker: str,
        queue: str,
        prefix: str,
        redis_url: str = REDIS_URL,
        hooks: bool = True,
        events: bool = False,
        hostname: str | None = None,
        concurrency: int = 2,
        extra_env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.broker = broker
        self.queue = queue
        self.hostname = hostname or f"w-{queue}@localhost"
        self.env = dict(os.environ)
        self.env.update(
            {
                "TEST_BROKER_URL": broker,
                "TEST_QUEUE": queue,
                "TEST_HOOKS": "1" if hooks else "0",
                "MONITOR_REDIS_URL": redis_url,
                "MONITOR_PREFIX": prefix,
                "PYTHONPATH": str(ROOT) + os.pathsep + self.env.get("PYTHONPATH", ""),
            }
        )
        self.env.update(extra_env or {})
        self.args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.workerapp",
            "worker",
            "-P",
            "prefork",
            "-c",
            str(concurrency),
            "-Q",
            queue,
            "-n",
            self.hostname,
            "-l",
            "INFO",
            "--without-gossip",
            "--without-mingle",
        ]
        if events:
            self.args.append("-E")
        self.log_path = log_path or Path(f"/tmp/monitor-test-worker-{queue}.log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.args,
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._ready, timeout, 0.2, what=f"worker {self.hostname} ready")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"worker exited early:\n{self.log()}")
        return " ready." in self.log()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout)
        if getattr(self, "_log", None):
            self._log.close()
