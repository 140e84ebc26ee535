"""Test helpers: waiting on conditions, services, worker and serve subprocesses, and
the browser tests' Chromium (launch, pages that record their errors, logging in)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

# The demo's launcher is the tests' too (one way to run a private redis-server).
from monitor.processes import stop_process  # noqa: F401
from monitor.redis_server import RedisServer  # noqa: F401

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


#: Debian's chromium, driven by Playwright (never a downloaded browser), and its flags.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        pytest.fail(message) if IN_CI else pytest.skip(message)


#: Collects every Content-Security-Policy violation a page reports, from before its
#: first script runs (add it with ``context.add_init_script`` or ``open_page``).
CSP_PROBE = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__csp.push(e.violatedDirective + " " + (e.blockedURI || "inline") + " " +
                    (e.sourceFile || "") + ":" + e.lineNumber);
});
"""


#: Screenshots for the README; those of hostile data, for a human to look at.
SHOTS = ROOT / "docs" / "screenshots"
REVIEW_SHOTS = Path(tempfile.gettempdir()) / "monitor-screenshots"


def shot(page: Any, name: str, full_page: bool = False, directory: Path = SHOTS) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(directory / f"{name}.png"), full_page=full_page)


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium through Playwright (fails in CI, skips elsewhere, without it)."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(
    browser: Any,
    width: int = 1366,
    height: int = 900,
    *,
    init_script: str | None = None,
    console_errors: bool = True,
) -> Any:
    """A page in a fresh context (its own cookies). ``page.errors`` collects uncaught
    page errors and, with ``console_errors``, the console's error lines; close it with
    ``page.context.close()``."""
    context = browser.new_context(viewport={"width": width, "height": height})
    if init_script is not None:
        context.add_init_script(init_script)
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    if console_errors:
        page.on("console", lambda msg: msg.type == "error" and page.errors.append(msg.text))
    return page


def log_in(page: Any, url: str, user: tuple[str, str], next_path: str = "/") -> None:
    """Log ``user`` (name, password) in through the login page, then on to ``next_path``."""
    page.goto(url + "/login?next=" + next_path)
    page.fill("input[name=name]", user[0])
    page.fill("input[name=password]", user[1])
    page.click("form.login button[type=submit]")
    page.wait_for_selector(".who-name")


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


class ServeProcess:
    """``python -m monitor serve`` on a port of its own that survives restarts:
    tests stop it, kill it (SIGKILL) and start a replacement on the same port.

    Without ``broker`` it runs without the event receiver; its log is kept in a
    file for failure messages. ``extra`` are more serve arguments; it is up when
    ``ready_path`` answers (``/login`` once users exist: the API answers 401).
    """

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        *extra: str,
        broker: str | None = None,
        env: dict[str, str] | None = None,
        ready_path: str = "/api/v1/workers",
    ) -> None:
        self.port = free_port()
        self.prefix = prefix
        self.ready_path = ready_path
        self.args = ["--port", str(self.port), "--redis", redis_url, "--prefix", prefix]
        self.args += ["--broker", broker] if broker else ["--no-events"]
        self.args += extra
        self.env = clean_env(MONITOR_ENABLE_EVENTS="false", **(env or {}))
        fd, log_path = tempfile.mkstemp(prefix="monitor-test-serve-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServeProcess:
        with open(self.log_path, "a") as log:
            self.proc = start_module(
                "monitor", "serve", *self.args, env=self.env, stdout=log, stderr=log
            )

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"serve exited:\n{self.log()[-3000:]}")
            response = http_get(self.url + self.ready_path)
            return response is not None and response.ok

        wait_for(up, timeout, 0.1, what="serve answering")
        return self

    def get(self, path: str, timeout: float = 3.0) -> Any:
        """GET ``path``: the response, or None while nothing answers."""
        return http_get(self.url + path, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, no goodbye: sockets close, leases and room registrations stay."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.log_path.unlink(missing_ok=True)


def http_get(url: str, timeout: float = 2.0) -> Any:
    """The response, or None while nothing answers (for wait_for)."""
    import requests  # a dev dependency; the worker helpers above do not need it

    try:
        return requests.get(url, timeout=timeout)
    except requests.RequestException:
        return None


class RabbitMQNode:
    """A private RabbitMQ node (its own name, ports, data and logs in a temporary
    directory) that tests kill and restart without touching the shared one.

    Started through rabbitmq-server's own script, in a session of its own: the
    script and the Erlang VM share a process group, signalled by the script's PID.
    """

    SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"

    def __init__(self) -> None:
        self.port = free_port()
        self.dist_port = free_port()
        self.name = f"monitortest{self.port}@localhost"
        self.dir = Path(tempfile.mkdtemp(prefix="monitor-test-rabbitmq-"))
        self.proc: subprocess.Popen | None = None
        config = self.dir / "rabbitmq.conf"
        config.write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (self.dir / "enabled_plugins").write_text("[].\n")  # no management plugin: no port
        (self.dir / "rabbitmq-env.conf").write_text("")  # not the system node's NODENAME
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.dir / "plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    @classmethod
    def available(cls) -> bool:
        return os.access(cls.SERVER, os.X_OK)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self, timeout: float = 90.0) -> RabbitMQNode:
        self._log = open(self.dir / "server.out", "a")  # noqa: SIM115 - closed in kill/stop
        self.proc = subprocess.Popen(
            [self.SERVER],
            cwd=self.dir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self.answers, timeout, 0.1, what=f"RabbitMQ node {self.name}")
        return self

    def answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"rabbitmq-server exited:\n{self.log()[-3000:]}")
        try:  # an AMQP handshake: the listener opens last, when the node has booted
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                return sock.recv(8)[:1] == b"\x01"  # a method frame (connection.start)
        except OSError:
            return False

    def log(self) -> str:
        try:
            return (self.dir / "server.out").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL the node (a crash): its connections drop at once."""
        if self.proc is not None and self.proc.poll() is None:
            # The Erlang VM first, so that the script reaps it and exits (killed
            # together, the VM could outlive its parent as an unreaped zombie).
            pid = self.proc.pid
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            for child in children:
                os.kill(int(child), signal.SIGKILL)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(pid, signal.SIGKILL)
                self.proc.wait(5)
            self._log.close()
        wait_for(lambda: not port_open("127.0.0.1", self.port), 10, what="AMQP port closed")

    def stop(self) -> None:
        # Killed, not stopped cleanly (seconds saved): its data is thrown away.
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


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
        extra_args: tuple[str, ...] = (),
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
        self.args.extend(extra_args)
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


def api_task(tid, state, t, name="proj.add", worker="celery@w1", **fields):
    """An event-sourced task record as the API tests store them (args show the id)."""
    from monitor.model import TaskEvent

    base = {"name": name, "worker": worker, "args": f"({tid!r},)", "kwargs": "{}"}
    base.update(fields)
    return TaskEvent(tid, state, t, "event", worker, base)
