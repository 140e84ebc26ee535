"""REST, Flower-compatible API, OpenAPI and metrics via Flask's test client on real Redis."""

from __future__ import annotations

import re
import time
import uuid

import pytest
from celery import Celery
from flask import Flask

from monitor.model import WorkerEvent
from monitor.web import create_app, init_app

from .helpers import WorkerProcess, wait_for
from .helpers import api_task as task

T0 = time.time() - 600
HOSTILE = "<img src=x onerror=alert(1)>\"'&\u2028"


@pytest.fixture
def filled(store):
    records = []
    for i in range(30):
        name = "proj.add" if i % 3 else "proj.mul"
        worker = "celery@w1" if i % 2 else "celery@w2"
        state = "FAILURE" if i % 5 == 0 else "SUCCESS"
        extra = (
            {"exception": f"ValueError('boom {i}')"} if state == "FAILURE" else {"result": str(i)}
        )
        records.append(task(f"t{i:02d}", state, T0 + i, name, worker, runtime=0.1 * i, **extra))
    records.append(WorkerEvent("celery@w1", "heartbeat", time.time(), "event", {"freq": 2.0}))
    records.append(WorkerEvent("celery@w2", "heartbeat", T0, "event", {"freq": 2.0}))
    store.apply(records)
    return store


def ids(body):
    return [row["id"] for row in body["tasks"]]


def test_tasks_newest_first_with_total_and_row_fields(client, filled):
    body = client.get("/api/v1/tasks?limit=5").get_json()
    assert ids(body) == ["t29", "t28", "t27", "t26", "t25"]
    assert body["total"] == 30
    row = body["tasks"][0]
    assert row["state"] == "SUCCESS" and row["name"] == "proj.add" and row["worker"] == "celery@w1"
    assert row["result"] == "29"


def test_cursor_paging_visits_every_task_once(client, filled):
    seen, cursor = [], None
    while True:
        url = "/api/v1/tasks?limit=7" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(url).get_json()
        seen += ids(body)
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert seen == [f"t{i:02d}" for i in range(29, -1, -1)]


def test_cursor_paging_with_equal_scores(client, store):
    store.apply([task(f"s{i}", "SUCCESS", T0) for i in range(10)])
    first = client.get("/api/v1/tasks?limit=4").get_json()
    second = client.get(f"/api/v1/tasks?limit=4&cursor={first['next_cursor']}").get_json()
    third = client.get(f"/api/v1/tasks?limit=4&cursor={second['next_cursor']}").get_json()
    all_ids = ids(first) + ids(second) + ids(third)
    assert sorted(all_ids) == sorted(f"s{i}" for i in range(10))
    assert third["next_cursor"] is None


def test_filters_state_name_worker_and_combined(client, filled):
    failures = client.get("/api/v1/tasks?state=FAILURE").get_json()
    assert set(ids(failures)) == {"t00", "t05", "t10", "t15", "t20", "t25"}
    assert failures["total"] == 6
    mul = client.get("/api/v1/tasks?name=proj.mul").get_json()
    assert set(ids(mul)) == {f"t{i:02d}" for i in range(0, 30, 3)}
    combined = client.get("/api/v1/tasks?state=FAILURE&name=proj.mul&worker=celery@w2").get_json()
    assert ids(combined) == ["t00"] or set(ids(combined)) == {"t00"}
    assert set(ids(combined)) == {"t00"}  # t15 is odd -> w1; t0 is even -> w2
    several = client.get("/api/v1/tasks?state=FAILURE,SUCCESS&limit=1000").get_json()
    assert len(ids(several)) == 30
    lower = client.get("/api/v1/tasks?state=failure").get_json()
    assert len(ids(lower)) == 6


def test_since_until(client, filled):
    body = client.get(f"/api/v1/tasks?since={T0 + 10}&until={T0 + 12.5}").get_json()
    assert ids(body) == ["t12", "t11", "t10"]
    assert body["total"] == 3


def test_ascending_order_and_sort_by_runtime(client, filled):
    asc = client.get("/api/v1/tasks?order=asc&limit=3").get_json()
    assert ids(asc) == ["t00", "t01", "t02"]
    slow = client.get("/api/v1/tasks?sort=runtime&order=desc&limit=2").get_json()
    assert ids(slow) == ["t29", "t28"]


