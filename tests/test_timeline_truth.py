"""Timelines that tell the truth (issue 8, item 7), against a real Redis.

With signals and events both on, every transition of a task is reported
twice, by hosts and processes whose reports arrive in any order: the hooks
buffer for up to 100 ms, the prefork parent emits ``task-started`` and
``task-succeeded`` after the pool process began or finished, ``task-sent`` is
emitted after the publish. Replaying one lifecycle from both sources in every
arrival order must store the same task: each transition at its earliest
report, the other report still visible, the same fields.
"""

from __future__ import annotations

import itertools
import json
import random

import pytest

from monitor.config import Settings
from monitor.model import TaskEvent
from monitor.store import Store, lifecycle_order, mark_skew, redis_client, timeline_entry

T0 = 1_790_000_000.0
NOW = T0 + 1.0
PRODUCER, WORKER = "gen1@web", "celery@w1"
SHARED = {"name": "proj.add", "args": "(1, 2)", "kwargs": "{}", "retries": 0}


def both_sources_lifecycle(task_id: str, progress: bool = False) -> list[TaskEvent]:
    """What the hooks and the events report for one successful task, with the
    times each really carries (signal first: see the module docstring)."""

    def sig(state, dt, host, **fields):
        return TaskEvent(task_id, state, T0 + dt, "signal", host, fields)

    def evt(state, dt, host, **fields):
        return TaskEvent(task_id, state, T0 + dt, "event", host, fields)

    records = [
        sig(
            "PENDING",
            0.000,
            PRODUCER,
            **SHARED,
            args_json=[1, 2],
            kwargs_json={},
            queue="celery",
            routing_key="celery",
            client=PRODUCER,
        ),  # fmt: skip
        evt(
            "PENDING",
            0.012,
            PRODUCER,
            **SHARED,
            queue="celery",
            routing_key="celery",
            client=PRODUCER,
        ),  # fmt: skip
        sig("RECEIVED", 0.050, WORKER, **SHARED, worker=WORKER),
        evt("RECEIVED", 0.051, WORKER, **SHARED, worker=WORKER),
        sig("STARTED", 0.060, WORKER, pid=101, retries=0, worker=WORKER),
        evt("STARTED", 0.068, WORKER, pid=101, worker=WORKER),
        # The sources disagree on these: the hooks' values must win, in any order.
        sig("SUCCESS", 0.100, WORKER, result="3", runtime=0.040, worker=WORKER),
        evt("SUCCESS", 0.104, WORKER, result="3", runtime=0.0405, worker=WORKER),
    ]
    if progress:
        records[6:6] = [
            sig("PROGRESS", 0.070, WORKER, progress='{"done":1}', worker=WORKER),
            evt("PROGRESS", 0.071, WORKER, progress='{"done":1}', worker=WORKER),
        ]
    return records


@pytest.fixture
def big_store(redis_url, prefix):
    store = Store(redis_client(redis_url), Settings(redis_url=redis_url, prefix=prefix,
                                                    max_tasks=500_000))  # fmt: skip
    yield store
    store.delete_all()
    store.close()


def stored(store: Store, ids: list[str]) -> dict[str, tuple]:
    """Each task as the API shows it: every hash field, and the timeline."""
    out = {}
    for start in range(0, len(ids), 2000):
        chunk = ids[start : start + 2000]
        pipe = store.redis.pipeline(transaction=False)
        for task_id in chunk:
            pipe.hgetall(store.keys.task(task_id))
            pipe.lrange(store.keys.timeline(task_id), 0, -1)
        replies = pipe.execute()
        for i, task_id in enumerate(chunk):
            fields, raw = replies[2 * i], replies[2 * i + 1]
            timeline = [timeline_entry(e) for e in lifecycle_order([json.loads(r) for r in raw])]
            mark_skew(timeline)
            out[task_id] = (fields, json.dumps(timeline, sort_keys=True))
    return out


def replay(store: Store, orders: list[list[TaskEvent]], one_batch: bool) -> list[str]:
    """Apply each ordering to a task of its own: all of it in one batch (the
    script's in-batch path), or its k-th record in the k-th batch (the path
    through what is stored)."""
    ids = []
    renamed = []
    for n, order in enumerate(orders):
        task_id = f"perm-{n}"
        ids.append(task_id)
        renamed.append([TaskEvent(task_id, r.state, r.timestamp, r.source, r.hostname, r.fields)
                        for r in order])  # fmt: skip
    if one_batch:
        flat = [r for order in renamed for r in order]
        for start in range(0, len(flat), 4000):
            assert store.apply(flat[start : start + 4000], now=NOW).rejected == 0
    else:
        for k in range(len(renamed[0])):
            step = [order[k] for order in renamed]
            for start in range(0, len(step), 4000):
                assert store.apply(step[start : start + 4000], now=NOW).rejected == 0
    return ids


