"""Queues (issue 10): depths against known loads on a real Redis broker (priority
sub-queues, global_keyprefix) and a real RabbitMQ, compared with LLEN and
queue_declare read independently; 1,000 queues in one round trip; the oldest
message's age; the sampler elected once across two runners; the API."""

from __future__ import annotations

import time
import uuid

import amqp
import pytest
import redis
from celery import Celery

import monitor.signals
from monitor import queues
from monitor.jobs import JobRunner
from monitor.model import TaskEvent, WorkerEvent

from .helpers import REDIS_URL, RabbitMQNode, RedisServer, free_port, port_open, wait_for

NOBODY = "tests.nobody_consumes_this"


@pytest.fixture(scope="module")
def broker_redis():
    """A private Redis as the broker: INFO commandstats counts only our commands."""
    server = RedisServer().start()
    yield server
    server.stop()


def redis_app(url: str, **options) -> Celery:
    app = Celery("qt", broker=url)
    app.conf.broker_transport_options = options
    app.conf.broker_connection_retry_on_startup = True
    return app


def independent_depth(client: redis.Redis, keyprefix: str, queue: str, sep: str) -> int:
    """LLEN of every list named like the queue or one of its priority sub-queues."""
    total = 0
    for key in client.scan_iter(match=(keyprefix + queue).replace("[", "\\[") + "*", count=1000):
        name = key.decode()
        if name == keyprefix + queue or name.startswith(keyprefix + queue + sep):
            total += client.llen(key)
    return total


@pytest.mark.parametrize(
    "options",
    [
        {"queue_order_strategy": "priority", "priority_steps": list(range(10))},
        {"queue_order_strategy": "priority", "sep": ":", "global_keyprefix": "kp-{id}:"},
        {"priority_steps": [0, 5, 9], "global_keyprefix": "gk{id}_"},
    ],
    ids=["ten-steps", "sep-keyprefix", "three-steps-keyprefix"],
)
def test_redis_depth_counts_priority_sub_queues_under_keyprefix(broker_redis, options):
    uid = uuid.uuid4().hex[:8]
    options = {k: (v.format(id=uid) if isinstance(v, str) else v) for k, v in options.items()}
    app = redis_app(broker_redis.url, **options)
    queue = f"load-{uid}"
    priorities = [None, 0, 1, 3, 4, 5, 6, 8, 9, 9, 2, 7] * 3
    for p in priorities:
        kw = {} if p is None else {"priority": p}
        app.send_task(NOBODY, queue=queue, **kw)
    client = redis.Redis.from_url(broker_redis.url)
    keyprefix = options.get("global_keyprefix", "")
    sep = options.get("sep", "\x06\x16")
    # the messages really are spread over sub-queues (else this tests nothing)
    keys = client.scan_iter(match=keyprefix + queue + "*")
    lists = [k for k in keys if client.type(k) == b"list"]
    assert len(lists) > 1
    assert independent_depth(client, keyprefix, queue, sep) == len(priorities)
    assert queues.queue_depth(app, queue) == len(priorities)
    assert queues.queue_depth(app, f"empty-{uid}") == 0
    app.send_task(NOBODY, queue=queue, priority=9)
    assert queues.queue_depth(app, queue) == len(priorities) + 1


def _commandstats(client: redis.Redis) -> dict[str, int]:
    return {k: v["calls"] for k, v in client.info("commandstats").items()}


