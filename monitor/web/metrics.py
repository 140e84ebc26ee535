"""Prometheus ``/metrics``: celery-exporter's metric names and labels, read from Redis
on each scrape, so every serve process reports the same numbers and a restart
resets nothing.

- Counters ``celery_task_{sent,received,started,succeeded,failed,retried,revoked,
  rejected}_total`` (labels ``name``, ``hostname``, ``queue_name``; ``exception``
  too on failures) and histograms ``celery_task_runtime`` (successes, as
  celery-exporter observes) and ``celery_task_queue_wait_time`` (received - sent,
  once per task): monotonic totals the write script keeps in one hash
  (``Keys.metrics_totals``), never expiring, with capped label values.
- Gauges ``celery_worker_up`` / ``celery_worker_tasks_active`` (hostname) from the
  workers' records; ``celery_queue_length``, ``celery_active_consumer_count``,
  ``celery_active_worker_count`` and ``celery_queue_oldest_message_age_seconds``
  (queue_name) from the queue sampler's last sample (:func:`monitor.queues.latest`).
- The monitor's own: ``celery_monitor_redis_up``, tasks stored per state, workers
  by status, dropped records, malformed events.

Nothing is counted in this process. A scrape reads the totals hash (at most
``metrics_max_series`` fields, plus one batch's worth), the workers and one sample.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from .. import vocabulary as v
from ..store import Store
from ..values import stored_count

logger = logging.getLogger(__name__)

metrics_bp = Blueprint("monitor_metrics", __name__)

#: celery-exporter's histogram buckets (prometheus_client's default ones); every
#: one is a bound of the store's STAT_BUCKETS, so the totals fold into them exactly.
EXPORTER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
assert set(EXPORTER_BUCKETS) <= set(v.STAT_BUCKETS)

_LABELS = ["name", "hostname", "queue_name"]
_FAILED_LABELS = ["name", "hostname", "exception", "queue_name"]
#: counter -> (celery-exporter's metric name without _total, its help)
COUNTERS = {
    "sent": ("celery_task_sent", "Sent when a task message is published."),
    "received": ("celery_task_received", "Sent when the worker receives a task."),
    "started": ("celery_task_started", "Sent just before the worker executes the task."),
    "succeeded": ("celery_task_succeeded", "Sent if the task executed successfully."),
    "failed": ("celery_task_failed", "Sent if the execution of the task failed."),
    "retried": (
        "celery_task_retried",
        "Sent if the task failed, but will be retried in the future.",
    ),
    "revoked": ("celery_task_revoked", "Sent if the task has been revoked."),
    "rejected": (
        "celery_task_rejected",
        "The task was rejected by the worker, possibly to be re-queued or moved to a "
        "dead letter queue.",
    ),
}
HISTOGRAMS = {
    v.METRIC_RUNTIME: ("celery_task_runtime", "Histogram of task runtime measurements."),
    v.METRIC_WAIT: (
        "celery_task_queue_wait_time",
        "Histogram of the time tasks waited in their queue (received - sent).",
    ),
}
_BOUND_OF = {v.bucket_label(b): b for b in v.STAT_BUCKETS}
_BOUND_OF[v.STAT_INF] = math.inf


def _hostname(node: str) -> str:
    """celery-exporter's hostname label: the host part of ``worker@host``."""
    return node.split("@", 1)[1] if "@" in node else node


def _totals(raw: dict[str, str]) -> tuple[dict, dict]:
    """The totals hash as (counter -> labels -> n, histogram -> labels -> {bucket: n, sum})."""
    counters: dict[str, dict[tuple[str, ...], float]] = {k: {} for k in COUNTERS}
    histograms: dict[str, dict[tuple[str, ...], dict[str, float]]] = {k: {} for k in HISTOGRAMS}
    for field, value in raw.items():
        parts = field.split(v.METRIC_SEP)
        kind = parts[0]
        if kind in counters:
            if kind == "failed" and len(parts) == 5:
                labels = (parts[1], parts[2], parts[4], parts[3])  # exception before queue_name
            elif kind != "failed" and len(parts) == 4:
                labels = (parts[1], parts[2], parts[3])
            else:
                continue
            series = counters[kind]
            series[labels] = series.get(labels, 0.0) + stored_count(value)
        elif kind in histograms and len(parts) == 5:
            suffix = parts[4]
            if suffix != v.METRIC_SUM and suffix not in _BOUND_OF:
                continue
            h = histograms[kind].setdefault((parts[1], parts[2], parts[3]), {})
            h[suffix] = h.get(suffix, 0.0) + stored_count(value)
    return counters, histograms


def _buckets(h: dict[str, float]) -> list[tuple[str, float]]:
    """The store's finer buckets folded into celery-exporter's, cumulative."""
    out = []
    counts = sorted((_BOUND_OF[k], n) for k, n in h.items() if k != v.METRIC_SUM)
    total = sum(n for _, n in counts)
    for bound in EXPORTER_BUCKETS:
        out.append((floatToGoString(bound), sum(n for b, n in counts if b <= bound)))
    out.append(("+Inf", total))
    return out


