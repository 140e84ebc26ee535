"""Alerts (monitor/alerts.py, monitor/web/alerts_api.py): rules, evaluation, delivery.

Every alert goes to a local HTTP receiver this module starts (http.server on
127.0.0.1, a free port, in a thread) that records what it was sent and answers
as a test tells it: 200, 500 a few times, never (hangs), a gigabyte, a byte at a
time. Task failures come from a real prefork worker running tests.workerapp with
the monitor's hooks (its own queue on the Redis broker); the worker-offline rule
watches a second real worker that the test stops. Evaluation runs through
monitor.jobs.JobRunner, as ``serve`` runs it, two of them for "two processes".
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from monitor import alerts
from monitor.auth import AuthStore
from monitor.config import ConfigError, Settings
from monitor.jobs import JobRunner
from monitor.model import TaskEvent, WorkerEvent
from monitor.store import Store, redis_client
from monitor.web import create_app

from .helpers import REDIS_URL, WorkerProcess, require_service, wait_for

BROKER = "redis://127.0.0.1:6379/12"
T = "tests.workerapp."
PASSWORD = "correct horse battery"


# -- the receiver ------------------------------------------------------------------------
class Receiver:
    """An HTTP server recording every POST; ``plan`` lists how to answer the next
    ones (an int status, "hang", "flood", "trickle"); then 200."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.plan: list[Any] = []
        self.flood_bytes = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with outer.lock:
                    outer.posts.append(
                        {"path": self.path, "body": json.loads(raw), "headers": dict(self.headers)}
                    )
                    how = outer.plan.pop(0) if outer.plan else 200
                if how == "hang":
                    outer.release.wait(30)
                    return
                if how == "flood":  # a gigabyte, as fast as the client reads it
                    self.send_response(500)
                    self.send_header("Content-Length", str(1 << 30))
                    self.end_headers()
                    chunk = b"x" * 65536
                    try:
                        while outer.flood_bytes < (1 << 30):
                            self.wfile.write(chunk)
                            outer.flood_bytes += len(chunk)
                    except OSError:
                        pass
                    return
                if how == "trickle":  # a header line a byte at a time, forever
                    try:
                        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                        while not outer.release.is_set():
                            self.wfile.write(b"a")
                            self.wfile.flush()
                            time.sleep(0.05)
                    except OSError:
                        pass
                    return
                body = b'{"ok": true}' if how < 300 else b"receiver says no"
                self.send_response(how)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self, rule: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            found = [p["body"] for p in self.posts]
        if rule is None:
            return found
        return [b for b in found if b.get("rule") == rule or rule in json.dumps(b)]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def fast_settings(prefix: str, **extra: Any) -> Settings:
    values = {
        "redis_url": REDIS_URL,
        "prefix": prefix,
        "alert_interval": 0.1,
        "alert_timeout": 1.0,
        "alert_backoff": 0.05,
        "alert_max_attempts": 4,
        "alert_budget": 5.0,
    }
    values.update(extra)
    return Settings(**values)


def put(store: Store, settings: Settings, rule: dict[str, Any]) -> alerts.Rule:
    return alerts.put_rule(store, settings, rule, create=True)


def silent_workers(store: Store, settings: Settings, hosts: Any, rule: str, webhook: str) -> None:
    """Workers ``hosts`` silent for ten minutes, and a worker_offline rule ``rule``
    (after 1 s, every worker) posting to ``webhook``."""
    now = time.time()
    store.apply([WorkerEvent(h, "heartbeat", now - 600, "event", {"freq": 2.0}) for h in hosts])
    put(
        store,
        settings,
        {"name": rule, "kind": "worker_offline", "seconds": 1, "webhook": webhook},
    )


def run_until(engine: alerts.Engine, condition: Any, what: str, timeout: float = 15.0) -> Any:
    def step() -> Any:
        engine.run()
        return condition()

    return wait_for(step, timeout, 0.05, what=what)


# -- a real worker with the hooks, shared by the module ----------------------------------------
class Cluster:
    def __init__(self) -> None:
        self.prefix = "mt-" + uuid.uuid4().hex[:10]
        self.queue = f"q-{self.prefix}"
        self.settings = fast_settings(self.prefix)
        self.store = Store(redis_client(REDIS_URL), self.settings)
        self.app = Celery("alerts-producer", broker=BROKER)
        self.app.conf.update(task_default_queue=self.queue, broker_connection_retry_on_startup=True)
        self.worker = self.make_worker("alerts")

    def make_worker(self, name: str) -> WorkerProcess:
        return WorkerProcess(
            broker=BROKER,
            queue=self.queue if name == "alerts" else f"{self.queue}-{name}",
            prefix=self.prefix,
            hostname=f"{name}-{self.prefix}@localhost",
            log_path=Path(f"/tmp/monitor-test-{name}-{self.prefix}.log"),
        )

    def send(self, name: str, *args: Any, queue: str | None = None) -> str:
        return self.app.send_task(T + name, args=args, queue=queue or self.queue).id

    def state(self, task_id: str) -> str | None:
        return self.store.redis.hget(self.store.keys.task(task_id), "state")

    def clean_alerts(self) -> None:
        keys = list(self.store.redis.scan_iter(f"{self.prefix}:alerts:*", count=1000))
        keys += list(self.store.redis.scan_iter(f"{self.prefix}:lease:*", count=1000))
        if keys:
            self.store.redis.delete(*keys)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    require_service("127.0.0.1", 6379, "Redis")
    found = Cluster()
    found.worker.start()
    yield found
    found.worker.stop()
    found.store.delete_all()
    found.store.close()


