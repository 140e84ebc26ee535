"""Celery signal hooks: ``monitor.signals.connect(celery_app)``, one line.

Importing this package connects nothing; :func:`connect` does. The handlers
(``handlers.py``) fire in the producer (PENDING at publish time), the worker
parent (received, revoked, rejected, worker online/heartbeat/offline) and the
prefork children (started, success, failure, retry, custom states); each
process writes its own records through a buffered, non-blocking writer, so the
hooks scale with the fleet and never slow a task.

This package never imports Flask.
"""

from __future__ import annotations

import atexit
import logging
from typing import Any

from celery import Celery, signals

from ..config import Settings
from . import _active, handlers
from .recorder import Recorder

logger = logging.getLogger(__name__)

__all__ = ["connect", "disconnect", "Recorder"]

_atexit_registered = False


def connect(app: Celery | None = None, **overrides: Any) -> Recorder:
    """Record every task this process publishes or runs.

    Settings come from ``MONITOR_*`` variables, then ``overrides``
    (``redis_url=``, ``prefix=`` ...). Signals are process-wide in Celery, so the
    hooks see every app of the process; ``app`` additionally gets its
    ``Task.update_state`` wrapped so custom states (PROGRESS) are recorded.
    Calling it again replaces the settings; it never connects a handler twice.
    """
    global _atexit_registered
    settings = Settings.from_env(**overrides)
    current = _active.recorder
    if current is None or current.settings != settings:
        if current is not None:
            current.close(timeout=1.0)
        _active.recorder = Recorder(settings)
    for name, handler in handlers.HANDLERS.items():
        getattr(signals, name).connect(handler, weak=False, dispatch_uid=f"monitor.{name}")
    if app is not None:
        _wrap_update_state(app)
    if not _atexit_registered:
        atexit.register(_flush_at_exit)
        _atexit_registered = True
    return _active.recorder


def disconnect() -> None:
    """Undo :func:`connect`: disconnect the handlers, flush and stop the writer."""
    for name, handler in handlers.HANDLERS.items():
        getattr(signals, name).disconnect(handler, dispatch_uid=f"monitor.{name}")
    recorder, _active.recorder = _active.recorder, None
    if recorder is not None:
        recorder.close(timeout=2.0)


def _flush_at_exit() -> None:
    recorder = _active.recorder
    if recorder is not None:
        recorder.flush(timeout=2.0)


def _wrap_update_state(app: Celery) -> None:
    task_cls = app.Task  # this app's own base class: other apps are untouched
    original = task_cls.update_state
    if getattr(original, "_monitor_wrapped", False):
        return

    def update_state(self, task_id=None, state=None, meta=None, **kwargs):
        result = original(self, task_id, state, meta, **kwargs)
        handlers.record_update_state(self, task_id, state, meta)
        return result

    update_state._monitor_wrapped = True  # type: ignore[attr-defined]
    update_state.__doc__ = original.__doc__
    task_cls.update_state = update_state
