"""The v1 action endpoints (``<prefix>/api/v1``): what an operator does to tasks,
workers and queues, over HTTP.

Handlers here only read parameters and shape answers. :class:`monitor.actions.Controller`
validates every parameter and acts; :func:`monitor.web.security.action` refuses
whoever may not act (no user configured, read-only, not an operator, a session
without its CSRF token), and records every attempt in the audit log, refused ones
included. Reads that need a role go through :func:`monitor.web.security.require`.

A bulk run answers at once with a job id and works in a background task of the
app's Socket.IO server: its progress is pushed as ``job`` events to the Socket.IO
connection named by the ``X-Socket-Sid`` header, and ``GET /jobs/<id>`` answers
the same progress object. Jobs live in this process's memory
(:class:`Jobs`: :data:`MAX_JOBS` kept, each :data:`JOB_TTL` seconds after it ends,
:data:`MAX_RUNNING` at a time).

Each endpoint's example request and response is in its docstring; the OpenAPI
entries are :func:`openapi_paths`.
"""

from __future__ import annotations

import collections
import logging
import re
import secrets
import threading
import time
from collections.abc import Mapping
from typing import Any

import redis
from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from ..actions import (
    BULK_LIMIT,
    TERMINATE_SIGNALS,
    ActionError,
    Controller,
    TaskFilter,
    task_id_param,
)
from ..auth import Role
from ..model import brief
from ..vocabulary import RETRIABLE_STATES, UNFINISHED_STATES
from . import queries
from .api import error, register_converter
from .queries import QueryError
from .security import (
    action,
    actions_refusal,
    audit_log,
    controller,
    principal,
    request_params,
    require,
)

logger = logging.getLogger(__name__)

actions_api = Blueprint("monitor_actions_api", __name__)
register_converter(actions_api)

#: Bulk jobs one process keeps (finished ones go first), and how long after they end.
MAX_JOBS = 100
JOB_TTL = 600.0
#: Bulk runs one process works on at a time (each may retry 1,000 tasks).
MAX_RUNNING = 4
#: A Socket.IO session id as python-socketio makes them (anything else is ignored).
_SID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_FILTER_KEYS = ("state", "states", "name", "worker", "since", "until")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
#: Task hash fields GET /tasks/<id>/actions reads (not the stored body).
_ACTION_FIELDS = ("state", "name", "retried_as", "content_type", "body_truncated", "body_error")


@actions_api.errorhandler(ActionError)
def _refused(exc: ActionError) -> Any:
    response = jsonify({"error": exc.message, "code": exc.code})
    response.status_code = exc.status
    return response


@actions_api.errorhandler(QueryError)
def _bad_query(exc: QueryError) -> Any:
    return error(str(exc), 400)


@actions_api.errorhandler(redis.RedisError)
def _redis_down(exc: redis.RedisError) -> Any:
    logger.warning("action API request failed, Redis unavailable: %s", exc)
    return error(f"Redis unavailable: {exc.__class__.__name__}", 503)


@actions_api.errorhandler(HTTPException)
def _http(exc: HTTPException) -> Any:
    return error(exc.description or exc.name, exc.code or 500)


def flag(name: str, value: Any, default: bool) -> bool:
    """A yes/no parameter: JSON true/false, or its text from a form or query string."""
    if value is None or value == "":
        return default
    if type(value) is bool:
        return value
    if type(value) is str and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ActionError(f"{name} must be true or false, got {brief(value)}")


# -- tasks ---------------------------------------------------------------------------
@actions_api.post("/tasks/<anypath:task_id>/revoke")
@action("task.revoke", target="task_id")
def revoke(task_id: str) -> Any:
    """Revoke a task: workers will not run it (one running it lets it finish).

    ``POST /api/v1/tasks/7a1e.../revoke`` ->
    ``{"action": "revoke", "task_id": "7a1e...", "state": "RECEIVED",
    "replies": {"celery@w1": {"ok": "tasks flagged as revoked"}}, "timeouts": [], "ok": true}``
    """
    return controller().revoke(task_id)


