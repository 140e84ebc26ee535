"""/metrics: celery-exporter's names and labels from totals kept in Redis.

A real prefork worker runs a known load (N successes, M failures, K retried
tasks); the exposition of a real ``monitor serve``, parsed by prometheus_client,
must count exactly that, and again after the serve process is replaced. The
queue gauges come from serve's own sampler on a queue no worker consumes. The
shipped rules pass ``promtool check rules`` and every metric the dashboard and
the rules query is in the exposition. Unit tests (real Redis, no worker) cover
label caps, the series cap, hostile values and that the totals are not a window.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

import monitor.signals
from monitor import vocabulary
from monitor.config import Settings
from monitor.model import TaskEvent
from monitor.store import Store, redis_client
from monitor.web import create_app

from .helpers import REDIS_URL, ServeProcess, WorkerProcess, require_service, wait_for

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy/prometheus/celery-monitor.rules.yml"
DASHBOARD = ROOT / "deploy/grafana/celery-monitor.json"
BROKER = "redis://127.0.0.1:6379/3"
T = "tests.workerapp."
N, M, K, IDLE = 4, 3, 2, 3


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def total(fams: dict, sample: str, **labels: str) -> float:
    """Sum of the samples named ``sample`` whose labels include ``labels``."""
    family = sample
    for suffix in ("_total", "_bucket", "_count", "_sum"):
        if sample.endswith(suffix) and sample[: -len(suffix)] in fams:
            family = sample[: -len(suffix)]
    found = fams.get(family)
    if found is None:
        return 0.0
    return sum(
        s.value
        for s in found.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def exposed_names(fams: dict) -> set[str]:
    names = set()
    for f in fams.values():
        names.add(f.name)
        names.update(s.name for s in f.samples)
        if f.type == "counter":
            names.add(f.name + "_total")
        if f.type == "histogram":
            names.update(f.name + s for s in ("_bucket", "_count", "_sum"))
    return names


# -- a real cluster, one per module -------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    require_service("127.0.0.1", 6379, "Redis")
    prefix = "mt-metrics-" + uuid.uuid4().hex[:8]
    queue, idle = f"q-{prefix}", f"idle-{prefix}"
    settings = Settings(redis_url=REDIS_URL, prefix=prefix)
    store = Store(redis_client(REDIS_URL), settings)
    producer = Celery("producer", broker=BROKER)
    producer.conf.update(task_default_queue=queue, broker_connection_retry_on_startup=True)
    monitor.signals.connect(producer, redis_url=REDIS_URL, prefix=prefix)
    worker = WorkerProcess(broker=BROKER, queue=queue, prefix=prefix)
    env = {"MONITOR_BROKER_URL": BROKER, "MONITOR_QUEUES_INTERVAL": "1"}
    serve = ServeProcess(REDIS_URL, prefix, env=env)
    try:
        worker.start()
        for i in range(N):
            producer.send_task(T + "add", (i, 1))
        for i in range(M):
            producer.send_task(T + "fail", (f"boom {i}",))
        for _ in range(K):
            producer.send_task(T + "retry_once")
        for i in range(IDLE):  # nobody consumes this queue: its depth and age are known
            producer.send_task(T + "add", (i, 2), queue=idle)
        serve.start()
        yield {"store": store, "serve": serve, "producer": producer, "worker": worker,
               "queue": queue, "idle": idle}  # fmt: skip
    finally:
        serve.stop()
        worker.stop()
        store.delete_all()
        with producer.connection_for_write() as conn:
            client = conn.default_channel.client
            client.delete(queue, idle)
        store.close()


def scrape(serve: ServeProcess) -> dict:
    response = serve.get("/metrics")
    assert response is not None and response.status_code == 200
    return families(response.text)


def known_load_counted(serve: ServeProcess, labels: dict, extra: int = 0) -> dict | None:
    fams = scrape(serve)
    want = {
        "celery_task_succeeded_total": N + K + extra,
        "celery_task_failed_total": M,
        "celery_task_retried_total": K,
        "celery_task_received_total": N + M + 2 * K + extra,
        "celery_task_started_total": N + M + 2 * K + extra,
        "celery_task_runtime_count": N + K + extra,
        "celery_task_queue_wait_time_count": N + M + K + extra,
    }
    got = {name: total(fams, name, **labels) for name in want}
    _last["got"], _last["want"] = got, want  # for the failure message
    return fams if got == want else None


_last: dict = {}


def wait_counted(serve: ServeProcess, labels: dict, timeout: float, extra: int = 0) -> dict:
    try:
        return wait_for(lambda: known_load_counted(serve, labels, extra), timeout, 0.3)
    except AssertionError:
        raise AssertionError(f"want {_last.get('want')}, got {_last.get('got')}") from None


def test_counters_and_histograms_match_a_real_load_across_a_serve_restart(cluster):
    serve, queue = cluster["serve"], cluster["queue"]
    labels = {"hostname": "localhost", "queue_name": queue}  # w-<queue>@localhost
    fams = wait_counted(serve, labels, 60)
    assert total(fams, "celery_task_succeeded_total", name=T + "add", **labels) == N
    assert total(fams, "celery_task_succeeded_total", name=T + "retry_once", **labels) == K
    assert total(fams, "celery_task_failed_total", exception="ValueError", **labels) == M
    assert total(fams, "celery_task_started_total", **labels) == N + M + 2 * K
    assert total(fams, "celery_task_sent_total", queue_name=queue) >= N + M + K
    # a histogram: cumulative buckets ending in +Inf == _count; queue wait once per task
    runtime = [s for s in fams["celery_task_runtime"].samples if s.labels.get("name") == T + "add"]
    buckets = [s.value for s in runtime if s.name.endswith("_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == N
    assert {s.labels["le"] for s in runtime if s.name.endswith("_bucket")} >= {"0.005", "10.0"}
    assert total(fams, "celery_task_queue_wait_time_count", **labels) == N + M + K
    assert total(fams, "celery_task_queue_wait_time_sum", **labels) > 0

    # another serve process reports the same totals; a restart resets nothing
    before = {
        n: total(fams, n) for n in ("celery_task_received_total", "celery_task_runtime_count")
    }
    serve.stop()
    serve.start()
    after = scrape(serve)
    assert {n: total(after, n) for n in before} == before
    extra = cluster["producer"].send_task(T + "add", (5, 5))
    try:
        fams = wait_counted(serve, labels, 30, extra=1)
    except AssertionError as exc:
        task = cluster["store"].get_task(extra.id)
        raw = cluster["store"].redis.hgetall(cluster["store"].keys.metrics_totals)
        raise AssertionError(f"{exc}\n{task}\n{raw}") from None
    assert total(fams, "celery_task_runtime_count") == before["celery_task_runtime_count"] + 1
    # labelled by name whichever of the worker's processes reported first
    assert total(fams, "celery_task_started_total", name=T + "add", **labels) == N + 1


def test_worker_and_queue_gauges(cluster):
    serve, idle = cluster["serve"], cluster["idle"]

    def sampled():
        fams = scrape(serve)
        return fams if total(fams, "celery_queue_length", queue_name=idle) == IDLE else None

    fams = wait_for(sampled, 30, 0.3, what="the sampler's depth of the idle queue")
    assert total(fams, "celery_queue_oldest_message_age_seconds", queue_name=idle) > 0
    assert total(fams, "celery_active_worker_count", queue_name=idle) == 0
    assert total(fams, "celery_active_worker_count", queue_name=cluster["queue"]) == 1
    assert total(fams, "celery_worker_up", hostname="localhost") == 1
    assert total(fams, "celery_monitor_redis_up") == 1


def _exprs() -> Iterable[str]:
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield rule["expr"]
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            yield query["query"]


def test_shipped_rules_pass_promtool_and_query_only_exposed_metrics(cluster):
    result = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    # and they fire on the series /metrics exposes (and stay quiet otherwise)
    result = subprocess.run(
        ["promtool", "test", "rules", RULES.with_suffix(".test.yml").name],
        capture_output=True, text=True, timeout=60, cwd=RULES.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    exposed = exposed_names(scrape(cluster["serve"]))
    referenced = {m for e in _exprs() for m in re.findall(r"\b(celery_[a-z0-9_]+)\b", e)}
    assert len(referenced) >= 15
    assert referenced <= exposed, sorted(referenced - exposed)


# -- unit tests: real Redis, records written by the store -----------------------------
def lifecycle(tid, name, host="celery@w1", queue="q1", state="SUCCESS", exception=None, t=None):
    t = time.time() - 5 if t is None else t
    end = {"runtime": 0.2}
    if exception is not None:
        end["exception"] = exception
    return [
        TaskEvent(tid, "PENDING", t, "signal", "gen1@web", {"name": name, "queue": queue}),
        TaskEvent(tid, "RECEIVED", t + 0.5, "event", host, {"name": name, "worker": host}),
        TaskEvent(tid, state, t + 1, "event", host, {"worker": host, **end}),
    ]


def exposition(settings: Settings) -> dict:
    app = create_app(settings, message_queue=None)
    return families(app.test_client().get("/metrics").get_data(as_text=True))


def test_totals_are_cumulative_and_shared_by_every_process(store: Store):
    failed = lifecycle("b", "proj.a", state="FAILURE", exception="KeyError('k')")
    events = lifecycle("a", "proj.a") + failed
    store.apply(events)
    first, second = exposition(store.settings), exposition(store.settings)
    assert total(first, "celery_task_succeeded_total", name="proj.a", hostname="w1") == 1
    assert total(first, "celery_task_failed_total", name="proj.a", exception="KeyError") == 1
    assert [f.samples for f in first.values() if f.name.startswith("celery_task")] == [
        f.samples for f in second.values() if f.name.startswith("celery_task")
    ]
    # the per-minute history expiring takes nothing from the totals
    for key in store.redis.scan_iter(match=store.keys.prefix + ":stats:*"):
        store.redis.delete(key)
    again = exposition(store.settings)
    assert total(again, "celery_task_succeeded_total") == 1
    assert total(again, "celery_task_runtime_count") == 1  # successes only, as celery-exporter
    # an exception whose repr names no class: celery-exporter's label
    store.apply(lifecycle("c", "proj.a", state="FAILURE", exception="<odd>"))
    fams = exposition(store.settings)
    assert total(fams, "celery_task_failed_total", exception="UnknownException") == 1


def test_label_values_past_their_cap_count_as_other(store: Store):
    # hostnames: the producer's ("web", first seen) and one worker's
    settings = store.settings.replace(metrics_max_names=2, metrics_max_hostnames=2)
    capped = Store(store.redis, settings)
    for i in range(5):
        capped.apply(lifecycle(f"t{i}", f"name-{i}", host=f"celery@host-{i}"))
    fams = exposition(settings)
    succeeded = fams["celery_task_succeeded"].samples
    names = {s.labels["name"] for s in succeeded}
    assert len(names) == 3 and vocabulary.STAT_OTHER in names
    assert {s.labels["hostname"] for s in succeeded} == {"host-0", vocabulary.STAT_OTHER}
    assert sum(s.value for s in succeeded) == 5  # nothing lost, only folded
    assert store.redis.scard(store.keys.metrics_labels("name")) == 2


def test_series_past_the_cap_fold_into_one_and_values_stay_parseable(store: Store):
    settings = store.settings.replace(metrics_max_series=100)
    capped = Store(store.redis, settings)
    for i in range(40):
        sep = vocabulary.METRIC_SEP
        capped.apply(lifecycle(f"s{i}", f"n{sep}{i}", queue=f"q{i}", state="FAILURE",
                               exception=f"Error{i}('x')"))  # fmt: skip
    assert store.redis.hlen(store.keys.metrics_totals) < 100 + 2 * 25  # one series + the folded
    fams = exposition(settings)
    failed = fams["celery_task_failed"].samples
    assert sum(s.value for s in failed) == 40
    folded = [s for s in failed if s.labels["name"] == vocabulary.STAT_OTHER]
    assert folded and all(s.labels["exception"] == vocabulary.STAT_OTHER for s in folded)
    assert all(vocabulary.METRIC_SEP not in s.labels["name"] for s in failed)
    assert total(fams, "celery_task_queue_wait_time_count") == 40
    runtime_inf = total(fams, "celery_task_runtime_bucket", le="+Inf")
    assert runtime_inf == total(fams, "celery_task_runtime_count") == 0
    # hostile values someone wrote into the hash: skipped, the scrape answers
    store.redis.hset(
        store.keys.metrics_totals,
        mapping={
            "succeeded\x1fa\x1fb\x1fc": "nan",
            "bogus": "1",
            "runtime\x1fa\x1fb\x1fc\x1fzz": "2",
        },
    )
    fams = exposition(settings)
    assert total(fams, "celery_monitor_redis_up") == 1
