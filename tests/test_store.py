"""The store against a real Redis: precedence, dedupe, timeline, indexes, retention.

Replays recorded event sequences in order, reversed, shuffled and duplicated,
and checks the store ends where Celery's own ``celery.events.state.State``
ends for the same sequence (the reference the design names).
"""

from __future__ import annotations

import json
import random
import time

import pytest
from celery.events.state import State

from monitor.model import TaskEvent, WorkerEvent
from monitor.store import Store

T0 = 1_800_000_000.0


def ev(type_, uuid, offset, **fields):
    return {
        "type": type_,
        "uuid": uuid,
        "timestamp": T0 + offset,
        "hostname": fields.pop("hostname", "w1@host"),
        "local_received": T0 + offset,
        "clock": int(offset * 1000),
        "utcoffset": 0,
        "pid": 100,
        **fields,
    }


def lifecycle(kind: str, uuid: str) -> list[dict]:
    """Recorded sequences of the events a worker sends, in the order it sends them."""
    sent = ev(
        "task-sent",
        uuid,
        0,
        hostname="web",
        name="proj.add",
        args="(1, 2)",
        kwargs="{}",
        retries=0,
        queue="celery",
    )
    received = ev("task-received", uuid, 1, name="proj.add", args="(1, 2)", kwargs="{}", retries=0)
    started = ev("task-started", uuid, 2)
    if kind == "success":
        return [sent, received, started, ev("task-succeeded", uuid, 3, result="3", runtime=1.0)]
    if kind == "failure":
        return [
            sent,
            received,
            started,
            ev("task-failed", uuid, 3, exception="ValueError('x')", traceback="Traceback..."),
        ]
    if kind == "retry":
        return [
            sent,
            received,
            started,
            ev("task-retried", uuid, 3, exception="RuntimeError('t')", traceback="tb"),
            ev(
                "task-sent",
                uuid,
                3.5,
                hostname="w1@host",
                name="proj.add",
                args="(1, 2)",
                kwargs="{}",
                retries=1,
            ),
            ev("task-received", uuid, 4, name="proj.add", args="(1, 2)", kwargs="{}", retries=1),
            ev("task-started", uuid, 5),
            ev("task-succeeded", uuid, 6, result="3", runtime=1.0),
        ]
    if kind == "revoked":
        return [sent, received, ev("task-revoked", uuid, 2, terminated=False, expired=False)]
    if kind == "progress":
        return [
            sent,
            received,
            started,
            ev("task-progress", uuid, 2.5, current=1, total=2),
            ev("task-progress", uuid, 2.6, current=2, total=2),
            ev("task-succeeded", uuid, 3, result="2", runtime=1.0),
        ]
    if kind == "rejected":
        return [sent, received, ev("task-rejected", uuid, 2, requeue=False)]
    raise AssertionError(kind)


KINDS = ["success", "failure", "retry", "revoked", "progress", "rejected"]


