"""The v1 action endpoints (monitor/web/actions_api.py) over HTTP, through Celery itself.

One real prefork worker (hooks on; a Redis broker database of this module's own,
so broadcasts reach only this module's workers) and a monitor app built on the
producer's Celery app, with an operator, a viewer, an admin and API tokens in
its Redis. Each endpoint is called as a script would (HTTP Basic or a Bearer
token) or as the page does (a session with its CSRF token), and checked through
Celery: a revoked task does not run, a retried one runs with equal arguments,
pool grow changes ``inspect().stats()``, a purge empties the queue. Refused calls
(no user configured, anonymous, viewer, wrong password, revoked token, no CSRF
token, hostile parameters) are checked to act on nothing, and every attempt to
leave exactly one audit entry.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from celery import Celery

import monitor.signals
from monitor.auth import AuthStore
from monitor.config import Settings
from monitor.store import Store, redis_client
from monitor.web import create_app

from .helpers import REDIS_URL, WorkerProcess, require_service, wait_for
from .workerapp import sample_args  # and its tasks, shared with every app

pytestmark = pytest.mark.slow

#: This module's broker database: pidbox broadcasts reach every worker on a broker.
BROKER = "redis://127.0.0.1:6379/13"
RESULTS = "redis://127.0.0.1:6379/1"
T = "tests.workerapp."
PASSWORD = "correct horse battery"


def basic(name: str, password: str = PASSWORD) -> dict[str, str]:
    raw = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class WebCluster:
    """A producer app (hooks connected, result backend), the store, one worker,
    and a monitor app on that Celery app with users and tokens."""

    def __init__(self, broker: str, name: str) -> None:
        self.prefix = "mt-" + uuid.uuid4().hex[:10]
        self.queue = f"q-{self.prefix}"
        self.broker_url = broker
        self.settings = Settings(redis_url=REDIS_URL, prefix=self.prefix)
        self.store = Store(redis_client(REDIS_URL), self.settings)
        self.broker = redis_lib.Redis.from_url(broker)
        self.app = Celery("producer", broker=broker, backend=RESULTS)
        self.app.conf.update(
            task_default_queue=self.queue,
            broker_connection_retry_on_startup=True,
            accept_content=["json", "pickle"],
            result_expires=600,
        )
        # tests.workerapp is imported (below): its tasks are shared, so this app
        # registers them once finalized, as the application's own app would
        # (Flower's apply and async-apply need a task's code).
        monitor.signals.connect(self.app, redis_url=REDIS_URL, prefix=self.prefix)
        self.worker = self.make_worker(f"{name}-{self.prefix}@localhost", self.queue)
        self.web = create_app(self.settings, message_queue=None, celery_app=self.app)
        self.web.config["TESTING"] = True
        self.auth = AuthStore(self.store.redis, self.store.keys, self.settings)
        self.auth.add_user("olga", PASSWORD, "operator")
        self.auth.add_user("vic", PASSWORD, "viewer")
        self.auth.add_user("ada", PASSWORD, "admin")
        self.auth.add_user("wendy", PASSWORD, "operator")  # wrong passwords go to her
        self.token = self.auth.create_token("deploy", "operator")
        self.revoked = self.auth.create_token("old", "operator")
        self.auth.revoke_token("old")
        # the same cluster, seen by a monitor where nobody has been added
        self.open_settings = Settings(redis_url=REDIS_URL, prefix=self.prefix + "-open")
        self.open_web = create_app(self.open_settings, message_queue=None, celery_app=self.app)
        self.open_web.config["TESTING"] = True

    def make_worker(self, hostname: str, queue: str, **options: Any) -> WorkerProcess:
        return WorkerProcess(
            broker=self.broker_url,
            queue=queue,
            prefix=self.prefix,
            hostname=hostname,
            extra_env={
                "TEST_ACCEPT_CONTENT": "json,pickle",
                "C_FORCE_ROOT": "1",
                "TEST_POOL_RESTARTS": "1",
            },
            log_path=Path(f"/tmp/monitor-test-{hostname.split('@')[0]}.log"),
            **options,
        )

    @property
    def host(self) -> str:
        return self.worker.hostname

    def client(self, open_monitor: bool = False) -> Any:
        return (self.open_web if open_monitor else self.web).test_client()

    def close(self) -> None:
        self.worker.stop()
        monitor.signals.disconnect()
        for web in (self.web, self.open_web):
            web.extensions["monitor"].store.delete_all()
            web.extensions["monitor"].store.close()
        self.store.delete_all()
        self.store.close()
        for key in self.broker.scan_iter(match=f"*{self.queue}*"):
            self.broker.delete(key)
        self.broker.close()
        self.app.close()
        self.worker.log_path.unlink(missing_ok=True)

    # -- observing -----------------------------------------------------------------
    def final(self, task_id: str, states=("SUCCESS", "FAILURE", "REVOKED"), timeout=30.0):
        try:
            return wait_for(
                lambda: (t := self.store.get_task(task_id)) and t["state"] in states and t,
                timeout,
                0.1,
                what=f"task {task_id} in {states}",
            )
        except AssertionError as exc:
            stored = self.store.get_task(task_id)
            log = self.worker.log()[-3000:]
            raise AssertionError(f"{exc}\nstored: {stored}\nworker log:\n{log}") from None

    def received(self, task_id: str, timeout: float = 30.0) -> dict:
        key = f"{self.prefix}:test:received:{task_id}"
        raw = wait_for(lambda: self.store.redis.get(key), timeout, 0.1, what=f"{task_id} recorded")
        return json.loads(raw)

    def stamps(self, tag: str) -> int:
        return self.store.redis.llen(f"{self.prefix}:test:stamps:{tag}")

    def pool_size(self) -> int:
        stats = self.app.control.inspect(timeout=2, destination=[self.host]).stats() or {}
        return len(stats.get(self.host, {}).get("pool", {}).get("processes", []))

    def active_queues(self) -> set[str]:
        replies = self.app.control.inspect(timeout=2, destination=[self.host]).active_queues()
        return {q["name"] for q in (replies or {}).get(self.host, [])}

    def registered(self, name: str) -> str:
        inspect = self.app.control.inspect(timeout=2, destination=[self.host])
        found = inspect.registered("rate_limit", "soft_time_limit", "time_limit") or {}
        return next(t for t in found.get(self.host, []) if t.split(" ")[0] == name)

    def audit(self, open_monitor: bool = False) -> list[dict]:
        web = self.open_web if open_monitor else self.web
        return web.extensions["monitor"].audit.list(limit=500)["entries"]

    def forget_failed_logins(self) -> None:
        for key in self.store.redis.scan_iter(match=f"{self.prefix}:auth:fail:*"):
            self.store.redis.delete(key)

    def held(self, seconds: int = 4) -> tuple[str, str]:
        """A stamp task the worker holds until its eta: (task id, tag)."""
        tag = uuid.uuid4().hex
        result = self.app.send_task(T + "stamp", [tag], countdown=seconds)
        self.final(result.id, ("RECEIVED",), 20)
        return result.id, tag


def start_cluster(broker: str, name: str) -> WebCluster:
    require_service("127.0.0.1", 6379, "Redis")
    cluster = WebCluster(broker, name)
    try:
        cluster.worker.start()
        wait_for(
            lambda: (cluster.store.worker(cluster.host) or {}).get("online"),
            20,
            what="worker online in the store",
        )
    except BaseException:
        cluster.close()
        raise
    return cluster


@pytest.fixture(scope="module")
def cluster():
    cluster = start_cluster(BROKER, "api")
    yield cluster
    cluster.close()


def session_client(cluster: WebCluster, name: str = "olga") -> tuple[Any, str]:
    """A test client logged in through the login form, and its CSRF token."""
    client = cluster.client()
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))[1]
    response = client.post(
        "/login", data={"name": name, "password": PASSWORD, "csrf_token": token, "next": "/"}
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    return client, client.get("/api/v1/me").get_json()["csrf_token"]


def last_entry(cluster: WebCluster, count_before: int, open_monitor: bool = False) -> dict:
    """The one audit entry written since ``count_before`` entries (fails otherwise)."""
    entries = cluster.audit(open_monitor)
    assert len(entries) == count_before + 1, entries[: len(entries) - count_before]
    return entries[0]


# -- tasks -----------------------------------------------------------------------------
def test_revoke_prevents_execution(cluster):
    task_id, tag = cluster.held()
    before = len(cluster.audit())
    response = cluster.client().post(f"/api/v1/tasks/{task_id}/revoke", headers=basic("olga"))
    assert response.status_code == 200, response.get_json()
    out = response.get_json()
    assert out["task_id"] == task_id and out["state"] == "RECEIVED"
    assert "ok" in out["replies"][cluster.host] and out["ok"], out
    assert cluster.final(task_id)["state"] == "REVOKED"
    assert cluster.stamps(tag) == 0
    entry = last_entry(cluster, before)
    assert (entry["who"], entry["role"], entry["via"]) == ("olga", "operator", "basic")
    assert (entry["action"], entry["target"], entry["ok"], entry["status"]) == (
        "task.revoke",
        task_id,
        True,
        200,
    )


def test_terminate_kills_the_running_task_with_the_chosen_signal(cluster):
    result = cluster.app.send_task(T + "hold", [120])
    pid = int(
        wait_for(
            lambda: cluster.store.redis.get(f"{cluster.prefix}:test:pid:{result.id}"),
            30,
            what="the task's pid",
        )
    )
    cluster.final(result.id, ("STARTED",), 20)
    response = cluster.client().post(
        f"/api/v1/tasks/{result.id}/terminate",
        json={"signal": "SIGKILL"},
        headers=bearer(cluster.token),
    )
    assert response.status_code == 200, response.get_json()
    out = response.get_json()
    assert out["signal"] == "SIGKILL"
    assert out["replies"][cluster.host] == {"ok": f"terminate: {result.id}"}, out
    assert cluster.final(result.id)["state"] == "REVOKED"
    wait_for(
        lambda: (
            not Path(f"/proc/{pid}").exists()
            or "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
        ),
        20,
        what=f"pool process {pid} gone",
    )
    entry = cluster.audit()[0]
    assert (entry["who"], entry["via"], entry["action"]) == ("deploy", "token", "task.terminate")
    assert entry["params"] == {"signal": "SIGKILL"} and entry["token"]


def test_retry_from_a_session_needs_csrf_and_reruns_equal_arguments(cluster):
    args, kwargs = sample_args()
    original = cluster.app.send_task(T + "record_args", args, kwargs)
    cluster.final(original.id, ("FAILURE",))
    first = cluster.received(original.id)
    client, csrf = session_client(cluster)

    # what the page asks before it shows the button
    viewer = cluster.client().get(f"/api/v1/tasks/{original.id}/actions", headers=basic("vic"))
    assert viewer.status_code == 200
    assert viewer.get_json()["retry"] == {
        "allowed": False,
        "reason": "actions need the operator role; you are a viewer",
        "code": "forbidden",
    }
    can = client.get(f"/api/v1/tasks/{original.id}/actions").get_json()
    assert can["retry"] == {"allowed": True, "reason": None, "code": None}
    assert can["revoke"]["allowed"] is False and can["revoke"]["code"] == "state"
    assert can["terminate"]["allowed"] is False

    # a session without its CSRF token: refused, audited, nothing published
    before = len(cluster.audit())
    refused = client.post(f"/api/v1/tasks/{original.id}/retry", json={})
    assert refused.status_code == 403 and "CSRF" in refused.get_json()["error"]
    entry = last_entry(cluster, before)
    assert (entry["who"], entry["via"], entry["ok"], entry["status"]) == (
        "olga",
        "session",
        False,
        403,
    )
    assert "retried_as" not in cluster.store.get_task(original.id)

    response = client.post(
        f"/api/v1/tasks/{original.id}/retry", json={}, headers={"X-CSRFToken": csrf}
    )
    assert response.status_code == 200, response.get_json()
    out = response.get_json()
    assert out["retry_of"] == original.id and out["by"] == "olga" and out["linked"]
    cluster.final(out["id"], ("FAILURE",))
    rerun = cluster.received(out["id"])
    assert rerun["equal"] and rerun["same_types"], rerun
    assert rerun["repr"] == first["repr"] and rerun["routing_key"] == cluster.queue
    stored = cluster.store.get_task(original.id)
    assert stored["retried_as"] == out["id"] and stored["retried_by"] == "olga"
    assert cluster.store.get_task(out["id"])["retry_of"] == original.id

    # a second click is refused with the reason; force (a form value) reruns it
    again = client.post(
        f"/api/v1/tasks/{original.id}/retry", json={}, headers={"X-CSRFToken": csrf}
    )
    assert again.status_code == 409
    assert again.get_json()["code"] == "retried"
    assert f"already retried as {out['id']}" in again.get_json()["error"]
    assert client.get(f"/api/v1/tasks/{original.id}/actions").get_json()["retry"]["code"] == (
        "retried"
    )
    forced = client.post(
        f"/api/v1/tasks/{original.id}/retry",
        data={"force": "true"},
        headers={"X-CSRFToken": csrf},
    )
    assert forced.status_code == 200, forced.get_json()
    assert cluster.received(forced.get_json()["id"])["repr"] == first["repr"]
    missing = client.get(f"/api/v1/tasks/{uuid.uuid4()}/actions")
    assert missing.status_code == 404 and missing.get_json()["code"] == "not_found"


def test_bulk_retry_runs_as_a_job_with_live_progress(cluster):
    name = T + "fail_quietly"
    originals = {cluster.app.send_task(name, [i]).id for i in range(60)}
    where = {"name": name, "state": "FAILURE"}
    client, csrf = session_client(cluster)
    headers = {"X-CSRFToken": csrf}

    def dry_run():
        response = client.post(
            "/api/v1/bulk", json={"action": "retry", "filter": where}, headers=headers
        )
        assert response.status_code == 200, response.get_json()
        return response.get_json()["count"] == 60 and response.get_json()

    dry = wait_for(dry_run, 60, 0.5, what="60 failures stored")
    assert dry["dry_run"] and set(dry["sample"]) <= originals and dry["skipped"] == {}

    ext = cluster.web.extensions["monitor"]
    live = ext.socketio.test_client(cluster.web, flask_test_client=client)
    assert live.is_connected()
    sid = ext.socketio.server.manager.sid_from_eio_sid(live.eio_sid, "/")
    try:
        response = client.post(
            "/api/v1/bulk",
            json={"action": "retry", "filter": where, "dry_run": False, "limit": 60},
            headers={**headers, "X-Socket-Sid": sid},
        )
        assert response.status_code == 200, response.get_json()
        job = response.get_json()
        assert job["finished"] is False and job["action"] == "retry" and job["by"] == "olga"

        def finished():
            progress = client.get(f"/api/v1/jobs/{job['job']}").get_json()
            return progress["finished"] and progress

        progress = wait_for(finished, 60, 0.2, what="the bulk job to finish")
        assert progress["ok"] and progress["done"] == progress["total"] == 60
        result = progress["result"]
        assert result["processed"] == 60 and {r["id"] for r in result["results"]} == originals
        new_ids = {r["new_id"] for r in result["results"]}
        events = [e["args"][0] for e in live.get_received() if e["name"] == "job"]
        assert events and all(e["job"] == job["job"] for e in events)
        assert [e["done"] for e in events[:-1]] == [25, 50, 60]
        assert events[-1]["finished"] and events[-1]["result"]["processed"] == 60
    finally:
        live.disconnect()

    def reruns_failed():
        rows = cluster.store.get_tasks(list(new_ids), ("state", "retry_of"))
        return len(rows) == 60 and all(r["state"] == "FAILURE" for r in rows) and rows

    rows = wait_for(reruns_failed, 60, 0.5, what="60 reruns failed")
    assert {r["retry_of"] for r in rows} == originals
    # a viewer may not see jobs; an unknown job is a 404
    assert (
        cluster.client().get(f"/api/v1/jobs/{job['job']}", headers=basic("vic")).status_code == 403
    )
    assert client.get("/api/v1/jobs/nope").status_code == 404


# -- workers ---------------------------------------------------------------------------
def test_pool_grow_and_shrink_change_the_pool(cluster):
    size = wait_for(cluster.pool_size, 20, what="pool stats")
    auth = basic("olga")
    grow = cluster.client().post(
        f"/api/v1/workers/{cluster.host}/pool/grow", json={"n": 2}, headers=auth
    )
    assert grow.status_code == 200, grow.get_json()
    assert grow.get_json()["replies"] == {cluster.host: {"ok": "pool will grow"}}
    wait_for(lambda: cluster.pool_size() == size + 2, 20, 0.3, what="two more processes")
    shrink = cluster.client().post(
        f"/api/v1/workers/{cluster.host}/pool/shrink", data={"n": "2"}, headers=auth
    )
    assert shrink.status_code == 200 and shrink.get_json()["ok"], shrink.get_json()
    wait_for(lambda: cluster.pool_size() == size, 20, 0.3, what="back to the old size")
    # a worker that does not answer: its timeout, not an error
    gone = cluster.client().post("/api/v1/workers/nobody@nowhere/pool/grow", json={}, headers=auth)
    assert gone.status_code == 200
    assert gone.get_json()["timeouts"] == ["nobody@nowhere"] and not gone.get_json()["ok"]
    autoscale = cluster.client().post(
        f"/api/v1/workers/{cluster.host}/pool/autoscale", json={"max": 4, "min": 1}, headers=auth
    )
    reply = autoscale.get_json()["replies"][cluster.host]
    assert "Autoscale not enabled" in reply["error"] and "--autoscale" in reply["hint"]


def test_rate_and_time_limits(cluster):
    auth, name = bearer(cluster.token), T + "sleep"
    url = f"/api/v1/workers/{cluster.host}"
    response = cluster.client().post(
        f"{url}/rate-limit", json={"task_name": name, "rate": "30/m"}, headers=auth
    )
    assert response.get_json()["replies"] == {
        cluster.host: {"ok": "new rate limit set successfully"}
    }
    assert cluster.registered(name) == f"{name} [rate_limit=30/m]"
    response = cluster.client().post(
        f"{url}/rate-limit", json={"task_name": name, "rate": ""}, headers=auth
    )
    assert response.get_json()["replies"][cluster.host] == {
        "ok": "rate limit disabled successfully"
    }
    assert cluster.registered(name) == name

    response = cluster.client().post(
        f"{url}/time-limit", json={"task_name": name, "soft": 5, "hard": "10"}, headers=auth
    )
    assert response.get_json()["replies"][cluster.host] == {"ok": "time limits set successfully"}
    assert "pool restart" in response.get_json()["note"]
    assert cluster.registered(name) == f"{name} [soft_time_limit=5.0 time_limit=10.0]"
    cluster.client().post(f"{url}/time-limit", json={"task_name": name}, headers=auth)
    assert cluster.registered(name) == name


def test_add_and_cancel_consumer_change_active_queues(cluster):
    extra = f"{cluster.queue}-extra"
    url, auth = f"/api/v1/workers/{cluster.host}/consumers", basic("ada")  # admins act too
    response = cluster.client().post(f"{url}/add", json={"queue": extra}, headers=auth)
    assert response.get_json()["replies"][cluster.host] == {"ok": f"add consumer {extra}"}
    wait_for(lambda: extra in cluster.active_queues(), 20, 0.3, what="consuming the queue")
    done = cluster.app.send_task(T + "add", [2, 3], queue=extra)
    assert cluster.final(done.id)["state"] == "SUCCESS"
    response = cluster.client().post(f"{url}/cancel", json={"queue": extra}, headers=auth)
    assert response.get_json()["replies"][cluster.host] == {
        "ok": f"no longer consuming from {extra}"
    }
    wait_for(lambda: extra not in cluster.active_queues(), 20, 0.3, what="queue cancelled")


def test_queue_depth_and_purge(cluster):
    queue = f"{cluster.queue}-purge"  # nobody consumes it
    for i in range(4):
        cluster.app.send_task(T + "add", [i, i], queue=queue)
    # viewers see the depth (the purge confirmation shows it)
    depth = cluster.client().get(f"/api/v1/queues/{queue}", headers=basic("vic"))
    assert depth.status_code == 200 and depth.get_json() == {"queue": queue, "depth": 4}
    refused = cluster.client().post(f"/api/v1/queues/{queue}/purge", headers=basic("vic"))
    assert refused.status_code == 403
    purged = cluster.client().post(f"/api/v1/queues/{queue}/purge", headers=basic("olga"))
    assert purged.status_code == 200
    assert purged.get_json() == {"queue": queue, "depth_before": 4, "purged": 4}
    assert cluster.client().get(f"/api/v1/queues/{queue}", headers=basic("vic")).get_json() == {
        "queue": queue,
        "depth": 0,
    }
    assert cluster.audit()[0]["action"] == "queue.purge"


def test_pool_restart_and_shutdown(cluster):
    """On a worker of its own: its pool is restarted, then it is shut down."""
    worker = cluster.make_worker(
        f"sd-{cluster.prefix}@localhost", f"{cluster.queue}-sd", concurrency=1
    )
    try:
        worker.start()
        restart = cluster.client().post(
            f"/api/v1/workers/{worker.hostname}/pool/restart", headers=bearer(cluster.token)
        )
        assert restart.get_json()["replies"] == {worker.hostname: {"ok": "reload started"}}
        response = cluster.client().post(
            f"/api/v1/workers/{worker.hostname}/shutdown", headers=basic("olga")
        )
        assert response.status_code == 200
        assert response.get_json()["replies"] == {worker.hostname: {"ok": "shutdown requested"}}
        wait_for(lambda: worker.proc.poll() is not None, 30, 0.2, what="the worker to exit")
        assert worker.proc.returncode == 0
        assert cluster.worker.proc.poll() is None
    finally:
        worker.stop()
        worker.log_path.unlink(missing_ok=True)


# -- who may act -------------------------------------------------------------------------
def endpoints(cluster: WebCluster, task_id: str, queue: str) -> list[tuple[str, str, dict]]:
    """(action, path, body) of every v1 action, aimed at real targets."""
    host = f"/api/v1/workers/{cluster.host}"
    return [
        ("task.revoke", f"/api/v1/tasks/{task_id}/revoke", {}),
        ("task.terminate", f"/api/v1/tasks/{task_id}/terminate", {"signal": "SIGKILL"}),
        ("task.retry", f"/api/v1/tasks/{task_id}/retry", {"force": True}),
        ("tasks.bulk", "/api/v1/bulk", {"action": "revoke", "dry_run": False}),
        ("worker.rate_limit", f"{host}/rate-limit", {"task_name": T + "stamp", "rate": "1/h"}),
        ("worker.time_limit", f"{host}/time-limit", {"task_name": T + "stamp", "soft": 1}),
        ("worker.pool_grow", f"{host}/pool/grow", {"n": 1}),
        ("worker.pool_shrink", f"{host}/pool/shrink", {"n": 1}),
        ("worker.autoscale", f"{host}/pool/autoscale", {"max": 3, "min": 1}),
        ("worker.pool_restart", f"{host}/pool/restart", {}),
        ("worker.add_consumer", f"{host}/consumers/add", {"queue": queue}),
        ("worker.cancel_consumer", f"{host}/consumers/cancel", {"queue": cluster.queue}),
        ("worker.shutdown", f"{host}/shutdown", {}),
        ("queue.purge", f"/api/v1/queues/{queue}/purge", {}),
    ]


#: (who, headers maker, expected status, who the audit names: never trusted, but
#: what the refused credentials claimed)
CALLERS = [
    ("anonymous", lambda c: {}, 401, "anonymous"),
    ("viewer", lambda c: basic("vic"), 403, "vic"),
    (
        "wrong password",
        lambda c: basic("wendy", "not the password"),
        401,
        "wendy (not authenticated)",
    ),
    ("revoked token", lambda c: bearer(c.revoked), 401, "(invalid token)"),
]


def test_refused_callers_act_on_nothing_and_every_attempt_is_audited(cluster):
    task_id, tag = cluster.held(8)
    queue = f"{cluster.queue}-matrix"
    for i in range(3):
        cluster.app.send_task(T + "add", [i, i], queue=queue)
    size = wait_for(cluster.pool_size, 20, what="pool stats")
    calls = endpoints(cluster, task_id, queue)

    # no user configured: 403 saying how to enable actions, whoever asks
    for name, path, payload in calls:
        before = len(cluster.audit(open_monitor=True))
        response = cluster.client(open_monitor=True).post(path, json=payload)
        assert response.status_code == 403, (name, response.get_json())
        assert "python -m monitor users add" in response.get_json()["error"]
        entry = last_entry(cluster, before, open_monitor=True)
        assert (entry["action"], entry["ok"], entry["status"]) == (name, False, 403)

    for who, headers, status, audited in CALLERS:
        for name, path, payload in calls:
            before = len(cluster.audit())
            response = cluster.client().post(path, json=payload, headers=headers(cluster))
            assert response.status_code == status, (who, name, response.get_json())
            entry = last_entry(cluster, before)
            assert (entry["action"], entry["who"], entry["ok"], entry["status"]) == (
                name,
                audited,
                False,
                status,
            ), (who, entry)
            cluster.forget_failed_logins()

    # an operator's browser session without its CSRF token
    session, _ = session_client(cluster)
    for name, path, payload in calls:
        before = len(cluster.audit())
        response = session.post(path, json=payload)
        assert response.status_code == 403, (name, response.get_json())
        assert "CSRF" in response.get_json()["error"]
        entry = last_entry(cluster, before)
        assert (entry["action"], entry["who"], entry["via"], entry["ok"]) == (
            name,
            "olga",
            "session",
            False,
        )

    # nothing ran: the queue is full, the task runs at its eta, the worker is
    # alive, consuming and as big as it was (a grow now is the first)
    assert cluster.client().get(f"/api/v1/queues/{queue}").status_code == 401
    depth = cluster.client().get(f"/api/v1/queues/{queue}", headers=basic("vic")).get_json()
    assert depth["depth"] == 3
    assert cluster.final(task_id, ("SUCCESS",), 30)["state"] == "SUCCESS"
    assert cluster.stamps(tag) == 1
    assert cluster.worker.proc.poll() is None
    assert queue not in cluster.active_queues() and cluster.queue in cluster.active_queues()
    assert "rate_limit" not in cluster.registered(T + "stamp")
    grow = cluster.client().post(
        f"/api/v1/workers/{cluster.host}/pool/grow", json={"n": 1}, headers=basic("olga")
    )
    assert grow.get_json()["ok"]
    wait_for(lambda: cluster.pool_size() == size + 1, 20, 0.3, what="exactly one more process")
    cluster.client().post(
        f"/api/v1/workers/{cluster.host}/pool/shrink", json={"n": 1}, headers=basic("olga")
    )
    wait_for(lambda: cluster.pool_size() == size, 20, 0.3, what="back to the old size")


def test_the_audit_log_endpoint_is_for_operators(cluster):
    url = f"/api/v1/workers/{cluster.host}/pool/shrink"
    cluster.client().post(url, json={"n": 0}, headers=basic("olga"))
    page = cluster.client().get(
        "/api/v1/audit?limit=1&action=worker.pool_shrink", headers=basic("olga")
    )
    assert page.status_code == 200
    (entry,) = page.get_json()["entries"]
    assert (entry["action"], entry["target"], entry["params"]) == (
        "worker.pool_shrink",
        cluster.host,
        {"n": 0},
    )
    assert entry["status"] == 400 and entry["ok"] is False
    assert entry["result"]["message"] == "n must be between 1 and 1024, got 0"
    assert page.get_json()["next_cursor"]
    older = cluster.client().get(
        f"/api/v1/audit?limit=500&before={page.get_json()['next_cursor']}&who=olga",
        headers=basic("olga"),
    )
    assert all(e["who"] == "olga" for e in older.get_json()["entries"])
    assert cluster.client().get("/api/v1/audit", headers=basic("vic")).status_code == 403
    assert cluster.client().get("/api/v1/audit").status_code == 401
    for bad in ("limit=0", "limit=abc", "limit=" + "9" * 5000, "before=nope", "who=" + "x" * 5000):
        response = cluster.client().get(f"/api/v1/audit?{bad}", headers=basic("olga"))
        assert response.status_code == 400, bad


# -- hostile parameters: 400, one audit entry, nothing sent ---------------------------------
HUGE = "9" * 10_000
HOSTILE = [
    ("pool/grow", {"n": HUGE}),
    ("pool/grow", b'{"n": NaN}'),
    ("pool/grow", b'{"n": 1e999}'),
    ("pool/grow", {"n": 10**400}),
    ("pool/grow", {"n": True}),
    ("pool/grow", {"n": [1]}),
    ("pool/grow", {"n": 100_000}),
    ("pool/shrink", {"n": -1}),
    ("pool/autoscale", {"max": 1, "min": 5}),
    ("rate-limit", {"task_name": "x" * 10_000, "rate": "1/s"}),
    ("rate-limit", {"task_name": T + "stamp", "rate": "1e999"}),
    ("rate-limit", b'{"task_name": "t", "rate": Infinity}'),
    ("rate-limit", {"task_name": T + "stamp", "rate": {"per": "s"}}),
    ("time-limit", {"task_name": T + "stamp", "soft": "inf"}),
    ("time-limit", {"task_name": T + "stamp", "hard": 1e12}),
    ("time-limit", {"task_name": T + "stamp", "soft": 5, "hard": 1}),
    ("consumers/add", {"queue": "q" * 10_000}),
    ("consumers/add", {"queue": {"name": "q"}}),
    ("consumers/cancel", {"queue": "q\x00"}),
    ("pool/grow", b"[1, 2]"),
]
HOSTILE_TASK = [
    ("terminate", {"signal": "K" * 10_000}),
    ("terminate", {"signal": 9.5}),
    ("terminate", {"signal": "SIGSTOP"}),
    ("retry", {"force": "maybe"}),
]
HOSTILE_BULK = [
    {"action": "delete"},
    {"action": "retry", "filter": {"since": 1e300}},
    {"action": "retry", "filter": "x" * 10_000},
    {"action": "revoke", "filter": {"state": ["S"] * 1000}},
    {"action": "revoke", "limit": 10**9},
    {"action": "revoke", "limit": "1e3"},
    {"action": "revoke", "dry_run": "perhaps"},
    {"action": "retry", "state": "SUCCESS"},
]


def _post(cluster: WebCluster, path: str, payload: Any) -> Any:
    headers = basic("olga")
    if isinstance(payload, bytes):
        return cluster.client().post(
            path, data=payload, headers={**headers, "Content-Type": "application/json"}
        )
    return cluster.client().post(path, json=payload, headers=headers)


def test_hostile_parameters_are_refused_once_and_act_on_nothing(cluster):
    size = wait_for(cluster.pool_size, 20, what="pool stats")
    task_id, tag = cluster.held(6)
    host = f"/api/v1/workers/{cluster.host}"
    cases = [(f"{host}/{path}", payload) for path, payload in HOSTILE]
    cases += [(f"/api/v1/tasks/{task_id}/{path}", payload) for path, payload in HOSTILE_TASK]
    cases += [("/api/v1/bulk", payload) for payload in HOSTILE_BULK]
    cases += [
        (f"/api/v1/tasks/{'x' * 10_000}/revoke", {}),
        ("/api/v1/tasks/a\x01b/revoke", {}),
        (f"/api/v1/queues/{'q' * 10_000}/purge", {}),
        (f"/api/v1/workers/{'w' * 10_000}/pool/grow", {"n": 1}),
    ]
    for path, payload in cases:
        before = len(cluster.audit())
        response = _post(cluster, path, payload)
        assert response.status_code == 400, (path[:80], payload, response.get_data()[:300])
        body = response.get_json()
        assert body["code"] == "invalid" and len(body["error"]) < 300, body
        entry = last_entry(cluster, before)
        assert (entry["ok"], entry["status"], entry["who"]) == (False, 400, "olga")
    # nothing was sent: the task runs at its eta, the pool grows only when asked properly
    assert cluster.final(task_id, ("SUCCESS", "REVOKED"), 30)["state"] == "SUCCESS"
    grow = _post(cluster, f"{host}/pool/grow", {"n": 1})
    assert grow.get_json()["ok"]
    wait_for(lambda: cluster.pool_size() == size + 1, 20, 0.3, what="exactly one more process")
    _post(cluster, f"{host}/pool/shrink", {"n": 1})
    wait_for(lambda: cluster.pool_size() == size, 20, 0.3, what="back to the old size")


def test_a_body_nested_too_deep_is_a_400_with_one_audit_entry(cluster):
    before = len(cluster.audit())
    response = _post(cluster, f"/api/v1/workers/{cluster.host}/pool/grow", b"[" * 100_000)
    assert response.status_code == 400
    entry = last_entry(cluster, before)
    assert (entry["ok"], entry["status"]) == (False, 400)


def test_openapi_entries_cover_every_route(cluster):
    from monitor.web.actions_api import openapi_paths

    paths = openapi_paths()
    rules = {
        re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for rule in cluster.web.url_map.iter_rules()
        if rule.endpoint.startswith("monitor_actions_api.")
    }
    normalised = {re.sub(r"\{\w+\}", "{}", p) for p in paths}
    assert {re.sub(r"\{\w+\}", "{}", r) for r in rules} == normalised
    for entry in paths.values():
        for operation in entry.values():
            assert operation["responses"] and operation["summary"]
