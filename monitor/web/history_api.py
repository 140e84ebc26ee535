"""``GET /api/v1/history``: counters and runtime / queue-wait percentiles over a
window, globally, for one task name or for one worker.

The route only parses parameters and shapes the answer; the reads are
:func:`monitor.history.history`'s. Its OpenAPI entry is :func:`history_paths`.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request

from .. import history
from ..store import MAX_KEY_PART
from . import queries
from .api import error, register_errors

history_api = Blueprint("monitor_history_api", __name__)
register_errors(history_api)


@history_api.errorhandler(history.HistoryError)
def _bad_argument(exc: history.HistoryError) -> Any:
    return error(str(exc), 400)


@history_api.get("/history")
def get_history() -> Any:
    """``?window=1h&name=proj.add`` ->
    ``{"window": "1h", "step": 60, "from": ..., "to": ..., "name": "proj.add", "worker": null,
    "points": [{"t": ..., "received": 3, ..., "runtime": {"count", "sum", "p50", "p95", "p99"},
    "queue_wait": {...}}, ...], "totals": {...}}``"""
    window = request.args.get("window", "1h")
    if window not in history.WINDOWS:
        raise history.HistoryError(
            "window", f"parameter 'window' must be one of {', '.join(history.WINDOWS)}"
        )
    name = queries.parse_key_part("name", request.args.get("name"))
    worker = queries.parse_key_part("worker", request.args.get("worker"))
    if name and worker:
        raise history.HistoryError("worker", "parameter 'worker' cannot be combined with 'name'")
    store = current_app.extensions["monitor"].store
    return jsonify(history.history(store, window, name=name, worker=worker))


def history_paths() -> dict[str, Any]:
    """The OpenAPI entry of ``/api/v1/history`` (merged by monitor.web.openapi)."""
    key_part = {"type": "string", "maxLength": MAX_KEY_PART}
    distribution = {
        "type": "object",
        "properties": {
            "count": {"type": "integer"},
            "sum": {"type": "number"},
            **{q: {"type": ["number", "null"]} for q, _ in history.QUANTILES},
        },
    }
    counters = {c: {"type": "integer"} for c in history.v.HISTORY_COUNTERS}
    point = {
        "type": "object",
        "properties": {
            "t": {"type": "integer", "description": "start of the step (epoch seconds)"},
            **counters,
            "runtime": distribution,
            "queue_wait": distribution,
        },
    }
    error_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {
        "/api/v1/history": {
            "get": {
                "summary": "Counters and runtime / queue-wait percentiles per step over a window"
                " (15m and 1h: per minute; 24h and 7d: per hour)",
                "tags": ["stats"],
                "parameters": [
                    {
                        "name": "window",
                        "in": "query",
                        "required": False,
                        "description": "time window",
                        "schema": {
                            "type": "string",
                            "enum": list(history.WINDOWS),
                            "default": "1h",
                        },
                    },
                    {
                        "name": "name",
                        "in": "query",
                        "required": False,
                        "description": "one task name's history",
                        "schema": key_part,
                    },
                    {
                        "name": "worker",
                        "in": "query",
                        "required": False,
                        "description": "one worker's history (not with name; no queue wait)",
                        "schema": key_part,
                    },
                ],
                "responses": {
                    "200": {
                        "description": "history",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "window": {"type": "string"},
                                        "step": {"type": "integer"},
                                        "from": {"type": "integer"},
                                        "to": {"type": "integer"},
                                        "name": {"type": ["string", "null"]},
                                        "worker": {"type": ["string", "null"]},
                                        "points": {"type": "array", "items": point},
                                        "totals": point,
                                    },
                                }
                            }
                        },
                    },
                    "400": {"description": "bad parameter", "content": error_ref},
                    "503": {"description": "Redis is unavailable", "content": error_ref},
                },
            }
        }
    }