def assert_all_equal(result: dict[str, tuple], orders: list[list[TaskEvent]]) -> tuple:
    reference_id = next(iter(result))
    reference = result[reference_id]
    for task_id, got in result.items():
        if got != reference:
            n = int(task_id.split("-")[1])
            order = [(r.state, r.source) for r in orders[n]]
            diff = {k: (reference[0].get(k), got[0].get(k))
                    for k in set(reference[0]) | set(got[0])
                    if reference[0].get(k) != got[0].get(k)}  # fmt: skip
            raise AssertionError(f"arrival order {order} stored another task: {diff}\n"
                                 f"{reference[1]}\n{got[1]}")  # fmt: skip
    return reference


def check_truth(fields: dict[str, str], timeline_json: str, progress: bool) -> None:
    timeline = json.loads(timeline_json)
    expected = ["PENDING", "RECEIVED", "STARTED"] + (["PROGRESS"] if progress else []) + ["SUCCESS"]
    assert [e["state"] for e in timeline] == expected
    # every transition at its earliest report, from the hooks, the other kept
    for entry in timeline:
        assert entry["sources"] == ["signal", "event"], entry
        assert [r["source"] for r in entry["reports"]] == ["signal", "event"]
        assert entry["reports"][0]["timestamp"] == entry["timestamp"]
        assert entry["reports"][1]["timestamp"] > entry["timestamp"]
        assert "skew" not in entry
    assert timeline[0]["hostname"] == PRODUCER and timeline[1]["hostname"] == WORKER
    times = [float(fields[k]) for k in ("sent", "received", "started", "succeeded")]
    assert times == [T0, T0 + 0.05, T0 + 0.06, T0 + 0.1]
    assert times == sorted(times)
    assert fields["state"] == "SUCCESS" and float(fields["timestamp"]) == T0 + 0.1
    assert fields["runtime"] == "0.04" and fields["result"] == "3"  # the hooks' values
    assert fields["worker"] == WORKER and fields["pid"] == "101"
    assert json.loads(fields["args_json"]) == [1, 2] and fields["queue"] == "celery"


@pytest.mark.parametrize("one_batch", [False, True], ids=["batch-per-record", "one-batch"])
def test_every_arrival_order_of_both_sources_stores_the_same_task(big_store, one_batch):
    lifecycle = both_sources_lifecycle("x")
    orders = [list(p) for p in itertools.permutations(lifecycle)]  # all 40,320
    if one_batch:
        orders = random.Random(8).sample(orders, 5000)
    result = stored(big_store, replay(big_store, orders, one_batch))
    fields, timeline = assert_all_equal(result, orders)
    check_truth(fields, timeline, progress=False)


def test_sampled_arrival_orders_with_progress_reports(big_store):
    lifecycle = both_sources_lifecycle("x", progress=True)
    rng = random.Random(80)
    orders = [rng.sample(lifecycle, len(lifecycle)) for _ in range(3000)]
    # prefork's own emission order: the events of the parent after the child's hooks
    orders.insert(0, [lifecycle[i] for i in (1, 0, 3, 2, 4, 6, 5, 7, 9, 8)])
    result = stored(big_store, replay(big_store, orders, one_batch=False))
    fields, timeline = assert_all_equal(result, orders)
    check_truth(fields, timeline, progress=True)


def test_hosts_whose_clocks_disagree_are_flagged_not_reordered(store: Store):
    """The worker's clock is 3 s behind the producer's: RECEIVED still follows
    PENDING, and the page is told (``skew``) instead of a negative duration."""
    behind = -3.0
    store.apply(
        [
            TaskEvent("c", "PENDING", T0, "event", PRODUCER, {"name": "n", "client": PRODUCER}),
            TaskEvent("c", "RECEIVED", T0 + behind + 0.05, "event", WORKER, {"worker": WORKER}),
            TaskEvent("c", "STARTED", T0 + behind + 0.06, "event", WORKER, {"worker": WORKER}),
            TaskEvent("c", "SUCCESS", T0 + behind + 0.1, "event", WORKER, {"worker": WORKER}),
        ],
        now=NOW,
    )
    timeline = store.get_task("c")["timeline"]
    assert [e["state"] for e in timeline] == ["PENDING", "RECEIVED", "STARTED", "SUCCESS"]
    assert timeline[1]["skew"] == pytest.approx(2.95)
    assert all("skew" not in e for e in timeline[2:]) and "skew" not in timeline[0]


