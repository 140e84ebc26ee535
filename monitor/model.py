"""The data model: TaskEvent / WorkerEvent, states, precedence and merge rules.

Pure: no Redis, no Flask, no I/O. Both ingestion paths (``monitor.signals``
and ``monitor.events``) build these records; nothing else in the code base
knows the shape of a Celery event or of a signal's kwargs.

States, their precedence and the merge rule for late events come from Celery
itself (``celery.states``, ``celery.events.state``) so that the store ends in
exactly the state Celery's own in-memory ``State`` would compute.
"""

from __future__ import annotations

import datetime
import inspect
import json
import math
import re
import reprlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from celery import states
from celery.events.state import Task as _CeleryTask

from .vocabulary import CAPPED_FIELDS, KNOWN_STATES, STATE_TIME_FIELDS, SUBJECT_TO_STATE

Source = Literal["signal", "event", "reconcile"]

#: Fields Celery keeps from a late RECEIVED event (``Task.merge_rules``).
MERGE_RULES: Mapping[str, tuple[str, ...]] = _CeleryTask.merge_rules
#: Rank of every state Celery knows; lower rank = higher precedence.
#: Custom states (PROGRESS, ...) all share ``CUSTOM_RANK``.
CUSTOM_RANK: int = states.precedence("__custom__")
#: Envelope keys of a Celery event that are not facts about the task.
_ENVELOPE = frozenset(
    {"type", "timestamp", "hostname", "utcoffset", "pid", "clock", "local_received", "uuid"}
)
_WORKER_EVENT_KINDS = frozenset({"online", "heartbeat", "offline"})

#: Hash fields only the store writes: the state, the time of the last state
#: change, each state's time, the task's id. An event's extra field can never
#: set one, nor any field ending in one of :data:`STORE_OWNED_SUFFIXES` (the
#: markers of a capped value or of a clamped time).
STORE_OWNED_FIELDS = frozenset({"state", "timestamp", "id", "uuid", *STATE_TIME_FIELDS})
STORE_OWNED_SUFFIXES = ("_truncated", "_reported")

#: What one event may carry. Names, host names, queues ... become parts of
#: Redis keys and index members (the store refuses key parts over 512 bytes):
#: at most this many UTF-8 bytes.
MAX_LABEL_BYTES = 256
#: Extra (non-Celery) fields of one task event, and the length of their names.
DEFAULT_MAX_EXTRA_FIELDS = 32
MAX_EXTRA_NAME = 64
#: Default size cap (UTF-8 bytes) of one extra field's value (Settings.max_field_bytes).
DEFAULT_MAX_FIELD_BYTES = 16_384
#: Counters (retries, active, processed, pid ...) are stored and compared as
#: the store script's doubles: integers beyond 2**53 would lose their value.
MAX_COUNT = 2**53
#: Longest runtime believed (seconds, about 31 years).
MAX_RUNTIME = 1e9
#: A worker's heartbeat interval is clamped to this range (seconds): the
#: offline rule is last heartbeat + 2 x freq, so a forged freq of 1e308 would
#: keep a dead or invented worker "online" for ever.
FREQ_RANGE = (0.1, 3600.0)
#: Marker of a task event's extra fields that were not stored (over the cap,
#: unusable name, unencodable value): how many.
EXTRAS_DROPPED = "fields_truncated"
#: Record field listing the extra fields of an event (read by the write script).
EXTRAS_MARKER = "fields_extra"
_INF = math.inf
#: Valid custom state names (task-progress -> PROGRESS).
_CUSTOM_STATE = re.compile(r"[A-Z0-9_]{1,64}")
_EXTRA_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


class MalformedEvent(ValueError):
    """An event we cannot turn into a record (missing uuid, bad timestamp, ...)."""


# Error messages quote the offending value: never in full (it may be 10 MB, or
# nested thousands deep, where repr() itself would raise RecursionError).
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlong = 40
_SHORT.maxlevel = 3


def brief(value: Any) -> str:
    """A short, always-safe repr of an untrusted value for messages and logs."""
    try:
        return _SHORT.repr(value)
    except Exception:  # a kombu-tagged object whose repr fails
        return f"<{type(value).__name__}>"


