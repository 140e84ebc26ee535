"""Faults, each with real processes: the store's Redis dies under traffic, the broker
restarts (Redis and RabbitMQ), a ``serve`` process is killed under connected
browsers, a worker is killed mid-task.

Every service that a test kills is private to it (a redis-server or a RabbitMQ
node on free ports); the shared Redis on 6379 only ever holds private prefixes.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from celery import Celery

from monitor.config import Settings
from monitor.events import Receiver
from monitor.model import TaskEvent
from monitor.store import Store, redis_client

from .helpers import (
    IN_CI,
    RabbitMQNode,
    RedisServer,
    ServeProcess,
    WorkerProcess,
    chromium,
    wait_for,
)

pytestmark = pytest.mark.slow
T = "tests.workerapp."
#: Signal records a worker's hooks make for one successful task: RECEIVED (the
#: parent), STARTED and SUCCESS (the pool child).
SIGNAL_RECORDS_PER_TASK = 3


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with chromium() as browser:
        yield browser


def open_page(browser, url: str):
    """A page on ``url`` in a context of its own, live; errors collected in ``page.errors``."""
    page = browser.new_context().new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.goto(url)
    wait_conn(page, "ok")
    return page


def wait_conn(page, kind: str, timeout: float = 30) -> str:
    """Wait until the page's connection badge is ``ok``/``warn``/``down``; its text."""
    page.wait_for_selector(f"#conn.conn-{kind}", timeout=timeout * 1000)
    return page.locator("#conn").inner_text()


def private_store(url: str, prefix: str) -> Store:
    settings = Settings(redis_url=url, prefix=prefix)
    return Store(redis_client(url, socket_timeout=2, socket_connect_timeout=2), settings)


# -- the store's Redis dies under steady traffic --------------------------------------
class Traffic:
    """Sends ``add(i, i)`` at a steady pace from a thread, keeping every result."""

    def __init__(self, app: Celery, interval: float = 0.05) -> None:
        self.app = app
        self.interval = interval
        self.results: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(self.interval):
            self.results.append(self.app.send_task(T + "add", (i, i)))
            i += 1

    def sent(self) -> int:
        return len(self.results)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def sources_count(store: Store, ids: list[str]) -> dict[str, int]:
    """How many stored transitions of these tasks each source reported."""
    counts = {"signal": 0, "event": 0}
    for task_id in ids:
        for entry in (store.get_task(task_id) or {}).get("timeline", []):
            for source in entry["sources"]:
                counts[source] = counts.get(source, 0) + 1
    return counts


def fully_stored(store: Store, ids: list[str]) -> bool:
    """Each task SUCCESS, every transition reported by both sources."""
    for task_id in ids:
        task = store.get_task(task_id)
        if task is None or task["state"] != "SUCCESS":
            return False
        if any(sorted(e["sources"]) != ["event", "signal"] for e in task["timeline"]):
            return False
    return True


