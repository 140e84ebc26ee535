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
from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from .. import fastjson, lost
from ..store import Store
from . import queries, security
from .queries import QueryError
from .visibility import visible_row

logger = logging.getLogger(__name__)

api = Blueprint("monitor_api", __name__)


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


@api.get("/tasks")
def list_tasks() -> Any:
    query = queries.parse_query(request.args)
    flag = lost.parse_flag(request.args.get("flag"))
    store = get_store()
    if flag:  # lost / stuck: a bounded scan of the RECEIVED/STARTED indexes
        page = lost.flagged_page(store, query, flag)
    else:
        page = queries.list_tasks(store, query)
        lost.annotate(store, page["tasks"])
    if any(row.get("state") in lost.RECONCILE_STATES for row in page["tasks"]):
        # on a Redis broker: which will be redelivered, or run twice (a read cached 5 s)
        ext = current_app.extensions["monitor"]
        confs = lost.worker_confs(ext.inspector)
        report = lost.broker_report(store, ext.inspector.app, confs, with_risks=False)
        lost.mark_broker(page["tasks"], report)
    if not security.can_see_args():
        page["tasks"] = [visible_row(row, False) for row in page["tasks"]]
    # orjson: a page of 1,000 rows encodes in a fraction of the stdlib's time,
    # one slice of this process during which no other request runs.
    body = fastjson.dumps(page)
    return Response(body, mimetype="application/json")


@api.get("/tasks/<anypath:task_id>")
def get_task(task_id: str) -> Any:
    task = queries.task_detail(get_store(), task_id, security.can_see_args())
    if task is None:
        return error(f"unknown task {task_id!r}", 404)
    if task.get("state") in lost.RECONCILE_STATES:  # not final: may the broker repeat it?
        ext = current_app.extensions["monitor"]
        confs = lost.worker_confs(ext.inspector)
        report = lost.broker_report(ext.store, ext.inspector.app, confs, with_risks=False)
        task["broker"] = lost.task_broker_flags(report, task_id)
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
        "minutes", request.args.get("minutes"), 60, 1, queries.MAX_STATS_MINUTES
    )
    return jsonify(queries.stats(get_store(), minutes))
