"""Periodic tasks (monitor/beat.py, GET /api/v1/beat, the /beat page).

A real ``celery beat`` (``celery -A tests.beatapp beat``, entries every 1 and 2 s,
the publish hook connected in beat) and a real prefork worker run its tasks; the
monitor reads the app's full ``beat_schedule`` (beat's process leaves one entry
out: the monitor knows an entry beat never runs). Then beat is stopped (SIGTERM)
and its entries turn missed once due + grace has passed. celery-redbeat entries are
hand-written keys under the test's own ``redbeat_key_prefix``, hostile ones among them.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from celery import Celery

import monitor.signals
from monitor import beat
from monitor.config import ConfigError, Settings
from monitor.store import Store, redis_client
from tests import beatapp

from .helpers import (
    CSP_PROBE,
    REDIS_URL,
    ROOT,
    SHOTS,
    ServeProcess,
    WorkerProcess,
    chromium,
    open_page,
    require_chromium,
    require_service,
    stop_process,
    wait_for,
)

BROKER = "redis://127.0.0.1:6379/9"
GRACE = 2.0


def _by_name(entries):
    return {e["name"]: e for e in entries}


def beat_env(queue: str, prefix: str, **extra: str) -> dict[str, str]:
    """The environment of a ``celery -A tests.beatapp beat``: its hook records runs
    under ``prefix``, it sends to ``queue``, "forgotten" is never sent."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env.update(
        TEST_BROKER_URL=BROKER,
        TEST_QUEUE=queue,
        TEST_HOOKS="1",
        MONITOR_REDIS_URL=REDIS_URL,
        MONITOR_PREFIX=prefix,
        BEAT_SKIP="forgotten",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        **extra,
    )
    return env


def beat_args(*scheduler: str) -> list[str]:
    """``celery -A tests.beatapp beat`` with ``scheduler``'s arguments."""
    args = [sys.executable, "-m", "celery", "-A", "tests.beatapp", "beat", *scheduler]
    return args + ["--pidfile", "", "--loglevel", "info"]


@pytest.fixture(scope="module")
def cluster():
    require_service("127.0.0.1", 6379, "Redis")
    prefix = "mt-beat-" + uuid.uuid4().hex[:8]
    queue = f"q-{prefix}"
    settings = Settings(redis_url=REDIS_URL, prefix=prefix, beat_grace=GRACE)
    store = Store(redis_client(REDIS_URL), settings)
    worker = WorkerProcess(broker=BROKER, queue=queue, prefix=prefix, hooks=True)
    worker.args[worker.args.index("tests.workerapp")] = "tests.beatapp"
    tmp = Path(tempfile.mkdtemp(prefix="monitor-test-beat-"))
    beat_log = open(tmp / "beat.log", "w")  # noqa: SIM115 - closed below
    env = beat_env(queue, prefix)
    args = beat_args("-s", str(tmp / "schedule"))
    proc = None
    try:
        worker.start()
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=beat_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        yield {
            "store": store,
            "settings": settings,
            "beat": proc,
            "beat_log": tmp / "beat.log",
            "queue": queue,
            "prefix": prefix,
        }
    finally:
        if proc is not None:
            stop_process(proc)
        beat_log.close()
        worker.stop()
        store.delete_all()
        store.close()


def _entries(cluster):
    return _by_name(beat.periodic_tasks(cluster["store"], beatapp.app))


def _log(cluster):
    return cluster["beat_log"].read_text(errors="replace")[-3000:]


