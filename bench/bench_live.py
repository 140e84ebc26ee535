"""Live push: store-to-browser latency at 1,000 events/s, messages per client in a
burst, and latency while another client floods the server with subscribes.

A real ``monitor serve --no-events`` process and a real ``socketio.Client``
(subscribed to the unfiltered task list and to the overview). Events are
written into the store in batches every 10 ms, as the hooks' and receiver's
writers do (their own flush interval, 0.1 s by default, comes on top).

1. 1,000 events/s for ``--seconds``: latency from ``Store.apply`` returning to
   the row reaching the client, p50/p95 (target p95 <= 250 ms).
2. 10,000 events/s for ``--seconds``: Socket.IO messages per second received by
   the client (target <= 10), against the events/s actually written.
3. ``--flood N`` (default 20,000): the same 1,000 events/s while another client
   (a process of its own, niced: its CPU stands for another machine's) tries to
   subscribe to N distinct task rooms as fast as it can, without waiting for
   acks, reconnecting whenever the server closes it; p95 against the idle p95
   of step 1 (target: ratio <= 2), and the serve process's CPU in both windows.
   ``--flood 0`` skips it; ``--skip-burst`` skips step 2.

    python -m bench.bench_live [--seconds 10] [--transport polling|websocket] [--flood 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

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


def flood(url: str, rooms: int, transport: str) -> None:
    """The flooding client (run in a process of its own, so that its CPU does not
    slow the measuring client's): subscribes to ``rooms`` distinct task rooms
    without waiting for acks, reconnecting whenever the server closes it, then
    holds on until stdin closes and prints what it got as JSON."""
    lock = threading.Lock()
    counts = {"sent": 0, "ok": 0, "refused": 0, "connects": 0}
    errors: dict[str, int] = {}
    done = threading.Event()

    def ack(reply: Any = None) -> None:
        with lock:
            if isinstance(reply, dict) and reply.get("ok"):
                counts["ok"] += 1
            else:
                counts["refused"] += 1
                error = str((reply or {}).get("error", reply) if isinstance(reply, dict) else reply)
                errors[error[:40]] = errors.get(error[:40], 0) + 1

    def run() -> None:
        i = 0
        while i < rooms and not done.is_set():
            client = socketio.Client(reconnection=False)
            try:
                client.connect(url, transports=[transport], wait_timeout=10)
            except socketio.exceptions.ConnectionError:
                time.sleep(0.05)
                continue
            counts["connects"] += 1
            while client.connected and i < rooms:
                try:
                    client.emit("subscribe", {"room": "task", "id": f"flood-{i}"}, callback=ack)
                except socketio.exceptions.BadNamespaceError:
                    break
                counts["sent"] += 1
                i += 1
                if i % 500 == 0:
                    # Let the client flush: over polling, one POST of all 20,000
                    # would only meet Engine.IO's 1 MB cap on a request.
                    time.sleep(0.01)
            if i >= rooms:
                done.wait()  # hold the connection and whatever rooms it got
            client.disconnect()

    # The flooder's own CPU stands for another machine's: on a small box it
    # must not take the server's core (this measures the server's fairness).
    os.nice(10)
    threading.Thread(target=run, daemon=True).start()
    sys.stdin.read()  # the parent closes stdin when it has measured
    done.set()
    with lock:
        print(json.dumps({**counts, "errors": errors}), flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency(
    store: Store, arrived: dict[str, float], lock: threading.Lock, seconds: float, tag: str
) -> tuple[int, list[float]]:
    sent: dict[str, float] = {}
    n = produce(store, 1000, seconds, sent, tag)
    wait_for(lambda: f"{tag}-{n - 1}" in arrived, 60, what=f"the last {tag} event")
    with lock:
        return n, [(arrived[k] - t) * 1000 for k, t in sent.items() if k in arrived]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--transport", default="polling", choices=["polling", "websocket"])
    parser.add_argument(
        "--flood", type=int, default=20_000, help="rooms the flooder tries; 0: skip"
    )
    parser.add_argument("--skip-burst", action="store_true", help="only steps 1 and 3")
    parser.add_argument("--flooder", metavar="URL", help=argparse.SUPPRESS)  # step 3's client
    args = parser.parse_args()
    if args.flooder:
        flood(args.flooder, args.flood, args.transport)
        return
    prefix = "bench-live-" + uuid.uuid4().hex[:8]
    settings = Settings(redis_url=args.redis, prefix=prefix, max_tasks=1_000_000)
    store = Store(redis_client(args.redis), settings)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
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
    flooder: subprocess.Popen | None = None
    try:

        def up() -> bool:
            response = http_get(f"{url}/api/v1/workers")
            return response is not None and response.ok

        wait_for(up, 60, 0.2, "serve")
        client.connect(url, transports=[args.transport], wait_timeout=10)
        client.call("subscribe", {"room": "tasks", "filters": {}}, timeout=10)
        client.call("subscribe", {"room": "overview"}, timeout=10)
        time.sleep(1.0)

        cpu = cpu_seconds(proc.pid)
        n, latencies = latency(store, arrived, lock, args.seconds, "steady")
        idle_cpu = cpu_seconds(proc.pid) - cpu
        missing = n - len(latencies)
        p50, p95 = statistics.median(latencies), percentile(latencies, 0.95)
        print(
            f"steady: {n / args.seconds:,.0f} events/s for {args.seconds:.0f}s, "
            f"latency p50 {p50:.0f} ms, p95 {p95:.0f} ms (target p95 <= 250 ms), "
            f"{missing} rows not delivered (rows beyond the per-push cap of 500); "
            f"serve CPU {idle_cpu:.1f} s"
        )

        if not args.skip_burst:
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

        if args.flood:
            time.sleep(1.0)
            flooder = subprocess.Popen(
                [sys.executable, "-m", "bench.bench_live", "--flooder", url]
                + ["--flood", str(args.flood), "--transport", args.transport],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,  # the client library's noise as it is cut off
                text=True,
            )
            cpu = cpu_seconds(proc.pid)
            n, flooded = latency(store, arrived, lock, args.seconds, "flooded")
            flood_cpu = cpu_seconds(proc.pid) - cpu
            report = json.loads(flooder.communicate(timeout=60)[0] or "{}")
            f50, f95 = statistics.median(flooded), percentile(flooded, 0.95)
            print(
                f"flood: latency p50 {f50:.0f} ms, p95 {f95:.0f} ms while another client tries "
                f"{args.flood:,} rooms ({report.get('sent', 0):,} subscribes sent over "
                f"{report.get('connects', 0)} connection(s), {report.get('ok', 0):,} accepted, "
                f"{report.get('refused', 0):,} refused {report.get('errors')}); "
                f"p95 ratio flooded/idle {f95 / p95:.2f} (target <= 2), "
                f"{n - len(flooded)} rows not delivered; serve CPU {flood_cpu:.1f} s"
            )
    finally:
        if flooder is not None and flooder.poll() is None:
            flooder.kill()
            flooder.wait()
        client.disconnect()
        stop_process(proc)
        store.delete_all()
        store.close()


if __name__ == "__main__":
    main()
