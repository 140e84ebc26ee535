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
#: The ones Flower gives as floats: every state's time, the timestamp, the runtime.
FLOWER_FLOAT_FIELDS = frozenset(STATE_TIME_FIELDS) | {"timestamp", "runtime"}
FLOWER_INT_FIELDS = frozenset({"retries", "clock"})

# -- stats fields: per-minute / per-hour counters and histograms ----------------
# Every stats hash ({p}:stats:..., see monitor/keys.py) holds these fields; the
# write script gets them from :func:`stats_spelling` (in its config), history
# and /metrics read them through the names below.

#: The counter of each state's transitions, as history points and /metrics name it:
#: the state's subject (``SUCCESS`` -> ``succeeded``, ``PENDING`` -> ``sent``).
STAT_COUNTERS: dict[str, str] = dict(STATE_TO_SUBJECT)
#: The counters a history point carries (issue 10's contract), in that order.
HISTORY_COUNTERS = ("received", "started", "succeeded", "failed", "retried", "revoked")
#: ``state:<STATE>``: transitions into STATE (custom states too).
STAT_STATE = "state:"
#: ``rt:<bound>``: finished attempts whose runtime is <= bound (and above the
#: previous bound); ``rtsum``: their runtimes' sum. ``qw:`` / ``qwsum``: the same
#: for queue wait (received - sent), counted once per task.
STAT_RUNTIME = "rt:"
STAT_RUNTIME_SUM = "rtsum"
STAT_WAIT = "qw:"
STAT_WAIT_SUM = "qwsum"
#: Per-name and per-worker hashes: ``<field>|<name or hostname>``. No field
#: above contains ``|``, so the first one splits a field unambiguously.
STAT_SCOPE = "|"
#: ``n|<scope>``: the scope's transitions in the period; a scope is admitted
#: into a full hash only if this field is there (the cap's anchor).
STAT_SEEN = "n"
#: The scope names past the cap count under (nothing lost, only folded).
STAT_OTHER = "__other__"
#: Upper bounds (seconds) of the history histograms (runtime and queue wait);
#: +Inf is implicit. They include every bound of Prometheus' default buckets
#: (celery-exporter's), so /metrics reports those exactly from these.
STAT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
STAT_INF = "+Inf"


def bucket_label(upper_bound: float) -> str:
    """A bucket's field suffix: ``0.25``, ``5``, ``+Inf`` (``rt:0.25``)."""
    return f"{upper_bound:g}"


def scoped(field: str, scope: str) -> str:
    """A per-name / per-worker field: ``state:SUCCESS|proj.add``."""
    return field + STAT_SCOPE + scope


def stats_spelling() -> dict[str, object]:
    """What the write script needs to spell every stats field (its config's ``sf``)."""
    return {
        "state": STAT_STATE,
        "rt": STAT_RUNTIME,
        "rtsum": STAT_RUNTIME_SUM,
        "qw": STAT_WAIT,
        "qwsum": STAT_WAIT_SUM,
        "scope": STAT_SCOPE,
        "seen": STAT_SEEN,
        "other": STAT_OTHER,
        "buckets": [[b, bucket_label(b)] for b in STAT_BUCKETS],
        "inf": STAT_INF,
    }


# -- /metrics totals: one hash of monotonic totals ({p}:metrics:totals) ------------
# Field: ``<kind>\x1f<name>\x1f<hostname>\x1f<queue>[\x1f<suffix>]``. Kinds are the
# counters above (suffix: the exception class for ``failed``) and the
# histograms below (suffix: a bucket label of STAT_BUCKETS, or ``sum``). The
# script replaces the separator in label values, so a field splits exactly.
METRIC_SEP = "\x1f"
METRIC_RUNTIME = "runtime"
METRIC_WAIT = "queue_wait"
METRIC_SUM = "sum"
#: Label kinds with a cap (settings metrics_max_*), each a set of admitted values.
METRIC_LABELS = ("name", "hostname", "queue", "exception")
#: celery-exporter's label for an exception it cannot name.
METRIC_UNKNOWN_EXCEPTION = "UnknownException"


def metrics_spelling() -> dict[str, object]:
    """What the write script needs to spell the totals' fields (its config's ``mt``)."""
    return {
        "sep": METRIC_SEP,
        "counters": STAT_COUNTERS,
        "runtime": METRIC_RUNTIME,
        "wait": METRIC_WAIT,
        "sum": METRIC_SUM,
        "unknown_exception": METRIC_UNKNOWN_EXCEPTION,
    }
