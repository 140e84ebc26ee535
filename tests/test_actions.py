"""Operator actions (monitor/actions.py), each checked through Celery itself.

One real prefork worker (hooks on, Redis broker on a database of its own so
that broadcasts reach only this module's workers) serves most tests; the
shutdown test starts a second one, without hooks and with events, read by a
real event receiver. The test process is the producer, with the publish hook
connected as a user would connect it.

Tasks of tests/workerapp.py record what they received into the store's Redis
under the test prefix: a retry is checked by comparing, inside the task, what
the rerun received with what the original was called with.
"""

from __future__ import annotations

import base64
import json
import math
import time
import uuid
from pathlib import Path

import pytest
import redis as redis_lib
from celery import Celery

import monitor.signals
from monitor.actions import BULK_LIMIT, ActionError, Controller
from monitor.config import Settings
from monitor.events import Receiver
from monitor.store import Store, redis_client

from .helpers import REDIS_URL, WorkerProcess, require_service, wait_for
from .test_lifecycle import wait_receiver_listening
from .workerapp import pickle_sample_args, sample_args

pytestmark = pytest.mark.slow

#: A broker database of this module's own: pidbox broadcasts (revoke, rate
#: limits ...) reach every worker on the broker, and other tests run workers too.
BROKER = "redis://127.0.0.1:6379/12"
T = "tests.workerapp."
#: Protocol 2's third body part when a call has no callbacks.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class Cluster:
    """The producer app (hooks connected), the store, one worker, a Controller."""

    def __init__(self) -> None:
        self.prefix = "mt-" + uuid.uuid4().hex[:10]
        self.queue = f"q-{self.prefix}"
        self.settings = Settings(redis_url=REDIS_URL, prefix=self.prefix)
        self.store = Store(redis_client(REDIS_URL), self.settings)
        self.broker = redis_lib.Redis.from_url(BROKER)
        self.app = Celery("producer", broker=BROKER)
        self.app.conf.update(
            task_default_queue=self.queue,
            broker_connection_retry_on_startup=True,
            # what the monitor would be given as `celery -A proj monitor`
            accept_content=["json", "pickle"],
        )

        # The producer knows this task (as the application would): its own
        # serializer is what the publish hook encodes the body with.
        @self.app.task(name=T + "record_args_pickle", serializer="pickle", shared=False)
        def record_args_pickle(*args, **kwargs):  # pragma: no cover - runs in the worker
            raise NotImplementedError

        self.record_args_pickle = record_args_pickle
        monitor.signals.connect(self.app, redis_url=REDIS_URL, prefix=self.prefix)
        self.worker = WorkerProcess(
            broker=BROKER,
            queue=self.queue,
            prefix=self.prefix,
            hostname=f"act-{self.prefix}@localhost",
            # pickle, for the retry of a pickled call; CI containers run as root,
            # where Celery wants that confirmed
            extra_env={
                "TEST_ACCEPT_CONTENT": "json,pickle",
                "C_FORCE_ROOT": "1",
                "TEST_POOL_RESTARTS": "1",
            },
            log_path=Path(f"/tmp/monitor-test-actions-{self.prefix}.log"),
        )
        self.controller = Controller(self.app, self.store, self.settings)

    @property
    def host(self) -> str:
        return self.worker.hostname

    def close(self) -> None:
        self.worker.stop()
        monitor.signals.disconnect()
        self.store.delete_all()
        self.store.close()
        for key in self.broker.scan_iter(match=f"*{self.queue}*"):
            self.broker.delete(key)
        self.broker.close()
        self.app.close()
        self.worker.log_path.unlink(missing_ok=True)

    # -- waiting on the store -------------------------------------------------
    def final(self, task_id: str, states=("SUCCESS", "FAILURE", "REVOKED"), timeout=30.0):
        return wait_for(
            lambda: (t := self.store.get_task(task_id)) and t["state"] in states and t,
            timeout,
            0.1,
            what=f"task {task_id} in {states}",
        )

    def received(self, task_id: str, timeout: float = 30.0) -> dict:
        """What tests.workerapp.record_args* saw, recorded inside the task."""
        key = f"{self.prefix}:test:received:{task_id}"
        raw = wait_for(lambda: self.store.redis.get(key), timeout, 0.1, what=f"{task_id} recorded")
        return json.loads(raw)

    def pool_size(self) -> int:
        stats = self.app.control.inspect(timeout=2, destination=[self.host]).stats() or {}
        return len(stats.get(self.host, {}).get("pool", {}).get("processes", []))

    def active_queues(self) -> set[str]:
        replies = self.app.control.inspect(timeout=2, destination=[self.host]).active_queues()
        return {q["name"] for q in (replies or {}).get(self.host, [])}


