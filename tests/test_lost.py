"""Lost and stuck tasks, the Redis broker's unacked messages, configuration risks and
the result-backend reconciliation (monitor.lost), against the real store.

The real-worker cases (a worker SIGKILLed mid-task, acks_late on a Redis broker
with a 2 s visibility timeout) are in tests/test_lost_worker.py.
"""

from __future__ import annotations

import time
import uuid

import pytest
from celery import Celery

from monitor import lost
from monitor.jobs import JobContext
from monitor.model import TaskEvent, WorkerEvent
from monitor.web.queries import QueryError, TaskQuery

from .helpers import REDIS_URL

NOW = None  # tests take time.time() themselves: the store clamps far-off times


def started(tid, at, worker, **fields):
    base = {"name": "proj.slow", "worker": worker}
    base.update(fields)
    return TaskEvent(tid, "STARTED", at, "signal", worker, base)


def beat(host, at, freq=1.0):
    return WorkerEvent(host, "heartbeat", at, "signal", {"freq": freq})


def test_stuck_by_time_limit_through_the_real_store(store):
    now = time.time()
    store.apply(
        [
            started("hard", now - 100, "w@a", time_limit=30),
            started("soft", now - 100, "w@a", soft_time_limit=10, time_limit=600),
            started("within", now - 100, "w@a", time_limit=300),
            started("nolimit", now - 100, "w@a"),
            started("fresh", now - 1, "w@a", time_limit=30),
            TaskEvent("done", "SUCCESS", now - 50, "signal", "w@a", {"name": "proj.slow"}),
            beat("w@a", now),
        ]
    )
    store.apply([started("done", now - 100, "w@a", time_limit=1)])  # late: stays SUCCESS
    page = lost.flagged_page(store, TaskQuery(), "stuck")
    rows = {row["id"]: row for row in page["tasks"]}
    assert sorted(rows) == ["hard", "soft"]
    assert rows["hard"]["stuck"] is True and rows["soft"]["stuck"] is True
    assert "past its time limit (30 s)" in rows["hard"]["stuck_reason"]
    assert "past its soft time limit (10 s)" in rows["soft"]["stuck_reason"]
    assert rows["hard"]["lost"] is False  # its worker beats
    assert page["next_cursor"] is None and page["scanned"] == 5
    # The same rows, annotated on a plain list: only the stuck ones say so.
    plain = store.get_tasks(["hard", "within", "done"])
    lost.annotate(store, plain)
    assert [(r["id"], r["stuck"], r["lost"]) for r in plain] == [
        ("hard", True, False),
        ("within", False, False),
        ("done", False, False),
    ]
    assert plain[1]["stuck_reason"] is None


def test_lost_is_received_or_started_on_a_worker_that_is_not_online(store):
    now = time.time()
    store.apply(
        [
            beat("alive@h", now),
            beat("dead@h", now - 100),
            started("s-dead", now - 5, "dead@h"),
            TaskEvent("r-dead", "RECEIVED", now - 4, "signal", "dead@h", {"worker": "dead@h"}),
            started("s-alive", now - 3, "alive@h"),
            TaskEvent("ok-dead", "SUCCESS", now - 2, "signal", "dead@h", {"worker": "dead@h"}),
            # a worker the store no longer lists (purged): not online either
            started("s-gone", now - 1, "gone@h"),
            TaskEvent("queued", "PENDING", now, "signal", None, {"name": "proj.slow"}),
        ]
    )
    page = lost.flagged_page(store, TaskQuery(), "lost")
    assert [r["id"] for r in page["tasks"]] == ["s-gone", "r-dead", "s-dead"]
    assert all(r["lost"] for r in page["tasks"])
    # filters combine: a state, a worker
    only = lost.flagged_page(store, TaskQuery(states=("RECEIVED",)), "lost")
    assert [r["id"] for r in only["tasks"]] == ["r-dead"]
    by_worker = lost.flagged_page(store, TaskQuery(worker="dead@h"), "lost")
    assert [r["id"] for r in by_worker["tasks"]] == ["r-dead", "s-dead"]
    assert lost.flagged_page(store, TaskQuery(states=("SUCCESS",)), "lost")["tasks"] == []
    # paged: a cursor continues after the last row
    first = lost.flagged_page(store, TaskQuery(limit=2), "lost")
    assert [r["id"] for r in first["tasks"]] == ["s-gone", "r-dead"]
    from monitor.web.queries import parse_cursor

    rest = lost.flagged_page(
        store, TaskQuery(limit=2, cursor=parse_cursor(first["next_cursor"])), "lost"
    )
    assert [r["id"] for r in rest["tasks"]] == ["s-dead"] and rest["next_cursor"] is None


