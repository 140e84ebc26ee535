"""The dashboard in a real browser: Debian's chromium driven by Playwright, against a
real ``monitor serve`` process, a real Redis and a real prefork worker.

Screenshots for the README are written to docs/screenshots/.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
from celery import Celery

import monitor.signals
from monitor.config import Settings
from monitor.model import TaskEvent, WorkerEvent
from monitor.store import Store, redis_client

from .helpers import (
    CSP_PROBE,
    IN_CI,
    REDIS_URL,
    REVIEW_SHOTS,
    ROOT,
    ServeProcess,
    WorkerProcess,
    chromium,
    clean_env,
    free_port,
    http_get,
    open_page,
    shot,
    stop_process,
    wait_for,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
BROKER = "redis://127.0.0.1:6379/9"
T = "tests.workerapp."
HOSTILE = "<img src=x onerror=window.__pwned=1>"


@pytest.fixture(scope="module")
def env():
    from .helpers import port_open

    if not port_open("127.0.0.1", 6379):
        pytest.fail("Redis is required") if IN_CI else pytest.skip("Redis is not running")
    prefix = "mb-" + uuid.uuid4().hex[:8]
    settings = Settings(redis_url=REDIS_URL, prefix=prefix)
    store = Store(redis_client(REDIS_URL), settings)
    serve = ServeProcess(REDIS_URL, prefix, broker=BROKER).start()
    worker = WorkerProcess(
        broker=BROKER,
        queue=f"q-{prefix}",
        prefix=prefix,
        hooks=True,
        events=True,
        hostname=f"shop-worker@{prefix}",
    ).start()
    app = Celery("producer", broker=BROKER)
    app.conf.update(task_default_queue=f"q-{prefix}", task_send_sent_event=True)
    monitor.signals.connect(app, redis_url=REDIS_URL, prefix=prefix)
    try:
        with chromium() as browser:
            yield {
                "store": store,
                "serve": serve,
                "worker": worker,
                "app": app,
                "browser": browser,
                "prefix": prefix,
            }
    finally:
        monitor.signals.disconnect()
        app.close()
        worker.stop()
        serve.stop()
        store.delete_all()
        store.close()


@pytest.fixture
def page(env):
    page = open_page(env["browser"], 1366, 768)
    page.dialogs = []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    yield page
    page.context.close()


def live(page):
    page.wait_for_selector("#conn.conn-ok", timeout=20_000)


def finished(env, task_id, states=("SUCCESS",)):
    store = env["store"]
    return wait_for(lambda: (t := store.get_task(task_id)) and t["state"] in states and t, 60)


def test_overview_loads_live_without_errors(env, page):
    send = env["app"].send_task
    results = [send(T + "add", (i, i)) for i in range(8)] + [send(T + "fail", ("bad input",))]
    results.append(send(T + "retry_once"))
    for r in results:
        finished(env, r.id, ("SUCCESS", "FAILURE"))
    page.goto(env["serve"].url + "/")
    live(page)
    # The history charts (charts.js, uPlot on a canvas) drew the tasks above: the
    # throughput chart's succeeded series sums to at least the 8 additions.
    box = page.locator('[data-chart="throughput"].chart-box[data-sums]')
    box.wait_for()
    assert float(box.get_attribute("data-sums").split(",")[1]) >= 8
    assert (
        page.locator(".stat").first.inner_text().startswith("WORKERS ONLINE")
        or "Workers online" in page.locator(".stat").first.inner_text()
    )
    assert "tests.workerapp.add" in page.locator("main").inner_text()
    shot(page, "overview")
    page.emulate_media(color_scheme="dark")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(18, 21, 27)"
    shot(page, "overview-dark")
    assert page.errors == []


def test_task_sent_after_load_appears_and_changes_state_live(env, page):
    page.goto(env["serve"].url + "/tasks")
    live(page)
    page.wait_for_selector("table.tasks")
    result = env["app"].send_task(T + "sleep", (1.5,))
    row = page.locator(f'tr[data-id="{result.id}"]')
    row.wait_for(timeout=20_000)
    # it arrives before it finishes, then turns SUCCESS without a reload
    page.wait_for_function(
        "id => { const r = document.querySelector(`tr[data-id='${id}'] .badge`);"
        " return r && r.textContent === 'SUCCESS'; }",
        arg=result.id,
        timeout=30_000,
    )
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    shot(page, "tasks")
    assert page.errors == []


def test_task_page_shows_timeline_and_progress(env, page):
    result = env["app"].send_task(T + "progress", (4,))
    finished(env, result.id)
    page.goto(env["serve"].url + f"/task/{result.id}")
    live(page)
    page.wait_for_selector("text=Timeline")
    text = page.locator("main").inner_text()
    for state in ("PENDING", "RECEIVED", "STARTED", "PROGRESS", "SUCCESS"):
        assert state in text
    assert page.locator(".progress").get_attribute("aria-valuenow") == "100"
    assert "signal + event" in text or "event + signal" in text  # both sources, stored once
    shot(page, "task", full_page=True)
    assert page.errors == []


def test_filters_and_search_are_kept_in_the_url(env, page):
    failed = env["app"].send_task(T + "fail", ("needle-in-haystack",))
    finished(env, failed.id, ("FAILURE",))
    page.goto(env["serve"].url + "/tasks")
    page.wait_for_selector("form.filters")
    page.select_option("select[name=state]", "FAILURE")
    page.wait_for_url("**state=FAILURE**")
    page.wait_for_selector("tbody tr")
    badges = page.locator("tbody .badge").all_inner_texts()
    assert badges and set(badges) == {"FAILURE"}
    page.fill("input[name=q]", "needle-in-haystack")
    page.press("input[name=q]", "Enter")
    page.wait_for_url("**q=needle-in-haystack**")
    page.wait_for_selector(f'tr[data-id="{failed.id}"]')
    assert page.locator("tbody tr").count() == 1
    # bookmarkable: a fresh load of the URL shows the same
    page.reload()
    page.wait_for_selector(f'tr[data-id="{failed.id}"]')
    assert page.input_value("input[name=q]") == "needle-in-haystack"
    assert page.errors == []


def test_hostile_data_renders_as_text(env, page):
    store, now = env["store"], time.time()
    store.apply(
        [
            TaskEvent(
                "hostile-1",
                "RECEIVED",
                now,
                "event",
                "evil",
                {
                    "name": HOSTILE,
                    "args": "('<script>window.__pwned=2</script>',)",
                    "worker": "evil",
                },
            ),
            TaskEvent(
                "hostile-1",
                "FAILURE",
                now + 1,
                "event",
                "evil",
                {"exception": "<script>window.__pwned=3</script>", "traceback": HOSTILE},
            ),
        ]
    )
    page.goto(env["serve"].url + "/task/hostile-1")
    page.wait_for_selector("text=Timeline")
    page.goto(env["serve"].url + "/tasks")
    page.wait_for_selector('tr[data-id="hostile-1"]')
    assert HOSTILE in page.locator('tr[data-id="hostile-1"]').inner_text()
    page.goto(env["serve"].url + "/task/hostile-1")
    page.wait_for_selector("text=Traceback")
    text = page.locator("main").inner_text()
    assert HOSTILE in text and "<script>window.__pwned=3</script>" in text
    assert page.evaluate("window.__pwned") is None
    assert page.locator("main img").count() == 0 and page.locator("main script").count() == 0
    assert page.dialogs == []


def test_workers_page_and_a_worker_going_offline(env, page):
    prefix = env["prefix"]
    extra = WorkerProcess(
        broker=BROKER,
        queue=f"q2-{prefix}",
        prefix=prefix,
        hooks=True,
        hostname=f"batch-worker@{prefix}",
    ).start()
    try:
        page.goto(env["serve"].url + "/workers")
        row = page.locator(f'tr[data-host="batch-worker@{prefix}"]')
        row.wait_for(timeout=20_000)
        page.wait_for_function(
            "h => document.querySelector(`tr[data-host='${h}'] .status`)?.textContent === 'online'",
            arg=f"batch-worker@{prefix}",
            timeout=20_000,
        )
        shot(page, "workers")
    finally:
        extra.stop()
    page.wait_for_function(
        "h => document.querySelector(`tr[data-host='${h}'] .status`)?.textContent === 'offline'",
        arg=f"batch-worker@{prefix}",
        timeout=30_000,
    )
    assert page.errors == []


def test_page_reconnects_after_the_server_restarts(env, page):
    page.goto(env["serve"].url + "/tasks")
    live(page)
    env["serve"].stop()
    page.wait_for_selector("#conn.conn-down", timeout=20_000)
    env["serve"].start()  # same port
    live(page)
    result = env["app"].send_task(T + "add", (40, 2))
    page.locator(f'tr[data-id="{result.id}"]').wait_for(timeout=30_000)
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1


#: Values no formatter may choke on: years 300,000 ahead, ±1e308, NaN, text, objects.
HOSTILE_VALUES = [
    "9467280000000",  # year ~300,000: beyond what a JavaScript Date holds
    9.4e12,
    "-1e308",
    1e308,
    "NaN",
    "Infinity",
    "-0",
    "",
    "not a time <b>x</b>",
    None,
    True,
    [1, 2],
    {"a": {"b": 1}},
    "\ud800",
]


def test_formatters_are_total(env, page):
    page.goto(env["serve"].url + "/tasks")
    page.wait_for_selector("table.tasks")
    results = page.evaluate(
        """values => values.flatMap(v => ["fmtTime", "fmtDuration", "fmtNum", "ago", "raw", "enc"]
            .map(f => { try { return typeof window.monitorFormat[f](v) === "string"; }
                        catch (e) { return f + ": " + e; } }))
            .concat(values.flatMap(a => values.map(b => {
              try { return typeof window.monitorFormat.fmtDelta(a, b, a) === "string"; }
              catch (e) { return "fmtDelta: " + e; } })))""",
        HOSTILE_VALUES,
    )
    assert set(results) == {True}, [r for r in results if r is not True]
    assert page.evaluate("window.monitorFormat.fmtDelta(10, 7)") == "clocks disagree by 3.00 s"
    assert page.evaluate("window.monitorFormat.fmtDelta(10, 12.5)") == "+2.50 s"
    assert page.errors == []


def write_task(store, task_id, score, **fields):
    """A task hash written as is, bypassing the store's checks: any stored value."""
    pipe = store.redis.pipeline()
    pipe.hset(store.keys.task(task_id), mapping=fields)
    pipe.zadd(store.keys.tasks, {task_id: score})
    pipe.execute()