@pytest.fixture(scope="module")
def cluster():
    require_service("127.0.0.1", 6379, "Redis")
    cluster = Cluster()
    try:
        cluster.worker.start()
        wait_for(
            lambda: (cluster.store.worker(cluster.host) or {}).get("online"),
            20,
            what="worker online in the store",
        )
        yield cluster
    finally:
        cluster.close()


def refused(call, *args, **kwargs) -> ActionError:
    with pytest.raises(ActionError) as info:
        call(*args, **kwargs)
    return info.value


# -- the publish hook: what a faithful republish needs ---------------------------------
@pytest.fixture
def publishing_app():
    """A current app for the hook's registry lookups, the previous one restored."""
    from celery import _state

    previous = _state.get_current_app()
    app = Celery("unit-publish", broker="memory://")

    @app.task(name="unit.login", shared=False)
    def login(user, password, remember=False):  # pragma: no cover - never runs
        pass

    @app.task(name="unit.pickled", serializer="pickle", shared=False)
    def pickled(*args):  # pragma: no cover - never runs
        pass

    app.finalize()  # as a call of the task would (its proxy registers it)
    yield app
    _state._set_current_app(previous)
    app.close()


def publish(app, name, args=(), kwargs=None, settings=None, headers=None, priority=None, **options):
    """The hook's fields for the message ``app`` would send (custom ``headers``
    and ``priority`` join it as send_task_message adds them)."""
    from monitor.signals.handlers import publish_body

    message_headers, properties, body, _ = app.amqp.as_task_v2(
        str(uuid.uuid4()), name, args=args, kwargs=kwargs or {}, **options
    )
    message_headers.update(headers or {})
    if priority is not None:
        properties["priority"] = priority
    return publish_body(name, body, message_headers, properties, settings or Settings())


def test_publish_body_is_the_serialized_message(publishing_app):
    from kombu.serialization import dumps, loads

    args, kwargs = sample_args()
    fields = publish(publishing_app, "unit.add", args, kwargs)
    assert set(fields) == {"body", "content_type", "content_encoding"}  # no extra headers
    assert (fields["content_type"], fields["content_encoding"]) == ("application/json", "utf-8")
    assert fields["body"] == dumps((args, kwargs, _EMBED), serializer="json")[2]
    back = loads(fields["body"], "application/json", "utf-8")
    assert back[0] == args and back[1] == kwargs

    # what only pickle carries: base64 of the very bytes
    fields = publish(publishing_app, "unit.pickled", [(1, 2), {3}], {}, priority=7)
    assert fields["content_type"] == "application/x-python-serialize"
    assert fields["content_encoding"] == "binary" and fields["priority"] == 7
    raw = base64.b64decode(fields["body"])
    accept = {"application/x-python-serialize"}
    assert loads(raw, fields["content_type"], "binary", accept=accept)[0] == [(1, 2), {3}]


def test_publish_body_keeps_the_headers_a_call_changed(publishing_app):
    fields = publish(
        publishing_app, "unit.add", [1], shadow="nick", time_limit=9, ignore_result=True
    )
    headers = json.loads(fields["publish_headers"])
    assert headers == {"shadow": "nick", "timelimit": [9, None], "ignore_result": True}


def test_publish_body_is_never_cut_and_never_holds_a_secret(publishing_app):
    small = Settings(max_field_bytes=1000)
    fields = publish(publishing_app, "unit.add", ["x" * 900], settings=small)
    assert len(fields["body"]) == 900 + len(json.dumps([[""], {}, _EMBED]))
    fields = publish(publishing_app, "unit.add", ["x" * 1000], settings=small)
    assert fields == {"body_truncated": len(json.dumps([["x" * 1000], {}, _EMBED]))}
    fields = publish(publishing_app, "unit.pickled", [b"x" * 740], settings=small)
    assert set(fields) == {"body_truncated"}  # binary: counted as its base64

    # a sensitive key at any depth, a sensitive positional parameter, a header
    nested = publish(publishing_app, "unit.add", [{"cfg": {"DB_Password": "x"}}])
    assert nested == {"body_error": "it holds a redacted name (password): not stored"}
    positional = publish(publishing_app, "unit.login", ["bob", "hunter2"])
    assert positional == {"body_error": "a positional argument is a redacted parameter: not stored"}
    header = publish(publishing_app, "unit.add", [1], headers={"x-api_key": "k"})
    assert header == {"body_error": "a header holds a redacted name (api_key): not stored"}
    # ... but a value that merely mentions one is kept, and so is a short call
    assert "body" in publish(publishing_app, "unit.add", ["tokenize this password"])
    assert "body" in publish(publishing_app, "unit.login", ["bob"])


def test_publish_body_that_the_serializer_cannot_encode(publishing_app):
    fields = publish(publishing_app, "unit.add", [object()])
    assert list(fields) == ["body_error"]
    assert fields["body_error"].startswith("the json serializer cannot encode it: ")


