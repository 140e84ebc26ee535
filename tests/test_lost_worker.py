"""Lost tasks and the Redis broker's redeliveries with a real prefork worker.

One worker for the module (``acks_late`` without ``task_reject_on_worker_lost``,
a Redis broker of its own with ``visibility_timeout: 2``, a 1 s heartbeat). In
order: its conf is flagged as a risk; its time limits are recorded; an ETA task
further away than the visibility timeout is flagged; then it is SIGKILLed (its
whole process group) mid-task: once offline by Celery's rule, its tasks are in
``flag=lost``, and the message of its running task, left in ``unacked``, is shown
as "will be redelivered" once older than the visibility timeout.
"""

from __future__ import annotations

import os
import signal
import uuid

import pytest
from celery import Celery

from monitor import lost
from monitor.web.queries import TaskQuery

from .helpers import RedisServer, WorkerProcess, wait_for

T = "tests.workerapp."
VISIBILITY = 2


@pytest.fixture(scope="module")
def cluster():
    from monitor.config import Settings
    from monitor.store import Store, redis_client
    from monitor.web import create_app

    from .helpers import REDIS_URL, require_service

    require_service("127.0.0.1", 6379, "Redis")
    prefix = "mt-" + uuid.uuid4().hex[:10]
    settings = Settings(redis_url=REDIS_URL, prefix=prefix, worker_grace=1.0)
    broker = RedisServer().start()
    queue = f"lost-{uuid.uuid4().hex[:6]}"
    hostname = f"doomed@{queue}"
    worker = WorkerProcess(
        broker=broker.url,
        queue=queue,
        prefix=prefix,
        hostname=hostname,
        extra_env={
            "TEST_RESULT_BACKEND": broker.url,
            "TEST_ACKS_LATE": "1",
            "TEST_VISIBILITY_TIMEOUT": str(VISIBILITY),
        },
        extra_args=("--heartbeat-interval", "1"),
    )
    producer = Celery("producer", broker=broker.url, set_as_current=False)
    producer.conf.task_default_queue = queue
    store = Store(redis_client(REDIS_URL), settings)
    flask_app = create_app(settings, message_queue=None, celery_app=producer)
    try:
        worker.start()
        yield {
            "worker": worker,
            "hostname": hostname,
            "producer": producer,
            "store": store,
            "client": flask_app.test_client(),
        }
    finally:
        worker.stop()
        producer.close()
        broker.stop()
        store.delete_all()
        store.close()


def risks(client, refresh: bool = False) -> dict:
    response = client.get("/api/v1/risks" + ("?refresh=1" if refresh else ""))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def state_of(store, task_id: str) -> str | None:
    task = store.get_task(task_id)
    return task["state"] if task else None


def test_acks_late_risk_and_visibility_timeout_come_from_the_real_workers_conf(cluster):
    client, hostname = cluster["client"], cluster["hostname"]
    report = wait_for(
        lambda: (r := risks(client, refresh=True)) and hostname in r["workers_asked"] and r,
        20,
        0.5,
        what="the worker's conf reply",
    )
    (risk,) = [r for r in report["risks"] if r["where"].startswith("worker ")]
    assert risk["kind"] == "acks_late" and risk["where"] == f"worker {hostname}"
    assert "task_reject_on_worker_lost" in risk["message"]
    assert report["broker"]["transport"] == "redis"
    assert report["broker"]["visibility_timeout"] == VISIBILITY
    assert report["broker"]["visibility_timeout_source"] == f"worker {hostname} conf"
    assert client.get("/api/v1/risks?refresh=yes").status_code == 400


def test_the_time_limits_the_worker_applies_are_recorded(cluster):
    producer, store = cluster["producer"], cluster["store"]
    limited = producer.send_task(T + "add", (1, 2), time_limit=30, soft_time_limit=20).id
    plain = producer.send_task(T + "add", (3, 4)).id
    wait_for(
        lambda: state_of(store, limited) == "SUCCESS" and state_of(store, plain) == "SUCCESS",
        30,
        0.1,
        what="both tasks done",
    )
    task = store.get_task(limited)
    assert float(task["time_limit"]) == 30 and float(task["soft_time_limit"]) == 20
    assert "time_limit" not in store.get_task(plain)


def test_eta_beyond_the_visibility_timeout_is_flagged(cluster):
    producer, store, client = cluster["producer"], cluster["store"], cluster["client"]
    far = producer.send_task(T + "add", (5, 6), countdown=120).id
    wait_for(lambda: state_of(store, far) == "RECEIVED", 30, 0.1, what="the ETA task received")

    def flagged():
        report = risks(client)
        return [e for e in report["eta_beyond_visibility"] if e["task_id"] == far]

    (entry,) = wait_for(flagged, 15, 0.5, what="the ETA task flagged")
    assert entry["eta"] - entry["delivered"] > VISIBILITY
    cluster["eta_task"] = far


def test_a_sigkilled_worker_s_tasks_are_lost_and_its_unacked_message_will_be_redelivered(
    cluster,
):
    producer, store, client = cluster["producer"], cluster["store"], cluster["client"]
    worker, hostname = cluster["worker"], cluster["hostname"]
    running = producer.send_task(T + "sleep", (120,)).id

    def started_and_beating():
        task = store.get_task(running)
        worker_info = store.worker(hostname)
        return task and task["state"] == "STARTED" and worker_info and worker_info["online"]

    wait_for(started_and_beating, 30, 0.1, what="the task running on a live worker")
    assert running not in [r["id"] for r in lost.flagged_page(store, TaskQuery(), "lost")["tasks"]]

    os.killpg(worker.proc.pid, signal.SIGKILL)  # the parent and its pool children
    worker.proc.wait(5)

    def lost_ids():
        return {r["id"] for r in lost.flagged_page(store, TaskQuery(), "lost")["tasks"]}

    found = wait_for(lambda: running in lost_ids() and lost_ids(), 30, 0.2, what="lost")
    assert cluster.get("eta_task") in found  # RECEIVED on it, waiting for its ETA: lost too
    assert store.worker(hostname)["online"] is False
    assert state_of(store, running) == "STARTED"  # a flag, not a state

    # acks_late: the message is still in the broker's unacked hash; past the
    # visibility timeout, the next consumer's restore_visible will redeliver it.
    def redelivered():
        report = risks(client)
        return [e for e in report["redelivery"] if e["task_id"] == running]

    (entry,) = wait_for(redelivered, 20, 0.5, what="the unacked message overdue")
    assert entry["name"] == T + "sleep"
    assert entry["overdue"] > 0 and entry["age"] > VISIBILITY
    report = risks(client)
    assert report["unacked"]["count"] >= 1
    assert lost.task_broker_flags(report, running)["redelivery"]["task_id"] == running
    # the task list says so too, through the API
    rows = {r["id"]: r for r in client.get("/api/v1/tasks?flag=lost").get_json()["tasks"]}
    assert rows[running]["lost"] is True and rows[running]["redelivery"] is True
    assert client.get(f"/api/v1/tasks/{running}").get_json()["broker"]["redelivery"]
