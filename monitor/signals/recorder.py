"""The per-process recorder behind the signal hooks.

One :class:`Recorder` per process holds the settings, a
:class:`~monitor.writer.BufferedWriter` (created lazily, reset after fork by
the writer itself) and the start times of the tasks running in this process,
from which runtimes are computed. Handlers only call :meth:`Recorder.put`:
an append to an in-memory deque.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..config import Settings
from ..model import TaskEvent, WorkerEvent, usable_task_id
from ..store import Store, redis_client
from ..writer import BufferedWriter

logger = logging.getLogger(__name__)

#: Seconds a hook's Redis call may take before it counts as a failure. Short:
#: the writer thread must notice a dead Redis quickly and keep buffering.
REDIS_TIMEOUT = 2.0


class Recorder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.writer = BufferedWriter(
            self._make_store,
            capacity=settings.buffer_size,
            batch_size=settings.batch_size,
            flush_interval=settings.flush_interval,
            block_when_full=False,
            source="signal",
        )
        self._started: dict[str, float] = {}
        #: this worker's node name, known in the parent after worker_ready;
        #: parent-side signals (hard time limit) have no request to ask.
        self.worker_hostname: str | None = None
        self._skipped_ids_logged: set[Any] = set()  # log each unusable id once

    def _make_store(self) -> Store:
        client = redis_client(
            self.settings.redis_url,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
        )
        return Store(client, self.settings)

    def task(
        self,
        task_id: str | None,
        state: str,
        hostname: str | None = None,
        **fields: Any,
    ) -> None:
        if not task_id:
            return
        if not usable_task_id(task_id):
            self._skip_task_id(task_id)
            return
        self.writer.put(TaskEvent(task_id, state, time.time(), "signal", hostname, fields))

    def _skip_task_id(self, task_id: Any) -> None:
        self.writer.count("malformed:signal")  # shown with the malformed events
        if task_id not in self._skipped_ids_logged and len(self._skipped_ids_logged) < 100:
            self._skipped_ids_logged.add(task_id)
            logger.warning("monitor: not recording task id %.300r (unusable as a key)", task_id)

    def worker(self, hostname: str | None, kind: str, **fields: Any) -> None:
        if not hostname:
            return
        self.writer.put(WorkerEvent(hostname, kind, time.time(), "signal", fields))

    def task_started(self, task_id: str) -> None:
        self._started[task_id] = time.monotonic()

    def runtime(self, task_id: str | None) -> float | None:
        """Seconds since task_prerun of ``task_id`` in this process, if seen."""
        start = self._started.pop(task_id, None) if task_id else None
        return None if start is None else round(time.monotonic() - start, 6)

    def forget(self, task_id: str | None) -> None:
        if task_id:
            self._started.pop(task_id, None)

    def flush(self, timeout: float) -> bool:
        return self.writer.flush(timeout)

    def close(self, timeout: float = 2.0) -> bool:
        return self.writer.close(timeout)