def test_the_publish_hook_stores_the_body_and_says_why_not(publishing_app, store, settings):
    """Through Celery's own signal: send_task_message fires before_task_publish."""
    from kombu import Connection

    old_protocol = Celery("v1", broker="memory://", set_as_current=False)
    old_protocol.conf.task_protocol = 1
    recorder = monitor.signals.connect(publishing_app, redis_url=REDIS_URL, prefix=settings.prefix)
    try:
        with Connection("memory://") as conn:
            publishing_app.send_task("unit.add", [1, 2], task_id="t-json", connection=conn)
            old_protocol.send_task("unit.add", [1, 2], task_id="t-v1", connection=conn)
        assert recorder.flush(5)
    finally:
        monitor.signals.disconnect()
        old_protocol.close()
    task = store.get_task("t-json")
    assert (
        task["body"]
        == '[[1, 2], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'
    )
    old = store.get_task("t-v1")
    assert "body" not in old
    assert old["body_error"] == "sent with message protocol 1 (task_protocol=1)"


# -- tasks -----------------------------------------------------------------------------------
def test_revoke_prevents_execution(cluster):
    tag = uuid.uuid4().hex
    result = cluster.app.send_task(T + "stamp", [tag], countdown=3)
    cluster.final(result.id, ("RECEIVED",), 20)  # held by the worker until its eta
    out = cluster.controller.revoke(result.id)
    assert out["action"] == "revoke" and out["task_id"] == result.id
    assert out["state"] == "RECEIVED"
    assert "ok" in out["replies"][cluster.host], out
    assert out["ok"], out
    task = cluster.final(result.id, ("REVOKED", "SUCCESS"))
    assert task["state"] == "REVOKED"
    assert "STARTED" not in [e["state"] for e in task["timeline"]]
    assert cluster.store.redis.llen(f"{cluster.prefix}:test:stamps:{tag}") == 0


def test_terminate_kills_the_running_task(cluster):
    result = cluster.app.send_task(T + "hold", [120])
    pid = int(
        wait_for(
            lambda: cluster.store.redis.get(f"{cluster.prefix}:test:pid:{result.id}"),
            30,
            what="the task's pid",
        )
    )
    cluster.final(result.id, ("STARTED",), 20)
    out = cluster.controller.terminate(result.id)  # SIGTERM, Flower's default
    assert out["signal"] == "SIGTERM"
    assert out["replies"][cluster.host] == {"ok": f"terminate: {result.id}"}, out
    task = cluster.final(result.id, ("REVOKED", "SUCCESS", "FAILURE"))
    assert task["state"] == "REVOKED"
    assert task.get("terminated") == "1"

    def gone() -> bool:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True
        return "\nState:\tZ" in status  # dead, not yet reaped

    wait_for(gone, 20, what=f"pool process {pid} gone")


def test_retry_reruns_the_same_call_with_equal_arguments(cluster):
    args, kwargs = sample_args()
    original = cluster.app.send_task(
        T + "record_args", args, kwargs, headers={"tenant": "acme"}, soft_time_limit=30
    )
    cluster.final(original.id, ("FAILURE",))
    first = cluster.received(original.id)
    assert first["equal"] and first["same_types"], first
    assert first["tenant"] == "acme" and first["timelimit"] == [None, 30]
    stored = cluster.store.get_task(original.id)
    assert stored["content_type"] == "application/json"
    assert stored["content_encoding"] == "utf-8"

    out = cluster.controller.retry(original.id, by="alice")
    new_id = out["id"]
    assert new_id != original.id
    assert out["retry_of"] == original.id and out["by"] == "alice" and out["linked"]
    assert out["name"] == T + "record_args" and out["routing_key"] == cluster.queue
    cluster.final(new_id, ("FAILURE",))
    rerun = cluster.received(new_id)
    # compared inside the task: equal values of the same types, all the way down
    assert rerun["equal"] and rerun["same_types"], rerun
    assert rerun["repr"] == first["repr"]
    assert rerun["shape"] == first["shape"]
    assert rerun["routing_key"] == first["routing_key"] == cluster.queue
    # the call's own headers too: a custom one, a per-call time limit
    assert rerun["tenant"] == "acme" and rerun["timelimit"] == [None, 30]

    # linked both ways, and the timeline says who
    original_task = cluster.store.get_task(original.id)
    new_task = cluster.store.get_task(new_id)
    assert original_task["retried_as"] == new_id
    assert original_task["retried_by"] == "alice"
    assert original_task["state"] == "FAILURE"  # RETRIED is not a state
    retried = [e for e in original_task["timeline"] if e["state"] == "RETRIED"]
    assert len(retried) == 1 and retried[0]["hostname"] == "alice", original_task["timeline"]
    assert retried[0]["sources"] == ["operator"]
    assert new_task["retry_of"] == original.id
    assert new_task["name"] == T + "record_args" and new_task["queue"] == cluster.queue
    assert new_task["root_id"] == new_id  # the rerun of a root is a root
    assert [e["state"] for e in new_task["timeline"]][0] == "PENDING"

    # a second click does not run it twice; force does
    again = refused(cluster.controller.retry, original.id, by="bob")
    assert again.status == 409 and again.code == "retried"
    assert f"already retried as {new_id}" in again.message
    forced = cluster.controller.retry(original.id, by="bob", force=True)
    assert (
        cluster.store.redis.hget(cluster.store.keys.task(original.id), "retried_as")
        == (forced["id"])
    )
    assert cluster.received(forced["id"])["repr"] == first["repr"]

    # only failed, revoked or rejected tasks
    ok = cluster.app.send_task(T + "add", [1, 2])
    cluster.final(ok.id, ("SUCCESS",))
    error = refused(cluster.controller.retry, ok.id)
    assert error.status == 409 and error.code == "state"
    assert error.message == (
        f"task {ok.id} is SUCCESS: only FAILURE, REVOKED, REJECTED tasks can be retried"
    )
    missing = refused(cluster.controller.retry, str(uuid.uuid4()))
    assert missing.status == 404 and missing.code == "not_found"


