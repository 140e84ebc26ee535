"""Thin handlers: one per Celery signal, each turning its kwargs into a record.

Every handler accepts ``**kwargs`` and is wrapped by :func:`never_raise`: a bug
or an odd message costs a log line, never an exception in Celery. Values are
passed through raw (the writer thread encodes and caps them), except where
``saferepr`` bounds the work of a repr of a large result, and except the
message body the publish hook keeps for a faithful retry (:func:`publish_body`):
it is encoded at once, as the app's serializer will encode it a moment later,
so that what is stored is what was sent even if the caller mutates its
arguments afterwards.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import platform
import re
import time
from collections.abc import Callable
from typing import Any

import celery
from celery import states
from celery._state import _get_active_apps, get_current_app
from celery.utils.saferepr import saferepr
from kombu.serialization import dumps as kombu_dumps
from kombu.serialization import registry as serializer_registry
from kombu.utils.json import dumps as tagged_json

from ..model import (
    brief,
    redact_args_repr,
    redact_positional,
    sensitive,
    sensitive_positions,
)
from ..vocabulary import KNOWN_STATES
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


# -- producer: what a faithful retry needs -----------------------------------------
#: Protocol 2 headers a retry writes afresh (the new message's id, links,
#: attempt count, schedule and display), so the hook does not keep them.
REGENERATED_HEADERS = frozenset(
    {
        "lang",
        "task",
        "id",
        "root_id",
        "parent_id",
        "group",
        "group_index",
        "retries",
        "eta",
        "expires",
        "argsrepr",
        "kwargsrepr",
        "origin",
    }
)
#: Headers Celery always sends, at these values unless the call changed them:
#: only a changed one (a per-call time limit, a shadow name, stamps) is kept.
_HEADER_DEFAULTS: dict[str, Any] = {
    "shadow": None,
    "timelimit": [None, None],
    "ignore_result": False,
    "replaced_task_nesting": 0,
    "stamped_headers": None,
    "stamps": {},
}
_MISSING = object()
#: A JSON object key (a string followed by a colon), for the redaction check.
_JSON_KEY = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:')
#: (app, task name) -> (serializer, positions of the positional parameters
#: whose name is redacted, the redact names it was computed for).
#: Bounded: a producer may send_task() any name.
_task_info: dict[tuple[Any, str], tuple[str, tuple[int, ...], tuple[str, ...]]] = {}
_TASK_INFO_MAX = 1024


def _task_info_for(name: str | None, redact: tuple[str, ...]) -> tuple[str, tuple[int, ...]]:
    """How this process's app publishes task ``name``: its serializer (the task's
    own, else the app's ``task_serializer``) and where secrets sit in its args
    (:func:`~monitor.model.sensitive_positions`; none for a task this process
    does not know, such as a ``send_task`` by name).

    A per-call ``apply_async(serializer=...)`` is not visible to the signal; a
    task's own ``serializer=`` and the app's setting are.
    """
    app = get_current_app()
    key = (app, name or "")
    info = _task_info.get(key)
    if info is not None and info[2] is redact:
        return info[0], info[1]
    # The registries as they are, without finalizing an app (send_task by
    # name never finalizes, and a producer may not want it to): the current
    # app's first, then the process's other apps (signals are process-wide).
    task = None
    if name:
        task = app._tasks.get(name)
        for other in () if task is not None else list(_get_active_apps()):
            task = other._tasks.get(name)
            if task is not None:
                break
    serializer = getattr(task, "serializer", None) or app.conf.task_serializer
    if task is not None:
        positions = sensitive_positions(task.run, redact)
    else:  # a send_task by name of a task defined but not yet registered
        positions = _pending_positions(app, name, redact) if name and redact else ()
    if len(_task_info) >= _TASK_INFO_MAX:
        _task_info.clear()
    _task_info[key] = (serializer, positions, redact)
    return serializer, positions


def _pending_positions(app: Any, name: str, redact: tuple[str, ...]) -> tuple[int, ...]:
    """Secret positions of a task still pending in an app that was never
    finalized: ``@app.task`` keeps a promise until the app is finalized or the
    task used, and a producer calling ``send_task("proj.login", ...)`` does
    neither. Its function and options are read off the promise (Celery's
    ``PromiseProxy``), without evaluating it."""
    from celery.utils.imports import gen_task_name

    for candidate in (app, *(a for a in list(_get_active_apps()) if a is not app)):
        for promise in list(getattr(candidate, "_pending", ())):
            try:
                if promise.__evaluated__():
                    continue
                (fun,) = object.__getattribute__(promise, "_Proxy__args")
                options = object.__getattribute__(promise, "_Proxy__kwargs")
                found = options.get("name") or gen_task_name(
                    candidate, fun.__name__, fun.__module__
                )
            except Exception:  # noqa: BLE001 - another kind of promise: not ours to read
                continue
            if found == name:
                positions = sensitive_positions(fun, redact)
                if options.get("bind"):  # run() is bound: its first parameter is the task
                    positions = tuple(i - 1 for i in positions if i > 0)
                return positions
    return ()


def _extra_headers(headers: dict) -> str | None:
    """The headers a retry must send again, as tagged JSON text, or None."""
    extra = None
    for key in headers.keys() - REGENERATED_HEADERS:  # a set operation, in C
        value = headers[key]
        if value is None:
            continue
        default = _HEADER_DEFAULTS.get(key, _MISSING)
        if default is not _MISSING and (
            value == default or (type(value) is tuple and list(value) == default)
        ):
            continue
        if extra is None:
            extra = {}
        extra[key] = value
    return None if extra is None else tagged_json(extra)


def _holds_secret(payload: str | bytes, json_body: bool, redact: tuple[str, ...]) -> str | None:
    """The redacted name a body seems to hold (as a key, or anywhere in a
    non-JSON body: erring on the side of not storing), or None."""
    if isinstance(payload, str):
        lowered = payload.lower()
        hits = [name for name in redact if name in lowered]
        if hits and json_body:  # a value mentioning "token" is not a secret
            keys = _JSON_KEY.findall(payload)
            # the store's rule (monitor.model.sensitive): a key containing the name
            hits = [name for name in hits if any(sensitive(key, (name,)) for key in keys)]
    else:
        lowered_bytes = payload.lower()
        hits = [name for name in redact if name.encode() in lowered_bytes]
    return hits[0] if hits else None


def publish_body(
    sender: str | None,
    body: Any,
    headers: dict,
    properties: dict | None,
    settings: Any,
    task_info: tuple[str, tuple[int, ...]] | None = None,
) -> dict[str, Any]:
    """The fields a republish of this (protocol 2) message needs.

    ``body``: the message body as the serializer encodes it (base64 text when
    its content encoding is ``binary``), with ``content_type`` and
    ``content_encoding``; ``publish_headers``: the headers a retry sends again;
    ``priority``. When the body cannot be kept, ``body_truncated`` (its size
    in bytes, over ``max_field_bytes``) or ``body_error`` (why) instead: the
    retry refuses such a task, saying so, rather than guess. ``task_info``:
    :func:`_task_info_for` of ``sender``, when the caller has it already.
    """
    fields: dict[str, Any] = {}
    if properties and properties.get("priority") is not None:
        fields["priority"] = properties["priority"]
    redact = settings.redact
    serializer, secret_positions = task_info or _task_info_for(sender, redact)
    args = body[0]
    if secret_positions and (type(args) not in (list, tuple) or len(args) > secret_positions[0]):
        fields["body_error"] = "a positional argument is a redacted parameter: not stored"
        return fields
    try:
        encoder = serializer_registry._encoders.get(serializer)
        if encoder is not None:  # kombu's dumps() without its per-call wrapping
            content_type, encoding, payload = encoder[0], encoder[1], encoder[2](body)
        else:  # raises SerializerNotInstalled, or encodes "raw"
            content_type, encoding, payload = kombu_dumps(body, serializer=serializer)
    except Exception as exc:  # noqa: BLE001 - the app's own serializer will say the same
        fields["body_error"] = f"the {serializer} serializer cannot encode it: {brief(exc)}"
        return fields
    binary = isinstance(payload, bytes)
    if binary and encoding != "binary":
        try:
            payload, binary = payload.decode(encoding), False
        except (LookupError, UnicodeError):
            encoding = "binary"
    cap = settings.max_field_bytes
    if binary:
        size = len(payload)
        stored = 4 * ((size + 2) // 3)  # base64 grows it by a third
    elif len(payload) <= cap // 4:  # cannot exceed cap bytes in UTF-8: no encode
        size = stored = 0
    else:
        size = stored = len(payload.encode("utf-8", "surrogatepass"))
    if stored > cap:
        # Never half a body: a cut message cannot be republished.
        fields["body_truncated"] = size
        return fields
    secret = redact and _holds_secret(payload, content_type == "application/json", redact)
    if secret:
        fields["body_error"] = f"it holds a redacted name ({secret}): not stored"
        return fields
    try:
        extra = _extra_headers(headers)
    except Exception as exc:  # noqa: BLE001 - a header tagged JSON cannot carry
        fields["body_error"] = f"a header cannot be encoded: {brief(exc)}"
        return fields
    secret = extra is not None and redact and _holds_secret(extra, True, redact)
    if secret:
        fields["body_error"] = f"a header holds a redacted name ({secret}): not stored"
        return fields
    fields["body"] = base64.b64encode(payload).decode("ascii") if binary else payload
    fields["content_type"] = content_type
    fields["content_encoding"] = encoding
    if extra is not None:
        fields["publish_headers"] = extra
    return fields


# -- producer ----------------------------------------------------------------
@never_raise
def before_task_publish(
    sender: str | None = None,
    body: Any = None,
    exchange: str | None = None,
    routing_key: str | None = None,
    headers: dict | None = None,
    declare: list | None = None,
    properties: dict | None = None,
    **kwargs: Any,
) -> None:
    headers = headers or {}
    settings = _rec().settings
    task_info = _task_info_for(sender, settings.redact)
    if "task" in headers:  # protocol 2: body = (args, kwargs, embed)
        task_id = headers.get("id")
        if isinstance(body, list | tuple) and len(body) >= 2:
            args, kw = body[0], body[1]
            retry = publish_body(sender, body, headers, properties, settings, task_info)
        else:
            args, kw = (), {}
            retry = {"body_error": "not a protocol 2 body (args, kwargs, embed)"}
        info = headers
        args_repr, kwargs_repr = headers.get("argsrepr"), headers.get("kwargsrepr")
        group_id = headers.get("group")
    else:  # protocol 1: everything in the body
        info = body if isinstance(body, dict) else {}
        task_id = info.get("id")
        args, kw = info.get("args", ()), info.get("kwargs", {})
        args_repr, kwargs_repr = None, None
        group_id = info.get("taskset")
        # its id is inside the body: a retry would have to decode and re-encode it
        retry = {"body_error": "sent with message protocol 1 (task_protocol=1)"}
    positions = task_info[1]
    if positions:  # def login(user, password): ("bob", "***") in both forms
        args = redact_positional(args, positions)
        args_repr = redact_args_repr(args_repr, positions)
    queue = None
    if declare:
        queue = getattr(declare[0], "name", None)
    # A per-call time_limit=/soft_time_limit= (the task's own limits are known
    # only to the worker: task_prerun records the ones it applies).
    hard, soft = _pair(info.get("timelimit"))
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
        time_limit=_limit(hard),
        soft_time_limit=_limit(soft),
        # Celery beat marks what it sends (celery/beat.py Scheduler.apply_async):
        # monitor/beat.py tells a scheduled run from a call of the same task.
        beat="1" if headers.get("celery_beat_task") else None,
        **retry,
    )


# -- worker parent (consumer) --------------------------------------------------
@never_raise
def task_received(request: Any = None, **kwargs: Any) -> None:
    info = request.request_dict or {}
    args = request.argsrepr
    positions = _task_info_for(request.name, _rec().settings.redact)[1]
    if positions:
        args = redact_args_repr(args, positions)
    _rec().task(
        request.id,
        states.RECEIVED,
        request.hostname,
        name=request.name,
        args=args,
        kwargs=request.kwargsrepr,
        retries=info.get("retries"),
        eta=_plain(request.eta),
        expires=_plain(request.expires),
        root_id=request.root_id,
        parent_id=request.parent_id,
        group_id=info.get("group"),
        worker=request.hostname,
        queue=_routing_key(request),
    )


def _routing_key(request: Any) -> str | None:
    """The routing key a task's message came by. The worker's records name it as
    the queue, and its records name the task, so that they count under the right
    name and queue whatever order they reach the store in (the pool process's
    STARTED/SUCCESS often before the parent's RECEIVED and the producer's
    PENDING); the publish's report names the real queue, and the store lets it win."""
    info = getattr(request, "delivery_info", None)
    return info.get("routing_key") if isinstance(info, dict) else None


