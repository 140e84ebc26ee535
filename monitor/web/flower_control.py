"""Flower's control endpoints (``<prefix>/api``): Flower's paths, parameters and
response shapes, so that scripts written against Flower keep working.

Task: ``POST /api/task/revoke/<id>`` (``terminate``, ``signal``),
``/api/task/rate-limit/<name>`` (``workername``, ``ratelimit``),
``/api/task/timeout/<name>`` (``workername``, ``soft``, ``hard``),
``/api/task/abort/<id>``, ``/api/task/apply/<name>``, ``/api/task/async-apply/<name>``,
``/api/task/send-task/<name>`` (a JSON body ``{"args", "kwargs", ...options}``) and
``GET /api/task/result/<id>`` (``timeout``). Worker: ``POST /api/worker/shutdown/<w>``,
``/api/worker/pool/restart|grow|shrink|autoscale/<w>`` (``n``, ``min``, ``max``),
``/api/worker/queue/add-consumer|cancel-consumer/<w>`` (``queue``).

As in Flower: parameters come from the query string or a form (task calls: from a
JSON body, whatever its Content-Type); success is ``{"message": ...}`` (task calls:
``{"task-id", "state", "result"}``); a worker that refuses is a 403 with Flower's
text (``Failed to grow 'w' worker's pool: <reason>``); an unknown worker or task
is a 404 ``Unknown worker 'w'``; a result without a result backend is a 503; an
error is a text body with its status.

Where this differs from Flower, on purpose: every action needs an operator and
is audited (:func:`monitor.web.security.action`); a worker is known when the
monitor's store has seen it (heartbeats, hooks or events), not only when an
``inspect`` broadcast found it; a task name is known when the monitor's Celery app
registers it or the store has seen it; a worker that does not answer is a 403
that says so (Flower answers 500 or "Unknown reason"); the worker's own error is
the reason given (Flower's rate-limit and timeout handlers always say "Unknown
reason"); every value is checked before anything is sent (400: a number that is
not finite or out of range, an unknown ``apply_async`` option, arguments nested
deeper than :data:`MAX_DEPTH`, a body over :data:`MAX_BODY` bytes); ``apply``
waits at most :data:`APPLY_WAIT` seconds for the result, ``result?timeout=`` at
most :data:`MAX_RESULT_WAIT` (then the state so far, without a result).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import redis
from celery.backends.base import DisabledBackend
from celery.contrib.abortable import AbortableAsyncResult
from celery.exceptions import TimeoutError as CeleryTimeoutError
from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from ..actions import MAX_SECONDS, ActionError, Controller, task_id_param
from ..auth import Role
from ..model import brief
from ..store import MAX_KEY_PART
from . import queries
from .actions_api import (
    ACTION_ERRORS,
    ERROR_SCHEMA,
    body,
    json_response,
    operation,
    path_param,
)
from .api import register_converter
from .security import action, controller, request_params, require

logger = logging.getLogger(__name__)

flower_control = Blueprint("monitor_flower_control", __name__)
register_converter(flower_control)

#: Bytes of a task call's JSON body.
MAX_BODY = 1024 * 1024
#: Levels of nesting and values in a task call's args and kwargs.
MAX_DEPTH = 32
MAX_VALUES = 100_000
#: Seconds /api/task/apply waits for the result (Flower: for ever), and the most
#: /api/task/result?timeout= may ask for.
APPLY_WAIT = 30.0
MAX_RESULT_WAIT = 30.0
#: Seconds ahead an ``eta`` or ``countdown`` may be (workers hold such tasks in
#: memory until then), and an ``expires``.
MAX_AHEAD = MAX_SECONDS
MAX_EXPIRES = 366 * 24 * 3600.0
#: Flower's date format for ``eta`` and ``expires``.
DATE_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
#: Flower's strtobool.
_TRUE = ("y", "yes", "t", "true", "on", "1")
_FALSE = ("n", "no", "f", "false", "off", "0")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_INT_TEXT = re.compile(r"[+-]?[0-9]{1,19}")
#: ``apply_async`` options a task call may give (anything else is refused).
_NAME_OPTIONS = ("queue", "exchange", "routing_key")
_SECONDS_OPTIONS = ("time_limit", "soft_time_limit")
OPTIONS = ("task_id", "countdown", "eta", "expires", "priority", *_NAME_OPTIONS, *_SECONDS_OPTIONS)


def message(text: str) -> Response:
    """Flower's success shape."""
    return jsonify({"message": text})