def test_runs_of_a_real_beat_are_seen_and_attributed_by_their_arguments(cluster):
    store = cluster["store"]
    first = wait_for(
        lambda: (e := _entries(cluster))["tick-1"]["last_run"] and e["tick-2"]["last_run"] and e,
        30,
        0.2,
        what=f"beat's first runs seen (beat log: {_log(cluster)})",
    )
    t1 = first["tick-1"]
    # the run advances: a newer task of the same entry
    later = wait_for(
        lambda: (e := _entries(cluster)["tick-1"])["last_run"] > t1["last_run"] and e, 10, 0.2
    )
    assert later["last_run_id"] != t1["last_run_id"]
    for entry in (t1, later, first["tick-2"]):
        assert entry["missed"] is False and entry["never_run"] is False
        assert entry["source"] == "app"
        # the next run follows from the schedule and the last run
        assert entry["next_run"] == pytest.approx(entry["last_run"] + entry["interval"], abs=0.01)
    assert first["tick-2"]["interval"] == 2.0 and t1["interval"] == 1.0
    assert t1["schedule"] == "every 1 s"
    # one task name, two entries: each run is the one beat sent with that entry's args
    run1 = store.get_task(later["last_run_id"])
    run2 = store.get_task(first["tick-2"]["last_run_id"])
    assert run1["args"] == "[1]" and run1["kwargs"] == "{}"
    assert run2["args"] == "[2]" and run2["kwargs"] == "{'label': '<b>two</b>'}"
    assert run1["beat"] == "1" and run2["beat"] == "1"  # beat's header, seen by the hook
    # the worker ran them
    wait_for(lambda: store.get_task(later["last_run_id"])["state"] == "SUCCESS", 20)
    # at some moment between two runs, the next run is ahead of now
    wait_for(lambda: (e := _entries(cluster)["tick-2"])["next_run"] > time.time() and e, 10, 0.1)


def test_a_call_of_the_same_task_outside_beat_is_not_a_run(cluster):
    store = cluster["store"]
    monitor.signals.connect(beatapp.app, redis_url=REDIS_URL, prefix=cluster["prefix"])
    try:
        manual = beatapp.tick.apply_async((1,), queue=cluster["queue"])
        # the publish hook's record (it may land after the worker's: no "sent" then)
        recorded = wait_for(
            lambda: (t := store.get_task(manual.id)) and t.get("content_type") and t, 10
        )
        assert recorded.get("beat") is None, recorded
        sent = float(recorded.get("sent") or recorded["received"])
        assert _entries(cluster)["tick-1"]["last_run_id"] != manual.id
        # beat's next run, after the manual call, is the last run; never the call
        entry = wait_for(
            lambda: ((e := _entries(cluster)["tick-1"])["last_run"] or 0) > sent and e, 10, 0.1
        )
        assert entry["last_run_id"] != manual.id
        assert store.get_task(entry["last_run_id"])["beat"] == "1"
    finally:
        monitor.signals.disconnect()


def test_entries_beat_never_ran(cluster):
    entries = _entries(cluster)
    # every second since the monitor's oldest task, and never seen: missed once due + grace
    forgotten = wait_for(lambda: (e := _entries(cluster)["forgotten"])["missed"] and e, 15, 0.2)
    assert forgotten["never_run"] is True and forgotten["last_run"] is None
    assert forgotten["status"] == "missed"
    assert time.time() > forgotten["due"] + GRACE
    # a yearly crontab, not due since the monitor has data: never run, not missed
    new_year = entries["new-year"]
    assert new_year["never_run"] is True and new_year["missed"] is False
    assert new_year["schedule"].startswith("crontab 0 0 1 1 *")
    today = datetime.datetime.now(datetime.UTC)
    expected = datetime.datetime(today.year + 1, 1, 1, tzinfo=datetime.UTC)
    assert new_year["next_run"] == pytest.approx(expected.timestamp(), abs=0.01)
    assert new_year["args"] == "('<script>alert(1)</script>',)"


