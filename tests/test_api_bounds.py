"""Bounded work for every API request: caps, budgets, cursors, merged state indexes, refresh.

Through Flask's test client on real Redis. Budgets (rows, seconds, bytes) are
lowered with monkeypatch so that a few hundred stored tasks exercise what a
million would; what each request costs in time and memory is measured by
``bench/bench_attack.py``, not asserted here.
"""

from __future__ import annotations

import threading
import time

import pytest

from monitor.model import WorkerEvent
from monitor.web import create_app, flower_api, queries
from monitor.web import inspect as web_inspect
from monitor.web.inspect import InspectError
from monitor.web.queries import IndexWalk

from .helpers import api_task as task
from .helpers import wait_for

T0 = time.time() - 900
STATES = ("SUCCESS", "FAILURE", "STARTED")


@pytest.fixture
def many(store):
    """300 tasks; ids and scores such that several share one score across states."""
    records = []
    for i in range(300):
        # groups of three share a timestamp, each in another state
        t = T0 + (i // 3)
        state = STATES[i % 3]
        name = ("proj.add", "proj.mul", "proj.div", "proj.rare")[i % 4 if i % 10 else 3]
        worker = f"celery@w{i % 2}"
        records.append(task(f"t{i:03d}", state, t, name, worker, result=f"r{i}"))
    store.apply(records)
    return store


def newest_first(store, ids=None):
    """Every task id in the order of the newest-first list (score desc, id desc)."""
    pairs = store.redis.zrevrange(store.keys.tasks, 0, -1, withscores=True)
    ordered = sorted(pairs, key=lambda p: (p[1], p[0]), reverse=True)
    return [tid for tid, _ in ordered if ids is None or tid in ids]


def ids(body):
    return [row["id"] for row in body["tasks"]]


def page_all(client, url, limit):
    seen, cursor, pages = [], None, 0
    while True:
        body = client.get(f"{url}&limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
        assert body.status_code == 200, body.get_json()
        body = body.get_json()
        seen += ids(body)
        pages += 1
        cursor = body["next_cursor"]
        if not cursor:
            return seen, pages
        assert pages < 1000, "paging does not end"


def in_states(store, states):
    return {
        tid
        for tid in store.redis.zrange(store.keys.tasks, 0, -1)
        if store.redis.hget(store.keys.task(tid), "state") in states
    }


# -- merged state indexes ------------------------------------------------------


def test_several_states_page_from_the_indexes_in_order_with_an_exact_total(client, many):
    wanted = in_states(many, {"SUCCESS", "FAILURE"})
    body = client.get("/api/v1/tasks?state=SUCCESS,FAILURE&limit=1000").get_json()
    assert ids(body) == newest_first(many, wanted)
    assert body["total"] == len(wanted) == 200  # ZCARD sums: exact
    assert "scanned" not in body  # served from the indexes, nothing tested


@pytest.mark.parametrize("limit", [1, 2, 4, 7])
def test_cursor_paging_over_merged_states_with_equal_scores(client, many, limit):
    # Every score is shared by three tasks in three states: ties cross the indexes.
    wanted = in_states(many, set(STATES))
    seen, _ = page_all(client, "/api/v1/tasks?state=STARTED,FAILURE,SUCCESS", limit)
    assert seen == newest_first(many, wanted)


def test_merged_states_ascending_and_time_window(client, many):
    body = client.get(
        f"/api/v1/tasks?state=SUCCESS,STARTED&order=asc&since={T0 + 10}&until={T0 + 19.5}"
        "&limit=1000"
    ).get_json()
    wanted = [
        tid
        for tid in reversed(newest_first(many, in_states(many, {"SUCCESS", "STARTED"})))
        if T0 + 10 <= many.redis.zscore(many.keys.tasks, tid) <= T0 + 19.5
    ]
    assert ids(body) == wanted and body["total"] == len(wanted) == 20


def test_state_with_name_and_worker_within_the_budget(client, many):
    body = client.get("/api/v1/tasks?state=SUCCESS,FAILURE&name=proj.rare&limit=1000").get_json()
    rare = {
        tid
        for tid in in_states(many, {"SUCCESS", "FAILURE"})
        if many.redis.hget(many.keys.task(tid), "name") == "proj.rare"
    }
    assert set(ids(body)) == rare and rare
    assert body["total"] is None  # the indexes cannot count a combination
    three = client.get("/api/v1/tasks?state=FAILURE&name=proj.add&worker=celery@w0").get_json()
    for row in three["tasks"]:
        assert (row["state"], row["name"], row["worker"]) == ("FAILURE", "proj.add", "celery@w0")


def test_flower_offsets_on_merged_states_are_exact(client, many):
    wanted = newest_first(many, in_states(many, {"SUCCESS", "FAILURE"}))
    for offset in (0, 1, 2, 3, 5, 100, 197, 199):
        body = client.get(f"/api/tasks?state=SUCCESS,FAILURE&offset={offset}&limit=4").get_json()
        assert list(body) == wanted[offset : offset + 4], offset
    assert client.get("/api/tasks?state=SUCCESS,FAILURE&offset=200").get_json() == {}


@pytest.mark.parametrize("desc", [True, False])
def test_seek_lands_on_every_rank_of_merged_and_single_indexes(many, desc):
    keys = [many.keys.by_state(s) for s in STATES]
    full = [tid for tid, _ in IndexWalk(many, keys, desc, None, None, None).next_batch(1000)]
    assert len(full) == 300
    for keyset in (keys, [many.keys.tasks]):
        for offset in (0, 1, 2, 3, 4, 150, 298, 299):
            walk = IndexWalk(many, keyset, desc, None, None, None)
            assert walk.seek(offset)
            assert [tid for tid, _ in walk.next_batch(3)] == full[offset : offset + 3]
        assert not IndexWalk(many, keyset, desc, None, None, None).seek(300)
    bounded = IndexWalk(many, keys, desc, T0 + 10, T0 + 20, None)
    inside = [t for t in full if T0 + 10 <= many.redis.zscore(many.keys.tasks, t) <= T0 + 20]
    assert bounded.seek(5)
    assert [tid for tid, _ in bounded.next_batch(2)] == inside[5:7]


# -- scans within budgets --------------------------------------------------------


def test_search_with_a_huge_offset_is_bounded_and_empty(client, many, monkeypatch):
    monkeypatch.setattr(queries, "SCAN_BUDGET", 50)
    monkeypatch.setattr(queries, "SCAN_CHUNK", 10)
    # 300 tasks match "t"; the scan stops after 50 without keeping any of them.
    assert client.get("/api/tasks?search=-&offset=100000000").get_json() == {}
    assert client.get("/api/tasks?search=t&offset=40&limit=5").get_json() != {}
    assert client.get("/api/tasks?search=t&offset=60&limit=5").get_json() == {}  # out of budget


def test_flower_scan_offsets_count_matches_without_keeping_them(client, many):
    everything = list(client.get("/api/tasks?search=r1&limit=1000").get_json())
    assert everything and len(everything) < 300
    for offset in (0, 3, len(everything) - 2):
        page = client.get(f"/api/tasks?search=r1&offset={offset}&limit=3").get_json()
        assert list(page) == everything[offset : offset + 3]
    merged = client.get("/api/tasks?state=FAILURE&taskname=proj.rare&offset=2&limit=2")
    rare = [
        tid
        for tid in newest_first(many, in_states(many, {"FAILURE"}))
        if many.redis.hget(many.keys.task(tid), "name") == "proj.rare"
    ]
    assert list(merged.get_json()) == rare[2:4]


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/tasks?q=r",
        "/api/v1/tasks?state=SUCCESS&name=proj.rare",
        "/api/v1/tasks?state=SUCCESS,FAILURE&worker=celery@w0",
    ],
)
def test_v1_scans_stop_at_the_row_budget_and_the_cursor_continues(client, many, monkeypatch, url):
    full, _ = page_all(client, url, 1000)
    assert full
    monkeypatch.setattr(queries, "SCAN_BUDGET", 20)
    monkeypatch.setattr(queries, "SCAN_CHUNK", 7)
    first = client.get(url + "&limit=1000").get_json()
    assert first["scanned"] <= 21 and first["next_cursor"]
    budgeted, pages = page_all(client, url, 1000)
    assert budgeted == full and pages >= 3