def text_error(text: str, status: int) -> Response:
    """Flower's error shape: the message as the body."""
    return Response(text, status=status, mimetype="text/plain")


@flower_control.errorhandler(ActionError)
def _refused(exc: ActionError) -> Response:
    return text_error(exc.message, exc.status)


@flower_control.errorhandler(redis.RedisError)
def _redis_down(exc: redis.RedisError) -> Response:
    logger.warning("Flower control request failed, Redis unavailable: %s", exc)
    return text_error(f"Redis unavailable: {exc.__class__.__name__}", 503)


@flower_control.errorhandler(HTTPException)
def _http(exc: HTTPException) -> Response:
    return text_error(exc.description or exc.name, exc.code or 500)


@flower_control.before_request
def _keep_body() -> None:
    # Flower reads a task call's JSON body whatever its Content-Type (``curl -d``
    # sends a form type): read it once, before anything parses it as a form,
    # which would consume it.
    if request.method == "POST" and 0 < (request.content_length or 0) <= MAX_BODY:
        request.get_data(cache=True)


def flower_shape(view: Callable[..., Any]) -> Callable[..., Any]:
    """A refusal inside the view answered as Flower would (text with the status);
    :func:`monitor.web.security.action` around it audits that answer."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return view(*args, **kwargs)
        except ActionError as exc:
            return text_error(exc.message, exc.status)

    return wrapper


# -- parameters, as Flower's BaseHandler.get_argument reads them ---------------------
def argument(
    params: dict[str, Any],
    name: str,
    kind: type | None = None,
    default: Any = None,
    required: bool = False,
) -> Any:
    """``params[name]`` converted to ``kind`` (bool: Flower's strtobool); 400
    ``Invalid argument 'x' of type 'int'`` when it does not convert, ``Missing
    argument name`` when required and absent."""
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise ActionError(f"Missing argument {name}")
        return default
    invalid = ActionError(f"Invalid argument {brief(value)} of type '{(kind or str).__name__}'")
    if kind is None or kind is str:
        if type(value) is not str:
            raise invalid
        return value
    if kind is bool:
        if type(value) is bool:
            return value
        text = str(value).strip().lower() if type(value) in (str, int) else None
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise invalid
    if kind is int:
        if type(value) is int:
            return value
        if type(value) is str and _INT_TEXT.fullmatch(value.strip()):
            return int(value)
        raise invalid
    if kind is float:
        if type(value) in (int, float):
            return float(value)
        if type(value) is str and len(value) <= 40:
            try:
                return float(value)
            except ValueError:
                raise invalid from None
        raise invalid
    raise TypeError(kind)  # pragma: no cover - a programming error


def name_param(kind: str, value: Any) -> str:
    """A task, worker or queue name as the store and the broker can hold it."""
    if type(value) is not str or not value:
        raise ActionError(f"{kind} must be a non-empty string, got {brief(value)}")
    if len(value) > 255 or len(value.encode("utf-8", "surrogatepass")) > MAX_KEY_PART:
        raise ActionError(f"{kind} is too long (at most 255 characters)")
    if _CONTROL_CHARS.search(value):
        raise ActionError(f"{kind} must not contain control characters")
    return value


def known_task(ctl: Controller, name: str) -> str:
    """404 ``Unknown task 'name'`` unless the app registers it or the store saw it."""
    name = name_param("task name", name)
    if name not in ctl.app.tasks and not queries.task_name_known(ctl.store, name):
        raise ActionError(f"Unknown task '{name}'", 404, "not_found")
    return name


def known_worker(ctl: Controller, workername: Any) -> str:
    """404 ``Unknown worker 'w'`` unless the store has seen the worker."""
    name = name_param("worker name", workername)
    if ctl.store.worker(name) is None:
        raise ActionError(f"Unknown worker '{name}'", 404, "not_found")
    return name


def worker_reply(
    ctl: Controller,
    out: dict[str, Any],
    workername: str | None,
    *,
    success: str | None,
    failure: str,
    quoted: bool = False,
) -> Response:
    """Flower's answer to a control command: 200 ``{"message": success or the
    worker's "ok"}``, else 403 ``<failure>: <reason>`` (``'<reason>'`` when quoted)."""
    replies = out["replies"]
    if workername is not None:
        reply = replies.get(workername)
        if reply is None:
            reason = f"no reply from worker '{workername}' within {ctl.timeout:g} s"
            return text_error(f"{failure}: '{reason}'" if quoted else f"{failure}: {reason}", 403)
    else:
        refused = [r for r in replies.values() if not (isinstance(r, dict) and "ok" in r)]
        reply = refused[0] if refused else next(iter(replies.values()), None)
        if reply is None:
            reason = f"no worker replied within {ctl.timeout:g} s"
            return text_error(f"{failure}: '{reason}'" if quoted else f"{failure}: {reason}", 403)
    if isinstance(reply, dict) and "ok" in reply:
        return message(success if success is not None else str(reply["ok"]))
    reason = reply.get("error", "Unknown reason") if isinstance(reply, dict) else "Unknown reason"
    return text_error(f"{failure}: '{reason}'" if quoted else f"{failure}: {reason}", 403)


# -- task control ----------------------------------------------------------------------
@flower_control.post("/task/revoke/<anypath:taskid>")
@action("task.revoke", target="taskid")
@flower_shape
def task_revoke(taskid: str) -> Any:
    """Revoke a task; ``terminate=true`` also kills it, with ``signal`` (SIGTERM).

    ``POST /api/task/revoke/1480b55c-...?terminate=true`` ->
    ``{"message": "Revoked '1480b55c-...'"}``
    """
    params = request_params()
    terminate = argument(params, "terminate", bool, False)
    ctl = controller()
    if terminate:
        signal = params.get("signal")  # a name or a number, checked by the controller
        ctl.terminate(taskid, "SIGTERM" if signal in (None, "") else signal)
    else:
        ctl.revoke(taskid)
    return message(f"Revoked '{taskid}'")


@flower_control.post("/task/rate-limit/<anypath:taskname>")
@action("task.rate_limit", target="taskname")
@flower_shape
def task_rate_limit(taskname: str) -> Any:
    """Change a task's rate limit on one worker (or every worker).

    ``POST /api/task/rate-limit/tasks.sleep`` with ``ratelimit=200&workername=celery@w1``
    -> ``{"message": "new rate limit set successfully"}``
    """
    params = request_params()
    if "ratelimit" not in params:
        raise ActionError("Missing argument ratelimit")
    ratelimit = params["ratelimit"]
    workername = argument(params, "workername")
    ctl = controller()
    taskname = known_task(ctl, taskname)
    worker = known_worker(ctl, workername) if workername is not None else None
    out = ctl.rate_limit(taskname, ratelimit, destination=worker)
    return worker_reply(
        ctl, out, worker, success=None, failure="Failed to set rate limit", quoted=True
    )


@flower_control.post("/task/timeout/<anypath:taskname>")
@action("task.time_limit", target="taskname")
@flower_shape
def task_timeout(taskname: str) -> Any:
    """Change a task's soft and hard time limits (seconds).

    ``POST /api/task/timeout/tasks.sleep`` with ``soft=30&hard=100&workername=celery@w1``
    -> ``{"message": "time limits set successfully"}``
    """
    params = request_params()
    workername = argument(params, "workername")
    hard = argument(params, "hard", float)
    soft = argument(params, "soft", float)
    ctl = controller()
    taskname = known_task(ctl, taskname)
    worker = known_worker(ctl, workername) if workername is not None else None
    out = ctl.time_limit(taskname, soft, hard, destination=worker)
    return worker_reply(
        ctl, out, worker, success=None, failure="Failed to set timeouts", quoted=True
    )


def result_backend(ctl: Controller) -> Any:
    """The monitor's Celery app's result backend; 503 when it has none."""
    backend = ctl.app.backend
    if isinstance(backend, DisabledBackend):
        raise ActionError("result backend is not configured", 503, "no_backend")
    return backend


@flower_control.post("/task/abort/<anypath:taskid>")
@action("task.abort", target="taskid")
@flower_shape
def task_abort(taskid: str) -> Any:
    """Abort a running task (an AbortableTask checks ``is_aborted()``): writes
    the ABORTED state to the result backend.

    ``POST /api/task/abort/c60be250-...`` -> ``{"message": "Aborted 'c60be250-...'"}``
    """
    taskid = task_id_param(taskid)
    ctl = controller()
    result_backend(ctl)
    try:
        AbortableAsyncResult(taskid, app=ctl.app).abort()
    except Exception as exc:  # noqa: BLE001 - backend-specific errors
        raise ActionError(
            f"result backend error: {type(exc).__name__}: {brief(str(exc))}", 503, "backend"
        ) from exc
    return message(f"Aborted '{taskid}'")


def _check_values(name: str, value: Any) -> None:
    """Arguments a serializer can carry and a worker can decode: bounded nesting
    and size, finite numbers."""
    stack = [(value, 0)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ActionError(f"{name} holds more than {MAX_VALUES} values")
        if depth > MAX_DEPTH:
            raise ActionError(f"{name} is nested deeper than {MAX_DEPTH} levels")
        if type(item) is float and not math.isfinite(item):
            raise ActionError(f"{name} holds a number that is not finite ({item!r})")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def _seconds(name: str, value: Any, low: float, high: float) -> float:
    number = argument({name: value}, name, float)
    if not math.isfinite(number) or not low <= number <= high:
        raise ActionError(f"Invalid option {name}: seconds from {low:g} to {high:g}")
    return number


def _date(name: str, value: Any) -> datetime:
    if type(value) is not str or len(value) > 40:
        raise ActionError(f"Invalid option {name}: expected {DATE_FORMAT}")
    try:
        return datetime.strptime(value, DATE_FORMAT)
    except ValueError:
        raise ActionError(f"Invalid option {name}: expected {DATE_FORMAT}") from None


def call_options(options: dict[str, Any]) -> dict[str, Any]:
    """The ``apply_async`` options of a task call, checked and converted as Flower's
    ``normalize_options`` does (``eta`` and ``expires`` as ``%Y-%m-%d %H:%M:%S.%f``)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ActionError(
            f"Invalid option {brief(unknown[0])}: the options are {', '.join(OPTIONS)}"
        )
    out: dict[str, Any] = {}
    for name, value in options.items():
        if value is None:
            continue
        if name == "task_id":
            out[name] = task_id_param(value)
        elif name == "countdown":
            out[name] = _seconds(name, value, 0.0, MAX_AHEAD)
        elif name == "eta":
            eta = _date(name, value)
            # naive, as Flower passes it; either reading of it must be within reach
            if eta - datetime.now() > timedelta(seconds=MAX_AHEAD):
                raise ActionError(f"Invalid option eta: at most {MAX_AHEAD / 86400:g} days ahead")
            out[name] = eta
        elif name == "expires":
            if type(value) is str and not _INT_TEXT.fullmatch(value.strip()) and ":" in value:
                out[name] = _date(name, value)
            else:
                out[name] = _seconds(name, value, 0.0, MAX_EXPIRES)
        elif name == "priority":
            priority = argument({name: value}, name, int)
            if not 0 <= priority <= 255:
                raise ActionError("Invalid option priority: an integer from 0 to 255")
            out[name] = priority
        elif name in _SECONDS_OPTIONS:
            out[name] = _seconds(name, value, 0.001, MAX_SECONDS)
        else:  # queue, exchange, routing_key
            out[name] = name_param(name, value)
    return out


def task_call() -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """(args, kwargs, options) of a task call's JSON body, as Flower's get_task_args."""
    if (request.content_length or 0) > MAX_BODY:
        raise ActionError(f"the body is over {MAX_BODY} bytes", 413, "invalid")
    raw = request.get_data(cache=True)
    try:
        options = json.loads(raw) if raw else {}
    except RecursionError:
        raise ActionError("the JSON body is nested too deep") from None
    except ValueError as exc:
        raise ActionError(str(exc)[:200] or "invalid JSON") from None
    if not isinstance(options, dict):
        raise ActionError("invalid options")
    args = options.pop("args", [])
    kwargs = options.pop("kwargs", {})
    if not isinstance(args, list):
        raise ActionError("args must be an array")
    if not isinstance(kwargs, dict):
        raise ActionError("kwargs must be an object")
    _check_values("args", args)
    _check_values("kwargs", kwargs)
    return args, kwargs, call_options(options)


def safe_result(result: Any) -> Any:
    """Flower's: the result if JSON can carry it, else its repr."""
    try:
        json.dumps(result)
    except (TypeError, ValueError):
        return repr(result)
    return result


def _with_result(response: dict[str, Any], result: Any) -> dict[str, Any]:
    response["result"] = safe_result(result.result)
    if result.state == "FAILURE":
        response["traceback"] = result.traceback
    return response


def registered(ctl: Controller, taskname: str) -> Any:
    """The app's task object (apply and async-apply need the task's code, as in Flower)."""
    taskname = name_param("task name", taskname)
    task = ctl.app.tasks.get(taskname)
    if task is None:
        raise ActionError(f"Unknown task '{taskname}'", 404, "not_found")
    return task


def _publish(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except ActionError:
        raise
    except Exception as exc:  # noqa: BLE001 - transport-specific errors
        raise ActionError(
            f"broker error: {type(exc).__name__}: {brief(str(exc))}", 503, "broker"
        ) from exc


@flower_control.post("/task/apply/<anypath:taskname>")
@action("task.apply", target="taskname")
@flower_shape
def task_apply(taskname: str) -> Any:
    """Run a task and wait for its result (at most 30 s; then without a result).

    ``POST /api/task/apply/tasks.add {"args": [1, 2]}`` ->
    ``{"task-id": "c60be250-...", "state": "SUCCESS", "result": 3}``
    """
    args, kwargs, options = task_call()
    ctl = controller()
    task = registered(ctl, taskname)
    result_backend(ctl)  # refused before anything runs: the result could not be read
    result = _publish(lambda: task.apply_async(args=args, kwargs=kwargs, **options))
    response: dict[str, Any] = {"task-id": result.id}
    try:
        result.get(timeout=APPLY_WAIT, propagate=False)
    except CeleryTimeoutError:
        logger.info("monitor: apply of %s: no result within %.0f s", taskname, APPLY_WAIT)
    except Exception as exc:  # noqa: BLE001 - the task was sent: say so, with the id
        logger.warning("monitor: apply of %s: reading the result failed: %s", taskname, exc)
    if result.ready():
        _with_result(response, result)
    response["state"] = result.state
    return jsonify(response)


@flower_control.post("/task/async-apply/<anypath:taskname>")
@action("task.async_apply", target="taskname")
@flower_shape
def task_async_apply(taskname: str) -> Any:
    """Send a task the monitor's app registers; do not wait.

    ``POST /api/task/async-apply/tasks.add {"args": [1, 2], "countdown": 5}`` ->
    ``{"task-id": "abc300c7-...", "state": "PENDING"}`` (no state without a result backend)
    """
    args, kwargs, options = task_call()
    ctl = controller()
    task = registered(ctl, taskname)
    result = _publish(lambda: task.apply_async(args=args, kwargs=kwargs, **options))
    return jsonify(_sent(result))


@flower_control.post("/task/send-task/<anypath:taskname>")
@action("task.send", target="taskname")
@flower_shape
def task_send(taskname: str) -> Any:
    """Send a task by name (the monitor need not have its code).

    ``POST /api/task/send-task/tasks.add {"args": [1, 2]}`` ->
    ``{"task-id": "c60be250-...", "state": "PENDING"}``
    """
    args, kwargs, options = task_call()
    ctl = controller()
    name = name_param("task name", taskname)
    result = _publish(lambda: ctl.app.send_task(name, args=args, kwargs=kwargs, **options))
    return jsonify(_sent(result))


def _sent(result: Any) -> dict[str, Any]:
    response: dict[str, Any] = {"task-id": result.id}
    if not isinstance(result.backend, DisabledBackend):
        try:
            response["state"] = result.state
        except Exception as exc:  # noqa: BLE001 - sent: the id is the answer
            logger.warning("monitor: state of %s unknown: %s", result.id, exc)
    return response


@flower_control.get("/task/result/<anypath:taskid>")
@require(Role.OPERATOR)
def task_result(taskid: str) -> Any:
    """A task's state and result from the result backend (operators: results are
    not redacted there); ``timeout`` waits for it, at most 30 s.

    ``GET /api/task/result/c60be250-...?timeout=5`` ->
    ``{"task-id": "c60be250-...", "state": "SUCCESS", "result": 3}``
    """
    taskid = task_id_param(taskid)
    timeout = argument(request.args, "timeout", float)
    if timeout is not None and (not math.isfinite(timeout) or not 0 <= timeout <= MAX_RESULT_WAIT):
        raise ActionError(f"timeout must be from 0 to {MAX_RESULT_WAIT:g} seconds")
    ctl = controller()
    result_backend(ctl)
    result = ctl.app.AsyncResult(taskid)
    try:
        if timeout:
            try:
                result.get(timeout=timeout, propagate=False)
            except CeleryTimeoutError:
                pass
        response: dict[str, Any] = {"task-id": taskid, "state": result.state}
        if result.ready():
            _with_result(response, result)
    except Exception as exc:  # noqa: BLE001 - backend-specific errors
        raise ActionError(
            f"result backend error: {type(exc).__name__}: {brief(str(exc))}", 503, "backend"
        ) from exc
    return jsonify(response)


# -- worker control ----------------------------------------------------------------------
@flower_control.post("/worker/shutdown/<anypath:workername>")
@action("worker.shutdown", target="workername")
@flower_shape
def worker_shutdown(workername: str) -> Any:
    """Shut a worker down. ``POST /api/worker/shutdown/celery@w2`` ->
    ``{"message": "Shutting down!"}``"""
    ctl = controller()
    ctl.shutdown(known_worker(ctl, workername))
    return message("Shutting down!")


@flower_control.post("/worker/pool/restart/<anypath:workername>")
@action("worker.pool_restart", target="workername")
@flower_shape
def worker_pool_restart(workername: str) -> Any:
    """``{"message": "Restarting 'celery@w2' worker's pool"}``, or 403 ``Failed to
    restart the 'celery@w2' pool: Pool restarts not enabled``."""
    ctl = controller()
    name = known_worker(ctl, workername)
    return worker_reply(
        ctl,
        ctl.pool_restart(name),
        name,
        success=f"Restarting '{name}' worker's pool",
        failure=f"Failed to restart the '{name}' pool",
    )


@flower_control.post("/worker/pool/grow/<anypath:workername>")
@action("worker.pool_grow", target="workername")
@flower_shape
def worker_pool_grow(workername: str) -> Any:
    """``POST /api/worker/pool/grow/celery@w2?n=3`` ->
    ``{"message": "Growing 'celery@w2' worker's pool by 3"}``"""
    ctl = controller()
    name = known_worker(ctl, workername)
    n = argument(request_params(), "n", int, 1)
    return worker_reply(
        ctl,
        ctl.pool_grow(n, name),
        name,
        success=f"Growing '{name}' worker's pool by {n}",
        failure=f"Failed to grow '{name}' worker's pool",
    )


@flower_control.post("/worker/pool/shrink/<anypath:workername>")
@action("worker.pool_shrink", target="workername")
@flower_shape
def worker_pool_shrink(workername: str) -> Any:
    """``POST /api/worker/pool/shrink/celery@w2`` ->
    ``{"message": "Shrinking 'celery@w2' worker's pool by 1"}``"""
    ctl = controller()
    name = known_worker(ctl, workername)
    n = argument(request_params(), "n", int, 1)
    return worker_reply(
        ctl,
        ctl.pool_shrink(n, name),
        name,
        success=f"Shrinking '{name}' worker's pool by {n}",
        failure=f"Failed to shrink '{name}' worker's pool",
    )


@flower_control.post("/worker/pool/autoscale/<anypath:workername>")
@action("worker.autoscale", target="workername")
@flower_shape
def worker_pool_autoscale(workername: str) -> Any:
    """``POST /api/worker/pool/autoscale/celery@w2?min=3&max=10`` ->
    ``{"message": "Autoscaling 'celery@w2' worker (min=3, max=10)"}``"""
    ctl = controller()
    name = known_worker(ctl, workername)
    params = request_params()
    low = argument(params, "min", int)
    high = argument(params, "max", int)
    return worker_reply(
        ctl,
        ctl.autoscale(high, low, name),
        name,
        success=f"Autoscaling '{name}' worker (min={low}, max={high})",
        failure=f"Failed to autoscale '{name}' worker",
    )


@flower_control.post("/worker/queue/add-consumer/<anypath:workername>")
@action("worker.add_consumer", target="workername")
@flower_shape
def worker_add_consumer(workername: str) -> Any:
    """``POST /api/worker/queue/add-consumer/celery@w2?queue=sample-queue`` ->
    ``{"message": "add consumer sample-queue"}``"""
    ctl = controller()
    name = known_worker(ctl, workername)
    queue = argument(request_params(), "queue", str, required=True)
    return worker_reply(
        ctl,
        ctl.add_consumer(queue, name),
        name,
        success=None,
        failure=f"Failed to add '{queue}' consumer to '{name}' worker",
    )


@flower_control.post("/worker/queue/cancel-consumer/<anypath:workername>")
@action("worker.cancel_consumer", target="workername")
@flower_shape
def worker_cancel_consumer(workername: str) -> Any:
    """``POST /api/worker/queue/cancel-consumer/celery@w2?queue=sample-queue`` ->
    ``{"message": "no longer consuming from sample-queue"}``"""
    ctl = controller()
    name = known_worker(ctl, workername)
    queue = argument(request_params(), "queue", str, required=True)
    return worker_reply(
        ctl,
        ctl.cancel_consumer(queue, name),
        name,
        success=None,
        failure=f"Failed to cancel '{queue}' consumer from '{name}' worker",
    )


# -- OpenAPI ---------------------------------------------------------------------------
def _query(name: str, description: str, schema: dict[str, Any], required: bool = False) -> dict:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


def openapi_paths() -> dict[str, Any]:
    """OpenAPI 3 path entries of Flower's control endpoints."""

    def either(description: str) -> dict[str, Any]:
        # Flower's own errors are text; the monitor's refusals (login, role, Host) JSON
        return {
            "description": description,
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/json": {"schema": ERROR_SCHEMA},
            },
        }

    text_errors = {code: either(entry["description"]) for code, entry in ACTION_ERRORS.items()}
    no_backend = either("no result backend (or the broker or Redis is unreachable)")
    too_big = {
        "description": f"a body over {MAX_BODY} bytes",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    flower_message = {
        "description": '{"message": "..."}',
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"message": {"type": "string"}},
                    "required": ["message"],
                }
            }
        },
    }
    refused = either(
        "the worker refused (Flower's text: 'Failed to <what>: <reason>') or did not reply;"
        " or the caller may not act (JSON)"
    )
    unknown = {
        "description": "Unknown worker / Unknown task (text)",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    task_answer = {
        "description": '{"task-id", "state", "result", "traceback"}',
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"task-id": {"type": "string"}, "state": {"type": "string"}},
                    "required": ["task-id"],
                }
            }
        },
    }
    worker = [path_param("workername", "worker hostname")]
    task_id = [path_param("taskid", "task id")]
    task_name = [path_param("taskname", "task name")]
    workername = _query(
        "workername", "worker hostname (all workers when absent)", {"type": "string"}
    )
    count = {"type": "integer", "minimum": 1, "maximum": 1024}
    seconds = {"type": "number", "minimum": 0.001, "maximum": MAX_SECONDS}
    call = body(
        {
            "args": {"type": "array"},
            "kwargs": {"type": "object"},
            **{name: {} for name in OPTIONS},
        }
    )
    call["content"] = {"application/json": call["content"]["application/json"]}

    def post(summary: str, params: list[dict[str, Any]], responses: dict[str, Any], **kw: Any):
        return operation("post", summary, "flower", params, responses, errors=text_errors, **kw)

    return {
        "/api/task/revoke/{taskid}": post(
            "Revoke a task; terminate=true kills it with signal (Flower)",
            [
                *task_id,
                _query("terminate", "kill the task if running", {"type": "boolean"}),
                _query("signal", "signal for terminate (SIGTERM)", {"type": "string"}),
            ],
            {"200": flower_message},
        ),
        "/api/task/rate-limit/{taskname}": post(
            "Change a task's rate limit (Flower)",
            [
                *task_name,
                workername,
                _query("ratelimit", "10/m, 0.5/s, 100", {"type": "string"}, True),
            ],
            {"200": flower_message, "403": refused, "404": unknown},
        ),
        "/api/task/timeout/{taskname}": post(
            "Change a task's soft and hard time limits (Flower)",
            [
                *task_name,
                workername,
                _query("soft", "seconds", seconds),
                _query("hard", "seconds", seconds),
            ],
            {"200": flower_message, "403": refused, "404": unknown},
        ),
        "/api/task/abort/{taskid}": post(
            "Abort a running AbortableTask (Flower)",
            task_id,
            {"200": flower_message, "503": no_backend},
        ),
        "/api/task/apply/{taskname}": post(
            "Run a task the monitor's app registers and wait for its result"
            f" (at most {APPLY_WAIT:g} s)",
            task_name,
            {"200": task_answer, "404": unknown, "413": too_big, "503": no_backend},
            request_body=call,
        ),
        "/api/task/async-apply/{taskname}": post(
            "Send a task the monitor's app registers (Flower)",
            task_name,
            {"200": task_answer, "404": unknown, "413": too_big},
            request_body=call,
        ),
        "/api/task/send-task/{taskname}": post(
            "Send a task by name (Flower)",
            task_name,
            {"200": task_answer, "413": too_big},
            request_body=call,
        ),
        "/api/task/result/{taskid}": operation(
            "get",
            "A task's state and result from the result backend (operators)",
            "flower",
            [
                *task_id,
                _query(
                    "timeout",
                    f"seconds to wait for the result, at most {MAX_RESULT_WAIT:g}",
                    {"type": "number", "minimum": 0, "maximum": MAX_RESULT_WAIT},
                ),
            ],
            {"200": task_answer, "503": no_backend},
            errors={
                "400": either("a bad parameter"),
                "401": json_response("this monitor has users: log in first"),
                "403": json_response("not an operator"),
            },
        ),
        "/api/worker/shutdown/{workername}": post(
            "Shut a worker down (Flower)", worker, {"200": flower_message, "404": unknown}
        ),
        "/api/worker/pool/restart/{workername}": post(
            "Restart a worker's pool (Flower)",
            worker,
            {"200": flower_message, "403": refused, "404": unknown},
        ),
        "/api/worker/pool/grow/{workername}": post(
            "Grow a worker's pool by n (Flower)",
            [*worker, _query("n", "processes (1)", count)],
            {"200": flower_message, "403": refused, "404": unknown},
        ),
        "/api/worker/pool/shrink/{workername}": post(
            "Shrink a worker's pool by n (Flower)",
            [*worker, _query("n", "processes (1)", count)],
            {"200": flower_message, "403": refused, "404": unknown},
        ),
        "/api/worker/pool/autoscale/{workername}": post(
            "Change a worker's autoscale range (Flower)",
            [
                *worker,
                _query("min", "minimum processes", {**count, "minimum": 0}, True),
                _query("max", "maximum processes", count, True),
            ],
            {"200": flower_message, "403": refused, "404": unknown},
        ),
        "/api/worker/queue/add-consumer/{workername}": post(
            "Start consuming a queue (Flower)",
            [*worker, _query("queue", "queue name", {"type": "string", "maxLength": 255}, True)],
            {"200": flower_message, "403": refused, "404": unknown},
        ),
        "/api/worker/queue/cancel-consumer/{workername}": post(
            "Stop consuming a queue (Flower)",
            [*worker, _query("queue", "queue name", {"type": "string", "maxLength": 255}, True)],
            {"200": flower_message, "403": refused, "404": unknown},
        ),
    }
