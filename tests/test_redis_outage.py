"""Redis (and the broker) going away mid-run: tasks are unaffected, nothing hangs,
drops are counted, and records flow again once it is back."""

from __future__ import annotations

import uuid

import pytest
from celery import Celery

from monitor.config import Settings
from monitor.events import Receiver
from monitor.store import Store, redis_client

from .helpers import RedisServer, WorkerProcess, wait_for

pytestmark = pytest.mark.slow
T = "tests.workerapp."


@pytest.fixture
def monitor_redis(redis_url):
    server = RedisServer().start()
    yield server
    server.stop()


def private_store(server, prefix="outage"):
    settings = Settings(redis_url=server.url, prefix=prefix)
    return Store(redis_client(server.url, socket_timeout=1, socket_connect_timeout=1), settings)


def states(store, ids):
    return {store.get_task(i)["state"] if store.get_task(i) else None for i in ids}


def test_worker_hooks_survive_the_monitor_redis_dying(monitor_redis):
    broker = "redis://127.0.0.1:6379/4"
    queue = f"outage-{uuid.uuid4().hex[:8]}"
    store = private_store(monitor_redis)
    worker = WorkerProcess(
        broker=broker,
        queue=queue,
        prefix="outage",
        redis_url=monitor_redis.url,
        hooks=True,
        extra_env={"MONITOR_BUFFER_SIZE": "10"},  # small: the outage must overflow it
    ).start()
    app = Celery("producer", broker=broker, backend="redis://127.0.0.1:6379/1")
    app.conf.task_default_queue = queue
    try:
        before = [app.send_task(T + "add", (i, i)) for i in range(5)]
        wait_for(lambda: states(store, [r.id for r in before]) == {"SUCCESS"}, 30, what="before")

        monitor_redis.kill()
        during = [app.send_task(T + "add", (i, 1)) for i in range(40)]
        # every task still runs and succeeds while the monitor's Redis is gone
        assert [r.get(timeout=60) for r in during] == [i + 1 for i in range(40)]

        monitor_redis.start()  # same port, empty: it kept nothing on disk
        after = [app.send_task(T + "add", (i, 2)) for i in range(5)]
        wait_for(lambda: states(store, [r.id for r in after]) == {"SUCCESS"}, 60, what="after")
        # the loss is counted and visible once Redis is back
        wait_for(lambda: store.meta().get("dropped:signal", 0) > 0, 30, what="drops counted")
        for line in ("monitor: cannot write to Redis", "monitor: Redis is back"):
            assert line in worker.log(), f"{line!r} not logged:\n{worker.log()[-3000:]}"
    finally:
        worker.stop()
        app.backend.result_consumer.stop()
        app.close()
        store.close()


def send_event(app, type_, **fields):
    with app.events.default_dispatcher(hostname="w-outage") as dispatcher:
        dispatcher.send(type_, **fields)


def test_receiver_reconnects_to_broker_and_store(monitor_redis):
    broker = RedisServer().start()
    store = private_store(monitor_redis)
    settings = Settings(
        redis_url=monitor_redis.url,
        prefix="outage",
        broker_url=broker.url,
        enable_events=False,
    )
    receiver = Receiver(settings).start()
    app = Celery("sender", broker=broker.url)
    try:

        def stored(task_id):
            def probe():
                send_event(app, "task-received", uuid=task_id, name="n")
                return store.get_task(task_id)

            return probe

        wait_for(stored("t-before"), 30, 0.3, what="first event stored")

        broker.kill()
        wait_for(lambda: not receiver.connected.is_set(), 30, what="receiver notices")
        broker.start()  # same port
        wait_for(stored("t-after-broker"), 60, 0.5, what="event after broker restart")

        monitor_redis.kill()
        for i in range(20):
            send_event(app, "task-succeeded", uuid=f"t-during-{i}", result="1", runtime=0.1)
        monitor_redis.start()
        wait_for(
            lambda: states(store, [f"t-during-{i}" for i in range(20)]) == {"SUCCESS"},
            60,
            what="events buffered during the store outage are stored",
        )
    finally:
        receiver.stop()
        app.close()
        store.close()
        broker.stop()
