"""The event receiver on hostile and broken input, batched lists, custom events,
and as a real ``python -m monitor events`` process."""

from __future__ import annotations

import bz2
import json
import logging
import lzma
import os
import struct
import subprocess
import sys
import time
import uuid
import zlib

import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Producer

from monitor import events, redis_fanout
from monitor.events import Receiver

from .helpers import AMQP_URL, ROOT, WorkerProcess, require_service, stop_process, wait_for

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
    app.conf.task_send_sent_event = True  # task-sent too: every field Celery sends
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
        assert task["client"] and task["routing_key"] and "sent" in task
    finally:
        worker.stop()
        stop_process(proc)
        app.close()
    output = proc.stdout.read().decode()
    assert "event receiver connected" in output
    # the type checks take every event a real Celery sends, heartbeats included
    # (the receiver reports its count as it stops)
    assert "malformed" not in output and "malformed:event" not in store.meta()


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


# -- hostile messages on every receiver path: each one skipped and counted ------
T = 1_700_000_000.5
CAP = 1024 * 1024  # max_decompressed_bytes in these tests


def raw_event(uuid_, extra=""):
    """A task-received event as JSON text, with ``extra`` spliced in verbatim
    (number syntax no JSON encoder would write: 1e999, NaN, 400 digits)."""
    return f'{{"type":"task-received","uuid":"{uuid_}","hostname":"w1","timestamp":{T}{extra}}}'


def bomb(compress):
    """A compressed event that inflates to 8 MiB (the cap is 1 MiB)."""
    return compress(json.dumps(ev("task-received", "bomb", args="x" * (8 << 20))).encode())


def deep(n):
    return "[" * n + "]" * n


#: (what, body, publish options, malformed events it counts)
HOSTILE = [
    ("400-digit timestamp", raw_event("h1").replace(str(T), "1" + "0" * 400), {}, 1),
    ("timestamp 1e999", raw_event("h2").replace(str(T), "1e999"), {}, 1),
    ("timestamp NaN", raw_event("h3").replace(str(T), "NaN"), {}, 1),
    ("timestamp -Infinity", raw_event("h3").replace(str(T), "-Infinity"), {}, 1),
    ("nested 5000 deep", raw_event("h4", ',"args":' + deep(5000)), {}, 1),
    ("nested 1000 deep", raw_event("h5", ',"args":' + deep(1000)), {}, 1),
    (
        "custom event 1000 deep",
        raw_event("h6", ',"x":' + deep(1000)).replace("received", "progress"),
        {},
        1,
    ),
    ("uuid int", ev("task-received", 5), {}, 1),
    ("uuid dict", ev("task-received", {"a": 1}), {}, 1),
    ("hostname list", {**ev("task-received", "h7"), "hostname": ["w"]}, {}, 1),
    ("retries abc", ev("task-received", "h8", retries="abc"), {}, 1),
    ("retries 1e400", raw_event("h9", ',"retries":1e400'), {}, 1),
    ("runtime list", ev("task-succeeded", "h10", runtime=[1]), {}, 1),
    ("name dict", ev("task-received", "h11", name={"a": 1}), {}, 1),
    ("pid str", ev("task-started", "h12", pid="123"), {}, 1),
    (
        "freq str",
        {"type": "worker-heartbeat", "hostname": "wf", "timestamp": T, "freq": "x"},
        {},
        1,
    ),
    (
        "active -1",
        {"type": "worker-heartbeat", "hostname": "wf", "timestamp": T, "active": -1},
        {},
        1,
    ),
    ("invalid UTF-8", b'{"type": "task-received", "uuid": "\xff\xfe", "timestamp": 1}', {}, 1),
    ("YAML", b"type: task-received", {"content_type": "application/x-yaml"}, 1),
    ("pickle", b"\x80\x04K\x01.", {"content_type": "application/x-python-serialize"}, 1),
    ("no content type", b"{}", {"content_type": "application/data"}, 1),
    ("bogus charset", b"{}", {"content_encoding": "utf-99"}, 1),
    ("unknown compression", b"{}", {"headers": {"compression": "application/x-snappy"}}, 1),
    ("zlib bomb", bomb(zlib.compress), {"headers": {"compression": "application/x-gzip"}}, 1),
    ("bz2 bomb", bomb(bz2.compress), {"headers": {"compression": "application/x-bz2"}}, 1),
    ("lzma bomb", bomb(lzma.compress), {"headers": {"compression": "application/x-lzma"}}, 1),
    ("not zlib", b"not zlib", {"headers": {"compression": "application/x-gzip"}}, 1),
    ("truncated zlib", zlib.compress(b"{}" * 1000)[:-8], {"headers": {"compression": "zlib"}}, 1),
    ("body 42", 42, {}, 1),
    ("body null", None, {}, 1),
    ("list with hostile items", [ev("task-received", "m1"), ev("task-received", 5), "s", 4], {}, 3),
]


@pytest.fixture(params=["redis-direct", "redis-kombu", "rabbitmq-kombu"])
def hostile_receiver(request, settings, redis_url, monkeypatch):
    """A receiver on each path, and a function publishing raw bodies to it."""
    if request.param == "rabbitmq-kombu":
        require_service("127.0.0.1", 5672, "RabbitMQ")
        broker, exchange = AMQP_URL, Exchange("celeryev", type="topic")  # Celery's, on AMQP
    else:
        broker, exchange = BROKER, Exchange("celeryev", type="fanout")
    # one log line for the whole test, however long it takes: the rate limit is seen
    monkeypatch.setattr(events, "MALFORMED_LOG_EVERY", 3600.0)
    receiver = Receiver(
        settings.replace(broker_url=broker, enable_events=False, max_decompressed_bytes=CAP),
        direct_redis=request.param == "redis-direct",
    ).start()
    conn = Connection(broker)
    producer = Producer(conn.channel(), exchange=exchange)

    def send(body, routing_key="task.multi", **options):
        if not isinstance(body, bytes | str):
            body = json.dumps(body)
        options.setdefault("content_type", "application/json")
        options.setdefault("content_encoding", "utf-8")
        producer.publish(body, routing_key=routing_key, **options)

    yield receiver, send, conn
    receiver.stop()
    conn.release()


