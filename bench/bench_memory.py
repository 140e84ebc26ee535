"""Redis memory per stored task (used_memory delta / tasks), for typical small args.

Runs against a private redis-server on a free port so nothing else skews
used_memory. Each task gets a realistic lifecycle (PENDING from the producer's
signal, RECEIVED / STARTED / SUCCESS from the worker) with small args, the
secondary indexes, the timeline, the counters and the change feed.

    python -m bench.bench_memory [--tasks 50000] [--both-paths]
"""

from __future__ import annotations

import argparse
import time
import uuid

from monitor.config import Settings
from monitor.model import TaskEvent
from monitor.store import Store, redis_client
from tests.helpers import RedisServer

NAMES = [f"proj.tasks.task_{i}" for i in range(20)]
WORKERS = [f"celery@worker-{i}" for i in range(4)]


def lifecycle(i: int, now: float, both: bool) -> list[TaskEvent]:
    tid = str(uuid.uuid4())
    name, worker = NAMES[i % len(NAMES)], WORKERS[i % len(WORKERS)]
    args = [i, f"user-{i % 1000}"]
    events = [
        TaskEvent(
            tid,
            "PENDING",
            now,
            "signal",
            "web-1",
            {
                "name": name,
                "args_json": args,
                "kwargs_json": {"retry": False},
                "queue": "celery",
                "retries": 0,
                "root_id": tid,
                "client": "web-1",
            },
        ),
        TaskEvent(
            tid,
            "RECEIVED",
            now + 0.01,
            "event",
            worker,
            {
                "name": name,
                "args": repr(tuple(args)),
                "kwargs": "{'retry': False}",
                "retries": 0,
                "root_id": tid,
                "worker": worker,
            },
        ),
        TaskEvent(tid, "STARTED", now + 0.02, "event", worker, {"worker": worker, "pid": 1234}),
        TaskEvent(
            tid,
            "SUCCESS",
            now + 0.05,
            "event",
            worker,
            {"worker": worker, "result": "{'ok': True, 'rows': 12}", "runtime": 0.03},
        ),
    ]
    if both:
        events += [
            TaskEvent(tid, "RECEIVED", now + 0.0101, "signal", worker, {"retries": 0}),
            TaskEvent(tid, "STARTED", now + 0.0201, "signal", worker, {"retries": 0}),
            TaskEvent(tid, "SUCCESS", now + 0.0501, "signal", worker, {"runtime": 0.03}),
        ]
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--both-paths", action="store_true", help="signals and events both report")
    opts = parser.parse_args()
    server = RedisServer().start()
    try:
        settings = Settings(redis_url=server.url, prefix="bench", max_tasks=10_000_000)
        store = Store(redis_client(server.url), settings)
        # warm up: scripts, dict sizes, stats keys
        store.apply(lifecycle(0, time.time(), opts.both_paths))
        store.delete_all()
        before = store.redis.info("memory")["used_memory"]
        now = time.time()
        batch: list[TaskEvent] = []
        for i in range(opts.tasks):
            batch += lifecycle(i, now + i * 0.001, opts.both_paths)
            if len(batch) >= 2000:
                store.apply(batch)
                batch = []
        if batch:
            store.apply(batch)
        after = store.redis.info("memory")["used_memory"]
        stream = store.redis.memory_usage(store.keys.changes) or 0
        per_task = (after - before) / opts.tasks
        sample = store.redis.zrange(store.keys.tasks, 0, 0)[0]
        hash_bytes = store.redis.memory_usage(store.keys.task(sample))
        timeline_bytes = store.redis.memory_usage(store.keys.timeline(sample))
        print(f"tasks stored:            {store.redis.zcard(store.keys.tasks):,}")
        print(f"used_memory delta:       {(after - before) / 1e6:.1f} MB")
        print(f"  of which change feed:  {stream / 1e6:.1f} MB (bounded, not per task)")
        print(f"per task (all included): {per_task:,.0f} bytes   target <= 2048")
        print(f"per task (excl. feed):   {(after - before - stream) / opts.tasks:,.0f} bytes")
        print(f"  one task hash:         {hash_bytes} bytes; its timeline: {timeline_bytes} bytes")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
