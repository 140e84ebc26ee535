"""What a caller may see of a stored task: the one place that decides which
fields of a task hash reach the REST API, the Flower-compatible API and the
live pushes.

Two rules:

- the raw republish payload (``body``, kept by the publish hook for a
  faithful retry, and ``publish_headers``) is never shown, to anyone: it holds
  the arguments as the app's serializer encoded them, possibly base64 pickle,
  and only :mod:`monitor.actions` reads it;
- with ``MONITOR_HIDE_ARGS_FROM_VIEWERS`` on, a caller who may not see
  arguments (``can_see_args`` False: a viewer, once users are configured; the
  web tier decides, see ``security.can_see_args``) gets no task data: the
  fields the task's own code supplies (:data:`DATA_FIELDS`: args, kwargs and
  their JSON, result, progress meta) are dropped, with their ``_truncated``
  size markers, and so is the free text that quotes them (traceback, retry
  reason). The exception keeps its type only (``ValueError('card 4111…')``
  becomes ``ValueError``): a viewer still sees why a task failed, not with what.
  ``hidden`` lists the data fields taken out (or cut to the type), so a
  page can say so.

Both functions return the input itself when nothing is to be removed (the
common case: no copy), otherwise a shallow copy; the input is never changed
(the live tier caches snapshots it sends to several callers).
"""

from __future__ import annotations

import re
from typing import Any

from .. import model

#: Never shown by the API, whoever asks.
NEVER_SHOWN = frozenset({"body", "publish_headers"})
#: What the task's code supplied, and the text that may quote it: the same
#: fields the store redacts by key name (monitor.model.REDACTED_FIELDS).
DATA_FIELDS = model.REDACTED_FIELDS
#: Shown in part to a caller who may not see data: the exception's type.
_TYPE_ONLY = "exception"
#: Fields dropped for such a caller: the data and their size markers.
_HIDDEN = frozenset(
    {name for name in DATA_FIELDS if name != _TYPE_ONLY}
    | {name + "_truncated" for name in DATA_FIELDS}
)
#: The exception class at the start of its repr (``pkg.Error(``, ``Error:``).
_EXCEPTION_TYPE = re.compile(r"\s*([A-Za-z_][\w.]{0,199})(?=\(|:)")


def exception_type(text: Any) -> str:
    """``ValueError('x')`` -> ``ValueError``; ``""`` when no type leads the text."""
    if type(text) is not str:
        return ""
    m = _EXCEPTION_TYPE.match(text)
    return m.group(1) if m else ""


def visible_row(row: dict[str, Any], can_see_args: bool) -> dict[str, Any]:
    """A task row (a list row, a child row, a live delta) as this caller may see it."""
    if can_see_args:
        if NEVER_SHOWN.isdisjoint(row):
            return row
        return {k: v for k, v in row.items() if k not in NEVER_SHOWN}
    hidden = sorted(k for k in row if k in DATA_FIELDS)
    if not hidden and _HIDDEN.isdisjoint(row) and NEVER_SHOWN.isdisjoint(row):
        return row
    shown = {k: v for k, v in row.items() if k not in NEVER_SHOWN and k not in _HIDDEN}
    if _TYPE_ONLY in shown:
        shown[_TYPE_ONLY] = exception_type(shown[_TYPE_ONLY])
    if hidden:
        shown["hidden"] = hidden
    return shown


def visible_task(task: dict[str, Any], can_see_args: bool) -> dict[str, Any]:
    """A task's detail (``GET /api/v1/tasks/<id>``, a task room's push) as this
    caller may see it: :func:`visible_row`, and the same for its child rows."""
    shown = visible_row(task, can_see_args)
    children = task.get("children_rows")
    if isinstance(children, list):
        rows = [
            visible_row(row, can_see_args) if isinstance(row, dict) else row for row in children
        ]
        if any(new is not old for new, old in zip(rows, children, strict=True)):
            if shown is task:
                shown = dict(task)
            shown["children_rows"] = rows
    return shown
