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

from .. import fastjson
from ..auth import Role
from ..vocabulary import FLOWER_FIELDS, FLOWER_FLOAT_FIELDS, FLOWER_INT_FIELDS
from . import queries, security
from .api import error, get_store, register_converter, register_errors
from .inspect import InspectError
from .queries import OffsetQuery, QueryError
from .visibility import visible_row

logger = logging.getLogger(__name__)

_float = queries.finite_float

flower = Blueprint("monitor_flower", __name__)
register_converter(flower)
register_errors(flower)

#: What a task list reads per task: Flower's attributes ("state" first: a task
#: without one is gone).
_FETCH = ("state", *(f for f in FLOWER_FIELDS if f not in ("uuid", "state")))
#: Without ``limit`` Flower returns every task; we stop at this many (and clamp to it):
#: what this process fetches and encodes well within the request's time budget.
MAX_FLOWER_LIMIT = 5_000
#: Offsets are clamped to this (pages by rank cost O(log N) whatever the offset).
MAX_FLOWER_OFFSET = 10_000_000
FLOWER_SORT_BY = (
    "name",
    "state",
    "received",
    "started",
    "succeeded",
    "runtime",
    "timestamp",
    "worker",
)
_DATE_FORMAT = "%Y-%m-%d %H:%M"


def flower_task(task_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(FLOWER_FIELDS)
    out["uuid"] = task_id
    # Only the fields present: a list of 10,000 tasks goes through here.
    for key, value in fields.items():
        if key not in out or key == "uuid" or value is None:
            continue
        if key in FLOWER_FLOAT_FIELDS:
            number = _float(value)
            # a stored value that is not a finite number stays text
            out[key] = value if number is None else number
        elif key in FLOWER_INT_FIELDS:
            number = _float(value)
            out[key] = value if number is None else int(number)
        else:
            out[key] = value
    return out


def _json(payload: Any) -> Response:
    # Keep insertion order (newest first): jsonify would sort the keys.
    return Response(fastjson.dumps(payload), mimetype="application/json")


def _date_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if not raw:
        return None
    try:
        parsed = datetime.strptime(raw, _DATE_FORMAT)
    except ValueError:
        raise QueryError(f"{name} must look like 2024-01-31 13:45, got {raw[:40]!r}") from None
    # Flower compares with naive local datetimes built from event timestamps.
    try:
        return parsed.timestamp()
    except (OverflowError, OSError, ValueError):  # year 1 or 9999 in some time zones
        raise QueryError(f"{name} is out of range, got {raw[:40]!r}") from None


def _all(value: str | None) -> str | None:
    return None if value in (None, "", "All") else value


@flower.get("/tasks")
def tasks() -> Any:
    """Flower's task list: ``{id: task}`` newest first (or by ``sort_by``).

    ``GET /api/tasks?state=FAILURE&limit=2`` ->
    ``{"9b1c...": {"uuid": "9b1c...", "name": "proj.add", "state": "FAILURE", ...}, ...}``

    ``limit`` is clamped to 1..5,000 (absent or below 1: 5,000) and ``offset``
    to 0..10,000,000. Filters the indexes answer (one of state, taskname,
    workername, or several states) page by rank whatever the offset; others
    (two of them, search, received range) scan newest-first within the scan
    budget and return fewer rows when it runs out (Flower's shape has no cursor).
    ``sort_by`` sorts the newest 10,000 matching tasks. Any page also stops at
    0.8 s of server time or 8 MiB of values (fewer rows).
    """
    store = get_store()
    see = security.can_see_args()
    limit = queries.clamp_int(
        "limit", request.args.get("limit"), MAX_FLOWER_LIMIT, 0, MAX_FLOWER_LIMIT
    )
    sort_by = request.args.get("sort_by") or None
    desc = False
    if sort_by:
        desc = sort_by.startswith("-")
        sort_by = sort_by.lstrip("-")
        if sort_by not in FLOWER_SORT_BY:
            raise QueryError(f"sort_by must be one of {', '.join(FLOWER_SORT_BY)}")
    query = OffsetQuery(
        states=queries.parse_states(_all(request.args.get("state"))),
        name=queries.parse_key_part("taskname", _all(request.args.get("taskname"))),
        worker=queries.parse_key_part("workername", _all(request.args.get("workername"))),
        received_start=_date_arg("received_start"),
        received_end=_date_arg("received_end"),
        search=queries.parse_text("search", request.args.get("search")),
        sort_by=sort_by,
        desc=desc,
        offset=queries.clamp_int("offset", request.args.get("offset"), 0, 0, MAX_FLOWER_OFFSET),
        limit=limit or MAX_FLOWER_LIMIT,
    )
    # Encoded a chunk of rows at a time: the page's rows are never all held as dicts.
    parts = [
        fastjson.dumps({row["id"]: flower_task(row["id"], visible_row(row, see)) for row in rows})[
            1:-1
        ]
        for rows in queries.offset_page(store, query, _FETCH)
        if rows
    ]
    return Response(b"{" + b",".join(parts) + b"}", mimetype="application/json")


@flower.get("/task/info/<anypath:task_id>")
def task_info(task_id: str) -> Any:
    store = get_store()
    fields = queries.task_fields(store, task_id)
    if not fields:
        return error(f"Unknown task '{task_id}'", 404)
    info = flower_task(task_id, visible_row(fields, security.can_see_args()))
    info["task-id"] = task_id
    info["children"] = queries.task_children(store, task_id)
    return _json(info)


@flower.get("/task/types")
def task_types() -> Any:
    return _json({"task-types": sorted(queries.task_names(get_store()))})


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
    """Flower's workers: ``{hostname: info}``.

    ``GET /api/workers?refresh=1`` -> ``{"celery@w1": {"registered": [...],
    "stats": {...}, "active_queues": [...], "conf": {...}, "status": true, ...}}``

    ``refresh=1`` broadcasts Celery's inspect (one set of broadcasts at a time
    in this process; a refresh of the last few seconds is reused).
    """
    store = get_store()
    inspector = current_app.extensions["monitor"].inspector
    workername = queries.parse_key_part("workername", request.args.get("workername"))
    # An unknown worker is refused before asking anyone: no broadcast per made-up name.
    found = [store.worker(workername)] if workername else store.workers()
    if workername and found[0] is None:
        return error(f"Unknown worker '{workername}'", 404)
    if _truthy("refresh"):
        # Broadcasts reach every worker: an operator's call once users exist
        # (without users they stay open, bounded by the inspector).
        try:
            security.check_role(Role.OPERATOR)
        except security.Denied as exc:
            return security.denied_response(exc)
        try:
            # Replies from the workers known online end each broadcast early.
            inspector.refresh(workername, expected=sum(1 for w in found if w["online"]))
        except InspectError as exc:
            return error(f"Failed to update workers: {exc}", 503)
    if _truthy("status"):
        return _json({w["hostname"]: bool(w["online"]) for w in found})
    return _json({w["hostname"]: flower_worker(w, inspector.cached(w["hostname"])) for w in found})
