"""``GET /api/v1/task-names/<name>``: one task name's page data (the task-name page).

Handlers only parse and shape: the reads are :mod:`monitor.web.task_names`
(runtime distribution, failure groups) and :func:`monitor.history.history`
(the window's counters). Example::

    GET /api/v1/task-names/app.add?window=1h
    {"name": "app.add", "window": "1h", "stored": 1200, "last_seen": 1764644000.1,
     "totals": {"received": 10, "succeeded": 8, "failed": 2, ..., "runtime": {...}},
     "failure_rate": 0.2,
     "runtime": {"buckets": [{"le": 0.01, "count": 3}, ..., {"le": null, "count": 0}],
                 "count": 10, "p50": 0.004, ...},
     "failures": {"groups": [{"exception": "ValueError", "count": 2, "last_seen": ...,
                              "example": {"id": "...", "message": "ValueError('x')",
                                          "worker": "w1@host"}}], "failures": 2, ...}}
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request

from .. import history
from ..store import MAX_KEY_PART, Store
from . import security, task_names
from .api import error, register_converter, register_errors

task_names_api = Blueprint("monitor_task_names", __name__)
register_converter(task_names_api)
register_errors(task_names_api)


def _store() -> Store:
    return current_app.extensions["monitor"].store


def failure_rate(totals: dict[str, Any]) -> float | None:
    """Failed / (succeeded + failed) over the window; None when nothing finished."""
    failed = totals.get("failed") or 0
    done = (totals.get("succeeded") or 0) + failed
    return failed / done if done else None


@task_names_api.get("/task-names/<anypath:name>")
def task_name(name: str) -> Any:
    window = task_names.parse_window(request.args.get("window"))
    store = _store()
    stored = task_names.stored_count(store, name)
    seen = task_names.last_seen(store, name)
    if not stored and seen is None:
        return error(f"unknown task name {name!r}", 404)
    seconds = task_names.WINDOWS[window]
    totals = history.history(store, window, name=name).get("totals") or {}
    return jsonify(
        {
            "name": name,
            "window": window,
            "stored": stored,
            "last_seen": seen,
            "totals": totals,
            "failure_rate": failure_rate(totals),
            "runtime": task_names.runtime_distribution(store, name, seconds),
            "failures": task_names.failure_groups(
                store, name, seconds, can_see_args=security.can_see_args()
            ),
        }
    )


def openapi_paths() -> dict[str, Any]:
    """OpenAPI 3 path entries of this module (merged into /api/openapi.json)."""
    number = {"type": ["number", "null"]}
    return {
        "/api/v1/task-names/{name}": {
            "get": {
                "summary": "One task name: counters over a window, failure rate, runtime"
                " distribution, recent failures grouped by exception type",
                "tags": ["history"],
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "description": "task name",
                        "schema": {"type": "string", "maxLength": MAX_KEY_PART},
                    },
                    {
                        "name": "window",
                        "in": "query",
                        "required": False,
                        "description": "the counters' window (default 1h)",
                        "schema": {"type": "string", "enum": list(task_names.WINDOWS)},
                    },
                ],
                "responses": {
                    "200": {
                        "description": (
                            "totals: the window's counters (GET /api/v1/history's totals);"
                            f" runtime: histogram of the newest {task_names.RUNTIME_SAMPLE}"
                            " finished tasks in the window (le null is +Inf); failures: the"
                            f" newest {task_names.FAILURE_SAMPLE} failures grouped by"
                            " exception type; partial when a read stopped at its budget"
                        ),
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "name": {"type": "string"},
                                        "window": {"type": "string"},
                                        "stored": {"type": "integer"},
                                        "last_seen": number,
                                        "totals": {"type": "object"},
                                        "failure_rate": number,
                                        "runtime": {"type": "object"},
                                        "failures": {"type": "object"},
                                    },
                                }
                            }
                        },
                    },
                    "400": _json_error("a bad parameter"),
                    "404": _json_error("no task of this name was ever seen"),
                    "503": _json_error("Redis is unavailable"),
                },
            }
        }
    }


def _json_error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
