"""`python -m monitor demo`, the README's first command, as a real process."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest
import requests

from .helpers import free_port, start_module, wait_for

pytestmark = pytest.mark.slow


def test_demo_runs_everything_and_stops_cleanly(redis_url):
    port = free_port()
    proc = start_module(
        "monitor",
        *("demo", "--port", str(port), "--rate", "10", "--embedded-redis"),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def stats():
            try:
                return requests.get(f"http://127.0.0.1:{port}/api/v1/stats", timeout=2).json()
            except (requests.RequestException, ValueError):
                return None

        # the embedded Redis, the worker and the traffic produce finished tasks
        body = wait_for(lambda: (s := stats()) and s["counts"]["SUCCESS"] >= 5 and s, 90, 0.5)
        assert body["workers"]["online"] == 1
        page = requests.get(f"http://127.0.0.1:{port}/tasks", timeout=5)
        assert page.status_code == 200 and "celery monitor" in page.text
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "celery monitor demo: open http://127.0.0.1:" in output
    assert "started an embedded redis-server" in output
    assert "stopping the worker and everything it started" in output
    # The embedded Redis, the worker and the producer were separate processes,
    # and every one of them is gone (the worker's pool children with it).
    started = re.findall(
        r"started (?:an embedded redis-server|a Celery worker|the demo's producer) \(pid (\d+)\)",
        output,
    )
    assert len(started) == 3, output
    for pid in map(int, started):
        assert not _alive(pid), f"pid {pid} outlived the demo"
    # Nothing may break while stopping. The demo's failing tasks may still log
    # their (expected) tracebacks as the worker finishes what it runs: those
    # pass through the demo task's own code; any other traceback is a bug.
    after_stop = output.split("stopping the worker")[1]
    tracebacks = after_stop.split("Traceback (most recent call last):")[1:]
    unexpected = [t for t in tracebacks if "monitor/demo_app.py" not in _frames(t)]
    assert not unexpected, after_stop


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _frames(traceback_text: str) -> str:
    """The indented frame lines of one printed traceback (up to its exception line)."""
    lines = []
    for line in traceback_text.splitlines()[1:]:
        if not line.startswith(" "):
            break
        lines.append(line)
    return "\n".join(lines)
