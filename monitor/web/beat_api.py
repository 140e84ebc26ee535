"""``GET <prefix>/api/v1/beat``: the periodic tasks (monitor/beat.py), for the
Periodic tasks page and anyone else.

The handler only shapes the answer: :func:`monitor.beat.beat_status` reads
(one script call on the store, three pipelines on redbeat's Redis, each bounded).
Viewers follow the existing rules (security.protect); with
``MONITOR_HIDE_ARGS_FROM_VIEWERS`` a caller who may not see task data gets no
args/kwargs of the entries either (a redbeat entry's arguments are as
sensitive as a task's).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify

from .. import beat
from . import security
from .api import register_errors

beat_api = Blueprint("monitor_beat_api", __name__)
register_errors(beat_api)


@beat_api.get("/beat")
def periodic() -> Any:
    """Every periodic task with its schedule, last run seen, next run and missed flag.

    Example: ``GET /api/v1/beat`` ->
    ``{"now": 1700000000.0, "horizon": 1699990000.0, "grace": null, "count": 1,
    "truncated": false, "sources": {"app": {"configured": true, "count": 1},
    "redbeat": {"prefix": "redbeat:", "present": false, ...}},
    "entries": [{"name": "cleanup", "task": "proj.cleanup", "source": "app",
    "schedule": "every 30 s", "schedule_kind": "interval", "interval": 30.0,
    "args": "(1,)", "kwargs": null, "queue": null, "enabled": true,
    "last_run": 1699999990.1, "last_run_id": "…", "last_run_state": "SUCCESS",
    "runs_seen": 12, "next_run": 1700000020.1, "due": 1700000020.1, "grace": 30.0,
    "missed": false, "never_run": false, "status": "scheduled", "error": null, ...}]}``
    """
    ext = current_app.extensions["monitor"]
    body = beat.beat_status(ext.store, getattr(ext, "celery_app", None))
    if not security.can_see_args():
        for row in body["entries"]:
            row["args"] = row["kwargs"] = None
        body["hidden"] = ["args", "kwargs"]
    return jsonify(body)


def beat_paths() -> dict[str, Any]:
    """OpenAPI 3 path entry of ``GET /api/v1/beat`` (merged into /api/openapi.json)."""
    entry = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "task": {"type": ["string", "null"]},
            "source": {"type": "string", "enum": ["app", "redbeat"]},
            "schedule": {"type": ["string", "null"], "description": "human text"},
            "schedule_kind": {
                "type": "string",
                "enum": ["interval", "crontab", "solar", "rrule", "other", "unknown"],
            },
            "interval": {"type": ["number", "null"], "description": "seconds between runs"},
            "last_run": {"type": ["number", "null"], "description": "UNIX time, last run seen"},
            "last_run_id": {"type": ["string", "null"]},
            "next_run": {"type": ["number", "null"]},
            "due": {"type": ["number", "null"], "description": "when a run was next expected"},
            "grace": {"type": "number"},
            "missed": {"type": "boolean"},
            "never_run": {"type": "boolean"},
            "status": {
                "type": "string",
                "enum": ["scheduled", "due", "missed", "disabled", "unknown"],
            },
            "error": {"type": ["string", "null"]},
        },
        "required": ["name", "task", "schedule", "source", "last_run", "next_run", "missed"],
    }
    return {
        "/api/v1/beat": {
            "get": {
                "summary": (
                    "Periodic tasks: the app's beat_schedule and celery-redbeat's entries, "
                    f"at most {beat.MAX_ENTRIES}, each with its schedule, last run seen, next "
                    "run and missed flag (no run seen within the grace after it was due)"
                ),
                "tags": ["beat"],
                "parameters": [],
                "responses": {
                    "200": {
                        "description": "{now, horizon, grace, count, truncated, sources, entries}",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "entries": {"type": "array", "items": entry},
                                        "truncated": {"type": "boolean"},
                                    },
                                }
                            }
                        },
                    },
                    "401": {"description": "this monitor has users: log in first"},
                    "503": {"description": "Redis is unavailable"},
                },
            }
        }
    }
