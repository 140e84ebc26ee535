"""REST API ``/api/v1/...``: tasks, task detail, task names, workers, stats.

JSON in, JSON out; errors are ``{"error": message}`` with 400 for a bad
parameter and 404 for an unknown task or worker. Handlers only validate and
shape: the Redis work is in :mod:`monitor.web.queries` and :class:`~monitor.store.Store`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import redis
from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from .. import fastjson
from ..store import Store
from . import queries, security
from .queries import QueryError
from .visibility import visible_row, visible_task

logger = logging.getLogger(__name__)

api = Blueprint("monitor_api", __name__)

#: Children whose rows are inlined in a task's detail (more are listed by id only).
MAX_CHILD_ROWS = 200
MAX_STATS_MINUTES = 24 * 60
#: Minutes of counters read per round trip.
STATS_WINDOW = 60
#: Counter fields one stats request reads at most (a day with many task names).
STATS_FIELDS_BUDGET = 200_000


def get_store() -> Store:
    return current_app.extensions["monitor"].store


def error(message: str, status: int) -> Any:
    response = jsonify({"error": message})
    response.status_code = status
    return response


def check_request() -> None:
    """What every API request must satisfy before its handler parses it (400 otherwise).

    A parameter given twice is refused (which one would count?), and so is
    any value longer than MAX_TEXT or an id / hostname in the path longer
    than the store can hold; each handler then validates its own parameters.
    """
    for name, values in request.args.lists():
        if len(values) > 1:
            raise QueryError(f"parameter {name[:40]!r} is given more than once")
        if len(name) > queries.MAX_TEXT or len(values[0]) > queries.MAX_TEXT:
            raise QueryError(
                f"parameter {name[:40]!r} is too long ({queries.MAX_TEXT} characters at most)"
            )
    for name, value in (request.view_args or {}).items():
        queries.parse_key_part(name, value)


def register_errors(bp: Blueprint) -> None:
    """Request checks, JSON errors and a Server-Timing header for every API blueprint
    (pages keep HTML errors)."""

    @bp.before_request
    def _check() -> None:
        g.monitor_started = time.perf_counter()
        queries.request_started()
        check_request()

    @bp.teardown_request
    def _done(_exc: BaseException | None) -> None:
        if g.pop("monitor_started", None) is not None:
            queries.request_finished()

    @bp.after_request
    def _timing(response: Response) -> Response:
        started = g.get("monitor_started")
        if started is not None:
            elapsed = (time.perf_counter() - started) * 1000
            response.headers["Server-Timing"] = f"app;dur={elapsed:.1f}"
        return response

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


class AnyPath(PathConverter):
    """Werkzeug's ``path`` converter, newlines included: a task id or a hostname is
    any text, and one with a newline must reach the handler (a JSON 404 or the
    task), not fall through to the host app's HTML 404."""

    regex = r"[^/](?s:.)*?"


def register_converter(bp: Blueprint) -> None:
    """Make ``<anypath:...>`` known to the app before ``bp``'s rules are added."""
    bp.record_once(lambda state: state.app.url_map.converters.setdefault("anypath", AnyPath))


register_converter(api)
register_errors(api)


def task_detail(store: Store, task_id: str, can_see_args: bool = True) -> dict[str, Any] | None:
    """GET /api/v1/tasks/<id> body (also pushed to a task room), as a caller who
    may (or may not) see arguments and results sees it (monitor.web.visibility;
    the republish payload is never shown)."""
    task = store.get_task(task_id)
    if task is None:
        return None
    children = task.get("children") or []
    if children and len(children) <= MAX_CHILD_ROWS:
        task["children_rows"] = store.get_tasks(children)
    # Is the worker that has (or had) this task alive, by Celery's heartbeat
    # rule? A RECEIVED/STARTED task on an offline worker may be lost: the page
    # says so instead of showing it as running. None: no worker known.
    worker = store.worker(task["worker"]) if task.get("worker") else None
    task["worker_online"] = worker["online"] if worker is not None else None
    return visible_task(task, can_see_args)