@actions_api.post("/tasks/<anypath:task_id>/terminate")
@action("task.terminate", target="task_id")
def terminate(task_id: str) -> Any:
    """Revoke a task and signal the pool process running it.

    ``POST /api/v1/tasks/7a1e.../terminate {"signal": "SIGKILL"}`` ->
    ``{"action": "revoke", "task_id", "signal": "SIGKILL", "state": "STARTED",
    "replies": {"celery@w1": {"ok": "terminate: 7a1e..."}}, "timeouts": [], "ok": true}``
    """
    signal = request_params().get("signal")
    return controller().terminate(task_id, "SIGTERM" if signal in (None, "") else signal)


@actions_api.post("/tasks/<anypath:task_id>/retry")
@action("task.retry", target="task_id")
def retry(task_id: str) -> Any:
    """Publish a failed, revoked or rejected task again with a new id (same
    message body, content type, exchange and routing key).

    ``POST /api/v1/tasks/7a1e.../retry {"force": false}`` ->
    ``{"id": "c3f0...", "retry_of": "7a1e...", "name": "proj.add", "queue": "celery",
    "exchange": "", "routing_key": "celery", "content_type": "application/json",
    "by": "alice", "linked": true}``; refused with 409 or 422 and the reason.
    """
    force = flag("force", request_params().get("force"), False)
    return controller().retry(task_id, by=principal().name, force=force)


@actions_api.get("/tasks/<anypath:task_id>/actions")
def task_actions(task_id: str) -> Any:
    """What the caller may do to this task now, and why not (viewers may ask).

    ``GET /api/v1/tasks/7a1e.../actions`` ->
    ``{"revoke": {"allowed": false, "reason": "task 7a1e... is FAILURE: ...", "code": "state"},
    "terminate": {...}, "retry": {"allowed": true, "reason": null, "code": null}}``
    """
    task_id = task_id_param(task_id)
    ctl = controller()
    fields = queries.task_fields(ctl.store, task_id, _ACTION_FIELDS)
    if fields is None:
        raise ActionError(f"task {task_id} is not in the monitor's store", 404, "not_found")
    return jsonify(_allowed(ctl, task_id, fields))


def _allowed(ctl: Controller, task_id: str, fields: Mapping[str, str]) -> dict[str, Any]:
    who = principal()
    refusal = actions_refusal()
    if refusal is None and not who.authenticated:
        refusal = "log in first: actions need an operator"
    elif refusal is None and not who.allows(Role.OPERATOR):
        refusal = f"actions need the operator role; you are a {who.role}"
    state = fields["state"]

    def answer(reason: str | None, code: str | None) -> dict[str, Any]:
        if refusal is not None:
            reason, code = refusal, "forbidden"
        return {"allowed": reason is None, "reason": reason, "code": code}

    unfinished = ", ".join(UNFINISHED_STATES)
    retry_refusal = ctl.retry_refusal(task_id, fields)
    return {
        "revoke": answer(
            None
            if state in UNFINISHED_STATES
            else f"task {task_id} is {state}: only {unfinished} tasks can be revoked",
            None if state in UNFINISHED_STATES else "state",
        ),
        "terminate": answer(
            None if state == "STARTED" else f"task {task_id} is {state}: it is not running",
            None if state == "STARTED" else "state",
        ),
        "retry": answer(
            retry_refusal.message if retry_refusal else None,
            retry_refusal.code if retry_refusal else None,
        ),
    }


