"""The task-name page's reads (monitor.web.task_names) and GET /api/v1/task-names/<name>,
on rows stored through the real store (real Redis, the write script)."""

from __future__ import annotations

import time

import pytest

from monitor.store import RUNTIME_BUCKETS
from monitor.web import task_names

from .helpers import api_task as task

NOW = time.time()


@pytest.fixture(autouse=True)
def _now():
    """NOW is each test's own clock: the suite may reach this module minutes after import,
    and the history windows are counted from the real time."""
    global NOW
    NOW = time.time()


HOSTILE = "<img src=x onerror=alert(1)>"


def _failure(tid, t, name="proj.pay", exception="ValueError('bad card')", **extra):
    return task(
        tid,
        "FAILURE",
        t,
        name,
        extra.pop("worker", "celery@w1"),
        exception=exception,
        runtime=0.5,
        **extra,
    )


@pytest.fixture
def failures(store):
    records = [
        _failure("v1", NOW - 50, exception="ValueError('card 1')"),
        _failure("v2", NOW - 40, exception="ValueError('card 2')"),
        _failure("v3", NOW - 30, exception="ValueError('card 3')", worker="celery@w2"),
        _failure("k1", NOW - 45, exception="KeyError('sku')"),
        _failure("k2", NOW - 20, exception="mod.errors.KeyError: sku"),
        _failure("n1", NOW - 10, exception="it broke"),
        # Not counted: another name, a success, a failure before the window.
        _failure("o1", NOW - 5, name="proj.other", exception="TypeError('x')"),
        task("s1", "SUCCESS", NOW - 5, "proj.pay", "celery@w1", runtime=0.2),
        _failure("old", NOW - 7200, exception="OSError('old')"),
    ]
    store.apply(records)
    return store


def test_failures_are_grouped_by_exception_type_newest_example_first(failures):
    body = task_names.failure_groups(failures, "proj.pay", 3600, now=NOW)
    groups = {g["exception"]: g for g in body["groups"]}
    assert set(groups) == {"ValueError", "KeyError", "mod.errors.KeyError", ""}
    assert [g["exception"] for g in body["groups"]][0] == "ValueError"  # most frequent first
    assert groups["ValueError"]["count"] == 3
    assert groups["ValueError"]["example"] == {
        "id": "v3",
        "message": "ValueError('card 3')",
        "worker": "celery@w2",
    }
    assert groups["ValueError"]["last_seen"] == pytest.approx(NOW - 30, abs=0.01)
    assert groups["KeyError"]["count"] == 1 and groups["mod.errors.KeyError"]["count"] == 1
    assert groups[""]["example"]["message"] == "it broke"
    assert body["failures"] == 6 and body["other"] == 0 and not body["partial"]
    # The 24 h window reaches the old failure too.
    wide = task_names.failure_groups(failures, "proj.pay", 86400, now=NOW)
    assert {g["exception"] for g in wide["groups"]} >= {"OSError"}
    assert wide["failures"] == 7


def test_a_viewer_who_may_not_see_data_gets_the_type_only(failures):
    body = task_names.failure_groups(failures, "proj.pay", 3600, can_see_args=False, now=NOW)
    messages = {g["exception"]: g["example"]["message"] for g in body["groups"]}
    assert messages["ValueError"] == "ValueError"
    assert messages[""] == ""


def test_failure_groups_stop_at_their_sample_and_budget(store, monkeypatch):
    store.apply(
        [_failure(f"f{i}", NOW - 100 + i * 0.1, exception=f"E{i % 7}('x')") for i in range(300)]
    )
    monkeypatch.setattr(task_names, "FAILURE_SAMPLE", 50)
    body = task_names.failure_groups(store, "proj.pay", 3600, now=NOW)
    assert body["failures"] == 50 and sum(g["count"] for g in body["groups"]) == 50
    monkeypatch.setattr(task_names, "FAILURE_SAMPLE", 10_000)
    monkeypatch.setattr(task_names, "SCAN_LIMIT", 100)
    body = task_names.failure_groups(store, "proj.pay", 3600, now=NOW)
    # The scan reads 100 ids a round trip and stops after the chunk that spent its budget.
    assert body["partial"] and body["failures"] == 100
    monkeypatch.setattr(task_names, "MAX_GROUPS", 3)
    body = task_names.failure_groups(store, "proj.pay", 3600, now=NOW)
    assert len(body["groups"]) == 3
    assert sum(g["count"] for g in body["groups"]) + body["other"] == body["failures"]