def test_text_search_in_args_result_exception_and_id(client, filled):
    assert ids(client.get("/api/v1/tasks?q=boom 15").get_json()) == ["t15"]
    assert ids(client.get("/api/v1/tasks?q=T07").get_json()) == ["t07"]
    by_id = client.get("/api/v1/tasks?q=t03").get_json()
    assert ids(by_id)[0] == "t03"
    paged = client.get("/api/v1/tasks?q=boom&limit=2").get_json()
    assert len(ids(paged)) == 2 and paged["next_cursor"]
    rest = client.get(f"/api/v1/tasks?q=boom&limit=100&cursor={paged['next_cursor']}").get_json()
    assert set(ids(paged) + ids(rest)) == {"t00", "t05", "t10", "t15", "t20", "t25"}
    assert "scanned" in rest


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=x",
        "since=yesterday",
        "until=nan",
        "sort=bogus",
        "order=sideways",
        "cursor=garbage",
        "state=not a state",
        "since=10&until=5",
    ],
)
def test_bad_parameters_are_400_json(client, filled, query):
    response = client.get(f"/api/v1/tasks?{query}")
    assert response.status_code == 400
    assert "error" in response.get_json()


def test_task_detail_timeline_children_and_404(client, store):
    store.apply(
        [
            task("parent", "RECEIVED", T0, worker="celery@w1"),
            task("parent", "SUCCESS", T0 + 1, worker="celery@w1", result="7"),
            task("child", "SUCCESS", T0 + 2, parent_id="parent", root_id="parent"),
        ]
    )
    body = client.get("/api/v1/tasks/parent").get_json()
    assert body["id"] == "parent" and body["state"] == "SUCCESS"
    assert [e["state"] for e in body["timeline"]] == ["RECEIVED", "SUCCESS"]
    assert body["children"] == ["child"]
    assert body["children_rows"][0]["id"] == "child"
    missing = client.get("/api/v1/tasks/nope")
    assert missing.status_code == 404 and "error" in missing.get_json()


def test_task_names_workers_and_worker_detail(client, filled):
    assert set(client.get("/api/v1/task-names").get_json()["names"]) == {"proj.add", "proj.mul"}
    workers = {w["hostname"]: w for w in client.get("/api/v1/workers").get_json()["workers"]}
    assert workers["celery@w1"]["status"] == "online" and workers["celery@w1"]["online"] is True
    assert workers["celery@w2"]["status"] == "offline"
    one = client.get("/api/v1/workers/celery@w1").get_json()
    assert one["worker"]["hostname"] == "celery@w1"
    assert {r["id"] for r in one["tasks"]} == {f"t{i:02d}" for i in range(1, 30, 2)}
    assert client.get("/api/v1/workers/celery@ghost").status_code == 404


def test_stats(client, filled, store):
    store.incr_meta({"dropped:signal": 3, "malformed:event": 2})
    body = client.get("/api/v1/stats?minutes=30").get_json()
    assert body["counts"]["SUCCESS"] == 24 and body["counts"]["FAILURE"] == 6
    assert body["workers"] == {"online": 1, "offline": 1}
    assert len(body["minutes"]) == 30
    assert sum(m["succeeded"] for m in body["minutes"]) == 24
    assert sum(m["failed"] for m in body["minutes"]) == 6
    assert body["failing"][0]["failures"] == 4 and body["failing"][0]["name"] == "proj.add"
    assert body["slowest"][0]["avg_runtime"] > 0
    assert body["dropped"] == {"signal": 3} and body["malformed"] == 2
    assert client.get("/api/v1/stats?minutes=0").status_code == 400