def test_retried_attempts_overlap_as_they_happened(store: Store):
    """retry() sends the next attempt's message before the attempt it ends is
    reported RETRY, and a worker may receive it first: time decides between
    attempts (no false "clocks disagree"), while each attempt keeps its order."""

    def rec(state, at, attempt, host=WORKER):
        return TaskEvent("r", state, T0 + at, "signal", host, {"retries": attempt})

    records = [rec("PENDING", 0.0, 0, PRODUCER), rec("RECEIVED", 0.1, 0), rec("STARTED", 0.2, 0)]
    records += [rec("PENDING", 0.30, 1), rec("RECEIVED", 0.31, 1), rec("RETRY", 0.32, 0)]
    records += [rec("STARTED", 0.40, 1), rec("SUCCESS", 0.5, 1)]
    random.Random(3).shuffle(records)
    for record in records:
        store.apply([record], now=NOW)
    timeline = store.get_task("r")["timeline"]
    assert [e["state"] for e in timeline] == [
        "PENDING", "RECEIVED", "STARTED", "PENDING", "RECEIVED", "RETRY", "STARTED", "SUCCESS"
    ]  # fmt: skip
    assert not [e for e in timeline if "skew" in e]


def test_a_skewed_worker_within_a_retried_attempt_is_flagged(store: Store):
    """The second attempt runs on a worker 2 s behind: its RECEIVED still
    follows the PENDING that announced it, flagged."""
    store.apply(
        [
            TaskEvent("s", "PENDING", T0, "signal", PRODUCER, {"retries": 0}),
            TaskEvent("s", "RECEIVED", T0 + 0.1, "signal", WORKER, {"retries": 0}),
            TaskEvent("s", "RETRY", T0 + 0.2, "signal", WORKER, {"retries": 0}),
            TaskEvent("s", "PENDING", T0 + 0.19, "signal", WORKER, {"retries": 1}),
            TaskEvent("s", "RECEIVED", T0 - 1.5, "signal", "other@w2", {"retries": 1}),
        ],
        now=NOW,
    )
    timeline = store.get_task("s")["timeline"]
    states = [(e["state"], e["retries"]) for e in timeline]
    assert states.index(("PENDING", 1)) < states.index(("RECEIVED", 1))
    assert "skew" in timeline[states.index(("RECEIVED", 1))]


def test_a_retried_task_keeps_its_newest_attempts_times_whatever_reports_come_late(
    store: Store,
):
    """Both sources report both attempts; the slower source's report of the FIRST
    attempt's transition may land after the second attempt's (seen on a real
    worker: received then said the first attempt, sent the second, and sent >
    received). It corrects that attempt's timeline entry, never the task's time
    fields, which hold the newest attempt's earliest report."""

    def reports(state, at, attempt, host=WORKER, lag=0.004):
        return [
            TaskEvent("x", state, T0 + at, "signal", host, {"retries": attempt}),
            TaskEvent("x", state, T0 + at + lag, "event", host, {"retries": attempt}),
        ]

    records = reports("PENDING", 0.0, 0, PRODUCER) + reports("RECEIVED", 0.1, 0)
    records += reports("STARTED", 0.2, 0) + reports("PENDING", 0.30, 1, PRODUCER)
    records += reports("RECEIVED", 0.31, 1) + reports("RETRY", 0.32, 0)
    records += reports("STARTED", 0.40, 1)
    newest = {"sent": T0 + 0.30, "received": T0 + 0.31, "started": T0 + 0.40}
    rng = random.Random(10)
    for n in range(300):
        order = records[:]
        rng.shuffle(order)
        task_id = f"late-{n}"
        for r in order:
            store.apply([TaskEvent(task_id, r.state, r.timestamp, r.source, r.hostname,
                                   r.fields)], now=NOW)  # fmt: skip
        task = store.get_task(task_id)
        got = {k: float(task[k]) for k in newest}
        assert got == pytest.approx(newest, abs=1e-6), [(r.state, r.source) for r in order]