def test_runtime_distribution_counts_each_bucket(store):
    runtimes = [0.005, 0.005, 0.03, 0.2, 0.2, 0.2, 1.5, 4.0, 400.0, 5000.0]
    store.apply(
        [
            task(f"r{i}", "SUCCESS" if i % 2 else "FAILURE", NOW - 60 + i, "proj.sum", runtime=r)
            for i, r in enumerate(runtimes)
        ]
    )
    store.apply(
        [
            task("other", "SUCCESS", NOW - 5, "proj.else", runtime=0.005),
            task("running", "STARTED", NOW - 5, "proj.sum"),
        ]
    )
    body = task_names.runtime_distribution(store, "proj.sum", 3600, now=NOW)
    counts = {b["le"]: b["count"] for b in body["buckets"]}
    # Each runtime in the first bucket whose upper bound holds it (bounds inclusive).
    assert counts[0.005] == 2 and counts[0.05] == 1 and counts[0.25] == 3
    assert counts[2.5] == 1 and counts[5.0] == 1 and counts[600.0] == 1 and counts[None] == 1
    assert sum(counts.values()) == body["count"] == len(runtimes)
    assert [b["le"] for b in body["buckets"]] == [*RUNTIME_BUCKETS, None]  # +Inf last
    assert body["min"] == 0.005 and body["max"] == 5000.0
    assert body["p50"] == 0.2 and body["p99"] == 5000.0


def test_runtime_distribution_skips_what_is_not_a_runtime(store):
    store.apply(
        [
            task(f"b{i}", "SUCCESS", NOW - 30 + i, "proj.bad", runtime=r)
            for i, r in enumerate(["inf", "nan", "-1", "abc", "1e300", "0.5"])
        ]
    )
    body = task_names.runtime_distribution(store, "proj.bad", 3600, now=NOW)
    assert body["count"] == 1 and body["p50"] == 0.5


def test_parse_window_refuses_anything_else():
    assert task_names.parse_window(None) == "1h"
    assert task_names.parse_window("7d") == "7d"
    for bad in ("2h", "1H", " 1h", "0", "x" * 1000):
        with pytest.raises(task_names.queries.QueryError, match="window"):
            task_names.parse_window(bad)


# -- the "history" live room (monitor.web.history_room) -----------------------------------


def test_history_room_names_are_canonical_and_bounded():
    from monitor.web import history_room as room

    assert room.parse({"window": "1h"}) == '{"window":"1h"}'
    assert room.parse({"window": "7d", "name": "a.b", "worker": ""}) == room.parse(
        {"name": "a.b", "window": "7d"}
    )
    for bad in (
        {},
        {"window": "2h"},
        {"window": ["1h"]},
        {"window": "1h", "name": 5},
        {"window": "1h", "name": {"$gt": ""}},
        {"window": "1h", "worker": "w" * 256},
        {"window": "1h", "name": "a", "worker": "b"},
    ):
        with pytest.raises(room.HistoryRoomError):
            room.parse(bad)
    assert room.snapshot(None, "not json") is None
    assert room.snapshot(None, '{"window": "5y"}') is None


# -- GET /api/v1/task-names/<name> -------------------------------------------------------


@pytest.fixture
def named(store):
    name = "proj." + HOSTILE
    records = [
        task(f"ok{i}", "SUCCESS", NOW - 100 + i, name, runtime=0.02 * (i + 1)) for i in range(4)
    ]
    records += [
        _failure(f"bad{i}", NOW - 50 + i, name=name, exception=f"ValueError('v{i}')")
        for i in range(2)
    ]
    store.apply(records)
    return name


