"""Live push: store-to-browser latency at 1,000 events/s and messages per client in a burst.

A real ``monitor serve --no-events`` process and a real ``socketio.Client``
(subscribed to the unfiltered task list and to the overview). Events are
written into the store in batches every 10 ms, as the hooks' and receiver's
writers do (their own flush interval, 0.1 s by default, comes on top).

1. 1,000 events/s for ``--seconds``: latency from ``Store.apply`` returning to
   the row reaching the client, p50/p95 (target p95 <= 250 ms).
2. 10,000 events/s for ``--seconds``: Socket.IO messages per second received by
   the client (target <= 10), against the events/s actually written.

    python -m bench.bench_live [--seconds 10] [--transport polling|websocket]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import threading
import time
import uuid

import socketio

from monitor.config import Settings
from monitor.model import TaskEvent
from monitor.store import Store, redis_client
from tests.helpers import free_port, http_get, start_serve, stop_process, wait_for


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def produce(store: Store, rate: int, seconds: float, sent: dict[str, float], tag: str) -> int:
    """Write `rate` task events per second in 10 ms batches; returns the count written."""
    per_tick = max(1, rate // 100)
    start = time.monotonic()
    n = 0
    tick = 0
    while time.monotonic() - start < seconds:
        batch = [
            TaskEvent(
                f"{tag}-{n + i}",
                "SUCCESS",
                time.time(),
                "signal",
                "celery@bench",
                {"name": "bench.task", "worker": "celery@bench", "runtime": 0.01},
            )
            for i in range(per_tick)
        ]
        store.apply(batch)
        done = time.monotonic()
        for record in batch:
            sent[record.task_id] = done
        n += per_tick
        tick += 1
        delay = start + tick * 0.01 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--transport", default="polling", choices=["polling", "websocket"])
    args = parser.parse_args()
    prefix = "bench-live-" + uuid.uuid4().hex[:8]
    settings = Settings(redis_url=args.redis, prefix=prefix, max_tasks=1_000_000)
    store = Store(redis_client(args.redis), settings)
    port = free_port()
    proc = start_serve(args.redis, prefix, port, stderr=subprocess.DEVNULL)
    client = socketio.Client()
    lock = threading.Lock()
    arrived: dict[str, float] = {}
    messages: list[tuple[float, str]] = []

    def on_tasks(data: dict) -> None:
        now = time.monotonic()
        with lock:
            messages.append((now, "tasks"))
            for row in data["rows"]:
                arrived.setdefault(row["id"], now)

    def on_overview(_data: dict) -> None:
        with lock:
            messages.append((time.monotonic(), "overview"))

    client.on("tasks", on_tasks)
    client.on("overview", on_overview)
    try:

        def up() -> bool:
            response = http_get(f"http://127.0.0.1:{port}/api/v1/workers")
            return response is not None and response.ok

        wait_for(up, 60, 0.2, "serve")
        client.connect(f"http://127.0.0.1:{port}", transports=[args.transport], wait_timeout=10)
        client.call("subscribe", {"room": "tasks", "filters": {}}, timeout=10)
        client.call("subscribe", {"room": "overview"}, timeout=10)
        time.sleep(1.0)

        sent: dict[str, float] = {}
        n = produce(store, 1000, args.seconds, sent, "steady")
        wait_for(lambda: f"steady-{n - 1}" in arrived, 30, what="the last steady event")
        with lock:
            latencies = [(arrived[k] - t) * 1000 for k, t in sent.items() if k in arrived]
        missing = n - len(latencies)
        p50, p95 = statistics.median(latencies), percentile(latencies, 0.95)
        print(
            f"steady: {n / args.seconds:,.0f} events/s for {args.seconds:.0f}s, "
            f"latency p50 {p50:.0f} ms, p95 {p95:.0f} ms (target p95 <= 250 ms), "
            f"{missing} rows not delivered (rows beyond the per-push cap of 500)"
        )

        time.sleep(1.0)
        with lock:
            messages.clear()
        burst_sent: dict[str, float] = {}
        started = time.monotonic()
        m = produce(store, 10_000, args.seconds, burst_sent, "burst")
        duration = time.monotonic() - started
        wait_for(lambda: f"burst-{m - 1}" in arrived, 30, what="the last burst event")
        with lock:
            window = [(t, e) for t, e in messages if t <= started + duration]
        rate = m / duration
        per_second = len(window) / duration
        tasks_ps = sum(1 for _, e in window if e == "tasks") / duration
        print(
            f"burst: {rate:,.0f} events/s written for {duration:.1f}s -> client got "
            f"{per_second:.1f} messages/s ({tasks_ps:.1f} 'tasks' + "
            f"{per_second - tasks_ps:.1f} 'overview') (target <= 10)"
        )
    finally:
        client.disconnect()
        stop_process(proc)
        store.delete_all()
        store.close()


if __name__ == "__main__":
    main()