@pytest.fixture
def fresh(cluster: Cluster) -> Iterator[Cluster]:
    cluster.clean_alerts()
    yield cluster
    cluster.clean_alerts()


# -- rule validation -------------------------------------------------------------------
def test_a_rules_file_is_validated_at_start_up_naming_the_rule_and_field(tmp_path):
    good = tmp_path / "alerts.toml"
    good.write_text(
        """
[[rules]]
name = "payments"
kind = "task_failed"
pattern = "proj.pay*"
webhook = "https://hooks.slack.com/services/T0/B0/XXXX"
format = "slack"

[[rules]]
name = "errors"
kind = "failure_rate"
threshold_percent = 5
window_seconds = 600
min_count = 20
webhook = "http://127.0.0.1:9/hook"
"""
    )
    settings = Settings.from_env({"MONITOR_ALERT_RULES": str(good)})
    rules = alerts.file_rules(settings)
    assert [(r.name, r.kind, r.source) for r in rules] == [
        ("payments", "task_failed", "file"),
        ("errors", "failure_rate", "file"),
    ]
    assert rules[1].threshold_percent == 5.0 and rules[1].min_count == 20
    assert rules[1].per_name is False and rules[1].window_seconds == 600.0

    cases = [
        ('name = "a"\nkind = "queue"\nwebhook = "http://x/"', "'a'", "max_depth"),
        (
            'name = "b"\nkind = "worker_offline"\nseconds = -1\nwebhook = "http://x/"',
            "'b'",
            "seconds",
        ),
        ('name = "c"\nkind = "task_failed"\nwebhook = "ftp://x/"', "'c'", "webhook"),
        ('name = "d"\nkind = "task_failed"\nwebhook = "http://x/"\npatern = "x"', "'d'", "patern"),
        ('name = "e"\nkind = "nope"\nwebhook = "http://x/"', "'e'", "kind"),
        ('name = "f"\nkind = "failure_rate"\nwebhook = "http://x/"', "'f'", "threshold_percent"),
        (
            'name = "g"\nkind = "task_failed"\nwebhook = "http://x/"\nenabled = "yes"',
            "'g'",
            "enabled",
        ),
        (
            'name = "h"\nkind = "task_failed"\nwebhook = "http://x/"\nthreshold_percent = 3',
            "'h'",
            "threshold_percent",
        ),
        ('name = "bad name!"\nkind = "task_failed"\nwebhook = "http://x/"', "#1", "name"),
        (
            'name = "i"\nkind = "failure_rate"\nwebhook = "http://x/"\nthreshold_percent = inf',
            "'i'",
            "threshold_percent",
        ),
        (
            'name = "j"\nkind = "failure_rate"\nwebhook = "http://x/"\nthreshold_percent = nan',
            "'j'",
            "threshold_percent",
        ),
    ]
    for body, rule, field_name in cases:
        path = tmp_path / "bad.toml"
        path.write_text("[[rules]]\n" + body + "\n")
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({"MONITOR_ALERT_RULES": str(path)})
        message = str(caught.value)
        assert message.startswith("MONITOR_ALERT_RULES: "), message
        assert f"rule {rule}" in message and f"field {field_name!r}" in message, message

    # JSON too; a duplicate name, a file too deep, a missing file
    path = tmp_path / "rules.json"
    rule = {"name": "x", "kind": "task_failed", "webhook": "http://127.0.0.1/"}
    path.write_text(json.dumps({"rules": [rule, rule]}))
    with pytest.raises(ConfigError, match=r"rule 'x' of .*: field 'name': is used by two rules"):
        Settings.from_env({"MONITOR_ALERT_RULES": str(path)})
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="is not valid"):
        Settings.from_env({"MONITOR_ALERT_RULES": str(path)})
    path.write_text(json.dumps([{**rule, "kind": "worker_offline", "seconds": 1e999}]))
    with pytest.raises(ConfigError, match="field 'seconds'"):
        Settings.from_env({"MONITOR_ALERT_RULES": str(path)})
    with pytest.raises(ConfigError, match="cannot be read"):
        Settings.from_env({"MONITOR_ALERT_RULES": str(tmp_path / "missing.toml")})
    # serve's start-up (jobs()) refuses the same file
    with pytest.raises(alerts.RuleError):
        alerts.jobs(Settings(alert_rules=str(tmp_path / "missing.toml")))


