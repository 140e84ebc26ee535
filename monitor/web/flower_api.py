"""Flower-compatible read API: /api/tasks, /api/task/info/<id>, /api/workers, /api/task/types.

Same parameters and response shapes as Flower 2.x so that scripts written
against Flower keep working: tasks are a JSON object id -> task (newest first),
every Flower task attribute present (``null`` when unknown), numbers as numbers.
Workers: what heartbeats and signals recorded, overlaid with the replies of
Celery's ``inspect`` broadcasts (registered tasks, full stats, conf, queues;
task lists for a named worker) once ``refresh=1`` has asked for them, as in
Flower (see :mod:`monitor.web.inspect`).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, current_app, request

from ..store import LIST_FIELDS
from . import queries
from .api import error, get_store, register_errors
from .inspect import InspectError
from .queries import IndexWalk, QueryError, TaskQuery

logger = logging.getLogger(__name__)

flower = Blueprint("monitor_flower", __name__)
register_errors(flower)

#: Flower's Task.as_dict() attributes, in its order.
FLOWER_FIELDS = (
    "uuid",
    "name",
    "state",
    "received",
    "sent",
    "started",
    "rejected",
    "succeeded",
    "failed",
    "retried",
    "revoked",
    "args",
    "kwargs",
    "eta",
    "expires",
    "retries",
    "worker",
    "result",
    "exception",
    "timestamp",
    "runtime",
    "traceback",
    "exchange",
    "routing_key",
    "clock",
    "client",
    "root_id",
    "parent_id",
)
_FLOAT_FIELDS = frozenset(
    {
        "received",
        "sent",
        "started",
        "rejected",
        "succeeded",
        "failed",
        "retried",
        "revoked",
        "timestamp",
        "runtime",
    }
)
_INT_FIELDS = frozenset({"retries", "clock"})
_FETCH = tuple(
    dict.fromkeys((*LIST_FIELDS, "traceback", "exchange", "routing_key", "clock", "client"))
)
#: Without ``limit`` Flower returns every task; we stop at this many.
DEFAULT_FLOWER_LIMIT = 10_000
_SORT_BY = ("name", "state", "received", "started", "succeeded", "runtime", "timestamp", "worker")
_DATE_FORMAT = "%Y-%m-%d %H:%M"


def flower_task(task_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in FLOWER_FIELDS:
        value = task_id if key == "uuid" else fields.get(key)
        if value is not None and key in _FLOAT_FIELDS:
            try:
                value = float(value)
            except (TypeError, ValueError):
                pass
        elif value is not None and key in _INT_FIELDS:
            try:
                value = int(float(value))
            except (TypeError, ValueError):
                pass
        out[key] = value
    return out


def _json(payload: Any) -> Response:
    # Keep insertion order (newest first): jsonify would sort the keys.
    return Response(json.dumps(payload, ensure_ascii=False), mimetype="application/json")


def _int_arg(name: str, default: int | None) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise QueryError(f"{name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise QueryError(f"{name} must be >= 0")
    return value


def _date_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if not raw:
        return None
    try:
        parsed = datetime.strptime(raw, _DATE_FORMAT)
    except ValueError:
        raise QueryError(f"{name} must look like 2024-01-31 13:45, got {raw!r}") from None
    # Flower compares with naive local datetimes built from event timestamps.
    return parsed.timestamp()


def _all(value: str | None) -> str | None:
    return None if value in (None, "", "All") else value


@flower.get("/tasks")
def tasks() -> Any:
    store = get_store()
    limit = _int_arg("limit", None) or DEFAULT_FLOWER_LIMIT
    limit = min(limit, DEFAULT_FLOWER_LIMIT)
    offset = _int_arg("offset", 0) or 0
    sort_by = request.args.get("sort_by") or None
    desc = False
    if sort_by:
        desc = sort_by.startswith("-")
        sort_by = sort_by.lstrip("-")
        if sort_by not in _SORT_BY:
            raise QueryError(f"sort_by must be one of {', '.join(_SORT_BY)}")
    received_start = _date_arg("received_start")
    received_end = _date_arg("received_end")
    search = (request.args.get("search") or "").strip().lower() or None
    query = TaskQuery(
        states=queries.parse_states(_all(request.args.get("state"))),
        name=_all(request.args.get("taskname")),
        worker=_all(request.args.get("workername")),
        # A task's index score is its last update, never before it was received.
        since=received_start,
    )
    key = queries._index_for(store, query)
    predicate = (
        queries._needs_predicate(query, key, store) or received_start or received_end or search
    )
    wanted = (SORT_LIMIT if sort_by else offset + limit) if predicate or sort_by else limit
    if not predicate and not sort_by:
        # Fast path: one range read at the offset, one pipelined fetch.
        ids = store.redis.zrevrange(key, offset, offset + limit - 1)
        rows = store.get_tasks(ids, _FETCH)
    else:
        rows = _scan(store, query, key, wanted, received_start, received_end, search)
        if sort_by:
            rows.sort(key=lambda r: queries._sort_value(r, sort_by), reverse=desc)
        rows = rows[offset : offset + limit]
    return _json({row["id"]: flower_task(row["id"], row) for row in rows})


SORT_LIMIT = queries.SORT_LIMIT


def _scan(
    store: Any,
    query: TaskQuery,
    key: str,
    wanted: int,
    received_start: float | None,
    received_end: float | None,
    search: str | None,
) -> list[dict[str, Any]]:
    walk = IndexWalk(store, key, True, query.since, None, None)
    rows: list[dict[str, Any]] = []
    scanned = 0
    for batch in walk.batches():
        for row in store.get_tasks([task_id for task_id, _ in batch], _FETCH):
            if not queries._matches_filters(
                query, row.get("state"), row.get("name"), row.get("worker")
            ):
                continue
            received = _float(row.get("received"))
            if received_start is not None and (received is None or received < received_start):
                continue
            if received_end is not None and (received is None or received > received_end):
                continue
            if search and not _search_hit(row, search):
                continue
            rows.append(row)
            if len(rows) >= wanted:
                return rows
        scanned += len(batch)
        if scanned >= queries.SCAN_BUDGET * 4:
            break
    return rows


def _search_hit(row: dict[str, Any], needle: str) -> bool:
    return any(
        needle in str(row.get(f) or "").lower()
        for f in ("id", "name", "args", "kwargs", "result", "exception")
    )


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


@flower.get("/task/info/<path:task_id>")
def task_info(task_id: str) -> Any:
    store = get_store()
    fields = store.redis.hgetall(store.keys.task(task_id))
    if not fields:
        return error(f"Unknown task '{task_id}'", 404)
    info = flower_task(task_id, fields)
    info["task-id"] = task_id
    info["children"] = sorted(store.redis.smembers(store.keys.children(task_id)))
    return _json(info)


@flower.get("/task/types")
def task_types() -> Any:
    return _json({"task-types": sorted(get_store().task_names())})


def flower_worker(
    worker: dict[str, Any], inspected: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Flower's worker shape from the stored record, then the inspect replies on top."""

    def loads(text: Any, default: Any) -> Any:
        try:
            return json.loads(text) if text else default
        except (TypeError, ValueError):
            return default

    queues = loads(worker.get("queues"), [])
    concurrency = _float(worker.get("concurrency"))
    return {
        "active_queues": [{"name": q} for q in queues if isinstance(q, str)],
        "registered": [],
        "scheduled": [],
        "active": [],
        "reserved": [],
        "revoked": [],
        "conf": {},
        "stats": {
            "pid": _float(worker.get("pid")),
            "pool": {
                "implementation": worker.get("pool"),
                "max-concurrency": int(concurrency) if concurrency else None,
            },
            "total": {},
            "sw_ident": worker.get("sw_ident"),
            "sw_ver": worker.get("sw_ver"),
            "sw_sys": worker.get("sw_sys"),
            "loadavg": loads(worker.get("loadavg"), None),
            "processed": _float(worker.get("processed")),
        },
        "timestamp": _float(worker.get("last_heartbeat")),
        "status": worker.get("online", False),
    } | (inspected or {})


def _truthy(name: str) -> bool:
    return (request.args.get(name) or "").lower() in ("1", "true", "yes", "on")


@flower.get("/workers")
def workers() -> Any:
    store = get_store()
    inspector = current_app.extensions["monitor"].inspector
    workername = request.args.get("workername") or None
    if _truthy("refresh"):
        try:
            inspector.refresh(workername)
        except InspectError as exc:
            return error(f"Failed to update workers: {exc}", 503)
    if workername:
        worker = store.worker(workername)
        if worker is None:
            return error(f"Unknown worker '{workername}'", 404)
        found = [worker]
    else:
        found = store.workers()
    if _truthy("status"):
        return _json({w["hostname"]: bool(w["online"]) for w in found})
    return _json({w["hostname"]: flower_worker(w, inspector.cached(w["hostname"])) for w in found})