def store_owned(name: str) -> bool:
    """Is ``name`` a task hash field that only the store writes?"""
    return name in STORE_OWNED_FIELDS or name.endswith(STORE_OWNED_SUFFIXES)


def _fits_label(text: str) -> bool:
    # len() first: 64 characters are at most 256 UTF-8 bytes, no encoding needed.
    return len(text) <= 64 or (
        len(text) <= MAX_LABEL_BYTES
        and len(text.encode("utf-8", "surrogatepass")) <= MAX_LABEL_BYTES
    )


def json_text(value: Any) -> str:
    """Compact JSON text of a decoded value, or :class:`MalformedEvent`.

    orjson first (its depth limit raises instead of recursing, NaN becomes
    null); the standard library for what it refuses (integers beyond 64 bits,
    lone surrogates), which may hit the recursion limit on a value nested
    hundreds deep: that value is unusable, not a crash.
    """
    try:
        return orjson.dumps(value, default=str).decode()
    except orjson.JSONEncodeError:
        pass
    try:
        return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
    except Exception as exc:  # RecursionError, ValueError, MemoryError ...
        raise MalformedEvent(f"value cannot be stored ({type(exc).__name__})") from None


def _scalar_text(value: Any) -> str:
    """Text of any decoded value; containers become JSON (see :func:`json_text`)."""
    if isinstance(value, str | bool | int | float | bytes | datetime.date | datetime.time):
        return as_text(value)
    return json_text(value)


# -- field checks: (name, value) -> the value to store, or MalformedEvent --------
def _text(key: str, value: Any) -> str:
    """Free text the store caps (args, result, traceback ...): any value."""
    return value if type(value) is str else _scalar_text(value)


def _label(key: str, value: Any) -> str:
    """A short scalar (queue, eta, signum, sw_ver ...) kept as text."""
    if type(value) is not str:
        if isinstance(value, dict | list | tuple) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise MalformedEvent(f"{key} is not a plain value: {brief(value)}")
        value = _scalar_text(value)
    if not _fits_label(value):
        raise MalformedEvent(f"{key} is longer than {MAX_LABEL_BYTES} bytes: {brief(value)}")
    return value


def _name(key: str, value: Any) -> str:
    """A task name or a host name: a non-empty string that fits in a key."""
    if type(value) is not str or not value or not _fits_label(value):
        raise MalformedEvent(
            f"{key} is not a string of 1 to {MAX_LABEL_BYTES} bytes: {brief(value)}"
        )
    return value


def _ref_id(key: str, value: Any) -> str:
    """parent_id, root_id, group_id: ids that name other tasks' keys."""
    if not usable_task_id(value):
        raise MalformedEvent(f"{key} is not a usable task id: {brief(value)}")
    return value


def _count(key: str, value: Any) -> int:
    """A non-negative integer (an integral float is taken: JSON has one number type)."""
    if type(value) is int:
        if 0 <= value <= MAX_COUNT:
            return value
    elif type(value) is float and value.is_integer() and 0 <= value <= MAX_COUNT:
        return int(value)
    raise MalformedEvent(f"{key} is not a count: {brief(value)}")


def _runtime(key: str, value: Any) -> float | int:
    if type(value) in (float, int) and 0 <= value <= MAX_RUNTIME:  # NaN fails both
        return value
    raise MalformedEvent(f"{key} is not a duration in seconds: {brief(value)}")


def _freq(key: str, value: Any) -> float:
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return float(min(max(value, FREQ_RANGE[0]), FREQ_RANGE[1]))  # no float(10**400)
    raise MalformedEvent(f"{key} is not a number of seconds: {brief(value)}")


def _loadavg(key: str, value: Any) -> list[float]:
    if type(value) is list and len(value) <= 3:
        for x in value:
            if (type(x) is not float and type(x) is not int) or not -1e9 < x < 1e9:
                break
        else:
            return value
    raise MalformedEvent(f"{key} is not up to 3 load averages: {brief(value)}")


def _queues(key: str, value: Any) -> list[str]:
    if isinstance(value, list | tuple) and len(value) <= 64:
        return [_name(key, q) for q in value]
    raise MalformedEvent(f"{key} is not a list of at most 64 queue names: {brief(value)}")