def test_flag_parameter_is_validated():
    assert lost.parse_flag(None) is None and lost.parse_flag("lost") == "lost"
    for bad in ("LOST", "x" * 5000, "lost,stuck", "\x00"):
        with pytest.raises(QueryError, match="flag must be one of lost, stuck"):
            lost.parse_flag(bad)


def test_flagged_lists_refuse_other_sorts_and_search(store):
    with pytest.raises(QueryError, match="drop sort and q"):
        lost.flagged_page(store, TaskQuery(sort="name"), "lost")
    with pytest.raises(QueryError, match="drop sort and q"):
        lost.flagged_page(store, TaskQuery(q="x"), "stuck")


def test_a_flagged_scan_is_bounded_by_the_request_budget(store, monkeypatch):
    """Thousands of running tasks on live workers: the lost scan stops at the
    budget and hands a cursor on, it never walks them all."""
    from monitor.web import queries

    now = time.time()
    store.apply([beat("alive@h", now)] + [started(f"t{i}", now - i, "alive@h") for i in range(600)])
    monkeypatch.setattr(queries, "SCAN_BUDGET", 200)
    page = lost.flagged_page(store, TaskQuery(), "lost")
    assert page["tasks"] == [] and page["scanned"] == 200 and page["next_cursor"]


def test_stuck_reason_rules():
    now = 1000.0
    assert lost.stuck_reason("STARTED", 900, 60, None, now) is not None
    assert lost.stuck_reason("STARTED", 900, 200, None, now) is None
    assert lost.stuck_reason("RECEIVED", 0, 1, 1, now) is None  # only a running task
    assert lost.stuck_reason("STARTED", "nan", 1, 1, now) is None
    assert lost.stuck_reason("STARTED", 900, "inf", "x", now) is None
    # p99: ten times it, and at least P99_FLOOR seconds
    assert "p99" in lost.stuck_reason("STARTED", 0, None, None, now, p99=2.0)
    assert lost.stuck_reason("STARTED", 990, None, None, now, p99=0.5) is None


# -- configuration risks ----------------------------------------------------------------------
def test_acks_late_without_reject_on_worker_lost_is_a_risk_from_app_conf_and_tasks():
    app = Celery("risky", broker="redis://127.0.0.1:6379/0", set_as_current=False)

    @app.task(name="proj.late", acks_late=True, shared=False)
    def late():
        return 1

    @app.task(name="proj.safe", acks_late=True, reject_on_worker_lost=True, shared=False)
    def safe():
        return 1

    app.finalize()
    risks = lost.config_risks(app, {})
    assert [r["where"] for r in risks] == ["task proj.late"]
    app.conf.task_acks_late = True
    assert [r["where"] for r in lost.config_risks(app, {})] == ["app conf"]
    app.conf.task_reject_on_worker_lost = True
    assert lost.config_risks(app, {}) == []
    confs = {"w@1": {"task_acks_late": True}, "w@2": {"task_acks_late": False}, "w@3": "junk"}
    assert [r["where"] for r in lost.config_risks(None, confs)] == ["worker w@1"]


