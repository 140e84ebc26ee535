"""Queues end to end: a real ``monitor serve`` (its elected sampler), a real
prefork worker consuming one queue of a private Redis broker, a load waiting in
another queue nobody consumes (priority messages included), the API and the
Queues page in Chromium (screenshot in docs/screenshots/queues.png)."""

from __future__ import annotations

import uuid

import pytest
import redis
from celery import Celery

import monitor.signals

from .helpers import (
    CSP_PROBE,
    REDIS_URL,
    SHOTS,
    RedisServer,
    ServeProcess,
    WorkerProcess,
    chromium,
    log_in,
    open_page,
    require_chromium,
    wait_for,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
#: Some bar of the charts has a height (a sample is drawn).
BARS = (
    "() => [...document.querySelectorAll('svg.chart rect')]"
    ".some(r => +r.getAttribute('height') > 0)"
)
SHOT = SHOTS / "queues.png"


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


def test_queues_page_in_chromium(cluster):
    require_chromium()
    serve, idle = cluster["serve"], cluster["idle"]
    wait_for(lambda: _rows(serve).get(idle, {}).get("depth") == 12, 30, 0.2, what="a sample")
    with chromium() as browser:
        page = open_page(browser, 1280, 900, init_script=CSP_PROBE, console_errors=False)
        errors = page.errors
        page.goto(serve.url + "/queues")
        row = page.locator(f'tr[data-queue="{idle}"]')
        row.wait_for(timeout=10_000)
        assert row.locator("td.depth").inner_text() == "12"
        assert row.locator("td.consumers").inner_text() == "0"
        page.wait_for_function(BARS, timeout=10_000)
        assert "History of " + idle in page.locator("section h2").all_text_contents()
        page.click('button[data-window="24h"]')
        page.wait_for_function("() => location.search.includes('window=24h')")
        # 24 hourly slots per chart: the window's time axis, not just the samples
        page.wait_for_function(
            "() => document.querySelector('svg.chart').querySelectorAll('rect').length === 24",
            timeout=10_000,
        )
        page.wait_for_function(BARS, timeout=10_000)
        page.locator("text=tests.workerapp.add").first.wait_for(timeout=10_000)
        SHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOT), full_page=True)
        # live: three more messages reach the row without a reload (the room's push)
        producer = Celery("producer", broker=cluster["broker"].url)
        for _ in range(3):
            producer.send_task("tests.workerapp.add", (0, 0), queue=idle)
        row.locator("td.depth", has_text="15").wait_for(timeout=15_000)
        assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
        assert page.evaluate("window.__csp") == []
        assert errors == []


OPERATOR = ("quinn", "quinn-operator-pw")


def test_operator_purges_a_queue_from_the_page(cluster):
    """Last in this module: once a user exists, anonymous API calls are refused."""
    require_chromium()
    from monitor.auth import AuthStore
    from monitor.config import Settings
    from monitor.store import Store, redis_client

    serve, idle = cluster["serve"], cluster["idle"]
    settings = Settings(redis_url=REDIS_URL, prefix=cluster["prefix"])
    store = Store(redis_client(REDIS_URL), settings)
    AuthStore(store.redis, store.keys, settings).add_user(*OPERATOR, role="operator")
    wait_for(lambda: serve.get("/api/v1/queues").status_code == 401, 30, 0.2, what="users on")
    independent = redis.Redis.from_url(cluster["broker"].url)
    try:
        with chromium() as browser:
            page = open_page(browser, 1280, 900, console_errors=False)
            errors = page.errors
            log_in(page, serve.url, OPERATOR, "/queues")
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
        store.close()
