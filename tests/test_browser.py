"""The dashboard in a real browser: Debian's chromium driven by Playwright, against a
real ``monitor serve`` process, a real Redis and a real prefork worker.

Screenshots for the README are written to docs/screenshots/.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest
from celery import Celery

import monitor.signals
from monitor.config import Settings
from monitor.model import TaskEvent
from monitor.store import Store, redis_client

from .helpers import (
    IN_CI,
    REDIS_URL,
    ROOT,
    WorkerProcess,
    clean_env,
    free_port,
    http_get,
    start_module,
    stop_process,
    wait_for,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "docs" / "screenshots"
BROKER = "redis://127.0.0.1:6379/9"
T = "tests.workerapp."
HOSTILE = "<img src=x onerror=window.__pwned=1>"


class Serve:
    """A `python -m monitor serve` process that tests can restart on the same port."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Serve:
        self.proc = start_module(
            "monitor",
            *("serve", "--port", str(self.port), "--redis", REDIS_URL, "--prefix", self.prefix),
            *("--broker", BROKER),
            env=clean_env(MONITOR_ENABLE_EVENTS="false"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def up():
            response = http_get(self.url + "/api/v1/workers")
            return response is not None and response.ok

        wait_for(up, 30, 0.1, what="serve answering")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@pytest.fixture(scope="module")
def env():
    from .helpers import port_open

    if not port_open("127.0.0.1", 6379):
        pytest.fail("Redis is required") if IN_CI else pytest.skip("Redis is not running")
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    from playwright.sync_api import sync_playwright

    prefix = "mb-" + uuid.uuid4().hex[:8]
    settings = Settings(redis_url=REDIS_URL, prefix=prefix)
    store = Store(redis_client(REDIS_URL), settings)
    serve = Serve(prefix).start()
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
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield {
                "store": store,
                "serve": serve,
                "worker": worker,
                "app": app,
                "browser": browser,
                "prefix": prefix,
            }
        finally:
            browser.close()
            monitor.signals.disconnect()
            app.close()
            worker.stop()
            serve.stop()
            store.delete_all()
            store.close()


@pytest.fixture
def page(env):
    context = env["browser"].new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    errors: list[str] = []
    dialogs: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.errors, page.dialogs = errors, dialogs
    yield page
    context.close()


def live(page):
    page.wait_for_selector("#conn.conn-ok", timeout=20_000)


def finished(env, task_id, states=("SUCCESS",)):
    store = env["store"]
    return wait_for(lambda: (t := store.get_task(task_id)) and t["state"] in states and t, 60)


def shot(page, name, full_page=False):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


def test_overview_loads_live_without_errors(env, page):
    send = env["app"].send_task
    results = [send(T + "add", (i, i)) for i in range(8)] + [send(T + "fail", ("bad input",))]
    results.append(send(T + "retry_once"))
    for r in results:
        finished(env, r.id, ("SUCCESS", "FAILURE"))
    page.goto(env["serve"].url + "/")
    live(page)
    page.wait_for_selector("svg.chart")
    page.wait_for_function(
        "document.querySelectorAll('svg.chart rect[height]:not([height=\"0\"])').length > 0"
    )
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