def test_visibility_timeout_comes_from_the_app_else_the_smallest_worker_conf():
    app = Celery("vt", broker="redis://127.0.0.1:6379/0", set_as_current=False)
    got = lost.broker_settings(app, {})
    assert got["visibility_timeout"] == 3600 and got["visibility_timeout_source"] == "kombu default"
    confs = {
        "a@h": {"broker_transport_options": {"visibility_timeout": 50}},
        "b@h": {"broker_transport_options": {"visibility_timeout": 20, "global_keyprefix": "p:"}},
        "c@h": {"broker_transport_options": {"visibility_timeout": "nan"}},
    }
    got = lost.broker_settings(app, confs)
    assert got["visibility_timeout"] == 20 and got["visibility_timeout_source"] == "worker b@h conf"
    assert got["keys"].unacked == "p:unacked" and got["keys"].unacked_index == "p:unacked_index"
    app.conf.broker_transport_options = {"visibility_timeout": 7}
    got = lost.broker_settings(app, confs)
    assert got["visibility_timeout"] == 7 and got["visibility_timeout_source"] == "app conf"
    amqp = Celery("amqp", broker="amqp://guest@127.0.0.1//", set_as_current=False)
    assert lost.broker_settings(amqp, {})["transport"] == "amqp"


def test_unacked_entries_are_read_bounded_from_the_brokers_keys(redis_url):
    """kombu's layout, written here as its Redis transport writes it: the oldest
    UNACKED_READ entries are read in one script call, a huge message by its id."""
    import json

    import redis as redis_lib

    prefix = f"mtb-{uuid.uuid4().hex[:8]}:"
    r = redis_lib.Redis.from_url(redis_url)
    now = time.time()
    try:
        pipe = r.pipeline()
        for i in range(lost.UNACKED_READ + 50):
            tag = f"tag{i}"
            headers = {"id": f"id{i}", "task": "proj.x", "eta": None}
            if i == 0:
                headers["eta"] = "2099-01-01T00:00:00+00:00"
            body = "A" * (lost.UNACKED_DECODE_BYTES + 10) if i == 1 else "e30="
            message = {"body": body, "headers": headers, "properties": {"delivery_tag": tag}}
            pipe.zadd(prefix + "unacked_index", {tag: now - 10_000 + i})
            pipe.hset(prefix + "unacked", tag, json.dumps([message, "", "celery"]))
        pipe.execute()
        app = Celery("b", broker=redis_url, set_as_current=False)
        app.conf.broker_transport_options = {"visibility_timeout": 60, "global_keyprefix": prefix}
        report = lost.broker_report(None, app, {}, now=now)
        assert report["unacked"] == {"count": lost.UNACKED_READ + 50, "read": lost.UNACKED_READ}
        assert len(report["redelivery"]) == lost.REPORT_ROWS
        first = report["redelivery"][0]
        assert first["task_id"] == "id0" and first["name"] == "proj.x"
        assert first["overdue"] == pytest.approx(10_000 - 60, abs=1)
        assert report["redelivery"][1]["task_id"] == "id1"  # found in a message too big to decode
        assert [e["task_id"] for e in report["eta_beyond_visibility"]] == ["id0"]
        assert lost.task_broker_flags(report, "id0").keys() == {
            "redelivery",
            "eta_beyond_visibility",
        }
        assert report["broker"]["url"] is None  # never shown
    finally:
        r.delete(prefix + "unacked_index", prefix + "unacked")
        r.close()


# -- reconciliation ---------------------------------------------------------------------------
@pytest.fixture
def backend_app():
    app = Celery(
        "reconciled", broker=REDIS_URL, backend="redis://127.0.0.1:6379/1", set_as_current=False
    )
    yield app
    app.close()


