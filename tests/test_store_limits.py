"""The write script against hostile and buggy records, on a real Redis (issue 8,
items 2, 3 and 6): time sanity, records refused alone before anything is
written, and keys that cannot grow without bound.

Records here are built by hand, bypassing the model's checks, the way a buggy
producer or an older monitor version could write them.
"""

from __future__ import annotations

import json
import math

import pytest

from monitor import store as store_module
from monitor.model import TaskEvent, WorkerEvent
from monitor.store import Store

NOW = 1_790_000_000.0
FAR_FUTURE = NOW + 300_000 * 365.25 * 86400  # 300,000 years ahead


def good(task_id: str, state: str = "SUCCESS", at: float = NOW, **fields) -> TaskEvent:
    return TaskEvent(task_id, state, at, "event", "w1", {"name": "n", "worker": "w1", **fields})


def payload(*records) -> str:
    return json.dumps(list(records))


def every_score(store: Store) -> list[float]:
    scores = []
    for key in store.redis.scan_iter(match=store.keys.pattern()):
        if store.redis.type(key) == "zset":
            scores += [s for _, s in store.redis.zrange(key, 0, -1, withscores=True)]
    return scores


def test_far_future_and_too_old_times_are_clamped_to_arrival_and_kept(store: Store):
    store.apply(
        [
            good("future", at=FAR_FUTURE, runtime=0.5),
            good("ancient", state="RECEIVED", at=NOW - store.settings.max_age - 10),
            good("skewed", at=NOW + store.settings.clock_skew - 1),  # within the allowance
        ],
        now=NOW,
    )
    future = store.get_task("future")
    assert float(future["succeeded"]) == NOW and float(future["timestamp"]) == NOW
    assert float(future["succeeded_reported"]) == FAR_FUTURE
    assert future["timeline"][0]["timestamp"] == NOW
    assert future["timeline"][0]["reported_timestamp"] == FAR_FUTURE
    ancient = store.get_task("ancient")
    assert float(ancient["received"]) == NOW and "received_reported" in ancient
    skewed = store.get_task("skewed")
    assert float(skewed["succeeded"]) == NOW + store.settings.clock_skew - 1
    assert "succeeded_reported" not in skewed
    # no index score in the future beyond the allowance
    assert max(every_score(store)) <= NOW + store.settings.clock_skew
    # and retention reaches the clamped task like any other
    store.apply([good("later")], now=NOW + store.settings.max_age + 1)
    assert store.get_task("future") is None


def test_a_forged_far_future_heartbeat_ages_out(store: Store):
    forged = WorkerEvent("forged@x", "heartbeat", FAR_FUTURE, "event", {"freq": 2.0})
    store.apply([forged], now=NOW)
    worker = store.worker("forged@x", now=NOW)
    assert float(worker["last_heartbeat"]) == NOW
    assert float(worker["last_heartbeat_reported"]) == FAR_FUTURE
    assert store.worker("forged@x", now=NOW + 60)["online"] is False
    store.apply([], now=NOW)  # a no-op batch is skipped: purge runs with the next one
    store.apply([good("t")], now=NOW + store.settings.worker_purge_after + 1)
    assert store.worker("forged@x") is None
    assert store.redis.zscore(store.keys.workers, "forged@x") is None


BAD_RECORDS = {
    "non-finite time": ["t", "bad1", "SUCCESS", "inf", "event", "w", {}, None],
    "NaN time": ["t", "bad2", "SUCCESS", "nan", "event", "w", {}, None],
    "overflowing time": ["t", "bad3", "SUCCESS", "1e999", "event", "w", {}, None],
    "time a list": ["t", "bad4", "SUCCESS", [5], "event", "w", {}, None],
    "lower-case state": ["t", "bad5", "success", repr(NOW), "event", "w", {}, None],
    "state too long": ["t", "bad6", "S" * 65, repr(NOW), "event", "w", {}, None],
    "id names a timeline": ["t", "x:timeline", "SUCCESS", repr(NOW), "event", "w", {}, None],
    "id not text": ["t", {"a": 1}, "SUCCESS", repr(NOW), "event", "w", {}, None],
    "id too long": ["t", "i" * 600, "SUCCESS", repr(NOW), "event", "w", {}, None],
    "empty id": ["t", "", "SUCCESS", repr(NOW), "event", "w", {}, None],
    "unknown source": ["t", "bad7", "SUCCESS", repr(NOW), "mallory", "w", {}, None],
    "field a boolean": ["t", "bad8", "SUCCESS", repr(NOW), "event", "w", {"result": True}, None],
    "field null": ["t", "bad15", "SUCCESS", repr(NOW), "event", "w", {"result": None}, None],
    "nested field": ["t", "bad9", "SUCCESS", repr(NOW), "event", "w", {"a": {"b": "c"}}, None],
    "fields a list": ["t", "bad10", "SUCCESS", repr(NOW), "event", "w", ["x"], None],
    "too many fields": [
        "t",
        "bad11",
        "SUCCESS",
        repr(NOW),
        "event",
        "w",
        {f"f{i}": "v" for i in range(10_000)},
        None,
    ],  # fmt: skip
    "name too long": ["t", "bad12", "SUCCESS", repr(NOW), "event", "w", {"name": "n" * 600}, None],
    "retries not finite": ["t", "bad13", "SUCCESS", repr(NOW), "event", "w", {}, "inf"],
    "worker kind unknown": ["w", "h", "exploded", repr(NOW), "event", {}],
    "worker time NaN": ["w", "h", "heartbeat", "nan", "event", {}],
    "worker fields nested": ["w", "h", "heartbeat", repr(NOW), "event", {"a": []}],
    "not a record": "just a string",
    "unknown kind": ["x", "bad14"],
}


