"""The ``history`` live room kind: a chart's window, kept current while a page shows it.

The per-minute and hourly counters are not in the change feed, so the room is
periodic (:data:`EVERY` seconds while someone is subscribed; see
``monitor.web.live.ROOM_KINDS``). A subscribe names the window and at most one
of a task name or a worker, as ``GET /api/v1/history`` does::

    {"room": "history", "window": "1h", "name": "app.add"}

and each push carries the window's newest :data:`TAIL` points and its totals
(``{"window", "name", "worker", "step", "from", "to", "points", "totals"}``):
the page replaces the points it has with the same start, appends the new ones
and drops those before ``from``. One read per room per push, whatever the
number of subscribers (rooms are shared).
"""

from __future__ import annotations

import json
from typing import Any

from .. import history
from ..store import Store
from .task_names import WINDOWS

#: Seconds between two pushes of a history room (a minute's point fills in as it goes).
EVERY = 5.0
#: Points a push carries: the current step and the one before (which may still
#: receive late records when the step has just closed).
TAIL = 2
#: Characters of a name or worker in a room name (the live tier's cap for any value).
MAX_VALUE = 255


class HistoryRoomError(ValueError):
    """A subscribe payload that names no valid history room."""


def parse(payload: dict[str, Any]) -> str:
    """The room's argument: its window and scope as canonical JSON."""
    window = payload.get("window")
    if not isinstance(window, str) or window not in WINDOWS:
        raise HistoryRoomError(f"history room needs a window: one of {', '.join(WINDOWS)}")
    spec: dict[str, str] = {"window": window}
    for key in ("name", "worker"):
        value = payload.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise HistoryRoomError(f"history room {key} must be a string")
        if len(value) > MAX_VALUE:
            raise HistoryRoomError(f"{key} longer than {MAX_VALUE} characters")
        spec[key] = value
    if "name" in spec and "worker" in spec:
        raise HistoryRoomError("history room takes a name or a worker, not both")
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def snapshot(store: Store, arg: str) -> tuple[str, Any] | None:
    """("history", the window's newest points and totals) for a room argument of :func:`parse`."""
    try:
        spec = json.loads(arg)
    except ValueError:
        return None
    if not isinstance(spec, dict) or spec.get("window") not in WINDOWS:
        return None
    name, worker = spec.get("name"), spec.get("worker")
    body = history.history(store, spec["window"], name=name, worker=worker)
    return "history", {
        "window": body["window"],
        "name": name,
        "worker": worker,
        "step": body["step"],
        "from": body["from"],
        "to": body["to"],
        "points": body["points"][-TAIL:],
        "totals": body["totals"],
    }
