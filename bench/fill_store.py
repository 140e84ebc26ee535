"""Fill a key prefix with N realistic finished/running tasks, fast (benchmarks, demos).

Each task is one record carrying its whole story (name, worker, args, result,
received/started/succeeded timestamps, runtime) applied through
:meth:`Store.apply` in batches, so the indexes, counters and change feed are the
real ones. Names follow a skewed mix (one name is 1/20 of the tasks) so that
"filter by name" and "filter by state" benchmarks have realistic selectivity.

    python -m bench.fill_store --tasks 1000000 --prefix bench-1m [--redis URL]

A million tasks take about two minutes here (120 s, 8,300 tasks/s, 1.35 GB of
Redis memory): fill once into a private redis-server and point the benchmarks
at it (``--redis URL --prefix P``).
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from collections.abc import Iterator

from monitor.config import Settings
from monitor.model import TaskEvent, WorkerEvent
from monitor.store import Store, redis_client

NAMES = [
    f"proj.tasks.{n}"
    for n in (
        "send_email",
        "resize_image",
        "sync_account",
        "report",
        "charge_card",
        "index_doc",
        "notify",
        "cleanup",
        "export_csv",
        "geocode",
    )
]
WEIGHTS = [30, 20, 15, 10, 5, 5, 5, 4, 3, 3]
WORKERS = [f"celery@worker-{i}" for i in range(8)]
BATCH = 5000


def task_records(n: int, start: float, span: float, seed: int = 7) -> Iterator[TaskEvent]:
    """n tasks spread over [start, start + span] seconds, oldest first."""
    rng = random.Random(seed)
    for i in range(n):
        tid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        name = rng.choices(NAMES, WEIGHTS)[0]
        worker = WORKERS[i % len(WORKERS)]
        t = start + span * i / max(n, 1)
        roll = rng.random()
        runtime = rng.expovariate(1 / 0.4)
        fields = {
            "name": name,
            "worker": worker,
            "args": f"({i}, 'user-{rng.randint(1, 99999)}@example.com')",
            "kwargs": f"{{'priority': {rng.randint(0, 9)}}}",
            "received": t - runtime - 0.01,
            "started": t - runtime,
            "retries": 0,
            "queue": "celery",
            "root_id": tid,
        }
        if roll < 0.90:
            state = "SUCCESS"
            fields.update(result=repr({"ok": True, "n": i}), runtime=runtime, succeeded=t)
        elif roll < 0.96:
            state = "FAILURE"
            fields.update(exception=f"ValueError('bad input {i}')", runtime=runtime, failed=t)
        elif roll < 0.98:
            state = "STARTED"
        else:
            state = "RETRY"
            fields.update(exception="ConnectionError('smtp timeout')", retried=t)
        yield TaskEvent(tid, state, t, "event", worker, fields)


def fill(store: Store, n: int, span: float = 3600.0, batch: int = BATCH) -> float:
    """Apply n tasks; returns the seconds it took."""
    started = time.perf_counter()
    now = time.time()
    chunk: list = []
    for record in task_records(n, now - span, span):
        chunk.append(record)
        if len(chunk) >= batch:
            store.apply(chunk)
            chunk = []
    chunk.extend(
        WorkerEvent(w, "heartbeat", time.time(), "event", {"freq": 2.0, "active": 1})
        for w in WORKERS
    )
    store.apply(chunk)
    return time.perf_counter() - started


def bench_settings(redis_url: str, prefix: str, n: int) -> Settings:
    # Retention must keep every task (default max_tasks is 100k) and the
    # change feed small: a fill is not a live stream.
    return Settings(
        redis_url=redis_url, prefix=prefix, max_tasks=max(n * 2, 1000), stream_maxlen=1000
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--prefix", default="bench-fill")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    settings = bench_settings(args.redis, args.prefix, args.tasks)
    store = Store(redis_client(args.redis, socket_timeout=60), settings)
    seconds = fill(store, args.tasks)
    print(
        f"filled {args.tasks} tasks into prefix {args.prefix!r} in {seconds:.1f}s "
        f"({args.tasks / seconds:,.0f} tasks/s)"
    )


if __name__ == "__main__":
    main()
