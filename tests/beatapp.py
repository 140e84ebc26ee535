"""The Celery app of the beat tests (tests/test_beat.py): ``celery -A tests.beatapp beat``,
a prefork worker running its tasks, and the monitor reading its ``beat_schedule``.

Configured from the environment: TEST_BROKER_URL, TEST_QUEUE, TEST_HOOKS=1 to
connect the monitor's hooks (in beat, that is the publish hook: beat is the
producer of every periodic task), BEAT_SKIP=name,name for entries the beat
process leaves out (so the monitor, which reads the full schedule, knows an
entry that beat never runs).
"""

from __future__ import annotations

import datetime
import os

from celery import Celery
from celery.schedules import crontab

app = Celery("beatapp")
app.conf.update(
    broker_url=os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/9"),
    task_default_queue=os.environ.get("TEST_QUEUE", "celery"),
    broker_connection_retry_on_startup=True,
    timezone="UTC",
)

_SCHEDULE = {
    # Two entries of one task, told apart by their arguments.
    "tick-1": {"task": "tests.beatapp.tick", "schedule": 1.0, "args": (1,)},
    "tick-2": {
        "task": "tests.beatapp.tick",
        "schedule": datetime.timedelta(seconds=2),
        "args": (2,),
        "kwargs": {"label": "<b>two</b>"},
    },
    # In the monitor's view of the schedule, never in beat's (BEAT_SKIP): never run.
    "forgotten": {"task": "tests.beatapp.forgotten", "schedule": 1.0},
    # Due once a year (New Year, 00:00 UTC): beat runs it in none of our tests.
    "new-year": {
        "task": "tests.beatapp.forgotten",
        "schedule": crontab(minute=0, hour=0, day_of_month=1, month_of_year=1),
        "args": ("<script>alert(1)</script>",),
    },
}
if os.environ.get("BEAT_REDBEAT_PREFIX"):
    app.conf.update(
        redbeat_key_prefix=os.environ["BEAT_REDBEAT_PREFIX"],
        redbeat_redis_url=os.environ.get("BEAT_REDBEAT_URL", "redis://127.0.0.1:6379/0"),
    )

_skip = {name for name in os.environ.get("BEAT_SKIP", "").split(",") if name}
app.conf.beat_schedule = {name: spec for name, spec in _SCHEDULE.items() if name not in _skip}

if os.environ.get("TEST_HOOKS") == "1":
    import monitor.signals

    monitor.signals.connect(app)


@app.task
def tick(n, label=None):
    return n


@app.task
def forgotten(*args):
    return None
