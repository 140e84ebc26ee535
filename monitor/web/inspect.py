"""What only a worker can tell: Celery's remote-control ``inspect`` replies.

Heartbeats and signals give the monitor a worker's pool, concurrency, queues
and counters; the registered task names, the full ``stats`` (rusage, broker,
prefetch), the configuration and the lists of active, scheduled, reserved and
revoked tasks come only from asking the worker. Flower asks on
``/api/workers?refresh=1``; so do we, with the same methods and the same rule
that task lists (possibly huge) are fetched only when one worker is named.

The broadcasts run concurrently (one ``inspect(timeout=...)`` each, so a
refresh costs one timeout, not eight) and replies are cached per worker in this
process: later requests without ``refresh`` return them, as Flower does.

``refresh=1`` is a GET anyone (and any web page a user visits) can fire, and
each one would make every worker answer eight broadcasts. So one process sends
at most one set of broadcasts at a time, from a thread of its own: concurrent
callers wait for the running one, each up to its own deadline (then they answer
with the replies cached so far, and the refresh fills the cache for the next
request), and a refresh finished less than :data:`REFRESH_REUSE` seconds ago
(or its failure) is reused instead of sent again. A broadcast ends as soon as
the workers known online have answered, not at the inspect timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Celery

from ..config import Settings

logger = logging.getLogger(__name__)

#: Asked of every worker on a refresh.
INSPECT_METHODS = ("stats", "active_queues", "registered", "conf")
#: Asked only of a named worker: these lists can hold thousands of tasks.
TASK_LIST_METHODS = ("active", "scheduled", "reserved", "revoked")
#: Seconds a broadcast waits for replies (Flower's default inspect timeout); it
#: ends sooner once the workers known online have answered.
INSPECT_TIMEOUT = 1.0
#: A refresh (of all workers, or of one named worker) this recent is reused.
REFRESH_REUSE = 5.0
#: Seconds a request waits for a refresh before answering with the cached replies.
REFRESH_WAIT = 0.9


class InspectError(Exception):
    """No inspect broadcast could be sent (the broker is unreachable)."""


class _Refresh:
    """One set of broadcasts under way (for all workers, or one named)."""

    def __init__(self, workername: str | None) -> None:
        self.workername = workername
        self.done = threading.Event()
        self.error: InspectError | None = None


class WorkerInspector:
    def __init__(
        self, settings: Settings, celery_app: Celery | None = None, timeout: float = INSPECT_TIMEOUT
    ) -> None:
        self.settings = settings
        self.timeout = timeout
        self._app = celery_app
        self._lock = threading.Lock()
        self._cache: dict[str, dict[str, Any]] = {}
        #: the set of broadcasts out now, if any
        self._running: _Refresh | None = None
        #: workername (None: all) -> (monotonic time it finished, its error or None)
        self._done: dict[str | None, tuple[float, InspectError | None]] = {}
        #: sets of broadcasts sent (tests and the benchmark read it)
        self.broadcasts = 0

    @property
    def app(self) -> Celery:
        if self._app is None:
            from ..events import make_app  # the receiver's rule for which broker to use

            self._app = make_app(self.settings)
        return self._app

    def refresh(
        self, workername: str | None = None, wait: float | None = None, expected: int = 0
    ) -> bool:
        """Ask the workers (or one), or reuse a refresh of the last REFRESH_REUSE seconds.

        ``expected``: how many workers should answer (those known online); each
        broadcast returns as soon as that many have, instead of waiting the
        whole inspect timeout for workers that may not exist.

        Waits at most ``wait`` seconds (default REFRESH_WAIT) for the refresh,
        its own or the one another caller started; returns False if that ran
        out (the cached replies are what there is for now), True otherwise.
        Raises InspectError if no broadcast went out (now, or in the reused
        refresh).
        """
        deadline = time.monotonic() + (REFRESH_WAIT if wait is None else wait)
        while True:
            if self._reuse(workername):
                return True
            with self._lock:
                job = self._running
                if job is None:
                    job = self._running = _Refresh(workername)
                    self.broadcasts += 1
                    threading.Thread(
                        target=self._run, args=(job, expected), name="monitor-inspect", daemon=True
                    ).start()
            if not job.done.wait(max(0.0, deadline - time.monotonic())):
                return False
            if job.workername == workername:
                if job.error is not None:
                    raise InspectError(str(job.error))
                return True
            # Another worker's refresh was out: now ours, if there is time left.

    def _run(self, job: _Refresh, expected: int) -> None:
        try:
            self._broadcast(job.workername, expected)
        except InspectError as exc:
            job.error = exc
        except Exception as exc:  # noqa: BLE001 - waiters must always be released
            logger.exception("monitor: inspect refresh failed")
            job.error = InspectError(f"{type(exc).__name__}: {exc}")
        finally:
            self._finished(job.workername, job.error)
            with self._lock:
                self._running = None
            job.done.set()

    def _reuse(self, workername: str | None) -> bool:
        with self._lock:
            done = self._done.get(workername)
        if done is None or time.monotonic() - done[0] > REFRESH_REUSE:
            return False
        if done[1] is not None:
            # a new exception each time: re-raising one object grows its traceback
            raise InspectError(str(done[1]))
        return True

    def _finished(self, workername: str | None, exc: InspectError | None) -> None:
        now = time.monotonic()
        with self._lock:
            # Forget old refreshes: one entry per worker name ever asked would grow.
            for name, (at, _) in list(self._done.items()):
                if now - at > REFRESH_REUSE:
                    del self._done[name]
            self._done[workername] = (now, exc)

    def _broadcast(self, workername: str | None, expected: int = 0) -> None:
        methods = INSPECT_METHODS + (TASK_LIST_METHODS if workername else ())
        destination = [workername] if workername else None
        limit = 1 if workername else (expected or None)
        try:
            # One quick look first: kombu would retry each of the broadcasts for
            # seconds against a broker that is down (and by default waits 2 s
            # before its one retry).
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(
                    max_retries=1, interval_start=0.1, interval_step=0.1, timeout=self.timeout
                )
        except Exception as exc:
            raise InspectError(f"broker unreachable: {type(exc).__name__}: {exc}") from exc
        with ThreadPoolExecutor(len(methods), thread_name_prefix="monitor-inspect") as pool:
            futures = {m: pool.submit(self._ask, m, destination, limit) for m in methods}
        failures = []
        for method, future in futures.items():
            try:
                replies = future.result()
            except Exception as exc:  # kombu raises transport-specific errors
                failures.append(f"{method}: {type(exc).__name__}: {exc}")
                continue
            now = time.time()
            with self._lock:
                for host, reply in (replies or {}).items():
                    if reply is None or (isinstance(reply, dict) and "error" in reply):
                        continue
                    info = self._cache.setdefault(host, {})
                    info[method] = reply
                    info["timestamp"] = now
        if failures:
            logger.warning("monitor: inspect failed: %s", "; ".join(failures))
        if len(failures) == len(methods):
            raise InspectError("; ".join(failures))

    def _ask(
        self, method: str, destination: list[str] | None, limit: int | None = None
    ) -> dict[str, Any] | None:
        inspect = self.app.control.inspect(
            timeout=self.timeout, destination=destination, limit=limit
        )
        if method == "active":
            return inspect.active(safe=True)  # args as reprs: a reply must always encode
        return getattr(inspect, method)()

    def cached_replies(self, method: str) -> dict[str, Any]:
        """hostname -> the last reply to ``method`` of every worker that answered it."""
        with self._lock:
            return {host: info[method] for host, info in self._cache.items() if method in info}

    def cached(self, hostname: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._cache.get(hostname, {}))