_Check = Callable[[str, Any], Any]
#: Celery's task event fields (celery/app/amqp.py send_task_message,
#: celery/worker/request.py): each one type-checked. Anything else is an extra.
_TASK_FIELD_CHECKS: Mapping[str, _Check] = {
    "name": _name,
    "args": _text,
    "kwargs": _text,
    "result": _text,
    "exception": _text,
    "traceback": _text,
    "reason": _text,
    "retries": _count,
    "runtime": _runtime,
    "eta": _label,
    "expires": _label,
    "queue": _label,
    "exchange": _label,
    "routing_key": _label,
    "root_id": _ref_id,
    "parent_id": _ref_id,
    "group_id": _ref_id,
    "requeue": _label,
    "terminated": _label,
    "expired": _label,
    "signum": _label,
}
#: Fields of a worker event the store keeps, each type-checked.
_WORKER_FIELD_CHECKS: Mapping[str, _Check] = {
    "freq": _freq,
    "active": _count,
    "processed": _count,
    "loadavg": _loadavg,
    "sw_ident": _label,
    "sw_ver": _label,
    "sw_sys": _label,
    "pid": _count,
    "pool": _label,
    "concurrency": _count,
    "queues": _queues,
}
#: What the publish hook keeps for a faithful retry, and the retry links the
#: operator actions write (monitor/actions.py): never from an event's extra fields,
#: or a forged event could choose what a retry republishes.
RETRY_FIELDS = frozenset(
    {"body", "body_error", "content_type", "content_encoding", "publish_headers", "priority"}
    | {"retry_of", "retried_as", "retried_by", "retried_at"}
)
#: Names an extra field cannot take: the store's, the checked ones, and those
#: the model derives itself (worker/client from the host, the progress JSON)
#: or that only the signal hooks may write (the real arguments a retry uses, the
#: mark of a task celery beat sent).
_NOT_EXTRA = (
    STORE_OWNED_FIELDS
    | _ENVELOPE
    | _TASK_FIELD_CHECKS.keys()
    | {"worker", "client", "progress", "args_json", "kwargs_json", "beat"}
    | RETRY_FIELDS
    | {"children", "group", "timeline"}  # what the API adds to a task
    | {EXTRAS_DROPPED, EXTRAS_MARKER}
)


def _extra_name(key: Any) -> str | None:
    """The hash field an extra is stored under, or None when it cannot be one."""
    if type(key) is not str or not key:
        return None
    name = _EXTRA_NAME_UNSAFE.sub("_", key[:MAX_EXTRA_NAME])
    if name in _NOT_EXTRA or store_owned(name):
        return None
    return name


#: Hot path (every event): the longest string a field takes without its check
#: function (free text any length; names, queues ... 64 characters, at most
#: 256 UTF-8 bytes); and the fields where a plain int needs no more than a range check.
_STR_AS_IS: Mapping[str, int] = {
    **{key: 1 << 62 for key, check in _TASK_FIELD_CHECKS.items() if check is _text},
    **{key: 64 for key, check in _TASK_FIELD_CHECKS.items() if check in (_label, _name)},
    # ids: also not ending in a key suffix (checked here)
    **{key: 128 for key, check in _TASK_FIELD_CHECKS.items() if check is _ref_id},
}
_ID_FIELDS = frozenset(key for key, check in _TASK_FIELD_CHECKS.items() if check is _ref_id)
_INT_AS_IS = frozenset(key for key, check in _TASK_FIELD_CHECKS.items() if check is _count)


