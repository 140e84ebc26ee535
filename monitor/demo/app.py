"""The Celery app the demo's worker runs: a realistic mix of task kinds.

Configured from DEMO_BROKER_URL / DEMO_RESULT_BACKEND (set by ``monitor demo``),
with the monitor's hooks connected in one line, as a user would.
"""

from __future__ import annotations

import os
import random
import time

from celery import Celery

import monitor.signals

app = Celery("demo")
app.conf.update(
    broker_url=os.environ.get("DEMO_BROKER_URL", "redis://127.0.0.1:6379/0"),
    result_backend=os.environ.get("DEMO_RESULT_BACKEND", "redis://127.0.0.1:6379/0"),
    task_send_sent_event=True,
    worker_send_task_events=True,
    result_expires=3600,
    broker_connection_retry_on_startup=True,
)
monitor.signals.connect(app)


@app.task
def add(x, y):
    time.sleep(random.uniform(0.01, 0.2))
    return x + y


@app.task
def xsum(numbers):
    return sum(numbers)


@app.task
def resize_image(path, width=800, height=600):
    time.sleep(random.uniform(0.5, 3.0))
    return {"path": path, "size": [width, height]}


@app.task
def send_email(to, subject, password=None):
    time.sleep(random.uniform(0.05, 0.3))
    if random.random() < 0.15:
        raise ConnectionError(f"SMTP server refused {to!r}")
    return f"sent to {to}"


@app.task(bind=True, max_retries=3)
def sync_account(self, account_id):
    if random.random() < 0.5 and self.request.retries < 2:
        raise self.retry(countdown=1, exc=TimeoutError("upstream API timed out"))
    return {"account": account_id, "synced": True}


@app.task(bind=True)
def generate_report(self, rows=20):
    for i in range(1, rows + 1):
        self.update_state(state="PROGRESS", meta={"current": i, "total": rows})
        time.sleep(random.uniform(0.05, 0.25))
    return f"report with {rows} rows"