def test_a_scan_out_of_time_still_moves_its_cursor_on(client, many, monkeypatch):
    monkeypatch.setattr(queries, "SCAN_SECONDS", 0.0)
    monkeypatch.setattr(queries, "SCAN_CHUNK", 25)
    body = client.get("/api/v1/tasks?q=zzz-no-such-text").get_json()
    assert body["tasks"] == [] and body["scanned"] == 25 and body["next_cursor"]
    seen, pages = page_all(client, "/api/v1/tasks?q=r29", 100)
    assert pages >= 12 and set(seen) == {"t029", *(f"t{i}" for i in range(290, 300))}


def test_page_bytes_cap_cuts_a_page_and_the_cursor_continues(client, many, monkeypatch):
    everything = ids(client.get("/api/v1/tasks?limit=1000").get_json())
    monkeypatch.setattr(queries, "PAGE_BYTES", 500)
    body = client.get("/api/v1/tasks?limit=1000").get_json()
    assert 0 < len(body["tasks"]) < 50 and body["next_cursor"]
    seen, _ = page_all(client, "/api/v1/tasks?", 1000)
    assert seen == everything
    scanned, _ = page_all(client, "/api/v1/tasks?q=t", 1000)
    assert scanned == everything
    assert 0 < len(client.get("/api/tasks").get_json()) < 50


