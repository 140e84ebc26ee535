"""``/api/openapi.json``: the OpenAPI 3 description of every HTTP endpoint."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, current_app, jsonify

from .. import __version__
from ..store import LIST_FIELDS
from .queries import MAX_LIMIT, SORT_FIELDS

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


def spec(prefix: str = "") -> dict[str, Any]:
    row = {"$ref": "#/components/schemas/Row"}
    task_filters = [
        _param("state", "task state, or several separated by commas (SUCCESS,FAILURE)"),
        _param("name", "task name"),
        _param("worker", "worker hostname"),
        _param("since", "updated at or after (epoch seconds)", {"type": "number"}),
        _param("until", "updated at or before (epoch seconds)", {"type": "number"}),
        _param(
            "q", "text in id/args/kwargs/result/exception (newest-first scan with a time budget)"
        ),
        _param(
            "sort",
            "sort field",
            {"type": "string", "enum": list(SORT_FIELDS), "default": "updated"},
        ),
        _param(
            "order", "sort order", {"type": "string", "enum": ["desc", "asc"], "default": "desc"}
        ),
        _param(
            "limit",
            "rows per page",
            {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100},
        ),
        _param("cursor", "next_cursor of the previous page"),
    ]
    paths = {
        "/api/v1/tasks": _get(
            "Tasks, newest first, filtered and paged",
            task_filters,
            {
                "200": _ok(
                    "a page",
                    {
                        "type": "object",
                        "properties": {
                            "tasks": {"type": "array", "items": row},
                            "total": {"type": ["integer", "null"]},
                            "next_cursor": {"type": ["string", "null"]},
                            "scanned": {"type": "integer"},
                        },
                    },
                ),
                "400": _ERROR,
            },
            "tasks",
        ),
        "/api/v1/tasks/{id}": _get(
            "One task with its timeline, children and group",
            [_param("id", "task id", where="path")],
            {"200": _ok("the task"), "404": _NOT_FOUND},
            "tasks",
        ),
        "/api/v1/task-names": _get(
            "Task names seen",
            [],
            {
                "200": _ok(
                    "names",
                    {
                        "type": "object",
                        "properties": {"names": {"type": "array", "items": {"type": "string"}}},
                    },
                )
            },
            "tasks",
        ),
        "/api/v1/workers": _get(
            "Workers with online/offline status", [], {"200": _ok("workers")}, "workers"
        ),
        "/api/v1/workers/{hostname}": _get(
            "One worker and its newest 100 tasks",
            [_param("hostname", "worker hostname", where="path")],
            {"200": _ok("the worker"), "404": _NOT_FOUND},
            "workers",
        ),
        "/api/v1/stats": _get(
            "Counts per state, workers, per-minute counters, slowest and failing names",
            [
                _param(
                    "minutes",
                    "minutes of history",
                    {"type": "integer", "minimum": 1, "maximum": 1440, "default": 60},
                )
            ],
            {"200": _ok("statistics"), "400": _ERROR},
            "stats",
        ),
        "/api/tasks": _get(
            "Flower-compatible task list (object id -> task)",
            [
                _param("limit", "maximum number of tasks", {"type": "integer"}),
                _param("offset", "skip the first n tasks", {"type": "integer"}),
                _param("sort_by", "name, state, received, started (prefix - for descending)"),
                _param("workername", "worker hostname"),
                _param("taskname", "task name"),
                _param("state", "task state"),
                _param("received_start", "received after (%Y-%m-%d %H:%M)"),
                _param("received_end", "received before (%Y-%m-%d %H:%M)"),
                _param("search", "text search"),
            ],
            {"200": _ok("tasks by id"), "400": _ERROR},
            "flower",
        ),
        "/api/task/info/{id}": _get(
            "Flower-compatible task info",
            [_param("id", "task id", where="path")],
            {"200": _ok("the task"), "404": _NOT_FOUND},
            "flower",
        ),
        "/api/task/types": _get(
            "Flower-compatible task types", [], {"200": _ok('{"task-types": [...]}')}, "flower"
        ),
        "/api/workers": _get(
            "Flower-compatible workers (object hostname -> info)",
            [
                _param("workername", "only this worker"),
                _param("status", "only online status (true/false per worker)", {"type": "boolean"}),
                _param(
                    "refresh",
                    "ask the workers now (Celery inspect: stats, active_queues, registered,"
                    " conf; with workername also active, scheduled, reserved, revoked);"
                    " replies are cached for later requests",
                    {"type": "boolean"},
                ),
            ],
            {
                "200": _ok("workers by hostname"),
                "404": _NOT_FOUND,
                "503": _ok("the broker is unreachable: {error}"),
            },
            "flower",
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
    row_props = {name: {"type": "string"} for name in ("id", *LIST_FIELDS)}
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
