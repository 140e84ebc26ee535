"""Hook overhead: a prefork worker running N no-op tasks with and without the
monitor's signal hooks, measured side by side in one run (alternating rounds).

Tasks are queued first, then a worker is started and timed from its first to
its last task (task_prerun/postrun timestamps in the result backend would add
work of their own, so the test counts completions in the queue instead).

    python -m bench.bench_hooks [--tasks 10000] [--rounds 2] [--floors]
                                [--prefetch 1] [--variant MONITOR_X=1 ...]

Next to throughput it prints CPU time per task over the same window (the
worker's parent and pool processes from /proc, plus redis-server's own
accounting), a second view of the hooks' cost. On a machine shared with other
work both move by ±20 % between rounds: read the median of the paired
per-round ratios, not best-of-N.

Each ``--variant`` adds a hooked worker run with those ``MONITOR_*`` settings to
every round (comma-separated pairs), to compare settings side by side.
``--floors`` adds three floors (tests/workerapp.py): hooks that push each
encoded batch to a Redis list unprocessed, hooks whose records are built and
encoded but never stored, and hooks that return at once. They show what a
simpler design could win, and how far the machine's noise reaches.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import uuid
from dataclasses import dataclass

import redis
from celery import Celery

from tests.helpers import RedisServer, WorkerProcess, wait_for

BROKER_DB = 8
#: The store shares the broker's redis-server by default (a common setup; its
#: scripts then hold up the broker too); --own-redis gives it a server of its own.
STORE_URL = "redis://127.0.0.1:6379/0"
T = "tests.workerapp."


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process and all its descendants (Linux /proc)."""
    total = 0.0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{current}/task/{current}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return total


def redis_cpu_seconds(url: str) -> float:
    info = redis.Redis.from_url(url).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass
class Run:
    tasks_per_second: float
    cpu_us_per_task: float  # worker processes + redis-server(s), task window only


def run_once(
    tasks: int, hooks: bool, store_url: str = STORE_URL, env: dict[str, str] | None = None
) -> Run:
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
    servers = {broker.rsplit("/", 1)[0], store_url.rsplit("/", 1)[0]}
    cpu_before = tree_cpu_seconds(worker.proc.pid) + sum(map(redis_cpu_seconds, servers))
    start = time.perf_counter()  # from "ready": start-up is not per-task cost
    # done when the queue is empty and nothing is reserved: all acked (acks early)
    wait_for(
        lambda: client.llen(queue) == 0 and not client.hlen("unacked"),
        900,
        0.05,
        what="queue drained",
    )
    elapsed = time.perf_counter() - start
    # a last flush interval so the hooks' final batches are counted too
    time.sleep(0.3)
    cpu = tree_cpu_seconds(worker.proc.pid) + sum(map(redis_cpu_seconds, servers)) - cpu_before
    worker.stop()
    if hooks:
        store = redis.Redis.from_url(store_url)
        stored = store.zcard(f"{prefix}:tasks:state:SUCCESS")
        for key in store.scan_iter(f"{prefix}:*", count=1000):  # the push floor's list too
            store.unlink(key)
        if not (env or {}).get("BENCH_HOOKS_FLOOR"):
            print(f"    (hooks stored {stored:,} of {tasks:,} tasks as SUCCESS)")
    client.delete(queue)
    return Run(tasks / elapsed, cpu / tasks * 1e6)


def _show(run: Run) -> str:
    return f"{run.tasks_per_second:,.0f} tasks/s ({run.cpu_us_per_task:,.0f} us CPU/task)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--prefetch",
        type=int,
        default=1,
        help="worker_prefetch_multiplier of every run (tests' app: 1; Celery's default: 4)",
    )
    parser.add_argument(
        "--floors", action="store_true", help="also run the push, discard and dispatch floors"
    )
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
    if opts.floors:
        variants["floor: batches pushed raw"] = {"BENCH_HOOKS_FLOOR": "push"}
        variants["floor: records discarded"] = {"BENCH_HOOKS_FLOOR": "discard"}
        variants["floor: handlers return at once"] = {"BENCH_HOOKS_FLOOR": "dispatch"}
    base = {"TEST_PREFETCH_MULTIPLIER": str(opts.prefetch)}
    without: list[Run] = []
    with_: dict[str, list[Run]] = {label: [] for label in variants}
    for r in range(opts.rounds):
        # A fresh random order every round: a fixed one lets whatever the
        # previous run leaves behind (a worker still exiting, Redis freeing
        # its keys) always land on the same contender.
        order: list[tuple[str, dict[str, str] | None]] = [("without", None), *variants.items()]
        random.shuffle(order)
        results: dict[str, Run] = {}
        for label, env in order:
            hooks = label != "without"
            run_env = {**base, **(env or {})}
            results[label] = run_once(opts.tasks, hooks=hooks, store_url=store_url, env=run_env)
        without.append(results["without"])
        for label in variants:
            with_[label].append(results[label])
        shown = "; ".join(f"{label} {_show(results[label])}" for label, _ in order)
        print(f"round {r + 1}: {shown}", flush=True)
    a = max(run.tasks_per_second for run in without)
    cpu_without = statistics.median(run.cpu_us_per_task for run in without)
    print(
        f"best of {opts.rounds}: without hooks {a:,.0f} tasks/s;"
        f" median CPU {cpu_without:,.0f} us/task"
    )
    for label, runs in with_.items():
        b = max(run.tasks_per_second for run in runs)
        # a round's runs are back to back: their ratio cancels the slow drifts
        # of a shared machine that best-of-N across rounds does not
        paired = statistics.median(
            w.tasks_per_second / o.tasks_per_second for w, o in zip(runs, without, strict=True)
        )
        cpu = statistics.median(run.cpu_us_per_task for run in runs)
        print(
            f"  {label}: {b:,.0f} tasks/s, ratio {b / a:.1%};"
            f" median of the per-round ratios {paired:.1%} (target >= 95%);"
            f" median CPU {cpu:,.0f} us/task, {cpu - cpu_without:+,.0f} us"
            f" ({cpu_without / cpu:.1%} of the tasks per CPU-second without hooks)"
        )
    if own:
        own.stop()


if __name__ == "__main__":
    main()
