"""``/api/openapi.json``: the OpenAPI 3 description of every HTTP endpoint."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, current_app, jsonify

from .. import __version__
from ..lost import FLAGS
from ..store import MAX_KEY_PART
from ..vocabulary import LIST_FIELDS, SORT_FIELDS
from .flower_api import FLOWER_SORT_BY, MAX_FLOWER_LIMIT, MAX_FLOWER_OFFSET
from .inspect import REFRESH_REUSE, REFRESH_WAIT
from .queries import (
    DEFAULT_LIMIT,
    MAX_EPOCH,
    MAX_LIMIT,
    MAX_NAMES,
    MAX_STATES,
    MAX_STATS_MINUTES,
    MAX_TEXT,
    SCAN_BUDGET,
    SCAN_SECONDS,
    SORT_LIMIT,
)

logger = logging.getLogger(__name__)

openapi_bp = Blueprint("monitor_openapi", __name__)


def _param(
    name: str,
    description: str,
    schema: dict[str, Any] | None = None,
    where: str = "query",
    required: bool = False,
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": schema or {"type": "string"},
    }


_ERROR = {
    "description": "bad parameter",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_UNAVAILABLE = {
    "description": "Redis is unavailable",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_NOT_FOUND = {
    "description": "unknown id",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or {"type": "object"}}},
    }


def _get(
    summary: str, parameters: list[dict[str, Any]], responses: dict[str, Any], tag: str
) -> dict[str, Any]:
    return {
        "get": {"summary": summary, "tags": [tag], "parameters": parameters, "responses": responses}
    }


def _text(max_length: int = MAX_TEXT, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length, **extra}


def spec(prefix: str = "") -> dict[str, Any]:
    row = {"$ref": "#/components/schemas/Row"}
    key_part = _text(MAX_KEY_PART)
    epoch = {"type": "number", "minimum": 0, "maximum": MAX_EPOCH}
    task_filters = [
        _param(
            "state",
            f"task state, or up to {MAX_STATES} separated by commas (SUCCESS,FAILURE),"
            " served from the state indexes",
            _text(),
        ),
        _param("name", "task name", key_part),
        _param("worker", "worker hostname", key_part),
        _param("since", "updated at or after (epoch seconds)", epoch),
        _param("until", "updated at or before (epoch seconds)", epoch),
        _param(
            "q",
            "text in id/args/kwargs/result/exception: a newest-first scan of at most"
            f" {SCAN_BUDGET:,} tasks or {SCAN_SECONDS} s; next_cursor continues it",
            _text(),
        ),
        _param(
            "sort",
            f"sort field; other than updated: in memory, 400 above {SORT_LIMIT:,} matching tasks",
            {"type": "string", "enum": list(SORT_FIELDS), "default": "updated"},
        ),
        _param(
            "order", "sort order", {"type": "string", "enum": ["desc", "asc"], "default": "desc"}
        ),
        _param(
            "limit",
            "rows per page",
            {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        ),
        _param("cursor", "next_cursor of the previous page", _text(64)),
    ]
    task_id = [_param("id", "task id", key_part, where="path")]
    hostname = [_param("hostname", "worker hostname", key_part, where="path")]
    date = _text(16, pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}$")
    paths = {
        "/api/v1/tasks": _get(
            "Tasks, newest first, filtered and paged",
            [
                *task_filters,
                _param(
                    "flag",
                    "lost: RECEIVED/STARTED on a worker that is offline; stuck: STARTED past"
                    " its time limit or far past its name's p99 (monitor.lost). A newest-first"
                    " scan of the RECEIVED/STARTED indexes within the scan budget; not with"
                    " sort or q",
                    {"type": "string", "enum": list(FLAGS)},
                ),
            ],
            {
                "200": _ok(
                    "a page; total is null when the indexes cannot count the filters"
                    " exactly; a scan that ran out of budget returns fewer rows and a"
                    " next_cursor to continue",
                    {
                        "type": "object",
                        "properties": {
                            "tasks": {"type": "array", "items": row},
                            "total": {"type": ["integer", "null"]},
                            "next_cursor": {"type": ["string", "null"]},
                            "scanned": {"type": "integer"},
                        },
                        "required": ["tasks", "total", "next_cursor"],
                    },
                ),
                "400": _ERROR,
                "503": _UNAVAILABLE,
            },
            "tasks",
        ),
        "/api/v1/tasks/{id}": _get(
            "One task with its timeline, children and group",
            task_id,
            {"200": _ok("the task"), "400": _ERROR, "404": _NOT_FOUND, "503": _UNAVAILABLE},
            "tasks",
        ),
        "/api/v1/task-names": _get(
            f"Task names seen, most recent first (at most {MAX_NAMES:,})",
            [],
            {
                "200": _ok(
                    "names",
                    {
                        "type": "object",
                        "properties": {"names": {"type": "array", "items": {"type": "string"}}},
                    },
                ),
                "400": _ERROR,
                "503": _UNAVAILABLE,
            },
            "tasks",
        ),
        "/api/v1/workers": _get(
            "Workers with online/offline status",
            [],
            {"200": _ok("workers"), "400": _ERROR, "503": _UNAVAILABLE},
            "workers",
        ),
        "/api/v1/workers/{hostname}": _get(
            "One worker and its newest 100 tasks",
            hostname,
            {"200": _ok("the worker"), "400": _ERROR, "404": _NOT_FOUND, "503": _UNAVAILABLE},
            "workers",
        ),
        "/api/v1/stats": _get(
            "Counts per state, workers, per-minute counters, slowest and failing names",
            [
                _param(
                    "minutes",
                    "minutes of history",
                    {"type": "integer", "minimum": 1, "maximum": MAX_STATS_MINUTES, "default": 60},
                )
            ],
            {"200": _ok("statistics"), "400": _ERROR, "503": _UNAVAILABLE},
            "stats",
        ),
        "/api/tasks": _get(
            "Flower-compatible task list (object id -> task)",
            [
                _param(
                    "limit",
                    f"maximum number of tasks, clamped to 1..{MAX_FLOWER_LIMIT:,}"
                    f" (absent or below 1: {MAX_FLOWER_LIMIT:,})",
                    {"type": "integer"},
                ),
                _param(
                    "offset",
                    f"skip the first n tasks, clamped to 0..{MAX_FLOWER_OFFSET:,}",
                    {"type": "integer"},
                ),
                _param(
                    "sort_by",
                    f"sort the newest {SORT_LIMIT:,} matching tasks by this field"
                    " (prefix - for descending)",
                    {
                        "type": "string",
                        "enum": [*FLOWER_SORT_BY, *(f"-{f}" for f in FLOWER_SORT_BY)],
                    },
                ),
                _param("workername", "worker hostname", key_part),
                _param("taskname", "task name", key_part),
                _param("state", "task state, or several separated by commas", _text()),
                _param("received_start", "received after (%Y-%m-%d %H:%M, local time)", date),
                _param("received_end", "received before (%Y-%m-%d %H:%M, local time)", date),
                _param(
                    "search",
                    "text in id/name/args/kwargs/result/exception",
                    _text(),
                ),
            ],
            {
                "200": _ok(
                    "tasks by id. Two filters together, search or a received range scan"
                    f" newest-first at most {SCAN_BUDGET:,} tasks or {SCAN_SECONDS} s: a scan"
                    " that runs out returns fewer tasks (this shape has no cursor)"
                ),
                "400": _ERROR,
                "503": _UNAVAILABLE,
            },
            "flower",
        ),
        "/api/task/info/{id}": _get(
            "Flower-compatible task info",
            task_id,
            {"200": _ok("the task"), "400": _ERROR, "404": _NOT_FOUND, "503": _UNAVAILABLE},
            "flower",
        ),
        "/api/task/types": _get(
            "Flower-compatible task types",
            [],
            {"200": _ok('{"task-types": [...]}'), "400": _ERROR, "503": _UNAVAILABLE},
            "flower",
        ),
        "/api/workers": _get(
            "Flower-compatible workers (object hostname -> info)",
            [
                _param("workername", "only this worker", key_part),
                _param(
                    "status",
                    "only online status (true/false per worker); 1/true/yes/on",
                    {"type": "boolean"},
                ),
                _param(
                    "refresh",
                    "ask the workers now (Celery inspect: stats, active_queues, registered,"
                    " conf; with workername also active, scheduled, reserved, revoked);"
                    " replies are cached for later requests. One set of broadcasts at a"
                    f" time; a refresh of the last {REFRESH_REUSE:g} s is reused; a request"
                    f" waits at most {REFRESH_WAIT:g} s, then answers with the replies so far",
                    {"type": "boolean"},
                ),
            ],
            {
                "200": _ok("workers by hostname"),
                "400": _ERROR,
                "404": _NOT_FOUND,
                "503": _ok("the broker (or Redis) is unreachable: {error}"),
            },
            "flower",
        ),
        "/api/v1/me": _get(
            "Who you are: user, whether you may act (and why not), your CSRF token",
            [],
            {"200": _ok("{user, can_act, actions_refusal, csrf_token}")},
            "meta",
        ),
        "/api/openapi.json": _get("This document", [], {"200": _ok("OpenAPI 3 document")}, "meta"),
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "tags": ["meta"],
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    # The action endpoints document themselves (monitor.web.actions_api, flower_control).
    from .actions_api import openapi_paths as action_paths
    from .alerts_api import alerts_paths
    from .flower_control import openapi_paths as flower_control_paths
    from .history_api import history_paths
    from .task_names_api import openapi_paths as task_name_paths

    paths.update(action_paths())
    paths.update(flower_control_paths())
    paths.update(history_paths())
    paths.update(task_name_paths())
    from .queues_api import queues_paths

    paths.update(queues_paths())
    paths.update(alerts_paths())
    from .beat_api import beat_paths

    paths.update(beat_paths())
    from .lost_api import lost_paths

    paths.update(lost_paths())
    row_props: dict[str, Any] = {name: {"type": "string"} for name in ("id", *LIST_FIELDS)}
    # monitor.lost's flags, on every row of /api/v1/tasks (not the state: a flag)
    row_props.update(
        lost={"type": "boolean"},
        stuck={"type": "boolean"},
        stuck_reason={"type": ["string", "null"]},
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "celery monitor API",
            "version": __version__,
            "description": "Task lifecycles recorded by celery monitor; values are stored strings.",
        },
        "servers": [{"url": prefix or "/"}],
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}},
                    "required": ["error"],
                },
                "Row": {"type": "object", "properties": row_props, "required": ["id"]},
            }
        },
    }


@openapi_bp.get("/openapi.json")
def openapi() -> Any:
    return jsonify(spec(current_app.extensions["monitor"].url_prefix))