def test_thousand_queues_in_one_round_trip(broker_redis, monkeypatch):
    app = redis_app(broker_redis.url, priority_steps=[0, 3, 6, 9])
    uid = uuid.uuid4().hex[:8]
    names = [f"many-{uid}-{i}" for i in range(1000)]
    loads = {name: i % 4 for i, name in enumerate(names)}
    with app.producer_or_acquire() as producer:
        for name, n in loads.items():
            for k in range(n):
                app.send_task(NOBODY, queue=name, priority=3 * k, producer=producer)
    executes = []
    real = redis.client.Pipeline.execute

    def spy(self, *args, **kwargs):
        executes.append(len(self.command_stack))
        return real(self, *args, **kwargs)

    client = redis.Redis.from_url(broker_redis.url)
    with app.connection_for_read() as conn:
        broker, steps, sep, keyprefix = queues._redis_client(conn)
        queues.redis_depths(broker, names[:1], steps, sep, keyprefix)  # the script is loaded
        before = _commandstats(client)
        monkeypatch.setattr(redis.client.Pipeline, "execute", spy)
        got = queues.redis_depths(broker, names, steps, sep, keyprefix)
        monkeypatch.undo()
        after = _commandstats(client)
    assert {n: got[n]["depth"] for n in names} == loads
    assert executes == [1000]  # one pipeline, one EVALSHA per queue
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert delta["cmdstat_evalsha"] == 1000
    assert delta["cmdstat_llen"] == 4000  # every sub-queue of every queue
    assert delta.get("cmdstat_script|load", 0) == 0


@pytest.fixture
def hooked(prefix):
    """The publish hook on in this process, writing to the test's prefix."""
    monitor.signals.connect(None, redis_url=REDIS_URL, prefix=prefix)
    yield
    monitor.signals.disconnect()


def test_oldest_age_from_the_broker_and_queues_seen_at_publish(
    broker_redis, store, settings, hooked
):
    app = redis_app(broker_redis.url, priority_steps=[0, 3, 6, 9])
    queue = f"aged-{uuid.uuid4().hex[:8]}"
    first = app.send_task(NOBODY, queue=queue, priority=6)
    for _ in range(3):
        app.send_task(NOBODY, queue=queue)
    wait_for(
        lambda: (
            store.redis.zscore(store.keys.queues, queue) is not None
            and store.redis.hget(store.keys.task(first.id), "sent") is not None
        ),
        10,
        what="the publish hook's records",
    )
    sent = float(store.redis.hget(store.keys.task(first.id), "sent"))
    now = sent + 42.0
    sample = queues.broker_sample(store, app, settings, now=now)
    row = sample["queues"][queue]
    assert sample["broker"] == "redis"
    assert "publish" in row["seen"]
    assert row["depth"] == 4
    assert row["consumers"] == 0 and row["sources"]["consumers"] == "workers"
    # the first message is the oldest (the tail of its priority list)
    assert row["oldest_age"] == pytest.approx(42.0, abs=0.01)
    assert row["sources"]["oldest_age"] == "broker"


def test_write_script_caps_queues_seen(store, monkeypatch):
    monkeypatch.setattr("monitor.store.MAX_QUEUES_SEEN", 5)
    store._config_for = None
    now = time.time()
    events = [
        TaskEvent(f"id-{i}", "PENDING", now + i * 0.001, "signal", None, {"queue": f"q{i}"})
        for i in range(12)
    ]
    store.apply(events)
    kept = store.redis.zrange(store.keys.queues, 0, -1)
    assert kept == [f"q{i}" for i in range(7, 12)]  # the most recently seen


# -- RabbitMQ -----------------------------------------------------------------------
def declare_passive(queue: str) -> tuple[int, int]:
    with amqp.Connection("127.0.0.1:5672", userid="guest", password="guest") as conn:
        conn.connect()
        ch = conn.channel()
        _name, count, consumers = ch.queue_declare(queue, passive=True)
        return count, consumers