def test_hostile_rule_fields_are_refused_naming_the_field():
    base = {"name": "r", "kind": "failure_rate", "threshold_percent": 5, "webhook": "http://h/"}
    cases = {
        "threshold_percent": [
            float("nan"),
            float("inf"),
            -1,
            101,
            "5",
            True,
            [5],
            {"a": 1},
            10**400,
        ],
        "webhook": [
            "javascript:alert(1)",
            "file:///etc/passwd",
            "http://",
            "http://h:99999/",
            "x" * 5000,
            "http://h/\n",
            5,
        ],
        "name": ["", "a" * 65, "../x", "a b", 7],
        "pattern": ["x" * 201, ["*"], ""],
        "description": ["x" * 1001],
        "window_seconds": [59, 86401, float("-inf")],
        "min_count": [0, 1.5, "10"],
        "format": ["xml"],
    }
    for field_name, values in cases.items():
        for value in values:
            with pytest.raises(alerts.RuleError) as caught:
                alerts.parse_rule({**base, field_name: value}, "ui")
            assert caught.value.field == field_name, (field_name, value, caught.value)
            assert len(str(caught.value)) < 500
    with pytest.raises(alerts.RuleError) as caught:
        alerts.parse_rule({**base, "x" * 10_000: 1}, "ui")
    assert caught.value.field == "x" * 64
    with pytest.raises(alerts.RuleError):
        alerts.parse_rule([base], "ui")
    assert alerts.parse_rule(base, "ui").name == "r"


# -- delivery ------------------------------------------------------------------------------
def test_slack_format_shape_escapes_user_data():
    alert = {
        "id": "a1",
        "rule": "payments",
        "kind": "task_failed",
        "status": "firing",
        "subject": "proj.<pay>",
        "summary": "Task proj.<pay> failed: ValueError('<@here> & boom')",
        "details": {"task_id": "t1", "worker": "celery@w1", "exception": "ValueError('<@here>')"},
        "at": 1700000000.0,
        "url": "https://monitor.example.com/task/t1",
        "format": "slack",
    }
    body = alerts.payload(alert)
    assert set(body) == {"text", "blocks"}
    assert body["text"].startswith("[firing] Task proj.<pay> failed")
    kinds = [block["type"] for block in body["blocks"]]
    assert kinds == ["section", "section", "context"]
    headline = body["blocks"][0]["text"]
    assert headline["type"] == "mrkdwn"
    # Slack's control sequences (<@here>, <!channel>, links) cannot come from user data
    text = json.dumps(body["blocks"])
    assert "<@here>" not in text and "&lt;@here&gt; &amp; boom" in text
    assert "<https://monitor.example.com/task/t1|open in celery monitor>" in headline["text"]
    facts = body["blocks"][1]["fields"]
    assert 1 <= len(facts) <= 10 and all(f["type"] == "mrkdwn" for f in facts)
    assert all(len(f["text"]) <= 2000 for f in facts)
    assert any("celery@w1" in f["text"] for f in facts)
    generic = alerts.payload({**alert, "format": "json"})
    assert generic["rule"] == "payments" and generic["status"] == "firing"
    assert generic["details"]["task_id"] == "t1" and generic["source"] == "celery-monitor"


def test_a_receiver_that_hangs_floods_or_trickles_costs_one_timeout(receiver):
    started = time.monotonic()
    receiver.plan = ["hang"]
    result = alerts.send_webhook(receiver.url, {"x": 1}, timeout=0.5)
    assert not result.ok and "timed out" in result.error
    receiver.plan = ["flood"]
    result = alerts.send_webhook(receiver.url, {"x": 1}, timeout=0.5)
    assert not result.ok and result.status == 500
    # at most the cap was read: the receiver could not push its gigabyte
    assert receiver.flood_bytes < 64 << 20
    receiver.plan = ["trickle"]
    result = alerts.send_webhook(receiver.url, {"x": 1}, timeout=0.5)
    assert not result.ok and "timed out" in result.error, result
    # a correctness bound (three deadlines of 0.5 s plus slack), not a speed figure:
    # without the one deadline per exchange, the trickle alone never ends
    assert time.monotonic() - started < 10
    for url in ("ftp://127.0.0.1/x", "http:///x", "gopher://h/"):
        assert not alerts.send_webhook(url, {}, timeout=0.5).ok
    # nothing listens there: one clear error
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = alerts.send_webhook(f"http://127.0.0.1:{port}/", {}, timeout=0.5)
    assert not result.ok and "Refused" in result.error


def test_retried_with_backoff_until_delivered_attempts_recorded(receiver, store, settings):
    settings = fast_settings(settings.prefix)
    store.settings = settings
    now = time.time()
    store.apply([WorkerEvent("celery@gone", "heartbeat", now - 600, "event", {"freq": 2.0})])
    put(
        store,
        settings,
        {
            "name": "gone",
            "kind": "worker_offline",
            "seconds": 30,
            "webhook": receiver.url,
            "pattern": "celery@*",
        },
    )
    receiver.plan = [500, 500]
    engine = alerts.Engine(store, settings)
    sent = run_until(engine, lambda: alerts.sent_log(store), "the alert delivered")
    assert len(sent) == 1
    entry = sent[0]
    assert entry["delivery"] == "sent" and entry["attempts"] == 3 and entry["http_status"] == 200
    assert entry["errors"] == ["HTTP 500: receiver says no", "HTTP 500: receiver says no"]
    assert entry["subject"] == "celery@gone" and entry["status"] == "firing"
    assert entry["webhook"] == f"{receiver.url.rsplit('/', 1)[0]}/…"  # the log never holds the URL
    assert len(receiver.bodies("gone")) == 3
    assert alerts.pending(store) == []
    # still offline: no second alert within the dedup window
    for _ in range(5):
        engine.run()
    assert len(receiver.bodies("gone")) == 3


