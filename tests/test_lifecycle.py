"""End to end: real prefork workers, real brokers, every task outcome, three ways.

For signals only, events only, and both together, on a Redis broker and on
RabbitMQ, a worker runs the task mix of tests/workerapp.py and the store must
end with each task's Celery state, its timeline and its fields; with both
sources, every transition is stored once (its timeline entry naming both).
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from contextlib import contextmanager

import pytest
from celery import Celery, chain, chord, group

import monitor.signals
from monitor.events import Receiver

from .helpers import WorkerProcess, wait_for

pytestmark = pytest.mark.slow

MODES = {
    # mode: (hooks in producer and worker, worker sends events, receiver runs)
    "signals": (True, False, False),
    "events": (False, True, True),
    "both": (True, True, True),
}
T = "tests.workerapp."


@pytest.fixture(params=["redis", "amqp"])
def broker_url(request, redis_url):
    if request.param == "redis":
        return "redis://127.0.0.1:6379/3"
    return request.getfixturevalue("amqp_url")


def wait_receiver_listening(app: Celery, store) -> None:
    """Publish probe events until one is stored: the receiver's binding is live."""
    host = f"probe-{uuid.uuid4().hex[:8]}"

    def probe():
        with app.events.default_dispatcher(hostname=host) as dispatcher:
            dispatcher.send("worker-heartbeat", freq=60.0)
        return store.worker(host)

    wait_for(probe, 30, 0.3, what="the receiver to store a probe event")


@contextmanager
def running_cluster(mode, broker_url, settings, store):
    """Producer app, receiver and worker wired for one mode."""
    hooks, events, receiver_on = MODES[mode]
    queue = f"q-{settings.prefix}"
    settings = settings.replace(broker_url=broker_url, enable_events=False)
    producer = Celery("producer", broker=broker_url, backend="redis://127.0.0.1:6379/1")
    producer.conf.update(
        task_send_sent_event=True,
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
    )
    if hooks:
        monitor.signals.connect(producer, redis_url=settings.redis_url, prefix=settings.prefix)
    receiver = Receiver(settings) if receiver_on else None
    if receiver is not None:
        receiver.start()
        wait_receiver_listening(producer, store)
        # Redis brokers are read through their pub/sub, RabbitMQ through kombu
        direct = broker_url.startswith("redis")
        assert receiver.reading.startswith("reading its pub/sub" if direct else "through a kombu")
    worker = WorkerProcess(
        broker=broker_url, queue=queue, prefix=settings.prefix, hooks=hooks, events=events
    )
    try:
        worker.start()
        yield producer, worker
        worker.stop()
        # offline: worker_shutdown (signals) or worker-offline (events) reached the store
        wait_for(
            lambda: (store.worker(worker.hostname) or {}).get("status") == "offline",
            20,
            what="worker offline",
        )
    finally:
        worker.stop()
        if receiver is not None:
            receiver.stop()
        if hooks:
            monitor.signals.disconnect()
        # Celery's app.close() leaves the result backend's pubsub socket open
        producer.backend.result_consumer.stop()
        producer.close()


@pytest.fixture(params=list(MODES))
def cluster(request, broker_url, settings, store):
    with running_cluster(request.param, broker_url, settings, store) as (producer, worker):
        yield request.param, producer, worker


@pytest.fixture
def both_cluster(broker_url, settings, store):
    with running_cluster("both", broker_url, settings, store) as (producer, worker):
        yield producer, worker


def final(store, task_id, states, timeout=40):
    return wait_for(
        lambda: (t := store.get_task(task_id)) and t["state"] in states and t,
        timeout,
        0.1,
        what=f"task {task_id} in {states}",
    )


def timeline_states(task):
    return [e["state"] for e in task["timeline"]]