def test_retry_of_a_pickled_call_keeps_what_only_pickle_carries(cluster):
    args, kwargs = pickle_sample_args()
    original = cluster.record_args_pickle.apply_async(args, kwargs)
    cluster.final(original.id, ("FAILURE",))
    first = cluster.received(original.id)
    assert first["equal"] and first["same_types"], first
    stored = cluster.store.get_task(original.id)
    assert stored["content_type"] == "application/x-python-serialize"
    assert stored["content_encoding"] == "binary"

    # a monitor whose app does not accept pickle refuses, and says why
    json_only = Celery("json-only", broker=BROKER, set_as_current=False)
    try:
        error = refused(Controller(json_only, cluster.store).retry, original.id)
    finally:
        json_only.close()
    assert error.status == 422 and error.code == "not_accepted"
    assert "application/x-python-serialize" in error.message
    assert "accept_content = ['application/json']" in error.message

    out = cluster.controller.retry(original.id, by="carol")
    cluster.final(out["id"], ("FAILURE",))
    rerun = cluster.received(out["id"])
    assert rerun["equal"] and rerun["same_types"], rerun  # tuples stay tuples, sets sets
    assert rerun["repr"] == first["repr"]
    new = cluster.store.get_task(out["id"])
    assert new["content_type"] == "application/x-python-serialize"
    assert new["body"] == stored["body"]  # the same bytes, base64 in the hash


def test_retry_refuses_what_it_cannot_republish_faithfully(cluster):
    store = cluster.store
    # over the cap: never half a body
    big = cluster.app.send_task(T + "fail", ["x" * (cluster.settings.max_field_bytes + 10)])
    cluster.final(big.id, ("FAILURE",))
    fields = store.redis.hgetall(store.keys.task(big.id))
    assert "body" not in fields and int(fields["body_truncated"]) > 16384
    error = refused(cluster.controller.retry, big.id)
    assert error.status == 422 and error.code == "body_truncated"
    assert "was over max_field_bytes (16384)" in error.message

    # a secret in the arguments never reaches Redis, so it cannot be retried
    secret = cluster.app.send_task(T + "fail", [], {"message": {"db_password": "hunter2"}})
    cluster.final(secret.id, ("FAILURE",))
    raw = store.redis.hgetall(store.keys.task(secret.id))
    assert "body" not in raw and "content_type" not in raw
    error = refused(cluster.controller.retry, secret.id)
    assert error.status == 422 and error.code == "body_error"
    assert error.message.endswith("it holds a redacted name (password): not stored")


def test_worker_actions_report_each_reply(cluster):
    controller, host = cluster.controller, cluster.host
    out = controller.autoscale(4, 1, host)
    assert "Autoscale not enabled" in out["replies"][host]["error"]
    assert "--autoscale" in out["replies"][host]["hint"]
    out = controller.time_limit("no.such.task", 1, 2, destination=host)
    assert out["replies"][host]["error"] == "unknown task" and not out["ok"]
    # a worker that is not there: its timeout, not an exception
    out = controller.pool_grow(1, ["nobody@nowhere", host + "-not"])
    assert out["replies"] == {} and out["timeouts"] == sorted(["nobody@nowhere", host + "-not"])
    assert not out["ok"]