def _task_fields(event: Mapping[str, Any], max_extra: int, cap: int) -> dict[str, Any]:
    """The fields of a task event (known state): checked, extras capped."""
    fields: dict[str, Any] = {}
    extras: list[str] = []
    dropped = 0
    for key, value in event.items():
        if value is None or key in _ENVELOPE:
            continue
        kind = type(value)
        if kind is str:
            if 0 < len(value) <= _STR_AS_IS.get(key, -1) and not (
                key in _ID_FIELDS and value.endswith(RESERVED_ID_SUFFIXES)
            ):
                fields[key] = value
                continue
        elif kind is int and key in _INT_AS_IS and 0 <= value <= MAX_COUNT:
            fields[key] = value
            continue
        check = _TASK_FIELD_CHECKS.get(key)
        if check is not None:
            fields[key] = check(key, value)
            continue
        name = _extra_name(key)
        if name is None or name in fields or len(extras) >= max_extra:
            dropped += 1
            continue
        try:
            text = value if type(value) is str else _scalar_text(value)
        except MalformedEvent:
            dropped += 1
            continue
        text, size = cap_text(text, cap)
        if size:
            fields[name + "_truncated"] = str(size)
        fields[name] = text
        extras.append(name)
    if dropped:
        fields[EXTRAS_DROPPED] = str(dropped)
    if extras:
        # The write script counts these against the task hash's field cap
        # (store.MAX_TASK_FIELDS): many events, each with new extra names, must
        # not grow one hash without bound. The marker itself is never stored.
        fields[EXTRAS_MARKER] = ",".join(extras)
    return fields


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
    def from_celery_event(
        cls,
        event: Mapping[str, Any],
        *,
        max_extra_fields: int = DEFAULT_MAX_EXTRA_FIELDS,
        max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES,
    ) -> TaskEvent | WorkerEvent | None:
        """Build a record from one Celery event dict.

        Returns ``None`` for event groups we do not store (none today, but a
        future Celery may add some); raises :class:`MalformedEvent` (and
        nothing else, whatever the input) for a body that is not a usable event.

        Every field Celery defines is type-checked; a wrong type makes the
        event malformed. Other (extra) fields of a task event are kept as text,
        at most ``max_extra_fields`` of them, each capped at ``max_field_bytes``
        (``<name>_truncated`` holds the original size), under a sanitised name
        that is never a field the store owns; ``fields_truncated`` counts those
        not kept. Only the fields present are looked at: an ordinary event
        costs a dict lookup and a type check per field.
        """
        if not isinstance(event, Mapping):
            raise MalformedEvent(f"event is not a mapping: {type(event).__name__}")
        etype = event.get("type")
        if type(etype) is not str or "-" not in etype or len(etype) > 80:
            raise MalformedEvent(f"event has no usable type: {brief(etype)}")
        group, _, subject = etype.partition("-")
        timestamp = event.get("timestamp")
        if type(timestamp) is not float or not 0.0 < timestamp < _INF:
            timestamp = _timestamp(timestamp)
        hostname = event.get("hostname")
        if type(hostname) is str and 0 < len(hostname) <= 64:
            pass
        elif hostname is not None and hostname != "":
            hostname = _name("hostname", hostname)
        else:
            hostname = None
        if group == "worker":
            if subject not in _WORKER_EVENT_KINDS or not hostname:
                raise MalformedEvent(
                    f"unusable worker event: {brief(etype)} from {brief(hostname)}"
                )
            fields = {}
            for key, value in event.items():
                check = _WORKER_FIELD_CHECKS.get(key)
                if check is None or value is None:
                    continue
                kind = type(value)  # hot path: a plain value needs no call
                if kind is str and check is _label and len(value) <= 64:
                    fields[key] = value
                elif kind is int and check is _count and 0 <= value <= MAX_COUNT:
                    fields[key] = value
                else:
                    fields[key] = check(key, value)
            return WorkerEvent(hostname, subject, timestamp, "event", fields)
        if group != "task":
            return None
        task_id = event.get("uuid")
        if not usable_task_id(task_id):
            raise MalformedEvent(f"task event without a usable uuid: {brief(task_id)}")
        state = state_for_subject(subject)
        if state in KNOWN_STATES:
            fields = _task_fields(event, max_extra_fields, max_field_bytes)
            if state == states.FAILURE and "exception" in fields:
                fields["exception"] = _unwrap_exception(fields["exception"], fields)
        elif _CUSTOM_STATE.fullmatch(state):
            # Custom state (task-progress ...): its payload is the metadata a
            # progress bar needs; kept whole, as JSON (the store caps it).
            payload = {k: v for k, v in event.items() if k not in _ENVELOPE and v is not None}
            fields = {"progress": json_text(payload)}
        else:
            raise MalformedEvent(f"unusable custom event type: {brief(etype)}")
        if state == states.PENDING:
            if hostname:
                fields["client"] = hostname
        elif hostname:
            fields["worker"] = hostname
        if state == states.STARTED and event.get("pid") is not None:
            fields["pid"] = _count("pid", event["pid"])
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
    id is stored when it is a non-empty string of at most 255 characters (and
    512 UTF-8 bytes) that cannot collide with another task's keys."""
    return (
        type(task_id) is str
        and 0 < len(task_id) <= 255
        # the store refuses key parts over 512 bytes
        and (len(task_id) <= 128 or len(task_id.encode("utf-8", "surrogatepass")) <= 512)
        and not task_id.endswith(RESERVED_ID_SUFFIXES)
    )


