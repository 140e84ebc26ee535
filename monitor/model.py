"""The data model: TaskEvent / WorkerEvent, states, precedence and merge rules.

Pure: no Redis, no Flask, no I/O. Both ingestion paths (``monitor.signals``
and ``monitor.events``) build these records; nothing else in the code base
knows the shape of a Celery event or of a signal's kwargs.

States, their precedence and the merge rule for late events come from Celery
itself (``celery.states``, ``celery.events.state``) so that the store ends in
exactly the state Celery's own in-memory ``State`` would compute.
"""

from __future__ import annotations

import ast
import datetime
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from celery import states
from celery.events.state import TASK_EVENT_TO_STATE
from celery.events.state import Task as _CeleryTask

Source = Literal["signal", "event"]

#: Fields Celery keeps from a late RECEIVED event (``Task.merge_rules``).
MERGE_RULES: Mapping[str, tuple[str, ...]] = _CeleryTask.merge_rules
#: Rank of every state Celery knows; lower rank = higher precedence.
#: Custom states (PROGRESS, ...) all share ``CUSTOM_RANK``.
CUSTOM_RANK: int = states.precedence("__custom__")
#: Event subject (``task-<subject>``) -> state, e.g. ``received`` -> RECEIVED.
SUBJECT_TO_STATE: Mapping[str, str] = TASK_EVENT_TO_STATE
STATE_TO_SUBJECT: Mapping[str, str] = {v: k for k, v in TASK_EVENT_TO_STATE.items()}
#: States that end a task (no more transitions expected).
READY_STATES = states.READY_STATES
#: Every state Celery ranks (PRECEDENCE lists REJECTED, which ALL_STATES lacks).
KNOWN_STATES = frozenset(s for s in states.PRECEDENCE if s is not None) | states.ALL_STATES

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
#: Envelope keys of a Celery event that are not facts about the task.
_ENVELOPE = frozenset(
    {"type", "timestamp", "hostname", "utcoffset", "pid", "clock", "local_received", "uuid"}
)
_WORKER_EVENT_KINDS = frozenset({"online", "heartbeat", "offline"})
_WORKER_FIELDS = (
    "freq",
    "active",
    "processed",
    "loadavg",
    "sw_ident",
    "sw_ver",
    "sw_sys",
    "pid",
    "pool",
    "concurrency",
    "queues",
)


class MalformedEvent(ValueError):
    """An event we cannot turn into a record (missing uuid, bad timestamp, ...)."""


def rank(state: str) -> int:
    """Celery's precedence index of ``state`` (lower wins)."""
    return states.precedence(state)


def state_for_subject(subject: str) -> str:
    """``received`` -> RECEIVED; an unknown subject is a custom state (``progress``)."""
    return SUBJECT_TO_STATE.get(subject) or subject.upper()


# Not frozen: a frozen dataclass sets each field through object.__setattr__,
# 4x slower to build, and the hooks build one in the user's task for every
# transition. Records are treated as immutable all the same.
@dataclass(slots=True)
class TaskEvent:
    """One reported transition of one task."""

    task_id: str
    state: str
    timestamp: float
    source: Source
    hostname: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_celery_event(cls, event: Mapping[str, Any]) -> TaskEvent | WorkerEvent | None:
        """Build a record from one Celery event dict.

        Returns ``None`` for event groups we do not store (none today, but a
        future Celery may add some); raises :class:`MalformedEvent` for a body
        that is not a usable event.
        """
        if not isinstance(event, Mapping):
            raise MalformedEvent(f"event is not a mapping: {type(event).__name__}")
        etype = event.get("type")
        if not isinstance(etype, str) or "-" not in etype:
            raise MalformedEvent(f"event has no usable type: {etype!r}")
        group, _, subject = etype.partition("-")
        timestamp = _timestamp(event.get("timestamp"))
        hostname = event.get("hostname")
        hostname = str(hostname) if hostname is not None else None
        if group == "worker":
            if subject not in _WORKER_EVENT_KINDS or not hostname:
                raise MalformedEvent(f"unusable worker event: {etype!r} from {hostname!r}")
            fields = {k: event[k] for k in _WORKER_FIELDS if event.get(k) is not None}
            return WorkerEvent(hostname, subject, timestamp, "event", fields)
        if group != "task":
            return None
        task_id = event.get("uuid")
        if not usable_task_id(task_id):
            raise MalformedEvent(f"task event without a usable uuid: {task_id!r}")
        state = state_for_subject(subject)
        if state not in KNOWN_STATES and not re.fullmatch(r"[A-Z0-9_]{1,64}", state):
            raise MalformedEvent(f"unusable custom event type: {etype!r}")
        fields = {k: v for k, v in event.items() if k not in _ENVELOPE and v is not None}
        if state == states.FAILURE:
            fields["exception"] = _unwrap_exception(fields.get("exception"), fields)
        if state not in KNOWN_STATES:
            # Custom state (task-progress ...): its payload is the metadata a
            # progress bar needs; keep it whole, as JSON.
            fields = {"progress": to_json(fields)}
        if state == states.PENDING:
            if hostname:
                fields["client"] = hostname
        elif hostname:
            fields["worker"] = hostname
        if event.get("pid") is not None and state == states.STARTED:
            fields["pid"] = event["pid"]
        return cls(task_id, state, timestamp, "event", hostname, fields)