def test_rate_limit_slows_execution(cluster):
    name, tag = T + "stamp", uuid.uuid4().hex
    out = cluster.controller.rate_limit(name, "30/m", destination=[cluster.host])
    assert out["replies"] == {cluster.host: {"ok": "new rate limit set successfully"}}, out
    try:
        for _ in range(4):
            cluster.app.send_task(name, [tag])
        key = f"{cluster.prefix}:test:stamps:{tag}"
        starts = wait_for(
            lambda: (s := cluster.store.redis.lrange(key, 0, -1)) and len(s) == 4 and s,
            40,
            what="4 rate-limited tasks",
        )
        times = sorted(float(t) for t in starts)
        # one every 2 s: about 6 s from first to last (unlimited: all at once)
        assert times[-1] - times[0] > 2.5, times
    finally:
        out = cluster.controller.rate_limit(name, None, destination=cluster.host)
    assert out["replies"][cluster.host] == {"ok": "rate limit disabled successfully"}


def test_time_limits_change(cluster):
    name = T + "sleep"

    def limits():
        inspect = cluster.app.control.inspect(timeout=2, destination=[cluster.host])
        registered = inspect.registered("soft_time_limit", "time_limit") or {}
        return next(t for t in registered.get(cluster.host, []) if t.split(" ")[0] == name)

    out = cluster.controller.time_limit(name, soft=1, hard=20, destination=cluster.host)
    assert out["ok"] and out["replies"][cluster.host] == {"ok": "time limits set successfully"}
    assert (out["soft"], out["hard"]) == (1.0, 20.0)
    assert "pool restart" in out["note"]
    assert limits() == f"{name} [soft_time_limit=1.0 time_limit=20.0]"
    try:
        # Celery applies them to new tasks once the pool restarts
        out = cluster.controller.pool_restart(cluster.host)
        assert out["ok"] and out["replies"][cluster.host] == {"ok": "reload started"}, out
        result = cluster.app.send_task(name, [8])
        task = cluster.final(result.id, ("FAILURE", "SUCCESS"))
        assert task["state"] == "FAILURE" and "SoftTimeLimitExceeded" in task["exception"]
    finally:
        cluster.controller.time_limit(name, None, None, destination=cluster.host)
        cluster.controller.pool_restart(cluster.host)
    assert limits() == name


def test_pool_grow_and_shrink_change_the_pool(cluster):
    size = wait_for(cluster.pool_size, 20, what="pool stats")
    out = cluster.controller.pool_grow(1, cluster.host)
    assert out["ok"] and out["replies"][cluster.host] == {"ok": "pool will grow"}
    wait_for(lambda: cluster.pool_size() == size + 1, 20, 0.3, what="one more process")
    out = cluster.controller.pool_shrink(1, [cluster.host])
    assert out["ok"] and out["replies"][cluster.host] == {"ok": "pool will shrink"}
    wait_for(lambda: cluster.pool_size() == size, 20, 0.3, what="back to the old size")


def test_add_and_cancel_consumer_change_active_queues(cluster):
    extra = f"{cluster.queue}-extra"
    assert extra not in cluster.active_queues()
    out = cluster.controller.add_consumer(extra, cluster.host)
    assert out["ok"] and out["replies"][cluster.host] == {"ok": f"add consumer {extra}"}
    wait_for(lambda: extra in cluster.active_queues(), 20, 0.3, what="consuming the queue")
    # and it runs what arrives there
    done = cluster.app.send_task(T + "add", [2, 3], queue=extra)
    assert cluster.final(done.id)["state"] == "SUCCESS"
    out = cluster.controller.cancel_consumer(extra, cluster.host)
    assert out["replies"][cluster.host] == {"ok": f"no longer consuming from {extra}"}
    wait_for(lambda: extra not in cluster.active_queues(), 20, 0.3, what="queue cancelled")


def test_purge_empties_the_queue(cluster):
    queue = f"{cluster.queue}-purge"  # nobody consumes it
    for i in range(5):
        cluster.app.send_task(T + "add", [i, i], queue=queue)
    cluster.app.send_task(T + "add", [9, 9], queue=queue, priority=9)
    # kombu keeps a Redis queue's priorities in lists of their own
    keys = [k.decode() for k in cluster.broker.scan_iter(match=f"{queue}*")]
    assert len(keys) == 2, keys
    assert sum(cluster.broker.llen(k) for k in keys) == 6
    assert cluster.controller.queue_depth(queue) == {"queue": queue, "depth": 6}
    out = cluster.controller.purge(queue)
    assert out == {"queue": queue, "depth_before": 6, "purged": 6}
    assert [cluster.broker.llen(k) for k in keys] == [0, 0]
    assert cluster.controller.queue_depth(queue)["depth"] == 0