def _timestamp(value: Any) -> float:
    """An event's time: a finite, positive number of seconds (whatever the
    value: a 400-digit integer, 1e999, NaN, a list ... is a MalformedEvent)."""
    kind = type(value)
    try:
        if kind is float:
            ts = value
        elif kind is int or (kind is str and len(value) <= 64):
            ts = float(value)  # OverflowError beyond 1e308
        else:
            raise TypeError
    except (TypeError, ValueError, OverflowError):
        raise MalformedEvent(f"event timestamp is not a number: {brief(value)}") from None
    if not 0.0 < ts < math.inf:  # also false for NaN
        raise MalformedEvent(f"event timestamp out of range: {brief(value)}")
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


# -- redaction -----------------------------------------------------------------
# One rule on every path: a value is hidden when the NAME it is stored under
# (a dict key at any depth, a ``name=`` keyword in a repr, an extra event
# field, a task function's positional parameter) contains one of the
# ``MONITOR_REDACT`` names, case-insensitively: ``db_password``,
# ``client_secret`` and ``access_token`` are caught by ``password``, ``secret``
# and ``token``. Free text is not parsed for secrets (``"my password is x"``
# stays), and a name that merely contains a pattern (``tokenizer``) is hidden
# too: redaction errs on the side of hiding.
#
# It works on the stored TEXT (a repr, JSON), with a small scanner rather than
# a parser: reprs hold objects no parser reads (``<Foo at 0x1>``), are cut by
# saferepr in the middle of a string, and JSON must stay JSON. Cost: one
# lowercase copy and a few ``in`` tests when no pattern occurs anywhere in the
# text (the common case: no scan, no copy).

REDACTED = "***"
#: The data fields of a task: what the store redacts (and caps), and what
#: viewers may be denied (:mod:`monitor.web.visibility`).
REDACTED_FIELDS = frozenset(CAPPED_FIELDS)
_REDACTED_QUOTED = {"'": f"'{REDACTED}'", '"': f'"{REDACTED}"'}

#: A string literal, single or double quoted, possibly cut at the end of the
#: text (saferepr cuts long reprs); possessive, so no input backtracks.
_STRING = r"""'(?:[^'\\]++|\\.?)*+(?:'|\Z)|"(?:[^"\\]++|\\.?)*+(?:"|\Z)"""
#: What names a value: a string followed by ``:`` (a dict or JSON key), or an
#: identifier followed by ``=`` (a keyword in a repr such as ``Creds(token=...)``).
#: String literals that are not keys match too, so the scan steps over them whole.
_KEY_TOKEN = re.compile(
    rf"(?P<s>{_STRING})(?P<colon>\s*+:)?|(?P<ident>[A-Za-z_]\w*+)\s*+=(?!=)", re.DOTALL
)
_STRING_AT = re.compile(_STRING, re.DOTALL)
#: What ends, opens or closes a value; quotes start a string to step over.
_VALUE_PUNCT = re.compile(r"""[,\n\]\[(){}<>'"]""")
_OPENERS = frozenset("([{<")
_CLOSERS = frozenset(")]}>")


def sensitive(name: str, names: Iterable[str]) -> bool:
    """Whether ``name`` contains one of ``names`` (lowercase), whatever its case."""
    lowered = name.lower()
    for part in names:
        if part in lowered:
            return True
    return False


def mentions(text: str, names: Iterable[str]) -> bool:
    """Whether one of ``names`` occurs anywhere in ``text``: the fast path of
    redaction (no name anywhere, no key can hold one)."""
    return sensitive(text, names)