def test_tasks_page_survives_any_stored_time(env, page):
    store, now = env["store"], time.time()
    hostile = {
        "far-future": {"received": "9467280000000", "timestamp": "9467280000000"},
        "far-past": {"received": "-1e308", "sent": "-8.64e12", "runtime": "-1e308"},
        "not-a-number": {"received": "NaN", "runtime": "NaN", "timestamp": "Infinity"},
        "text-times": {"received": "<b>yesterday</b>", "runtime": "fast", "sent": "[1, 2]"},
        "huge-runtime": {"received": str(now), "runtime": "1e308", "retries": "1e400"},
        "object-args": {"received": str(now), "args": '{"a": [1, {"b": null}]}', "kwargs": "{"},
    }
    for i, (task_id, fields) in enumerate(hostile.items()):
        write_task(
            store,
            "hostile-time-" + task_id,
            9.4e12 if task_id == "far-future" else now + i,
            state="STARTED" if i % 2 else "SUCCESS",
            name=HOSTILE,
            worker="shop-worker@" + env["prefix"],
            **fields,
        )
    normal = env["app"].send_task(T + "add", (1, 2))
    finished(env, normal.id)
    page.goto(env["serve"].url + "/tasks")
    page.wait_for_selector(f'tr[data-id="{normal.id}"]')
    for task_id in hostile:
        # the normal row may come first by a live push, before the list is drawn
        page.wait_for_selector(f'tr[data-id="hostile-time-{task_id}"]', timeout=10_000)
        assert page.locator(f'tr[data-id="hostile-time-{task_id}"]').count() == 1, task_id
    assert page.locator("tr.bad-row").count() == 0  # every row drawn, not just survived
    future = page.locator('tr[data-id="hostile-time-far-future"]').inner_text()
    assert "9467280000000 (year 301,976)" in future  # the raw value, not "Invalid Date"
    assert "<b>yesterday</b>" in page.locator('tr[data-id="hostile-time-text-times"]').inner_text()
    assert "Invalid" not in page.locator("table.tasks").inner_text()
    assert page.evaluate("window.__pwned") is None
    shot(page, "tasks-hostile-times", full_page=True, directory=REVIEW_SHOTS)
    for task_id in hostile:
        page.goto(env["serve"].url + f"/task/hostile-time-{task_id}")
        page.wait_for_selector("text=Timeline")
        assert "Invalid" not in page.locator("main").inner_text()
    assert page.errors == []