def test_purge_on_rabbitmq(amqp_url):
    """On AMQP the depth is the passive declare's message count; a queue that
    is not there is a 404 (on Redis an empty queue is no key at all)."""
    from kombu import Connection

    app = Celery("amqp-actions", broker=amqp_url, set_as_current=False)
    queue = f"q-actions-{uuid.uuid4().hex[:10]}"
    store = Store(redis_client(REDIS_URL), Settings(prefix="mt-" + uuid.uuid4().hex[:10]))
    controller = Controller(app, store)
    try:
        with Connection(amqp_url) as conn:
            conn.default_channel.queue_declare(queue=queue, durable=False, auto_delete=False)
            producer = conn.Producer()
            for i in range(3):
                producer.publish({"n": i}, exchange="", routing_key=queue)
        wait_for(lambda: controller.queue_depth(queue)["depth"] == 3, 10, what="3 messages")
        assert controller.purge(queue) == {"queue": queue, "depth_before": 3, "purged": 3}
        assert controller.queue_depth(queue)["depth"] == 0
        error = refused(controller.purge, queue + "-missing")
        assert error.status == 404 and "does not exist" in error.message
    finally:
        with Connection(amqp_url) as conn:
            conn.default_channel.queue_delete(queue)
        store.close()
        app.close()


def test_events_only_task_is_refused_and_shutdown_stops_the_worker(cluster):
    """A second worker without hooks, with events, read by a real receiver."""
    queue = f"{cluster.queue}-events"
    receiver = Receiver(cluster.settings.replace(broker_url=BROKER, enable_events=False)).start()
    worker = WorkerProcess(
        broker=BROKER,
        queue=queue,
        prefix=cluster.prefix,
        hooks=False,
        events=True,
        hostname=f"ev-{cluster.prefix}@localhost",
        concurrency=1,
        log_path=Path(f"/tmp/monitor-test-actions-ev-{cluster.prefix}.log"),
    )
    try:
        wait_receiver_listening(cluster.app, cluster.store)
        worker.start()
        # published around the hooks (kombu directly), as a producer without them
        task_id = str(uuid.uuid4())
        headers, properties, body, _ = cluster.app.amqp.as_task_v2(
            task_id, T + "fail", args=["events only"]
        )
        with cluster.app.producer_or_acquire() as producer:
            producer.publish(
                body, routing_key=queue, headers=headers, serializer="json", **properties
            )
        task = cluster.final(task_id, ("FAILURE",))
        assert "events only" in task["args"]
        assert {s for e in task["timeline"] for s in e["sources"]} == {"event"}
        error = refused(cluster.controller.retry, task_id)
        assert error.status == 422 and error.code == "no_body"
        assert error.message == (
            f"task {task_id} cannot be retried: the monitor only has a truncated repr of "
            "its arguments (from Celery events or the worker's hooks), not the message "
            "that was published: the publish hook was not connected where it was sent "
            "(monitor.signals.connect(app) in the producer)"
        )

        out = cluster.controller.pool_restart(worker.hostname)
        assert not out["ok"]
        assert "Pool restarts not enabled" in out["replies"][worker.hostname]["error"]
        hint = out["replies"][worker.hostname]["hint"]
        assert hint == "start the worker with worker_pool_restarts=True"

        out = cluster.controller.shutdown(worker.hostname)
        assert out == {
            "action": "shutdown",
            "destination": [worker.hostname],
            "replies": {worker.hostname: {"ok": "shutdown requested"}},
            "timeouts": [],
            "ok": True,
        }
        wait_for(lambda: worker.proc.poll() is not None, 30, 0.2, what="the worker to exit")
        assert worker.proc.returncode == 0
        assert cluster.worker.proc.poll() is None  # the other one is untouched
    finally:
        worker.stop()
        receiver.stop()
        worker.log_path.unlink(missing_ok=True)


def test_bulk_retry_retries_exactly_the_matching_failures(cluster):
    name = T + "fail_quietly"
    originals = {cluster.app.send_task(name, [i]).id for i in range(200)}
    where = {"name": name, "state": "FAILURE"}

    def all_failed():
        dry = cluster.controller.bulk("retry", where)
        return dry["count"] == 200 and dry

    dry = wait_for(all_failed, 60, 0.5, what="200 failures stored")
    assert dry["dry_run"] and dry["complete"] and dry["skipped"] == {}
    assert len(dry["sample"]) == 20 and set(dry["sample"]) <= originals
    assert dry["filter"]["state"] == ["FAILURE"]

    calls = []
    out = cluster.controller.bulk(
        "retry", where, dry_run=False, by="dave", progress=lambda *a: calls.append(a)
    )
    assert out["ok"] and out["processed"] == 200 and not out["capped"], out
    assert {r["id"] for r in out["results"]} == originals
    new_ids = {r["new_id"] for r in out["results"]}
    assert len(new_ids) == 200 and not new_ids & originals
    assert calls[-1] == (200, 200) and len(calls) == 200 // 25

    # the reruns run (and fail again), each linked to its original
    def reruns_done():
        rows = cluster.store.get_tasks(list(new_ids), ("state", "retry_of"))
        return len(rows) == 200 and all(r["state"] == "FAILURE" for r in rows) and rows

    rows = wait_for(reruns_done, 60, 0.5, what="200 reruns failed")
    assert {r["retry_of"] for r in rows} == originals
    links = cluster.store.get_tasks(list(originals), ("state", "retried_as", "retried_by"))
    assert {r["retried_as"] for r in links} == new_ids
    assert {r["retried_by"] for r in links} == {"dave"}
    # exactly those ran: 400 tasks of that name, no more
    assert cluster.store.redis.zcard(cluster.store.keys.by_name(name)) == 400

    # now the originals are skipped as retried, the reruns are the candidates
    again = cluster.controller.bulk("retry", where)
    assert again["count"] == 200 and again["skipped"] == {"retried": 200}
    assert set(again["sample"]) <= new_ids
    capped = cluster.controller.bulk("retry", where, dry_run=False, limit=5)
    assert capped["processed"] == 5 and capped["capped"] and capped["count"] == 5