def test_every_outcome_is_recorded(cluster, store):
    mode, app, worker = cluster
    send = app.send_task
    ok = send(T + "add", (2, 3))
    failed = send(T + "fail", ("boom <b>",))
    retried = send(T + "retry_once")
    exhausted = send(T + "always_retry")
    rejected = send(T + "reject")
    # held until its eta, by then expired (an already-expired message would
    # never reach a worker on RabbitMQ: Celery gives it a TTL of 0)
    expired = send(T + "add", (1, 1), countdown=3, expires=1.5)
    limited = send(T + "hard_limit")
    progress = send(T + "progress", (3,))
    later = send(T + "sleep", (0,), countdown=4)
    running = send(T + "sleep", (60,))
    chained = chain(app.signature(T + "add", (1, 2)), app.signature(T + "add", (3,))).delay()
    grouped = group(app.signature(T + "add", (i, i)) for i in range(3)).delay()
    chorded = chord(
        [app.signature(T + "add", (i, 1)) for i in range(2)], app.signature(T + "tsum")
    ).delay()

    app.control.revoke(later.id)
    final(store, running.id, {"STARTED"})
    app.control.revoke(running.id, terminate=True, signal="SIGKILL")

    task = final(store, ok.id, {"SUCCESS"})
    assert task["result"] == "5" and float(task["runtime"]) >= 0
    assert task["name"] == T + "add" and task["worker"] == worker.hostname
    assert timeline_states(task)[-3:] == ["RECEIVED", "STARTED", "SUCCESS"]
    assert timeline_states(task)[0] == "PENDING"  # seen at publish time (signal or task-sent)
    assert task["queue"] == worker.queue or mode == "events"

    task = final(store, failed.id, {"FAILURE"})
    assert "boom <b>" in task["exception"] and "ValueError" in task["exception"]
    assert "Traceback" in task["traceback"]

    task = final(store, retried.id, {"SUCCESS"})
    assert task["retries"] == "1" and "RETRY" in timeline_states(task)
    assert task["result"] == "'ok after retry'"

    task = final(store, exhausted.id, {"FAILURE"})
    assert timeline_states(task).count("RETRY") == 2
    assert "never works" in task["exception"]

    # Celery >= 5.6 also marks Reject(requeue=False) as FAILURE (and reports it
    # as such: task_failure / task-failed); the REJECTED transition stays visible.
    task = final(store, rejected.id, {"REJECTED", "FAILURE"})
    assert "not for us" in task["exception"]
    if mode != "events":  # Celery sends no task-rejected event for it
        # the signal's REJECTED may land after the event path's FAILURE
        wait_for(
            lambda: "REJECTED" in timeline_states(store.get_task(rejected.id)),
            40,
            what="REJECTED in the timeline",
        )
    task = final(store, expired.id, {"REVOKED"})
    assert task.get("expired") in ("1", "True")

    task = final(store, limited.id, {"FAILURE"})
    assert "TimeLimitExceeded" in task["exception"]

    task = final(store, progress.id, {"SUCCESS"})
    assert "PROGRESS" in timeline_states(task)
    assert json.loads(task["progress"]) == {"current": 3, "total": 3}

    task = final(store, later.id, {"REVOKED"})
    assert "STARTED" not in timeline_states(task)
    task = final(store, running.id, {"REVOKED"})
    assert task.get("terminated") in ("1", "True")

    # canvas: links between parent and children, group membership
    second = final(store, chained.id, {"SUCCESS"})
    first_id = second["parent_id"]
    assert final(store, first_id, {"SUCCESS"})["result"] == "3"
    assert second["result"] == "6"
    assert second["id"] in store.get_task(first_id)["children"]
    member_ids = [r.id for r in grouped.results]
    for member in member_ids:
        task = final(store, member, {"SUCCESS"})
        assert sorted(task["group"]) == sorted(member_ids) or mode == "events"
    body = final(store, chorded.id, {"SUCCESS"})
    assert body["result"] == "3"

    # the worker's record, from worker_ready/heartbeat_sent or worker events
    record = wait_for(lambda: store.worker(worker.hostname), 10, what="worker record")
    assert record["online"] is True
    if mode != "events":
        assert record["pool"] and int(record["concurrency"]) == 2
        assert worker.queue in record["queues"]


def test_both_sources_store_each_transition_once(both_cluster, store):
    app, worker = both_cluster
    one_attempt = {"PENDING": 1, "RECEIVED": 1, "STARTED": 1, "SUCCESS": 1}
    expected = {app.send_task(T + "add", (i, i)).id: one_attempt for i in range(10)}
    retried = app.send_task(T + "retry_once").id
    expected[retried] = {"PENDING": 2, "RECEIVED": 2, "STARTED": 2, "RETRY": 1, "SUCCESS": 1}
    for task_id, counts in expected.items():
        final(store, task_id, {"SUCCESS"})
        # wait until the slower path has reported too, then check there is no duplicate
        wait_for(
            lambda task_id=task_id: all(
                {"signal", "event"} <= set(e["sources"])
                for e in store.get_task(task_id)["timeline"]
            ),
            20,
            what=f"both sources on {task_id}: {store.get_task(task_id)['timeline']}",
        )
        task = store.get_task(task_id)
        timeline = task["timeline"]
        assert Counter(e["state"] for e in timeline) == counts, timeline
        assert all(sorted(e["sources"]) == ["event", "signal"] for e in timeline), timeline
        # Prefork's real emission order: each transition at its earliest report,
        # the timeline in lifecycle order, and one host's clock never "skewed".
        # Attempts may overlap (retry() sends the next message, a worker may
        # receive it, then RETRY is reported): each attempt is in order.
        phase = {"PENDING": 0, "RECEIVED": 1, "STARTED": 2, "RETRY": 3, "SUCCESS": 3}
        for attempt in {e["retries"] for e in timeline if e["retries"] is not None}:
            mine = [phase[e["state"]] for e in timeline if e["retries"] == attempt]
            assert mine == sorted(mine), timeline
        assert [e["state"] for e in timeline[:3]] == ["PENDING", "RECEIVED", "STARTED"]
        assert timeline[-1]["state"] == "SUCCESS", timeline
        for entry in timeline:
            assert entry["timestamp"] == min(r["timestamp"] for r in entry["reports"]), entry
            assert "skew" not in entry, timeline
        times = [float(task[k]) for k in ("sent", "received", "started", "succeeded")]
        assert times == sorted(times), task


