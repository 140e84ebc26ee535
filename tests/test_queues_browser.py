"""Queues end to end: a real ``monitor serve`` (its elected sampler), a real
prefork worker consuming one queue of a private Redis broker, a load waiting in
another queue nobody consumes (priority messages included), a queue whose name is
markup, the API and the Queues page in Chromium: its history charts (charts.js,
uPlot) hold the API's samples for each window and follow new ones live
(screenshot in docs/screenshots/queues.png)."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest
import redis
from celery import Celery

import monitor.signals

from .helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    CSP_PROBE,
    REDIS_URL,
    ROOT,
    RedisServer,
    ServeProcess,
    WorkerProcess,
    require_chromium,
    wait_for,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SHOT = ROOT / "docs" / "screenshots" / "queues.png"
#: A queue name is whatever a producer routed to: markup must show as text.
HOSTILE = "<img src=x onerror=alert(1)>"
#: Steps a history window spans (its seconds over its step): the charts' x values.
SLOTS = {"15m": 15, "1h": 60, "24h": 24, "7d": 168}
CHARTS = ("depth", "oldest_age")


@pytest.fixture(scope="module")
def cluster():
    prefix = "mq-" + uuid.uuid4().hex[:8]
    broker = RedisServer().start()
    busy, idle = f"busy-{prefix}", f"backlog-{prefix}"
    serve = worker = None
    try:
        worker = WorkerProcess(
            broker=broker.url, queue=busy, prefix=prefix, hostname=f"qw@{prefix}"
        ).start()
        serve = ServeProcess(
            REDIS_URL, prefix, broker=broker.url, env={"MONITOR_QUEUES_INTERVAL": "0.5"}
        ).start()
        app = Celery("producer", broker=broker.url)
        app.conf.broker_connection_retry_on_startup = True
        monitor.signals.connect(app, redis_url=REDIS_URL, prefix=prefix)
        try:
            for i in range(12):
                app.send_task("tests.workerapp.add", (i, i), queue=idle, priority=i % 10)
            app.send_task("tests.workerapp.add", (1, 2), queue=busy)
            app.send_task("tests.workerapp.add", (3, 4), queue=HOSTILE)
        finally:
            monitor.signals.disconnect()
        yield {"serve": serve, "busy": busy, "idle": idle, "broker": broker, "prefix": prefix}
    finally:
        if serve is not None:
            serve.stop()
        if worker is not None:
            worker.stop()
        broker.stop()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)


def _rows(serve):
    response = serve.get("/api/v1/queues")
    if response is None or not response.ok:
        return {}
    return {q["name"]: q for q in response.json()["queues"]}


def test_sampler_in_serve_sees_backlog_consumers_and_age(cluster):
    serve, busy, idle = cluster["serve"], cluster["busy"], cluster["idle"]
    independent = redis.Redis.from_url(cluster["broker"].url)
    expected = sum(independent.llen(k) for k in independent.scan_iter(idle + "*"))
    assert expected == 12

    def sampled():
        rows = _rows(serve)
        return (
            rows.get(idle, {}).get("depth") == expected
            and rows.get(busy, {}).get("consumers") == 1
            and rows.get(idle, {}).get("oldest_age") is not None
        )

    wait_for(sampled, 30, 0.2, what="the sampler's figures")
    rows = _rows(serve)
    assert rows[idle]["consumers"] == 0
    assert rows[idle]["sources"]["oldest_age"] == "broker"
    assert "publish" in rows[idle]["seen"] and "workers" in rows[busy]["seen"]
    history = serve.get(f"/api/v1/queues/{idle}/history?window=15m").json()
    assert history["points"] and history["points"][-1]["depth"] == expected

    def waited():  # the one task the worker ran (received - sent)
        body = serve.get("/api/v1/queues?window=15m").json()
        return [r for r in body["queue_wait"] or () if r["name"] == "tests.workerapp.add"]

    (wait,) = wait_for(waited, 20, 0.2, what="queue wait of tests.workerapp.add")
    assert wait["count"] == 1 and wait["p50"] is not None and wait["p50"] >= 0


def _chart_state(page):
    """Per chart: (points, values drawn, sum of the values), as the page holds them."""
    return {
        chart: (
            int(page.get_attribute(f'[data-chart="{chart}"].chart-box', "data-points")),
            int(page.get_attribute(f'[data-chart="{chart}"].chart-box', "data-values")),
            float(page.get_attribute(f'[data-chart="{chart}"].chart-box', "data-sums")),
        )
        for chart in CHARTS
    }


def _history_answers(page):
    """The history answers the page got, newest last (recorded from its first use)."""
    if not hasattr(page, "history_answers"):
        page.history_answers = []
        page.on(
            "response",
            lambda r: "/history?window=" in r.url and r.ok and page.history_answers.append(r),
        )
    return page.history_answers


def charts_drawn(page, serve, queue, window):
    """Wait until both history charts of ``queue`` hold the API's ``window``: one x per
    step of the window, a value for each of the API's points, the same sums as the
    newest answer the page got from the API (the oldest message ages with every
    sample, so an answer read beside the page's own is always a little newer).
    Returns the points."""
    answers = _history_answers(page)
    page.wait_for_selector(
        f'[data-part="history"][data-window="{window}"][data-loaded="true"]', timeout=20_000
    )
    title = page.locator('[data-part="history"] h2')
    # after a click on another queue, the old queue's charts stay until its history is in
    wait_for(lambda: title.text_content() == "History of " + queue, 20, 0.1, what="its history")
    assert title.locator(".queue-name").inner_text() == queue  # as it is spelt
    for chart in CHARTS:
        assert page.locator(f'[data-chart="{chart}"].chart-box canvas').count() == 1
    seen = {}

    # spelt as the page's encodeURIComponent spells it
    path = "/api/v1/queues/" + quote(queue, safe="!*'()") + f"/history?window={window}"
    response = serve.get(path)  # the API itself, beside the page
    assert response.ok, response.text
    body = response.json()
    assert (body["to"] - body["from"]) // body["step"] == SLOTS[window], body

    def agree():
        mine = [r for r in answers if r.url.endswith(path)]
        if not mine:
            return None
        body = mine[-1].json()
        assert (body["to"] - body["from"]) // body["step"] == SLOTS[window], body
        points = body["points"]
        want = {
            "depth": sum(p["depth"] or 0 for p in points),
            "oldest_age": sum(p["oldest_age"] or 0 for p in points),
        }
        drawn = _chart_state(page)
        seen.update(api=len(points), want=want, drawn=drawn)
        ok = all(
            drawn[c][0] == SLOTS[window]
            and drawn[c][1] == len(points)
            and abs(drawn[c][2] - want[c]) < 0.01
            for c in CHARTS
        )
        return points if ok and points else None

    try:
        return wait_for(agree, 20, 0.2, what=f"the charts of {window} agree with the API")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen {seen}") from None


def test_queues_page_in_chromium(cluster):
    require_chromium()
    from playwright.sync_api import sync_playwright

    serve, idle = cluster["serve"], cluster["idle"]
    wait_for(lambda: _rows(serve).get(idle, {}).get("depth") == 12, 30, 0.2, what="a sample")
    wait_for(lambda: _rows(serve).get(HOSTILE, {}).get("depth") == 1, 30, 0.2, what="its queue")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.add_init_script(CSP_PROBE)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("dialog", lambda d: (errors.append("dialog " + d.message), d.dismiss()))
            _history_answers(page)  # from the first load on
            page.goto(serve.url + "/queues")
            row = page.locator(f'tr[data-queue="{idle}"]')
            row.wait_for(timeout=10_000)
            assert row.locator("td.depth").inner_text() == "12"
            assert row.locator("td.consumers").inner_text() == "0"
            # the deepest queue is charted first, over the default window
            points = charts_drawn(page, serve, idle, "1h")
            assert points[-1]["depth"] == 12
            for window in ("24h", "7d", "15m"):
                page.click(f'a[data-window="{window}"]')
                page.wait_for_function(f"() => location.search.includes('window={window}')")
                charts_drawn(page, serve, idle, window)
            page.locator("text=tests.workerapp.add").first.wait_for(timeout=10_000)
            # live: three more messages reach the row and the chart without a reload
            producer = Celery("producer", broker=cluster["broker"].url)
            for _ in range(3):
                producer.send_task("tests.workerapp.add", (0, 0), queue=idle)
            row.locator("td.depth", has_text="15").wait_for(timeout=15_000)
            wait_for(
                lambda: charts_drawn(page, serve, idle, "15m")[-1]["depth"] == 15,
                30,
                0.2,
                what="the new depth in the chart",
            )
            page.click('a[data-window="24h"]')
            charts_drawn(page, serve, idle, "24h")
            SHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOT), full_page=True)
            page.emulate_media(color_scheme="dark")  # the charts redraw in its colours
            artifacts = ROOT / "test-artifacts"
            artifacts.mkdir(exist_ok=True)
            page.screenshot(path=str(artifacts / "queues-dark.png"), full_page=True)
            # a queue named with markup: its row, title and charts show it as text
            link = page.locator("td.name a", has_text=HOSTILE)
            assert link.inner_text() == HOSTILE
            link.click()
            page.wait_for_function(
                f"() => new URLSearchParams(location.search).get('queue') === {HOSTILE!r}"
            )
            charts_drawn(page, serve, HOSTILE, "24h")
            page.screenshot(path=str(artifacts / "queues-hostile.png"), full_page=True)
            assert page.locator("main img").count() == 0
            assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
            assert page.evaluate("window.__csp") == []
            assert errors == []
        finally:
            browser.close()


OPERATOR = ("quinn", "quinn-operator-pw")


def test_operator_purges_a_queue_from_the_page(cluster):
    """Last in this module: once a user exists, anonymous API calls are refused."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    from monitor.auth import AuthStore
    from monitor.config import Settings
    from monitor.store import Store, redis_client

    serve, idle = cluster["serve"], cluster["idle"]
    settings = Settings(redis_url=REDIS_URL, prefix=cluster["prefix"])
    store = Store(redis_client(REDIS_URL), settings)
    AuthStore(store.redis, store.keys, settings).add_user(*OPERATOR, role="operator")
    wait_for(lambda: serve.get("/api/v1/queues").status_code == 401, 30, 0.2, what="users on")
    independent = redis.Redis.from_url(cluster["broker"].url)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(serve.url + "/login?next=/queues")
            page.fill("input[name=name]", OPERATOR[0])
            page.fill("input[name=password]", OPERATOR[1])
            page.click("form.login button[type=submit]")
            page.locator(f'button[data-purge="{idle}"]').click()
            dialog = page.locator("dialog[open]")
            waiting = sum(independent.llen(k) for k in independent.scan_iter(idle + "*"))
            assert waiting == 15
            dialog.locator("text=It holds 15 messages now.").wait_for(timeout=10_000)
            dialog.locator("button[data-confirm]").click()
            dialog.locator("text=Purged 15 of 15 messages").wait_for(timeout=10_000)
            assert sum(independent.llen(k) for k in independent.scan_iter(idle + "*")) == 0
            assert errors == []
        finally:
            browser.close()
            store.close()