@pytest.mark.browser
def test_store_redis_killed_and_restarted_under_steady_traffic(browser):
    """No task fails; hooks and receiver resume; every signal record is either
    stored or counted as dropped (exactly); the page shows the outage and recovers."""
    # The store's Redis keeps an fsynced append-only file: killed, it comes back
    # with everything it acknowledged, so the books can be balanced afterwards.
    store_redis = RedisServer(persistent=True).start()
    broker = RedisServer().start()  # broker and result backend: stays up
    prefix, queue = "fault-store", f"fault-store-{uuid.uuid4().hex[:6]}"
    backend = broker.url[:-1] + "1"
    worker = WorkerProcess(
        broker=broker.url,
        queue=queue,
        prefix=prefix,
        redis_url=store_redis.url,
        hooks=True,
        events=True,
        # A small buffer, so the outage overflows it; no heartbeats, so every
        # signal record in the books is a task transition.
        extra_env={"MONITOR_BUFFER_SIZE": "10", "TEST_RESULT_BACKEND": backend},
        extra_args=("--without-heartbeat",),
    )
    serve = ServeProcess(store_redis.url, prefix, broker=broker.url)  # receiver embedded
    store = private_store(store_redis.url, prefix)
    app = Celery("producer", broker=broker.url, backend=backend)
    app.conf.task_default_queue = queue
    traffic = Traffic(app)
    page = None
    try:
        worker.start()
        serve.start()
        page = open_page(browser, serve.url + "/")
        traffic.start()
        wait_for(lambda: traffic.sent() >= 10, 30, what="traffic")
        first = [r.id for r in traffic.results[:10]]
        wait_for(lambda: fully_stored(store, first), 30, 0.2, what="tasks before the outage")

        store_redis.kill()
        killed_at = traffic.sent()
        assert "Redis" in wait_conn(page, "warn")  # "Redis unavailable"
        # Tasks keep running during the outage: 40 more sent and finished.
        wait_for(lambda: traffic.sent() >= killed_at + 40, 30, what="traffic during the outage")
        for result in traffic.results[killed_at : killed_at + 40]:
            assert result.get(timeout=30) is not None
        assert "monitor: cannot write to Redis" in worker.log()

        store_redis.start()  # same port, same data
        wait_conn(page, "ok")
        # Both sources resume: hooks (signal) and receiver (event) report every
        # transition of the latest tasks (each writer retries on its own backoff,
        # the hooks' small buffers drop what comes before), and keep doing so.
        wait_for(
            lambda: fully_stored(store, [r.id for r in traffic.results[-10:-5]]),
            60,
            0.2,
            what="hooks and receiver resuming",
        )
        resumed_at = traffic.sent()
        wait_for(lambda: traffic.sent() >= resumed_at + 20, 30, what="traffic after the outage")
        after = [r.id for r in traffic.results[resumed_at : resumed_at + 20]]
        wait_for(lambda: fully_stored(store, after), 60, 0.2, what="tasks after the outage")
        traffic.stop()

        # No task failed, before, during or after.
        results = list(traffic.results)
        assert [r.get(timeout=30) for r in results] == [2 * i for i in range(len(results))]
        ids = [r.id for r in results]
        sent = SIGNAL_RECORDS_PER_TASK * len(ids)

        def books() -> tuple[int, int]:
            return sources_count(store, ids)["signal"], store.meta().get("dropped:signal", 0)

        # Each worker process reports its drops once its writer gets through.
        wait_for(lambda: sum(books()) >= sent, 60, 0.5, what=f"stored + dropped >= {sent}")
        # Stopped, the worker flushes every buffer: nothing more may appear, so
        # no record was counted twice, nor stored and also counted as dropped.
        worker.stop()
        stored, dropped = books()
        assert stored + dropped == sent, (stored, dropped, sent)
        assert dropped > 0, "the outage did not overflow the hooks' buffer: nothing tested"
        # The receiver waits instead of dropping: every event is stored.
        assert sources_count(store, ids)["event"] == sent
        assert "dropped:event" not in store.meta()
        assert "monitor: Redis is back" in worker.log()
        assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
        assert page.errors == []
    finally:
        if page is not None:
            page.context.close()
        traffic.stop()
        worker.stop()
        serve.stop()
        app.backend.result_consumer.stop()
        app.close()
        store.close()
        store_redis.stop()
        broker.stop()


# -- the broker restarts ----------------------------------------------------------------
class Probes:
    """Events with fresh task ids, each sent on a new connection (a broker that has
    just come back has none of the old ones), and whether one of them is stored."""

    def __init__(self, app: Celery, store: Store) -> None:
        self.app, self.store = app, store
        self.ids: list[str] = []

    def reset(self) -> None:
        self.ids = []

    def send_and_check(self) -> bool:
        task_id = f"probe-{uuid.uuid4().hex[:12]}"
        try:
            with self.app.connection_for_write() as conn:
                dispatcher = self.app.events.Dispatcher(
                    conn, hostname="w-probe", buffer_while_offline=False
                )
                dispatcher.send("task-received", uuid=task_id, name="probe")
                dispatcher.close()
            self.ids.append(task_id)
        except Exception:  # the broker is not taking messages yet
            pass
        return any(row["id"] in self.ids for row in self.store.get_tasks(self.ids))


def private_broker(kind: str):
    if kind == "redis":
        return RedisServer().start()
    if not RabbitMQNode.available():
        message = "rabbitmq-server is not installed (apt-get install rabbitmq-server)"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    return RabbitMQNode().start()


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_receiver_consumes_again_within_5s_of_the_broker_coming_back(kind, settings, store):
    broker = private_broker(kind)
    receiver = Receiver(settings.replace(broker_url=broker.url, enable_events=False)).start()
    app = Celery("sender", broker=broker.url)
    probes = Probes(app, store)
    try:
        wait_for(probes.send_and_check, 60, 0.1, what="the first event stored")
        broker.kill()
        wait_for(lambda: not receiver.connected.is_set(), 30, what="the receiver notices")
        probes.reset()
        broker.start()  # same port; returns once it answers
        # From the broker's return to the first new event stored: 5 s at most.
        wait_for(probes.send_and_check, 5, 0.1, what="an event stored within 5 s")
    finally:
        receiver.stop()
        app.close()
        broker.stop()


