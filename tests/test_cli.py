"""The command line: help, errors that name the setting, `celery -A proj monitor`."""

from __future__ import annotations

import subprocess
import sys

from .helpers import ROOT, clean_env, free_port, http_get, start_module, stop_process, wait_for


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args],
        cwd=ROOT,
        env=clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_lists_the_commands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("events", "serve", "demo"):
        assert command in result.stdout
    assert "--no-events" in run("serve", "--help").stdout


def test_bad_values_exit_2_naming_the_setting():
    result = run("events", env={"MONITOR_MAX_AGE": "forever"})
    assert result.returncode == 2 and "--max-age" in result.stderr
    result = run("events", "--redis", "http://nope")
    assert result.returncode == 2 and "MONITOR_REDIS_URL" in result.stderr
    result = run("serve", "--no-events", env={"MONITOR_STREAM_MAXLEN": "-3"})
    assert result.returncode == 2 and "MONITOR_STREAM_MAXLEN" in result.stderr
    result = run("events", "-A", "no.such.module:app")
    assert result.returncode == 2 and "cannot load Celery app" in result.stderr


def test_celery_sub_command_serves_the_app(settings, redis_url):
    port = free_port()
    proc = start_module(
        "celery",
        *("-A", "tests.workerapp", "monitor", "--port", str(port), "--no-events"),
        *("--redis", redis_url, "--prefix", settings.prefix),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        workers = lambda: http_get(f"http://127.0.0.1:{port}/api/v1/workers")  # noqa: E731
        assert wait_for(workers, 30, 0.2).json() == {"workers": []}
    finally:
        stop_process(proc)
    assert proc.returncode == 0