def test_rabbitmq_depth_consumers_and_missing_queue(amqp_url, store, settings):
    app = Celery("qt-amqp", broker=amqp_url)
    app.conf.broker_connection_retry_on_startup = True
    queue = f"mq-load-{uuid.uuid4().hex[:8]}"
    missing = f"mq-missing-{uuid.uuid4().hex[:8]}"
    try:
        for _ in range(7):
            app.send_task(NOBODY, queue=queue)
        # AMQP publishes are asynchronous (no publisher confirms): wait for the broker
        wait_for(lambda: declare_passive(queue) == (7, 0), 10, 0.05, what="7 messages queued")
        assert queues.queue_depth(app, queue) == 7
        assert queues.queue_depth(app, missing) is None
        now = time.time()
        # the oldest PENDING task the store holds for the queue dates it
        store.apply([TaskEvent("mq-old", "PENDING", now - 30, "signal", None, {"queue": queue})])
        store.redis.hset(store.keys.task("mq-old"), "sent", repr(now - 30))
        store.redis.zadd(store.keys.queues, {missing: now})
        store.redis.zadd(store.keys.queues, {queue: now})
        sample = queues.broker_sample(store, app, settings, now=now)
        row = sample["queues"][queue]
        assert (row["depth"], row["consumers"]) == (7, 0)
        assert row["sources"] == {"depth": "broker", "consumers": "broker", "oldest_age": "store"}
        assert row["oldest_age"] == pytest.approx(30.0, abs=0.01)
        gone = sample["queues"][missing]
        assert gone["depth"] is None and gone["missing"] is True
        assert sample["error"] is None
    finally:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)


# -- the sampler job ----------------------------------------------------------------
def test_sampler_is_elected_once_and_stores_latest_and_history(broker_redis, store, settings):
    app = redis_app(broker_redis.url)
    queue = f"job-{uuid.uuid4().hex[:8]}"
    for _ in range(5):
        app.send_task(NOBODY, queue=queue)
    store.redis.zadd(store.keys.queues, {queue: time.time()})
    settings = settings.replace(queues_interval=60.0)
    runners = [JobRunner(store, settings, queues.jobs(settings), app) for _ in range(2)]
    try:
        ran = [r.run_due() for r in runners] + [r.run_due() for r in runners]
        assert sorted(map(tuple, ran)) == [(), (), (), ("queues",)]
        assert sum(r.holds("queues") for r in runners) == 1
        latest = queues.latest(store)
        assert latest[queue]["depth"] == 5
        assert {"name", "depth", "consumers", "oldest_age", "sampled_at", "broker"} <= set(
            latest[queue]
        )
        points = queues.history(store, queue, "15m")["points"]
        assert [p["depth"] for p in points] == [5]
        # the holder stops: the other takes over at its next pass
        holder = next(r for r in runners if r.holds("queues"))
        other = next(r for r in runners if r is not holder)
        holder.stop()
        assert other.run_due(now=time.monotonic() + 61) == ["queues"]
    finally:
        for r in runners:
            r.stop()