# -- a serve process is killed under connected browsers ------------------------------------
@pytest.mark.browser
def test_browsers_reconnect_to_a_replacement_of_a_killed_server(browser, settings, store):
    serve = ServeProcess(settings.redis_url, settings.prefix).start()
    pages = []
    try:
        for _ in range(2):
            page = open_page(browser, serve.url + "/tasks")
            page.evaluate("window.__loaded = 'before the kill'")
            pages.append(page)
        serve.kill()  # no goodbye: no close frames, its leader lease left in Redis
        for page in pages:
            wait_conn(page, "down")
        serve.start()  # the replacement, same port
        for page in pages:
            wait_conn(page, "ok")
        task_id = f"after-{uuid.uuid4().hex[:8]}"
        store.apply([TaskEvent(task_id, "SUCCESS", time.time(), "signal", "w", {"name": "x"})])
        for page in pages:  # a live update, pushed by the replacement
            page.locator(f'tr[data-id="{task_id}"]').wait_for(timeout=30_000)
            assert page.evaluate("window.__loaded") == "before the kill"  # never reloaded
            assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
            assert page.errors == []
    finally:
        for page in pages:
            page.context.close()
        serve.stop()


# -- a worker is killed mid-task --------------------------------------------------------------
def test_a_killed_worker_goes_offline_by_celerys_rule_and_its_task_shows_it(settings, store):
    """Offline once now >= last heartbeat + 2 x freq + grace (not before), and its
    STARTED task reports ``worker_online: false``."""
    broker = RedisServer().start()
    queue = f"fault-kill-{uuid.uuid4().hex[:6]}"
    hostname = f"doomed@{queue}"
    grace = 1.0
    worker = WorkerProcess(
        broker=broker.url,
        queue=queue,
        prefix=settings.prefix,
        hostname=hostname,
        extra_env={"TEST_RESULT_BACKEND": broker.url},
        extra_args=("--heartbeat-interval", "1"),
    )
    serve = ServeProcess(settings.redis_url, settings.prefix, env={"MONITOR_WORKER_GRACE": "1"})
    app = Celery("producer", broker=broker.url)
    app.conf.task_default_queue = queue
    try:
        worker.start()
        serve.start()
        task_id = app.send_task(T + "sleep", (120,)).id

        def detail() -> dict | None:
            response = serve.get(f"/api/v1/tasks/{task_id}")
            return response.json() if response is not None and response.ok else None

        def started_and_beating():
            task = detail()
            # a heartbeat after the task started, so the worker is seen alive with it
            return task and task["state"] == "STARTED" and task["worker_online"] is True

        wait_for(started_and_beating, 30, 0.1, what="the task running on a live worker")
        before = serve.get(f"/api/v1/workers/{hostname}").json()["worker"]
        assert before["status"] == "online"

        os.killpg(worker.proc.pid, signal.SIGKILL)  # the parent and its pool children
        worker.proc.wait(5)

        # Poll until offline, remembering when each answer was asked for and received.
        last_online_asked = time.time()
        while True:
            asked = time.time()
            response = serve.get(f"/api/v1/workers/{hostname}")
            answered = time.time()
            assert response is not None and response.ok, "serve stopped answering"
            info = response.json()["worker"]
            if info["status"] == "offline":
                break
            last_online_asked = asked
            assert answered - last_online_asked < 60, "still online a minute after the kill"
            time.sleep(0.1)
        deadline = float(info["last_heartbeat"]) + 2 * float(info["freq"]) + grace
        assert float(info["freq"]) == pytest.approx(1.0)
        # The server judged "online" before the deadline and "offline" after it ...
        assert last_online_asked < deadline <= answered
        # ... and said so promptly: within a poll or two, on a loaded machine.
        assert asked - deadline < 5.0
        task = detail()
        assert task["state"] == "STARTED" and task["worker_online"] is False
        # A task no worker has had yet: liveness unknown, not false.
        store.apply([TaskEvent("queued", "PENDING", time.time(), "signal", None, {"name": "x"})])
        assert serve.get("/api/v1/tasks/queued").json()["worker_online"] is None
    finally:
        serve.stop()
        worker.stop()
        app.close()
        broker.stop()