def test_page_is_live_and_shows_the_stopped_beat_missed(cluster):
    """The page lists every entry escaped, follows beat's runs live (the "beat" room),
    and turns an entry missed once beat stops, without a reload."""
    require_chromium()
    serve = ServeProcess(
        REDIS_URL, cluster["prefix"], "-A", "tests.beatapp", env={"MONITOR_BEAT_GRACE": str(GRACE)}
    ).start()
    try:
        body = serve.get("/api/v1/beat").json()
        assert {e["name"] for e in body["entries"]} == set(beatapp._SCHEDULE)
        with chromium() as browser:
            page = open_page(browser, 1366, 700, init_script=CSP_PROBE)
            errors = page.errors
            page.goto(serve.url + "/beat")
            page.wait_for_selector("#conn.conn-ok", timeout=20_000)
            page.wait_for_selector("tr.beat-row >> nth=3")
            assert page.locator("tr.beat-row").count() == 4
            tick = page.locator('tr.beat-row[data-name="tick-1"]')
            tick.locator("a.beat-last").wait_for()
            first = tick.locator("a.beat-last").get_attribute("href")
            assert first.startswith("/task/")
            assert tick.locator(".badge.beat-missed").count() == 0
            # beat's next runs arrive through the room: a newer last run, no reload
            wait_for(lambda: tick.locator("a.beat-last").get_attribute("href") != first, 15)
            assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
            forgotten = page.locator('tr.beat-row[data-name="forgotten"]')
            assert "never run" in forgotten.inner_text() and "missed" in forgotten.inner_text()
            # hostile text stays text
            assert "<b>two</b>" in page.locator('tr[data-name="tick-2"]').inner_text()
            assert "<script>alert(1)</script>" in page.locator("main").inner_text()
            assert page.locator("main b, main script").count() == 0
            assert "Periodic" in page.locator("header nav a.active").inner_text()
            # beat stops: the entry turns missed on the open page
            stop_process(cluster["beat"])
            tick.locator(".badge.beat-missed").wait_for(timeout=15_000)
            assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
            assert page.evaluate("window.__csp") == []
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / "beat.png"), full_page=True)
            assert errors == []
    finally:
        serve.stop()


def test_stopped_beat_turns_its_entries_missed(cluster):
    proc = cluster["beat"]
    stop_process(proc)  # SIGTERM (done already by the page test): beat exits
    assert proc.returncode is not None  # its hook flushed what it sent at exit
    last = _entries(cluster)["tick-1"]
    missed = wait_for(lambda: (e := _entries(cluster)["tick-1"])["missed"] and e, 15, 0.2)
    assert missed["last_run"] == last["last_run"]  # no run since beat stopped
    assert missed["due"] == pytest.approx(last["last_run"] + 1.0, abs=0.01)
    assert time.time() > missed["due"] + GRACE
    assert missed["status"] == "missed" and missed["never_run"] is False
    assert _entries(cluster)["tick-2"]["missed"] or wait_for(
        lambda: _entries(cluster)["tick-2"]["missed"], 10, 0.2
    )


# -- the API, without beat ----------------------------------------------------------
def test_api_without_a_celery_app_says_how_to_get_one(client):
    response = client.get("/api/v1/beat")
    assert response.status_code == 200
    body = response.get_json()
    assert body["entries"] == [] and body["sources"]["app"]["configured"] is False


def test_api_and_openapi_with_the_app(settings, store):
    from monitor.web import create_app

    app = create_app(settings, message_queue=None, celery_app=beatapp.app)
    client = app.test_client()
    body = client.get("/api/v1/beat").get_json()
    rows = _by_name(body["entries"])
    assert set(rows) == set(beatapp._SCHEDULE)
    assert rows["tick-2"]["kwargs"] == "{'label': '<b>two</b>'}"
    assert rows["tick-1"]["never_run"] is True  # an empty store: nothing seen
    assert rows["tick-1"]["missed"] is False  # and no moment to have missed it from
    spec = client.get("/api/openapi.json").get_json()
    assert "/api/v1/beat" in spec["paths"]
    assert client.get("/beat").status_code == 200