@dataclass(slots=True)
class WorkerEvent:
    """A worker came online, sent a heartbeat, or went offline."""

    hostname: str
    kind: Literal["online", "heartbeat", "offline"] | str
    timestamp: float
    source: Source
    fields: Mapping[str, Any] = field(default_factory=dict)


def _unwrap_exception(exception: Any, fields: Mapping[str, Any]) -> Any:
    """Celery's task-failed for a hard time limit can say ``ExceptionWithTraceback()``
    (billiard's wrapper); the traceback's last line names the real exception."""
    if not (isinstance(exception, str) and exception.startswith("ExceptionWithTraceback(")):
        return exception
    traceback = fields.get("traceback")
    if isinstance(traceback, str):
        for line in reversed(traceback.strip().splitlines()):
            line = line.strip().strip('"')
            if ": " in line and not line.startswith(("File ", "Traceback")):
                return line.split(": ", 1)[1]
    return exception


#: Key suffixes of a task's own keys ({p}:task:{id}:timeline, ...): an id ending
#: in one would name another task's key (see monitor/keys.py).
RESERVED_ID_SUFFIXES = (":timeline", ":children")


def usable_task_id(task_id: Any) -> bool:
    """Celery ids are UUIDs by default, but ``task_id=`` accepts any string. An
    id is stored when it is a non-empty string of at most 255 characters that
    cannot collide with another task's keys."""
    return (
        isinstance(task_id, str)
        and 0 < len(task_id) <= 255
        and not task_id.endswith(RESERVED_ID_SUFFIXES)
    )


def _timestamp(value: Any) -> float:
    try:
        ts = float(value)
    except (TypeError, ValueError):
        raise MalformedEvent(f"event timestamp is not a number: {value!r}") from None
    if not math.isfinite(ts) or ts <= 0:
        raise MalformedEvent(f"event timestamp out of range: {value!r}")
    return ts


def to_json(value: Any) -> str:
    """JSON text for anything: unknown objects become their repr."""
    return json.dumps(value, default=repr, ensure_ascii=False, separators=(",", ":"))


def cap_text(text: str, limit: int) -> tuple[str, int]:
    """Cut ``text`` to ``limit`` UTF-8 bytes with a visible marker.

    Returns (stored text, original size in bytes) with size 0 when not cut.
    """
    if len(text) <= limit // 4:  # fast path: cannot exceed limit bytes
        return text, 0
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text, 0
    head = raw[:limit].decode("utf-8", "ignore")
    return f"{head}… [truncated: {len(raw)} bytes]", len(raw)


def as_text(value: Any) -> str:
    """How a field value is stored in a Redis hash."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime.datetime | datetime.date):
        # kombu's JSON turns a tagged datetime (an eta, an expires) back into one
        return value.isoformat()
    return to_json(value)


REDACTED = "***"


def redact_mapping(kwargs: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Copy of ``kwargs`` with sensitive names (case-insensitive) replaced by ``***``."""
    names = frozenset(names)
    return {
        k: (REDACTED if isinstance(k, str) and k.lower() in names else v) for k, v in kwargs.items()
    }


def redact_repr(text: str, names: Iterable[str]) -> str:
    """Redact a kwargs repr such as ``{'password': 'x'}`` as received in events.

    Parses it when it is a literal; otherwise replaces ``'name': <value>`` with
    a regular expression, so a secret never reaches Redis on either path.
    """
    names = tuple(names)
    if not names or not text:
        return text
    lowered = text.lower()
    if not any(name in lowered for name in names):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    if isinstance(value, dict):
        return repr(redact_mapping(value, names))
    alternatives = "|".join(re.escape(n) for n in names)
    key = r"""(['"]?(?:""" + alternatives + r""")['"]?\s*[:=]\s*)"""
    value = r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^,}\s]+)"""
    pattern = re.compile(key + value, re.IGNORECASE)
    return pattern.sub(lambda m: m.group(1) + repr(REDACTED), text)