# -- bulk ------------------------------------------------------------------------------
class Jobs:
    """This process's bulk runs: progress by job id, bounded in number and age."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()

    def _expire(self, now: float) -> None:
        finished = [
            job_id
            for job_id, job in self._jobs.items()
            if job["finished"] and now - job["ended"] > JOB_TTL
        ]
        for job_id in finished:
            del self._jobs[job_id]
        for job_id in [j for j, job in self._jobs.items() if job["finished"]]:
            if len(self._jobs) <= MAX_JOBS:
                break
            del self._jobs[job_id]

    def start(self, action: str, by: str) -> dict[str, Any]:
        """A new running job (ActionError 429 when MAX_RUNNING are running)."""
        now = time.time()
        with self._lock:
            self._expire(now)
            running = sum(1 for job in self._jobs.values() if not job["finished"])
            if running >= MAX_RUNNING:
                raise ActionError(
                    f"{running} bulk runs are in progress in this process; wait for one to finish",
                    429,
                    "busy",
                )
            job = {
                "job": secrets.token_hex(12),
                "action": action,
                "by": by,
                "started": now,
                "ended": None,
                "done": 0,
                "total": None,
                "finished": False,
            }
            self._jobs[job["job"]] = job
            return dict(job)

    def update(self, job_id: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            job = self._jobs[job_id]
            job.update(fields)
            if fields.get("finished"):
                job["ended"] = time.time()
            return dict(job)

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            self._expire(time.time())
            job = self._jobs.get(job_id)
            return None if job is None else dict(job)


def jobs() -> Jobs:
    """The app's bulk jobs (created with the blueprint's registration)."""
    return current_app.extensions["monitor_jobs"]


actions_api.record_once(lambda state: state.app.extensions.setdefault("monitor_jobs", Jobs()))


@actions_api.post("/bulk")
@action("tasks.bulk")
def bulk() -> Any:
    """Retry or revoke every stored task matching a filter: a dry run first.

    ``POST /api/v1/bulk {"action": "retry", "filter": {"state": "FAILURE",
    "name": "proj.add", "since": 1700000000}, "dry_run": true}`` ->
    ``{"action": "retry", "dry_run": true, "filter": {...}, "count": 200,
    "complete": true, "sample": ["7a1e...", ...], "skipped": {"retried": 3}, "limit": 1000}``

    With ``"dry_run": false`` -> ``{"job": "5f0c...", "done": 0, "total": null,
    "finished": false, ...}`` at once; progress goes to the ``X-Socket-Sid``
    connection as ``job`` events and to ``GET /api/v1/jobs/<job>``. The filter's
    keys may also be given at the top level (a form or a query string).
    """
    params = request_params()
    what = params.get("action")
    if what not in ("retry", "revoke"):
        raise ActionError(f"action must be retry or revoke, got {brief(what)}")
    spec = params.get("filter")
    if spec is None:
        spec = {key: params[key] for key in _FILTER_KEYS if key in params}
    where = TaskFilter.parse(spec)
    if what == "retry" and not set(where.states) <= set(RETRIABLE_STATES):
        raise ActionError(
            f"a bulk retry selects only {', '.join(RETRIABLE_STATES)} tasks, "
            f"not {', '.join(sorted(set(where.states) - set(RETRIABLE_STATES)))}"
        )
    dry_run = flag("dry_run", params.get("dry_run"), True)
    limit = _limit(params.get("limit"))
    ctl = controller()
    by = principal().name
    if dry_run:
        return ctl.bulk(what, where, dry_run=True, limit=limit)
    registry = jobs()
    job = registry.start(what, by)
    sid = request.headers.get("X-Socket-Sid", "")
    ext = current_app.extensions["monitor"]
    emit = _emitter(ext.socketio, ext.namespace, sid if _SID.fullmatch(sid) else None)
    ext.socketio.start_background_task(
        _run_bulk, ctl, registry, job["job"], what, where, limit, by, emit
    )
    return _public(job)


def _limit(value: Any) -> int:
    """Tasks one bulk run acts on: 1..BULK_LIMIT (checked here, before a job starts)."""
    if value is None or value == "":
        return BULK_LIMIT
    if type(value) is str and value.strip().isdigit() and len(value) <= 10:
        value = int(value)
    if type(value) is not int or not 1 <= value <= BULK_LIMIT:
        raise ActionError(f"limit must be an integer from 1 to {BULK_LIMIT}, got {brief(value)}")
    return value


def _emitter(socketio: Any, namespace: str, sid: str | None) -> Any:
    def emit(progress: dict[str, Any]) -> None:
        if sid is None:
            return
        try:
            socketio.emit("job", progress, to=sid, namespace=namespace)
        except Exception as exc:  # noqa: BLE001 - the run goes on without its listener
            logger.warning("monitor: bulk job progress not sent: %s", exc)

    return emit


def _public(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if k != "ended"}


def _run_bulk(
    ctl: Controller,
    registry: Jobs,
    job_id: str,
    what: str,
    where: TaskFilter,
    limit: Any,
    by: str,
    emit: Any,
) -> None:
    """The background half of POST /bulk: run, report progress, keep the result."""

    def progress(done: int, total: int) -> None:
        emit(_public(registry.update(job_id, done=done, total=total)))

    try:
        result = ctl.bulk(what, where, dry_run=False, limit=limit, by=by, progress=progress)
    except ActionError as exc:
        final = registry.update(
            job_id,
            finished=True,
            ok=False,
            error={"error": exc.message, "code": exc.code, "status": exc.status},
        )
    except Exception as exc:  # noqa: BLE001 - a job must always finish
        logger.exception("monitor: bulk %s job %s failed", what, job_id)
        final = registry.update(
            job_id,
            finished=True,
            ok=False,
            error={"error": f"internal error: {type(exc).__name__}", "code": "error"},
        )
    else:
        final = registry.update(job_id, finished=True, ok=result["ok"], result=result)
        logger.info("monitor: %s bulk %s job %s: %s tasks", by, what, job_id, result["processed"])
    emit(_public(final))


@actions_api.get("/jobs/<job_id>")
@require(Role.OPERATOR)
def job_progress(job_id: str) -> Any:
    """A bulk run's progress (kept 10 minutes after it ends, in this process).

    ``GET /api/v1/jobs/5f0c...`` -> ``{"job": "5f0c...", "action": "retry",
    "by": "alice", "started": 1700000000.0, "done": 200, "total": 200,
    "finished": true, "ok": true, "result": {...}}``
    """
    job = jobs().get(job_id) if len(job_id) <= 64 else None
    if job is None:
        return error("unknown job (jobs are kept 10 minutes, by the process that ran them)", 404)
    return jsonify(_public(job))


# -- workers ---------------------------------------------------------------------------
@actions_api.post("/workers/<anypath:hostname>/rate-limit")
@action("worker.rate_limit", target="hostname")
def rate_limit(hostname: str) -> Any:
    """Set or remove a task's rate limit on this worker.

    ``POST /api/v1/workers/celery@w1/rate-limit {"task_name": "proj.add", "rate": "10/m"}``
    -> ``{"action": "rate_limit", "destination": ["celery@w1"], "task_name", "rate",
    "replies": {"celery@w1": {"ok": "new rate limit set successfully"}}, "timeouts": [],
    "ok": true}``; an empty ``rate`` removes the limit.
    """
    params = request_params()
    return controller().rate_limit(params.get("task_name"), params.get("rate"), hostname)


@actions_api.post("/workers/<anypath:hostname>/time-limit")
@action("worker.time_limit", target="hostname")
def time_limit(hostname: str) -> Any:
    """Set a task's soft and hard time limits (seconds; empty removes one).

    ``POST /api/v1/workers/celery@w1/time-limit {"task_name": "proj.add", "soft": 10,
    "hard": 20}`` -> ``{..., "replies": {"celery@w1": {"ok": "time limits set
    successfully"}}, "note": "workers apply new time limits ..."}``
    """
    params = request_params()
    return controller().time_limit(
        params.get("task_name"), params.get("soft"), params.get("hard"), hostname
    )


@actions_api.post("/workers/<anypath:hostname>/pool/grow")
@action("worker.pool_grow", target="hostname")
def pool_grow(hostname: str) -> Any:
    """Add ``n`` (default 1) pool processes.

    ``POST /api/v1/workers/celery@w1/pool/grow {"n": 2}`` ->
    ``{"action": "pool_grow", "n": 2, "replies": {"celery@w1": {"ok": "pool will grow"}}, ...}``
    """
    return controller().pool_grow(request_params().get("n", 1), hostname)


@actions_api.post("/workers/<anypath:hostname>/pool/shrink")
@action("worker.pool_shrink", target="hostname")
def pool_shrink(hostname: str) -> Any:
    """Remove ``n`` (default 1) pool processes (``{"ok": "pool will shrink"}``)."""
    return controller().pool_shrink(request_params().get("n", 1), hostname)


@actions_api.post("/workers/<anypath:hostname>/pool/autoscale")
@action("worker.autoscale", target="hostname")
def pool_autoscale(hostname: str) -> Any:
    """Change the autoscale range of a worker started with ``--autoscale``.

    ``POST /api/v1/workers/celery@w1/pool/autoscale {"max": 10, "min": 2}`` ->
    ``{"action": "autoscale", "max": 10, "min": 2, "replies": {"celery@w1":
    {"ok": "autoscale now max=10 min=2"}}, ...}``
    """
    params = request_params()
    return controller().autoscale(params.get("max"), params.get("min"), hostname)


@actions_api.post("/workers/<anypath:hostname>/pool/restart")
@action("worker.pool_restart", target="hostname")
def pool_restart(hostname: str) -> Any:
    """Restart the pool processes (``{"ok": "reload started"}``; workers need
    ``worker_pool_restarts=True``, the others reply an error with that hint)."""
    return controller().pool_restart(hostname)


@actions_api.post("/workers/<anypath:hostname>/consumers/add")
@action("worker.add_consumer", target="hostname")
def add_consumer(hostname: str) -> Any:
    """Start consuming a queue (``exchange``, ``exchange_type``, ``routing_key`` optional).

    ``POST /api/v1/workers/celery@w1/consumers/add {"queue": "reports"}`` ->
    ``{"action": "add_consumer", "queue": "reports", "replies": {"celery@w1":
    {"ok": "add consumer reports"}}, ...}``
    """
    params = request_params()
    return controller().add_consumer(
        params.get("queue"),
        hostname,
        exchange=params.get("exchange"),
        exchange_type=params.get("exchange_type"),
        routing_key=params.get("routing_key"),
    )


@actions_api.post("/workers/<anypath:hostname>/consumers/cancel")
@action("worker.cancel_consumer", target="hostname")
def cancel_consumer(hostname: str) -> Any:
    """Stop consuming a queue (``{"ok": "no longer consuming from reports"}``)."""
    return controller().cancel_consumer(request_params().get("queue"), hostname)


@actions_api.post("/workers/<anypath:hostname>/shutdown")
@action("worker.shutdown", target="hostname")
def shutdown(hostname: str) -> Any:
    """Warm shutdown (running tasks finish). Workers never reply to it: the
    worker is pinged first, ``{"ok": "shutdown requested"}`` when it answered."""
    return controller().shutdown(hostname)


# -- queues ----------------------------------------------------------------------------
@actions_api.get("/queues/<anypath:queue>")
def queue_depth(queue: str) -> Any:
    """Messages waiting in a queue (what a purge confirmation shows; viewers may ask).

    ``GET /api/v1/queues/celery`` -> ``{"queue": "celery", "depth": 12}``; 404
    for a queue the broker does not have.
    """
    return jsonify(controller().queue_depth(queue))


@actions_api.post("/queues/<anypath:queue>/purge")
@action("queue.purge", target="queue")
def purge(queue: str) -> Any:
    """Delete every message waiting in a queue.

    ``POST /api/v1/queues/celery/purge`` ->
    ``{"queue": "celery", "depth_before": 12, "purged": 12}``
    """
    return controller().purge(queue)


# -- the audit log ---------------------------------------------------------------------
@actions_api.get("/audit")
@require(Role.OPERATOR)
def audit() -> Any:
    """Audit log entries, newest first (operators; open while no user exists).

    ``GET /api/v1/audit?limit=50&before=<id>&action=task.retry&who=alice`` ->
    ``{"entries": [{"id", "at", "who", "role", "via", "action", "target", "addr",
    "ok", "status", "params", "result", "token"}], "next_cursor": "1700000000000-0"}``
    """
    args = request.args
    limit = queries.parse_bounded_int("limit", args.get("limit"), 50, 1, 500)
    before = queries.parse_text("before", args.get("before"))
    try:
        return jsonify(
            audit_log().list(
                limit=limit,
                before=before,
                action=queries.parse_text("action", args.get("action")),
                who=queries.parse_text("who", args.get("who")),
            )
        )
    except ValueError as exc:
        return error(str(exc), 400)


# -- OpenAPI -----------------------------------------------------------------------------
ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "code": {"type": "string"}},
    "required": ["error"],
}


def json_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": ERROR_SCHEMA}},
    }


#: What every action may answer besides its success (see monitor.web.security.action).
ACTION_ERRORS = {
    "400": json_response("a bad parameter (the reason)"),
    "401": json_response("not logged in, wrong credentials or a revoked token"),
    "403": json_response(
        "actions are off (no user configured: how to enable them; read-only), the caller"
        " is not an operator, a session request without its CSRF token, a cross-site request"
    ),
    "429": json_response("too many failed logins for this user or address (Retry-After)"),
    "503": json_response("the broker or Redis is unreachable"),
}


def path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "maxLength": 255},
    }


def body(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return {
        "required": bool(required),
        "content": {
            "application/json": {"schema": schema},
            "application/x-www-form-urlencoded": {"schema": schema},
        },
    }


def operation(
    method: str,
    summary: str,
    tag: str,
    parameters: list[dict[str, Any]],
    responses: dict[str, Any],
    request_body: dict[str, Any] | None = None,
    errors: dict[str, Any] | None = None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "summary": summary,
        "tags": [tag],
        "parameters": parameters,
        "responses": {**(ACTION_ERRORS if errors is None else errors), **responses},
    }
    if request_body is not None:
        entry["requestBody"] = request_body
    return {method: entry}


def _ok(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }


def openapi_paths() -> dict[str, Any]:
    """OpenAPI 3 path entries of this module's endpoints (merged into /api/openapi.json)."""
    task = [path_param("id", "task id")]
    host = [path_param("hostname", "worker hostname")]
    replies = _ok(
        "each worker's reply ({'ok': ...} or {'error': ..., 'hint': ...}) in replies, the"
        " workers that did not answer in timeouts; ok is true when every named worker"
        " replied ok"
    )
    number = {"type": ["number", "string"]}
    count = {"type": ["integer", "string"], "minimum": 1, "maximum": 1024}
    text = {"type": "string", "maxLength": 255}
    seconds = {"type": ["number", "string", "null"], "minimum": 0.001, "maximum": 7 * 24 * 3600}
    reads = {
        "400": json_response("a bad parameter"),
        "401": json_response("this monitor has users: log in first"),
        "429": json_response("too many failed logins for this user or address"),
        "503": json_response("the broker or Redis is unreachable"),
    }
    filter_schema = {
        "type": "object",
        "properties": {
            "state": {"type": ["string", "array"]},
            "name": text,
            "worker": text,
            "since": number,
            "until": number,
        },
    }
    retry_errors = {
        **ACTION_ERRORS,
        "404": json_response("the store does not have the task"),
        "409": json_response("code state (not FAILURE/REVOKED/REJECTED), retried, queue_gone"),
        "422": json_response(
            "code no_body, body_truncated, body_error, not_accepted: the message cannot be"
            " rebuilt faithfully"
        ),
    }
    return {
        "/api/v1/tasks/{id}/revoke": operation(
            "post", "Revoke a task (workers will not run it)", "actions", task, {"200": replies}
        ),
        "/api/v1/tasks/{id}/terminate": operation(
            "post",
            "Revoke a task and signal the process running it",
            "actions",
            task,
            {"200": replies},
            body({"signal": {"type": ["string", "integer"], "enum": [*TERMINATE_SIGNALS]}}),
        ),
        "/api/v1/tasks/{id}/retry": operation(
            "post",
            "Publish a failed, revoked or rejected task again with a new id",
            "actions",
            task,
            {"200": _ok("the new task: id, retry_of, name, queue, exchange, routing_key, by")},
            body({"force": {"type": ["boolean", "string"], "default": False}}),
            retry_errors,
        ),
        "/api/v1/tasks/{id}/actions": operation(
            "get",
            "Which actions the caller may take on a task now, and why not",
            "actions",
            task,
            {
                "200": _ok("revoke, terminate, retry: each {allowed, reason, code}"),
                "404": json_response("the store does not have the task"),
            },
            errors=reads,
        ),
        "/api/v1/bulk": operation(
            "post",
            "Retry or revoke every stored task matching a filter (dry run by default)",
            "actions",
            [
                {
                    "name": "X-Socket-Sid",
                    "in": "header",
                    "required": False,
                    "description": "the Socket.IO connection that receives 'job' progress events",
                    "schema": {"type": "string", "maxLength": 64},
                }
            ],
            {
                "200": _ok(
                    "a dry run: count, complete, sample, skipped, limit; a run: the job"
                    " (job, done, total, finished)"
                ),
                "429": json_response(f"{MAX_RUNNING} bulk runs are in progress already"),
            },
            body(
                {
                    "action": {"type": "string", "enum": ["retry", "revoke"]},
                    "filter": filter_schema,
                    "dry_run": {"type": ["boolean", "string"], "default": True},
                    "limit": {"type": ["integer", "string"], "minimum": 1, "maximum": BULK_LIMIT},
                },
                ["action"],
            ),
        ),
        "/api/v1/jobs/{id}": operation(
            "get",
            "A bulk run's progress (kept 10 minutes after it ends)",
            "actions",
            [path_param("id", "job id")],
            {
                "200": _ok("job, action, by, started, done, total, finished, ok, result, error"),
                "403": json_response("not an operator"),
                "404": json_response("unknown job"),
            },
            errors=reads,
        ),
        "/api/v1/workers/{hostname}/rate-limit": operation(
            "post",
            "Set or remove a task's rate limit",
            "actions",
            host,
            {"200": replies},
            body(
                {"task_name": text, "rate": {"type": ["string", "number", "null"]}},
                ["task_name"],
            ),
        ),
        "/api/v1/workers/{hostname}/time-limit": operation(
            "post",
            "Set a task's soft and hard time limits (seconds)",
            "actions",
            host,
            {"200": replies},
            body({"task_name": text, "soft": seconds, "hard": seconds}, ["task_name"]),
        ),
        "/api/v1/workers/{hostname}/pool/grow": operation(
            "post", "Add pool processes", "actions", host, {"200": replies}, body({"n": count})
        ),
        "/api/v1/workers/{hostname}/pool/shrink": operation(
            "post", "Remove pool processes", "actions", host, {"200": replies}, body({"n": count})
        ),
        "/api/v1/workers/{hostname}/pool/autoscale": operation(
            "post",
            "Change the autoscale range",
            "actions",
            host,
            {"200": replies},
            body({"max": count, "min": {**count, "minimum": 0}}, ["max", "min"]),
        ),
        "/api/v1/workers/{hostname}/pool/restart": operation(
            "post", "Restart the pool processes", "actions", host, {"200": replies}
        ),
        "/api/v1/workers/{hostname}/consumers/add": operation(
            "post",
            "Start consuming a queue",
            "actions",
            host,
            {"200": replies},
            body(
                {
                    "queue": text,
                    "exchange": text,
                    "exchange_type": {
                        "type": "string",
                        "enum": ["direct", "topic", "fanout", "headers"],
                    },
                    "routing_key": text,
                },
                ["queue"],
            ),
        ),
        "/api/v1/workers/{hostname}/consumers/cancel": operation(
            "post",
            "Stop consuming a queue",
            "actions",
            host,
            {"200": replies},
            body({"queue": text}, ["queue"]),
        ),
        "/api/v1/workers/{hostname}/shutdown": operation(
            "post", "Warm shutdown (pinged first)", "actions", host, {"200": replies}
        ),
        "/api/v1/queues/{queue}": operation(
            "get",
            "Messages waiting in a queue",
            "actions",
            [path_param("queue", "queue name")],
            {
                "200": _ok("queue, depth"),
                "404": json_response("the broker has no such queue"),
            },
            errors=reads,
        ),
        "/api/v1/queues/{queue}/purge": operation(
            "post",
            "Delete every message waiting in a queue",
            "actions",
            [path_param("queue", "queue name")],
            {
                "200": _ok("queue, depth_before, purged"),
                "404": json_response("the broker has no such queue"),
            },
        ),
        "/api/v1/audit": operation(
            "get",
            "The audit log, newest first (operators)",
            "actions",
            [
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "description": "entries per page",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                },
                {
                    "name": "before",
                    "in": "query",
                    "required": False,
                    "description": "next_cursor of the previous page (an entry id)",
                    "schema": {"type": "string", "maxLength": 41},
                },
                {
                    "name": "action",
                    "in": "query",
                    "required": False,
                    "description": "only this action (task.retry, worker.pool_grow ...)",
                    "schema": {"type": "string", "maxLength": 1000},
                },
                {
                    "name": "who",
                    "in": "query",
                    "required": False,
                    "description": "only this user",
                    "schema": {"type": "string", "maxLength": 1000},
                },
            ],
            {
                "200": _ok("entries (who, role, via, action, target, params, result, ...),"),
                "403": json_response("not an operator"),
            },
            errors=reads,
        ),
    }