def test_grace_setting():
    assert Settings.from_env({"MONITOR_BEAT_GRACE": "12.5"}).beat_grace == 12.5
    assert Settings.from_env({}).beat_grace is None
    for bad in ("0", "-1", "nan", "inf", "soon"):
        with pytest.raises(ConfigError, match="MONITOR_BEAT_GRACE"):
            Settings.from_env({"MONITOR_BEAT_GRACE": bad})
    assert beat.default_grace(1.0) == beat.GRACE_MIN
    assert beat.default_grace(600.0) == 300.0
    assert beat.default_grace(86400.0) == beat.GRACE_MAX
    assert beat.default_grace(None) == beat.GRACE_MAX


# -- celery-redbeat's keys -------------------------------------------------------------
def _dt(ts):
    d = datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
    return {
        "__type__": "datetime",
        **{k: getattr(d, k) for k in ("year", "month", "day", "hour", "minute", "second")},
        "microsecond": d.microsecond,
        "timezone": "UTC",
    }


@pytest.fixture
def redbeat_app(prefix, store):
    """An app whose redbeat_key_prefix is the test's own, on the test's Redis."""
    app = Celery("rb", broker="redis://127.0.0.1:6379/9")
    app.conf.update(redbeat_redis_url=REDIS_URL, redbeat_key_prefix=f"{prefix}-rb:", timezone="UTC")
    app.conf.beat_schedule = {
        "static": {"task": "proj.static", "schedule": 60.0},
        "config-only": {"task": "proj.config_only", "schedule": 30.0},
    }
    yield app
    client = store.redis
    for key in client.scan_iter(f"{prefix}-rb:*"):
        client.delete(key)
    app.close()


def _write(client, prefix, name, definition, meta=None, score=0.0):
    key = f"{prefix}-rb:{name}"
    fields = {"definition": definition if isinstance(definition, str) else json.dumps(definition)}
    if meta is not None:
        fields["meta"] = meta if isinstance(meta, str) else json.dumps(meta)
    client.hset(key, mapping=fields)
    client.zadd(f"{prefix}-rb::schedule", {key: score})
    return key


def test_redbeat_entries_are_read_back(redbeat_app, store, prefix):
    client = store.redis
    now = time.time()
    last = now - 2
    _write(
        client,
        prefix,
        "every-5",
        {
            "name": "every-5",
            "task": "proj.report",
            "schedule": {"__type__": "interval", "every": 5.0, "relative": False},
            "args": [1, "x"],
            "kwargs": {"k": 2},
            "options": {"queue": "reports"},
            "enabled": True,
        },
        {"last_run_at": _dt(last), "total_run_count": 7},
        score=last + 5,
    )
    _write(
        client,
        prefix,
        "nightly",
        {
            "name": "nightly",
            "task": "proj.nightly",
            "schedule": {
                "__type__": "crontab",
                "minute": "30",
                "hour": "3",
                "day_of_week": "*",
                "day_of_month": "*",
                "month_of_year": "*",
            },
            "args": None,
            "kwargs": None,
            "options": {},
            "enabled": False,
        },
        score=now + 3600,
    )
    _write(
        client,
        prefix,
        "static",
        {
            "name": "static",
            "task": "proj.static",
            "schedule": {"__type__": "interval", "every": 60.0, "relative": False},
            "enabled": True,
        },
        {"last_run_at": _dt(now - 3 * 3600), "total_run_count": 1},
        score=now - 3 * 3600 + 60,
    )
    entries = _by_name(beat.periodic_tasks(store, redbeat_app, now=now))
    every = entries["every-5"]
    assert every["source"] == "redbeat" and every["task"] == "proj.report"
    assert every["schedule"] == "every 5 s" and every["queue"] == "reports"
    assert every["args"] == '[1, "x"]' and every["kwargs"] == '{"k": 2}'
    assert every["beat_last_run_at"] == pytest.approx(last, abs=1e-3)
    assert every["total_run_count"] == 7
    assert every["next_run"] == pytest.approx(last + 5, abs=1e-3)  # redbeat's own plan
    assert every["missed"] is False and every["never_run"] is False
    nightly = entries["nightly"]
    assert nightly["enabled"] is False and nightly["status"] == "disabled"
    assert nightly["missed"] is False
    assert nightly["schedule"].startswith("crontab 30 3 * * *")
    # a static entry redbeat keeps from beat_schedule: one row, redbeat's, and missed
    # (due three hours ago, 60 s interval: 30 s grace long gone)
    static = entries["static"]
    assert static["source"] == "redbeat" and static["in_app_schedule"] is True
    assert static["missed"] is True and static["status"] == "missed"
    # the app's entry redbeat does not (yet) have is still listed
    assert entries["config-only"]["source"] == "app"
    status = beat.beat_status(store, redbeat_app, now=now)
    assert status["sources"]["redbeat"]["present"] is True
    assert status["sources"]["redbeat"]["count"] == 3


