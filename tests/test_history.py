"""History kept by the write script and read by monitor.history: windows, steps,
counters, percentiles interpolated within buckets, queue wait counted once
whatever the arrival order, retention TTLs, per-name / per-worker caps, and
GET /api/v1/history's validation."""

from __future__ import annotations

import time

import pytest

from monitor import history, vocabulary
from monitor import store as store_module
from monitor.model import TaskEvent
from monitor.store import Store

NOW = float(int(time.time() // 3600) * 3600 - 7200)  # an hour boundary, two hours ago
MINUTE = NOW + 30 * 60  # well inside the 1 h window that ends at NOW + 3599


def lifecycle(tid, t, name="proj.a", worker="celery@w1", runtime=0.3, state="SUCCESS", wait=1.0):
    """A task sent at t - wait, received at t, started, ended at t + runtime."""
    return [
        TaskEvent(tid, "PENDING", t - wait, "signal", "web-1", {"name": name, "queue": "q1"}),
        TaskEvent(tid, "RECEIVED", t, "event", worker, {"name": name, "worker": worker}),
        TaskEvent(tid, "STARTED", t + 0.01, "event", worker, {"worker": worker}),
        TaskEvent(tid, state, t + runtime, "event", worker, {"worker": worker, "runtime": runtime}),
    ]


def test_a_window_has_one_point_per_step(store: Store):
    for window, (seconds, step) in history.WINDOWS.items():
        body = history.history(store, window, now=NOW)
        assert body["step"] == step and len(body["points"]) == seconds // step
        assert body["to"] - body["from"] == seconds and body["to"] > NOW >= body["from"]
        ts = [p["t"] for p in body["points"]]
        assert ts == list(range(body["from"], body["to"], step))
        empty = body["totals"]
        assert empty["succeeded"] == 0 and empty["runtime"]["count"] == 0
        assert empty["runtime"]["p50"] is None and empty["queue_wait"]["p99"] is None


def test_counts_land_in_their_minute_and_hour(store: Store):
    events = []
    for i in range(6):
        events += lifecycle(f"ok{i}", MINUTE + i * 0.1)
    for i in range(3):
        events += lifecycle(f"bad{i}", MINUTE + 60 + i * 0.1, state="FAILURE")
    events.append(TaskEvent("r", "RETRY", MINUTE + 5, "event", "celery@w1", {"name": "proj.a"}))
    events.append(TaskEvent("x", "REVOKED", MINUTE + 5, "event", "celery@w1", {"name": "proj.a"}))
    store.apply(events, now=NOW + 3000)
    hour = history.history(store, "1h", now=NOW + 3000)
    by_t = {p["t"]: p for p in hour["points"]}
    first, second = by_t[int(MINUTE // 60) * 60], by_t[int(MINUTE // 60) * 60 + 60]
    assert (first["received"], first["started"], first["succeeded"]) == (6, 6, 6)
    assert (first["retried"], first["revoked"], first["failed"]) == (1, 1, 0)
    assert (second["received"], second["failed"], second["succeeded"]) == (3, 3, 0)
    assert hour["totals"]["received"] == 9 and hour["totals"]["runtime"]["count"] == 9
    assert hour["totals"]["runtime"]["sum"] == pytest.approx(9 * 0.3)
    # the same counts by the hour, 24 h and 7 d windows
    for window in ("24h", "7d"):
        day = history.history(store, window, now=NOW + 3000)
        (point,) = [p for p in day["points"] if p["received"]]
        assert point["t"] == NOW and (point["succeeded"], point["failed"]) == (6, 3)
        assert day["totals"]["retried"] == 1
    # 15 minutes before the tasks: nothing
    assert history.history(store, "15m", now=MINUTE - 60)["totals"]["received"] == 0


def test_percentiles_are_interpolated_within_buckets(store: Store):
    # 4 runtimes in (0.25, 0.5], 4 in (1, 2.5]: p50 is the top of the first
    # bucket, p95 and p99 inside the second (linear within it).
    events = []
    for i, runtime in enumerate([0.3, 0.4, 0.45, 0.5, 1.5, 2.0, 2.2, 2.4]):
        events += lifecycle(f"t{i}", MINUTE + i * 0.01, runtime=runtime)
    store.apply(events, now=NOW + 3000)
    rt = history.history(store, "1h", name="proj.a", now=NOW + 3000)["totals"]["runtime"]
    assert rt["count"] == 8
    assert rt["p50"] == pytest.approx(0.5)  # rank 4: the fourth of 8, end of the 1st bucket
    assert rt["p95"] == pytest.approx(1.0 + 1.5 * (0.95 * 8 - 4) / 4)
    assert rt["p99"] == pytest.approx(1.0 + 1.5 * (0.99 * 8 - 4) / 4)
    assert history.quantile(0.5, [0.0] * 21) is None
    beyond = [0.0] * 20 + [3.0]  # all in +Inf: the highest finite bound
    assert history.quantile(0.99, beyond) == vocabulary.STAT_BUCKETS[-1]


def test_per_name_and_per_worker_history(store: Store):
    events = lifecycle("a1", MINUTE, name="proj.a", worker="celery@w1")
    events += lifecycle("b1", MINUTE, name="proj.b", worker="celery@w2", state="FAILURE")
    events += lifecycle("b2", MINUTE + 1, name="proj.b", worker="celery@w1")
    store.apply(events, now=NOW + 3000)
    a = history.history(store, "1h", name="proj.a", now=NOW + 3000)["totals"]
    b = history.history(store, "24h", name="proj.b", now=NOW + 3000)["totals"]
    assert (a["received"], a["succeeded"], a["failed"]) == (1, 1, 0)
    assert (b["received"], b["succeeded"], b["failed"]) == (2, 1, 1)
    assert b["queue_wait"]["count"] == 2 and b["queue_wait"]["sum"] == pytest.approx(2.0)
    w1 = history.history(store, "1h", worker="celery@w1", now=NOW + 3000)["totals"]
    w2 = history.history(store, "7d", worker="celery@w2", now=NOW + 3000)["totals"]
    assert (w1["received"], w1["succeeded"], w1["runtime"]["count"]) == (2, 2, 2)
    assert (w2["received"], w2["failed"]) == (1, 1)
    assert w1["queue_wait"]["count"] == 0  # kept per name, not per worker
    # the producer's PENDING counts on no worker
    assert history.history(store, "1h", worker="web-1", now=NOW + 3000)["totals"]["received"] == 0
    with pytest.raises(history.HistoryError) as exc:
        history.history(store, "1h", name="proj.a", worker="celery@w1")
    assert exc.value.parameter == "worker"
    with pytest.raises(history.HistoryError):
        history.history(store, "5m")


@pytest.mark.parametrize("order", ["sent first", "received first", "one batch reversed"])
def test_queue_wait_is_counted_once_whatever_the_arrival_order(store: Store, order):
    t = time.time() - 120
    sent = TaskEvent("q", "PENDING", t, "signal", "web-1", {"name": "proj.q", "queue": "q1"})
    received = TaskEvent("q", "RECEIVED", t + 2.5, "event", "celery@w1", {"name": "proj.q"})
    started = TaskEvent("q", "STARTED", t + 2.6, "event", "celery@w1", {})
    if order == "sent first":
        store.apply([sent])
        store.apply([received, started])
    elif order == "received first":
        store.apply([received, started])
        store.apply([sent])
    else:
        store.apply([started, received, sent])
    # redeliveries and a second source's reports change nothing
    store.apply([sent, received])
    store.apply([TaskEvent("q", "RECEIVED", t + 2.5, "signal", "celery@w1", {"name": "proj.q"})])
    (row,) = history.queue_wait_by_name(store, 3600)
    assert row["name"] == "proj.q" and row["count"] == 1 and row["sum"] == pytest.approx(2.5)
    assert 1.0 < row["p50"] <= 2.5  # inside the (1, 2.5] bucket
    assert float(store.get_task("q")["queue_wait"]) == pytest.approx(2.5)
    total = history.history(store, "1h")["totals"]["queue_wait"]
    assert total["count"] == 1 and total["sum"] == pytest.approx(2.5)


def test_queue_wait_by_name_and_runtime_quantiles_read_recent_windows(store: Store):
    t = time.time() - 30
    events = []
    for i in range(5):
        events += lifecycle(f"f{i}", t + i * 0.01, name="proj.fast", runtime=0.02, wait=0.02)
    for i in range(2):
        events += lifecycle(f"s{i}", t + i * 0.01, name="proj.slow", runtime=20.0, wait=40.0)
    store.apply(events)
    rows = history.queue_wait_by_name(store, 600, limit=10)
    assert [(r["name"], r["count"]) for r in rows] == [("proj.fast", 5), ("proj.slow", 2)]
    assert rows[0]["p99"] <= 0.025 and 30.0 < rows[1]["p50"] <= 60.0
    slow = history.runtime_quantiles(store, "proj.slow", 3600)
    assert slow["count"] == 2 and 10.0 < slow["p50"] <= 30.0
    assert history.runtime_quantiles(store, "proj.fast", 7 * 86400)["count"] == 5  # by the hour
    assert history.runtime_quantiles(store, "proj.none", 60) == {
        "count": 0, "p50": None, "p95": None, "p99": None,
    }  # fmt: skip
    for bad in (float("nan"), float("inf"), -1, 0, "60", None):
        with pytest.raises(history.HistoryError):
            history.runtime_quantiles(store, "proj.slow", bad)
    with pytest.raises(history.HistoryError):
        history.queue_wait_by_name(store, 60, limit=0)


def test_stats_hashes_expire_after_their_settings(store: Store):
    settings = store.settings.replace(
        stats_minutes_ttl=5000.0, stats_ttl=300.0, stats_hours_ttl=90000.0,
        stats_scoped_hours_ttl=20000.0,
    )  # fmt: skip
    s = Store(store.redis, settings)
    t = time.time() - 10
    s.apply(lifecycle("e", t))
    keys = s.keys
    minute, hour = keys.stats(int(t // 60)), keys.stats_hour(int(t // 3600))
    expected = {
        minute: 5000, keys.stats_names(minute): 300, keys.stats_workers(minute): 300,
        hour: 90000, keys.stats_names(hour): 20000, keys.stats_workers(hour): 20000,
    }  # fmt: skip
    for key, ttl in expected.items():
        assert ttl - 5 <= store.redis.ttl(key) <= ttl, key


def test_per_name_and_per_worker_hashes_are_capped(store: Store, monkeypatch):
    monkeypatch.setattr(store_module, "STATS_FIELDS", 40)
    monkeypatch.setattr(store_module, "STATS_HOUR_FIELDS", 60)
    capped = Store(store.redis, store.settings.replace())  # config encoded anew
    for i in range(60):
        capped.apply(lifecycle(f"c{i}", MINUTE + i * 0.01, name=f"n{i}", worker=f"w{i}"), now=NOW)
    key = capped.keys.stats(int(MINUTE // 60))
    names, workers = capped.keys.stats_names(key), capped.keys.stats_workers(key)
    # one batch's worth of fields beyond the cap at most
    assert store.redis.hlen(names) < 40 + 20 and store.redis.hlen(workers) < 40 + 20
    hour = capped.keys.stats_names(capped.keys.stats_hour(int(MINUTE // 3600)))
    assert store.redis.hlen(hour) < 60 + 20
    # nothing lost, only folded: the names kept plus __other__ add up to all of them
    got = [
        history.history(capped, "1h", name=f"n{i}", now=NOW + 3000)["totals"]["succeeded"]
        for i in range(60)
    ]
    other = history.history(capped, "1h", name=vocabulary.STAT_OTHER, now=NOW + 3000)["totals"]
    assert 0 < sum(got) < 60 and sum(got) + other["succeeded"] == 60
    assert other["runtime"]["count"] == other["succeeded"]
    wother = history.history(capped, "24h", worker=vocabulary.STAT_OTHER, now=NOW + 3000)
    assert wother["totals"]["succeeded"] > 0


def test_hostile_stored_values_count_as_nothing(store: Store):
    store.apply(lifecycle("h", MINUTE), now=NOW + 3000)
    key = store.keys.stats(int(MINUTE // 60))
    store.redis.hset(key, mapping={"state:SUCCESS": "nan", "rt:0.5": "-3", "rtsum": "inf"})
    body = history.history(store, "1h", now=NOW + 3000)
    assert body["totals"]["succeeded"] == 0 and body["totals"]["received"] == 1
    assert body["totals"]["runtime"]["count"] == 0


def test_history_api(client, store):
    t = time.time() - 30
    store.apply(lifecycle("api", t, name="proj.api", worker="celery@api"))
    body = client.get("/api/v1/history?window=15m&name=proj.api").get_json()
    assert body["window"] == "15m" and body["step"] == 60 and len(body["points"]) == 15
    assert body["name"] == "proj.api" and body["totals"]["succeeded"] == 1
    assert client.get("/api/v1/history").get_json()["window"] == "1h"
    worker = client.get("/api/v1/history?window=7d&worker=celery@api").get_json()
    assert worker["step"] == 3600 and worker["totals"]["received"] == 1
    for query, parameter in (
        ("window=5m", "window"),
        ("window=" + "x" * 5000, "window"),
        ("window=1h&window=7d", "window"),
        ("name=" + "n" * 600, "name"),
        ("worker=" + "w" * 600, "worker"),
        ("name=a&worker=b", "worker"),
    ):
        response = client.get("/api/v1/history?" + query)
        assert response.status_code == 400, query
        assert parameter in response.get_json()["error"], query
    spec = client.get("/api/openapi.json").get_json()
    params = spec["paths"]["/api/v1/history"]["get"]["parameters"]
    assert [p["name"] for p in params] == ["window", "name", "worker"]


def test_counts_by_name(store: Store):
    t = time.time() - 30
    events = lifecycle("c1", t, name="proj.c") + lifecycle("c2", t, name="proj.c", state="FAILURE")
    events += lifecycle("d1", t, name="proj.d", state="FAILURE")
    store.apply(events)
    assert history.counts_by_name(store, 600) == {
        "proj.c": {"SUCCESS": 1, "FAILURE": 1},
        "proj.d": {"SUCCESS": 0, "FAILURE": 1},
    }
    assert history.counts_by_name(store, 86400, states=("RECEIVED",)) == {
        "proj.c": {"RECEIVED": 2},
        "proj.d": {"RECEIVED": 1},
    }


def test_invented_states_cannot_grow_a_global_hash(store: Store):
    for i in range(30):
        store.apply(
            [TaskEvent(f"s{i}-{j}", f"CUSTOM_{i}_{j}", MINUTE, "event", "w", {}) for j in range(10)]
            + lifecycle(f"ok{i}", MINUTE + 1),
            now=NOW + 3000,
        )
    key = store.keys.stats(int(MINUTE // 60))
    fields = store.redis.hgetall(key)
    assert store_module.STATS_GLOBAL_FIELDS <= len(fields) < store_module.STATS_GLOBAL_FIELDS + 12
    assert int(fields["state:SUCCESS"]) == 30  # Celery's states always count
    hourly = store.redis.hlen(store.keys.stats_hour(int(MINUTE // 3600)))
    assert hourly < store_module.STATS_GLOBAL_FIELDS + 12