def test_bulk_revoke_selects_unfinished_tasks(cluster):
    tag = uuid.uuid4().hex
    held = [cluster.app.send_task(T + "stamp", [tag], countdown=4).id for _ in range(3)]
    for task_id in held:
        cluster.final(task_id, ("RECEIVED",), 20)
    dry = cluster.controller.bulk("revoke", {"name": T + "stamp"})
    assert dry["count"] == 3 and set(dry["sample"]) == set(held)  # finished stamps are not
    out = cluster.controller.bulk("revoke", {"name": T + "stamp"}, dry_run=False)
    assert out["processed"] == 3 and "ok" in out["replies"][cluster.host]
    for task_id in held:
        assert cluster.final(task_id)["state"] == "REVOKED"
    assert cluster.store.redis.llen(f"{cluster.prefix}:test:stamps:{tag}") == 0


def test_bulk_selection_walks_every_match_once(store, monkeypatch):
    """1,200 stored failures over three index chunks, seven tasks per timestamp:
    chunk boundaries fall inside runs of equal scores."""
    import monitor.actions
    from monitor.model import TaskEvent

    base = time.time() - 1000
    body = {"content_type": "application/json", "body": "[[], {}, {}]", "routing_key": "q"}
    events = [
        TaskEvent(
            f"sel-{i}",
            "FAILURE",
            base + i // 7,
            "signal",
            "h",
            {"name": "sel.task", "worker": f"w{i % 2}", **body},
        )
        for i in range(1200)
    ]
    for start in range(0, 1200, 400):
        store.apply(events[start : start + 400])
    app = Celery("selection", broker="redis://127.0.0.1:1/0", set_as_current=False)
    try:
        controller = Controller(app, store)
        dry = controller.bulk("retry", {"name": "sel.task"})
        assert (dry["count"], dry["complete"], dry["skipped"]) == (1200, True, {})
        assert dry["sample"] == [f"sel-{i}" for i in range(1199, 1179, -1)]  # newest first
        assert controller.bulk("retry", {"name": "sel.task", "worker": "w1"})["count"] == 600
        window = {"name": "sel.task", "since": base + 10, "until": base + 19}
        assert controller.bulk("retry", window)["count"] == 70
        revoke = controller.bulk("revoke", {"state": "FAILURE", "name": "sel.task"})
        assert revoke["count"] == 1200
        assert controller.bulk("revoke", {"name": "sel.task"})["count"] == 0  # unfinished only
        monkeypatch.setattr(monitor.actions, "BULK_SCAN", 1000)
        cut = controller.bulk("retry", {"name": "sel.task"})
        assert (cut["count"], cut["complete"]) == (1000, False)
    finally:
        app.close()


