"""``monitor serve`` as a real process: answers HTTP, survives its Redis going away,
and never unpickles what its Socket.IO message queue (the store's Redis) carries."""

from __future__ import annotations

import json
import pickle
import subprocess
import time
import tomllib
from importlib.metadata import version

import socketio
from packaging.requirements import Requirement

from monitor.config import Settings
from monitor.model import TaskEvent
from monitor.store import Store, redis_client

from .helpers import ROOT, RedisServer, free_port, http_get, start_serve, stop_process, wait_for


def _serve(redis_url: str, prefix: str, port: int) -> subprocess.Popen:
    return start_serve(
        redis_url, prefix, port, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _get(port: int, path: str):
    return http_get(f"http://127.0.0.1:{port}{path}", timeout=3)


def test_serve_answers_workers_and_stops_cleanly(settings, store):
    port = free_port()
    proc = _serve(settings.redis_url, settings.prefix, port)
    try:
        response = wait_for(lambda: _get(port, "/api/v1/workers"), 30, 0.1, "serve")
        assert response.status_code == 200 and response.json() == {"workers": []}
        assert _get(port, "/api/openapi.json").json()["openapi"].startswith("3.")
    finally:
        stop_process(proc)
    assert proc.returncode == 0, proc.stderr.read()


def test_serve_survives_redis_restart_and_reports_status(redis_url):
    server = RedisServer().start()
    port = free_port()
    prefix = "serve-outage"
    proc = _serve(server.url, prefix, port)
    client = socketio.Client(reconnection=True, reconnection_delay=0.2)
    statuses: list[dict] = []
    tasks: list[dict] = []
    client.on("status", statuses.append)
    client.on("task", tasks.append)
    try:
        wait_for(lambda: _get(port, "/api/v1/workers"), 30, 0.1, "serve")
        client.connect(f"http://127.0.0.1:{port}", transports=["polling"], wait_timeout=10)
        wait_for(lambda: statuses and statuses[-1]["redis"] is True, 15, what="redis up")

        server.kill()
        wait_for(lambda: statuses[-1]["redis"] is False, 30, what="status redis false")
        down = _get(port, "/api/v1/workers")
        assert down is not None and down.status_code == 503 and "error" in down.json()
        assert proc.poll() is None

        server = RedisServer(server.port).start()
        wait_for(lambda: statuses[-1]["redis"] is True, 40, what="status redis true again")
        ok = wait_for(lambda: (r := _get(port, "/api/v1/workers")) is not None and r.ok, 20)
        assert ok
        # Live updates flow again after the restart.
        assert client.call("subscribe", {"room": "task", "id": "after"}, timeout=10)["ok"]
        settings = Settings(redis_url=server.url, prefix=prefix)
        store = Store(redis_client(server.url), settings)
        store.apply([TaskEvent("after", "SUCCESS", time.time(), "signal", "w", {"name": "x"})])
        wait_for(lambda: any(m["task"]["id"] == "after" for m in tasks), 20, what="a delta")
        store.close()
    finally:
        client.disconnect()
        stop_process(proc)
        server.stop()


class _CreatesFileWhenUnpickled:
    """Unpickling this calls ``open(path, "w")``: the file appears if anyone unpickles it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_python_socketio_floor_is_declared_and_installed():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = [Requirement(d) for d in dependencies if Requirement(d).name == "python-socketio"]
    assert len(floors) == 1 and not floors[0].specifier.contains("5.13.9")
    assert floors[0].specifier.contains(version("python-socketio"))


def test_message_queue_payloads_are_never_unpickled(settings, store, tmp_path):
    """Anyone who can write to the store's Redis (every worker running the hooks)
    can publish on the Socket.IO channel: a pickle there must stay bytes."""
    port = free_port()
    proc = _serve(settings.redis_url, settings.prefix, port)
    client = socketio.Client()
    probes: list = []
    client.on("probe", probes.append)
    marker = tmp_path / "unpickled"
    try:
        wait_for(lambda: _get(port, "/api/v1/workers"), 30, 0.1, "serve")
        client.connect(f"http://127.0.0.1:{port}", transports=["polling"], wait_timeout=10)
        # The serve process listens on one channel of its prefix (its message queue).
        channels = wait_for(lambda: store.redis.pubsub_channels(f"{settings.prefix}*"), 10)
        assert len(channels) == 1
        payload = pickle.dumps(_CreatesFileWhenUnpickled(str(marker)))
        assert store.redis.publish(channels[0], payload) >= 1  # someone received it
        # Then a well-formed message: one channel is read in order, so once this
        # one is delivered to the client, the pickle before it has been handled.
        after = {
            "method": "emit",
            "event": "probe",
            "data": ["after"],
            "namespace": "/",
            "room": None,
            "skip_sid": None,
            "callback": None,
            "host_id": "another-host",
        }
        assert store.redis.publish(channels[0], json.dumps(after)) >= 1
        wait_for(lambda: probes, 15, what="the message after the pickle")
        assert not marker.exists(), "the message queue unpickled a payload"
        response = _get(port, "/api/v1/workers")
        assert response is not None and response.ok
    finally:
        client.disconnect()
        stop_process(proc)
    assert proc.returncode == 0, proc.stderr.read()
