"""Receiver ingestion: sustained events/s until every task is durable in Redis,
side by side with Flower's event consumer on the same stream, in one run.

A publisher process sends N synthetic but realistic task lifecycles (task-sent,
received, started, succeeded or failed, with worker heartbeats) onto the
``celeryev`` exchange of a private Redis broker, either one event per message
or in Celery's batched ``task.multi`` lists (24 events, Celery's buffer size).
The monitor's receiver (reading Redis pub/sub directly, and again through
kombu's consumer, the path it takes on RabbitMQ) counts as done when every task
sits in the SUCCESS or FAILURE index of its own private Redis; Flower 2.x (``flower.events.Events``,
its real consumer and state, in memory only) when its state has seen every event.
Each consumer runs in a fresh process of its own (Flower's consumer thread has
no stop, and a leftover one would eat the next run's CPU).

    pip install -e '.[bench]' && python -m bench.bench_ingest [--tasks 30000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import threading
import time
import uuid

from celery import Celery
from kombu import Connection, Exchange, Producer

from monitor.config import Settings
from monitor.events import Receiver
from monitor.store import Store, redis_client
from tests.helpers import RedisServer, wait_for

NAMES = [f"proj.tasks.{n}" for n in ("send_email", "resize_image", "sync_account", "report")]
WORKERS = [f"celery@worker-{i}" for i in range(4)]
BATCH = 24  # celery.events.dispatcher buffer_limit


def lifecycles(n: int, seed: int = 1) -> list[dict]:
    """Each task's lifecycle in order, task after task, with worker heartbeats
    mixed in (a task's events mostly share a write batch, as in a cluster whose
    tasks take less time than one batch window)."""
    rng = random.Random(seed)
    now = time.time()
    events: list[dict] = []
    for i in range(n):
        tid = str(uuid.UUID(int=rng.getrandbits(128)))
        name, worker = NAMES[i % len(NAMES)], WORKERS[i % len(WORKERS)]
        t = now + i * 0.001
        base = {"uuid": tid, "utcoffset": 0, "pid": 4242, "clock": i}
        events.append(
            {
                **base,
                "type": "task-sent",
                "timestamp": t,
                "hostname": "web-1",
                "name": name,
                "args": f"({i}, 'user-{i % 97}')",
                "kwargs": "{}",
                "retries": 0,
                "eta": None,
                "expires": None,
                "queue": "celery",
                "exchange": "",
                "routing_key": "celery",
                "root_id": tid,
                "parent_id": None,
            }
        )
        events.append(
            {
                **base,
                "type": "task-received",
                "timestamp": t + 0.01,
                "hostname": worker,
                "name": name,
                "args": f"({i}, 'user-{i % 97}')",
                "kwargs": "{}",
                "retries": 0,
                "root_id": tid,
                "parent_id": None,
            }
        )
        events.append({**base, "type": "task-started", "timestamp": t + 0.02, "hostname": worker})
        if i % 10 == 9:
            events.append(
                {
                    **base,
                    "type": "task-failed",
                    "timestamp": t + 0.05,
                    "hostname": worker,
                    "exception": "ValueError('bad input')",
                    "traceback": "Traceback (most recent call last):\n  ...\nValueError: bad input",
                }
            )
        else:
            events.append(
                {
                    **base,
                    "type": "task-succeeded",
                    "timestamp": t + 0.05,
                    "hostname": worker,
                    "result": "{'ok': True}",
                    "runtime": 0.03,
                }
            )
        if i % 250 == 0:
            for w in WORKERS:
                events.append(
                    {
                        "type": "worker-heartbeat",
                        "hostname": w,
                        "timestamp": t,
                        "freq": 2.0,
                        "active": 3,
                        "processed": i,
                        "loadavg": [1, 1, 1],
                        "sw_ident": "py-celery",
                        "sw_ver": "5.7.0",
                        "sw_sys": "Linux",
                        "utcoffset": 0,
                        "pid": 1,
                        "clock": i,
                    }
                )
    return events


def publish(broker_url: str, events: list[dict], batched: bool, ready, go) -> None:
    """Runs in its own process so the consumers do not share its GIL.

    kombu's Producer.publish tops out near 5,000 messages/s here, which would
    measure the publisher, not the consumers: the messages are encoded by kombu
    itself first (its exact wire format, captured), then sent in pipelined
    PUBLISH commands once the clock starts.
    """
    import redis
    from kombu.transport.redis import Channel

    captured: list[tuple[str, str]] = []

    def capture(self, exchange, message, routing_key, **kwargs):
        for topic in self._get_publish_topics(exchange, routing_key):
            captured.append((topic, json.dumps(message)))

    Channel._put_fanout = capture
    with Connection(broker_url) as conn:
        producer = Producer(conn.channel(), exchange=Exchange("celeryev", type="fanout"))
        if batched:
            for i in range(0, len(events), BATCH):
                producer.publish(
                    json.dumps(events[i : i + BATCH]),
                    routing_key="task.multi",
                    content_type="application/json",
                    content_encoding="utf-8",
                )
        else:
            for event in events:
                producer.publish(
                    json.dumps(event),
                    routing_key=event["type"].replace("-", "."),
                    content_type="application/json",
                    content_encoding="utf-8",
                )
    client = redis.Redis.from_url(broker_url)
    ready.set()
    go.wait()
    for i in range(0, len(captured), 200):
        pipe = client.pipeline(transaction=False)
        for topic, payload in captured[i : i + 200]:
            pipe.publish(topic, payload)
        pipe.execute()


def start_publisher(broker: str, events: list[dict], batched: bool) -> tuple:
    ready, go = multiprocessing.Event(), multiprocessing.Event()
    proc = multiprocessing.Process(target=publish, args=(broker, events, batched, ready, go))
    proc.start()
    ready.wait(300)
    return proc, go


def probe(broker_url: str, host: str) -> None:
    with Connection(broker_url) as conn:
        Producer(conn.channel(), exchange=Exchange("celeryev", type="fanout")).publish(
            json.dumps({"type": "worker-heartbeat", "hostname": host, "timestamp": time.time()}),
            routing_key="worker.heartbeat",
            content_type="application/json",
            content_encoding="utf-8",
        )


def run_monitor(
    broker: str, store_url: str, events: list[dict], n: int, batched: bool, direct: bool = True
) -> float:
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    settings = Settings(
        redis_url=store_url,
        prefix=prefix,
        broker_url=broker,
        enable_events=False,
        max_tasks=10 * n,
        batch_size=2000,
        buffer_size=50_000,
    )
    store = Store(redis_client(store_url), settings)
    receiver = Receiver(settings, direct_redis=direct).start()
    try:
        wait_for(lambda: probe(broker, "probe") or store.worker("probe"), 30, 0.2)
        keys = [store.keys.by_state("SUCCESS"), store.keys.by_state("FAILURE")]
        proc, go = start_publisher(broker, events, batched)
        start = time.perf_counter()
        go.set()
        wait_for(
            lambda: sum(store.redis.zcard(k) for k in keys) >= n,
            600,
            0.02,
            what="every task stored",
        )
        elapsed = time.perf_counter() - start
        proc.join()
        return elapsed
    finally:
        receiver.stop()
        store.delete_all()
        store.close()


def run_flower(broker: str, events: list[dict], batched: bool) -> float:
    from flower.events import Events
    from tornado.ioloop import IOLoop

    # Flower applies events on its tornado IOLoop (Events.on_event -> add_callback):
    # run that loop in a thread of its own, as `celery flower` runs it.
    ready = threading.Event()
    holder: dict = {}

    def loop_thread() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        holder["loop"] = IOLoop.current()
        ready.set()
        holder["loop"].start()

    threading.Thread(target=loop_thread, daemon=True).start()
    ready.wait()
    app = Celery("flower-bench", broker=broker)
    flower = Events(app, holder["loop"], enable_events=False, max_tasks_in_memory=10 * len(events))
    flower.start()
    wait_for(lambda: probe(broker, "probe") or flower.state.workers.get("probe"), 30, 0.2)
    base = flower.state.event_count
    proc, go = start_publisher(broker, events, batched)
    start = time.perf_counter()
    go.set()
    wait_for(
        lambda: flower.state.event_count - base >= len(events),
        600,
        0.02,
        what="Flower saw every event",
    )
    elapsed = time.perf_counter() - start
    proc.join()
    return elapsed


def _child(conn, fn, args) -> None:
    conn.send(fn(*args))
    conn.close()


def isolated(fn, *args) -> float:
    """Run one consumer in a process of its own: Flower's consumer thread cannot
    be stopped (``while True``), and a leftover one would share the next run's CPU."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args))
    proc.start()
    child.close()
    try:
        return parent.recv()
    finally:
        proc.kill()
        proc.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=30_000)
    opts = parser.parse_args()
    # Private servers: no pubsub output limit on the broker (a burst must not cut
    # a slow subscriber off), and a store nobody else writes to.
    broker = RedisServer().start()
    store = RedisServer().start()
    import redis

    redis.Redis.from_url(broker.url).config_set("client-output-buffer-limit", "pubsub 0 0 0")
    events = lifecycles(opts.tasks)
    print(f"{opts.tasks:,} task lifecycles = {len(events):,} events per run")
    print(
        f"{'stream':<28}{'monitor ev/s':>14}{'via kombu':>12}{'flower ev/s':>14}{'ratio':>8}"
        f"{'kombu ratio':>13}"
    )
    try:
        for batched in (False, True):
            ours = len(events) / isolated(
                run_monitor, broker.url, store.url, events, opts.tasks, batched
            )
            # the same receiver reading the broker through kombu's consumer
            # (as on RabbitMQ) instead of Redis pub/sub directly
            via_kombu = len(events) / isolated(
                run_monitor, broker.url, store.url, events, opts.tasks, batched, False
            )
            theirs = len(events) / isolated(run_flower, broker.url, events, batched)
            label = "task.multi lists of 24" if batched else "one event per message"
            print(
                f"{label:<28}{ours:>14,.0f}{via_kombu:>12,.0f}{theirs:>14,.0f}"
                f"{ours / theirs:>7.1f}x{via_kombu / theirs:>12.1f}x",
                flush=True,
            )
        print("monitor: durable in Redis (indexes, timeline, counters); flower: in memory only")
    finally:
        broker.stop()
        store.stop()


if __name__ == "__main__":
    main()
