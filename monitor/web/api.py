"""REST API ``/api/v1/...``: tasks, task detail, task names, workers, stats.

JSON in, JSON out; errors are ``{"error": message}`` with 400 for a bad
parameter and 404 for an unknown task or worker. Handlers only validate and
shape: the Redis work is in :mod:`monitor.web.queries` and :class:`~monitor.store.Store`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from ..store import Store
from . import queries
from .queries import QueryError

logger = logging.getLogger(__name__)

api = Blueprint("monitor_api", __name__)

#: Children whose rows are inlined in a task's detail (more are listed by id only).
MAX_CHILD_ROWS = 200
MAX_STATS_MINUTES = 24 * 60


def get_store() -> Store:
    return current_app.extensions["monitor"].store


def error(message: str, status: int) -> Any:
    response = jsonify({"error": message})
    response.status_code = status
    return response


def register_errors(bp: Blueprint) -> None:
    """JSON errors for every API blueprint (pages keep HTML errors)."""

    @bp.errorhandler(QueryError)
    def _bad_query(exc: QueryError) -> Any:
        return error(str(exc), 400)

    @bp.errorhandler(redis.RedisError)
    def _redis_down(exc: redis.RedisError) -> Any:
        logger.warning("API request failed, Redis unavailable: %s", exc)
        return error(f"Redis unavailable: {exc.__class__.__name__}", 503)

    @bp.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        return error(exc.description or exc.name, exc.code or 500)


register_errors(api)


def task_detail(store: Store, task_id: str) -> dict[str, Any] | None:
    """GET /api/v1/tasks/<id> body (also pushed to a task room)."""
    task = store.get_task(task_id)
    if task is None:
        return None
    children = task.get("children") or []
    if children and len(children) <= MAX_CHILD_ROWS:
        task["children_rows"] = store.get_tasks(children)
    return task


def stats(store: Store, minutes: int = 60, now: float | None = None) -> dict[str, Any]:
    """GET /api/v1/stats body (also the "overview" push)."""
    now = time.time() if now is None else now
    per_minute = []
    runtime_sum: dict[str, float] = {}
    runtime_count: dict[str, int] = {}
    failures: dict[str, int] = {}
    for entry in store.minute_stats(minutes, now):
        row: dict[str, Any] = {"minute": entry["minute"]}
        for field, value in entry["counters"].items():
            if field.startswith("state:"):
                row[_state_key(field[6:])] = int(float(value))
            elif field.startswith("rtsum:"):
                name = field[6:]
                runtime_sum[name] = runtime_sum.get(name, 0.0) + float(value)
            elif field.startswith("rtcnt:"):
                name = field[6:]
                runtime_count[name] = runtime_count.get(name, 0) + int(float(value))
            elif field.startswith("name:") and field.endswith(":FAILURE"):
                name = field[5:-8]
                failures[name] = failures.get(name, 0) + int(float(value))
        for key in ("received", "started", "succeeded", "failed", "retried"):
            row.setdefault(key, 0)
        per_minute.append(row)
    slowest = sorted(
        (
            {"name": n, "avg_runtime": runtime_sum[n] / c, "count": c}
            for n, c in runtime_count.items()
            if c and n in runtime_sum
        ),
        key=lambda r: r["avg_runtime"],
        reverse=True,
    )[:10]
    failing = sorted(
        ({"name": n, "failures": f} for n, f in failures.items() if f),
        key=lambda r: r["failures"],
        reverse=True,
    )[:10]
    workers = store.workers(now)
    online = sum(1 for w in workers if w["online"])
    meta = store.meta()
    return {
        "counts": store.state_counts(),
        "workers": {"online": online, "offline": len(workers) - online},
        "minutes": per_minute,
        "slowest": slowest,
        "failing": failing,
        "dropped": {k[8:]: v for k, v in meta.items() if k.startswith("dropped:")},
        "malformed": sum(v for k, v in meta.items() if k.startswith("malformed")),
    }


_STATE_NAMES = {
    "SUCCESS": "succeeded",
    "FAILURE": "failed",
    "RETRY": "retried",
    "RECEIVED": "received",
    "STARTED": "started",
    "REVOKED": "revoked",
    "PENDING": "sent",
    "REJECTED": "rejected",
}


def _state_key(state: str) -> str:
    return _STATE_NAMES.get(state, state.lower())


@api.get("/tasks")
def list_tasks() -> Any:
    query = queries.parse_query(request.args)
    return jsonify(queries.list_tasks(get_store(), query))


@api.get("/tasks/<path:task_id>")
def get_task(task_id: str) -> Any:
    task = task_detail(get_store(), task_id)
    if task is None:
        return error(f"unknown task {task_id!r}", 404)
    return jsonify(task)


@api.get("/task-names")
def task_names() -> Any:
    return jsonify({"names": get_store().task_names()})


@api.get("/workers")
def workers() -> Any:
    return jsonify({"workers": get_store().workers()})


@api.get("/workers/<path:hostname>")
def worker(hostname: str) -> Any:
    store = get_store()
    info = store.worker(hostname)
    if info is None:
        return error(f"unknown worker {hostname!r}", 404)
    return jsonify({"worker": info, "tasks": queries.worker_tasks(store, hostname)})


@api.get("/stats")
def get_stats() -> Any:
    raw = request.args.get("minutes", "60")
    try:
        minutes = int(raw)
    except ValueError:
        raise QueryError(f"minutes must be an integer, got {raw!r}") from None
    if not 1 <= minutes <= MAX_STATS_MINUTES:
        raise QueryError(f"minutes must be between 1 and {MAX_STATS_MINUTES}")
    return jsonify(stats(get_store(), minutes))