def test_invalid_records_are_refused_alone_before_anything_is_written(store: Store):
    """Each bad record is counted; its batch mates, before and after it, are
    stored, and nothing of the bad ones is (the script validates first)."""
    before = store.record(good("before"))
    after = store.record(good("after", runtime=1.5))
    result = store.apply_encoded(payload(before, *BAD_RECORDS.values(), after), now=NOW)
    assert result.rejected == len(BAD_RECORDS)
    assert store.get_task("before") and store.get_task("after")
    keys = set(store.redis.scan_iter(match=store.keys.pattern()))
    assert not [k for k in keys if "bad" in k or "x:timeline" in k], keys
    assert store.worker("h") is None


def test_numbers_where_text_is_expected_are_stored_as_text(store: Store):
    """Harmless: Redis stores a number as its text. A time that is a number is
    a time (this one, 5 s after the epoch, is older than retention: clamped)."""
    rec = ["t", "numeric", "SUCCESS", 5, "event", "w", {"result": 3, "runtime": 0.5}, 0]
    assert store.apply_encoded(payload(rec), now=NOW).rejected == 0
    task = store.get_task("numeric")
    assert task["result"] == "3" and float(task["succeeded"]) == NOW
    assert float(task["succeeded_reported"]) == 5


def test_non_finite_runtimes_never_reach_a_counter(store: Store):
    for runtime in ("inf", "-inf", "nan", "1e999", "1e308", "-5"):
        rec = store.record(good(f"rt-{runtime}", runtime=1.0))
        rec[6]["runtime"] = runtime
        assert store.apply_encoded(payload(rec, rec), now=NOW).rejected == 0
    store.apply([good("fine", runtime=2.0)], now=NOW)
    (minute,) = [m for m in store.minute_stats(1, NOW)]
    counters, names = minute["counters"], minute["names"]
    assert float(counters["rtsum"]) == 2.0 and float(names["rtsum|n"]) == 2.0
    assert all(math.isfinite(float(v)) for v in [*counters.values(), *names.values()])


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")


def test_a_record_that_cannot_be_encoded_is_dropped_alone(store: Store):
    hostile = good("hostile", result=Unprintable())
    result = store.apply([good("a"), hostile, good("b")], now=NOW)
    assert result.rejected == 1
    assert store.get_task("a") and store.get_task("b") and store.get_task("hostile") is None


def test_a_record_cannot_set_the_fields_the_store_owns(store: Store):
    owned = {"state": "SUCCESS", "timestamp": "1", "succeeded": "9e99", "sent": "x"}
    sneaky = ["t", "own", "RECEIVED", repr(NOW), "event", "w1", owned, None]
    assert store.apply_encoded(payload(sneaky), now=NOW).rejected == 0
    task = store.get_task("own")
    assert task["state"] == "RECEIVED" and float(task["timestamp"]) == NOW
    assert "succeeded" not in task and "sent" not in task
    worker = ["w", "h1", "heartbeat", repr(NOW), "event",
              {"succeeded": "abc", "last_heartbeat": "9e99", "freq": "2.0"}]  # fmt: skip
    store.apply_encoded(payload(worker), now=NOW)
    # a later success must still be countable on this worker (HINCRBY on "abc" would fail)
    store.apply([TaskEvent("own", "SUCCESS", NOW, "event", "h1", {"worker": "h1"})], now=NOW)
    info = store.worker("h1", now=NOW)
    assert info["succeeded"] == "1" and float(info["last_heartbeat"]) == NOW


