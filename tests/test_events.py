"""The event receiver on hostile and broken input, batched lists, custom events,
and as a real ``python -m monitor events`` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
from celery import Celery
from kombu import Connection, Exchange, Producer

from monitor.events import Receiver

from .helpers import ROOT, WorkerProcess, stop_process, wait_for

BROKER = "redis://127.0.0.1:6379/5"


@pytest.fixture(params=[True, False], ids=["direct-pubsub", "kombu-consumer"])
def receiver(request, settings, redis_url):
    """Both ways of reading a Redis broker: its pub/sub directly, and kombu's consumer."""
    receiver = Receiver(
        settings.replace(broker_url=BROKER, enable_events=False), direct_redis=request.param
    ).start()
    yield receiver
    receiver.stop()


@pytest.fixture
def publish():
    """Publish raw bodies onto the celeryev exchange, as a broken client might."""
    conn = Connection(BROKER)
    producer = Producer(conn.channel(), exchange=Exchange("celeryev", type="fanout"))

    def send(body, content_type="application/json", routing_key="task.multi", **options):
        if not isinstance(body, bytes | str):
            body = json.dumps(body)
        producer.publish(
            body,
            routing_key=routing_key,
            content_type=content_type,
            content_encoding="utf-8",
            **options,
        )

    yield send
    conn.release()


def ready(receiver, publish, store):
    """Probe until the receiver's binding is live (events before it are not ours)."""
    host = f"probe-{uuid.uuid4().hex[:6]}"

    def probe():
        publish({"type": "worker-heartbeat", "hostname": host, "timestamp": time.time()})
        return store.worker(host)

    wait_for(probe, 30, 0.3, what="receiver listening")


def ev(type_, task_id, **fields):
    return {"type": type_, "uuid": task_id, "timestamp": time.time(), "hostname": "w1", **fields}


def test_batched_lists_and_custom_events(receiver, publish, store):
    ready(receiver, publish, store)
    expected = "reading its pub/sub directly" if receiver.direct_redis else "through a kombu"
    assert receiver.reading.startswith(expected)
    publish(
        [
            ev("task-received", "a", name="proj.a", args="(1,)", kwargs="{}", retries=0),
            ev("task-started", "a"),
            ev("task-progress", "a", current=5, total=10),
        ]
    )
    # compressed and kombu-tagged bodies take kombu's decoders (on both paths)
    publish(
        ev("task-succeeded", "a", result="'done'", runtime=0.5),
        routing_key="task.succeeded",
        compression="zlib",
    )
    publish(
        json.dumps(ev("task-received", "tagged", name="proj.tagged", eta="x")).replace(
            '"eta": "x"', '"eta": {"__type__": "datetime", "__value__": "2026-01-02T03:04:05"}'
        ),
        routing_key="task.received",
    )
    task = wait_for(lambda: (t := store.get_task("a")) and t["state"] == "SUCCESS" and t)
    assert [e["state"] for e in task["timeline"]] == ["RECEIVED", "STARTED", "PROGRESS", "SUCCESS"]
    tagged = wait_for(lambda: store.get_task("tagged"))
    assert tagged["eta"] == "2026-01-02T03:04:05" and tagged["name"] == "proj.tagged"
    assert json.loads(task["progress"]) == {"current": 5, "total": 10}
    assert task["result"] == "'done'" and task["worker"] == "w1"


