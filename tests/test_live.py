"""Live updates end to end: a real ``monitor serve`` process and real Socket.IO clients.

The serve processes run with ``--no-events``; changes are written straight
into the store (as the hooks or the receiver would) and must reach the
clients subscribed to the matching rooms, coalesced.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import defaultdict

import pytest
import socketio

from monitor.model import TaskEvent

from . import helpers
from .helpers import free_port, http_get, stop_process, wait_for

T0 = time.time()


def start_serve(settings, port: int, *extra: str) -> subprocess.Popen:
    proc = helpers.start_serve(
        settings.redis_url,
        settings.prefix,
        port,
        *extra,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {proc.stderr.read()}")
        response = http_get(f"http://127.0.0.1:{port}/api/v1/workers", timeout=1)
        return response is not None and response.ok

    wait_for(up, 30, 0.1, "serve to answer")
    return proc


@pytest.fixture
def serve(settings):
    procs: list[subprocess.Popen] = []

    def start(*extra: str) -> int:
        port = free_port()
        procs.append(start_serve(settings, port, *extra))
        return port

    yield start
    for proc in procs:
        stop_process(proc)


class Recorder:
    """A real socketio.Client that records every message by event name."""

    def __init__(self, port: int, transports=None) -> None:
        self.messages: dict[str, list] = defaultdict(list)
        self.times: dict[str, list[float]] = defaultdict(list)
        self.lock = threading.Lock()
        self.sio = socketio.Client(reconnection=True)
        for name in ("status", "overview", "workers", "tasks", "task", "worker"):
            self.sio.on(name, self._handler(name))
        self.sio.connect(
            f"http://127.0.0.1:{port}", transports=transports or ["polling"], wait_timeout=10
        )

    def _handler(self, name):
        def handle(data):
            with self.lock:
                self.messages[name].append(data)
                self.times[name].append(time.monotonic())

        return handle

    def subscribe(self, **payload):
        ack = self.sio.call("subscribe", payload, timeout=10)
        assert ack["ok"], ack
        return ack

    def got(self, name):
        with self.lock:
            return list(self.messages[name])

    def close(self):
        self.sio.disconnect()


@pytest.fixture
def clients():
    made: list[Recorder] = []

    def make(port, transports=None):
        made.append(Recorder(port, transports))
        return made[-1]

    yield make
    for c in made:
        c.close()


def ev(tid, state, t, **fields):
    base = {"name": "proj.live", "worker": "celery@live"}
    base.update(fields)
    return TaskEvent(tid, state, t, "signal", base["worker"], base)


def test_task_room_gets_its_task_only_over_polling(serve, clients, store):
    port = serve()
    client = clients(port, ["polling"])
    wait_for(lambda: client.got("status"), 10, what="status on connect")
    client.subscribe(room="task", id="mine")
    client.subscribe(room="tasks", filters={"state": "FAILURE"})
    store.apply([ev("other", "STARTED", T0), ev("mine", "RECEIVED", T0)])
    store.apply([ev("mine", "STARTED", T0 + 1)])
    store.apply([ev("mine", "FAILURE", T0 + 2, exception="ValueError('x')")])

    def final():
        tasks = [m["task"] for m in client.got("task")]
        return tasks and tasks[-1]["state"] == "FAILURE" and tasks

    tasks = wait_for(final, 15, what="the FAILURE delta of my task")
    assert {t["id"] for t in tasks} == {"mine"}
    assert [e["state"] for e in tasks[-1]["timeline"]] == ["RECEIVED", "STARTED", "FAILURE"]
    rows = wait_for(
        lambda: [r for m in client.got("tasks") for r in m["rows"]],
        10,
        what="the failed row in the FAILURE list room",
    )
    assert {r["id"] for r in rows} == {"mine"} and rows[-1]["state"] == "FAILURE"
    assert client.sio.transport() == "polling"


def test_burst_is_coalesced(serve, clients, settings, store):
    port = serve()
    client = clients(port)
    client.subscribe(room="tasks", filters={})
    client.subscribe(room="overview")
    wait_for(lambda: client.got("overview"), 10, what="the first overview")
    started = time.monotonic()
    n = 5000
    for start in range(0, n, 250):
        store.apply([ev(f"b{i}", "SUCCESS", T0 + i * 0.001) for i in range(start, start + 250)])
    burst = time.monotonic() - started
    seen = lambda: {r["id"] for m in client.got("tasks") for r in m["rows"]}  # noqa: E731
    wait_for(lambda: f"b{n - 1}" in seen(), 20, what="the burst's last task")
    elapsed = time.monotonic() - started
    # At most one "tasks" message per push interval while the burst lasted,
    # plus slack for the final push and timer jitter.
    bound = elapsed / settings.push_interval + 3
    tasks_msgs = len(client.got("tasks"))
    assert tasks_msgs <= bound, (tasks_msgs, bound, burst)
    assert tasks_msgs < n / 50
    overview_msgs = len(client.got("overview"))
    assert overview_msgs <= bound + 1


def test_two_serve_processes_share_rooms_and_both_deliver(serve, clients, store):
    port_a, port_b = serve(), serve()
    a, b = clients(port_a), clients(port_b)
    a.subscribe(room="task", id="shared")
    b.subscribe(room="task", id="shared")
    store.apply([ev("shared", "SUCCESS", T0, result="42")])
    for client in (a, b):
        wait_for(
            lambda c=client: any(m["task"]["state"] == "SUCCESS" for m in c.got("task")),
            20,
            what="the shared task on both processes",
        )
    time.sleep(1.0)  # let any duplicate arrive before counting
    # One process tails the feed for both: each client gets the delta once.
    for client in (a, b):
        deltas = [m for m in client.got("task") if m["task"]["state"] == "SUCCESS"]
        assert len(deltas) <= 2  # the subscribe snapshot may already show SUCCESS


def test_worker_room_and_unsubscribe(serve, clients, store):
    port = serve()
    client = clients(port)
    client.subscribe(room="worker", hostname="celery@live")
    store.apply([ev("w1", "STARTED", T0)])
    msgs = wait_for(
        lambda: [m for m in client.got("worker") if m["rows"]], 15, what="a worker delta with rows"
    )
    assert msgs[0]["rows"][0]["id"] == "w1"
    client.sio.call("unsubscribe", {"room": "worker", "hostname": "celery@live"}, timeout=10)
    time.sleep(0.5)
    before = len(client.got("worker"))
    store.apply([ev("w2", "STARTED", T0 + 1)])
    time.sleep(1.5)  # nothing may arrive: there is no condition to wait for
    assert len(client.got("worker")) == before