def test_task_names_leave_the_names_set_with_their_last_task(store: Store):
    settings = store.settings.replace(max_tasks=50)
    small = Store(store.redis, settings)
    small.apply([good(f"old-{i}", name=f"churned-{i}") for i in range(50)], now=NOW)
    assert len(small.task_names()) == 50
    small.apply([good(f"new-{i}", name="steady", at=NOW + 1) for i in range(50)], now=NOW + 1)
    small.apply([good("one-more", name="steady", at=NOW + 2)], now=NOW + 2)  # trims the rest
    assert small.task_names() == ["steady"]
    # a task that changes name releases the old one too
    small.apply([good("renamed", name="first")], now=NOW + 3)
    small.apply([good("renamed", name="second", state="SUCCESS", at=NOW + 4)], now=NOW + 4)
    assert "first" not in small.task_names()


def test_children_and_group_sets_go_with_their_tasks(store: Store):
    store.apply([good("child", parent_id="gone-parent", group_id="g1")], now=NOW)
    ttl = store.redis.ttl(store.keys.children("gone-parent"))
    assert 0 < ttl <= store.settings.max_age  # and at the latest, they expire
    assert 0 < store.redis.ttl(store.keys.group("g1")) <= store.settings.max_age
    small = Store(store.redis, store.settings.replace(max_tasks=1))
    small.apply([good("newer", at=NOW + 1)], now=NOW + 1)  # trims "child"
    assert store.get_task("child") is None
    assert not store.redis.exists(store.keys.children("gone-parent"), store.keys.group("g1"))


def test_per_name_counters_of_a_minute_are_capped(store: Store, monkeypatch):
    monkeypatch.setattr(store_module, "STATS_FIELDS", 40)
    fresh = Store(store.redis, store.settings.replace())  # config encoded anew
    for i in range(100):
        fresh.apply([good(f"c-{i}", name=f"name-{i}", runtime=0.1)], now=NOW)
    (minute,) = fresh.minute_stats(1, NOW)
    names = minute["names"]
    assert len(names) < 40 + 10
    assert int(names["state:SUCCESS|__other__"]) > 50
    total = sum(int(v) for k, v in names.items() if k.startswith("state:SUCCESS|"))
    assert total == 100  # nothing lost, only folded


@pytest.mark.parametrize("n_fields", [5_000])
def test_a_batch_merging_many_fields_into_one_task_is_written(store: Store, n_fields):
    """Fields are written in chunks: one HSET of them all would exceed Lua's stack."""
    records = [
        # progress reports: each a transition of its own, each with new fields
        store.record(good("wide", "PROGRESS", NOW + i, **{f"x{i}_{j}": "v" for j in range(200)}))
        for i in range(n_fields // 200)
    ]
    assert store.apply_encoded(payload(*records), now=NOW).rejected == 0
    assert len(store.redis.hkeys(store.keys.task("wide"))) > n_fields


def test_extra_event_fields_cannot_grow_one_task_hash_without_bound(store: Store):
    """Each event's extras are capped by the model; across many events with new
    extra names, the task hash stops at MAX_TASK_FIELDS and counts the rest."""
    for i in range(60):
        event = {"type": "task-received", "uuid": "wide-extras",
                 "hostname": "w1", "timestamp": NOW + i, "name": "n"}  # fmt: skip
        event.update({f"x{i}_{j}": "v" for j in range(20)})
        store.apply([TaskEvent.from_celery_event(event)], now=NOW + i)
    fields = store.redis.hgetall(store.keys.task("wide-extras"))
    assert len(fields) <= store_module.MAX_TASK_FIELDS + 2
    assert int(fields["fields_truncated"]) >= 60 * 20 - store_module.MAX_TASK_FIELDS
    assert "fields_extra" not in fields


def test_a_task_with_a_huge_family_returns_a_bounded_detail(store: Store):
    children = [good(f"kid-{i}", parent_id="parent", group_id="big-group") for i in range(1500)]
    store.apply([good("parent", group_id="big-group"), *children], now=NOW)
    task = store.get_task("parent")
    assert task["children_total"] == 1500 and len(task["children"]) == store_module.MAX_MEMBERS
    assert task["group_total"] == 1501 and len(task["group"]) == store_module.MAX_MEMBERS
    assert task["children"] == sorted(task["children"])
