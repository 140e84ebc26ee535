"""``GET /api/v1/beat``'s work at its caps: 1,000 entries (500 in the app's
beat_schedule, 500 hand-written celery-redbeat keys), 500 task names (two entries
each, told apart by their args), 2,000 stored beat runs, timed in-process
(``monitor.beat.beat_status``) over ``--calls`` calls: p50/p95. Everything lives
under a private prefix, deleted at the end.

    python -m bench.bench_beat [--calls 20] [--redis URL]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid

from celery import Celery
from celery.schedules import crontab

from monitor import beat
from monitor.config import Settings
from monitor.model import TaskEvent
from monitor.store import Store, redis_client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    prefix = "bench-beat-" + uuid.uuid4().hex[:8]
    rb_prefix = prefix + "-rb:"
    store = Store(redis_client(args.redis), Settings(redis_url=args.redis, prefix=prefix))
    app = Celery("bench", broker=args.redis)
    app.conf.update(redbeat_redis_url=args.redis, redbeat_key_prefix=rb_prefix, timezone="UTC")
    schedule = {}
    for i in range(500):
        sched = 10.0 + i if i % 2 else crontab(minute=f"*/{1 + i % 30}")
        schedule[f"app-{i}"] = {"task": f"proj.t{i // 2}", "schedule": sched, "args": (i,)}
    app.conf.beat_schedule = schedule
    now = time.time()
    pipe = store.redis.pipeline(transaction=False)
    for i in range(500):
        key = f"{rb_prefix}rb-{i}"
        definition = {
            "name": f"rb-{i}",
            "task": f"proj.t{250 + i // 2}",
            "schedule": {"__type__": "interval", "every": 30.0 + i, "relative": False},
            "args": [i],
            "kwargs": {},
            "options": {},
            "enabled": True,
        }
        pipe.hset(key, mapping={"definition": json.dumps(definition), "meta": "{}"})
        pipe.zadd(f"{rb_prefix}:schedule", {key: now + i})
    pipe.execute()
    events = []
    for n in range(500):
        for run in range(4):  # four runs per task name, alternating its two entries
            i = 2 * (n % 250) + run % 2  # the args of one of the name's two entries
            tid = f"{prefix}-{n}-{run}"
            events.append(
                TaskEvent(
                    tid,
                    "PENDING",
                    now - 60 + run,
                    "signal",
                    "beat@host",
                    {
                        "name": f"proj.t{n}",
                        "args": f"[{i}]",
                        "kwargs": "{}",
                        "beat": "1",
                        "body_error": "bench",
                    },
                )
            )
    for start in range(0, len(events), 500):
        store.apply(events[start : start + 500])
    try:
        times = []
        for _ in range(args.calls):
            started = time.perf_counter()
            body = beat.beat_status(store, app)
            times.append((time.perf_counter() - started) * 1000)
        seen = sum(1 for e in body["entries"] if e["last_run"] is not None)
        times.sort()
        p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
        print(
            f"{body['count']} entries ({seen} with a run seen): "
            f"p50 {statistics.median(times):.1f} ms, p95 {p95:.1f} ms over {args.calls} calls"
        )
    finally:
        store.delete_all()
        for key in store.redis.scan_iter(rb_prefix + "*"):
            store.redis.delete(key)
        store.close()
        app.close()


if __name__ == "__main__":
    main()