# -- hostile parameters: one ActionError (400) each, nothing sent -------------------------
HUGE = 10**400
BAD_CALLS = [
    ("revoke", (None,), {}),
    ("revoke", (123,), {}),
    ("revoke", ("",), {}),
    ("revoke", ("x" * 10_000,), {}),
    ("revoke", ("a\x00b",), {}),
    ("terminate", ("id", "SIGSTOP"), {}),
    ("terminate", ("id", HUGE), {}),
    ("terminate", ("id", -9), {}),
    ("terminate", ("id", True), {}),
    ("terminate", ("id", "K" * 10_000), {}),
    ("terminate", ("id", 9.0), {}),
    ("retry", ("id",), {"by": "x" * 10_000}),
    ("retry", ("id",), {"by": ["alice"]}),
    ("retry", ("id",), {"force": "yes"}),
    ("rate_limit", ("t", math.nan), {}),
    ("rate_limit", ("t", math.inf), {}),
    ("rate_limit", ("t", "1e999"), {}),
    ("rate_limit", ("t", "-1/s"), {}),
    ("rate_limit", ("t", "10/x"), {}),
    ("rate_limit", ("t", "9" * 10_000), {}),
    ("rate_limit", ("t", HUGE), {}),
    ("rate_limit", ("t", "2000000/s"), {}),
    ("rate_limit", ("t", ["10/m"]), {}),
    ("rate_limit", ("n" * 10_000, "1/s"), {}),
    ("rate_limit", ("t", "1/s"), {"destination": ["w"] * 1000}),
    ("rate_limit", ("t", "1/s"), {"destination": "w" * 10_000}),
    ("rate_limit", ("t", "1/s"), {"destination": 5}),
    ("time_limit", ("t",), {"soft": math.inf}),
    ("time_limit", ("t",), {"soft": math.nan}),
    ("time_limit", ("t",), {"soft": -1}),
    ("time_limit", ("t",), {"hard": HUGE}),
    ("time_limit", ("t",), {"hard": 1e12}),
    ("time_limit", ("t",), {"soft": 5, "hard": 1}),
    ("time_limit", ("t",), {"soft": "abc"}),
    ("time_limit", ("t",), {"soft": True}),
    ("pool_grow", (0, "w"), {}),
    ("pool_grow", (10**9, "w"), {}),
    ("pool_grow", (HUGE, "w"), {}),
    ("pool_grow", (True, "w"), {}),
    ("pool_grow", (1.5, "w"), {}),
    ("pool_grow", ("9" * 10_000, "w"), {}),
    ("pool_grow", (1, None), {}),
    ("pool_shrink", (-1, "w"), {}),
    ("autoscale", (1, 5, "w"), {}),
    ("autoscale", (HUGE, 1, "w"), {}),
    ("pool_restart", ([],), {}),
    ("add_consumer", ("q\x00", "w"), {}),
    ("add_consumer", ("q" * 300, "w"), {}),
    ("add_consumer", ("q", "w"), {"exchange_type": "evil"}),
    ("add_consumer", ("q", "w"), {"exchange": {"x": 1}}),
    ("cancel_consumer", (None, "w"), {}),
    ("shutdown", (None,), {}),
    ("shutdown", ([],), {}),
    ("purge", ("x" * 10_000,), {}),
    ("purge", ("",), {}),
    ("queue_depth", (b"q",), {}),
    ("bulk", ("delete",), {}),
    ("bulk", ("retry", {"state": "SUCCESS"}), {}),
    ("bulk", ("retry", {"since": math.nan}), {}),
    ("bulk", ("retry", {"since": HUGE}), {}),
    ("bulk", ("retry", {"until": -5}), {}),
    ("bulk", ("retry", {"since": 20, "until": 10}), {}),
    ("bulk", ("retry", {"bogus": 1}), {}),
    ("bulk", ("retry", "FAILURE"), {}),
    ("bulk", ("retry", {"name": "n" * 10_000}), {}),
    ("bulk", ("revoke", {"state": ["S"] * 100}), {}),
    ("bulk", ("revoke", {"state": "<script>"}), {}),
    ("bulk", ("retry",), {"limit": BULK_LIMIT + 1}),
    ("bulk", ("retry",), {"limit": 0}),
    ("bulk", ("retry",), {"dry_run": "no"}),
    ("bulk", ("retry",), {"progress": "print"}),
]


@pytest.fixture(scope="module")
def unreachable():
    """A Controller whose broker and Redis are both unreachable: a call that got
    past its checks would fail with a 503 or a connection error, not a 400."""
    app = Celery("hostile", broker="redis://127.0.0.1:1/0", set_as_current=False)
    store = Store(redis_client("redis://127.0.0.1:1/0"), Settings(prefix="mt-unreachable"))
    yield Controller(app, store)
    store.close()
    app.close()


@pytest.mark.parametrize(("method", "args", "kwargs"), BAD_CALLS)
def test_hostile_parameters_are_refused_before_anything_is_sent(unreachable, method, args, kwargs):
    error = refused(getattr(unreachable, method), *args, **kwargs)
    assert error.status == 400, error.message
    assert error.code == "invalid"
    assert len(error.message) < 300  # a 10 kB value is never echoed back


def test_a_broker_that_is_down_is_a_503(unreachable):
    error = refused(unreachable.pool_grow, 1, "w@h")
    assert error.status == 503 and error.code == "broker"
    assert error.message.startswith("broker unreachable")


def test_signal_names_and_numbers():
    from monitor.actions import rate_param, signal_param

    assert signal_param("kill") == signal_param("SIGKILL") == signal_param(9) == "SIGKILL"
    assert signal_param("15") == signal_param(" term ") == "SIGTERM"
    assert rate_param("10/m") == "10/m" and rate_param(2.5) == "2.5"
    assert rate_param(None) is rate_param("") is rate_param(0) is rate_param("0/s") is None