def test_malformed_and_hostile_input_is_skipped_or_stored_safely(receiver, publish, store):
    ready(receiver, publish, store)
    hostile = "<img src=x onerror=alert(1)><script>alert(2)</script>"
    publish(b"{this is not json", content_type="application/json")
    publish(b"\x00\xff\xfe binary", content_type="application/octet-stream")
    publish(b"\x80\x04K\x01.", content_type="application/x-python-serialize")  # pickle: never
    publish({"type": "task-received", "uuid": "bigint", "timestamp": time.time(), "n": 2**70})
    publish(["garbage", 42, None, {"no": "type"}])
    publish(ev("task-received", "", name="no uuid"))
    publish({"type": "task-failed", "timestamp": "soon", "uuid": "x"})
    publish({"type": "banana-split", "timestamp": time.time()})
    publish(ev("task-<script>", "y"))
    publish(ev("task-received", "huge", name=hostile, args="x" * (10 * 1024 * 1024), kwargs="{}"))
    publish(ev("task-failed", "huge", exception=hostile, traceback=hostile))
    # the receiver keeps going: a later good event is stored
    publish(ev("task-received", "after", name="proj.after"))
    wait_for(lambda: store.get_task("after"), what="event after the garbage")
    task = wait_for(lambda: (t := store.get_task("huge")) and t["state"] == "FAILURE" and t)
    assert task["name"] == hostile and task["exception"] == hostile
    assert task["args"].endswith(f"… [truncated: {10 * 1024 * 1024} bytes]")
    assert int(task["args_truncated"]) == 10 * 1024 * 1024
    assert store.get_task("y") is None and store.get_task("x") is None
    # an integer beyond 64 bits (orjson reads it as a float) loses no event
    assert float(wait_for(lambda: store.get_task("bigint"))["n"]) == float(2**70)
    # not-JSON, undecodable, pickle, 4 garbage items, no uuid, bad timestamp, bad type
    wait_for(lambda: store.meta().get("malformed:event", 0) >= 9, what="malformed counted")
    assert receiver.malformed >= 9


def test_events_command_records_a_real_worker(settings, store, redis_url):
    queue = f"q-{settings.prefix}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "monitor",
            "events",
            "--broker",
            BROKER,
            "--redis",
            redis_url,
            "--prefix",
            settings.prefix,
        ],
        cwd=ROOT,
        env={**os.environ, "MONITOR_ENABLE_EVENTS_INTERVAL": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = WorkerProcess(broker=BROKER, queue=queue, prefix=settings.prefix, hooks=False)
    app = Celery("producer", broker=BROKER)
    app.conf.task_default_queue = queue
    try:
        # the command turns events on itself (enable_events broadcast): no -E on the worker
        worker.start()
        wait_for(lambda: "Events of group {task} enabled by remote" in worker.log(), 30)
        assert wait_for(lambda: store.worker(worker.hostname), 30)["online"]
        result = app.send_task("tests.workerapp.add", (20, 22))
        task = wait_for(
            lambda: (t := store.get_task(result.id)) and t["state"] == "SUCCESS" and t, 60
        )
        assert task["result"] == "42" and task["worker"] == worker.hostname
    finally:
        worker.stop()
        stop_process(proc)
        app.close()
    output = proc.stdout.read().decode()
    assert "event receiver connected" in output


@pytest.mark.parametrize(
    "transport_options",
    [
        {"global_keyprefix": "tenant-a:"},
        {"fanout_prefix": False},
        {"fanout_patterns": False},
        {"fanout_prefix": "/custom."},
    ],
    ids=["global_keyprefix", "no-fanout-prefix", "no-fanout-patterns", "custom-fanout-prefix"],
)
def test_direct_pubsub_follows_the_apps_transport_options(settings, store, transport_options):
    """The direct path asks kombu for the topic names, so a Celery app's own
    broker_transport_options reach it: events that Celery's dispatcher sends
    with those options (to topics the default names would miss) are stored."""
    app = Celery("opts", broker=BROKER)
    app.conf.broker_transport_options = transport_options
    receiver = Receiver(settings.replace(enable_events=False), app=app, direct_redis=True).start()
    task_id = f"opt-{uuid.uuid4().hex[:8]}"
    try:
        with app.connection_for_write() as conn:
            dispatcher = app.events.Dispatcher(
                conn, hostname="w-opts", enabled=True, buffer_while_offline=False
            )

            def probe():
                dispatcher.send("worker-heartbeat", freq=2.0)
                return store.worker("w-opts")

            wait_for(probe, 30, 0.3, what="receiver listening")
            assert receiver.reading == "reading its pub/sub directly"
            dispatcher.send("task-received", uuid=task_id, name="proj.opts", args="()", kwargs="{}")
            dispatcher.send("task-succeeded", uuid=task_id, result="1", runtime=0.1)
            task = wait_for(
                lambda: (t := store.get_task(task_id)) and t["state"] == "SUCCESS" and t
            )
            assert task["name"] == "proj.opts" and task["worker"] == "w-opts"
            dispatcher.close()
    finally:
        receiver.stop()
        app.close()