def test_hostile_redbeat_keys_cost_one_entry_each(redbeat_app, store, prefix, client):
    r = store.redis
    html = "<img src=x onerror=alert(1)>"
    _write(r, prefix, html, {"task": html, "schedule": {"__type__": "interval", "every": 1}})
    _write(r, prefix, "huge-" + "n" * 20_000, {"task": "t" * 50_000, "args": ["a" * 10_000]})
    _write(r, prefix, "not-json", "{{{ not json")
    _write(r, prefix, "a-list", "[1, 2, 3]")
    _write(r, prefix, "deep", "[" * 50_000)
    _write(r, prefix, "too-big", {"task": "x", "args": ["y" * (beat.MAX_DEFINITION_BYTES + 1)]})
    _write(r, prefix, "nan", '{"task": "t", "schedule": {"__type__": "interval", "every": NaN}}')
    _write(
        r,
        prefix,
        "odd-cron",
        {"task": "t", "schedule": {"__type__": "crontab", "minute": "x" * 1000}},
    )
    _write(r, prefix, "bad-cron", {"task": "t", "schedule": {"__type__": "crontab", "hour": "99"}})
    _write(r, prefix, "unknown", {"task": "t", "schedule": {"__type__": "pickle", "x": 1}})
    _write(
        r,
        prefix,
        "bad-meta",
        {"task": "t", "schedule": {"__type__": "interval", "every": 10}},
        meta='{"last_run_at": {"__type__": "datetime", "year": 99999}, "total_run_count": 1e300}',
    )
    r.zadd(f"{prefix}-rb::schedule", {f"{prefix}-rb:missing-hash": 1.0})
    r.set(f"{prefix}-rb:a-string", "not a hash")
    r.zadd(f"{prefix}-rb::schedule", {f"{prefix}-rb:a-string": 2.0})
    entries = _by_name(beat.periodic_tasks(store, redbeat_app))
    assert entries[html]["task"] == html and entries[html]["schedule"] == "every 1 s"
    huge = next(e for n, e in entries.items() if n.startswith("huge-"))
    assert len(huge["name"]) <= beat.MAX_TEXT + 1 and len(huge["task"]) <= beat.MAX_TEXT + 1
    assert len(huge["args"]) <= beat.MAX_ARGS_TEXT + 1
    assert entries["not-json"]["error"] == "definition is not JSON"
    assert entries["deep"]["error"] == "definition is not JSON"
    assert entries["a-list"]["error"] == "definition is not an object"
    assert "too large" in entries["too-big"]["error"]
    for name in ("nan", "odd-cron", "bad-cron", "unknown"):
        assert entries[name]["error"].startswith("schedule:"), name
        assert entries[name]["next_run"] in (None, 1.0) or entries[name]["missed"] is False
    assert entries["bad-meta"]["beat_last_run_at"] is None
    assert entries["bad-meta"]["total_run_count"] is None
    assert entries["missing-hash"]["error"] == "no definition"
    assert "too large" in entries["a-string"]["error"]
    # the API answers the same, as JSON
    from monitor.web import create_app

    app = create_app(store.settings, message_queue=None, celery_app=redbeat_app)
    response = app.test_client().get("/api/v1/beat")
    assert response.status_code == 200
    assert len(response.get_json()["entries"]) == len(entries)


