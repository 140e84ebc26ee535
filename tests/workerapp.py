"""The Celery app the integration tests run in real prefork workers.

Configured from the environment the test sets: TEST_BROKER_URL, TEST_QUEUE,
TEST_HOOKS=1 to connect the monitor's signal hooks (as a user would, one line).
BENCH_HOOKS_FLOOR (bench/bench_hooks.py only) measures what simpler hooks would
cost: ``push`` appends each encoded batch to a Redis list as it is (the least
work durable storage can do: no precedence, indexes or timeline); ``discard``
builds, buffers and encodes every record, then throws the batch away;
``dispatch`` leaves the handlers connected but returns from each at once
(Celery's own signal dispatch only).

TEST_ACCEPT_CONTENT (comma-separated, e.g. ``json,pickle``) sets the worker's
accept_content, for the tasks published with another serializer;
TEST_POOL_RESTARTS=1 allows remote pool restarts; TEST_ACKS_LATE=1 turns on
task_acks_late and TEST_VISIBILITY_TIMEOUT sets the Redis transport's
visibility_timeout (tests/test_lost_worker.py). The
operator-action tests' tasks (``record_args`` ...) write what they saw into
the monitor's Redis under ``MONITOR_PREFIX`` (see :func:`action_key`), so a test
can compare, inside the task, what a rerun received with what the original did.
"""

from __future__ import annotations

import datetime
import decimal
import json
import os
import time
import uuid

from celery import Celery, chord, group
from celery.exceptions import Reject

app = Celery("workerapp")
app.conf.update(
    broker_url=os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/0"),
    result_backend=os.environ.get("TEST_RESULT_BACKEND", "redis://127.0.0.1:6379/1"),
    task_default_queue=os.environ.get("TEST_QUEUE", "celery"),
    task_send_sent_event=True,
    broker_connection_retry_on_startup=True,
    task_acks_late=False,
    worker_prefetch_multiplier=int(os.environ.get("TEST_PREFETCH_MULTIPLIER", "1")),
    result_expires=600,
)
# tests/test_lost_worker.py: acks_late (without task_reject_on_worker_lost) on a
# Redis broker with a short visibility timeout, and a short heartbeat.
if os.environ.get("TEST_ACKS_LATE") == "1":
    app.conf.task_acks_late = True
if os.environ.get("TEST_VISIBILITY_TIMEOUT"):
    app.conf.broker_transport_options = {
        "visibility_timeout": float(os.environ["TEST_VISIBILITY_TIMEOUT"])
    }
if os.environ.get("TEST_POOL_RESTARTS") == "1":
    app.conf.worker_pool_restarts = True
if os.environ.get("TEST_ACCEPT_CONTENT"):
    app.conf.accept_content = os.environ["TEST_ACCEPT_CONTENT"].split(",")

if os.environ.get("TEST_HOOKS") == "1":
    import monitor.signals

    monitor.signals.connect(app)
    _floor = os.environ.get("BENCH_HOOKS_FLOOR")
    if _floor in ("push", "discard"):
        from monitor.store import BatchResult, Store

        def _apply_floor(self, payload, now=None):
            if _floor == "push":  # one round trip, the list kept short
                key = f"{self.keys.prefix}:bench-push"
                self.redis.pipeline(transaction=False).rpush(key, payload).ltrim(
                    key, -10, -1
                ).execute()
            return BatchResult(0, 0, 0, 0)

        Store.apply_encoded = _apply_floor
    elif _floor == "dispatch":
        from monitor.signals import _active

        _active.recorder = None
    elif _floor:
        raise SystemExit(f"BENCH_HOOKS_FLOOR={_floor!r}: expected push, discard or dispatch")


@app.task
def add(x, y):
    return x + y


@app.task
def tsum(numbers):
    return sum(numbers)


@app.task
def noop():
    return None


@app.task
def fail(message="boom"):
    raise ValueError(message)


@app.task(bind=True, max_retries=3)
def retry_once(self):
    if self.request.retries < 1:
        raise self.retry(countdown=0.2, exc=RuntimeError("transient"))
    return "ok after retry"


@app.task(bind=True, max_retries=2)
def always_retry(self):
    raise self.retry(countdown=0.1, exc=RuntimeError("never works"))


@app.task
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@app.task(time_limit=1)
def hard_limit():
    time.sleep(30)


@app.task
def reject():
    raise Reject("not for us", requeue=False)


@app.task(bind=True)
def progress(self, steps=3):
    for i in range(1, steps + 1):
        self.update_state(state="PROGRESS", meta={"current": i, "total": steps})
        self.send_event("task-progress", current=i, total=steps)
        time.sleep(0.05)
    return steps


def canvas():
    """A chain, a group and a chord: (chain result, group result, chord result)."""
    chained = (add.s(1, 2) | add.s(3) | add.s(4)).apply_async()
    grouped = group(add.s(i, i) for i in range(3)).apply_async()
    chorded = chord([add.s(i, 1) for i in range(3)], tsum.s()).apply_async()
    return chained, grouped, chorded