def test_sort_in_memory_stays_within_its_limit(client, many, monkeypatch):
    slow = client.get("/api/v1/tasks?sort=name&order=asc&state=FAILURE&limit=5").get_json()
    assert [r["name"] for r in slow["tasks"]] == sorted(r["name"] for r in slow["tasks"])
    assert slow["total"] == 100
    monkeypatch.setattr(queries, "SORT_LIMIT", 50)
    refused = client.get("/api/v1/tasks?sort=runtime&state=FAILURE")
    assert refused.status_code == 400 and "50" in refused.get_json()["error"]
    assert len(client.get("/api/tasks?sort_by=name&offset=45&limit=10").get_json()) == 5


# -- caps and validation --------------------------------------------------------


def test_flower_limit_and_offset_are_clamped(client, many, monkeypatch):
    monkeypatch.setattr(flower_api, "MAX_FLOWER_LIMIT", 7)
    newest = newest_first(many)
    assert list(client.get("/api/tasks").get_json()) == newest[:7]
    assert list(client.get("/api/tasks?limit=" + "9" * 400).get_json()) == newest[:7]
    assert list(client.get("/api/tasks?limit=-3").get_json()) == newest[:7]
    assert list(client.get("/api/tasks?limit=2&offset=-5").get_json()) == newest[:2]
    assert client.get("/api/tasks?offset=" + "9" * 900).get_json() == {}
    assert client.get("/api/tasks?state=SUCCESS,FAILURE&offset=1" + "0" * 30).get_json() == {}
    assert client.get("/api/tasks?limit=two").status_code == 400


