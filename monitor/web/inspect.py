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
#: Seconds a broadcast waits for replies (Flower's default inspect timeout).
INSPECT_TIMEOUT = 1.0


class InspectError(Exception):
    """No inspect broadcast could be sent (the broker is unreachable)."""


class WorkerInspector:
    def __init__(
        self, settings: Settings, celery_app: Celery | None = None, timeout: float = INSPECT_TIMEOUT
    ) -> None:
        self.settings = settings
        self.timeout = timeout
        self._app = celery_app
        self._lock = threading.Lock()
        self._cache: dict[str, dict[str, Any]] = {}

    @property
    def app(self) -> Celery:
        if self._app is None:
            from ..events import make_app  # the receiver's rule for which broker to use

            self._app = make_app(self.settings)
        return self._app

    def refresh(self, workername: str | None = None) -> None:
        """Ask the workers (or one) now; raises InspectError if no broadcast went out."""
        methods = INSPECT_METHODS + (TASK_LIST_METHODS if workername else ())
        destination = [workername] if workername else None
        try:
            # One quick look first: kombu would retry each of the broadcasts for
            # seconds against a broker that is down.
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1)
        except Exception as exc:
            raise InspectError(f"broker unreachable: {type(exc).__name__}: {exc}") from exc
        with ThreadPoolExecutor(len(methods), thread_name_prefix="monitor-inspect") as pool:
            futures = {m: pool.submit(self._ask, m, destination) for m in methods}
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

    def _ask(self, method: str, destination: list[str] | None) -> dict[str, Any] | None:
        inspect = self.app.control.inspect(timeout=self.timeout, destination=destination)
        if method == "active":
            return inspect.active(safe=True)  # args as reprs: a reply must always encode
        return getattr(inspect, method)()

    def cached(self, hostname: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._cache.get(hostname, {}))
