"""Thin handlers: one per Celery signal, each turning its kwargs into a record.

Every handler accepts ``**kwargs`` and is wrapped by :func:`never_raise`: a bug
or an odd message costs a log line, never an exception in Celery. Values are
passed through raw (the writer thread encodes and caps them), except where
``saferepr`` bounds the work of a repr of a large result.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import celery
from celery import states
from celery.utils.saferepr import saferepr

from ..model import KNOWN_STATES
from . import _active

logger = logging.getLogger(__name__)

_last_error_log = 0.0


def never_raise(handler: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        global _last_error_log
        try:
            if _active.recorder is not None:
                handler(*args, **kwargs)
        except Exception:
            # At most one traceback a minute: a broken hook must not flood logs.
            now = time.monotonic()
            if now - _last_error_log > 60:
                _last_error_log = now
                logger.exception("monitor: the %s hook failed (task unaffected)", handler.__name__)

    return wrapper


def _rec():  # the active recorder; never None inside a never_raise handler
    return _active.recorder


#: This process's pid, updated in forked children (one syscall less per task).
_pid = os.getpid()


def _update_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_update_pid)


#: Results whose plain repr is short and safe: saferepr's machinery costs more
#: than the whole rest of a hook for the common None / number / flag result.
_SCALARS = (type(None), bool, int, float)


def _repr(value: Any) -> str:
    if type(value) in _SCALARS and (type(value) is not int or -(10**18) < value < 10**18):
        return repr(value)
    return saferepr(value, _rec().settings.max_field_bytes)


def _plain(value: Any) -> Any:
    """eta/expires come as datetimes or ISO strings; store ISO text."""
    if value is None:
        return None
    iso = getattr(value, "isoformat", None)
    return iso() if iso else value


# -- producer ----------------------------------------------------------------
@never_raise
def before_task_publish(
    sender: str | None = None,
    body: Any = None,
    exchange: str | None = None,
    routing_key: str | None = None,
    headers: dict | None = None,
    declare: list | None = None,
    **kwargs: Any,
) -> None:
    headers = headers or {}
    if "task" in headers:  # protocol 2: body = (args, kwargs, embed)
        task_id = headers.get("id")
        args, kw = (
            (body[0], body[1]) if isinstance(body, list | tuple) and len(body) >= 2 else ((), {})
        )
        info = headers
        args_repr, kwargs_repr = headers.get("argsrepr"), headers.get("kwargsrepr")
        group_id = headers.get("group")
    else:  # protocol 1: everything in the body
        info = body if isinstance(body, dict) else {}
        task_id = info.get("id")
        args, kw = info.get("args", ()), info.get("kwargs", {})
        args_repr, kwargs_repr = None, None
        group_id = info.get("taskset")
    queue = None
    if declare:
        queue = getattr(declare[0], "name", None)
    _rec().task(
        task_id,
        states.PENDING,
        headers.get("origin"),
        name=info.get("task") or sender,
        # the real values (a faithful retry needs them), shallow-copied so a
        # caller mutating its list afterwards cannot change what we store
        args_json=list(args) if isinstance(args, list | tuple) else args,
        kwargs_json=dict(kw) if isinstance(kw, dict) else kw,
        args=args_repr,
        kwargs=kwargs_repr,
        queue=queue or routing_key,
        exchange=exchange,
        routing_key=routing_key,
        eta=_plain(info.get("eta")),
        expires=_plain(info.get("expires")),
        retries=info.get("retries"),
        root_id=info.get("root_id"),
        parent_id=info.get("parent_id"),
        group_id=group_id,
        client=headers.get("origin"),
    )


# -- worker parent (consumer) --------------------------------------------------
@never_raise
def task_received(request: Any = None, **kwargs: Any) -> None:
    info = request.request_dict or {}
    _rec().task(
        request.id,
        states.RECEIVED,
        request.hostname,
        name=request.name,
        args=request.argsrepr,
        kwargs=request.kwargsrepr,
        retries=info.get("retries"),
        eta=_plain(request.eta),
        expires=_plain(request.expires),
        root_id=request.root_id,
        parent_id=request.parent_id,
        group_id=info.get("group"),
        worker=request.hostname,
    )


@never_raise
def task_revoked(request: Any = None, terminated=None, signum=None, expired=None, **kw) -> None:
    _rec().task(
        request.id,
        states.REVOKED,
        request.hostname,
        terminated=bool(terminated),
        signum=int(signum) if signum is not None else None,
        expired=bool(expired),
        worker=request.hostname,
    )


def _message_task(message: Any) -> tuple[str | None, str | None]:
    headers = getattr(message, "headers", None) or {}
    return headers.get("id"), headers.get("task")


@never_raise
def task_rejected(message: Any = None, exc: Any = None, **kwargs: Any) -> None:
    task_id, name = _message_task(message)
    _rec().task(
        task_id, states.REJECTED, None, name=name, exception=_repr(exc) if exc is not None else None
    )


@never_raise
def task_unknown(
    name: str | None = None,
    id: str | None = None,
    message: Any = None,
    exc: Any = None,
    **kwargs: Any,
) -> None:
    task_id = id or _message_task(message)[0]
    _rec().task(
        task_id, states.REJECTED, None, name=name, exception=f"NotRegistered: unknown task {name!r}"
    )


# -- worker child (pool process) -------------------------------------------------
@never_raise
def task_prerun(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    request = task.request
    _rec().task_started(task_id)
    _rec().task(
        task_id,
        states.STARTED,
        request.hostname,
        pid=_pid,
        retries=request.retries,
        worker=request.hostname,
    )


@never_raise
def task_failure(
    sender: Any = None,
    task_id: str | None = None,
    exception: Any = None,
    einfo: Any = None,
    **kwargs: Any,
) -> None:
    # Also fired in the parent for a hard time limit (the child is gone).
    hostname = getattr(getattr(sender, "request", None), "hostname", None)
    _record_failure(task_id, hostname or _rec().worker_hostname, exception, einfo)


def _record_failure(task_id: str | None, hostname: str | None, exception: Any, einfo: Any) -> None:
    _rec().task(
        task_id,
        states.FAILURE,
        hostname,
        exception=_repr(exception),
        traceback=getattr(einfo, "traceback", None),
        runtime=_rec().runtime(task_id),
        worker=hostname,
    )


@never_raise
def task_retry(request: Any = None, reason: Any = None, einfo: Any = None, **kwargs: Any) -> None:
    _rec().task(
        request.id,
        states.RETRY,
        request.hostname,
        reason=_repr(reason),
        exception=_repr(getattr(reason, "exc", None) or reason),
        traceback=getattr(einfo, "traceback", None),
        retries=request.retries,
        runtime=_rec().runtime(request.id),
        worker=request.hostname,
    )


@never_raise
def task_postrun(
    task_id: str | None = None,
    task: Any = None,
    retval: Any = None,
    state: str | None = None,
    **kwargs: Any,
) -> None:
    # SUCCESS is recorded here rather than from task_success: one signal
    # dispatch less per task, and postrun's `state` is the only place a hook
    # sees Reject(requeue=False) and Ignore, which fire no signal of their own.
    # FAILURE and RETRY come from their own signals (they carry the traceback).
    if state == states.SUCCESS:
        detail = {"result": _repr(retval)}
    elif state in (states.REJECTED, states.IGNORED):
        detail = {"reason": _repr(retval)}
    else:
        _rec().forget(task_id)
        return
    hostname = task.request.hostname
    _rec().task(
        task_id, state, hostname, runtime=_rec().runtime(task_id), worker=hostname, **detail
    )


@never_raise
def task_internal_error(
    task_id: str | None = None,
    exception: Any = None,
    einfo: Any = None,
    request: Any = None,
    **kwargs: Any,
) -> None:
    _record_failure(task_id, getattr(request, "hostname", None), exception, einfo)


def record_update_state(task: Any, task_id: str | None, state: str | None, meta: Any) -> None:
    """Custom states from ``Task.update_state`` (PROGRESS ...): no signal exists."""
    if _active.recorder is None or not state or state in KNOWN_STATES:
        return
    try:
        hostname = task.request.hostname
        _rec().task(
            task_id or task.request.id,
            state,
            hostname,
            progress=meta if meta is not None else {},
            worker=hostname,
        )
    except Exception:
        logger.debug("monitor: could not record update_state", exc_info=True)


# -- worker lifecycle -----------------------------------------------------------
def _pool_name(consumer: Any) -> str | None:
    pool = getattr(consumer, "pool", None)
    if pool is None:
        return None
    module = type(pool).__module__.rsplit(".", 1)[-1]
    return {"prefork": "prefork", "solo": "solo", "thread": "threads"}.get(module, module)


@never_raise
def worker_ready(sender: Any = None, **kwargs: Any) -> None:
    consumer = sender
    pool = getattr(consumer, "pool", None)
    concurrency = getattr(pool, "num_processes", None) or getattr(pool, "limit", None)
    _rec().worker_hostname = consumer.hostname
    queues = []
    task_consumer = getattr(consumer, "task_consumer", None)
    if task_consumer is not None:
        queues = [q.name for q in task_consumer.queues]
    _rec().worker(
        consumer.hostname,
        "online",
        pid=os.getpid(),
        pool=_pool_name(consumer),
        concurrency=concurrency,
        queues=queues,
        sw_ident="py-celery",
        sw_ver=celery.__version__,
        sw_sys=platform.system(),
    )


@never_raise
def heartbeat_sent(sender: Any = None, **kwargs: Any) -> None:
    from celery.worker import state as worker_state

    hostname = getattr(getattr(sender, "eventer", None), "hostname", None)
    _rec().worker(
        hostname,
        "heartbeat",
        freq=getattr(sender, "interval", None),
        active=len(worker_state.active_requests),
        processed=sum(worker_state.total_count.values()),
        loadavg=[round(x, 2) for x in os.getloadavg()],
        pid=os.getpid(),
    )


@never_raise
def worker_shutdown(sender: Any = None, **kwargs: Any) -> None:
    _rec().worker(getattr(sender, "hostname", None), "offline")
    _rec().flush(2.0)


@never_raise
def worker_process_shutdown(**kwargs: Any) -> None:
    _rec().flush(1.0)


#: signal name -> handler, connected by monitor.signals.connect().
HANDLERS: dict[str, Callable[..., None]] = {
    "before_task_publish": before_task_publish,
    "task_received": task_received,
    "task_prerun": task_prerun,
    "task_postrun": task_postrun,
    "task_failure": task_failure,
    "task_retry": task_retry,
    "task_revoked": task_revoked,
    "task_rejected": task_rejected,
    "task_unknown": task_unknown,
    "task_internal_error": task_internal_error,
    "worker_ready": worker_ready,
    "heartbeat_sent": heartbeat_sent,
    "worker_shutdown": worker_shutdown,
    "worker_process_shutdown": worker_process_shutdown,
}