BAD_V1 = [
    "limit=0",
    "limit=1001",
    "limit=" + "9" * 5000,
    "limit=1e3",
    "limit=-1",
    "limit=%EF%BC%91",  # a full-width digit one
    "since=nan",
    "since=inf",
    "until=-1",
    "since=-inf",
    "until=1e300",
    "since=" + "9" * 400,
    "cursor=nan~0",
    "cursor=inf~1",
    "cursor=1e300~0",
    "cursor=-1e300~0",
    "cursor=1700000000.5~-1",
    "cursor=1700000000.5~99999999999",
    "cursor=1700000000.5~",
    "cursor=garbage",
    "cursor=~",
    "cursor=" + "1" * 200 + "~1",
    "state=" + "A" * 65,
    "state=" + ",".join(f"S{i}" for i in range(17)),
    "state=%FF%FE",
    "name=" + "n" * 513,
    "worker=" + "w" * 513,
    "q=" + "x" * 1001,
    "q=" + "x" * 10_000,
    "sort=" + "s" * 10_000,
    "order=" + "o" * 50,
    "limit=5&limit=6",
    "state=SUCCESS&state=FAILURE",
    "x" * 2000 + "=1",
]


@pytest.mark.parametrize("query", BAD_V1, ids=lambda q: q[:40])
def test_bad_v1_parameters_are_400_json(client, many, query):
    response = client.get(f"/api/v1/tasks?{query}")
    assert response.status_code == 400, response.get_data(as_text=True)[:200]
    assert response.get_json()["error"]


BAD_OTHER = [
    "/api/v1/stats?minutes=1441",
    "/api/v1/stats?minutes=0",
    "/api/v1/stats?minutes=-5",
    "/api/v1/stats?minutes=nan",
    "/api/v1/stats?minutes=1e3",
    "/api/v1/stats?minutes=" + "9" * 10_000,
    "/api/v1/stats?minutes=60&minutes=61",
    "/api/tasks?sort_by=bogus",
    "/api/tasks?sort_by=" + "-" * 5000,
    "/api/tasks?received_start=yesterday",
    "/api/tasks?received_start=2024-13-01 00:00",
    "/api/tasks?received_end=" + "2" * 3000,
    "/api/tasks?search=" + "s" * 1001,
    "/api/tasks?taskname=" + "t" * 600,
    "/api/tasks?state=NOT A STATE",
    "/api/tasks?limit=1&limit=2",
    "/api/workers?workername=" + "w" * 600,
    "/api/v1/tasks/" + "i" * 600,
    "/api/task/info/" + "i" * 10_000,
    "/api/v1/workers/" + "h" * 600,
]


@pytest.mark.parametrize("url", BAD_OTHER, ids=lambda u: u[:50])
def test_bad_parameters_elsewhere_are_400_json(client, many, url):
    response = client.get(url)
    assert response.status_code == 400, response.get_data(as_text=True)[:200]
    assert response.get_json()["error"]


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/tasks/%FF%FE",
        "/api/task/info/%C0%AF",
        "/api/v1/workers/%ED%A0%80",
        "/api/v1/tasks/a%00b",
        "/api/v1/tasks?name=%FF&worker=%C0",
        "/api/tasks?taskname=%ED%A0%80&search=%FF",
        "/api/v1/tasks?q=%FF%00",
    ],
)
def test_invalid_utf8_and_nul_never_500(client, many, url):
    response = client.get(url)
    assert response.status_code in (200, 404), response.get_data(as_text=True)[:200]
    assert response.is_json


