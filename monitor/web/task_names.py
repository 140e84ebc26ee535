"""Reads of one task name's page: its runtime distribution and its recent failures
grouped by exception type (``GET /api/v1/task-names/<name>``, with the window's
counters from :func:`monitor.history.history`).

Both reads are bounded whatever the store holds: they walk the newest entries of
the name's index (or of the FAILURE index, whichever is smaller: see
:func:`monitor.web.queries.plan`) within the window, through the same
:func:`~monitor.web.queries.scan` as the task list, and stop after
:data:`SCAN_LIMIT` index entries or :data:`~monitor.web.queries.SCAN_SECONDS`.
The runtime histogram is of the newest :data:`RUNTIME_SAMPLE` finished tasks;
the failure groups of the newest :data:`FAILURE_SAMPLE` failures. Either says
``partial`` when the walk stopped before the window's start.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..store import RUNTIME_BUCKETS, Store
from . import queries
from .visibility import exception_type

#: Window names of the task-name page (the history API's), in seconds.
WINDOWS = {"15m": 900, "1h": 3600, "24h": 86400, "7d": 7 * 86400}
#: Index entries one read examines at most (each read: runtimes, failures).
SCAN_LIMIT = 5000
#: Finished tasks whose runtimes make the histogram (newest first).
RUNTIME_SAMPLE = 1000
#: Failures grouped (newest first).
FAILURE_SAMPLE = 500
#: Groups returned at most (the most frequent; the rest count in ``other``).
MAX_GROUPS = 50
#: Characters of an example exception message.
MAX_MESSAGE = 300
#: Runtimes beyond this (seconds, ~31 years) are not runtimes; they are skipped.
MAX_RUNTIME = 1e9
_FINISHED = ("SUCCESS", "FAILURE")


def parse_window(value: str | None, default: str = "1h") -> str:
    """``15m``, ``1h``, ``24h`` or ``7d`` (400 otherwise)."""
    if value is None or value == "":
        return default
    if value not in WINDOWS:
        raise queries.QueryError(f"parameter 'window' must be one of {', '.join(WINDOWS)}")
    return value


def _budget() -> queries.Budget:
    budget = queries.Budget()
    budget.rows = SCAN_LIMIT
    return budget


def _quantile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank quantile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def runtime_distribution(
    store: Store, name: str, window_seconds: float, now: float | None = None
) -> dict[str, Any]:
    """Histogram of the runtimes of the newest finished tasks of ``name`` in the window.

    ``{"buckets": [{"le": bound or None (+Inf), "count"}], "count", "min", "max",
    "p50", "p95", "p99", "sample", "partial"}``; bounds are the store's runtime
    buckets (the Prometheus histogram's), so both describe runtimes alike.
    """
    now = time.time() if now is None else now
    budget = _budget()
    where = queries.plan(store, _FINISHED, name, None)
    walk = queries.IndexWalk(store, where.keys, True, now - window_seconds, None, None)
    runtimes: list[float] = []

    def match(_task_id: str, values: list[Any]) -> bool:
        return values[0] in _FINISHED and values[1] == name

    for _task_id, values in queries.scan(store, walk, ("state", "name", "runtime"), match, budget):
        runtime = queries.finite_float(values[2])
        if runtime is None or not 0 <= runtime < MAX_RUNTIME:
            continue
        runtimes.append(runtime)
        if len(runtimes) >= RUNTIME_SAMPLE:
            break
    counts = [0] * (len(RUNTIME_BUCKETS) + 1)
    for runtime in runtimes:
        for i, bound in enumerate(RUNTIME_BUCKETS):
            if runtime <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
    runtimes.sort()
    bounds: list[float | None] = [*RUNTIME_BUCKETS, None]
    return {
        "buckets": [{"le": b, "count": n} for b, n in zip(bounds, counts, strict=True)],
        "count": len(runtimes),
        "min": runtimes[0] if runtimes else None,
        "max": runtimes[-1] if runtimes else None,
        "p50": _quantile(runtimes, 0.50),
        "p95": _quantile(runtimes, 0.95),
        "p99": _quantile(runtimes, 0.99),
        "sample": RUNTIME_SAMPLE,
        "partial": budget.cut,
    }


def failure_groups(
    store: Store,
    name: str,
    window_seconds: float,
    can_see_args: bool = True,
    now: float | None = None,
) -> dict[str, Any]:
    """The newest failures of ``name`` in the window, grouped by exception type.

    ``{"groups": [{"exception", "count", "last_seen", "example": {"id",
    "message", "worker"}}], "failures", "other", "sample", "partial"}``, most
    frequent first; ``exception`` is ``""`` for a failure whose text names no
    type. A caller who may not see task data gets the type as the message
    (the rule of :mod:`monitor.web.visibility`).
    """
    now = time.time() if now is None else now
    budget = _budget()
    where = queries.plan(store, ("FAILURE",), name, None)
    walk = queries.IndexWalk(store, where.keys, True, now - window_seconds, None, None)
    fields = ("state", "name", "worker", "exception", "failed", "timestamp")
    groups: dict[str, dict[str, Any]] = {}
    failures = 0

    def match(_task_id: str, values: list[Any]) -> bool:
        return values[0] == "FAILURE" and values[1] == name

    for task_id, values in queries.scan(store, walk, fields, match, budget):
        failures += 1
        text = values[3] if isinstance(values[3], str) else ""
        kind = exception_type(text)
        seen = queries.finite_float(values[4])
        if seen is None:
            seen = queries.finite_float(values[5])
        group = groups.get(kind)
        if group is None:
            # Newest first: the first failure of a type is its latest and its example.
            message = text if can_see_args else kind
            if len(message) > MAX_MESSAGE:
                message = message[:MAX_MESSAGE] + "…"
            groups[kind] = {
                "exception": kind,
                "count": 1,
                "last_seen": seen,
                "example": {"id": task_id, "message": message, "worker": values[2]},
            }
        else:
            group["count"] += 1
        if failures >= FAILURE_SAMPLE:
            break
    ordered = sorted(groups.values(), key=lambda g: (-g["count"], g["exception"]))
    kept = ordered[:MAX_GROUPS]
    return {
        "groups": kept,
        "failures": failures,
        "other": sum(g["count"] for g in ordered[MAX_GROUPS:]),
        "sample": FAILURE_SAMPLE,
        "partial": budget.cut,
    }


def stored_count(store: Store, name: str) -> int:
    """Tasks of ``name`` the store holds (whatever their age)."""
    return int(store.redis.zcard(store.keys.by_name(name)))


def last_seen(store: Store, name: str) -> float | None:
    """When a task of ``name`` was last seen (the task-names zset's score)."""
    score = store.redis.zscore(store.keys.task_names, name)
    return None if score is None else float(score)
