"""BufferedWriter against a private redis-server that the tests kill and restart."""

from __future__ import annotations

import threading
import time

import pytest

from monitor.config import Settings
from monitor.model import TaskEvent
from monitor.store import Store, redis_client
from monitor.writer import BufferedWriter

from .helpers import RedisServer, require_service, wait_for


@pytest.fixture
def private_redis():
    require_service("127.0.0.1", 6379, "Redis")  # redis-server binary present in CI
    server = RedisServer().start()
    yield server
    server.stop()


def make_writer(server, **options):
    settings = Settings(redis_url=server.url, prefix="w")
    store = Store(
        redis_client(server.url, socket_timeout=0.5, socket_connect_timeout=0.5), settings
    )
    options.setdefault("flush_interval", 0.02)
    return store, BufferedWriter(lambda: store, **options)


def event(i):
    return TaskEvent(f"t{i}", "SUCCESS", time.time(), "signal", "w", {"name": "n"})


def test_records_are_written_in_batches(private_redis):
    store, writer = make_writer(private_redis, batch_size=100)
    for i in range(1000):
        writer.put(event(i))
    wait_for(lambda: store.redis.zcard(store.keys.tasks) == 1000, what="all stored")
    # The counter moves once the script's answer is back, just after the rows are.
    wait_for(lambda: writer.written == 1000, timeout=5, what="the writer counted them")
    assert writer.dropped == 0
    writer.close()


def test_redis_down_drops_oldest_counts_and_resumes(private_redis):
    store, writer = make_writer(private_redis, capacity=50, batch_size=10)
    writer.put(event(-1))
    wait_for(lambda: store.redis.zcard(store.keys.tasks) == 1, what="first record")
    private_redis.kill()
    # Which threads talk to Redis: never the one calling put() (the task's).
    io_threads = set()
    apply = store.apply
    store.apply = lambda batch: io_threads.add(threading.get_ident()) or apply(batch)
    for i in range(200):
        writer.put(event(i))  # must neither raise nor wait for Redis
    wait_for(lambda: not writer.redis_ok, what="writer notices Redis is down")
    assert io_threads and threading.get_ident() not in io_threads
    assert writer.dropped >= 150  # capacity 50: at most 50 (+ one batch in flight) kept
    assert writer.pending() <= 50
    private_redis.start()  # same port
    wait_for(lambda: writer.redis_ok and writer.pending() == 0, 30, what="writer resumed")
    ids = set(store.redis.zrange(store.keys.tasks, 0, -1))
    assert "t199" in ids and "t0" not in ids  # the newest kept, the oldest dropped
    wait_for(lambda: store.meta().get("dropped:signal") == writer.dropped, what="drops reported")
    writer.close()


def test_blocking_mode_waits_instead_of_dropping(private_redis):
    store, writer = make_writer(private_redis, capacity=20, batch_size=5, block_when_full=True)
    private_redis.kill()
    done = threading.Event()

    def produce():
        for i in range(100):
            writer.put(event(i))
        done.set()

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    wait_for(lambda: writer.pending() >= 15, what="buffer fills")
    assert not done.is_set()  # the producer is held back, nothing dropped
    assert writer.dropped == 0
    private_redis.start()
    wait_for(done.is_set, 30, what="producer released")
    wait_for(lambda: store.redis.zcard(store.keys.tasks) == 100, 30, what="all 100 stored")
    assert writer.dropped == 0
    writer.close()


def test_close_flushes_everything(private_redis):
    store, writer = make_writer(private_redis, flush_interval=10.0, batch_size=10_000)
    for i in range(300):
        writer.put(event(i))
    assert writer.close(timeout=5)
    assert store.redis.zcard(store.keys.tasks) == 300


def test_a_record_the_script_rejects_is_dropped_alone_and_the_writer_goes_on(private_redis):
    store, writer = make_writer(private_redis, batch_size=100)
    writer.put(event(1))
    wait_for(lambda: store.get_task("t1"), what="t1 stored")
    # "t1:timeline" (only constructible by bypassing the model's check) names
    # t1's timeline list; the script refuses it before writing anything.
    poison = TaskEvent("t1:timeline", "SUCCESS", time.time(), "signal", "w", {"name": "n"})
    for record in (event(2), poison, event(3)):
        writer.put(record)
    wait_for(lambda: store.get_task("t2") and store.get_task("t3"), what="its batch mates stored")
    assert writer.rejected == 1 and writer.dropped == 0 and writer.redis_ok
    wait_for(lambda: store.meta().get("malformed:signal") == 1, what="the refusal counted")
    assert store.redis.type(store.keys.timeline("t1")) == "list"  # t1 untouched
    writer.put(event(4))  # not wedged on the rejected batch
    wait_for(lambda: store.get_task("t4"), what="later records still flow")
    writer.close()