@never_raise
def task_revoked(request: Any = None, terminated=None, signum=None, expired=None, **kw) -> None:
    _rec().task(
        request.id,
        states.REVOKED,
        request.hostname,
        name=getattr(request, "name", None),
        queue=_routing_key(request),
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
    hard, soft = _time_limits(request, task)
    _rec().task(
        task_id,
        states.STARTED,
        request.hostname,
        name=task.name,
        queue=_routing_key(request),
        pid=_pid,
        retries=request.retries,
        worker=request.hostname,
        time_limit=hard,
        soft_time_limit=soft,
    )


def _limit(value: Any) -> float | None:
    """A time limit in seconds (finite, > 0), or None."""
    if type(value) not in (int, float) or not 0 < value < 1e9:  # NaN fails too
        return None
    return value


def _pair(limits: Any) -> tuple[Any, Any]:
    """(hard, soft) of a ``timelimit`` header, whatever it holds."""
    if type(limits) in (list, tuple) and len(limits) == 2:
        return limits[0], limits[1]
    return None, None


def _time_limits(request: Any, task: Any) -> tuple[float | None, float | None]:
    """The limits the worker applies to this run, as Celery's Request does: the
    message's ``timelimit`` header (a per-call ``time_limit=``/``soft_time_limit=``),
    else the task's own (its ``time_limit=``, else the app's ``task_time_limit``).
    The stuck-task check (monitor.lost) compares a STARTED task's age with them."""
    hard, soft = _pair(getattr(request, "timelimit", None))
    return (
        _limit(hard) or _limit(getattr(task, "time_limit", None)),
        _limit(soft) or _limit(getattr(task, "soft_time_limit", None)),
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
    request = getattr(sender, "request", None)
    hostname = getattr(request, "hostname", None)
    _record_failure(
        task_id,
        hostname or _rec().worker_hostname,
        exception,
        einfo,
        getattr(sender, "name", None),
        _routing_key(request),
    )


def _record_failure(
    task_id: str | None,
    hostname: str | None,
    exception: Any,
    einfo: Any,
    name: str | None = None,
    queue: str | None = None,
) -> None:
    _rec().task(
        task_id,
        states.FAILURE,
        hostname,
        name=name,
        queue=queue,
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
        name=getattr(kwargs.get("sender"), "name", None),
        queue=_routing_key(request),
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
    request = task.request
    hostname = request.hostname
    _rec().task(
        task_id,
        state,
        hostname,
        name=task.name,
        queue=_routing_key(request),
        runtime=_rec().runtime(task_id),
        worker=hostname,
        **detail,
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
