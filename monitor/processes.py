"""Stopping a process we started, by its PID: the demo's and the tests' one way.

Everything the demo or a test starts runs in a session of its own and is
stopped through this: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess


def stop_process(
    proc: subprocess.Popen, grace: float = 15.0, *, term_group: bool = True, kill_group: bool = True
) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds.

    ``term_group``/``kill_group``: signal the process's whole group (a process
    started with ``start_new_session``) rather than the process alone. A Celery
    worker gets its SIGTERM alone (a warm shutdown: it stops its pool children
    itself, signalling them kills their tasks) and the SIGKILL as a group.
    """
    if proc.poll() is not None:
        return
    if not _signal(proc, signal.SIGTERM, term_group):
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        _signal(proc, signal.SIGKILL, kill_group)
        proc.wait(5)


def _signal(proc: subprocess.Popen, signum: int, group: bool) -> bool:
    """Signal the process (or its group); False when it is gone already."""
    try:
        if group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
    except ProcessLookupError:
        return False
    return True
