"""Task list latency at 1,000,000 stored tasks against a real ``monitor serve`` process.

Fills a private prefix (bench.fill_store), starts ``serve --no-events``, then
times ~200 sequential ``GET /api/v1/tasks?limit=100`` requests unfiltered,
filtered by state, by name, by state and name, by two states (merged indexes),
and Flower's ``/api/tasks?limit=100`` (also with two states at an offset), and prints
p50/p95 next to the target (p95 <= 25 ms; Flower 2.2 measured ~240 ms at 100k).
The prefix is deleted at the end; ``--prefix`` reuses one filled before
(bench.fill_store) and keeps it.

    python -m bench.bench_api [--tasks 1000000] [--requests 200] [--redis URL] [--prefix P]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
import uuid

import requests

from bench.fill_store import NAMES, bench_settings, fill
from monitor.store import Store, redis_client
from tests.helpers import clean_env, free_port, http_get, start_serve, stop_process, wait_for

TARGET_P95_MS = 25.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--prefix", help="a prefix filled before: no fill, nothing deleted")
    args = parser.parse_args()
    prefix = args.prefix or "bench-api-" + uuid.uuid4().hex[:8]
    settings = bench_settings(args.redis, prefix, args.tasks)
    store = Store(redis_client(args.redis, socket_timeout=120), settings)
    proc = None
    try:
        if not args.prefix:
            print(f"filling {args.tasks:,} tasks into {prefix!r} ...", flush=True)
            seconds = fill(store, args.tasks)
            print(f"filled in {seconds:.0f}s", flush=True)
        print(f"{store.redis.zcard(store.keys.tasks):,} tasks stored")
        port = free_port()
        proc = start_serve(
            args.redis,
            prefix,
            port,
            env=clean_env(MONITOR_MAX_TASKS=str(settings.max_tasks)),
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            response = http_get(base + "/api/v1/task-names")
            return response is not None and response.ok

        wait_for(up, 60, 0.2, "serve")
        session = requests.Session()
        cases = [
            ("unfiltered", "/api/v1/tasks?limit=100"),
            ("state=SUCCESS", "/api/v1/tasks?limit=100&state=SUCCESS"),
            (f"name={NAMES[4]}", f"/api/v1/tasks?limit=100&name={NAMES[4]}"),
            ("state+name (scan)", f"/api/v1/tasks?limit=100&state=FAILURE&name={NAMES[4]}"),
            ("2 states (merged)", "/api/v1/tasks?limit=100&state=SUCCESS,FAILURE"),
            ("flower /api/tasks", "/api/tasks?limit=100"),
            ("flower 2 states", "/api/tasks?limit=100&state=SUCCESS,FAILURE&offset=1000"),
        ]
        print(
            f"\n{'query':<24}{'p50 ms':>9}{'p95 ms':>9}{'rows':>6}{'total':>10}  target p95 <= "
            f"{TARGET_P95_MS:.0f} ms"
        )
        for label, path in cases:
            for _ in range(10):  # warm-up
                session.get(base + path)
            times = []
            body = None
            for _ in range(args.requests):
                t = time.perf_counter()
                response = session.get(base + path)
                times.append((time.perf_counter() - t) * 1000)
                body = response.json()
            rows = len(body["tasks"]) if "tasks" in body else len(body)
            total = body.get("total") if "tasks" in body else "-"
            p50, p95 = statistics.median(times), percentile(times, 0.95)
            verdict = "ok" if p95 <= TARGET_P95_MS else "MISSED"
            print(f"{label:<24}{p50:>9.1f}{p95:>9.1f}{rows:>6}{total!s:>10}  {verdict}")
    finally:
        if proc is not None:
            stop_process(proc)
        if not args.prefix:
            store.delete_all()
        store.close()


if __name__ == "__main__":
    main()
