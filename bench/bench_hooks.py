"""Hook overhead: a prefork worker running N no-op tasks with and without the
monitor's signal hooks, measured side by side in one run (alternating rounds).

Tasks are queued first, then a worker is started and timed from its first to
its last task (task_prerun/postrun timestamps in the result backend would add
work of their own, so the test counts completions in the queue instead).

    python -m bench.bench_hooks [--tasks 10000] [--rounds 2] [--variant MONITOR_X=1 ...]

Each ``--variant`` adds a hooked worker run with those ``MONITOR_*`` settings to
every round (comma-separated pairs), to compare settings side by side.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import redis
from celery import Celery

from tests.helpers import RedisServer, WorkerProcess, wait_for

BROKER_DB = 8
#: The store shares the broker's redis-server by default (a common setup; its
#: scripts then hold up the broker too); --own-redis gives it a server of its own.
STORE_URL = "redis://127.0.0.1:6379/0"
T = "tests.workerapp."


def run_once(
    tasks: int, hooks: bool, store_url: str = STORE_URL, env: dict[str, str] | None = None
) -> float:
    broker = f"redis://127.0.0.1:6379/{BROKER_DB}"
    queue = f"bench-hooks-{uuid.uuid4().hex[:6]}"
    prefix = f"bench-hooks-{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(broker)
    app = Celery("bench", broker=broker)
    app.conf.task_default_queue = queue
    with app.producer_or_acquire() as producer:
        for _ in range(tasks):
            app.send_task(T + "noop", producer=producer)
    app.close()
    assert client.llen(queue) == tasks
    worker = WorkerProcess(
        broker=broker,
        queue=queue,
        prefix=prefix,
        hooks=hooks,
        concurrency=2,
        redis_url=store_url,
        extra_env=env,
    )
    worker.start()
    start = time.perf_counter()  # from "ready": start-up is not per-task cost
    # done when the queue is empty and nothing is reserved: all acked (acks early)
    wait_for(
        lambda: client.llen(queue) == 0 and not client.hlen("unacked"),
        900,
        0.05,
        what="queue drained",
    )
    elapsed = time.perf_counter() - start
    worker.stop()
    if hooks:
        store = redis.Redis.from_url(store_url)
        stored = store.zcard(f"{prefix}:tasks:state:SUCCESS")
        for key in store.scan_iter(f"{prefix}:*", count=1000):
            store.unlink(key)
        print(f"    (hooks stored {stored:,} of {tasks:,} tasks as SUCCESS)")
    client.delete(queue)
    return tasks / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--own-redis",
        action="store_true",
        help="store in a redis-server of its own, not the broker's",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="MONITOR_X=value[,MONITOR_Y=value]: one more hooked run per round with these",
    )
    opts = parser.parse_args()
    own = RedisServer().start() if opts.own_redis else None
    store_url = own.url if own else STORE_URL
    print(f"store: {'its own redis-server' if own else 'the broker redis-server'} ({store_url})")
    variants: dict[str, dict[str, str] | None] = {"with hooks": None}
    for spec in opts.variant:
        variants[f"with {spec}"] = dict(pair.split("=", 1) for pair in spec.split(","))
    without: list[float] = []
    with_: dict[str, list[float]] = {label: [] for label in variants}
    for r in range(opts.rounds):
        without.append(run_once(opts.tasks, hooks=False, store_url=store_url))
        line = f"round {r + 1}: without {without[-1]:,.0f} tasks/s"
        for label, env in variants.items():
            with_[label].append(run_once(opts.tasks, hooks=True, store_url=store_url, env=env))
            line += f", {label} {with_[label][-1]:,.0f}"
        print(line, flush=True)
    a = max(without)
    print(f"best of {opts.rounds}: without hooks {a:,.0f} tasks/s")
    for label, runs in with_.items():
        b = max(runs)
        # each round's runs are back to back: their ratio cancels the slow drifts
        # of a shared machine that best-of-N across rounds does not
        paired = statistics.median(w / o for w, o in zip(runs, without, strict=True))
        print(
            f"  {label}: {b:,.0f} tasks/s, ratio {b / a:.1%};"
            f" median of the per-round ratios {paired:.1%} (target >= 95%)"
        )
    if own:
        own.stop()


if __name__ == "__main__":
    main()