def test_a_delivery_that_never_succeeds_is_logged_failed_and_the_log_is_bounded(
    receiver, store, settings
):
    settings = fast_settings(settings.prefix, alert_log_max=3, alert_max_attempts=2)
    store.settings = settings
    silent_workers(store, settings, (f"celery@w{i}" for i in range(5)), "down", receiver.url)
    receiver.plan = [503] * 10
    engine = alerts.Engine(store, settings)
    # five subjects, two attempts each, then failed; the log keeps the last 3
    run_until(engine, lambda: not alerts.pending(store) and len(receiver.posts) >= 10, "all failed")
    log = alerts.sent_log(store)
    assert len(log) == 3
    assert all(e["delivery"] == "failed" and e["attempts"] == 2 for e in log)
    assert all(e["error"].startswith("HTTP 503") for e in log)


def test_a_pending_delivery_survives_a_restart(receiver, store, settings):
    settings = fast_settings(settings.prefix, alert_backoff=0.2)
    silent_workers(store, settings, ["celery@gone"], "gone", receiver.url)
    receiver.plan = [500]
    first = alerts.Engine(store, settings)
    first.run()
    assert len(receiver.posts) == 1 and len(alerts.pending(store)) == 1
    # another process (a fresh engine, as after a restart or failover) delivers it
    second = alerts.Engine(Store(redis_client(REDIS_URL), settings), settings)
    sent = run_until(second, lambda: alerts.sent_log(store), "delivered by the successor")
    assert sent[0]["attempts"] == 2 and len(receiver.bodies("gone")) == 2


# -- evaluation with real workers ----------------------------------------------------------
def test_a_task_failing_after_its_retries_sends_exactly_one_alert(fresh, receiver):
    cluster = fresh
    settings, store = cluster.settings, cluster.store
    put(
        store,
        settings,
        {
            "name": "retries",
            "kind": "task_failed",
            "webhook": receiver.url,
            "pattern": T + "always_*",
            "dedup_seconds": 600,
        },
    )
    runner = JobRunner(store, settings, alerts.jobs(settings))
    try:
        runner.start()
        wait_for(lambda: runner.runs["alerts"] >= 1, what="the evaluator's first run")
        first = cluster.send("always_retry")
        ok = cluster.send("add", 1, 2)
        wait_for(lambda: cluster.state(first) == "FAILURE", what="always_retry failed")
        wait_for(lambda: cluster.state(ok) == "SUCCESS", what="add ran")
        sent = wait_for(lambda: receiver.bodies("retries"), what="the alert")
        body = sent[0]
        assert body["kind"] == "task_failed" and body["subject"] == T + "always_retry"
        assert body["details"]["task_id"] == first and body["details"]["retries"] == "2"
        assert "RuntimeError" in body["details"]["exception"]
        assert body["details"]["worker"] == cluster.worker.hostname
        assert "after 2 retries" in body["summary"]
        # the second failure within the window sends none
        second = cluster.send("always_retry")
        wait_for(lambda: cluster.state(second) == "FAILURE", what="the second failure")
        seen = runner.runs["alerts"]
        wait_for(lambda: runner.runs["alerts"] >= seen + 3, what="three more evaluations")
        cursor = store.redis.get(store.keys.alert_cursor)
        last = store.redis.xrevrange(store.keys.changes, count=1)[0][0]
        assert cursor == last  # the evaluator read past the second failure
        assert len(receiver.bodies("retries")) == 1
        log = alerts.sent_log(store)
        assert [e["subject"] for e in log] == [T + "always_retry"]
    finally:
        runner.stop()


def test_two_evaluators_one_alert(fresh, receiver):
    cluster = fresh
    settings = cluster.settings
    stores = [Store(redis_client(REDIS_URL), settings) for _ in range(2)]
    put(
        stores[0],
        settings,
        {
            "name": "two",
            "kind": "task_failed",
            "webhook": receiver.url,
            "pattern": T + "fail",
            "dedup_seconds": 0,
        },
    )
    runners = [JobRunner(s, settings, alerts.jobs(settings)) for s in stores]
    try:
        for runner in runners:
            runner.start()
        wait_for(lambda: sum(r.runs["alerts"] for r in runners) >= 2, what="evaluations")
        ids = [cluster.send("fail", f"two-{i}") for i in range(3)]
        for task_id in ids:
            wait_for(lambda t=task_id: cluster.state(t) == "FAILURE", what="failures")
        wait_for(lambda: len(receiver.bodies("two")) >= 3, what="three alerts")
        runs = sum(r.runs["alerts"] for r in runners)
        wait_for(lambda: sum(r.runs["alerts"] for r in runners) >= runs + 5, what="more runs")
        bodies = receiver.bodies("two")
        # dedup window 0: one alert per failed task, not two
        assert sorted(b["details"]["task_id"] for b in bodies) == sorted(ids)
        assert sum(1 for r in runners if r.holds("alerts")) == 1
        assert sum(1 for r in runners if r.runs["alerts"]) == 1
    finally:
        for runner in runners:
            runner.stop()
        for s in stores:
            s.close()