class StoreCollector:
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        store = self.store
        settings = store.settings
        up = GaugeMetricFamily("celery_monitor_redis_up", "1 when the monitor's Redis answers")
        try:
            pipe = store.redis.pipeline(transaction=False)
            pipe.hgetall(store.keys.metrics_totals)
            pipe.hgetall(store.keys.meta)
            raw, meta_raw = pipe.execute()
            counts = store.state_counts()
            workers = store.workers()
            queues = _queue_sample(store)
        except Exception as exc:  # a scrape must still answer: report Redis down
            logger.warning("metrics: Redis unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        counters, histograms = _totals(raw)
        for kind, (name, doc) in COUNTERS.items():
            family = CounterMetricFamily(
                name, doc, labels=_FAILED_LABELS if kind == "failed" else _LABELS
            )
            for labels, n in sorted(counters[kind].items()):
                family.add_metric(list(labels), n)
            yield family
        for kind, (name, doc) in HISTOGRAMS.items():
            hist = HistogramMetricFamily(name, doc, labels=_LABELS)
            for labels, h in sorted(histograms[kind].items()):
                hist.add_metric(list(labels), _buckets(h), h.get(v.METRIC_SUM, 0.0))
            yield hist

        # workers, by celery-exporter's hostname (several nodes may share a host)
        worker_up: dict[str, int] = {}
        active: dict[str, float] = {}
        for w in workers:
            host = _hostname(str(w.get("hostname", "")))
            worker_up[host] = max(worker_up.get(host, 0), 1 if w["online"] else 0)
            n = stored_count(w.get("active")) if w["online"] else 0.0
            active[host] = active.get(host, 0.0) + n
        g_up = GaugeMetricFamily(
            "celery_worker_up",
            "Indicates if a worker has recently sent a heartbeat.",
            labels=["hostname"],
        )
        g_active = GaugeMetricFamily(
            "celery_worker_tasks_active",
            "The number of tasks the worker is currently processing",
            labels=["hostname"],
        )
        for host in sorted(worker_up):
            g_up.add_metric([host], worker_up[host])
            g_active.add_metric([host], active[host])
        yield g_up
        yield g_active

        yield from _queue_gauges(queues, workers, settings.metrics_max_queues)

        tasks = GaugeMetricFamily(
            "celery_monitor_tasks", "Stored tasks per state", labels=["state"]
        )
        for state, n in sorted(counts.items()):
            tasks.add_metric([state], n)
        yield tasks
        online = sum(1 for w in workers if w["online"])
        wk = GaugeMetricFamily(
            "celery_monitor_workers", "Known workers by status", labels=["status"]
        )
        wk.add_metric(["online"], online)
        wk.add_metric(["offline"], len(workers) - online)
        yield wk
        meta = {k: stored_count(n) for k, n in meta_raw.items()}
        dropped = GaugeMetricFamily(
            "celery_monitor_dropped_records",
            "Records dropped while Redis was unavailable, by source",
            labels=["source"],
        )
        for key, n in sorted(meta.items()):
            if key.startswith("dropped:"):
                dropped.add_metric([key[8:]], n)
        yield dropped
        malformed = GaugeMetricFamily(
            "celery_monitor_malformed_events", "Malformed events received and skipped"
        )
        malformed.add_metric([], sum(n for k, n in meta.items() if k.startswith("malformed")))
        yield malformed


def _queue_sample(store: Store) -> dict[str, dict[str, Any]]:
    """The queue sampler's last sample; nothing when monitor.queues is not there."""
    try:
        from .. import queues
    except ImportError:
        return {}
    sample = queues.latest(store)
    return sample if isinstance(sample, dict) else {}


def _queue_gauges(
    sample: dict[str, dict[str, Any]], workers: list[dict[str, Any]], limit: int
) -> Iterator[Metric]:
    length = GaugeMetricFamily(
        "celery_queue_length", "The number of message in broker queue.", labels=["queue_name"]
    )
    consumers = GaugeMetricFamily(
        "celery_active_consumer_count",
        "The number of active consumer in broker queue.",
        labels=["queue_name"],
    )
    worker_count = GaugeMetricFamily(
        "celery_active_worker_count",
        "The number of active workers in broker queue.",
        labels=["queue_name"],
    )
    oldest = GaugeMetricFamily(
        "celery_queue_oldest_message_age_seconds",
        "Seconds the oldest message of the queue has waited (its latency).",
        labels=["queue_name"],
    )
    by_queue: dict[str, set[str]] = {}
    try:
        from ..queues import worker_queues

        by_queue = worker_queues(workers, {})
    except ImportError:
        pass
    names = sorted(set(sample) | set(by_queue))[:limit]
    for name in names:
        row = sample.get(name) or {}
        if not isinstance(row, dict):
            row = {}
        for family, key in ((length, "depth"), (consumers, "consumers"), (oldest, "oldest_age")):
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if math.isfinite(value):
                    family.add_metric([name], value)
        worker_count.add_metric([name], len(by_queue.get(name, ())))
    yield length
    yield consumers
    yield worker_count
    yield oldest


@metrics_bp.get("/metrics")
def metrics() -> Any:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(current_app.extensions["monitor"].store))
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4; charset=utf-8")
