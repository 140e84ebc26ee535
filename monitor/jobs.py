"""Elected background jobs: periodic work that exactly one process of a cluster does.

Sampling queue depths, evaluating alert rules, checking periodic tasks, and
reconciling stale tasks with the result backend must each happen once per
interval however many ``serve`` processes run. A :class:`Job` names its work
and its interval; a :class:`JobRunner` (one per process, started once) runs
every job whose lease (``Keys.lease(job.name)``, see :mod:`monitor.lease`) this
process holds. A process that dies loses its leases after ``lease_ttl``; one
that stops releases them, so another process takes over at once.

A job's ``run(ctx)`` must be bounded (it runs on the runner's thread, which
under ``monitor serve`` is a greenlet) and may raise: the error is logged
(rate limited), the job runs again at its next interval, the others go on.
Redis being down costs a warning and a retry with capped backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from .lease import Lease

logger = logging.getLogger(__name__)

#: Seconds between two log lines about one job's failures.
ERROR_LOG_EVERY = 60.0
#: Longest sleep of the runner (it also wakes for stop()).
TICK = 0.5
BACKOFF_MAX = 10.0


@dataclass
class JobContext:
    """What a job gets: the store, the settings, the user's Celery app (or None)."""

    store: Any
    settings: Any
    celery_app: Any = None
    #: the app's worker inspector (monitor.web.inspect), when the runner belongs to
    #: one: jobs and pages then share its broadcasts and its cache of replies
    inspector: Any = None
    #: per-job state kept between runs (a job's own cursor, caches)
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    name: str
    #: seconds between two runs
    interval: float
    run: Callable[[JobContext], Any]
    #: lease lifetime; by default three intervals (at least 5 s)
    lease_ttl: float | None = None

    @property
    def ttl_ms(self) -> int:
        ttl = self.lease_ttl if self.lease_ttl is not None else max(3 * self.interval, 5.0)
        return int(ttl * 1000)


class JobRunner:
    """Runs ``jobs`` in this process whenever it holds their leases."""

    def __init__(
        self,
        store: Any,
        settings: Any,
        jobs: Sequence[Job],
        celery_app: Any = None,
        spawn: Callable[[Callable[[], None]], Any] | None = None,
        inspector: Any = None,
    ) -> None:
        self.jobs = list(jobs)
        self.store = store
        self.settings = settings
        self.celery_app = celery_app
        self._spawn = spawn
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._started = False
        self._leases = {
            job.name: Lease(store.redis, store.keys.lease(job.name), job.ttl_ms) for job in jobs
        }
        self._contexts = {
            job.name: JobContext(store, settings, celery_app, inspector) for job in self.jobs
        }
        self._next_run = dict.fromkeys(self._leases, 0.0)
        self._last_error_log = dict.fromkeys(self._leases, 0.0)
        #: completed runs per job, in this process (tests and /api/v1/jobs read it)
        self.runs = dict.fromkeys(self._leases, 0)
        self.errors = dict.fromkeys(self._leases, 0)

    def start(self) -> None:
        with self._lock:
            if self._started or not self.jobs:
                return
            self._started = True
        if self._spawn is not None:
            self._spawn(self._loop)
        else:
            threading.Thread(target=self._loop, name="monitor-jobs", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        for lease in self._leases.values():
            try:
                if lease.held:
                    lease.release()
            except redis.RedisError:  # Redis away: the lease expires after its TTL anyway
                pass

    def holds(self, name: str) -> bool:
        return self._leases[name].held

    def run_due(self, now: float | None = None) -> list[str]:
        """One pass: run every due job whose lease this process holds; their names."""
        now = time.monotonic() if now is None else now
        ran = []
        for job in self.jobs:
            if now < self._next_run[job.name]:
                continue
            self._next_run[job.name] = now + job.interval
            if not self._leases[job.name].claim(take=not self._stop.is_set()):
                continue
            try:
                job.run(self._contexts[job.name])
                self.runs[job.name] += 1
                ran.append(job.name)
            except redis.RedisError:
                raise
            except Exception:
                self.errors[job.name] += 1
                clock = time.monotonic()
                if clock - self._last_error_log[job.name] >= ERROR_LOG_EVERY:
                    self._last_error_log[job.name] = clock
                    logger.exception(
                        "job %s failed; it runs again in %.0f s", job.name, job.interval
                    )
        return ran

    def _loop(self) -> None:
        backoff = TICK
        down = False
        while not self._stop.is_set():
            try:
                self.run_due()
                if down:
                    logger.warning("jobs: Redis is back")
                    down = False
                backoff = TICK
            except redis.RedisError as exc:
                if not down:
                    logger.warning("jobs: Redis unavailable (%s); retrying", exc)
                    down = True
                backoff = min(backoff * 2, BACKOFF_MAX)
            except Exception:  # never let the runner die
                logger.exception("jobs: unexpected error")
            wait = min(
                [max(0.0, t - time.monotonic()) for t in self._next_run.values()] + [backoff]
            )
            self._stop.wait(max(wait, 0.05) if not down else backoff)