def test_failure_rate_fires_then_resolves():
    """All tasks of a cluster of its own (a prefix and worker no other test uses)."""
    require_service("127.0.0.1", 6379, "Redis")
    cluster = Cluster()
    receiver = Receiver()
    cluster.worker.start()
    try:
        settings, store = cluster.settings, cluster.store
        put(
            store,
            settings,
            {
                "name": "rate",
                "kind": "failure_rate",
                "webhook": receiver.url,
                "threshold_percent": 50,
                "min_count": 5,
                "window_seconds": 600,
            },
        )
        engine = alerts.Engine(store, settings)
        ids = [cluster.send("fail", f"rate-{i}") for i in range(3)]
        ids += [cluster.send("add", i, i) for i in range(1)]
        for task_id in ids:
            wait_for(lambda t=task_id: cluster.state(t) in ("FAILURE", "SUCCESS"), what="tasks")
        for _ in range(3):
            engine.run()
        assert receiver.bodies() == []  # 75 % of 4: fewer than min_count
        last = cluster.send("add", 2, 2)
        wait_for(lambda: cluster.state(last) == "SUCCESS", what="the fifth task")
        firing = run_until(engine, receiver.bodies, "failure rate alert")
        assert firing[0]["status"] == "firing" and firing[0]["subject"] == "*"
        assert firing[0]["details"]["failed"] == 3 and firing[0]["details"]["finished"] == 5
        assert firing[0]["details"]["rate"] == 60.0
        assert "60.0 % of tasks failed over the last 10 min" in firing[0]["summary"]
        more = [cluster.send("add", i, 1) for i in range(2)]
        for task_id in more:
            wait_for(lambda t=task_id: cluster.state(t) == "SUCCESS", what="successes")
        resolved = run_until(engine, lambda: receiver.bodies()[1:], "resolved")  # 3 of 7
        assert [b["status"] for b in resolved] == ["resolved"]
        assert resolved[0]["summary"].startswith("Resolved after")
    finally:
        receiver.close()
        cluster.worker.stop()
        cluster.store.delete_all()
        cluster.store.close()


def test_failure_rate_per_task_name(store, settings, receiver):
    settings = fast_settings(settings.prefix)
    store.settings = settings
    now = time.time()
    records = []
    for i in range(10):
        name = "proj.pay" if i < 6 else "proj.mail"
        state = "FAILURE" if i % 2 == 0 or name == "proj.mail" else "SUCCESS"
        records.append(TaskEvent(f"t{i}", "RECEIVED", now - 5, "event", "celery@w", {"name": name}))
        records.append(TaskEvent(f"t{i}", state, now - 4, "event", "celery@w", {"name": name}))
    records.append(TaskEvent("o1", "RECEIVED", now - 5, "event", "celery@w", {"name": "other.x"}))
    records.append(TaskEvent("o1", "FAILURE", now - 4, "event", "celery@w", {"name": "other.x"}))
    store.apply(records)
    put(
        store,
        settings,
        {
            "name": "per",
            "kind": "failure_rate",
            "webhook": receiver.url,
            "pattern": "proj.*",
            "per_name": True,
            "threshold_percent": 40,
            "min_count": 2,
        },
    )
    engine = alerts.Engine(store, settings)
    run_until(engine, lambda: len(receiver.bodies()) >= 2, "one alert per name")
    for _ in range(3):
        engine.run()
    got = {b["subject"]: b["details"] for b in receiver.bodies()}
    assert set(got) == {"proj.pay", "proj.mail"}  # other.x is not proj.*
    assert (got["proj.pay"]["failed"], got["proj.pay"]["finished"]) == (3, 6)
    assert (got["proj.mail"]["failed"], got["proj.mail"]["finished"]) == (4, 4)


def test_a_name_window_longer_than_the_per_name_counters_is_a_problem(store, settings, receiver):
    """Per-name minute counters live MONITOR_STATS_TTL: a name rule's longer window
    is cut, and the evaluator says so (its status' problems); the global one is not."""
    settings = fast_settings(settings.prefix, stats_ttl=3600.0)
    store.settings = settings
    base = {"kind": "failure_rate", "webhook": receiver.url, "threshold_percent": 50}
    put(store, settings, {**base, "name": "names", "pattern": "proj.*", "window_seconds": 7200})
    put(store, settings, {**base, "name": "all", "window_seconds": 7200})
    put(store, settings, {**base, "name": "short", "pattern": "proj.*", "window_seconds": 600})
    alerts.Engine(store, settings).run()
    problems = alerts.status(store)["problems"]
    assert set(problems) == {"names"}
    assert "longer than MONITOR_STATS_TTL (3600 s)" in problems["names"]


def test_worker_offline_with_a_real_worker_stopped(fresh, receiver):
    cluster = fresh
    settings, store = cluster.settings, cluster.store
    other = cluster.make_worker("offline")
    other.start()
    try:
        put(
            store,
            settings,
            {
                "name": "offline",
                "kind": "worker_offline",
                "seconds": 0,
                "pattern": "offline-*",
                "webhook": receiver.url,
                "format": "slack",
            },
        )
        engine = alerts.Engine(store, settings)
        wait_for(lambda: store.worker(other.hostname), what="the worker's record")
        for _ in range(3):
            engine.run()
        assert receiver.bodies() == []  # online: nothing
        other.stop()
        wait_for(lambda: not store.worker(other.hostname)["online"], what="worker offline")
        sent = run_until(engine, lambda: receiver.bodies(), "offline alert")
    finally:
        other.stop()
    body = sent[0]
    assert set(body) == {"text", "blocks"}  # the rule asked for Slack
    assert other.hostname in body["text"] and "shut down" in body["text"]
    assert cluster.worker.hostname not in json.dumps(sent)  # the pattern excludes it