def test_stored_values_json_cannot_hold_never_500(client, store):
    # A foreign or older writer left numbers that are not finite, or huge.
    store.apply([task("odd", "SUCCESS", T0, runtime=1.0)])
    store.redis.hset(
        store.keys.task("odd"),
        mapping={"runtime": "inf", "retries": "1e400", "clock": "nan", "received": "-inf"},
    )
    store.apply([WorkerEvent("celery@odd", "heartbeat", time.time(), "event", {"freq": 2.0})])
    store.redis.hset(store.keys.worker("celery@odd"), mapping={"concurrency": "inf", "pid": "nan"})
    minute = int(time.time() // 60)
    store.redis.hset(store.keys.stats(minute), mapping={"state:SUCCESS": "inf", "rtcnt:x": "nan"})
    for url in (
        "/api/tasks",
        "/api/tasks?sort_by=runtime",
        "/api/tasks?sort_by=-received",
        "/api/task/info/odd",
        "/api/workers",
        "/api/v1/tasks?sort=runtime",
        "/api/v1/stats?minutes=5",
        "/api/v1/workers",
    ):
        response = client.get(url)
        assert response.status_code == 200, (url, response.get_data(as_text=True)[:300])
    info = client.get("/api/task/info/odd").get_json()
    assert info["runtime"] == "inf" and info["retries"] == "1e400"  # kept as text


def test_stats_read_a_day_by_the_hour_within_a_field_budget(client, store, app, monkeypatch):
    now = time.time()
    store.apply([task(f"s{i}", "SUCCESS", now - 60 * i, name=f"n{i}") for i in range(0, 600, 7)])
    full = client.get("/api/v1/stats?minutes=1440").get_json()
    assert len(full["minutes"]) == 1440 and full["partial"] is False
    assert [m["minute"] for m in full["minutes"]] == sorted(m["minute"] for m in full["minutes"])
    assert sum(m["succeeded"] for m in full["minutes"]) == len(range(0, 600, 7))
    monkeypatch.setattr(queries, "STATS_FIELDS_BUDGET", 10)
    cut = client.get("/api/v1/stats?minutes=1440").get_json()
    assert cut["partial"] is True and 0 < len(cut["minutes"]) < 1440
    assert cut["minutes"][-1]["minute"] >= full["minutes"][-1]["minute"]  # the newest kept


def test_task_names_are_capped(client, store, monkeypatch):
    store.apply([task(f"n{i}", "SUCCESS", T0 + i, name=f"name{i}") for i in range(30)])
    monkeypatch.setattr(queries, "MAX_NAMES", 10)
    assert len(client.get("/api/v1/task-names").get_json()["names"]) == 10
    assert len(client.get("/api/task/types").get_json()["task-types"]) == 10


def test_every_api_response_says_its_server_time(client, many):
    timing = client.get("/api/v1/tasks?limit=1").headers["Server-Timing"]
    assert timing.startswith("app;dur=") and float(timing.split("=")[1]) >= 0
    assert "Server-Timing" in client.get("/api/tasks?limit=x").headers  # errors too


# -- /api/workers?refresh=1 --------------------------------------------------------


def test_refresh_sends_one_set_of_broadcasts_at_a_time(app, monkeypatch):
    inspector = app.extensions["monitor"].inspector
    running = []
    concurrent = []

    def slow_broadcast(workername, _expected=0):
        running.append(workername)
        concurrent.append(len(running))
        time.sleep(0.3)
        running.remove(workername)

    monkeypatch.setattr(inspector, "_broadcast", slow_broadcast)
    results = []
    threads = [
        threading.Thread(target=lambda n=n: results.append(inspector.refresh(n, wait=20)))
        for n in (None, None, None, "celery@a", None)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [True] * 5
    assert max(concurrent) == 1  # never two sets at once
    assert inspector.broadcasts == 2  # one for all workers (shared), one for celery@a
    # A caller with a short deadline does not wait for a running refresh.
    monkeypatch.setattr(web_inspect, "REFRESH_REUSE", 0.0)
    slow = threading.Thread(target=inspector.refresh)
    slow.start()
    wait_for(lambda: running, 5, 0.01, what="the slow refresh running")
    # Had it waited for the running refresh, it would have run its own: True.
    assert inspector.refresh("celery@b", wait=0.05) is False
    slow.join(5)


def test_refresh_reuses_recent_replies_and_failures(settings, filled_workers, monkeypatch):
    from celery import Celery

    dead = Celery("dead-broker", broker="redis://127.0.0.1:1/0")
    app = create_app(settings, message_queue=None, celery_app=dead)
    client = app.test_client()
    inspector = app.extensions["monitor"].inspector
    for _ in range(3):
        response = client.get("/api/workers?refresh=1")
        assert response.status_code == 503 and "broker unreachable" in response.get_json()["error"]
    assert inspector.broadcasts == 1  # the failure is reused for REFRESH_REUSE seconds
    # An unknown worker is refused before any broadcast.
    assert client.get("/api/workers?refresh=1&workername=celery@ghost").status_code == 404
    assert inspector.broadcasts == 1
    monkeypatch.setattr(web_inspect, "REFRESH_REUSE", 0.0)
    assert client.get("/api/workers?refresh=1").status_code == 503
    assert inspector.broadcasts == 2
    dead.close()


def test_a_refresh_past_the_deadline_fills_the_cache_for_the_next_request(app, monkeypatch):
    inspector = app.extensions["monitor"].inspector
    release = threading.Event()

    def slow_broadcast(_workername, _expected=0):
        release.wait(10)
        with inspector._lock:
            inspector._cache["celery@slow"] = {"registered": ["proj.add"]}

    monkeypatch.setattr(inspector, "_broadcast", slow_broadcast)
    assert inspector.refresh(wait=0.01) is False  # answered with what was cached: nothing
    assert inspector.cached("celery@slow") == {}
    release.set()
    assert inspector.refresh(wait=10) is True  # the same refresh, finished, then reused
    assert inspector.cached("celery@slow") == {"registered": ["proj.add"]}
    assert inspector.broadcasts == 1


@pytest.fixture
def filled_workers(store):
    store.apply([WorkerEvent("celery@w1", "heartbeat", time.time(), "event", {"freq": 2.0})])
    return store


def test_inspect_error_raised_again_is_a_new_exception(app, monkeypatch):
    inspector = app.extensions["monitor"].inspector

    def down(_workername, _expected=0):
        raise InspectError("broker unreachable: test")

    monkeypatch.setattr(inspector, "_broadcast", down)
    errors = []
    for _ in range(3):
        with pytest.raises(InspectError) as info:
            inspector.refresh()
        errors.append(info.value)
    assert len({id(e) for e in errors}) == 3 and inspector.broadcasts == 1


# -- short requests first ------------------------------------------------------------


def test_a_long_request_waits_at_its_pauses_while_a_short_one_is_in_flight(monkeypatch):
    monkeypatch.setattr(queries, "YIELD_MAX", 30.0)
    order: list[str] = []
    long_entered = threading.Event()

    def long_request():
        queries.request_started()
        long_entered.set()
        queries.pause()  # its second chunk: from now on it is long, and waits
        order.append("long went on")
        queries.request_finished()

    def short_request():
        queries.request_started()
        wait_for(lambda: long_entered.is_set() and queries._turns.short == 1, 10, 0.001)
        order.append("short finished")
        queries.request_finished()

    threads = [threading.Thread(target=short_request), threading.Thread(target=long_request)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert order == ["short finished", "long went on"]
    assert queries._turns.short == 0


def test_a_long_request_waits_no_longer_than_yield_max(monkeypatch):
    monkeypatch.setattr(queries, "YIELD_MAX", 0.01)
    returned = threading.Event()
    short_in_flight = threading.Event()
    release = threading.Event()

    def short_request():  # never finishes while the long one pauses
        queries.request_started()
        short_in_flight.set()
        release.wait(20)
        queries.request_finished()

    def long_request():
        queries.request_started()
        queries.pause()
        queries.pause()
        returned.set()
        queries.request_finished()

    short = threading.Thread(target=short_request)
    short.start()
    short_in_flight.wait(10)
    long = threading.Thread(target=long_request)
    long.start()
    assert returned.wait(10)  # not stuck behind the short request
    release.set()
    short.join(10)
    long.join(10)
    assert queries._turns.short == 0


def test_pause_outside_a_request_only_switches():
    queries.pause()  # the live tier's overview push calls stats() outside requests
    assert queries._turns.short == 0