def orderings(events: list[dict], seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    shuffled = events[:]
    rng.shuffle(shuffled)
    doubled = [e for e in events for _ in range(2)]
    shuffled_dups = events + events
    rng.shuffle(shuffled_dups)
    return {
        "in_order": events,
        "reversed": events[::-1],
        "shuffled": shuffled,
        "each_twice": doubled,
        "replayed_twice": events + events,
        "shuffled_with_duplicates": shuffled_dups,
    }


def celery_final(events: list[dict]):
    """Celery's State on the same sequence. A redelivered event is the same
    fact: the store counts it once, so Celery is given its first copy only."""
    seen, unique = set(), []
    for e in events:
        key = json.dumps(e, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(e)
    state = State()
    for e in unique:
        state.event(dict(e))
    return state.tasks[events[0]["uuid"]]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("batched", [True, False], ids=["one-batch", "event-per-batch"])
def test_replays_end_in_celerys_final_state(store: Store, kind, seed, batched):
    for order_name, events in orderings(lifecycle(kind, "x"), seed).items():
        uuid = f"{kind}-{seed}-{order_name}-{batched}"
        events = [dict(e, uuid=uuid) for e in events]
        records = [TaskEvent.from_celery_event(e) for e in events]
        if batched:
            store.apply(records, now=T0)
        else:
            for record in records:
                store.apply([record], now=T0)
        expected = celery_final(events)
        task = store.get_task(uuid)
        where = f"{kind} {order_name}"
        assert task["state"] == expected.state, where
        assert task["name"] == expected.name, where
        assert float(task["timestamp"]) == pytest.approx(expected.timestamp), where
        for field in ("result", "exception", "args", "kwargs"):
            assert task.get(field) == getattr(expected, field), f"{where}: {field}"
        # attempts only go forward (Celery's State lets a late RECEIVED move it back)
        assert int(task["retries"]) == max(e.get("retries", 0) for e in events), where
        # the state index agrees with the hash
        assert store.redis.zscore(store.keys.by_state(task["state"]), uuid) is not None
        # every distinct transition once in the timeline, whatever the order
        distinct = {(e["type"], e["timestamp"]) for e in events}
        assert len(task["timeline"]) == len(distinct), where


def test_late_received_after_success_keeps_success_and_fills_fields(store: Store):
    succeeded = TaskEvent("t", "SUCCESS", T0 + 3, "event", "w", {"result": "3", "worker": "w"})
    received = TaskEvent(
        "t",
        "RECEIVED",
        T0 + 1,
        "event",
        "w",
        {
            "name": "proj.add",
            "args": "(1, 2)",
            "kwargs": "{}",
            "parent_id": "p",
            "root_id": "r",
            "retries": 0,
            "eta": "2030-01-01",
            "expires": "2031-01-01",
            "queue": "filled-in",
            "worker": "another-host",
        },
    )
    store.apply([succeeded], now=T0)
    store.apply([received], now=T0)
    task = store.get_task("t")
    assert task["state"] == "SUCCESS"
    assert float(task["timestamp"]) == T0 + 3
    assert (task["name"], task["args"], task["parent_id"], task["root_id"]) == (
        "proj.add",
        "(1, 2)",
        "p",
        "r",
    )
    assert task["eta"] == "2030-01-01" and task["expires"] == "2031-01-01"
    # Beyond Celery's merge rule (the RECEIVED fields above), a late report only
    # fills what is missing: it never overwrites what a later transition stored,
    # so the arrival order does not change the stored task.
    assert task["queue"] == "filled-in"
    assert task["worker"] == "w"
    assert float(task["received"]) == T0 + 1
    assert [e["state"] for e in task["timeline"]] == ["RECEIVED", "SUCCESS"]
    # indexes: by state SUCCESS only, by name now that the name is known
    assert store.redis.zscore(store.keys.by_state("RECEIVED"), "t") is None
    assert store.redis.zscore(store.keys.by_name("proj.add"), "t") == T0 + 3


def test_retry_always_applies_even_after_success(store: Store):
    """Celery's deliberate exception (events/state.py): RETRY is never merged."""
    store.apply([TaskEvent("t", "SUCCESS", T0 + 5, "event", "w", {})], now=T0)
    store.apply([TaskEvent("t", "RETRY", T0 + 1, "event", "w", {"exception": "e"})], now=T0)
    assert store.get_task("t")["state"] == "RETRY"
    # ... and anything after a RETRY applies too, even a lower-precedence state
    store.apply([TaskEvent("t", "RECEIVED", T0 + 6, "event", "w", {"retries": 1})], now=T0)
    assert store.get_task("t")["state"] == "RECEIVED"


def test_signal_and_event_reports_of_one_transition_are_stored_once(store: Store):
    t = T0
    batch = [
        TaskEvent("t", "PENDING", t, "signal", "web", {"name": "a", "args_json": [1]}),
        TaskEvent("t", "PENDING", t + 0.002, "event", "web", {"name": "a", "args": "(1,)"}),
        TaskEvent("t", "RECEIVED", t + 1, "event", "w", {"retries": 0, "worker": "w"}),
        TaskEvent("t", "RECEIVED", t + 1.001, "signal", "w", {"retries": 0, "worker": "w"}),
        TaskEvent("t", "STARTED", t + 2.0004, "signal", "w", {"retries": 0, "pid": 5}),
        TaskEvent("t", "STARTED", t + 2, "event", "w", {}),
        TaskEvent("t", "SUCCESS", t + 3, "signal", "w", {"result": "1", "runtime": 0.9}),
        TaskEvent("t", "SUCCESS", t + 3.05, "event", "w", {"result": "1", "runtime": 1.0}),
    ]
    result = store.apply(batch, now=T0)
    assert result.duplicates == 4
    task = store.get_task("t")
    assert [(e["state"], sorted(e["sources"])) for e in task["timeline"]] == [
        ("PENDING", ["event", "signal"]),
        ("RECEIVED", ["event", "signal"]),
        ("STARTED", ["event", "signal"]),
        ("SUCCESS", ["event", "signal"]),
    ]
    # both args forms kept: the JSON one for a faithful retry, the repr for display
    assert task["args_json"] == "[1]" and task["args"] == "(1,)"
    # a redelivery of everything changes nothing
    again = store.apply(batch, now=T0)
    assert again.duplicates == len(batch)
    assert len(store.get_task("t")["timeline"]) == 4
    # counters counted each transition once
    minute = store.minute_stats(1, now=T0 + 3)[-1]
    assert minute["counters"]["state:SUCCESS"] == "1" and minute["names"]["state:SUCCESS|a"] == "1"


def test_retries_of_one_task_are_distinct_transitions(store: Store):
    batch = [
        TaskEvent("t", "RECEIVED", T0, "signal", "w", {"retries": 0}),
        TaskEvent("t", "STARTED", T0 + 0.1, "signal", "w", {"retries": 0}),
        TaskEvent("t", "RETRY", T0 + 0.2, "signal", "w", {"retries": 0}),
        TaskEvent("t", "RECEIVED", T0 + 0.3, "signal", "w", {"retries": 1}),
        TaskEvent("t", "STARTED", T0 + 0.4, "signal", "w", {"retries": 1}),
        TaskEvent("t", "SUCCESS", T0 + 0.5, "signal", "w", {}),
        # the event path reports the same, a little later, without retries on STARTED
        TaskEvent("t", "RECEIVED", T0 + 0.31, "event", "w", {"retries": 1}),
        TaskEvent("t", "STARTED", T0 + 0.41, "event", "w", {}),
    ]
    store.apply(batch, now=T0)
    timeline = store.get_task("t")["timeline"]
    assert [(e["state"], e["retries"]) for e in timeline] == [
        ("RECEIVED", 0),
        ("STARTED", 0),
        ("RETRY", 0),
        ("RECEIVED", 1),
        ("STARTED", 1),
        ("SUCCESS", None),
    ]
    assert sorted(timeline[3]["sources"]) == ["event", "signal"]
    assert sorted(timeline[4]["sources"]) == ["event", "signal"]


def test_progress_updates_are_kept_with_their_metadata(store: Store):
    store.apply(
        [
            TaskEvent("t", "STARTED", T0, "event", "w", {}),
            TaskEvent(
                "t", "PROGRESS", T0 + 1, "event", "w", {"progress": '{"current":1,"total":4}'}
            ),
            TaskEvent(
                "t", "PROGRESS", T0 + 2, "event", "w", {"progress": '{"current":2,"total":4}'}
            ),
        ],
        now=T0,
    )
    task = store.get_task("t")
    assert task["state"] == "PROGRESS"
    assert json.loads(task["progress"]) == {"current": 2, "total": 4}
    assert [e["state"] for e in task["timeline"]] == ["STARTED", "PROGRESS", "PROGRESS"]


def test_huge_and_hostile_values_are_capped_and_kept_verbatim(store: Store):
    hostile = "<img src=x onerror=alert(1)><script>alert(2)</script>"
    store.apply(
        [
            TaskEvent(
                "t",
                "RECEIVED",
                T0,
                "event",
                "w",
                {
                    "name": hostile,
                    "args": "x" * (10 * 1024 * 1024),
                    "kwargs": {"k": object()},
                    "exception": hostile,
                    "traceback": "é" * 100_000,
                },
            )
        ],
        now=T0,
    )
    task = store.get_task("t")
    assert task["name"] == hostile and task["exception"] == hostile
    cap = store.settings.max_field_bytes
    assert task["args"].endswith(f"… [truncated: {10 * 1024 * 1024} bytes]")
    assert len(task["args"].encode()) < cap + 100
    assert task["args_truncated"] == str(10 * 1024 * 1024)
    assert task["traceback_truncated"] == "200000"
    assert json.loads(task["kwargs"])["k"].startswith("<object object")
    assert store.redis.zscore(store.keys.by_name(hostile), "t") is not None


def test_indexes_follow_state_name_and_worker(store: Store):
    store.apply(
        [TaskEvent("t", "RECEIVED", T0, "event", "w1", {"name": "a", "worker": "w1"})], now=T0
    )
    store.apply([TaskEvent("t", "STARTED", T0 + 1, "event", "w1", {"worker": "w1"})], now=T0)
    k = store.keys
    assert store.redis.zscore(k.by_state("RECEIVED"), "t") is None
    assert store.redis.zscore(k.by_state("STARTED"), "t") == T0 + 1
    assert store.redis.zscore(k.tasks, "t") == T0 + 1
    assert store.redis.zscore(k.by_name("a"), "t") == T0 + 1
    assert store.redis.zscore(k.by_worker("w1"), "t") == T0 + 1
    assert store.task_names() == ["a"]
    assert store.state_counts()["STARTED"] == 1


def test_parent_children_and_group_links(store: Store):
    store.apply(
        [
            TaskEvent("root", "PENDING", T0, "signal", "web", {"name": "a"}),
            TaskEvent(
                "c1",
                "PENDING",
                T0 + 1,
                "signal",
                "w",
                {"parent_id": "root", "root_id": "root", "group_id": "g1"},
            ),
            TaskEvent(
                "c2",
                "PENDING",
                T0 + 1,
                "signal",
                "w",
                {"parent_id": "root", "root_id": "root", "group_id": "g1"},
            ),
        ],
        now=T0,
    )
    assert store.get_task("root")["children"] == ["c1", "c2"]
    assert store.get_task("c1")["group"] == ["c1", "c2"]
    assert store.get_task("c2")["root_id"] == "root"


def test_change_feed_has_one_entry_per_changed_task_per_batch_and_is_bounded(store: Store):
    store.settings = store.settings.replace(stream_maxlen=100)
    store.apply(
        [
            TaskEvent("a", "RECEIVED", T0, "event", "w", {"name": "n"}),
            TaskEvent("a", "STARTED", T0 + 1, "event", "w", {}),
            TaskEvent("b", "RECEIVED", T0, "event", "w", {}),
        ],
        now=T0,
    )
    entries = store.redis.xrange(store.keys.changes)
    assert [(e[1]["id"], e[1]["state"]) for e in entries] == [("a", "STARTED"), ("b", "RECEIVED")]
    for i in range(30):
        store.apply(
            [TaskEvent(f"x{i}-{j}", "RECEIVED", T0, "event", "w", {}) for j in range(50)], now=T0
        )
    assert store.redis.xlen(store.keys.changes) < 300  # MAXLEN ~ 100 (approximate trimming)


def test_retention_by_count_keeps_memory_bounded(store: Store):
    store.settings = store.settings.replace(max_tasks=50)

    def fill(start):
        for i in range(start, start + 400, 40):
            store.apply(
                [
                    TaskEvent(
                        f"t{j}",
                        "SUCCESS",
                        T0 + j,
                        "event",
                        "w",
                        {"name": "n", "worker": "w", "result": "r" * 100},
                    )
                    for j in range(i, i + 40)
                ],
                now=T0 + 1000,
            )

    fill(0)
    keys_after_first = sorted(store.redis.scan_iter(match=f"{store.keys.prefix}:task:*"))
    assert store.redis.zcard(store.keys.tasks) == 50
    assert len(keys_after_first) == 100  # hash + timeline per kept task, nothing else
    ids = store.redis.zrange(store.keys.tasks, 0, -1)
    assert ids[0] == "t350" and ids[-1] == "t399"  # the oldest went first
    assert store.redis.zcard(store.keys.by_state("SUCCESS")) == 50
    assert store.redis.zcard(store.keys.by_name("n")) == 50
    assert store.redis.zcard(store.keys.by_worker("w")) == 50
    used = store.redis.memory_usage(store.keys.tasks)
    fill(400)
    assert store.redis.zcard(store.keys.tasks) == 50
    assert len(list(store.redis.scan_iter(match=f"{store.keys.prefix}:task:*"))) == 100
    assert store.redis.memory_usage(store.keys.tasks) <= used * 1.5


def test_retention_by_age(store: Store):
    store.settings = store.settings.replace(max_age=3600)
    store.apply([TaskEvent("old", "SUCCESS", T0, "event", "w", {"name": "n"})], now=T0)
    store.apply(
        [TaskEvent("new", "SUCCESS", T0 + 7200, "event", "w", {"name": "n"})], now=T0 + 7200
    )
    assert store.redis.zrange(store.keys.tasks, 0, -1) == ["new"]
    assert store.get_task("old") is None
    assert store.redis.zcard(store.keys.by_name("n")) == 1


def test_worker_online_offline_and_purge(store: Store):
    store.apply(
        [WorkerEvent("w1", "online", T0, "event", {"freq": 2.0, "sw_ident": "py-celery"})], now=T0
    )
    store.apply(
        [WorkerEvent("w1", "heartbeat", T0 + 2, "signal", {"freq": 2.0, "active": 1})], now=T0
    )
    grace = store.settings.worker_grace
    (w,) = store.workers(now=T0 + 3)
    assert w["online"] and w["hostname"] == "w1" and w["active"] == "1"
    # Celery's rule: offline once 2 x freq (+ grace) passed without a heartbeat
    assert store.workers(now=T0 + 2 + 4 + grace - 0.01)[0]["online"]
    assert not store.workers(now=T0 + 2 + 4 + grace + 0.01)[0]["online"]
    # an older heartbeat arriving late does not move last_heartbeat back
    store.apply([WorkerEvent("w1", "heartbeat", T0 + 1, "event", {})], now=T0)
    assert float(store.worker("w1")["last_heartbeat"]) == T0 + 2
    # worker-offline turns it offline at once
    store.apply([WorkerEvent("w1", "offline", T0 + 4, "event", {})], now=T0)
    assert store.worker("w1", now=T0 + 4.5)["status"] == "offline"
    # purged after worker_purge_after
    purge_at = T0 + 4 + store.settings.worker_purge_after + 1
    store.apply([WorkerEvent("w2", "heartbeat", purge_at, "event", {})], now=purge_at)
    assert [w["hostname"] for w in store.workers(now=purge_at)] == ["w2"]
    assert store.worker("w1") is None


def test_task_outcomes_count_on_their_worker(store: Store):
    store.apply(
        [
            TaskEvent(
                "a", "SUCCESS", T0, "event", "w1", {"worker": "w1", "runtime": 0.2, "name": "n"}
            ),
            TaskEvent(
                "b", "FAILURE", T0, "event", "w1", {"worker": "w1", "runtime": 3, "name": "n"}
            ),
        ],
        now=T0,
    )
    worker = store.worker("w1", now=T0)
    assert (worker["succeeded"], worker["failed"]) == ("1", "1")
    minute = store.minute_stats(1, now=T0)[-1]
    counters, names = minute["counters"], minute["names"]
    assert counters["rt:0.25"] == "1" and counters["rt:5"] == "1"
    assert names["rt:0.25|n"] == "1" and names["rt:5|n"] == "1"
    assert float(names["rtsum|n"]) == pytest.approx(3.2)


def test_store_survives_a_large_batch_quickly_enough_to_be_useful(store: Store):
    """10k events in one call: correctness at batch scale (speed is in bench/)."""
    now = time.time()
    batch = []
    for i in range(2500):
        for j, state in enumerate(("PENDING", "RECEIVED", "STARTED", "SUCCESS")):
            batch.append(TaskEvent(f"b{i}", state, now + j * 0.01, "event", "w", {"name": "n"}))
    result = store.apply(batch)
    assert result.applied == 10_000 and result.tasks_changed == 2500
    assert store.state_counts()["SUCCESS"] == 2500