def test_redbeat_redis_away_still_lists_the_app_schedule(store):
    from .helpers import free_port

    app = Celery("rb-away")
    app.conf.update(redbeat_redis_url=f"redis://127.0.0.1:{free_port()}/0")
    app.conf.beat_schedule = {"s": {"task": "proj.s", "schedule": 5.0}}
    status = beat.beat_status(store, app)
    assert [e["name"] for e in status["entries"]] == ["s"]
    assert "cannot read redbeat" in status["sources"]["redbeat"]["error"]
    # not asked again at once: the next call answers from the remembered failure
    url = app.conf.redbeat_redis_url
    until, error = beat._failures[url]
    again = beat.beat_status(store, app)
    assert again["sources"]["redbeat"]["error"] == f"cannot read redbeat's keys: {error}"
    assert beat._failures[url][0] == until
    app.close()


def test_a_real_redbeat_scheduler_is_read_back(store, prefix):
    """``celery beat -S redbeat.RedBeatScheduler`` keeps the app's schedule in its keys
    (under the test's prefix): the monitor shows redbeat's entries, its run counts,
    last runs and next runs, and the runs its hook saw."""
    import redis as redis_lib

    rb_prefix = f"{prefix}-rb:"
    queue = f"q-{prefix}"
    tmp = Path(tempfile.mkdtemp(prefix="monitor-test-redbeat-"))
    env = beat_env(queue, prefix, BEAT_REDBEAT_PREFIX=rb_prefix, BEAT_REDBEAT_URL=REDIS_URL)
    args = beat_args("-S", "redbeat.RedBeatScheduler")
    app = Celery("rb-monitor")
    app.conf.update(redbeat_redis_url=REDIS_URL, redbeat_key_prefix=rb_prefix, timezone="UTC")
    app.conf.beat_schedule = dict(beatapp._SCHEDULE)
    with open(tmp / "beat.log", "w") as log:
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:

            def counted():
                status = beat.beat_status(store, app)
                tick = _by_name(status["entries"])["tick-1"]
                return (tick.get("total_run_count") or 0) >= 2 and tick["last_run"] and status

            status = wait_for(counted, 30, 0.2, what=lambda: (tmp / "beat.log").read_text()[-2000:])
        finally:
            stop_process(proc)
    try:
        rows = _by_name(status["entries"])
        assert status["sources"]["redbeat"]["present"] is True
        assert status["sources"]["redbeat"]["lock_held"] is True  # the scheduler was running
        tick = rows["tick-1"]
        assert tick["source"] == "redbeat" and tick["in_app_schedule"] is True
        assert tick["redbeat_key"] == f"{rb_prefix}tick-1"
        assert tick["schedule"] == "every 1 s" and tick["task"] == "tests.beatapp.tick"
        # redbeat's record of when it sent the run, and the run the hook saw
        assert tick["beat_last_run_at"] == pytest.approx(tick["last_run"], abs=1.0)
        assert store.get_task(tick["last_run_id"])["beat"] == "1"
        assert store.get_task(tick["last_run_id"])["args"] == "[1]"
        assert tick["next_run"] > tick["beat_last_run_at"]  # redbeat's own plan (zset score)
        assert tick["missed"] is False
        assert rows["new-year"]["source"] == "redbeat" and rows["new-year"]["missed"] is False
        # not given to this beat (BEAT_SKIP): the app's entry only
        assert rows["forgotten"]["source"] == "app"
        assert all(not n.startswith(":") for n in rows)  # the zset's own key is no entry
    finally:
        for key in store.redis.scan_iter(rb_prefix + "*"):
            store.redis.delete(key)
        broker = redis_lib.Redis.from_url(BROKER)
        broker.delete(queue, f"_kombu.binding.{queue}")
        broker.close()
        app.close()


