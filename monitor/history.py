"""History: every read of the per-minute and hourly stats the write script keeps.

The write script (``monitor/lua/apply_batch.lua``) counts each new transition
once, in the minute and the hour it happened, globally, per task name and per
worker, with runtime and queue-wait histograms (fields spelled in
:mod:`monitor.vocabulary`). This module reads them back:

- :func:`history`: points over a window (15m and 1h: 60 s steps from the
  per-minute hashes; 24h and 7d: 3600 s steps from the hourly ones), globally,
  for one task name, or for one worker (``GET /api/v1/history``);
- :func:`runtime_quantiles`: one name's runtime p50/p95/p99 over a recent window;
- :func:`queue_wait_by_name`: the queue-wait distribution of each task name;
- :func:`counts_by_name`: transitions per task name over a window.

Every read is bounded: one pipeline of HMGETs of exactly the fields needed, at
most 168 periods; only :func:`counts_by_name`, which cannot know the names in
advance, reads per-name hashes whole (each capped at ``store.STATS_FIELDS`` /
``STATS_HOUR_FIELDS`` fields by the write script). Percentiles are interpolated
within histogram buckets (as Prometheus' ``histogram_quantile`` does) and are
None when nothing was counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from . import vocabulary as v
from .store import Store
from .values import stored_count

#: window -> (seconds, step seconds)
WINDOWS: dict[str, tuple[int, int]] = {
    "15m": (15 * 60, 60),
    "1h": (3600, 60),
    "24h": (24 * 3600, 3600),
    "7d": (7 * 24 * 3600, 3600),
}
#: Longest window the quantile reads accept (the per-name hourly hashes' default life).
MAX_WINDOW_SECONDS = 7 * 24 * 3600
#: Names :func:`queue_wait_by_name` reports at most.
MAX_NAMES = 100
QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))

#: state -> counter, for the counters a point carries
_STATE_OF = {c: s for s, c in v.STAT_COUNTERS.items() if c in v.HISTORY_COUNTERS}
_LABELS = [v.bucket_label(b) for b in v.STAT_BUCKETS] + [v.STAT_INF]
_BOUNDS = [*v.STAT_BUCKETS, math.inf]
_COUNTER_FIELDS = [v.STAT_STATE + _STATE_OF[c] for c in v.HISTORY_COUNTERS]
_RT_FIELDS = [v.STAT_RUNTIME + label for label in _LABELS] + [v.STAT_RUNTIME_SUM]
_QW_FIELDS = [v.STAT_WAIT + label for label in _LABELS] + [v.STAT_WAIT_SUM]


class HistoryError(ValueError):
    """A bad argument; ``parameter`` names it (the API answers 400 with the message)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def quantile(q: float, buckets: Sequence[float]) -> float | None:
    """The q-quantile of a histogram (counts per bucket of ``STAT_BUCKETS`` + +Inf),
    linearly interpolated within its bucket; None when the histogram is empty.
    A quantile in the +Inf bucket is the highest finite bound (as Prometheus does)."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    cumulative = 0.0
    for i, n in enumerate(buckets):
        if n <= 0:
            continue
        if cumulative + n >= rank:
            upper = _BOUNDS[i]
            if math.isinf(upper):
                return _BOUNDS[-2]
            lower = _BOUNDS[i - 1] if i else 0.0
            return lower + (upper - lower) * max(0.0, rank - cumulative) / n
        cumulative += n
    return _BOUNDS[-2]


def _distribution(buckets: Sequence[float], total: float) -> dict[str, Any]:
    count = int(sum(buckets))
    out: dict[str, Any] = {"count": count, "sum": total if count else 0.0}
    for key, q in QUANTILES:
        out[key] = quantile(q, buckets)
    return out


def _periods(seconds: int, now: float) -> tuple[int, int, list[int]]:
    """(step, first period start, period numbers) covering the last ``seconds``
    up to now: minutes for an hour or less, hours beyond (at most 168)."""
    step = 60 if seconds <= 3600 else 3600
    last = int(now // step)
    n = max(1, min(-(-seconds // step), MAX_WINDOW_SECONDS // step))
    return step, (last - n + 1) * step, list(range(last - n + 1, last + 1))


def _period_key(store: Store, step: int, period: int) -> str:
    return store.keys.stats(period) if step == 60 else store.keys.stats_hour(period)


def _check_window_seconds(window_seconds: Any) -> int:
    if isinstance(window_seconds, bool) or not isinstance(window_seconds, (int, float)):
        raise HistoryError("window_seconds", "window_seconds must be a number of seconds")
    if not math.isfinite(window_seconds) or window_seconds <= 0:
        raise HistoryError("window_seconds", "window_seconds must be finite and > 0")
    return int(min(math.ceil(window_seconds), MAX_WINDOW_SECONDS))


def history(
    store: Store,
    window: str,
    name: str | None = None,
    worker: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """``GET /api/v1/history``'s body: counters and runtime / queue-wait
    distributions per step over ``window``, for everything, one task name, or
    one worker (per-worker data has no queue wait: its count is 0)."""
    if window not in WINDOWS:
        raise HistoryError("window", f"window must be one of {', '.join(WINDOWS)}")
    if name and worker:
        raise HistoryError("worker", "give name or worker, not both")
    now = time.time() if now is None else now
    seconds, step = WINDOWS[window]
    last = int(now // step)
    periods = list(range(last - seconds // step + 1, last + 1))
    fields = _COUNTER_FIELDS + _RT_FIELDS + ([] if worker else _QW_FIELDS)
    scope = name or worker
    if scope:
        fields_read = [v.scoped(f, scope) for f in fields]
    else:
        fields_read = fields
    pipe = store.redis.pipeline(transaction=False)
    for period in periods:
        key = _period_key(store, step, period)
        if name:
            key = store.keys.stats_names(key)
        elif worker:
            key = store.keys.stats_workers(key)
        pipe.hmget(key, fields_read)
    nc, nrt = len(_COUNTER_FIELDS), len(_RT_FIELDS)
    points = []
    sums = {c: 0 for c in v.HISTORY_COUNTERS}
    rt_total = [0.0] * len(_LABELS)
    qw_total = [0.0] * len(_LABELS)
    rt_sum = qw_sum = 0.0
    for period, values in zip(periods, pipe.execute(), strict=True):
        nums = [stored_count(x) for x in values]
        point: dict[str, Any] = {"t": period * step}
        for counter, x in zip(v.HISTORY_COUNTERS, nums[:nc], strict=True):
            point[counter] = int(x)
            sums[counter] += int(x)
        rt = nums[nc : nc + nrt - 1]
        point["runtime"] = _distribution(rt, nums[nc + nrt - 1])
        rt_total = [a + b for a, b in zip(rt_total, rt, strict=True)]
        rt_sum += nums[nc + nrt - 1] if point["runtime"]["count"] else 0.0
        if worker:
            qw = [0.0] * len(_LABELS)
            point["queue_wait"] = _distribution(qw, 0.0)
        else:
            qw = nums[nc + nrt : -1]
            point["queue_wait"] = _distribution(qw, nums[-1])
            qw_total = [a + b for a, b in zip(qw_total, qw, strict=True)]
            qw_sum += nums[-1] if point["queue_wait"]["count"] else 0.0
        points.append(point)
    totals: dict[str, Any] = dict(sums)
    totals["runtime"] = _distribution(rt_total, rt_sum)
    totals["queue_wait"] = _distribution(qw_total, qw_sum)
    return {
        "window": window,
        "step": step,
        "from": periods[0] * step,
        "to": (periods[-1] + 1) * step,
        "name": name,
        "worker": worker,
        "points": points,
        "totals": totals,
    }


def runtime_quantiles(store: Store, name: str, window_seconds: float) -> dict[str, Any]:
    """One task name's runtime ``{"count", "p50", "p95", "p99"}`` over the last
    ``window_seconds`` (whole minutes up to an hour, whole hours beyond, 7 days at most)."""
    seconds = _check_window_seconds(window_seconds)
    if not isinstance(name, str) or not name:
        raise HistoryError("name", "name must be a task name")
    step, _, periods = _periods(seconds, time.time())
    fields = [v.scoped(f, name) for f in _RT_FIELDS[:-1]]
    pipe = store.redis.pipeline(transaction=False)
    for period in periods:
        pipe.hmget(store.keys.stats_names(_period_key(store, step, period)), fields)
    buckets = [0.0] * len(_LABELS)
    for values in pipe.execute():
        buckets = [a + stored_count(b) for a, b in zip(buckets, values, strict=True)]
    out: dict[str, Any] = {"count": int(sum(buckets))}
    for key, q in QUANTILES:
        out[key] = quantile(q, buckets)
    return out


def queue_wait_by_name(
    store: Store, window_seconds: float, limit: int = MAX_NAMES
) -> list[dict[str, Any]]:
    """Queue wait (received - sent) of each task name over the last
    ``window_seconds``: ``[{"name", "count", "sum", "p50", "p95", "p99"}]``, the
    most counted first, for the ``limit`` (<= 100) most recently seen task names
    and the names folded past the stats cap (``__other__``).

    Two pipelines: each name's queue-wait sum per period (which periods have any),
    then the buckets of only those."""
    seconds = _check_window_seconds(window_seconds)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise HistoryError("limit", "limit must be a positive integer")
    limit = min(limit, MAX_NAMES)
    names = list(store.redis.zrevrange(store.keys.task_names, 0, limit - 1))
    names.append(v.STAT_OTHER)
    step, _, periods = _periods(seconds, time.time())
    keys = [store.keys.stats_names(_period_key(store, step, p)) for p in periods]
    pipe = store.redis.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(key, [v.scoped(v.STAT_WAIT_SUM, n) for n in names])
    present: list[tuple[str, str]] = []  # (key, name) holding queue waits
    sums: dict[str, float] = {}
    for key, values in zip(keys, pipe.execute(), strict=True):
        for n, x in zip(names, values, strict=True):
            if x is not None:
                present.append((key, n))
                sums[n] = sums.get(n, 0.0) + stored_count(x)
    if not present:
        return []
    labels = _QW_FIELDS[:-1]
    pipe = store.redis.pipeline(transaction=False)
    for key, n in present:
        pipe.hmget(key, [v.scoped(f, n) for f in labels])
    buckets: dict[str, list[float]] = {}
    for (_, n), values in zip(present, pipe.execute(), strict=True):
        acc = buckets.setdefault(n, [0.0] * len(_LABELS))
        for i, x in enumerate(values):
            acc[i] += stored_count(x)
    out = []
    for n, b in buckets.items():
        row = {"name": n, **_distribution(b, sums.get(n, 0.0))}
        if row["count"]:
            out.append(row)
    out.sort(key=lambda r: (-r["count"], r["name"]))
    return out


def counts_by_name(
    store: Store, window_seconds: float, states: Sequence[str] = ("SUCCESS", "FAILURE")
) -> dict[str, dict[str, int]]:
    """Transitions into ``states`` per task name over the last ``window_seconds``:
    ``{name: {"SUCCESS": n, "FAILURE": n}}`` (names past the stats cap as
    ``__other__``), e.g. for a failure-rate alert on a name pattern.

    The names are not known in advance, so each period's per-name hash is read
    whole: at most 60 minute hashes (``STATS_FIELDS`` fields each, plus a batch's
    worth) for an hour or less, else at most 168 hourly ones."""
    seconds = _check_window_seconds(window_seconds)
    wanted = {v.STAT_STATE + s: s for s in states}
    step, _, periods = _periods(seconds, time.time())
    pipe = store.redis.pipeline(transaction=False)
    for period in periods:
        pipe.hgetall(store.keys.stats_names(_period_key(store, step, period)))
    out: dict[str, dict[str, int]] = {}
    for fields in pipe.execute():
        for field, value in fields.items():
            base, _, name = field.partition(v.STAT_SCOPE)
            state = wanted.get(base)
            if state is not None:
                row = out.setdefault(name, dict.fromkeys(states, 0))
                row[state] += int(stored_count(value))
    return out
