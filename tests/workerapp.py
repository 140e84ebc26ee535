"""The Celery app the integration tests run in real prefork workers.

Configured from the environment the test sets: TEST_BROKER_URL, TEST_QUEUE,
TEST_HOOKS=1 to connect the monitor's signal hooks (as a user would, one line).
BENCH_HOOKS_FLOOR (bench/bench_hooks.py only) measures what simpler hooks would
cost: ``push`` appends each encoded batch to a Redis list as it is (the least
work durable storage can do: no precedence, indexes or timeline); ``discard``
builds, buffers and encodes every record, then throws the batch away;
``dispatch`` leaves the handlers connected but returns from each at once
(Celery's own signal dispatch only).
"""

from __future__ import annotations

import os
import time

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
