"""The Lost & risks page and the task list's flag filter in a real Chromium, against a
real ``monitor serve -A tests.workerapp`` (acks_late, a 2 s visibility timeout, a
private Redis broker holding unacked messages the way kombu leaves them).

Screenshots: docs/screenshots/lost.png, tasks-flag-lost.png.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from monitor.config import Settings
from monitor.model import TaskEvent, WorkerEvent
from monitor.store import Store, redis_client

from .helpers import (
    REDIS_URL,
    SHOTS,
    RedisServer,
    ServeProcess,
    chromium,
    open_page,
    require_chromium,
    require_service,
    wait_for,
)

pytestmark = [pytest.mark.browser]
HOSTILE = "<img src=x onerror=window.__pwned=1>"


@pytest.fixture(scope="module")
def env():
    require_service("127.0.0.1", 6379, "Redis")
    require_chromium()
    prefix = "mbl-" + uuid.uuid4().hex[:8]
    store = Store(redis_client(REDIS_URL), Settings(redis_url=REDIS_URL, prefix=prefix))
    broker = RedisServer().start()
    # Every kombu consumer of the broker restores overdue unacked messages when it
    # polls (the serve process's inspect replies and queue sampler included), unless
    # another holds kombu's unacked_mutex: held here, so the seeded messages stay.
    import redis as redis_lib

    holder = redis_lib.Redis.from_url(broker.url)
    holder.set("unacked_mutex", "held by the test", ex=600)
    holder.close()
    serve = ServeProcess(
        REDIS_URL,
        prefix,
        env={
            "MONITOR_APP": "tests.workerapp",
            "TEST_BROKER_URL": broker.url,
            "TEST_ACKS_LATE": "1",
            "TEST_VISIBILITY_TIMEOUT": "2",
            "MONITOR_WORKER_GRACE": "1",
        },
    )
    try:
        serve.start()
        with chromium() as browser:
            yield {"store": store, "serve": serve, "browser": browser, "broker": broker}
    finally:
        serve.stop()
        broker.stop()
        store.delete_all()
        store.close()


@pytest.fixture
def page(env):
    page = open_page(env["browser"], 1366, 900)
    yield page
    page.context.close()


def seed(env) -> dict[str, str]:
    """A dead worker with a running task, a live one with a task past its time limit,
    and kombu's unacked entry of the dead worker's task, delivered a minute ago."""
    import redis as redis_lib

    store, now = env["store"], time.time()
    dead, alive = "dead@box", "alive@box"
    ids = {"lost": "lost-" + uuid.uuid4().hex[:8], "stuck": "stuck-" + uuid.uuid4().hex[:8]}
    store.apply(
        [
            WorkerEvent(dead, "heartbeat", now - 600, "signal", {"freq": 1.0}),
            WorkerEvent(alive, "heartbeat", now, "signal", {"freq": 60.0}),
            TaskEvent(
                ids["lost"], "STARTED", now - 60, "signal", dead, {"name": HOSTILE, "worker": dead}
            ),
            TaskEvent(
                ids["stuck"],
                "STARTED",
                now - 300,
                "signal",
                alive,
                {"name": "proj.report", "worker": alive, "time_limit": 120},
            ),
        ]
    )
    message = {
        "body": "e30=",
        "headers": {"id": ids["lost"], "task": HOSTILE, "eta": None},
        "properties": {"delivery_tag": "t1"},
    }
    r = redis_lib.Redis.from_url(env["broker"].url)
    tag = "tag-" + ids["lost"]
    r.zadd("unacked_index", {tag: now - 60})
    r.hset("unacked", tag, json.dumps([message, "", "celery"]))
    r.close()
    return ids


def test_lost_page_shows_lost_stuck_redelivery_and_risks(env, page):
    ids = seed(env)
    page.goto(env["serve"].url + "/lost")
    page.wait_for_selector("#conn.conn-ok", timeout=20_000)
    lost_row = page.locator(f'tr.flag-row[data-id="{ids["lost"]}"]')
    lost_row.wait_for(timeout=20_000)
    assert "lost" in lost_row.locator(".badge.state-lost").inner_text()
    stuck_row = page.locator(f'tr.flag-row[data-id="{ids["stuck"]}"]')
    assert "past its time limit (2 min)" in stuck_row.inner_text()
    assert stuck_row.locator(".badge.flag-stuck").count() == 1
    main = page.locator("main").inner_text()
    assert "app conf: acks_late without task_reject_on_worker_lost" in main
    # the visibility timeout and where it comes from
    assert "Visibility timeout\n2.00 s (app conf)" in main
    redelivered = page.locator(
        f'section:has(h2:text("Will be redelivered")) tr[data-id="{ids["lost"]}"]'
    )
    assert redelivered.count() == 1
    assert page.evaluate("window.__pwned") is None and HOSTILE in main
    page.screenshot(path=str(SHOTS / "lost.png"), full_page=True)
    assert page.errors == []


def test_task_list_flag_filter_and_badges(env, page):
    ids = seed(env)

    def listed_as_redelivered():  # the serve process reuses its broker read for 5 s
        response = env["serve"].get("/api/v1/tasks?flag=lost")
        rows = response.json()["tasks"] if response is not None and response.ok else []
        return any(r["id"] == ids["lost"] and r.get("redelivery") for r in rows)

    wait_for(listed_as_redelivered, 15, 0.5, what="the broker read to include the new message")
    page.goto(env["serve"].url + "/tasks?flag=lost")
    page.wait_for_selector("#conn.conn-ok", timeout=20_000)
    row = page.locator(f'tr[data-id="{ids["lost"]}"]')
    row.wait_for(timeout=20_000)
    assert row.locator(".badge.state-lost").count() == 1
    # its message sat in unacked past the visibility timeout
    assert row.locator(".badge.flag-broker").inner_text() == "will be redelivered"
    assert page.locator(f'tr[data-id="{ids["stuck"]}"]').count() == 0
    assert page.locator('select[name="flag"]').input_value() == "lost"
    page.screenshot(path=str(SHOTS / "tasks-flag-lost.png"))
    page.goto(env["serve"].url + "/tasks")  # the plain list badges flagged rows too
    page.locator(f'tr[data-id="{ids["stuck"]}"] .badge.flag-stuck').wait_for(timeout=20_000)
    assert page.errors == []


def test_task_page_says_lost_and_will_be_redelivered(env, page):
    ids = seed(env)

    def redelivery_known():  # the serve process reuses a broker read for 5 s
        response = env["serve"].get(f"/api/v1/tasks/{ids['lost']}")
        return response is not None and response.ok and response.json()["broker"].get("redelivery")

    wait_for(redelivery_known, 15, 0.5, what="the broker read to include the new message")
    page.goto(env["serve"].url + f"/task/{ids['lost']}")
    page.wait_for_selector("text=Timeline")
    assert "may be lost" in page.locator(".state-lost").first.inner_text()
    note = page.locator(".redelivery-note")
    note.wait_for(timeout=10_000)
    assert "Will be redelivered" in note.inner_text()
    page.goto(env["serve"].url + f"/task/{ids['stuck']}")
    page.wait_for_selector("text=Timeline")
    assert "past its time limit (2 min)" in page.locator(".stuck-note").inner_text()
    page.screenshot(path=str(SHOTS / "task-stuck.png"))
    assert page.errors == []