def test_task_page_says_when_times_were_clamped_or_clocks_disagree(env, page):
    store, now = env["store"], time.time()
    worker = f"lost-worker@{env['prefix']}"
    tid = "skewed-" + uuid.uuid4().hex[:8]
    base = {"name": "tests.workerapp.sleep", "worker": worker}
    store.apply(
        [
            # the worker's last heartbeat was an hour ago: offline by Celery's rule
            WorkerEvent(worker, "heartbeat", now - 3600, "event", {"freq": 2.0}),
            TaskEvent(tid, "PENDING", now, "signal", "producer-host", dict(base)),
            # the worker's clock runs 4 s behind the producer's
            TaskEvent(tid, "RECEIVED", now - 4, "event", worker, dict(base)),
            # and a broken clock reports the start 300,000 years ahead
            TaskEvent(tid, "STARTED", now + 300_000 * 365.25 * 86400, "event", worker, dict(base)),
        ]
    )
    stored = store.get_task(tid)
    assert any(e.get("reported_timestamp") for e in stored["timeline"]), stored["timeline"]
    assert any(e.get("skew") for e in stored["timeline"]), stored["timeline"]
    page.goto(env["serve"].url + f"/task/{tid}")
    page.wait_for_selector("text=Timeline")
    timeline = page.locator("table:has(th:text('Since previous'))")
    assert "clocks disagree by 4" in timeline.inner_text()
    durations = timeline.locator("tbody td.num").all_inner_texts()
    assert not [d for d in durations if d.startswith(("−", "-", "+−", "+-"))], durations
    assert "reported" in page.locator(".clamped").first.inner_text()
    assert page.locator(".clamp-note").count() == 1 and page.locator(".skew-note").count() == 1
    assert page.locator(".state-lost").first.inner_text() == "worker offline: this task may be lost"
    shot(page, "task-clock-skew", full_page=True, directory=REVIEW_SHOTS)
    # A worker whose clock says year 300,000: listed at its arrival, the report beside it.
    ahead = f"ahead-worker@{env['prefix']}"
    store.apply([WorkerEvent(ahead, "heartbeat", now + 9.4e12, "event", {"freq": 2.0})])
    assert store.worker(ahead).get("last_heartbeat_reported")
    page.goto(env["serve"].url + "/workers")
    row = page.locator(f'tr[data-host="{ahead}"]')
    row.wait_for(timeout=20_000)
    assert "reported" in row.locator(".clamped").inner_text()
    assert "online" in row.inner_text()
    assert page.errors == []