def test_queue_and_beat_rule_conditions_and_resolution(store, settings, receiver, monkeypatch):
    """A unit test of the two rules' conditions on canned answers of
    monitor.queues.latest and monitor.beat.periodic_tasks (the two tests below
    use their real answers; their own tests check them against real brokers and
    a real beat): depth and age thresholds, unknown values, resolution."""
    from monitor import beat, queues

    settings = fast_settings(settings.prefix)
    now = time.time()
    samples = {
        "celery": {
            "name": "celery",
            "depth": 50,
            "consumers": 1,
            "oldest_age": 5.0,
            "sampled_at": now,
            "broker": "redis",
        },
        "slow": {
            "name": "slow",
            "depth": 2,
            "consumers": 0,
            "oldest_age": 900.0,
            "sampled_at": now,
            "broker": "redis",
        },
        "fine": {
            "name": "fine",
            "depth": None,
            "consumers": None,
            "oldest_age": None,
            "sampled_at": now,
            "broker": "redis",
        },
    }
    monkeypatch.setattr(queues, "latest", lambda store: samples)
    periodic = [
        {
            "name": "nightly",
            "task": "proj.report",
            "schedule": "0 3 * * *",
            "source": "beat_schedule",
            "last_run": now - 90000,
            "next_run": now - 3600,
            "missed": True,
        },
        {
            "name": "often",
            "task": "proj.tick",
            "schedule": "every 10 s",
            "source": "beat_schedule",
            "last_run": now - 3,
            "next_run": now + 7,
            "missed": False,
        },
    ]
    monkeypatch.setattr(beat, "periodic_tasks", lambda store, app, now=None: periodic)
    put(
        store,
        settings,
        {"name": "deep", "kind": "queue", "max_depth": 10, "max_age": 600, "webhook": receiver.url},
    )
    put(store, settings, {"name": "missed", "kind": "beat_missed", "webhook": receiver.url})
    engine = alerts.Engine(store, settings)
    run_until(engine, lambda: len(receiver.bodies()) >= 3, "queue and beat alerts")
    by_subject = {(b["rule"], b["subject"]): b for b in receiver.bodies()}
    assert set(by_subject) == {("deep", "celery"), ("deep", "slow"), ("missed", "nightly")}
    assert "depth 50 > 10" in by_subject["deep", "celery"]["summary"]
    assert "oldest message 15 min old" in by_subject["deep", "slow"]["summary"]
    samples["celery"]["depth"] = 3
    run_until(engine, lambda: any(b["status"] == "resolved" for b in receiver.bodies()), "resolved")
    assert [
        (b["subject"], b["status"]) for b in receiver.bodies() if b["status"] == "resolved"
    ] == [("celery", "resolved")]


