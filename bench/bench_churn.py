"""Redis memory over a long run with churning task ids, task names and workers.

Every key the store writes must be bounded: tasks by ``max_tasks``/``max_age``,
task names by their tasks (``{p}:names`` shrinks with them), children and
group sets by their TTL, workers by ``worker_purge_after`` (even with forged
far-future heartbeats, which the store clamps), per-minute counters by their
TTL and a cap on task names per minute. This writes realistic lifecycles at a
steady rate into a private redis-server where every task has a new id, a new
task name appears every ``--name-every`` tasks, a new worker hostname every
few seconds, one heartbeat in ten is forged far in the future, and prints
Redis ``used_memory`` and key counts as it goes. Memory must level off once
the retention cap is reached and stay flat.

    python -m bench.bench_churn [--seconds 300] [--rate 4000] [--max-tasks 20000]

The stats TTL and worker purge delay are shortened (``--stats-ttl``,
``--purge-after``) so that their plateau, too, is reached within the run.
"""

from __future__ import annotations

import argparse
import time
import uuid

from monitor.config import Settings
from monitor.model import TaskEvent, WorkerEvent
from monitor.store import Store, redis_client
from tests.helpers import RedisServer

FAR_FUTURE = 10_000_000_000.0  # year 2286


def lifecycle(n: int, now: float, name: str, worker: str) -> list[TaskEvent]:
    tid = uuid.uuid4().hex
    parent = {"parent_id": uuid.uuid4().hex, "group_id": uuid.uuid4().hex} if n % 5 == 0 else {}
    fields = {"name": name, "args": repr((n, "x" * 20)), "kwargs": "{}", "retries": 0}
    return [
        TaskEvent(
            tid,
            "PENDING",
            now,
            "signal",
            "web-1",
            {**fields, "args_json": [n, "x" * 20], "queue": "celery", **parent},
        ),  # fmt: skip
        TaskEvent(tid, "RECEIVED", now + 0.001, "event", worker, {**fields, "worker": worker}),
        TaskEvent(tid, "STARTED", now + 0.002, "event", worker, {"worker": worker, "pid": 7}),
        TaskEvent(
            tid,
            "SUCCESS",
            now + 0.01,
            "event",
            worker,
            {"worker": worker, "result": "'ok'", "runtime": 0.008},
        ),  # fmt: skip
    ]


def sample(store: Store) -> dict[str, int]:
    info = store.redis.info("memory")
    pipe = store.redis.pipeline(transaction=False)
    pipe.dbsize()
    pipe.zcard(store.keys.tasks)
    pipe.zcard(store.keys.task_names)
    pipe.zcard(store.keys.workers)
    keys, tasks, names, workers = pipe.execute()
    return {
        "used_memory": int(info["used_memory"]),
        "keys": keys,
        "tasks": tasks,
        "names": names,
        "workers": workers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--rate", type=int, default=4000, help="tasks per second")
    parser.add_argument("--max-tasks", type=int, default=20_000)
    parser.add_argument("--name-every", type=int, default=20, help="tasks per task name")
    parser.add_argument("--worker-every", type=float, default=2.0, help="seconds per hostname")
    parser.add_argument("--stats-ttl", type=float, default=90.0)
    parser.add_argument("--purge-after", type=float, default=30.0)
    parser.add_argument("--report-every", type=float, default=15.0)
    args = parser.parse_args()

    server = RedisServer().start()
    try:
        settings = Settings(
            redis_url=server.url,
            prefix="churn",
            max_tasks=args.max_tasks,
            stats_ttl=args.stats_ttl,
            worker_purge_after=args.purge_after,
        )
        store = Store(redis_client(server.url), settings)
        start = time.time()
        n = 0
        batch_tasks = 125  # 500 records a batch, as the writers send them
        rows = []
        next_report = start
        print(f"{'s':>5} {'tasks written':>13} {'stored':>7} {'names':>6} {'workers':>7} "
              f"{'keys':>7} {'used_memory':>12}")  # fmt: skip
        while (now := time.time()) - start < args.seconds:
            epoch = int((now - start) / args.worker_every)
            worker = f"celery@churn-{epoch}"
            records: list[TaskEvent | WorkerEvent] = []
            for _ in range(batch_tasks):
                records += lifecycle(n, now, f"proj.churn.task_{n // args.name_every}", worker)
                n += 1
            forged = FAR_FUTURE if n % 10 == 0 else now
            records.append(WorkerEvent(worker, "heartbeat", forged, "event", {"freq": 2.0}))
            store.apply(records, now=now)
            if now >= next_report:
                row = sample(store)
                rows.append((now - start, row))
                print(f"{now - start:5.0f} {n:13,} {row['tasks']:7,} {row['names']:6,} "
                      f"{row['workers']:7,} {row['keys']:7,} {row['used_memory']:12,}",
                      flush=True)  # fmt: skip
                next_report += args.report_every
            # pace to --rate tasks per second
            ahead = n / args.rate - (time.time() - start)
            if ahead > 0:
                time.sleep(ahead)
        settled = [r for t, r in rows if t >= args.seconds / 3]
        memory = [r["used_memory"] for r in settled]
        print(
            f"\n{n:,} tasks ({n // args.name_every:,} task names, "
            f"{int(args.seconds / args.worker_every):,} workers) in {args.seconds:.0f} s; "
            f"retention cap {args.max_tasks:,} tasks"
        )
        if memory:
            low, high = min(memory), max(memory)
            print(
                f"used_memory, last two thirds: {low / 2**20:.1f} .. {high / 2**20:.1f} MiB "
                f"(max/min {high / low:.2f}); stored tasks {settled[-1]['tasks']:,}, "
                f"names {settled[-1]['names']:,}, workers {settled[-1]['workers']:,}"
            )
        store.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