def test_running_task_on_a_live_worker_has_no_lost_badge(env, page):
    result = env["app"].send_task(T + "sleep", (3,))
    finished(env, result.id, ("STARTED",))
    page.goto(env["serve"].url + f"/task/{result.id}")
    page.wait_for_selector("text=Timeline")
    assert page.locator(".state-lost").count() == 0
    detail = json.loads(
        http_get(env["serve"].url + f"/api/v1/tasks/{result.id}").text  # the page's source
    )
    assert detail["worker_online"] is True
    assert page.errors == []


#: A host application with a Flask-SocketIO server of its own, its own handlers,
#: and the monitor mounted on that server (``socketio=``), served by gevent.
HOST_APP = """
from gevent import monkey
monkey.patch_all()
import sys
from flask import Flask
from flask_socketio import SocketIO, emit
from gevent import pywsgi
from monitor import init_app

port, redis_url, prefix = int(sys.argv[1]), sys.argv[2], sys.argv[3]
app = Flask("host")
sio = SocketIO(async_mode="gevent")

@sio.on("hello")
def hello(data):
    emit("hello_back", data)

@sio.on("subscribe")
def subscribe(data):
    return "the host's own subscribe"

init_app(app, url_prefix="/ops", socketio=sio, redis_url=redis_url, prefix=prefix)
sio.init_app(app)
pywsgi.WSGIServer(("127.0.0.1", port), app, log=None).serve_forever()
"""