def test_no_message_costs_the_connection_or_a_later_event(hostile_receiver, store, caplog):
    receiver, send, conn = hostile_receiver
    caplog.set_level(logging.WARNING, logger="monitor.events")
    ready(receiver, send, store)
    expected = 0
    for _what, body, options, malformed in HOSTILE:
        send(body, **options)
        expected += malformed
    # stored, not lost: 10,000 extra fields (capped, never over the store's own),
    # a compressed event, a forged heartbeat interval (clamped)
    forged = {"state": "SUCCESS", "succeeded": "1", "sent_reported": "1", "args_truncated": "1"}
    extras = {f"x{i}": "v" for i in range(10_000)}
    send(ev("task-received", "extras", name="proj.extras", **forged, **extras))
    send(ev("task-succeeded", "zipped", result="'ok'"), compression="zlib")
    send({"type": "worker-heartbeat", "hostname": "w-forged", "timestamp": T, "freq": 1e308})
    send(ev("task-received", "m2", name="proj.after"))
    if conn.transport.driver_type == "redis":
        # envelopes that are not kombu's, published straight to the topic
        topic = conn.default_channel._get_publish_topic("celeryev", "task.multi")
        client = redis.Redis.from_url(BROKER)
        raw = [
            b"[1, 2]",
            deep(5000).encode(),
            b'{"body": 5}',
            b'{"body": "!!!", "content-type": "application/json",'
            b' "properties": {"body_encoding": "base64", "delivery_tag": "t"}}',
            b'{"body": "e30=", "content-type": "application/json", "properties": [1]}',
            b'{"body": "{}", "content-type": "application/json", "headers": "zlib"}',
        ]
        if receiver.direct_redis:  # kombu's transport drops this one itself, with a warning
            raw.append(b"not json")
        for payload in raw:
            client.publish(topic, payload)
            expected += 1
        client.close()
    send(ev("task-received", "last", name="proj.last"))
    wait_for(lambda: store.get_task("last"), what="the event published after the garbage")
    wait_for(lambda: store.meta().get("malformed:event") == expected, what="malformed counted")
    assert receiver.malformed == expected
    assert receiver.reconnects == 0 and receiver.connected.is_set()
    for task_id in ("m1", "m2", "zipped"):
        assert store.get_task(task_id), task_id
    task = store.get_task("extras")
    assert task["state"] == "RECEIVED" and "succeeded" not in task and "sent_reported" not in task
    assert "args_truncated" not in task
    assert int(task["fields_truncated"]) == 10_000 + len(forged) - 32
    assert sum(1 for k in task if k.startswith("x")) == 32
    assert float(store.worker("w-forged")["freq"]) == 3600.0
    for h in ("h1", "h2", "h3", "h4", "h5", "h6", "h8", "h9", "h10", "h11", "h12", "bomb"):
        assert store.get_task(h) is None, h
    lines = [r.getMessage() for r in caplog.records if r.name == "monitor.events"]
    assert not [line for line in lines if "lost the broker" in line]
    skipped = [line for line in lines if "malformed" in line]
    assert len(skipped) == 1 and "skipped 1 malformed event(s)" in skipped[0], skipped


@pytest.mark.parametrize(
    "name, compress",
    [("zlib", zlib.compress), ("application/x-bz2", bz2.compress), ("xz", lzma.compress)],
)
def test_decompression_stops_at_the_cap(name, compress):
    data = b"{}" + b" " * 9998  # 10,000 bytes
    assert redis_fanout.decompress(compress(data), name, 10_000) == data
    with pytest.raises(redis_fanout.UndecodableMessage, match="inflates past 9999"):
        redis_fanout.decompress(compress(data), name, 9_999)
    with pytest.raises(redis_fanout.UndecodableMessage, match="truncated|corrupt"):
        redis_fanout.decompress(compress(data)[:-10], name, 10_000)


def test_decompression_reads_concatenated_streams_as_kombu_does():
    assert (
        redis_fanout.decompress(bz2.compress(b"ab") + bz2.compress(b"cd"), "bzip2", 10) == b"abcd"
    )
    assert redis_fanout.decompress(lzma.compress(b"ab") * 3, "lzma", 10) == b"ababab"
    with pytest.raises(redis_fanout.UndecodableMessage):  # 3 streams of 4 bytes: past 10
        redis_fanout.decompress(bz2.compress(b"abcd") * 3, "bzip2", 10)


def test_an_xz_header_asking_for_gigabytes_of_memory_is_refused():
    data = lzma.compress(b"x" * 1000, format=lzma.FORMAT_ALONE)
    forged = data[:1] + struct.pack("<I", 1536 << 20) + data[5:]  # a 1.5 GiB dictionary
    with pytest.raises(redis_fanout.UndecodableMessage, match="Memory usage limit"):
        redis_fanout.decompress(forged, "xz", 1 << 20)
    # what kombu itself produces, even at xz's highest preset, is taken
    extreme = lzma.compress(b"y" * 5000, preset=9 | lzma.PRESET_EXTREME)
    assert redis_fanout.decompress(extreme, "xz", 1 << 20) == b"y" * 5000
