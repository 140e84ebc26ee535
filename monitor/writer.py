"""A bounded, non-blocking buffer that writes records to the store in batches.

Both ingestion paths use it. ``put()`` only appends to an in-memory deque; a
background thread takes batches (by count, or every ``flush_interval``) and
applies each in one Redis round trip. When Redis is down or slow, records
wait in the buffer; when it is full:

- ``block_when_full=False`` (signal hooks inside the user's processes): the
  oldest record is dropped and counted. A task must never wait on the monitor.
- ``block_when_full=True`` (the event receiver): ``put()`` waits, so the
  receiver stops consuming and events wait in the broker instead of being lost.

Dropped records are added to ``{prefix}:meta`` (``dropped:<source>``) once
Redis answers again, so the loss is visible on the dashboard and in metrics.
The buffer belongs to one process: after a fork the child starts empty (the
parent still owns and flushes the records it had), with fresh locks and no
thread, reset by an ``os.register_at_fork`` hook rather than a pid check on
every record.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import redis

from .model import TaskEvent, WorkerEvent
from .store import Store

logger = logging.getLogger(__name__)

Record = TaskEvent | WorkerEvent
#: Capped exponential backoff while Redis is unreachable (seconds).
BACKOFF_START = 0.1
BACKOFF_MAX = 5.0
#: Seconds between two log lines about records the store refused.
REJECTED_LOG_EVERY = 10.0


#: Every writer of this process, reset in a forked child (prefork pool processes).
_writers: weakref.WeakSet[BufferedWriter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for writer in list(_writers):
        writer._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)


def rejected_by_script(exc: Exception) -> bool:
    """Did the write script fail on the batch's content (a wrong key type, a Lua
    error), as opposed to a Redis that is away, read-only, out of memory or busy?"""
    text = str(exc)
    return (
        isinstance(exc, redis.ResponseError)
        and not isinstance(exc, redis.exceptions.ReadOnlyError | redis.exceptions.OutOfMemoryError)
        and "user_script" in text
        and not text.startswith(("OOM", "READONLY", "BUSY", "NOSCRIPT", "LOADING", "MASTERDOWN"))
    )


class BufferedWriter:
    def __init__(
        self,
        store_factory: Callable[[], Store],
        *,
        capacity: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.1,
        block_when_full: bool = False,
        source: str = "signal",
        on_batch: Callable[[int], Any] | None = None,
    ) -> None:
        self._store_factory = store_factory
        self._store: Store | None = None
        self.capacity = capacity
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.block_when_full = block_when_full
        self.source = source
        self._on_batch = on_batch
        self._reset()
        _writers.add(self)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._buffer: deque[Record] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closing = False
        self._write_lock = threading.Lock()
        self.dropped = 0  # since start, in this process
        self.rejected = 0  # invalid records the store refused, since start
        self._last_rejected_log = 0.0
        #: {prefix}:meta counters not yet added in Redis (dropped:<source>, ...)
        self._unreported: dict[str, int] = {}
        self.written = 0
        self.failures = 0
        self.redis_ok = True

    # -- producer side -------------------------------------------------------
    def put(self, record: Record) -> None:
        """Queue one record. Never raises; never blocks unless ``block_when_full``."""
        buffer = self._buffer
        if self.block_when_full:
            with self._cond:
                while len(buffer) >= self.capacity and not self._closing:
                    self._cond.wait(0.5)
                buffer.append(record)
                if len(buffer) >= self.batch_size:
                    self._cond.notify_all()
        else:
            # The hooks' path, inside the user's task: no lock unless full.
            # deque.append is atomic, and the writer takes records under its
            # lock with popleft, also atomic. Several threads putting at once
            # may overshoot capacity by a record or two: harmless.
            if len(buffer) >= self.capacity:
                with self._cond:
                    if len(buffer) >= self.capacity:
                        buffer.popleft()
                        self._count_drops(1)
            buffer.append(record)
            if len(buffer) == self.batch_size:
                with self._cond:
                    self._cond.notify_all()
        if self._thread is None:
            self._start()

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name`` of ``{prefix}:meta`` with the next write."""
        with self._cond:
            self._unreported[name] = self._unreported.get(name, 0) + n

    def _count_rejected(self, n: int) -> None:
        """Records the store refused alone (not encodable, invalid): bad input,
        counted as ``malformed:<source>`` beside the receiver's and the hooks'."""
        self.rejected += n
        self.count(f"malformed:{self.source}", n)
        now = time.monotonic()
        if now - self._last_rejected_log > REJECTED_LOG_EVERY:
            self._last_rejected_log = now
            logger.warning("monitor: the store refused %d invalid record(s)", n)

    def _count_drops(self, n: int) -> None:  # the caller holds self._cond
        self.dropped += n
        key = f"dropped:{self.source}"
        self._unreported[key] = self._unreported.get(key, 0) + n

    def pending(self) -> int:
        return len(self._buffer)

    def _start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name=f"monitor-{self.source}-writer", daemon=True
            )
            self._thread.start()

    # -- consumer side -------------------------------------------------------
    def _take(self) -> list[Record]:
        with self._cond:
            n = min(len(self._buffer), self.batch_size)
            batch = [self._buffer.popleft() for _ in range(n)]
            if n and self.block_when_full:
                self._cond.notify_all()
            return batch

    def _give_back(self, batch: list[Record]) -> None:
        """Put an unwritten batch back in front, dropping the oldest beyond capacity."""
        with self._cond:
            self._buffer.extendleft(reversed(batch))
            overflow = len(self._buffer) - self.capacity
            if overflow > 0 and not self.block_when_full:
                for _ in range(overflow):
                    self._buffer.popleft()
                self._count_drops(overflow)

    def _write(self, batch: list[Record]) -> None:
        if self._store is None:
            self._store = self._store_factory()
        if batch:
            try:
                result = self._store.apply(batch)
            except redis.ResponseError as exc:
                if not rejected_by_script(exc):
                    raise
                self._write_one_by_one(batch, exc)
            else:
                if result.rejected:
                    self._count_rejected(result.rejected)
        with self._cond:
            counters, self._unreported = self._unreported, {}
        if counters:
            try:
                self._store.incr_meta(counters)
            except redis.RedisError:
                with self._cond:
                    for name, n in counters.items():
                        self._unreported[name] = self._unreported.get(name, 0) + n
                raise

    def _write_one_by_one(self, batch: list[Record], exc: Exception) -> None:
        """Last resort: the script validates every record before it writes, so this
        runs only for an error it did not foresee (a key of ours holding another
        type, written by something else). Write the records one by one and drop
        only those failing again. Replaying a record already written is a
        harmless duplicate."""
        assert self._store is not None
        failed: list[Record] = []
        invalid = 0
        for record in batch:
            try:
                invalid += self._store.apply([record]).rejected
            except redis.ResponseError as again:
                if not rejected_by_script(again):
                    raise
                failed.append(record)
        if failed:
            logger.warning(
                "monitor: Redis rejected %d record(s), dropped (%s); first: %.300r",
                len(failed),
                exc,
                failed[0],
            )
        if failed or invalid:
            self._count_rejected(len(failed) + invalid)

    def flush_once(self) -> bool:
        """Write one batch now. False when Redis refused it (the batch is kept)."""
        with self._write_lock:
            batch = self._take()
            if not batch and not self._unreported:
                return True
            try:
                self._write(batch)
            except (redis.RedisError, OSError) as exc:
                self._give_back(batch)
                self.failures += 1
                if self.redis_ok:
                    logger.warning(
                        "monitor: cannot write to Redis (%s); buffering up to %d records",
                        exc,
                        self.capacity,
                    )
                self.redis_ok = False
                return False
            except Exception:
                # A bug of ours (a record we cannot even encode): drop the batch
                # rather than retry it forever, and say so.
                logger.exception("monitor: dropping a batch of %d records", len(batch))
                with self._cond:
                    self._count_drops(len(batch))
                return True
            if not self.redis_ok:
                logger.warning("monitor: Redis is back; writing resumed")
                self.redis_ok = True
            self.written += len(batch)
            if self._on_batch is not None:
                self._on_batch(len(batch))
            return True

    def _run(self) -> None:
        backoff = BACKOFF_START
        while True:
            with self._cond:
                if not self._buffer and not self._closing:
                    self._cond.wait(self.flush_interval)
                elif len(self._buffer) < self.batch_size and not self._closing:
                    # Let a batch build up, but never hold a record longer than
                    # flush_interval (latency bound).
                    self._cond.wait(self.flush_interval)
                closing = self._closing
            if self._buffer or self._unreported:
                if self.flush_once():
                    backoff = BACKOFF_START
                else:
                    time.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
            if closing and not self._buffer:
                return

    def flush(self, timeout: float = 5.0) -> bool:
        """Write everything buffered, from the calling thread, within ``timeout``."""
        if self._pid != os.getpid():
            return True
        deadline = time.monotonic() + timeout
        while self._buffer or self._unreported:
            if time.monotonic() >= deadline:
                return False
            if not self.flush_once():
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        return True

    def close(self, timeout: float = 5.0) -> bool:
        """Flush and stop the thread. Returns False if records were left unwritten."""
        flushed = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)
        if self._store is not None:
            self._store.close()
        return flushed
