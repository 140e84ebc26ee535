"""Live updates end to end: a real ``monitor serve`` process and real Socket.IO clients.

The serve processes run with ``--no-events``; changes are written straight
into the store (as the hooks or the receiver would) and must reach the
clients subscribed to the matching rooms, coalesced. Hostile clients (too many
rooms, names too long, wrong types, floods) are refused and, when they keep
on, disconnected, while the other clients keep their live updates. The room
index and the snapshot cache are checked on their own; embedding next to a
host's own Flask-SocketIO uses the test client (no message queue involved).
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections import defaultdict

import pytest
import socketio
from flask import Flask
from flask_socketio import SocketIO
from flask_socketio import emit as host_emit

from monitor.config import ConfigError, Settings
from monitor.model import TaskEvent
from monitor.web import create_app, init_app
from monitor.web.live import (
    ABUSE_LIMIT,
    MAX_DETAILS,
    MAX_STATES,
    MAX_VALUE,
    ROOM_KINDS,
    Hub,
    RoomError,
    RoomIndex,
    RoomKind,
    SnapshotCache,
    room_arg,
    room_name,
)

from . import helpers
from .helpers import clean_env, free_port, http_get, stop_process, wait_for

T0 = time.time()


def start_serve(settings, port: int, *extra: str, **env: str) -> subprocess.Popen:
    proc = helpers.start_serve(
        settings.redis_url,
        settings.prefix,
        port,
        *extra,
        env=clean_env(**env),
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

    def start(*extra: str, **env: str) -> int:
        port = free_port()
        procs.append(start_serve(settings, port, *extra, **env))
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

    def call(self, event, payload):
        return self.sio.call(event, payload, timeout=10)

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


# -- budgets: hostile clients ---------------------------------------------------------


def deep(n):
    value = "x"
    for _ in range(n):
        value = {"room": value}
    return value


HOSTILE_PAYLOADS = [
    {"room": "task", "id": "x" * (MAX_VALUE + 1)},
    {"room": "worker", "hostname": "h" * 100_000},
    {"room": "tasks", "filters": {"name": "n" * (MAX_VALUE + 1)}},
    {"room": "tasks", "filters": {"state": ",".join(f"S{i}" for i in range(MAX_STATES + 1))}},
    {"room": "tasks", "filters": {"worker": ["a"]}},
    {"room": "tasks", "filters": [1, 2]},
    {"room": "task", "id": 12},
    {"room": "task", "id": float("nan")},
    {"room": "task", "id": 1e308},
    {"room": "task", "id": {"$gt": ""}},
    {"room": "task"},
    {"room": "x" * 100_000},
    {"room": None},
    deep(200),
    "task:abc",
    ["task", "abc"],
    None,
    -1e308,
]


def test_hostile_subscribes_are_refused_one_by_one(serve, clients):
    port = serve(MONITOR_LIVE_MAX_ROOMS="3", MONITOR_LIVE_SUBSCRIBE_RATE="1000")
    client = clients(port, ["websocket"])
    for payload in HOSTILE_PAYLOADS:
        ack = client.call("subscribe", payload)
        assert ack["ok"] is False and ack["error"], (payload, ack)
        assert len(ack["error"]) < 200  # a hostile value is never echoed whole
        assert client.call("unsubscribe", payload)["ok"] is False
    for i in range(3):
        client.subscribe(room="task", id=f"r{i}")
    assert client.call("subscribe", {"room": "task", "id": "r0"})["ok"]  # already in: no cost
    over = client.call("subscribe", {"room": "task", "id": "r3"})
    assert over["ok"] is False and "limit" in over["error"]
    assert client.call("unsubscribe", {"room": "task", "id": "r0"})["ok"]
    longest = client.subscribe(room="task", id="y" * MAX_VALUE)
    assert longest["room"] == "task:" + "y" * MAX_VALUE
    assert client.sio.connected  # refusals below the abuse limit keep the connection


def test_subscribe_rate_is_limited_per_connection(serve, clients):
    # One request every 2 s (a burst of one): the second request comes sooner.
    port = serve(MONITOR_LIVE_SUBSCRIBE_RATE="0.5")
    client, other = clients(port), clients(port)
    client.subscribe(room="task", id="a")
    slow = client.call("unsubscribe", {"room": "task", "id": "a"})
    assert slow["ok"] is False and "slow down" in slow["error"]
    other.subscribe(room="task", id="a")  # a budget per connection, not per server
    wait_for(
        lambda: client.call("unsubscribe", {"room": "task", "id": "a"})["ok"],
        10,
        0.3,
        "the refilled budget",
    )


def test_abusive_connection_is_closed_and_others_stay_live(serve, clients, store):
    port = serve()
    victim = clients(port)
    victim.subscribe(room="task", id="victim")
    abuser = socketio.Client(reconnection=False)
    closed = threading.Event()
    abuser.on("disconnect", lambda *a: closed.set())
    abuser.connect(f"http://127.0.0.1:{port}", transports=["websocket"], wait_timeout=10)
    for i in range(ABUSE_LIMIT + 10):
        try:
            abuser.emit("subscribe", {"room": "nope", "n": i})
        except socketio.exceptions.BadNamespaceError:  # closed by the server meanwhile
            break
    wait_for(closed.is_set, 20, what="the server closing the abusive connection")
    store.apply([ev("victim", "SUCCESS", T0)])
    wait_for(
        lambda: any(m["task"]["state"] == "SUCCESS" for m in victim.got("task")),
        20,
        what="the victim's live update",
    )


def test_flood_of_20000_subscribes_gets_live_max_rooms_and_others_stay_live(serve, clients, store):
    port = serve()
    victim = clients(port)
    victim.subscribe(room="task", id="victim")
    victim.subscribe(room="tasks", filters={})
    flooder = socketio.Client(reconnection=False)
    closed = threading.Event()
    flooder.on("disconnect", lambda *a: closed.set())
    flooder.connect(f"http://127.0.0.1:{port}", transports=["websocket"], wait_timeout=10)
    for i in range(20_000):
        try:
            flooder.emit("subscribe", {"room": "task", "id": f"flood-{i}"})
        except socketio.exceptions.BadNamespaceError:  # closed by the server meanwhile
            break
    wait_for(closed.is_set, 30, what="the server closing the flooding connection")
    # Rooms are registered (shared mode) as they are joined: the flood got at
    # most its connection's budget, never 20,000 rooms.
    registered = store.redis.zrange(store.keys.web_rooms, 0, -1)
    flood_rooms = [r for r in registered if r.startswith("task:flood-")]
    assert 0 < len(flood_rooms) <= 100, len(flood_rooms)
    store.apply([ev("victim", "SUCCESS", T0)])
    wait_for(
        lambda: any(m["task"]["state"] == "SUCCESS" for m in victim.got("task")),
        20,
        what="the victim's task update after the flood",
    )
    wait_for(
        lambda: any(r["id"] == "victim" for m in victim.got("tasks") for r in m["rows"]),
        20,
        what="the victim's task-list update after the flood",
    )


def test_unknown_events_count_as_abuse(serve, clients):
    port = serve(MONITOR_LIVE_SUBSCRIBE_RATE="1000")
    client = clients(port, ["websocket"])
    ack = client.call("bogus", {"a": 1})
    assert ack["ok"] is False and "unknown event" in ack["error"]
    assert client.sio.connected


# -- room names and the index a push uses ------------------------------------------------


def test_room_names_are_canonical_and_bounded():
    assert room_name({"room": "overview"}) == "overview"
    assert room_name({"room": "task", "id": "a:b"}) == "task:a:b"
    a = room_name({"room": "tasks", "filters": {"state": "failure,SUCCESS,,failure"}})
    b = room_name({"room": "tasks", "filters": {"state": "SUCCESS,FAILURE", "name": ""}})
    assert a == b == 'tasks:{"state":"FAILURE,SUCCESS"}'
    for payload in HOSTILE_PAYLOADS:
        with pytest.raises(RoomError):
            room_name(payload)


def _brute_force(room, change):
    kind, _, arg = room.partition(":")
    filters = json.loads(arg)
    states = filters.get("state", "").split(",") if filters.get("state") else None
    return (
        (states is None or change["state"] in states)
        and filters.get("name", change["name"]) == change["name"]
        and filters.get("worker", change["worker"]) == change["worker"]
    )


def test_room_index_finds_exactly_the_matching_task_lists():
    rng = random.Random(8)
    names, workers, states = ["a", "b", ""], ["w1", "w2", ""], ["SUCCESS", "FAILURE", "STARTED"]
    rooms = set()
    for _ in range(200):
        filters = {
            "name": rng.choice(names),
            "worker": rng.choice(workers),
            "state": ",".join(rng.sample(states, rng.randint(0, 3))),
        }
        rooms.add(room_name({"room": "tasks", "filters": filters}))
    rooms = sorted(rooms) + ["task:t1", "worker:w1", "overview", "tasks:not json", "tasks:[1]"]
    index = RoomIndex(rooms)
    assert set(index.of("task")) == {"t1"} and set(index.of("worker")) == {"w1"}
    assert index.of("overview") is not None and index.of("workers") is None
    for name in names:
        for worker in workers:
            for state in states:
                change = {"name": name, "worker": worker, "state": state}
                found = list(index.of("tasks").lists_for(name, worker, state))
                assert len(found) == len(set(found))  # a room once per change
                expected = {r for r in rooms if r.startswith("tasks:{") and _brute_force(r, change)}
                assert set(found) == expected, change


class Emitted:
    """What a hub emits, recorded (the Socket.IO server is not what this test is about)."""

    def __init__(self):
        self.messages = []

    def emit(self, event, data, to=None, namespace=None):
        self.messages.append((event, to, data))


def test_a_push_fetches_a_bounded_number_of_task_details(settings, store):
    n = MAX_DETAILS + 30
    store.apply([ev(f"d{i}", "STARTED", T0 + i, worker="celery@d") for i in range(n)])
    emitted = Emitted()
    hub = Hub(emitted, settings)
    rooms = [f"task:d{i}" for i in range(n)] + ["worker:celery@d", "tasks:{}", "overview"]
    changes = {
        f"d{i}": {"state": "STARTED", "name": "proj.live", "worker": "celery@d"} for i in range(n)
    }
    index = RoomIndex(rooms)
    hub._push(index, changes, set(), due=("tasks", "task", "worker"))
    deferred = hub.schedule.states["task"]["deferred"]
    details = [to for event, to, _ in emitted.messages if event == "task"]
    assert len(details) == MAX_DETAILS and len(deferred) == n - MAX_DETAILS
    lists = [data for event, _, data in emitted.messages if event == "tasks"]
    assert [r["id"] for r in lists[0]["rows"]] == [f"d{i}" for i in reversed(range(n))]
    worker = [data for event, _, data in emitted.messages if event == "worker"]
    assert len(worker[0]["rows"]) == n
    assert not [m for m in emitted.messages if m[0] == "overview"]
    emitted.messages.clear()
    hub._push(index, {}, set(), due=("task",))
    assert hub.schedule.states["task"]["deferred"] == set()
    rest = {to for event, to, _ in emitted.messages if event == "task"}
    assert rest == {f"task:{i}" for i in deferred}
    hub.store.close()


def test_a_periodic_kind_is_one_entry_pushed_every_n_seconds_while_it_has_rooms(
    settings, store, monkeypatch
):
    """A kind whose data is not in the change feed (queues, charts): one table entry
    with ``every``; its rooms get their snapshot again every N seconds, changes or not."""
    reads = []

    def snapshot(_store, arg):
        reads.append(arg)
        return "sample", {"queue": arg, "n": len(reads)}

    kind = RoomKind(lambda p: room_arg(p, "name", "sample"), snapshot, every=3.0)
    monkeypatch.setitem(ROOM_KINDS, "sample", kind)
    assert room_name({"room": "sample", "name": "q1"}) == "sample:q1"
    emitted = Emitted()
    hub = Hub(emitted, settings)
    index = RoomIndex(["sample:q1", "sample:q2"])
    schedule = hub.schedule
    assert "sample" in schedule.due(index, {"task"}, now=100.0)
    hub._push(index, {}, set(), due=["sample"])
    assert sorted((e, to) for e, to, _ in emitted.messages) == [
        ("sample", "sample:q1"),
        ("sample", "sample:q2"),
    ]
    # changes of the feed do not make it due; its period does
    assert "sample" not in schedule.due(index, {"task", "worker"}, now=102.0)
    assert "sample" in schedule.due(index, set(), now=103.5)
    # without rooms it costs nothing
    assert "sample" not in schedule.due(RoomIndex(["overview"]), set(), now=200.0)
    hub.store.close()


# -- the snapshot cache ------------------------------------------------------------------


def test_snapshot_cache_computes_once_for_concurrent_subscribers():
    cache = SnapshotCache(ttl=60)
    started, release = threading.Event(), threading.Event()
    calls = []

    def compute():
        calls.append(1)
        started.set()
        release.wait(10)
        return ("task", {"n": len(calls)})

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get("task:x", compute)))
        for _ in range(20)
    ]
    threads[0].start()
    started.wait(10)
    for t in threads[1:]:
        t.start()
    release.set()
    for t in threads:
        t.join(10)
    assert len(calls) == 1 and results == [("task", {"n": 1})] * 20
    assert cache.get("task:x", compute) == ("task", {"n": 1})  # cached within the ttl


def test_snapshot_cache_drops_changed_rooms_and_never_stores_a_stale_flight():
    cache = SnapshotCache(ttl=60, size=3)
    assert cache.get("task:a", lambda: "v1") == "v1"
    cache.invalidate({"task": ["a"]})
    assert cache.get("task:a", lambda: "v2") == "v2"

    def changed_meanwhile():
        cache.invalidate({"task": ["b"]})  # the tailer hears of a change mid-computation
        return "old"

    assert cache.get("task:b", changed_meanwhile) == "old"
    assert cache.get("task:b", lambda: "new") == "new"
    cache.get("worker:h", lambda: "w1")
    cache.invalidate({"worker": ["h"]})
    assert cache.get("worker:h", lambda: "w2") == "w2"
    for i in range(10):
        cache.get(f"task:{i}", lambda i=i: i)
    assert len(cache) == 3  # bounded

    def boom():
        raise ValueError("redis said no")

    with pytest.raises(ValueError):
        cache.get("task:err", boom)
    assert cache.get("task:err", lambda: "ok") == "ok"  # errors are not cached


def test_many_subscribes_to_one_room_cost_one_snapshot(settings, store):
    store.apply([ev("one", "STARTED", T0)])
    app = create_app(settings, message_queue=None)
    hub = app.extensions["monitor"].hub
    hub.snapshots = SnapshotCache(ttl=60)
    sio = app.extensions["monitor"].socketio
    try:
        for _ in range(25):
            client = sio.test_client(app)
            ack = client.emit("subscribe", {"room": "task", "id": "one"}, callback=True)
            assert ack == {"ok": True, "room": "task:one"}
            first = [m for m in client.get_received() if m["name"] == "task"]
            assert first[0]["args"][0]["task"]["state"] == "STARTED"
            client.disconnect()
        assert hub.snapshots.computed == 1
        # A change drops the snapshot: the next subscriber sees it. (Once the
        # tailer reads the feed: it starts from the feed's end when it starts.)
        wait_for(lambda: hub.redis_ok, 10, 0.05, "the tailer to be reading")
        store.apply([ev("one", "SUCCESS", T0 + 1)])

        def fresh():
            client = sio.test_client(app)
            client.emit("subscribe", {"room": "task", "id": "one"}, callback=True)
            got = [
                m["args"][0]["task"]["state"] for m in client.get_received() if m["name"] == "task"
            ]
            client.disconnect()
            return got == ["SUCCESS"]

        wait_for(fresh, 15, 0.1, "a snapshot with the change")
    finally:
        hub.stop()


# -- embedding next to a host's own Flask-SocketIO ---------------------------------------------


def host_app():
    host = Flask("host")

    @host.get("/")
    def home():
        return "host home"

    return host


def host_handlers(host_sio):
    @host_sio.on("hello")
    def hello(data):
        host_emit("hello_back", {"got": data})

    @host_sio.on("subscribe")  # the same event name as the monitor's
    def host_subscribe(data):
        host_emit("host_subscribed", data)
        return "host"


def page_config(host, path):
    html = host.test_client().get(path).get_data(as_text=True)
    text = html.split('id="monitor-config" type="application/json">', 1)[1].split("</script>")[0]
    return json.loads(text)


def named(client, name, namespace=None):
    return [m["args"][0] for m in client.get_received(namespace) if m["name"] == name]


def test_init_app_beside_a_host_socketio_keeps_the_hosts(settings, store):
    store.apply([ev("e1", "SUCCESS", T0)])
    host = host_app()
    host_sio = SocketIO(host, async_mode="threading")
    host_handlers(host_sio)
    init_app(host, url_prefix="/monitor", settings=settings)
    ext = host.extensions["monitor"]
    try:
        assert host.extensions["socketio"] is host_sio
        assert ext.socketio is not host_sio and ext.namespace == "/"
        # The host's handlers keep answering, their emit() reaching the host's clients.
        hc = host_sio.test_client(host)
        hc.emit("hello", 1)
        assert named(hc, "hello_back") == [{"got": 1}]
        assert hc.emit("subscribe", {"room": "task", "id": "e1"}, callback=True) == "host"
        assert named(hc, "host_subscribed") == [{"room": "task", "id": "e1"}]
        assert named(hc, "task") == []
        # Ours work on the monitor's own server.
        mc = ext.socketio.test_client(host)
        ack = mc.emit("subscribe", {"room": "task", "id": "e1"}, callback=True)
        assert ack == {"ok": True, "room": "task:e1"}
        assert named(mc, "task")[0]["task"]["id"] == "e1"
        assert named(mc, "hello_back") == []
        # Both engines answer over WSGI, each at its own path.
        web = host.test_client()
        for path in ("/socket.io/", "/monitor/socket.io/"):
            response = web.get(path + "?EIO=4&transport=polling")
            assert response.status_code == 200 and '"sid"' in response.get_data(as_text=True)
        config = page_config(host, "/monitor/tasks")
        assert config["socketio_path"] == "/monitor/socket.io"
        assert config["socketio_namespace"] == "/"
        assert web.get("/").get_data(as_text=True) == "host home"
    finally:
        ext.hub.stop()


@pytest.mark.parametrize("host_inits_first", [True, False])
def test_init_app_on_the_hosts_socketio_uses_a_namespace(settings, store, host_inits_first):
    store.apply([ev("e2", "SUCCESS", T0)])
    host = host_app()
    host_sio = SocketIO(async_mode="threading")
    host_handlers(host_sio)
    if host_inits_first:
        host_sio.init_app(host)
    init_app(host, url_prefix="/ops", settings=settings, socketio=host_sio)
    if not host_inits_first:
        host_sio.init_app(host)  # the usual factory order: extensions bound later
    ext = host.extensions["monitor"]
    try:
        assert host.extensions["socketio"] is host_sio and ext.socketio is host_sio
        assert ext.namespace == "/monitor" and not ext.own_socketio
        hc = host_sio.test_client(host)
        hc.emit("hello", 2)
        assert named(hc, "hello_back") == [{"got": 2}]
        assert hc.emit("subscribe", {"room": "overview"}, callback=True) == "host"
        mc = host_sio.test_client(host, namespace="/monitor")
        assert named(mc, "status", "/monitor")[0]["events"] == "off"
        ack = mc.emit(
            "subscribe", {"room": "task", "id": "e2"}, callback=True, namespace="/monitor"
        )
        assert ack == {"ok": True, "room": "task:e2"}
        assert named(mc, "task", "/monitor")[0]["task"]["id"] == "e2"
        got = hc.get_received()
        assert [m["name"] for m in got] == ["host_subscribed"]
        config = page_config(host, "/ops/tasks")
        assert config["socketio_path"] == "/socket.io"
        assert config["socketio_namespace"] == "/monitor"
    finally:
        ext.hub.stop()


def test_init_app_refuses_the_path_of_the_hosts_socketio(settings):
    host = host_app()
    host_sio = SocketIO(host, async_mode="threading")
    with pytest.raises(ValueError, match="socketio="):
        init_app(host, url_prefix="/", settings=settings)
    assert host.extensions["socketio"] is host_sio


@pytest.mark.parametrize(
    "name, value",
    [
        ("MONITOR_LIVE_SUBSCRIBE_RATE", "nan"),
        ("MONITOR_LIVE_SUBSCRIBE_RATE", "inf"),
        ("MONITOR_LIVE_SUBSCRIBE_RATE", "0"),
        ("MONITOR_LIVE_MAX_ROOMS", "1e400"),
        ("MONITOR_LIVE_MAX_ROOMS", "-1"),
        ("MONITOR_LIVE_MAX_ROOMS_TOTAL", "0"),
        ("MONITOR_LIVE_MAX_ROOMS_TOTAL", "many"),
    ],
)
def test_live_budgets_refuse_values_that_would_switch_them_off(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_socketio_refuses_a_cross_origin_connection_and_an_anonymous_one_with_users(
    serve, settings, store
):
    """The same rules as HTTP: a page on another origin cannot open the live
    connection (the browser's Origin is checked), and once users exist an
    anonymous client cannot either; with a token it can."""
    port = serve()
    url = f"http://127.0.0.1:{port}"
    evil = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        evil.connect(url, headers={"Origin": "http://evil.example"}, transports=["polling"])
    same = socketio.Client(reconnection=False)
    same.connect(url, headers={"Origin": url}, transports=["polling"])
    assert same.connected
    same.disconnect()

    from monitor.auth import AuthStore

    token = AuthStore(store.redis, store.keys, settings).create_token("dash", "viewer")

    def anonymous_refused() -> bool:
        anonymous = socketio.Client(reconnection=False)
        try:
            anonymous.connect(url, transports=["polling"])
        except socketio.exceptions.ConnectionError:
            return True
        anonymous.disconnect()
        return False

    # the serve process caches "are users configured?" for 2 s
    wait_for(anonymous_refused, 10, 0.5, "anonymous connections refused once a token exists")
    viewer = socketio.Client(reconnection=False)
    viewer.connect(url, headers={"Authorization": f"Bearer {token}"}, transports=["polling"])
    assert viewer.connected
    viewer.disconnect()