def _value_end(text: str, pos: int) -> int:
    """Where the value starting at ``pos`` ends: the first ``,``, newline or
    unmatched closing bracket outside strings and brackets (or the end)."""
    depth = 0
    n = len(text)
    while pos < n:
        m = _VALUE_PUNCT.search(text, pos)
        if m is None:
            return n
        ch = m.group()
        if ch in "'\"":
            pos = _STRING_AT.match(text, m.start()).end()
            continue
        pos = m.end()
        if ch in _OPENERS:
            depth += 1
        elif ch in _CLOSERS:
            if depth == 0:
                return m.start()
            depth -= 1
        elif depth == 0:  # a comma or a newline
            return m.start()
    return n


def _skip_spaces(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _rstrip_to(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1] in " \t\r":
        end -= 1
    return end


def redact_repr(text: str, names: Iterable[str]) -> str:
    """``text`` (a repr, JSON, a traceback) with the value of every sensitive
    name replaced by ``'***'`` (``"***"`` after a double-quoted key: JSON stays JSON).

    Any depth: ``{'options': {'db_password': 'x'}}``, ``[{"token": 1}]``,
    ``Creds(user='u', api_key='k')``. A value is whatever follows the key up to
    the next comma or closing bracket outside strings and brackets (a nested
    dict, an object repr, a string cut short by saferepr: all of it).
    Returns ``text`` itself when nothing is hidden.
    """
    names = tuple(names)
    if not names or not text or not mentions(text, names):
        return text
    out: list[str] = []
    last = pos = 0
    search = _KEY_TOKEN.search
    while True:
        m = search(text, pos)
        if m is None:
            break
        pos = m.end()
        key = m.group("s")
        if key is None:
            key, quote = m.group("ident"), "'"
        elif m.group("colon") is None:
            continue  # a string value: stepped over
        else:
            quote = key[0]
        if not sensitive(key, names):
            continue
        start = _skip_spaces(text, pos)
        end = _value_end(text, start)
        replacement = _REDACTED_QUOTED[quote]
        if text[start:end].strip() != replacement:
            out.append(text[last:start])
            out.append(replacement)
            last = _rstrip_to(text, start, end)
        pos = max(end, pos)
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def redact_mapping(mapping: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Copy of ``mapping`` with the values of sensitive keys (one level, the
    substring rule of :func:`sensitive`) replaced by ``***``."""
    names = tuple(names)
    return {
        k: (REDACTED if isinstance(k, str) and sensitive(k, names) else v)
        for k, v in mapping.items()
    }


def sensitive_positions(func: Callable[..., Any], names: Iterable[str]) -> tuple[int, ...]:
    """Indexes of the positional arguments of ``func`` (a task's ``run``: bound,
    so ``self`` is not counted) whose parameter name is sensitive. Positions
    after a ``*args`` are unknown, so not counted."""
    names = tuple(names)
    if not names:
        return ()
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # a builtin, a C callable: no signature
        return ()
    positions = []
    for i, param in enumerate(parameters):
        if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            break
        if sensitive(param.name, names):
            positions.append(i)
    return tuple(positions)


def redact_positional(args: Any, positions: tuple[int, ...]) -> Any:
    """A list copy of ``args`` with the values at ``positions`` replaced by
    ``***``; ``args`` itself when none of them was passed (or it is not a list)."""
    if not positions or type(args) not in (list, tuple) or len(args) <= positions[0]:
        return args
    hidden = list(args)
    for i in positions:
        if i < len(hidden):
            hidden[i] = REDACTED
    return hidden


def redact_args_repr(text: Any, positions: tuple[int, ...]) -> Any:
    """An args repr (``"('bob', 's3cret')"``, Celery's ``argsrepr``) with the
    elements at ``positions`` replaced by ``'***'``. A repr that is not a
    tuple or list (a custom ``argsrepr``) becomes ``***`` whole: erring on the
    side of hiding."""
    if not positions or type(text) is not str or not text.strip():
        return text
    start = _skip_spaces(text, 0)
    if start >= len(text) or text[start] not in "([":
        return REDACTED
    out: list[str] = []
    last = 0
    pos = start + 1
    index = 0
    wanted = frozenset(positions)
    while pos < len(text):
        begin = _skip_spaces(text, pos)
        end = _value_end(text, begin)
        if index in wanted and end > begin:
            out.append(text[last:begin])
            out.append(_REDACTED_QUOTED["'"])
            last = _rstrip_to(text, begin, end)
        index += 1
        if end >= len(text) or text[end] != ",":
            break  # the closing bracket (or a cut repr)
        pos = end + 1
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)
