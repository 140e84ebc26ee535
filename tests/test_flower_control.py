"""Flower's control endpoints (monitor/web/flower_control.py): Flower's paths,
parameters and response shapes, checked through Celery on a real prefork worker.

The cluster is tests/test_actions_api.py's (a producer app with a result backend,
one worker, a monitor app with users and tokens) on a broker database of this
module's own. Requests are sent as Flower's documentation shows them (query
strings, forms, a JSON body for task calls) and answers compared whole.
"""

from __future__ import annotations

import json
import uuid

import pytest
from celery import Celery

from monitor.web import create_app
from monitor.web.flower_control import MAX_BODY

from .helpers import wait_for
from .test_actions_api import T, basic, bearer, last_entry, session_client, start_cluster

pytestmark = pytest.mark.slow

BROKER = "redis://127.0.0.1:6379/15"


@pytest.fixture(scope="module")
def cluster():
    cluster = start_cluster(BROKER, "flower")
    yield cluster
    cluster.close()


@pytest.fixture
def sink(cluster):
    """A queue nobody consumes: whatever is sent there stays, to be counted."""
    queue = f"{cluster.queue}-sink-{uuid.uuid4().hex[:6]}"
    yield queue
    for key in cluster.broker.scan_iter(match=f"{queue}*"):
        cluster.broker.delete(key)


def depth(cluster, queue: str) -> int:
    return sum(cluster.broker.llen(k) for k in cluster.broker.scan_iter(match=f"{queue}*"))


def text(response) -> str:
    assert response.mimetype == "text/plain", response.get_data()[:200]
    return response.get_data(as_text=True)


# -- tasks --------------------------------------------------------------------------------
def test_revoke_and_terminate(cluster):
    task_id, tag = cluster.held()
    response = cluster.client().post(f"/api/task/revoke/{task_id}", headers=basic("olga"))
    assert response.status_code == 200
    assert response.get_json() == {"message": f"Revoked '{task_id}'"}
    assert cluster.final(task_id)["state"] == "REVOKED" and cluster.stamps(tag) == 0

    running = cluster.app.send_task(T + "hold", [120])
    cluster.final(running.id, ("STARTED",), 30)
    response = cluster.client().post(
        f"/api/task/revoke/{running.id}?terminate=true&signal=SIGKILL", headers=basic("olga")
    )
    assert response.get_json() == {"message": f"Revoked '{running.id}'"}
    task = cluster.final(running.id)
    assert task["state"] == "REVOKED" and task.get("terminated") == "1"
    entry = cluster.audit()[0]
    assert (entry["action"], entry["target"], entry["params"]) == (
        "task.revoke",
        running.id,
        {"terminate": "true", "signal": "SIGKILL"},
    )


def test_rate_limit_and_timeout(cluster):
    name, host, auth = T + "add", cluster.host, basic("olga")
    url = f"/api/task/rate-limit/{name}"
    response = cluster.client().post(
        url, data={"ratelimit": "30/m", "workername": host}, headers=auth
    )
    assert response.status_code == 200
    assert response.get_json() == {"message": "new rate limit set successfully"}
    assert cluster.registered(name) == f"{name} [rate_limit=30/m]"
    # every worker when none is named; an empty limit removes it
    response = cluster.client().post(f"{url}?ratelimit=", headers=auth)
    assert response.get_json() == {"message": "rate limit disabled successfully"}
    assert cluster.registered(name) == name

    missing = cluster.client().post(url, data={"workername": host}, headers=auth)
    assert (missing.status_code, text(missing)) == (400, "Missing argument ratelimit")
    unknown = cluster.client().post(
        "/api/task/rate-limit/no.such.task", data={"ratelimit": "1/s"}, headers=auth
    )
    assert (unknown.status_code, text(unknown)) == (404, "Unknown task 'no.such.task'")
    nobody = cluster.client().post(
        url, data={"ratelimit": "1/s", "workername": "nobody@nowhere"}, headers=auth
    )
    assert (nobody.status_code, text(nobody)) == (404, "Unknown worker 'nobody@nowhere'")

    url = f"/api/task/timeout/{name}"
    response = cluster.client().post(
        url, data={"soft": "5", "hard": "10", "workername": host}, headers=auth
    )
    assert response.get_json() == {"message": "time limits set successfully"}
    assert cluster.registered(name) == f"{name} [soft_time_limit=5.0 time_limit=10.0]"
    response = cluster.client().post(url, data={"workername": host}, headers=auth)
    assert response.get_json() == {"message": "time limits set successfully"}
    assert cluster.registered(name) == name
    bad = cluster.client().post(url, data={"soft": "abc"}, headers=auth)
    assert (bad.status_code, text(bad)) == (400, "Invalid argument 'abc' of type 'float'")


