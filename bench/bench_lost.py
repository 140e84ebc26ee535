"""Cost of the lost/stuck lists and of the broker read, in process, on a private prefix.

Worst case for ``flag=lost``: every running task is on a live worker, so the scan
examines its whole budget and finds nothing. Also times ``GET /api/v1/risks``'s
broker read of the oldest 500 unacked messages (kombu's layout, 1 kB each).

    python -m bench.bench_lost [--tasks 60000] [--redis URL]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid

from celery import Celery

from monitor import lost
from monitor.config import Settings
from monitor.model import TaskEvent, WorkerEvent
from monitor.store import Store, redis_client
from monitor.web.queries import TaskQuery


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=60_000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    prefix = "bench-lost-" + uuid.uuid4().hex[:6]
    store = Store(redis_client(args.redis), Settings(redis_url=args.redis, prefix=prefix))
    r = store.redis
    keyprefix = prefix + ":broker:"
    try:
        now = time.time()
        store.apply([WorkerEvent("alive@h", "heartbeat", now, "signal", {"freq": 60.0})])
        for start in range(0, args.tasks, 2000):
            store.apply(
                [
                    TaskEvent(
                        f"t{i}",
                        "STARTED",
                        now - i * 0.001,
                        "signal",
                        "alive@h",
                        {"name": f"proj.n{i % 50}", "worker": "alive@h"},
                    )
                    for i in range(start, min(start + 2000, args.tasks))
                ]
            )
        for flag in ("lost", "stuck"):
            page = lost.flagged_page(store, TaskQuery(), flag)
            ms = timed(lambda f=flag: lost.flagged_page(store, TaskQuery(), f), 10)
            print(
                f"flag={flag}: {args.tasks} STARTED on a live worker, scanned "
                f"{page['scanned']}, p50 {statistics.median(ms):.0f} ms, max {max(ms):.0f} ms"
            )
        pipe = r.pipeline()
        for i in range(5000):
            message = {
                "body": "A" * 1000,
                "headers": {"id": f"id{i}", "task": "proj.x"},
                "properties": {},
            }
            pipe.zadd(keyprefix + "unacked_index", {f"tag{i}": now - i})
            pipe.hset(keyprefix + "unacked", f"tag{i}", json.dumps([message, "", "celery"]))
        pipe.execute()
        app = Celery("b", broker=args.redis, set_as_current=False)
        app.conf.broker_transport_options = {
            "global_keyprefix": keyprefix,
            "visibility_timeout": 60,
        }
        view = lost.BrokerView()
        keys = lost.broker_settings(app, {})["keys"]
        ms = []
        for _ in range(20):
            view._cache.clear()
            start = time.perf_counter()
            view.unacked(args.redis, keys)
            ms.append((time.perf_counter() - start) * 1000)
        print(
            f"unacked read: 5,000 entries, oldest {lost.UNACKED_READ} read, "
            f"p50 {statistics.median(ms):.1f} ms, max {max(ms):.1f} ms"
        )
    finally:
        store.delete_all()
        store.close()


if __name__ == "__main__":
    main()