def test_flower_tasks_shape_and_params(client, filled):
    body = client.get("/api/tasks?limit=3").get_json()
    assert list(body) == ["t29", "t28", "t27"]
    task_ = body["t29"]
    assert task_["uuid"] == "t29" and task_["state"] == "SUCCESS"
    assert task_["worker"] == "celery@w1" and task_["runtime"] == pytest.approx(2.9)
    assert "traceback" in task_ and task_["traceback"] is None
    assert isinstance(task_["timestamp"], float)
    assert list(client.get("/api/tasks?limit=2&offset=1").get_json()) == ["t28", "t27"]
    failed = client.get("/api/tasks?state=FAILURE&taskname=proj.mul").get_json()
    assert set(failed) == {"t00", "t15"}
    by_worker = client.get("/api/tasks?workername=celery@w2&taskname=All").get_json()
    assert len(by_worker) == 15
    slow = client.get("/api/tasks?sort_by=-runtime&limit=1").get_json()
    assert list(slow) == ["t29"]
    fast = client.get("/api/tasks?sort_by=runtime&limit=1").get_json()
    assert list(fast) == ["t00"]
    assert set(client.get("/api/tasks?search=boom 2").get_json()) == {"t20", "t25"}
    assert client.get("/api/tasks?limit=x").status_code == 400
    assert client.get("/api/tasks?received_start=yesterday").status_code == 400


def test_flower_task_info_types_workers(client, filled):
    info = client.get("/api/task/info/t05").get_json()
    assert info["task-id"] == "t05" and info["uuid"] == "t05" and info["state"] == "FAILURE"
    assert info["exception"] == "ValueError('boom 5')"
    assert client.get("/api/task/info/nope").status_code == 404
    assert client.get("/api/task/types").get_json() == {"task-types": ["proj.add", "proj.mul"]}
    workers = client.get("/api/workers").get_json()
    assert set(workers) == {"celery@w1", "celery@w2"}
    assert "stats" in workers["celery@w1"] and "active_queues" in workers["celery@w1"]
    assert client.get("/api/workers?status=1").get_json() == {"celery@w1": True, "celery@w2": False}
    assert set(client.get("/api/workers?workername=celery@w1").get_json()) == {"celery@w1"}
    assert client.get("/api/workers?workername=celery@ghost").status_code == 404


def test_flower_workers_refresh_inspects_a_real_worker(settings, store):
    broker = "redis://127.0.0.1:6379/6"
    queue = f"inspect-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(broker=broker, queue=queue, prefix=settings.prefix).start()
    celery_app = Celery("inspect-test", broker=broker)
    client = create_app(settings, message_queue=None, celery_app=celery_app).test_client()
    host = worker.hostname
    try:
        wait_for(lambda: store.worker(host), 30, what="the worker recorded by its hooks")
        # Nothing asked yet: Flower's shape, filled from what the hooks recorded.
        before = client.get("/api/workers").get_json()[host]
        assert before["registered"] == [] and before["stats"]["pool"]["max-concurrency"] == 2

        def refreshed(path, ready):
            # A refresh slower than the request's deadline fills the cache for
            # the next request (reused for a few seconds): ask until it has.
            body = client.get(path).get_json()
            return body if ready(body) else None

        info = wait_for(
            lambda: refreshed("/api/workers?refresh=1", lambda b: b[host]["registered"]),
            20,
            what="inspect replies",
        )[host]
        assert {"tests.workerapp.add", "tests.workerapp.sleep"} <= set(info["registered"])
        assert info["stats"]["pool"]["max-concurrency"] == 2 and "rusage" in info["stats"]
        assert [q["name"] for q in info["active_queues"]] == [queue]
        assert info["conf"]["task_default_queue"] == queue
        assert info["active"] == []  # task lists only for a named worker, as in Flower

        running = celery_app.send_task("tests.workerapp.sleep", (4,), queue=queue)
        wait_for(lambda: (store.get_task(running.id) or {}).get("state") == "STARTED", 30)
        named = wait_for(
            lambda: refreshed(
                f"/api/workers?refresh=1&workername={host}", lambda b: b[host]["active"]
            ),
            20,
            what="the named worker's task lists",
        )
        assert set(named) == {host}
        assert [t["id"] for t in named[host]["active"]] == [running.id]
        # Later requests without refresh return the cached replies.
        assert "tests.workerapp.add" in client.get("/api/workers").get_json()[host]["registered"]
        assert client.get("/api/workers?refresh=1&workername=celery@ghost").status_code == 404
    finally:
        worker.stop()
        celery_app.close()