# -- the API ---------------------------------------------------------------------------------
def basic(name: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{PASSWORD}".encode()).decode()}


@pytest.fixture
def web(settings, store, tmp_path):
    path = tmp_path / "alerts.toml"
    path.write_text(
        '[[rules]]\nname = "from-file"\nkind = "task_failed"\n'
        'webhook = "https://hooks.slack.com/services/T0/B0/SECRET"\n'
    )
    settings = settings.replace(alert_rules=str(path))
    app = create_app(settings, message_queue=None)
    app.config["TESTING"] = True
    auth = AuthStore(store.redis, store.keys, settings)
    auth.add_user("olga", PASSWORD, "operator")
    auth.add_user("vic", PASSWORD, "viewer")
    return app


def audit_entries(store: Store) -> list[dict[str, Any]]:
    return [fields for _, fields in store.redis.xrange(store.keys.audit)]


def test_ui_rules_crud_for_operators_refused_for_viewers_and_audited(web, store):
    client = web.test_client()
    rule = {
        "name": "workers",
        "kind": "worker_offline",
        "seconds": 120,
        "webhook": "https://hooks.example.com/services/SECRET",
        "format": "slack",
    }
    answer = client.post("/api/v1/alerts/rules", json=rule, headers=basic("vic"))
    assert answer.status_code == 403 and "operator" in answer.get_json()["error"]
    answer = client.post("/api/v1/alerts/rules", json=rule)
    assert answer.status_code == 401
    assert store.redis.hlen(store.keys.alert_rules) == 0
    answer = client.post("/api/v1/alerts/rules", json=rule, headers=basic("olga"))
    assert answer.status_code == 201, answer.get_json()
    assert answer.get_json()["rule"]["seconds"] == 120.0
    assert client.post("/api/v1/alerts/rules", json=rule, headers=basic("olga")).status_code == 409
    # a file rule's name is taken, and file rules are not edited here
    clash = {**rule, "name": "from-file"}
    assert client.post("/api/v1/alerts/rules", json=clash, headers=basic("olga")).status_code == 409
    answer = client.delete("/api/v1/alerts/rules/from-file", headers=basic("olga"))
    assert answer.status_code == 409 and answer.get_json()["code"] == "file_rule"

    listed = client.get("/api/v1/alerts/rules", headers=basic("vic")).get_json()
    assert [(r["name"], r["source"], r["editable"]) for r in listed["rules"]] == [
        ("from-file", "file", False),
        ("workers", "ui", True),
    ]
    # a viewer never sees a webhook's secret path; an operator does
    assert {r["webhook"] for r in listed["rules"]} == {
        "https://hooks.slack.com/…",
        "https://hooks.example.com/…",
    }
    assert listed["can_edit"] is False
    mine = client.get("/api/v1/alerts/rules", headers=basic("olga")).get_json()
    assert mine["can_edit"] is True
    assert mine["rules"][1]["webhook"] == rule["webhook"]

    answer = client.post(
        "/api/v1/alerts/rules/workers", json={**rule, "seconds": 300}, headers=basic("olga")
    )
    assert answer.status_code == 200 and answer.get_json()["rule"]["seconds"] == 300.0
    answer = client.post(
        "/api/v1/alerts/rules/nobody", json=rule | {"name": "nobody"}, headers=basic("olga")
    )
    assert answer.status_code == 404
    assert client.delete("/api/v1/alerts/rules/workers", headers=basic("vic")).status_code == 403
    assert client.delete("/api/v1/alerts/rules/workers", headers=basic("olga")).status_code == 200
    assert client.delete("/api/v1/alerts/rules/workers", headers=basic("olga")).status_code == 404
    assert store.redis.hlen(store.keys.alert_rules) == 0

    entries = audit_entries(store)
    actions = [(e["action"], e["who"], e["ok"]) for e in entries]
    assert ("alerts.rule.create", "vic", "0") in actions
    assert ("alerts.rule.create", "olga", "1") in actions
    assert ("alerts.rule.update", "olga", "1") in actions
    assert ("alerts.rule.delete", "olga", "1") in actions
    assert ("alerts.rule.delete", "vic", "0") in actions


def test_hostile_rule_bodies_answer_400_naming_the_field(web, store):
    client = web.test_client()
    headers = basic("olga")
    base = {"name": "r", "kind": "failure_rate", "threshold_percent": 5, "webhook": "http://h/"}
    for field_name, value in [
        ("threshold_percent", "NaN"),
        ("threshold_percent", [1] * 1000),
        ("webhook", "javascript:alert(1)"),
        ("webhook", "http://h/" + "x" * 3000),
        ("min_count", 10**30),
        ("description", "x" * 5000),
        ("per_name", "yes"),
    ]:
        answer = client.post(
            "/api/v1/alerts/rules", json={**base, field_name: value}, headers=headers
        )
        assert answer.status_code == 400, (field_name, answer.get_json())
        assert answer.get_json()["field"] == field_name
        assert f"'{field_name}'" in answer.get_json()["error"]
    # non-finite numbers as JSON's extensions, a body too deep, too large, not an object
    raw = '{"name": "r", "kind": "failure_rate", "threshold_percent": Infinity, "webhook": "http://h/"}'
    answer = client.post(
        "/api/v1/alerts/rules", data=raw, content_type="application/json", headers=headers
    )
    assert answer.status_code == 400 and answer.get_json()["field"] == "threshold_percent"
    for data in ("[" * 50_000 + "]" * 50_000, "[1, 2]", '"x"', "{" * 10):
        answer = client.post(
            "/api/v1/alerts/rules", data=data, content_type="application/json", headers=headers
        )
        assert 400 <= answer.status_code < 500, data[:20]
    answer = client.post(
        "/api/v1/alerts/rules", json={**base, "description": "x" * 100_000}, headers=headers
    )
    assert answer.status_code == 400 and "larger than" in answer.get_json()["error"]
    assert store.redis.hlen(store.keys.alert_rules) == 0
    for query in ("limit=0", "limit=10000", "limit=abc", "before=1;2", "before=" + "9" * 50):
        assert client.get(f"/api/v1/alerts?{query}", headers=headers).status_code == 400


def test_rule_test_sends_one_message(web, store, receiver):
    client = web.test_client()
    rule = {"name": "ping", "kind": "task_failed", "webhook": receiver.url}
    assert client.post("/api/v1/alerts/rules", json=rule, headers=basic("olga")).status_code == 201
    answer = client.post("/api/v1/alerts/rules/ping/test", headers=basic("olga"))
    assert answer.get_json() == {"ok": True, "http_status": 200, "error": None}
    assert receiver.bodies()[0]["status"] == "test"
    assert client.post("/api/v1/alerts/rules/ping/test", headers=basic("vic")).status_code == 403
    assert len(receiver.posts) == 1


def test_queue_rule_on_real_samples_of_a_redis_broker(store, settings, receiver):
    """The queues sampler (monitor.queues, its elected job) measures a real queue
    on a Redis broker; the queue rule fires on its depth and resolves once the
    queue is drained."""
    import redis as redis_lib
    from kombu import Queue

    from monitor import queues
    from monitor.jobs import JobContext

    settings = fast_settings(settings.prefix)
    store.settings = settings
    name = f"alerts-depth-{uuid.uuid4().hex[:8]}"
    app = Celery("alerts-queues", broker=BROKER)
    app.conf.update(task_queues=[Queue(name)], broker_connection_retry_on_startup=True)
    broker = redis_lib.Redis.from_url(BROKER)
    try:
        for i in range(5):
            app.send_task(T + "add", (i, i), queue=name)
        assert broker.llen(name) == 5
        ctx = JobContext(store, settings, app)
        queues.sample_once(ctx)
        assert queues.latest(store)[name]["depth"] == 5
        put(
            store,
            settings,
            {
                "name": "deep",
                "kind": "queue",
                "pattern": "alerts-depth-*",
                "max_depth": 3,
                "webhook": receiver.url,
            },
        )
        engine = alerts.Engine(store, settings, app)
        firing = run_until(engine, receiver.bodies, "queue depth alert")
        assert firing[0]["subject"] == name and firing[0]["details"]["depth"] == 5
        assert "depth 5 > 3" in firing[0]["summary"]
        broker.delete(name)
        queues.sample_once(ctx)
        resolved = run_until(engine, lambda: receiver.bodies()[1:], "resolved")
        assert resolved[0]["status"] == "resolved" and resolved[0]["subject"] == name
    finally:
        broker.delete(name)
        broker.close()
        app.close()


def test_beat_rule_on_the_beat_modules_view_of_a_schedule(store, settings, receiver):
    """monitor.beat reads the app's beat_schedule and the store: an entry due every
    10 s that no run was seen for in the last hour is missed; one that just ran is not."""
    from monitor import beat

    settings = fast_settings(settings.prefix)
    store.settings = settings
    app = Celery("alerts-beat", broker=BROKER)
    app.conf.beat_schedule = {
        "tick": {"task": T + "add", "schedule": 10.0, "args": (1, 2)},
        "tock": {"task": T + "noop", "schedule": 3600.0},
    }
    now = time.time()
    # the store vouches for the last hour (its oldest task), in which tick never ran
    store.apply([TaskEvent("old", "SUCCESS", now - 3600, "event", "celery@w", {"name": "x.y"})])
    rows = {r["name"]: r for r in beat.periodic_tasks(store, app, now=now)}
    assert rows["tick"]["missed"] is True and rows["tock"]["missed"] is False
    put(store, settings, {"name": "missed", "kind": "beat_missed", "webhook": receiver.url})
    engine = alerts.Engine(store, settings, app)
    sent = run_until(engine, receiver.bodies, "missed periodic task alert")
    for _ in range(3):
        engine.run()
    assert [b["subject"] for b in receiver.bodies()] == ["tick"]
    assert sent[0]["details"]["task"] == T + "add"
    assert "did not run when due" in sent[0]["summary"]
    app.close()


def test_a_failure_fed_without_its_name_and_a_corrupt_delivery(store, settings, receiver):
    settings = fast_settings(settings.prefix)
    store.settings = settings
    put(
        store,
        settings,
        {"name": "pay", "kind": "task_failed", "pattern": "proj.pay*", "webhook": receiver.url},
    )
    engine = alerts.Engine(store, settings)
    engine.run()  # the cursor starts at the feed's end
    now = time.time()
    store.apply([TaskEvent("p1", "RECEIVED", now - 1, "event", "celery@w", {"name": "proj.pay"})])
    # the pool process's FAILURE reached the feed before the name did
    store.redis.xadd(
        store.keys.changes,
        {"kind": "task", "id": "p1", "state": "FAILURE", "name": "", "worker": "", "ts": str(now)},
    )
    sent = run_until(engine, receiver.bodies, "the alert, named from the task hash")
    assert sent[0]["subject"] == "proj.pay" and sent[0]["details"]["task_id"] == "p1"
    # a stored delivery that is not an alert any more ends as failed, once
    store.redis.hset(store.keys.alert_deliveries, "bad", json.dumps({"rule": 5}))
    store.redis.zadd(store.keys.alert_pending, {"bad": 0})
    run_until(engine, lambda: any(e["id"] == "bad" for e in alerts.sent_log(store)), "bad logged")
    bad = next(e for e in alerts.sent_log(store) if e["id"] == "bad")
    assert bad["delivery"] == "failed" and "unreadable" in bad["error"]
    assert alerts.pending(store) == [] and len(receiver.posts) == 1


def test_a_hanging_receiver_costs_one_timeout_per_evaluation(store, settings, receiver):
    """Delivery is bounded per run (MONITOR_ALERT_BUDGET): behind a receiver that
    hangs, one run makes one attempt; the other alerts wait for the next run."""
    settings = fast_settings(settings.prefix, alert_budget=0.1, alert_timeout=0.5)
    store.settings = settings
    silent_workers(store, settings, (f"hang@w{i}" for i in range(3)), "hang", receiver.url)
    receiver.plan = ["hang"] * 3
    engine = alerts.Engine(store, settings)
    counts = engine.run()
    assert counts["queued"] == 3 and counts["retrying"] == 1 and len(receiver.posts) == 1
    waiting = alerts.pending(store)
    assert len(waiting) == 3
    assert sorted(a["attempts"] for a in waiting) == [0, 0, 1]
    assert all(a["next_attempt"] <= time.time() for a in waiting if a["attempts"] == 0)
    receiver.release.set()
    receiver.plan = []
    run_until(engine, lambda: len(alerts.sent_log(store)) == 3, "all delivered once it answers")