def test_publish_without_worker_is_pending(settings, store, redis_url):
    """Signals and task-sent events both make a task visible before any worker has it."""
    queue = f"nobody-{uuid.uuid4().hex[:8]}"
    broker = "redis://127.0.0.1:6379/3"
    receiver = Receiver(settings.replace(broker_url=broker, enable_events=False))
    receiver.start()
    app = Celery("producer", broker=broker)
    app.conf.update(task_send_sent_event=True, task_default_queue=queue)
    wait_receiver_listening(app, store)
    try:
        event_only = app.send_task(T + "add", (1, 2))
        task = final(store, event_only.id, {"PENDING"})
        assert task["timeline"][0]["sources"] == ["event"]
        monitor.signals.connect(app, redis_url=settings.redis_url, prefix=settings.prefix)
        both = app.send_task(T + "add", (1, 2), kwargs={"token": "t0p"})
        final(store, both.id, {"PENDING"})
        wait_for(
            lambda: (
                sorted(store.get_task(both.id)["timeline"][0]["sources"]) == ["event", "signal"]
            ),
            10,
            what="both sources on PENDING",
        )
        task = store.get_task(both.id)
        assert [e["state"] for e in task["timeline"]] == ["PENDING"]
        assert task["queue"] == queue
        assert json.loads(task["args_json"]) == [1, 2]
        assert json.loads(task["kwargs_json"]) == {"token": "***"}
        assert "t0p" not in task["kwargs"]
    finally:
        monitor.signals.disconnect()
        receiver.stop()
        app.close()
        # drop what we queued for nobody
        import redis as redis_lib

        redis_lib.Redis.from_url(broker).delete(queue)


def test_hooks_skip_a_custom_task_id_that_would_collide_and_count_it(settings, store):
    """task_id= accepts any string; one naming another task's key is skipped, counted
    as malformed, and does not disturb the tasks around it."""
    queue = f"nobody-{uuid.uuid4().hex[:8]}"
    broker = "redis://127.0.0.1:6379/3"
    app = Celery("producer", broker=broker)
    app.conf.task_default_queue = queue
    monitor.signals.connect(app, redis_url=settings.redis_url, prefix=settings.prefix)
    try:
        app.send_task(T + "add", (1, 2), task_id="order:7")  # colons are fine
        app.send_task(T + "add", (1, 2), task_id="order:7:timeline")  # would be order:7's
        app.send_task(T + "add", (3, 4), task_id="order:8")
        wait_for(lambda: store.get_task("order:7") and store.get_task("order:8"), 10)
        wait_for(lambda: store.meta().get("malformed:signal") == 1, 10, what="skip counted")
        assert store.get_task("order:7")["timeline"][0]["state"] == "PENDING"
        assert store.redis.type(store.keys.timeline("order:7")) == "list"
    finally:
        monitor.signals.disconnect()
        app.close()
        import redis as redis_lib

        redis_lib.Redis.from_url(broker).delete(queue)


def test_a_pool_process_ended_by_sigterm_writes_its_buffer_first(settings, store):
    """A hard time limit and revoke(terminate=True) end a pool process with
    SIGTERM (SIGKILL 0.1 s later for the time limit). billiard turns it into
    SystemExit, so the hooks' exit flush writes what the process still buffers
    (here every record: its flush interval is 30 s) before it dies."""
    broker = "redis://127.0.0.1:6379/5"
    queue = f"q-{settings.prefix}"
    worker = WorkerProcess(
        broker=broker,
        queue=queue,
        prefix=settings.prefix,
        concurrency=1,  # one pool process runs everything, in order
        extra_env={"MONITOR_FLUSH_INTERVAL": "30"},
    )
    app = Celery("producer", broker=broker, backend="redis://127.0.0.1:6379/1")
    app.conf.task_default_queue = queue

    def child_states(task_id):
        task = store.get_task(task_id)
        return [e["state"] for e in task["timeline"] if "signal" in e["sources"]] if task else []

    try:
        worker.start()
        done = app.send_task(T + "add", (1, 2))
        assert done.get(timeout=30) == 3  # ran; its records wait in the child's buffer
        limited = app.send_task(T + "hard_limit")  # SIGTERM after 1 s, then SIGKILL
        # well within the 30 s flush interval: only the SIGTERM flush can write these
        wait_for(lambda: "SUCCESS" in child_states(done.id), 15, what="add's SUCCESS")
        assert "STARTED" in child_states(done.id)
        wait_for(lambda: "STARTED" in child_states(limited.id), 15, what="hard_limit's STARTED")

        running = app.send_task(T + "sleep", (60,))
        wait_for(
            lambda: any(
                t["id"] == running.id
                for ts in (app.control.inspect(timeout=1).active() or {}).values()
                for t in ts
            ),
            30,
            what="sleep running",
        )
        app.control.revoke(running.id, terminate=True)  # SIGTERM by default
        wait_for(lambda: "STARTED" in child_states(running.id), 15, what="sleep's STARTED")
    finally:
        worker.stop()
        app.close()