def test_dashboard_on_a_hosts_socketio_server(env, page):
    import socketio

    port = free_port()
    host = subprocess.Popen(
        [sys.executable, "-c", HOST_APP, str(port), REDIS_URL, env["prefix"]],
        cwd=ROOT,
        env=clean_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = socketio.Client()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_get(url + "/ops/api/v1/workers") is not None, 30, 0.1, "host app")
        page.goto(url + "/ops/tasks")
        live(page)
        tid = "hosted-" + uuid.uuid4().hex[:8]
        env["store"].apply([TaskEvent(tid, "SUCCESS", time.time(), "signal", "h", {"name": "x"})])
        page.locator(f'tr[data-id="{tid}"]').wait_for(timeout=20_000)  # pushed live
        # The host's own handlers on its default namespace keep answering.
        got = []
        client.on("hello_back", got.append)
        client.connect(url, transports=["websocket"], wait_timeout=10)
        client.emit("hello", {"n": 1})
        wait_for(lambda: got == [{"n": 1}], 10, what="the host's hello_back")
        assert client.call("subscribe", {"room": "overview"}) == "the host's own subscribe"
        assert page.errors == []
    finally:
        client.disconnect()
        stop_process(host)
    assert "Traceback" not in host.stderr.read()


def test_without_users_pages_are_read_only_and_honour_the_csp(env):
    """No user configured: no action button anywhere, one line saying how to enable
    them, and no page (actions' pages included) breaks the Content-Security-Policy."""
    page = open_page(env["browser"], 1366, 768, init_script=CSP_PROBE)
    reported = page.errors
    try:
        failed = env["app"].send_task(T + "fail", ("no users",))
        finished(env, failed.id, ("FAILURE",))
        host = f"shop-worker@{env['prefix']}"
        for path in (
            "/",
            "/tasks",
            f"/task/{failed.id}",
            "/workers",
            f"/worker/{host}",
            "/bulk",
            "/audit",
            "/login",
        ):
            response = page.goto(env["serve"].url + path)
            assert response.status == 200, path
            assert "script-src 'self'" in response.headers["content-security-policy"], path
            page.wait_for_function("() => document.querySelector('#main').children.length > 0")
            if path != "/login":
                live(page)
            if path.startswith(("/task/", "/worker/", "/bulk")):
                line = page.locator(".refusal")
                line.wait_for()
                assert "users add" in line.inner_text(), path
            if path.startswith("/worker/"):
                page.wait_for_selector(f'tr[data-host="{host}"]')
            if path.startswith("/task/"):
                page.wait_for_selector("text=Timeline")
            page.wait_for_load_state("networkidle")
            assert page.locator("main button[data-action]").count() == 0, path
            assert page.locator(".actions-bar, .worker-actions, dialog").count() == 0, path
            assert page.locator(".who, form.logout, .login-link").count() == 0, path
            assert page.evaluate("window.__csp") == [], path
        assert "Bulk" not in page.locator("header nav").inner_text()  # nobody can act
        assert reported == []
    finally:
        page.context.close()