def test_task_name_endpoint_counts_rates_and_groups(client, named):
    from urllib.parse import quote

    response = client.get(f"/api/v1/task-names/{quote(named, safe='')}?window=1h")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["name"] == named and body["window"] == "1h" and body["stored"] == 6
    assert body["totals"]["succeeded"] == 4 and body["totals"]["failed"] == 2
    assert body["failure_rate"] == pytest.approx(2 / 6)
    assert body["totals"]["runtime"]["count"] == 6
    assert body["runtime"]["count"] == 6 and body["runtime"]["max"] == 0.5
    [group] = body["failures"]["groups"]
    assert group["exception"] == "ValueError" and group["count"] == 2
    assert group["example"]["id"] == "bad1"
    assert body["last_seen"] == pytest.approx(NOW - 49, abs=1)
    # The same name through the page's other windows: the counters agree.
    for window in ("15m", "24h", "7d"):
        wide = client.get(f"/api/v1/task-names/{quote(named, safe='')}?window={window}")
        assert wide.get_json()["totals"]["failed"] == 2, window


def test_task_name_endpoint_refuses_bad_input(client, named):
    from urllib.parse import quote

    path = f"/api/v1/task-names/{quote(named, safe='')}"
    assert client.get("/api/v1/task-names/never.seen").status_code == 404
    assert "unknown task name" in client.get("/api/v1/task-names/never.seen").get_json()["error"]
    for query in ("window=2h", "window=", "window=1h&window=7d", "window=" + "x" * 5000):
        response = client.get(f"{path}?{query}")
        if query == "window=":  # empty means the default, as the page's other parameters
            assert response.status_code == 200
            continue
        assert response.status_code == 400, query
        assert "window" in response.get_json()["error"], query
    assert client.get("/api/v1/task-names/" + "n" * 600).status_code == 400


def test_task_name_endpoint_is_in_the_openapi_document(client):
    spec = client.get("/api/openapi.json").get_json()
    entry = spec["paths"]["/api/v1/task-names/{name}"]["get"]
    assert {p["name"] for p in entry["parameters"]} == {"name", "window"}
    assert set(entry["responses"]) >= {"200", "400", "404"}


def test_history_room_pushes_the_windows_newest_points(store, named):
    from monitor.web import history_room as room

    event, body = room.snapshot(store, room.parse({"window": "1h", "name": named}))
    assert event == "history" and body["name"] == named and body["step"] == 60
    assert len(body["points"]) == room.TAIL
    assert body["points"][-1]["t"] <= NOW < body["to"]
    assert body["totals"]["failed"] == 2 and body["totals"]["succeeded"] == 4


def test_history_room_is_a_kind_of_the_live_table():
    from monitor.web.live import ROOM_KINDS, RoomError, room_name

    assert ROOM_KINDS["history"].every and not ROOM_KINDS["history"].on  # periodic
    assert room_name({"room": "history", "window": "24h", "worker": "w@h"}) == (
        'history:{"window":"24h","worker":"w@h"}'
    )
    for bad in ({"room": "history"}, {"room": "history", "window": "1h", "name": ["x"]}):
        with pytest.raises(RoomError):
            room_name(bad)


def test_a_task_name_with_slashes_and_newlines_reaches_its_page_and_api(client, store):
    from urllib.parse import quote

    name = "jobs/nightly\nreport"
    store.apply([_failure("s1", NOW - 10, name=name, exception="OSError('disk')")])
    body = client.get(f"/api/v1/task-names/{quote(name, safe='')}").get_json()
    assert body["name"] == name and body["failures"]["groups"][0]["exception"] == "OSError"
    page = client.get(f"/task-name/{quote(name, safe='')}")
    assert page.status_code == 200
    assert b'"page": "task_name"' in page.data and b"charts.js" in page.data