def test_attribution_rules(store):
    """Several entries of one task: by args; a call the hook saw without beat's mark is
    none of them; a name whose read window is full of other calls is not missed for it."""
    from monitor.model import TaskEvent

    now = time.time()
    app = Celery("attribution")
    app.conf.beat_schedule = {
        "one": {"task": "proj.shared", "schedule": 60.0, "args": (1,)},
        "two": {"task": "proj.shared", "schedule": 60.0, "args": (2,)},
        "busy": {"task": "proj.busy", "schedule": 60.0},
    }
    hooked = {"body_error": "test", "kwargs": "{}"}
    events = [
        # the store's oldest task, an hour ago: "busy" would be missed from there
        TaskEvent("old", "SUCCESS", now - 3600, "event", "w", {"name": "proj.other"}),
        TaskEvent(
            "b1",
            "PENDING",
            now - 5,
            "signal",
            "beat",
            {"name": "proj.shared", "args": "[1]", "beat": "1", **hooked},
        ),
        TaskEvent(
            "m2",
            "PENDING",
            now - 4,
            "signal",
            "me",
            {"name": "proj.shared", "args": "[2]", **hooked},
        ),  # called by hand: not beat's
        TaskEvent(
            "e2",
            "PENDING",
            now - 6,
            "event",
            "beat",
            {"name": "proj.shared", "args": "[2]", "kwargs": "{}"},
        ),  # a task-sent event: no header to tell
    ]
    events += [
        TaskEvent(
            f"busy-{i}",
            "PENDING",
            now - 10 + i * 0.1,
            "signal",
            "me",
            {"name": "proj.busy", "args": "()", **hooked},
        )
        for i in range(beat.MAX_PER_NAME + 10)
    ]
    store.apply(events)
    rows = _by_name(beat.periodic_tasks(store, app, now=now))
    assert rows["one"]["last_run_id"] == "b1" and rows["one"]["runs_seen"] == 1
    assert rows["two"]["last_run_id"] == "e2" and rows["two"]["runs_seen"] == 1
    busy = rows["busy"]
    assert busy["never_run"] is True and busy["last_run"] is None
    # only the newest 50 calls were read, all within 10 s: no run since then, not missed
    assert busy["missed"] is False
    assert busy["due"] == pytest.approx(now - 10 + 10 * 0.1 + 60, abs=0.5)
    status = beat.beat_status(store, app, now=now)
    assert status["horizon"] == pytest.approx(now - 3600, abs=1e-3)


def test_viewers_see_no_entry_arguments_when_hidden(settings, store):
    import base64

    from monitor.auth import AuthStore
    from monitor.web import create_app

    auth = AuthStore(store.redis, store.keys, settings)
    auth.add_user("olga", "correct horse battery", "operator")
    auth.add_user("vic", "correct horse battery", "viewer")
    app = create_app(
        settings.replace(hide_args_from_viewers=True), message_queue=None, celery_app=beatapp.app
    )
    client = app.test_client()

    def get(user):
        raw = base64.b64encode(f"{user}:correct horse battery".encode()).decode()
        return client.get("/api/v1/beat", headers={"Authorization": f"Basic {raw}"})

    assert client.get("/api/v1/beat").status_code == 401  # users exist: log in first
    seen = get("vic").get_json()
    assert all(e["args"] is None and e["kwargs"] is None for e in seen["entries"])
    assert "<b>two</b>" not in json.dumps(seen)
    full = _by_name(get("olga").get_json()["entries"])
    assert full["tick-2"]["kwargs"] == "{'label': '<b>two</b>'}"


def test_entries_are_capped(store):
    app = Celery("many")
    app.conf.beat_schedule = {
        f"e{i:05d}": {"task": f"proj.t{i}", "schedule": 10.0} for i in range(beat.MAX_ENTRIES + 5)
    }
    status = beat.beat_status(store, app)
    assert status["count"] == beat.MAX_ENTRIES and status["truncated"] is True
    assert status["entries"][0]["name"] == "e00000"
    app.close()
