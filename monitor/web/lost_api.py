"""``GET /api/v1/risks``: what may lose or repeat tasks (monitor.lost's broker view).

Read-only (viewer rules): the broker's visibility timeout and where it comes from,
``acks_late`` configuration risks (app conf, tasks, workers' ``conf``), unacked
messages past the visibility timeout ("will be redelivered"), ETA/countdown
messages whose ETA lies beyond it ("will run twice"), and the counts of lost and
stuck tasks (``/api/v1/tasks?flag=...`` lists them).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request

from .. import lost
from .api import register_errors
from .queries import QueryError

lost_api = Blueprint("monitor_lost_api", __name__)
register_errors(lost_api)


def _refresh(value: str | None) -> bool:
    if value in (None, "", "0", "false"):
        return False
    if value in ("1", "true"):
        return True
    raise QueryError(f"refresh must be 0 or 1, got {value[:40]!r}")


def risks_body(ext: Any, refresh: bool = False) -> dict[str, Any]:
    """The risks report for this app's cluster (``refresh``: ask the workers' conf)."""
    store = ext.store
    inspector = ext.inspector
    expected = 0
    if refresh:
        expected = sum(1 for w in store.workers() if w.get("online"))
    confs = lost.worker_confs(inspector, refresh, expected)
    report = lost.broker_report(store, inspector.app, confs)
    report["workers_asked"] = sorted(confs)
    return report


@lost_api.get("/risks")
def risks() -> Any:
    ext = current_app.extensions["monitor"]
    # Task ids and names only (no args, results): the same for every viewer.
    return jsonify(risks_body(ext, _refresh(request.args.get("refresh"))))


def lost_paths() -> dict[str, Any]:
    """OpenAPI entries of this module (merged by monitor.web.openapi)."""
    row = {
        "type": "object",
        "properties": {
            "task_id": {"type": ["string", "null"]},
            "name": {"type": ["string", "null"]},
            "delivered": {"type": "number"},
            "age": {"type": "number"},
            "overdue": {"type": "number"},
            "eta": {"type": "number"},
        },
    }
    return {
        "/api/v1/risks": {
            "get": {
                "summary": "Configuration risks and Redis broker messages that will be "
                "redelivered or run twice",
                "tags": ["tasks"],
                "parameters": [
                    {
                        "name": "refresh",
                        "in": "query",
                        "required": False,
                        "description": "1: ask the workers for their conf first (one "
                        "inspect broadcast, reused for 5 s)",
                        "schema": {"type": "string", "enum": ["0", "1"]},
                    }
                ],
                "responses": {
                    "200": {
                        "description": f"the report; at most {lost.UNACKED_READ} unacked "
                        f"entries are read (oldest first), {lost.REPORT_ROWS} listed per section",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "broker": {"type": "object"},
                                        "risks": {"type": "array", "items": {"type": "object"}},
                                        "redelivery": {"type": "array", "items": row},
                                        "eta_beyond_visibility": {"type": "array", "items": row},
                                        "unacked": {"type": ["object", "null"]},
                                        "error": {"type": ["string", "null"]},
                                        "workers_asked": {
                                            "type": "array",
                                            "items": {"type": "string"},
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "400": {"description": "bad parameter"},
                },
            }
        }
    }
