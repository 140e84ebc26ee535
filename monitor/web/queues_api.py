"""Queues API: ``GET /api/v1/queues``, ``GET /api/v1/queues/<q>/history`` and
Flower's ``GET /api/queues/length``.

Every answer comes from what the elected sampler stored
(:func:`monitor.queues.latest`, :func:`monitor.queues.history`): a request
never reads the broker, whatever its parameters, so its work is one or two
Redis reads. (``GET /api/v1/queues/<q>``, the purge confirmation's live depth,
and the purge itself are in :mod:`monitor.web.actions_api`.)
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from .. import queues
from .api import error, get_store, register_converter, register_errors
from .queries import QueryError

logger = logging.getLogger(__name__)

queues_api = Blueprint("monitor_queues_api", __name__)
register_converter(queues_api)
register_errors(queues_api)

#: Flower's endpoint lives under /api, next to its other endpoints.
flower_queues = Blueprint("monitor_flower_queues", __name__)
register_errors(flower_queues)


def _window(name: str, default: str) -> str:
    value = request.args.get(name) or default
    if value not in queues.WINDOWS:
        raise QueryError(f"{name} must be one of {', '.join(queues.WINDOWS)}")
    return value


def queue_wait(store: Any, window: str) -> list[dict[str, Any]] | None:
    """Queue wait (received - sent) per task name, from the metrics history
    (None when this build has no monitor.history)."""
    try:
        from .. import history
    except ImportError:
        return None
    reader = getattr(history, "queue_wait_by_name", None)
    if reader is None:
        return None
    return reader(store, queues.WINDOWS[window][0])


@queues_api.get("/queues")
def queue_list() -> Any:
    """Every known queue with its depth, consumers and oldest message's age.

    ``GET /api/v1/queues?window=1h`` ->
    ``{"sampled_at": 1733100000.0, "broker": "redis", "interval": 10.0, "error": null,
    "queues": [{"name": "celery", "depth": 12, "consumers": 2, "oldest_age": 4.2,
    "sampled_at": 1733100000.0, "broker": "redis", "seen": ["app", "workers", "publish"],
    "sources": {"depth": "broker", "consumers": "workers", "oldest_age": "broker"}}],
    "queue_wait": [{"name": "proj.add", "count": 40, "p50": 0.01, "p95": 0.2, "p99": 0.4}]}``

    ``sources`` says where each figure comes from (``broker``: the broker said;
    ``workers``: online workers consuming it; ``store``: the oldest PENDING task
    recorded; ``management``: RabbitMQ's management API; null: unknown).
    ``window`` (15m, 1h, 24h, 7d) is the span of ``queue_wait``.
    """
    store = get_store()
    window = _window("window", "1h")
    body = queues.overview(store, current_app.extensions["monitor"].settings)
    body["queue_wait"] = queue_wait(store, window)
    return jsonify(body)


@queues_api.get("/queues/<anypath:queue>/history")
def queue_history(queue: str) -> Any:
    """One queue's sampled depth, oldest message's age and consumers over a window.

    ``GET /api/v1/queues/celery/history?window=1h`` -> ``{"queue": "celery",
    "window": "1h", "step": 60, "from": t0, "to": t1, "points": [{"t": 1733100000,
    "depth": 12, "oldest_age": 4.2, "consumers": 2}, ...]}`` (15m and 1h: one point
    a minute; 24h and 7d: one an hour, with its largest depth and age and its
    fewest consumers). Minutes without a sample have no point.
    """
    if not queues.valid_name(queue):
        return error(f"queue must be 1..{queues.MAX_NAME} characters", 400)
    window = _window("window", "1h")
    return jsonify(queues.history(get_store(), queue, window))


@flower_queues.get("/queues/length")
def flower_queue_length() -> Any:
    """Flower's queue lengths: ``{"active_queues": [{"name": "celery", "messages": 0}]}``.

    The queues workers consume (the app's default queue when none does), with
    the sampler's last depths.
    """
    sample = queues.latest(get_store())
    names = sorted(n for n, row in sample.items() if "workers" in row.get("seen", ()))
    if not names:
        names = sorted(n for n, row in sample.items() if "app" in row.get("seen", ()))
    return jsonify(
        {"active_queues": [{"name": n, "messages": sample[n].get("depth") or 0} for n in names]}
    )


# -- the live room (monitor.web.live.ROOM_KINDS["queues"]) ------------------------------
#: Seconds between two looks at the stored sample while the room has subscribers.
ROOM_EVERY = 2.0


def room_snapshot(store: Any, _arg: Any) -> tuple[str, Any]:
    """A new subscriber's first message: the last sample, as the page draws it."""
    return "queues", queues.overview(store, store.settings)


def room_push(push: Any, rooms: dict[Any, str], state: dict[str, Any]) -> Any:
    """Every ROOM_EVERY seconds: the sample again if the sampler stored a new one."""
    body = queues.overview(push.store, push.store.settings)
    if body["sampled_at"] is None or body["sampled_at"] == state.get("sampled_at"):
        return None
    state["sampled_at"] = body["sampled_at"]

    def emit() -> None:
        for room in rooms.values():
            push.emit("queues", body, room)

    return emit


def queues_paths() -> dict[str, Any]:
    """OpenAPI 3 path entries of this module's endpoints (merged into /api/openapi.json)."""
    from .actions_api import json_response, operation, path_param

    window = {
        "name": "window",
        "in": "query",
        "required": False,
        "description": "15m, 1h (default), 24h or 7d",
        "schema": {"type": "string", "enum": list(queues.WINDOWS)},
    }
    ok = {
        "description": "",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    reads = {
        "400": json_response("a bad parameter"),
        "401": json_response("this monitor has users: log in first"),
        "503": json_response("Redis is unreachable"),
    }

    def answer(text: str) -> dict[str, Any]:
        return {"200": {**ok, "description": text}}

    return {
        "/api/v1/queues": operation(
            "get",
            "Every known queue: depth, consumers, oldest message's age (last sample)",
            "queues",
            [window],
            answer(
                "sampled_at, broker, interval, error, queues [{name, depth, consumers,"
                " oldest_age, sampled_at, broker, seen, sources}], queue_wait per task name"
            ),
            errors=reads,
        ),
        "/api/v1/queues/{queue}/history": operation(
            "get",
            "One queue's sampled depth, oldest age and consumers over a window",
            "queues",
            [path_param("queue", "queue name"), window],
            answer("queue, window, step, from, to, points [{t, depth, oldest_age, consumers}]"),
            errors=reads,
        ),
        "/api/queues/length": operation(
            "get",
            "Flower: the length of every active queue",
            "flower",
            [],
            answer("active_queues [{name, messages}]"),
            errors=reads,
        ),
    }