def test_reconcile_corrects_a_task_whose_final_records_were_lost(store, settings, backend_app):
    """The store saw only STARTED; the Redis result backend has SUCCESS: corrected,
    and the timeline says the reconciliation did it."""
    now = time.time()
    tid, failed, unknown, fresh = (f"rc-{uuid.uuid4().hex}" for _ in range(4))
    store.apply(
        [
            started(tid, now - 120, "w@r"),
            started(failed, now - 110, "w@r"),
            started(unknown, now - 100, "w@r"),
            started(fresh, now - 1, "w@r"),
        ]
    )
    backend = backend_app.backend
    backend.store_result(tid, {"answer": 42}, "SUCCESS")
    try:
        raise ValueError("boom")
    except ValueError as exc:
        backend.store_result(failed, exc, "FAILURE", traceback="Traceback ... ValueError: boom")
    backend.store_result(fresh, 1, "SUCCESS")
    try:
        ctx = JobContext(store, settings.replace(reconcile_after=60.0), backend_app)
        assert lost.reconcile(ctx) == 2
        task = store.get_task(tid)
        assert task["state"] == "SUCCESS" and task["result"] == "{'answer': 42}"
        assert [(e["state"], e["sources"]) for e in task["timeline"]] == [
            ("STARTED", ["signal"]),
            ("SUCCESS", ["reconcile"]),
        ]
        bad = store.get_task(failed)
        assert bad["state"] == "FAILURE" and "boom" in bad["exception"]
        assert store.get_task(unknown)["state"] == "STARTED"  # the backend knows nothing
        assert store.get_task(fresh)["state"] == "STARTED"  # too recent to ask
        assert lost.reconcile(ctx) == 0  # nothing left to correct
        # off by default
        assert lost.jobs(settings) == []
        assert [j.name for j in lost.jobs(settings.replace(reconcile_after=5.0))] == ["reconcile"]
    finally:
        for task_id in (tid, failed, fresh):
            backend.forget(task_id)


def test_reconcile_never_decodes_a_backend_that_accepts_pickle(store, settings, caplog):
    """A result backend accepting pickle: the serve process would unpickle what it
    holds, so reconciliation stays off (one warning), and the task stays as it was."""
    app = Celery(
        "pickled", broker=REDIS_URL, backend="redis://127.0.0.1:6379/1", set_as_current=False
    )
    app.conf.result_accept_content = ["json", "pickle"]
    tid = f"rp-{uuid.uuid4().hex}"
    store.apply([started(tid, time.time() - 120, "w@r")])
    app.backend.store_result(tid, 1, "SUCCESS")
    try:
        ctx = JobContext(store, settings.replace(reconcile_after=60.0), app)
        with caplog.at_level("WARNING", logger="monitor.lost"):
            assert lost.reconcile(ctx) == 0
            assert lost.reconcile(ctx) == 0
        warnings = [r for r in caplog.records if "reconciliation is off" in r.getMessage()]
        assert len(warnings) == 1 and "application/x-python-serialize" in warnings[0].getMessage()
        assert store.get_task(tid)["state"] == "STARTED"
    finally:
        app.backend.forget(tid)
        app.close()


def test_reconcile_batch_is_bounded_and_walks_on(store, settings, backend_app):
    now = time.time()
    ids = [f"rb-{i:03d}-{uuid.uuid4().hex[:6]}" for i in range(25)]
    store.apply([started(tid, now - 500 + i, "w@r") for i, tid in enumerate(ids)])
    ctx = JobContext(store, settings.replace(reconcile_after=60.0, reconcile_batch=10), backend_app)
    seen = []
    cursors: dict = {}
    for _ in range(3):
        seen.append(lost.candidates(store, now - 60, 10, cursors))
    assert [len(batch) for batch in seen] == [10, 10, 5]
    assert sum(seen, []) == ids  # oldest first, each once
    assert lost.candidates(store, now - 60, 10, cursors) == ids[:10]  # wraps around
    assert lost.reconcile(ctx) == 0  # none known to the backend: nothing recorded