def _minute_windows(
    store: Store, minutes: int, now: float, budget: queries.Budget
) -> Iterator[dict[str, Any]]:
    """Per-minute counters, newest hour first, an hour per round trip, within the budget.

    A day is 1,440 hashes, each with a few fields per task name: read at once it
    would be one long slice of this process (and, with many names, a lot of
    memory). Stops after STATS_FIELDS_BUDGET fields or the request's time.
    """
    last = int(now // 60)
    first = last - minutes + 1
    fields = 0
    while last >= first:
        n = min(STATS_WINDOW, last - first + 1)
        window = store.minute_stats(n, last * 60.0)
        for entry in reversed(window):
            fields += len(entry["counters"])
            yield entry
        last -= n
        queries.pause()
        if last >= first and (fields >= STATS_FIELDS_BUDGET or budget.time_over()):
            budget.cut = True
            return


def _count(value: Any) -> float:
    number = queries.finite_float(value)
    return 0.0 if number is None else number


def stats(store: Store, minutes: int = 60, now: float | None = None) -> dict[str, Any]:
    """GET /api/v1/stats body (also the "overview" push).

    ``partial`` is true when the per-minute counters were too many to read
    within the request's budget: ``minutes`` then starts later than asked.
    """
    now = time.time() if now is None else now
    budget = queries.Budget()
    per_minute = []
    runtime_sum: dict[str, float] = {}
    runtime_count: dict[str, int] = {}
    failures: dict[str, int] = {}
    for entry in _minute_windows(store, minutes, now, budget):
        row: dict[str, Any] = {"minute": entry["minute"]}
        for field, value in entry["counters"].items():
            if field.startswith("state:"):
                row[_state_key(field[6:])] = int(_count(value))
            elif field.startswith("rtsum:"):
                name = field[6:]
                runtime_sum[name] = runtime_sum.get(name, 0.0) + _count(value)
            elif field.startswith("rtcnt:"):
                name = field[6:]
                runtime_count[name] = runtime_count.get(name, 0) + int(_count(value))
            elif field.startswith("name:") and field.endswith(":FAILURE"):
                name = field[5:-8]
                failures[name] = failures.get(name, 0) + int(_count(value))
        for key in ("received", "started", "succeeded", "failed", "retried"):
            row.setdefault(key, 0)
        per_minute.append(row)
    per_minute.reverse()  # oldest first
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
        "partial": budget.cut,
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
    page = queries.list_tasks(get_store(), query)
    if not security.can_see_args():
        page["tasks"] = [visible_row(row, False) for row in page["tasks"]]
    # orjson: a page of 1,000 rows encodes in a fraction of the stdlib's time,
    # one slice of this process during which no other request runs.
    body = fastjson.dumps(page)
    return Response(body, mimetype="application/json")


@api.get("/tasks/<anypath:task_id>")
def get_task(task_id: str) -> Any:
    task = task_detail(get_store(), task_id, security.can_see_args())
    if task is None:
        return error(f"unknown task {task_id!r}", 404)
    return jsonify(task)


@api.get("/task-names")
def task_names() -> Any:
    return jsonify({"names": queries.task_names(get_store())})


@api.get("/workers")
def workers() -> Any:
    return jsonify({"workers": get_store().workers()})


@api.get("/workers/<anypath:hostname>")
def worker(hostname: str) -> Any:
    store = get_store()
    info = store.worker(hostname)
    if info is None:
        return error(f"unknown worker {hostname!r}", 404)
    return jsonify({"worker": info, "tasks": queries.worker_tasks(store, hostname)})


@api.get("/stats")
def get_stats() -> Any:
    minutes = queries.parse_bounded_int(
        "minutes", request.args.get("minutes"), 60, 1, MAX_STATS_MINUTES
    )
    return jsonify(stats(get_store(), minutes))
