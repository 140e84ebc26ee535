"""One vocabulary: the names the store, the Lua script, the API and the page share.

State names and their time fields, task field groups, and the spelling of the
per-minute/per-hour stats fields live here and are passed to the write script
(the way ranks are) and to the page (in its config), so no other module, script
or JavaScript file spells them again.
"""

from __future__ import annotations

from collections.abc import Mapping

from celery import states as _states
from celery.events.state import TASK_EVENT_TO_STATE

# -- states and the task fields that hold their times -------------------------
#: Event subject (``task-<subject>``) -> state, e.g. ``received`` -> RECEIVED.
SUBJECT_TO_STATE: Mapping[str, str] = TASK_EVENT_TO_STATE
#: State -> its subject, which is also the task hash field holding the time the
#: task reached it (``SUCCESS`` -> ``succeeded``) and the word for its count in
#: the per-minute stats rows.
STATE_TO_SUBJECT: Mapping[str, str] = {v: k for k, v in TASK_EVENT_TO_STATE.items()}
#: The task fields holding a state's time (sent, received, started, ...).
STATE_TIME_FIELDS: tuple[str, ...] = tuple(STATE_TO_SUBJECT.values())
#: States that end a task (no more transitions expected).
READY_STATES = _states.READY_STATES
#: Every state Celery ranks (PRECEDENCE lists REJECTED, which ALL_STATES lacks).
KNOWN_STATES = frozenset(s for s in _states.PRECEDENCE if s is not None) | _states.ALL_STATES
#: The states the page offers (filters, counts), in lifecycle order: Celery's,
#: and PROGRESS, the custom state most apps report (others show as they come).
PAGE_STATES = (
    "PENDING",
    "RECEIVED",
    "STARTED",
    "PROGRESS",
    "RETRY",
    "SUCCESS",
    "FAILURE",
    "REVOKED",
    "REJECTED",
)
#: States a task can be retried from.
RETRIABLE_STATES = ("FAILURE", "REVOKED", "REJECTED")
#: States a bulk revoke selects when the filter names none: revoking a finished
#: task only fills the workers' revoked lists.
UNFINISHED_STATES = ("PENDING", "RECEIVED", "STARTED", "RETRY")


def state_word(state: str) -> str:
    """The word for a state's count (``SUCCESS`` -> ``succeeded``; custom: lower case)."""
    return STATE_TO_SUBJECT.get(state, state.lower())


# -- task field groups (list rows, detail, searchable) ----------------------------
#: Fields the tasks list returns per row (the detail view returns all).
LIST_FIELDS = (
    "state",
    "name",
    "worker",
    "timestamp",
    "sent",
    "received",
    "started",
    "succeeded",
    "failed",
    "retried",
    "revoked",
    "runtime",
    "retries",
    "args",
    "kwargs",
    "args_json",
    "kwargs_json",
    "result",
    "exception",
    "parent_id",
    "root_id",
    "queue",
    "eta",
    "expires",
    "progress",
)
#: What a filter tests on each scanned task (the first field tells a task that is gone).
FILTER_FIELDS = ("state", "name", "worker")
#: What a text search (``q``) looks into, besides the id.
SEARCH_FIELDS = ("args", "kwargs", "result", "exception")
#: What the task list may be sorted by (``updated``: the index order).
SORT_FIELDS = ("updated", "name", "state", "worker", "received", "started", "succeeded", "runtime")
#: Fields whose size is capped before they are stored.
CAPPED_FIELDS = (
    "args",
    "kwargs",
    "args_json",
    "kwargs_json",
    "result",
    "exception",
    "traceback",
    "reason",
    "progress",
)
#: Flower's Task.as_dict() attributes, in its order.
FLOWER_FIELDS = (
    "uuid",
    "name",
    "state",
    "received",
    "sent",
    "started",
    "rejected",
    "succeeded",
    "failed",
    "retried",
    "revoked",
    "args",
    "kwargs",
    "eta",
    "expires",
    "retries",
    "worker",
    "result",
    "exception",
    "timestamp",
    "runtime",
    "traceback",
    "exchange",
    "routing_key",
    "clock",
    "client",
    "root_id",
    "parent_id",
)
FLOWER_FLOAT_FIELDS = frozenset(
    {
        "received",
        "sent",
        "started",
        "rejected",
        "succeeded",
        "failed",
        "retried",
        "revoked",
        "timestamp",
        "runtime",
    }
)
FLOWER_INT_FIELDS = frozenset({"retries", "clock"})

# -- stats fields: per-minute / per-hour counters and histograms ----------------
# (issue 10: filled in with the history and metrics work)