def test_apply_async_apply_send_task_and_result(cluster):
    auth = bearer(cluster.token)
    client = cluster.client()
    response = client.post(f"/api/task/apply/{T}add", json={"args": [1, 2]}, headers=auth)
    assert response.status_code == 200, response.get_data()
    body = response.get_json()
    assert body == {"task-id": body["task-id"], "state": "SUCCESS", "result": 3}
    assert cluster.final(body["task-id"])["state"] == "SUCCESS"  # the worker ran it

    response = client.post(
        f"/api/task/async-apply/{T}add",
        json={"args": [2], "kwargs": {"y": 3}, "countdown": 0},
        headers=auth,
    )
    body = response.get_json()
    assert body == {"task-id": body["task-id"], "state": "PENDING"}
    result = client.get(f"/api/task/result/{body['task-id']}?timeout=20", headers=auth)
    assert result.get_json() == {"task-id": body["task-id"], "state": "SUCCESS", "result": 5}

    # send-task needs no code; Flower reads the JSON body whatever its Content-Type
    task_id = str(uuid.uuid4())
    response = client.post(
        f"/api/task/send-task/{T}fail",
        data=json.dumps({"args": ["flower says no"], "task_id": task_id}),
        headers={**auth, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.get_json() == {"task-id": task_id, "state": "PENDING"}
    result = client.get(f"/api/task/result/{task_id}?timeout=20", headers=auth).get_json()
    assert result["state"] == "FAILURE" and result["task-id"] == task_id
    assert result["result"] == "ValueError('flower says no')"
    assert "ValueError: flower says no" in result["traceback"]

    pending = client.get(f"/api/task/result/{uuid.uuid4()}", headers=auth).get_json()
    assert pending["state"] == "PENDING" and "result" not in pending
    unknown = client.post("/api/task/apply/no.such.task", json={"args": []}, headers=auth)
    assert (unknown.status_code, text(unknown)) == (404, "Unknown task 'no.such.task'")
    # results come unredacted from the backend: operators only
    assert client.get(f"/api/task/result/{task_id}", headers=basic("vic")).status_code == 403
    assert client.get(f"/api/task/result/{task_id}").status_code == 401
    actions = [e["action"] for e in cluster.audit() if e["who"] == "deploy"]
    assert actions[:4] == ["task.apply", "task.send", "task.async_apply", "task.apply"]


def test_abort_marks_the_task_aborted_in_the_result_backend(cluster):
    task_id, _ = cluster.held()
    response = cluster.client().post(f"/api/task/abort/{task_id}", headers=basic("olga"))
    assert response.get_json() == {"message": f"Aborted '{task_id}'"}
    assert cluster.app.AsyncResult(task_id).state == "ABORTED"


def test_without_a_result_backend(cluster, sink):
    app = Celery("no-backend", broker=BROKER, set_as_current=False)
    app.conf.task_default_queue = sink  # tests.workerapp's shared tasks are registered
    web = create_app(cluster.settings, message_queue=None, celery_app=app)
    try:
        client = web.test_client()
        auth = basic("olga")
        response = client.post(f"/api/task/apply/{T}add", json={"args": [1, 2]}, headers=auth)
        assert (response.status_code, text(response)) == (503, "result backend is not configured")
        assert depth(cluster, sink) == 0  # refused before anything was sent
        response = client.get(f"/api/task/result/{uuid.uuid4()}", headers=auth)
        assert response.status_code == 503
        response = client.post(f"/api/task/abort/{uuid.uuid4()}", headers=auth)
        assert response.status_code == 503
        # async-apply has nothing to wait for: sent, without a state
        response = client.post(f"/api/task/async-apply/{T}add", json={"args": [1, 2]}, headers=auth)
        assert list(response.get_json()) == ["task-id"]
        assert depth(cluster, sink) == 1
    finally:
        web.extensions["monitor"].store.close()
        app.close()


# -- workers --------------------------------------------------------------------------------
def test_pool_endpoints(cluster):
    host, auth = cluster.host, basic("olga")
    size = wait_for(cluster.pool_size, 20, what="pool stats")
    response = cluster.client().post(f"/api/worker/pool/grow/{host}?n=2", headers=auth)
    assert response.get_json() == {"message": f"Growing '{host}' worker's pool by 2"}
    wait_for(lambda: cluster.pool_size() == size + 2, 20, 0.3, what="two more processes")
    response = cluster.client().post(
        f"/api/worker/pool/shrink/{host}", data={"n": "2"}, headers=auth
    )
    assert response.get_json() == {"message": f"Shrinking '{host}' worker's pool by 2"}
    wait_for(lambda: cluster.pool_size() == size, 20, 0.3, what="back to the old size")
    response = cluster.client().post(f"/api/worker/pool/shrink/{host}", headers=auth)
    assert response.get_json() == {"message": f"Shrinking '{host}' worker's pool by 1"}
    wait_for(lambda: cluster.pool_size() == size - 1, 20, 0.3, what="one process less")
    cluster.client().post(f"/api/worker/pool/grow/{host}", headers=auth)
    wait_for(lambda: cluster.pool_size() == size, 20, 0.3, what="back to the old size")

    response = cluster.client().post(f"/api/worker/pool/autoscale/{host}?min=1&max=3", headers=auth)
    assert response.status_code == 403
    assert text(response).startswith(f"Failed to autoscale '{host}' worker: ")
    assert "Autoscale not enabled" in text(response)
    for path in ("pool/grow", "pool/restart", "shutdown", "queue/add-consumer"):
        response = cluster.client().post(f"/api/worker/{path}/nobody@nowhere?queue=q", headers=auth)
        assert (response.status_code, text(response)) == (404, "Unknown worker 'nobody@nowhere'")
    bad = cluster.client().post(f"/api/worker/pool/grow/{host}?n=abc", headers=auth)
    assert (bad.status_code, text(bad)) == (400, "Invalid argument 'abc' of type 'int'")


def test_consumers(cluster):
    extra, host, auth = f"{cluster.queue}-fl", cluster.host, basic("olga")
    response = cluster.client().post(
        f"/api/worker/queue/add-consumer/{host}?queue={extra}", headers=auth
    )
    assert response.get_json() == {"message": f"add consumer {extra}"}
    wait_for(lambda: extra in cluster.active_queues(), 20, 0.3, what="consuming the queue")
    response = cluster.client().post(
        f"/api/worker/queue/cancel-consumer/{host}", data={"queue": extra}, headers=auth
    )
    assert response.get_json() == {"message": f"no longer consuming from {extra}"}
    wait_for(lambda: extra not in cluster.active_queues(), 20, 0.3, what="queue cancelled")
    missing = cluster.client().post(f"/api/worker/queue/add-consumer/{host}", headers=auth)
    assert (missing.status_code, text(missing)) == (400, "Missing argument queue")


def test_pool_restart_and_shutdown(cluster):
    """On a worker of its own: its pool is restarted, then it is shut down."""
    worker = cluster.make_worker(
        f"fsd-{cluster.prefix}@localhost", f"{cluster.queue}-fsd", concurrency=1
    )
    try:
        worker.start()
        wait_for(lambda: cluster.store.worker(worker.hostname), 20, what="the worker in the store")
        name = worker.hostname
        response = cluster.client().post(f"/api/worker/pool/restart/{name}", headers=basic("olga"))
        assert response.get_json() == {"message": f"Restarting '{name}' worker's pool"}
        response = cluster.client().post(
            f"/api/worker/shutdown/{worker.hostname}", headers=basic("olga")
        )
        assert response.get_json() == {"message": "Shutting down!"}
        wait_for(lambda: worker.proc.poll() is not None, 30, 0.2, what="the worker to exit")
        assert cluster.worker.proc.poll() is None
    finally:
        worker.stop()
        worker.log_path.unlink(missing_ok=True)


# -- who may act ------------------------------------------------------------------------------
def calls(cluster, task_id: str, sink: str) -> list[tuple[str, str, dict | None]]:
    """(action, path, JSON body) of every Flower control endpoint, on real targets."""
    host = cluster.host
    send = {"args": [1, 2], "queue": sink}
    return [
        ("task.revoke", f"/api/task/revoke/{task_id}?terminate=true", None),
        ("task.rate_limit", f"/api/task/rate-limit/{T}stamp?ratelimit=1/h", None),
        ("task.time_limit", f"/api/task/timeout/{T}stamp?soft=1&hard=2", None),
        ("task.abort", f"/api/task/abort/{task_id}", None),
        ("task.apply", f"/api/task/apply/{T}add", send),
        ("task.async_apply", f"/api/task/async-apply/{T}add", send),
        ("task.send", f"/api/task/send-task/{T}add", send),
        ("worker.shutdown", f"/api/worker/shutdown/{host}", None),
        ("worker.pool_restart", f"/api/worker/pool/restart/{host}", None),
        ("worker.pool_grow", f"/api/worker/pool/grow/{host}?n=1", None),
        ("worker.pool_shrink", f"/api/worker/pool/shrink/{host}?n=1", None),
        ("worker.autoscale", f"/api/worker/pool/autoscale/{host}?min=1&max=2", None),
        ("worker.add_consumer", f"/api/worker/queue/add-consumer/{host}?queue={sink}", None),
        (
            "worker.cancel_consumer",
            f"/api/worker/queue/cancel-consumer/{host}?queue={cluster.queue}",
            None,
        ),
    ]


CALLERS = [
    ("anonymous", lambda c: {}, 401),
    ("viewer", lambda c: basic("vic"), 403),
    ("wrong password", lambda c: basic("wendy", "not the password"), 401),
    ("revoked token", lambda c: bearer(c.revoked), 401),
]


def test_refused_callers_act_on_nothing_and_are_audited(cluster, sink):
    task_id, tag = cluster.held(8)
    size = wait_for(cluster.pool_size, 20, what="pool stats")
    endpoints = calls(cluster, task_id, sink)
    for name, path, payload in endpoints:
        before = len(cluster.audit(open_monitor=True))
        response = cluster.client(open_monitor=True).post(path, json=payload)
        assert response.status_code == 403, (name, response.get_data())
        assert "python -m monitor users add" in response.get_json()["error"]
        entry = last_entry(cluster, before, open_monitor=True)
        assert (entry["action"], entry["ok"], entry["status"]) == (name, False, 403)
    for who, headers, status in CALLERS:
        for name, path, payload in endpoints:
            before = len(cluster.audit())
            response = cluster.client().post(path, json=payload, headers=headers(cluster))
            assert response.status_code == status, (who, name, response.get_data())
            entry = last_entry(cluster, before)
            assert (entry["action"], entry["ok"], entry["status"]) == (name, False, status)
            cluster.forget_failed_logins()
    session, _ = session_client(cluster)  # an operator's browser, without the CSRF token
    for name, path, payload in endpoints:
        before = len(cluster.audit())
        response = session.post(path, json=payload)
        assert response.status_code == 403 and "CSRF" in response.get_json()["error"], name
        entry = last_entry(cluster, before)
        assert (entry["action"], entry["via"], entry["status"]) == (name, "session", 403)
    assert depth(cluster, sink) == 0  # nothing was sent
    assert cluster.final(task_id, ("SUCCESS",), 30)["state"] == "SUCCESS"
    assert cluster.stamps(tag) == 1 and cluster.app.AsyncResult(task_id).state == "SUCCESS"
    assert cluster.worker.proc.poll() is None
    assert sink not in cluster.active_queues() and cluster.queue in cluster.active_queues()
    assert cluster.registered(T + "stamp") == T + "stamp"
    response = cluster.client().post(f"/api/worker/pool/grow/{cluster.host}", headers=basic("olga"))
    assert response.status_code == 200
    wait_for(lambda: cluster.pool_size() == size + 1, 20, 0.3, what="exactly one more process")
    cluster.client().post(f"/api/worker/pool/shrink/{cluster.host}", headers=basic("olga"))
    wait_for(lambda: cluster.pool_size() == size, 20, 0.3, what="back to the old size")


# -- hostile parameters ----------------------------------------------------------------------
def hostile(cluster, sink: str) -> list[tuple[str, bytes | dict | None]]:
    host, task = cluster.host, str(uuid.uuid4())
    apply = f"/api/task/apply/{T}add"
    send = f"/api/task/send-task/{T}add"
    deep: list = []
    for _ in range(40):
        deep = [deep]
    q = {"queue": sink}
    return [
        (f"/api/worker/pool/grow/{host}?n=abc", None),
        (f"/api/worker/pool/grow/{host}?n={'9' * 10_000}", None),
        (f"/api/worker/pool/grow/{host}?n=1.5", None),
        (f"/api/worker/pool/grow/{host}?n=100000", None),
        (f"/api/worker/pool/shrink/{host}?n=-3", None),
        (f"/api/worker/pool/autoscale/{host}?min=5&max=1", None),
        (f"/api/worker/pool/autoscale/{host}?min=x&max=1", None),
        (f"/api/worker/queue/add-consumer/{host}?queue={'q' * 10_000}", None),
        (f"/api/worker/queue/add-consumer/{host}?queue=a%00b", None),
        (f"/api/worker/shutdown/{'w' * 10_000}", None),
        (f"/api/task/revoke/{task}?terminate=maybe", None),
        (f"/api/task/revoke/{task}?terminate=1&signal={'K' * 10_000}", None),
        (f"/api/task/revoke/{task}?terminate=1&signal=SIGSTOP", None),
        (f"/api/task/revoke/{'x' * 10_000}", None),
        (f"/api/task/rate-limit/{T}add?ratelimit=1e999", None),
        (f"/api/task/rate-limit/{T}add?ratelimit=-1/s", None),
        (f"/api/task/rate-limit/{'n' * 10_000}?ratelimit=1/s", None),
        (f"/api/task/timeout/{T}add?soft=nan", None),
        (f"/api/task/timeout/{T}add?hard=1e999", None),
        (f"/api/task/timeout/{T}add?hard={'1' * 10_000}", None),
        (f"/api/task/timeout/{T}add?soft=9&hard=1", None),
        (f"/api/task/abort/{'x' * 10_000}", None),
        (apply, {"args": "1, 2", **q}),
        (apply, {"args": [1], "kwargs": [2], **q}),
        (apply, {"args": deep, **q}),
        (apply, b'{"args": [NaN], "queue": "' + sink.encode() + b'"}'),
        (apply, {"args": [1, 2], "connection": "amqp://evil", **q}),
        (apply, {"args": [1, 2], "countdown": 1e300, **q}),
        (apply, {"args": [1, 2], "countdown": -1, **q}),
        (apply, {"args": [1, 2], "eta": "9999-12-31 23:59:59.000000", **q}),
        (apply, {"args": [1, 2], "eta": "tomorrow", **q}),
        (apply, {"args": [1, 2], "expires": "x" * 10_000, **q}),
        (apply, {"args": [1, 2], "priority": 1000, **q}),
        (apply, {"args": [1, 2], "task_id": "x" * 10_000, **q}),
        (apply, {"args": [1, 2], "time_limit": "inf", **q}),
        (apply, {"args": [1, 2], "queue": "a\x00b"}),
        (send, b"{{not json"),
        (send, b"[1, 2]"),
        (send, {"args": [1, 2], "exchange": ["x"], **q}),
        (f"/api/task/send-task/{'n' * 10_000}", {"args": [], **q}),
        (f"/api/task/async-apply/{T}add", {"args": [1], "kwargs": {"y": 1e999}, **q}),
    ]


def test_hostile_parameters_are_refused_once_and_act_on_nothing(cluster, sink):
    size = wait_for(cluster.pool_size, 20, what="pool stats")
    auth = basic("olga")
    for path, payload in hostile(cluster, sink):
        before = len(cluster.audit())
        if isinstance(payload, bytes):
            response = cluster.client().post(
                path, data=payload, headers={**auth, "Content-Type": "application/json"}
            )
        else:
            response = cluster.client().post(path, json=payload, headers=auth)
        assert response.status_code == 400, (path[:100], payload, response.get_data()[:300])
        assert len(text(response)) < 300
        entry = last_entry(cluster, before)
        assert (entry["ok"], entry["status"]) == (False, 400)
    # a body over the cap, and result's timeout
    big = {"args": ["x" * MAX_BODY], "queue": sink}
    response = cluster.client().post(f"/api/task/send-task/{T}add", json=big, headers=auth)
    assert response.status_code == 413
    for bad in ("nan", "1e999", "abc", "31", "-1"):
        response = cluster.client().get(f"/api/task/result/x?timeout={bad}", headers=auth)
        assert response.status_code == 400, bad
    assert depth(cluster, sink) == 0
    response = cluster.client().post(f"/api/worker/pool/grow/{cluster.host}", headers=auth)
    assert response.status_code == 200
    wait_for(lambda: cluster.pool_size() == size + 1, 20, 0.3, what="exactly one more process")
    cluster.client().post(f"/api/worker/pool/shrink/{cluster.host}", headers=auth)
    wait_for(lambda: cluster.pool_size() == size, 20, 0.3, what="back to the old size")


def test_openapi_entries_cover_every_route(cluster):
    import re

    from monitor.web.flower_control import openapi_paths

    paths = openapi_paths()
    rules = {
        re.sub(r"<(?:\w+:)?\w+>", "{}", rule.rule)
        for rule in cluster.web.url_map.iter_rules()
        if rule.endpoint.startswith("monitor_flower_control.")
    }
    assert rules == {re.sub(r"\{\w+\}", "{}", p) for p in paths}


def test_a_body_nested_too_deep_is_a_400_with_one_audit_entry(cluster, sink):
    before = len(cluster.audit())
    response = cluster.client().post(
        f"/api/task/send-task/{T}add",
        data=b"[" * 100_000,
        headers={**basic("olga"), "Content-Type": "application/json"},
    )
    assert response.status_code == 400 and "nested too deep" in text(response)
    entry = last_entry(cluster, before)
    assert (entry["action"], entry["ok"], entry["status"]) == ("task.send", False, 400)
    assert depth(cluster, sink) == 0
