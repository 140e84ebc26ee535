"""Elected jobs (monitor.jobs, monitor.lease) on a real Redis.

One process of a cluster runs each job: the lease is token-checked, a stopped
holder hands over at once, a failing job costs its own run only, and an
embedded dashboard runs the jobs only when asked (``run_jobs=True``).
"""

from __future__ import annotations

import time

from flask import Flask

from monitor.jobs import Job, JobRunner
from monitor.lease import Lease
from monitor.web import init_app
from tests.helpers import wait_for


def test_only_one_runner_runs_a_job_and_a_stopped_holder_hands_over(store, settings):
    ran: list[str] = []
    first = JobRunner(store, settings, [Job("probe", 0.05, lambda _ctx: ran.append("first"))])
    second = JobRunner(store, settings, [Job("probe", 0.05, lambda _ctx: ran.append("second"))])
    for _ in range(6):
        now = time.monotonic() + 1000 * len(ran)  # every pass is due
        first.run_due(now)
        second.run_due(now)
    assert ran == ["first"] * 6
    assert first.holds("probe") and not second.holds("probe")
    first.stop()  # releases the lease: no waiting for its TTL
    second.run_due(time.monotonic() + 10_000)
    assert ran[-1] == "second"
    # A stopped runner never takes a lease back.
    first.run_due(time.monotonic() + 20_000)
    assert ran.count("first") == 6


def test_a_failing_job_costs_its_own_run_only(store, settings):
    ran: list[str] = []

    def broken(_ctx):
        raise RuntimeError("bug in a job")

    runner = JobRunner(
        store, settings, [Job("broken", 0.05, broken), Job("fine", 0.05, lambda c: ran.append(1))]
    )
    assert runner.run_due(time.monotonic()) == ["fine"]
    assert runner.errors["broken"] == 1 and runner.runs["fine"] == 1
    assert runner.run_due(time.monotonic() + 1000) == ["fine"]
    assert runner.errors["broken"] == 2


def test_job_state_is_kept_between_runs(store, settings):
    def count(ctx):
        ctx.state["n"] = ctx.state.get("n", 0) + 1

    runner = JobRunner(store, settings, [Job("counter", 0.05, count)])
    for i in range(3):
        runner.run_due(time.monotonic() + 1000 * i)
    assert runner._contexts["counter"].state["n"] == 3


def test_the_lease_is_extended_only_by_its_holder(store):
    key = store.keys.lease("extend")
    mine = Lease(store.redis, key, ttl_ms=300)
    theirs = Lease(store.redis, key, ttl_ms=300)
    assert mine.claim() and not theirs.claim()
    assert store.redis.pttl(key) > 0
    # Once mine expired and theirs took over, mine can no longer extend it.
    store.redis.delete(key)
    assert theirs.claim()
    assert not mine.claim(take=False) and not mine.claim()
    assert theirs.holder() == theirs.token
    assert not mine.release() and theirs.release()
    assert store.redis.get(key) is None


def test_runner_loop_goes_on_after_redis_comes_back(settings):
    from monitor.redis_server import RedisServer
    from monitor.store import Store

    server = RedisServer().start()
    private = settings.replace(redis_url=server.url)
    runner = JobRunner(Store.from_settings(private), private, [Job("tick", 0.05, lambda c: None)])
    try:
        runner.start()
        wait_for(lambda: runner.runs["tick"] >= 2, timeout=10, what="the loop ran the job")
        server.kill()  # the loop logs, backs off, and must not die
        time.sleep(0.5)
        stalled = runner.runs["tick"]
        server.start()  # same port
        wait_for(lambda: runner.runs["tick"] > stalled + 2, timeout=30, what="runs resumed")
    finally:
        runner.stop()
        server.stop()


def test_embedded_dashboard_runs_jobs_only_when_asked(settings, store):
    quiet = init_app(Flask("quiet"), settings=settings)
    busy = init_app(Flask("busy"), settings=settings, run_jobs=True)
    for app in (quiet, busy):
        ext = app.extensions["monitor"]
        names = [job.name for job in ext.jobs.jobs]
        assert "queues" in names and "alerts" in names
    busy_ext = busy.extensions["monitor"]
    quiet_ext = quiet.extensions["monitor"]
    assert busy_ext.jobs in busy_ext.hub.companions
    # the jobs ask the workers through the app's inspector: one cache for pages and jobs
    assert busy_ext.jobs._contexts["queues"].inspector is busy_ext.inspector
    assert quiet_ext.jobs not in quiet_ext.hub.companions
    client = busy_ext.socketio.test_client(busy, flask_test_client=busy.test_client())
    try:
        assert client.is_connected()
        wait_for(lambda: busy_ext.jobs.runs["queues"] >= 1, timeout=15, what="the sampler ran")
        assert store.redis.exists(store.keys.lease("queues"))
    finally:
        client.disconnect()
        busy_ext.hub.stop()
    assert quiet_ext.jobs.runs["queues"] == 0
