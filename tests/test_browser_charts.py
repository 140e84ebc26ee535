"""History charts in a real browser: Debian's chromium driven by Playwright against a real
``monitor serve``, a real Redis and a real prefork worker (one of each for the module).

The task-name page, the overview and a worker page draw their charts from
GET /api/v1/history; each test checks the charts hold the API's points for the
window shown, switches windows, and that nothing breaks the CSP or logs an error.
Screenshots for the README go to docs/screenshots/.
"""

from __future__ import annotations

import time
import uuid
from urllib.parse import quote

import pytest
from celery import Celery

import monitor.signals
from monitor.config import Settings
from monitor.store import RUNTIME_BUCKETS, Store, redis_client

from .helpers import (
    CSP_PROBE,
    IN_CI,
    REDIS_URL,
    ServeProcess,
    WorkerProcess,
    api_task,
    chromium,
    open_page,
    port_open,
    require_chromium,
    shot,
    wait_for,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
BROKER = "redis://127.0.0.1:6379/9"
T = "tests.workerapp."
HOSTILE = "<img src=x onerror=window.__pwned=1>"
CHARTS = ("throughput", "failures", "runtime", "queue_wait")
#: Points a window holds by the history contract (its span over its step).
POINTS = {"15m": 15, "1h": 60, "24h": 24, "7d": 168}


@pytest.fixture(scope="module")
def env():
    if not port_open("127.0.0.1", 6379):
        pytest.fail("Redis is required") if IN_CI else pytest.skip("Redis is not running")
    require_chromium()
    prefix = "mc-" + uuid.uuid4().hex[:8]
    store = Store(redis_client(REDIS_URL), Settings(redis_url=REDIS_URL, prefix=prefix))
    serve = ServeProcess(REDIS_URL, prefix).start()
    host = f"chart-worker@{prefix}"
    worker = WorkerProcess(
        broker=BROKER, queue=f"q-{prefix}", prefix=prefix, hooks=True, events=True, hostname=host
    ).start()
    app = Celery("producer", broker=BROKER)
    app.conf.update(task_default_queue=f"q-{prefix}", task_send_sent_event=True)
    monitor.signals.connect(app, redis_url=REDIS_URL, prefix=prefix)
    try:
        # Real tasks through the real worker: successes, failures of two kinds, a retry.
        sent = [app.send_task(T + "add", (i, i)) for i in range(6)]
        sent += [app.send_task(T + "fail", (f"bad input {i}",)) for i in range(3)]
        sent.append(app.send_task(T + "retry_once"))
        for r in sent:
            wait_for(
                lambda r=r: (t := store.get_task(r.id)) and t["state"] in ("SUCCESS", "FAILURE"),
                60,
                what=f"task {r.id} finished",
            )
        # A hostile task name, stored through the real store (the write script).
        now = time.time()
        store.apply(
            [
                api_task(
                    f"h{i}",
                    "FAILURE" if i % 2 else "SUCCESS",
                    now - 30 + i,
                    HOSTILE,
                    host,
                    runtime=0.01 * i,
                    exception=f"{HOSTILE}('x')",
                )
                for i in range(4)
            ]
        )
        with chromium() as browser:
            yield {
                "store": store,
                "serve": serve,
                "browser": browser,
                "host": host,
                "prefix": prefix,
                "app": app,
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
    page = open_page(env["browser"], 1280, 900, init_script=CSP_PROBE)
    errors = page.errors
    page.on("dialog", lambda d: (errors.append("dialog " + d.message), d.dismiss()))
    yield page
    assert page.evaluate("window.__csp") == []
    assert page.evaluate("window.__pwned === undefined")
    assert errors == []
    page.context.close()


def api_points(env, window, **params):
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    response = env["serve"].get(f"/api/v1/history?window={window}&{query}")
    assert response.ok, response.text
    return response.json()["points"]


def charts_drawn(page, env, window, charts=CHARTS, **params):
    """Wait for the history panel of ``window``; check each chart holds the window's
    points and the failures chart the API's failures. Returns the API's points."""
    page.wait_for_selector(f'[data-window="{window}"][data-loaded="true"]', timeout=20_000)
    points = api_points(env, window, **params)
    assert len(points) == POINTS[window], (window, len(points))
    for chart in charts:
        box = page.locator(f'[data-chart="{chart}"].chart-box')
        box.wait_for()
        assert int(box.get_attribute("data-points")) == POINTS[window], (chart, window)
        assert page.locator(f'[data-chart="{chart}"] canvas').count() == 1
    failed = page.locator('[data-chart="failures"].chart-box').get_attribute("data-sums")
    assert float(failed.split(",")[0]) == sum(p["failed"] for p in points), (window, failed)
    assert page.locator('[data-chart="queue_wait"]').count() == ("queue_wait" in charts)
    return points


def hover_first_chart(page):
    """Move over the throughput chart: uPlot's legend shows that step's values."""
    over = page.locator('[data-chart="throughput"] .u-over')
    box = over.bounding_box()
    page.mouse.move(box["x"] + box["width"] - 4, box["y"] + box["height"] / 2)
    values = page.locator('[data-chart="throughput"] .u-legend .u-value')
    wait_for(lambda: values.first.inner_text() not in ("", "—", "--"), 5, what="legend values")


def test_task_name_page_counts_failures_and_switches_windows(env, page):
    name = T + "fail"
    page.goto(env["serve"].url + "/task-name/" + quote(name, safe=""))
    page.wait_for_selector('main[data-loaded="true"]', timeout=20_000)
    assert page.locator(".task-name-title").inner_text() == "Task " + name
    points = charts_drawn(page, env, "1h", name=name)
    assert sum(p["failed"] for p in points) == 3
    assert sum(p["succeeded"] for p in points) == 0
    group = page.locator('tr[data-exception="ValueError"]')
    group.wait_for()
    assert group.locator("td").nth(1).inner_text() == "3"
    assert "bad input" in group.locator("td.example").inner_text()
    bars = page.locator('[data-chart="runtime-distribution"].chart-box')
    assert bars.get_attribute("data-points") == str(len(RUNTIME_BUCKETS) + 1)  # and +Inf
    assert float(bars.get_attribute("data-sums")) == 3  # the three failures' runtimes
    failed = page.locator('.stat:has(.label:text-is("Failed")) .value')
    assert failed.inner_text() == "3"
    hover_first_chart(page)
    shot(page, "task-name", full_page=True)
    for window in ("15m", "24h", "7d"):
        page.click(f'a[data-window="{window}"]')
        charts_drawn(page, env, window, name=name)
        assert f"window={window}" in page.url
    # The window is kept in the address: a reload draws the same one.
    page.reload()
    charts_drawn(page, env, "7d", name=name)


def test_hostile_task_name_shows_as_text(env, page):
    page.goto(env["serve"].url + "/task-name/" + quote(HOSTILE, safe=""))
    page.wait_for_selector('main[data-loaded="true"]', timeout=20_000)
    assert page.locator(".task-name-title").inner_text() == "Task " + HOSTILE
    charts_drawn(page, env, "1h", name=HOSTILE)
    group = page.locator("td.example a").first
    assert group.inner_text() == f"{HOSTILE}('x')"
    assert page.locator("main img").count() == 0
    assert page.title().startswith("Task name " + HOSTILE)


def test_unknown_task_name_says_so(env, page):
    page.goto(env["serve"].url + "/task-name/no.such.task")
    page.wait_for_selector('main[data-loaded="error"]', timeout=20_000)
    assert "unknown task name" in page.locator("main .error").first.inner_text()
    page.errors.clear()  # the 404 the page reported is the point


def test_overview_charts_switch_windows(env, page):
    page.goto(env["serve"].url + "/")
    page.wait_for_selector("#conn.conn-ok", timeout=20_000)
    points = charts_drawn(page, env, "1h")
    assert sum(p["failed"] for p in points) >= 3 + 2  # the worker's and the stored ones
    # The overview's name tables link to the task-name pages.
    link = page.locator(f'main a[href$="/task-name/{quote(T + "fail", safe="")}"]').first
    link.wait_for()
    hover_first_chart(page)
    shot(page, "overview-charts", full_page=True)
    page.click('a[data-window="24h"]')
    charts_drawn(page, env, "24h")
    page.click('a[data-window="15m"]')
    charts_drawn(page, env, "15m")
    page.emulate_media(color_scheme="dark")
    page.click('a[data-window="1h"]')
    charts_drawn(page, env, "1h")
    shot(page, "overview-charts-dark")


def test_worker_page_charts_its_own_history(env, page):
    host = env["host"]
    page.goto(env["serve"].url + "/worker/" + quote(host, safe=""))
    page.wait_for_selector("#conn.conn-ok", timeout=20_000)
    points = charts_drawn(page, env, "1h", charts=CHARTS[:3], worker=host)
    assert sum(p["succeeded"] for p in points) >= 6
    page.click('a[data-window="7d"]')
    charts_drawn(page, env, "7d", charts=CHARTS[:3], worker=host)


def test_charts_follow_new_tasks_live(env, page):
    """A task run after the page loaded reaches the charts by a push, no reload."""
    name = T + "add"
    page.goto(env["serve"].url + "/task-name/" + quote(name, safe="") + "?window=15m")
    page.wait_for_selector("#conn.conn-ok", timeout=20_000)
    charts_drawn(page, env, "15m", name=name)
    box = page.locator('[data-chart="throughput"].chart-box')

    def succeeded() -> float:
        return float(box.get_attribute("data-sums").split(",")[1])

    before = succeeded()
    env["app"].send_task(T + "add", (40, 2))
    wait_for(lambda: succeeded() == before + 1, 30, what="the pushed success in the chart")
    assert int(page.locator("[data-pushes]").get_attribute("data-pushes")) >= 1
    assert int(box.get_attribute("data-points")) == POINTS["15m"]
    # The counts follow too (read again with a push, at most every 10 s).
    page.wait_for_selector(
        f'.stat:has(.label:text-is("Succeeded")) .value:text-is("{int(before) + 1}")',
        timeout=30_000,
    )