def test_flower_workers_refresh_with_the_broker_down_is_503(settings, filled):
    dead = Celery("dead-broker", broker="redis://127.0.0.1:1/0")
    client = create_app(settings, message_queue=None, celery_app=dead).test_client()
    response = client.get("/api/workers?refresh=1")
    assert response.status_code == 503
    assert "broker unreachable" in response.get_json()["error"]
    # without refresh the stored workers are still served
    assert set(client.get("/api/workers").get_json()) == {"celery@w1", "celery@w2"}


def test_openapi_lists_every_endpoint(client, app):
    spec = client.get("/api/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    documented = {re.sub(r"\{[^}]*\}", "{}", path): item for path, item in spec["paths"].items()}
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<[^>]*>", "{}", rule.rule)
        if path.startswith("/api") or path == "/metrics":
            assert path in documented, path
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                assert method.lower() in documented[path], (method, path)


def test_metrics(client, filled):
    text = client.get("/metrics").get_data(as_text=True)
    assert 'celery_monitor_tasks{state="SUCCESS"} 24.0' in text
    assert 'celery_monitor_workers{status="online"} 1.0' in text
    # celery-exporter's names: the runtime histogram observes successes (24 here)
    assert "celery_task_runtime_bucket{" in text
    runtime_counts = re.findall(r"^celery_task_runtime_count\{.*\} (\S+)$", text, re.M)
    assert sum(float(n) for n in runtime_counts) == 24
    assert "celery_monitor_redis_up 1.0" in text


def test_hostile_strings_returned_intact(client, store):
    store.apply(
        [
            task(
                "h1",
                "FAILURE",
                T0,
                name=HOSTILE,
                args=f"('{HOSTILE}',)",
                exception=f"ValueError('<script>alert(1)</script>{HOSTILE}')",
            )
        ]
    )
    row = client.get("/api/v1/tasks").get_json()["tasks"][0]
    assert row["name"] == HOSTILE
    assert HOSTILE in row["args"] and "<script>alert(1)</script>" in row["exception"]
    detail = client.get("/api/v1/tasks/h1").get_json()
    assert detail["name"] == HOSTILE
    from urllib.parse import quote

    by_name = client.get(f"/api/v1/tasks?name={quote(HOSTILE)}").get_json()
    assert ids(by_name) == ["h1"]
    response = client.get("/api/v1/tasks/%3Cscript%3E")
    assert response.status_code == 404 and response.content_type.startswith("application/json")


def test_init_app_under_url_prefix_in_host_app(settings, filled):
    host = Flask("host")

    @host.get("/")
    def home():
        return "host home"

    init_app(host, url_prefix="/ops/monitor", settings=settings)
    client = host.test_client()
    assert client.get("/").get_data(as_text=True) == "host home"
    body = client.get("/ops/monitor/api/v1/tasks?limit=2").get_json()
    assert ids(body) == ["t29", "t28"]
    assert list(client.get("/ops/monitor/api/tasks?limit=1").get_json()) == ["t29"]
    assert client.get("/ops/monitor/metrics").status_code == 200
    assert client.get("/api/v1/tasks").status_code == 404
    assert host.extensions["monitor"].url_prefix == "/ops/monitor"
    spec = client.get("/ops/monitor/api/openapi.json").get_json()
    assert spec["servers"] == [{"url": "/ops/monitor"}]


def test_socketio_test_client_subscribe_and_status(app, store):
    from .helpers import wait_for

    store.apply([task("live1", "SUCCESS", T0)])
    sio = app.extensions["monitor"].socketio.test_client(app)
    assert sio.is_connected()
    got: list = []

    def named(name):
        got.extend(sio.get_received())
        return [m["args"][0] for m in got if m["name"] == name]

    status = wait_for(lambda: named("status"), 5, what="a status message")
    assert status[0]["events"] == "off" and status[0]["redis"] in (True, False)
    ack = sio.emit("subscribe", {"room": "task", "id": "live1"}, callback=True)
    assert ack == {"ok": True, "room": "task:live1"}
    first = wait_for(lambda: named("task"), 5, what="the task's first message")
    assert first[0]["task"]["id"] == "live1"
    bad = sio.emit("subscribe", {"room": "nope"}, callback=True)
    assert bad["ok"] is False
    sio.disconnect()