def test_history_buckets_and_windows(store):
    queue = "hist"
    key = store.keys.queue_history(queue)
    now = 1_800_000_000.0
    minute = int(now // 60)
    for i, (depth, age, consumers) in enumerate([(3, 1.5, 2), (9, 4.0, 1), (1, None, 2)]):
        m = minute - i
        store.redis.zadd(key, {f"{m},{depth},{'' if age is None else age},{consumers}": m})
    one = queues.history(store, queue, "1h", now=now)
    assert one["step"] == 60
    assert [(p["t"], p["depth"]) for p in one["points"]] == [
        ((minute - 2) * 60, 1),
        ((minute - 1) * 60, 9),
        (minute * 60, 3),
    ]
    assert (one["to"] - one["from"]) // 60 == 60
    day = queues.history(store, queue, "24h", now=now)
    assert day["step"] == 3600
    assert (day["to"] - day["from"]) // 3600 == 24
    assert sum(1 for _ in day["points"]) <= 2
    assert max(p["depth"] for p in day["points"]) == 9
    assert max(p["oldest_age"] for p in day["points"]) == 4.0
    with pytest.raises(ValueError):
        queues.history(store, queue, "2h")


# -- the API ---------------------------------------------------------------------------
def test_queue_api(client, store, settings):
    now = time.time()
    sample = {
        "sampled_at": now,
        "broker": "redis",
        "error": None,
        "queues": {
            name: {
                "name": name,
                "depth": depth,
                "consumers": 1,
                "oldest_age": 2.5,
                "sampled_at": now,
                "broker": "redis",
                "seen": seen,
                "sources": {"depth": "broker", "consumers": "workers", "oldest_age": "broker"},
            }
            for name, depth, seen in [("celery", 4, ["app", "workers"]), ("b", 7, ["publish"])]
        },
    }
    queues.store_sample(store, sample, settings)
    body = client.get("/api/v1/queues").get_json()
    assert [q["name"] for q in body["queues"]] == ["b", "celery"]
    assert body["queues"][0]["depth"] == 7 and body["sampled_at"] == now
    hist = client.get("/api/v1/queues/b/history?window=15m").get_json()
    assert [p["depth"] for p in hist["points"]] == [7]
    assert client.get("/api/queues/length").get_json() == {
        "active_queues": [{"name": "celery", "messages": 4}]
    }
    for bad in ("/api/v1/queues?window=9y", "/api/v1/queues/b/history?window=" + "x" * 5000):
        answer = client.get(bad)
        assert answer.status_code == 400
        assert "window" in answer.get_json()["error"]
    spec = client.get("/api/openapi.json").get_json()["paths"]
    assert {"/api/v1/queues", "/api/v1/queues/{queue}/history", "/api/queues/length"} <= set(spec)


class ManagedRabbitMQ(RabbitMQNode):
    """A private node with the management plugin on a free loopback port."""

    def __init__(self) -> None:
        super().__init__()
        self.api_port = free_port()
        (self.dir / "enabled_plugins").write_text("[rabbitmq_management].\n")
        with open(self.dir / "rabbitmq.conf", "a") as config:
            config.write(f"management.tcp.port = {self.api_port}\n")
            config.write("management.tcp.ip = 127.0.0.1\n")
            config.write("collect_statistics_interval = 500\n")

    @property
    def api(self) -> str:
        return f"http://guest:guest@127.0.0.1:{self.api_port}/api/"


@pytest.mark.slow
def test_rabbitmq_management_api_adds_ready_and_unacked(store, settings):
    if not RabbitMQNode.available():
        pytest.fail("rabbitmq-server is required")
    node = ManagedRabbitMQ().start()
    try:
        wait_for(lambda: port_open("127.0.0.1", node.api_port), 60, 0.2, what="management API")
        app = Celery("qt-mgmt", broker=node.url)
        app.conf.broker_connection_retry_on_startup = True
        queue = f"mgmt-{uuid.uuid4().hex[:8]}"
        for _ in range(5):
            app.send_task(NOBODY, queue=queue)
        # one message taken and held unacknowledged by a consumer of our own
        conn = amqp.Connection(f"127.0.0.1:{node.port}", userid="guest", password="guest")
        conn.connect()
        channel = conn.channel()
        channel.basic_qos(0, 1, False)
        channel.basic_consume(queue, callback=lambda message: None)
        conn.drain_events(timeout=5)
        store.redis.zadd(store.keys.queues, {queue: time.time()})
        settings = settings.replace(broker_api=node.api)

        def managed():
            row = queues.broker_sample(store, app, settings)["queues"][queue]
            return row if (row.get("ready"), row.get("unacked")) == (4, 1) else None

        row = wait_for(managed, 30, 0.5, what="the management API's counts")
        assert (row["depth"], row["consumers"]) == (4, 1)  # passive declare: ready, consumers
        assert row["sources"]["ready"] == "management"
        conn.close()
        # an unreachable management API costs an error line, not the sample
        broken = settings.replace(broker_api=f"http://127.0.0.1:{free_port()}/api/")
        sample = queues.broker_sample(store, app, broken)
        assert sample["queues"][queue]["depth"] is not None
        assert sample["error"].startswith("management API")
    finally:
        node.stop()


def test_unreachable_broker_is_an_error_line_not_a_crash(store, settings):
    store.redis.zadd(store.keys.queues, {"somewhere": time.time()})
    for url in (
        f"redis://127.0.0.1:{free_port()}/0",
        f"amqp://guest:guest@127.0.0.1:{free_port()}//",
    ):
        app = Celery("qt-down", broker=url)
        sample = queues.broker_sample(store, app, settings)
        assert sample["error"].startswith("broker: ")
        row = sample["queues"]["somewhere"]
        assert row["depth"] is None and row["sources"]["depth"] is None


def test_management_answers_are_checked(monkeypatch):
    import http.server
    import json
    import threading

    answers = {
        "/api/queues/%2F": [
            {
                "name": "ok",
                "messages_ready": 3,
                "messages_unacknowledged": 1,
                "consumers": 2,
                "message_stats": {"publish_details": {"rate": 1.5}},
            },
            {
                "name": "bad",
                "messages_ready": "NaN",
                "messages_unacknowledged": 1e300,
                "message_stats": {"publish_details": {"rate": "inf"}},
            },
            "not a row",
            {"name": "x" * 300},
        ],
        "/api/queues/v": {"not": "a list"},
    }
    seen_auth = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen_auth.append(self.headers.get("Authorization"))
            body = json.dumps(answers.get(self.path.split("?")[0], [])).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://user:p%40ss@127.0.0.1:{server.server_port}/api/"
        got = queues.management_queues(url, "/")
        assert got["ok"]["ready"] == 3 and got["ok"]["unacked"] == 1
        assert got["ok"]["publish_rate"] == 1.5
        assert got["bad"]["ready"] is None and got["bad"]["unacked"] is None
        assert got["bad"]["publish_rate"] is None
        assert set(got) == {"ok", "bad"}
        assert seen_auth[0] == "Basic dXNlcjpwQHNz"  # user:p@ss
        with pytest.raises(queues.QueueError):
            queues.management_queues(url, "v")
        monkeypatch.setattr(queues, "MANAGEMENT_MAX_BYTES", 10)
        with pytest.raises(queues.QueueError, match="too large"):
            queues.management_queues(url, "/")
    finally:
        server.shutdown()


def test_a_routing_key_naming_another_kind_of_key_costs_only_its_queue(broker_redis):
    app = redis_app(broker_redis.url)
    uid = uuid.uuid4().hex[:8]
    client = redis.Redis.from_url(broker_redis.url)
    client.hset(f"hash-{uid}", "a", "1")  # say, a producer routed to "_kombu.binding.celery"
    client.lpush(f"junk-{uid}", b"\xff not json", b"[1, 2]", b'{"headers": "x"}')
    app.send_task(NOBODY, queue=f"fine-{uid}")
    with app.connection_for_read() as conn:
        broker, steps, sep, keyprefix = queues._redis_client(conn)
        got = queues.redis_depths(
            broker, [f"hash-{uid}", f"junk-{uid}", f"fine-{uid}"], steps, sep, keyprefix
        )
    assert got[f"hash-{uid}"]["depth"] is None
    assert got[f"junk-{uid}"] == {"depth": 3, "tails": []}  # undecodable messages: no id
    assert got[f"fine-{uid}"]["depth"] == 1 and len(got[f"fine-{uid}"]["tails"]) == 1
    assert queues.queue_depth(app, f"hash-{uid}") is None


def test_queues_room_gets_the_sample_and_pushes_only_new_ones(app, store, settings):
    from monitor.web import queues_api

    sample = {"sampled_at": 100.0, "broker": "redis", "error": None, "queues": {}}
    sample["queues"]["q"] = {
        "name": "q",
        "depth": 3,
        "consumers": 0,
        "oldest_age": None,
        "sampled_at": 100.0,
        "broker": "redis",
        "seen": ["publish"],
        "sources": {},
    }
    queues.store_sample(store, sample, settings)
    sio = app.extensions["monitor"].socketio
    client = sio.test_client(app)
    try:
        ack = client.emit("subscribe", {"room": "queues"}, callback=True)
        assert ack == {"ok": True, "room": "queues"}
        first = [m["args"][0] for m in client.get_received() if m["name"] == "queues"]
        assert first[0]["queues"][0]["depth"] == 3
    finally:
        client.disconnect()

    class Push:
        def __init__(self):
            self.store, self.sent = store, []

        def emit(self, event, data, room):
            self.sent.append((event, data["queues"][0]["depth"], room))

    push, state = Push(), {}
    queues_api.room_push(push, {None: "queues"}, state)()
    assert queues_api.room_push(push, {None: "queues"}, state) is None  # nothing new
    sample["sampled_at"] = 110.0
    sample["queues"]["q"]["depth"] = 5
    queues.store_sample(store, sample, settings)
    queues_api.room_push(push, {None: "queues"}, state)()
    assert push.sent == [("queues", 3, "queues"), ("queues", 5, "queues")]


def test_oldest_age_of_an_eta_message_without_a_stored_task(broker_redis, store, settings):
    """No publish hook in the producer: the message's eta dates it (runnable since)."""
    import datetime

    app = redis_app(broker_redis.url)
    queue = f"eta-{uuid.uuid4().hex[:8]}"
    eta = datetime.datetime(2030, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
    app.send_task(NOBODY, queue=queue, eta=eta)
    store.redis.zadd(store.keys.queues, {queue: time.time()})
    sample = queues.broker_sample(store, app, settings, now=eta.timestamp() + 90)
    row = sample["queues"][queue]
    assert row["depth"] == 1
    assert row["oldest_age"] == pytest.approx(90.0) and row["sources"]["oldest_age"] == "broker"
    # before its eta it has not waited yet
    early = queues.broker_sample(store, app, settings, now=eta.timestamp() - 60)
    assert early["queues"][queue]["oldest_age"] == 0.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MONITOR_QUEUES_INTERVAL", "0.01"),
        ("MONITOR_QUEUES_INTERVAL", "nan"),
        ("MONITOR_QUEUES_MAX", "0"),
        ("MONITOR_QUEUES_HISTORY_MAX", "-1"),
        ("MONITOR_BROKER_API", "ftp://x"),
    ],
)
def test_bad_queue_settings_fail_at_start_naming_them(name, value):
    from monitor.config import ConfigError, Settings

    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_known_queues_from_app_workers_and_publishes(store):
    from kombu import Queue

    app = Celery("qt-known")
    app.conf.task_queues = [Queue("reports"), Queue("x" * 300)]  # too long: left out
    app.conf.task_default_queue = "default-q"
    now = time.time()
    store.apply(
        [
            # hooks' worker_ready queues; a worker gone offline consumes nothing
            WorkerEvent("w1@h", "online", now, "signal", {"queues": ["hooked", "reports"]}),
            WorkerEvent("w2@h", "offline", now, "signal", {"queues": ["ghost"]}),
            WorkerEvent("w3@h", "online", now, "event", {}),
        ]
    )
    store.redis.zadd(store.keys.queues, {"published": now, "\x00bad": now})
    inspected = {"w3@h": {"active_queues": [{"name": "added-later"}, {"name": 7}, "junk"]}}
    seen, consumers = queues.known_queues(store, app, inspected, limit=100)
    assert seen == {
        "reports": ["app", "workers"],
        "default-q": ["app"],
        "added-later": ["workers"],
        "hooked": ["workers"],
        "published": ["publish"],
    }
    assert consumers == {"hooked": {"w1@h"}, "reports": {"w1@h"}, "added-later": {"w3@h"}}
    seen, _ = queues.known_queues(store, app, inspected, limit=2)
    assert list(seen) == ["reports", "default-q"]  # the app's first
