"""Prometheus ``/metrics``: a custom collector reading the store on each scrape.

Nothing is counted in this process (several serve processes would disagree);
every value comes from Redis: tasks per state (index sizes), workers online,
the runtime histogram summed over the per-minute ``rt:*`` buckets of the last
``WINDOW_MINUTES`` minutes, and the monitor's own dropped/malformed counters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from ..store import RUNTIME_BUCKETS, Store, bucket_label

logger = logging.getLogger(__name__)

metrics_bp = Blueprint("monitor_metrics", __name__)

#: The runtime histogram covers tasks finished in this many recent minutes.
WINDOW_MINUTES = 60


class StoreCollector:
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        store = self.store
        up = GaugeMetricFamily("celery_monitor_redis_up", "1 when the monitor's Redis answers")
        try:
            counts = store.state_counts()
            workers = store.workers()
            minutes = store.minute_stats(WINDOW_MINUTES, time.time())
            meta = store.meta()
        except Exception as exc:  # a scrape must still answer: report Redis down
            logger.warning("metrics: Redis unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
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
        totals: dict[str, float] = {}
        rtsum = 0.0
        for minute in minutes:
            for field, value in minute["counters"].items():
                if field.startswith("rt:"):
                    totals[field[3:]] = totals.get(field[3:], 0.0) + float(value)
                elif field == "rtsum":
                    rtsum += float(value)
        buckets = []
        cumulative = 0.0
        for bound in RUNTIME_BUCKETS:
            cumulative += totals.get(bucket_label(bound), 0.0)
            buckets.append((bucket_label(bound), cumulative))
        cumulative += totals.get("+Inf", 0.0)
        buckets.append(("+Inf", cumulative))
        yield HistogramMetricFamily(
            "celery_monitor_task_runtime_seconds",
            f"Runtime of tasks finished in the last {WINDOW_MINUTES} minutes",
            buckets=buckets,
            sum_value=rtsum,
        )
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


@metrics_bp.get("/metrics")
def metrics() -> Any:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(current_app.extensions["monitor"].store))
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4; charset=utf-8")