def test_the_reconcile_job_runs_elected_in_serve_end_to_end(store, settings, backend_app):
    """``monitor serve -A app`` with MONITOR_RECONCILE_AFTER: the job runs on its own
    and the task's timeline says the correction came from the reconciliation."""
    from .helpers import ServeProcess, wait_for

    tid = f"rc-e2e-{uuid.uuid4().hex}"
    store.apply([started(tid, time.time() - 30, "w@r")])
    backend_app.backend.store_result(tid, 7, "SUCCESS")
    serve = ServeProcess(
        settings.redis_url,
        settings.prefix,
        env={
            "MONITOR_APP": "tests.workerapp",
            "TEST_RESULT_BACKEND": "redis://127.0.0.1:6379/1",
            "MONITOR_RECONCILE_AFTER": "5",
            "MONITOR_RECONCILE_INTERVAL": "0.2",
        },
    )
    try:
        serve.start()

        def corrected():
            response = serve.get(f"/api/v1/tasks/{tid}")
            return response is not None and response.ok and response.json()["state"] == "SUCCESS"

        wait_for(corrected, 20, 0.2, what=f"the task reconciled\n{serve.log()}")
        task = serve.get(f"/api/v1/tasks/{tid}").json()
        assert task["timeline"][-1]["sources"] == ["reconcile"]
        assert task["result"] == "7" and task["reconciled"] == "result backend"
        assert store.redis.get(store.keys.lease("reconcile"))  # held by the serve process
    finally:
        serve.stop()
        backend_app.backend.forget(tid)


def test_stuck_far_beyond_its_names_p99_through_the_real_history(store):
    """30 runs of ~0.1 s recorded by the write script's histograms: a run of the
    same name STARTED two minutes ago (over 10 x p99 and over P99_FLOOR) is stuck."""
    now = time.time()
    events = []
    for i in range(30):
        tid = f"fast-{i}"
        events.append(started(tid, now - 200 + i, "w@p", name="proj.quick"))
        events.append(
            TaskEvent(
                tid,
                "SUCCESS",
                now - 199.9 + i,
                "signal",
                "w@p",
                {"name": "proj.quick", "worker": "w@p", "runtime": 0.1},
            )
        )
    events += [
        started("slow", now - 120, "w@p", name="proj.quick"),
        started("rare", now - 120, "w@p", name="proj.rare"),  # no history: not judged
        beat("w@p", now),
    ]
    store.apply(events)
    page = lost.flagged_page(store, TaskQuery(), "stuck")
    assert [r["id"] for r in page["tasks"]] == ["slow"]
    assert "over 10 x its p99 runtime" in page["tasks"][0]["stuck_reason"]


def test_a_broker_that_is_away_costs_an_error_line_not_a_failed_report():
    from .helpers import free_port

    app = Celery("away", broker=f"redis://127.0.0.1:{free_port()}/0", set_as_current=False)
    app.conf.task_acks_late = True
    for _ in range(2):  # the second from the view's negative cache
        report = lost.broker_report(None, app, {})
        assert report["error"] == "broker unreadable: ConnectionError"
        assert [r["where"] for r in report["risks"]] == ["app conf"]
        assert report["redelivery"] == [] and report["unacked"] is None


# -- the API ------------------------------------------------------------------------------------
def test_api_tasks_flag_filter_and_row_fields(store, client):
    now = time.time()
    store.apply(
        [
            beat("alive@h", now),
            beat("dead@h", now - 100),
            started("on-dead", now - 5, "dead@h"),
            started("too-long", now - 100, "alive@h", time_limit=30),
            started("fine", now - 3, "alive@h", time_limit=30),
            TaskEvent("ok", "SUCCESS", now - 2, "signal", "dead@h", {"worker": "dead@h"}),
        ]
    )
    body = client.get("/api/v1/tasks?flag=lost").get_json()
    assert [r["id"] for r in body["tasks"]] == ["on-dead"] and body["tasks"][0]["lost"] is True
    body = client.get("/api/v1/tasks?flag=stuck").get_json()
    assert [r["id"] for r in body["tasks"]] == ["too-long"]
    assert "past its time limit" in body["tasks"][0]["stuck_reason"]
    # the plain list carries the flags on every row
    rows = {r["id"]: r for r in client.get("/api/v1/tasks").get_json()["tasks"]}
    assert {k: (r["lost"], r["stuck"]) for k, r in rows.items()} == {
        "on-dead": (True, False),
        "too-long": (False, True),
        "fine": (False, False),
        "ok": (False, False),
    }
    detail = client.get("/api/v1/tasks/too-long").get_json()
    assert detail["stuck"] is True and detail["lost"] is False and "broker" in detail
    assert client.get("/api/v1/tasks/on-dead").get_json()["lost"] is True
    for bad in ("LOST", "x" * 900, "stuck;drop"):
        response = client.get("/api/v1/tasks", query_string={"flag": bad})
        assert response.status_code == 400 and "flag must be one of" in response.get_json()["error"]
    response = client.get("/api/v1/tasks?flag=lost&sort=name")
    assert response.status_code == 400 and "drop sort and q" in response.get_json()["error"]
    spec = client.get("/api/openapi.json").get_json()
    assert "/api/v1/risks" in spec["paths"]
    params = {p["name"] for p in spec["paths"]["/api/v1/tasks"]["get"]["parameters"]}
    assert "flag" in params