# -- operator actions (tests/test_actions.py) -----------------------------------------
_redis = None


def action_key(*parts: str) -> str:
    """A key under the test's MONITOR_PREFIX: deleted with the test's store."""
    return ":".join([os.environ.get("MONITOR_PREFIX", "monitor"), "test", *parts])


def action_redis():
    """The monitor's Redis, one client per process (pool children fork)."""
    global _redis
    import redis

    if _redis is None or _redis.connection_pool.pid != os.getpid():
        _redis = redis.Redis.from_url(
            os.environ.get("MONITOR_REDIS_URL", "redis://127.0.0.1:6379/0")
        )
    return _redis


def sample_args():
    """Arguments kombu's JSON carries with their types: what a retry must give back."""
    args = [
        datetime.datetime(
            2024,
            2,
            29,
            13,
            14,
            15,
            123456,
            tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30)),
        ),
        decimal.Decimal("1234567890.000000000000000001"),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        {"nested": [1, 2.5, None, True, "é\u2603", {"deep": [decimal.Decimal("0.1")]}]},
    ]
    kwargs = {
        "when": datetime.date(2000, 1, 1),
        "at": datetime.time(23, 59, 58),
        "ids": [uuid.UUID(int=1), uuid.UUID(int=2)],
        "big": 2**62,
        "text": "x" * 100,
    }
    return args, kwargs


def pickle_sample_args():
    """What only pickle carries: tuples, sets, bytes, complex numbers."""
    args = [(1, 2, (3, "four")), frozenset({"a", "b"}), b"\x00\xffbytes"]
    kwargs = {"point": complex(1, -2), "tags": {"x", "y"}, "when": datetime.date(1999, 12, 31)}
    return args, kwargs


def shape(value):
    """Types all the way down: equal values of other types must not pass."""
    if isinstance(value, dict):
        return {str(k): shape(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [type(value).__name__, [shape(v) for v in value]]
    if isinstance(value, set | frozenset):
        return [type(value).__name__, sorted(repr(v) for v in value)]
    return type(value).__name__


def _record_call(task, expected, args, kwargs):
    want_args, want_kwargs = expected
    record = {
        "id": task.request.id,
        "equal": list(args) == want_args and kwargs == want_kwargs,
        "same_types": shape(list(args)) == shape(want_args) and shape(kwargs) == shape(want_kwargs),
        "shape": shape([list(args), kwargs]),
        "repr": repr((args, kwargs)),
        "routing_key": (task.request.delivery_info or {}).get("routing_key"),
        "tenant": getattr(task.request, "tenant", None),  # a custom header
        "timelimit": task.request.timelimit,
    }
    action_redis().set(action_key("received", task.request.id), json.dumps(record), ex=600)


@app.task(bind=True)
def record_args(self, *args, **kwargs):
    """Record what it received (compared inside), then fail: a task to retry."""
    _record_call(self, sample_args(), args, kwargs)
    raise ValueError("record_args always fails")


@app.task(bind=True, serializer="pickle")
def record_args_pickle(self, *args, **kwargs):
    _record_call(self, pickle_sample_args(), args, kwargs)
    raise ValueError("record_args_pickle always fails")


@app.task(bind=True)
def stamp(self, tag):
    """Note when it started (rate limit and revoke tests)."""
    action_redis().rpush(action_key("stamps", tag), repr(time.time()))


@app.task(bind=True)
def hold(self, seconds):
    """Publish its pool process's pid, then sleep (terminate test)."""
    action_redis().set(action_key("pid", self.request.id), os.getpid(), ex=600)
    time.sleep(seconds)
    return seconds


@app.task
def fail_quietly(n):
    """Fails at once: bulk retry fodder."""
    raise ValueError(f"bulk {n}")


# -- redaction (tests/test_redaction.py) -----------------------------------------------
@app.task(bind=True)
def login(self, user, password, options=None):
    """Secrets everywhere a task puts data: a positional parameter named
    ``password``, nested keys in its options, its progress meta (as a custom
    state and as a custom event) and its result; ``options["fail"]`` makes it
    raise with a secret in the exception instead."""
    options = options or {}
    tag = options.get("tag", "")
    session = {
        "access_token": f"hunter2-access-{tag}",
        "user": user,
        # deeper than Celery's reprs go (task_repr_maxlevels): JSON keeps it all
        "grants": [{"scopes": [{"refresh_token": f"hunter2-refresh-{tag}", "scope": "read"}]}],
    }
    self.update_state(state="PROGRESS", meta={"step": "auth", "session": session})
    self.send_event("task-progress", step="auth", session=session)
    if options.get("fail"):
        raise ValueError({"api_token": f"hunter2-exc-{tag}", "user": user})
    return {
        "user": user,
        "region": options.get("region"),
        "auth": {"client_secret": f"hunter2-client-{tag}", "scope": "read"},
    }