def test_live_task_list_pushes_carry_the_flags(settings, store, app):
    """A row pushed to a task-list room says lost like the API's rows do."""
    from .helpers import wait_for

    now = time.time()
    store.apply([beat("dead@live", now - 100), beat("alive@live", now)])
    ext = app.extensions["monitor"]
    client = ext.socketio.test_client(app)
    try:
        ack = client.emit("subscribe", {"room": "tasks", "filters": {}}, callback=True)
        assert ack["ok"], ack
        wait_for(lambda: ext.hub.redis_ok, 10, 0.05, "the tailer to be reading")
        store.apply(
            [started("pushed-dead", now, "dead@live"), started("pushed-ok", now, "alive@live")]
        )
        rows: dict[str, dict] = {}

        def pushed():
            for message in client.get_received():
                if message["name"] == "tasks":
                    rows.update({r["id"]: r for r in message["args"][0]["rows"]})
            return {"pushed-dead", "pushed-ok"} <= rows.keys()

        wait_for(pushed, 15, 0.1, "the rows pushed")
        assert rows["pushed-dead"]["lost"] is True and rows["pushed-ok"]["lost"] is False
        assert rows["pushed-ok"]["stuck"] is False
    finally:
        client.disconnect()
        ext.hub.stop()


def test_hostile_unacked_entries_cost_nothing_but_their_own_row(redis_url):
    """Whatever sits in the broker's unacked hash (not JSON, wrong shapes, huge or
    non-text ids, a tag without a message): rows without ids, never an error."""
    import redis as redis_lib

    prefix = f"mth-{uuid.uuid4().hex[:8]}:"
    r = redis_lib.Redis.from_url(redis_url)
    now = time.time()
    values = {
        "garbage": b"\xff\xfe not json",
        "list": "[1, 2, 3]",
        "headers-list": '[{"headers": [1]}, "", "q"]',
        "long-id": '[{"headers": {"id": "' + "x" * 5000 + '", "eta": 12}}, "", "q"]',
        "deep": "[" * 10_000 + "]" * 10_000,
        "eta-junk": '[{"headers": {"id": "ok", "eta": "not a time"}}, "", "q"]',
    }
    try:
        for i, (tag, value) in enumerate([*values.items(), ("missing", None)]):
            r.zadd(prefix + "unacked_index", {tag: now - 5000 + i})
            if value is not None:
                r.hset(prefix + "unacked", tag, value)
        r.zadd(prefix + "unacked_index", {"nan-score": "-inf"})
        app = Celery("h", broker=redis_url, set_as_current=False)
        app.conf.broker_transport_options = {"visibility_timeout": 60, "global_keyprefix": prefix}
        report = lost.broker_report(None, app, {}, now=now)
        assert report["error"] is None
        ids = [e["task_id"] for e in report["redelivery"]]
        assert "ok" in ids and len(ids) == 7  # the -inf delivery time is no time: skipped
        assert all(i is None or len(i) <= 512 for i in ids)
        assert report["eta_beyond_visibility"] == []
    finally:
        r.delete(prefix + "unacked_index", prefix + "unacked")
        r.close()
