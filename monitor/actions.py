"""Operator actions on a Celery cluster (Flower's task-calling endpoints,
``apply``/``send-task``/``abort``, publish from :mod:`monitor.web.flower_control`).

A :class:`Controller` (a Celery app, the :class:`~monitor.store.Store`, the
:class:`~monitor.config.Settings`) revokes and terminates tasks, retries a
failed task faithfully, changes a task's rate and time limits, grows, shrinks,
autoscales and restarts pools, adds and cancels consumers, shuts workers down,
purges queues, and retries or revokes in bulk. It never imports Flask: the web
tier authorises the user, audits the attempt and shapes the HTTP answer; this
module validates every parameter itself (a caller may be a script), acts, and
returns a result dict, or raises :class:`ActionError` with the exact reason and
an HTTP-style status.

Worker actions go through Celery's remote control (``app.control.broadcast``
with ``reply=True``) and report each worker's reply, or its timeout: with a
destination, the named workers are expected to answer; without one, the
workers the store sees online.

Retry republishes the message body the publish hook stored
(:func:`monitor.signals.handlers.publish_body`) as it is: the monitor never
decodes a task's arguments (a pickle body stays bytes), it only checks that
its own Celery app accepts the body's content type, and writes a new task id
into fresh protocol 2 headers. Where the stored data cannot give the original
message back (only events saw the task, the body was over the size cap, it
held a secret, protocol 1), the retry is refused with that reason.
"""

from __future__ import annotations

import base64
import heapq
import logging
import math
import re
import signal as signals
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from celery.utils.nodenames import anon_nodename
from kombu.serialization import prepare_accept_content
from kombu.utils.json import loads as tagged_json_loads

from . import fastjson, queues
from .config import Settings
from .model import TaskEvent, brief
from .signals.handlers import REGENERATED_HEADERS
from .store import MAX_KEY_PART, Store
from .vocabulary import RETRIABLE_STATES, UNFINISHED_STATES

logger = logging.getLogger(__name__)

# -- limits ----------------------------------------------------------------------
#: Seconds a broadcast waits for the workers' replies.
REPLY_TIMEOUT = 1.0
#: Workers one action may name.
MAX_DESTINATIONS = 100
#: Characters of a queue, exchange, routing key or worker name (AMQP short strings).
MAX_NAME = 255
#: Characters of the operator's name recorded with a retry.
MAX_WHO = 200
#: Time limits (seconds) and rate limits (tasks per second) beyond these are typos.
MAX_SECONDS = 7 * 24 * 3600.0
MAX_RATE = 1_000_000.0
#: Processes one pool change may add or remove, and autoscale's maximum.
MAX_PROCESSES = 1024
#: Tasks one bulk request acts on at most (the default and the ceiling).
BULK_LIMIT = 1000
#: Index entries a bulk selection examines at most (the store keeps 100k tasks by default).
BULK_SCAN = 200_000
#: Ids a dry run shows.
BULK_SAMPLE = 20
#: Ids per revoke broadcast, and index entries read per round trip.
BULK_CHUNK = 500
#: A bulk run reports progress after this many tasks.
PROGRESS_EVERY = 25

#: Signals a terminate may send (Flower's choice: any; these are the ones that mean something).
TERMINATE_SIGNALS = (
    "SIGTERM",
    "SIGKILL",
    "SIGINT",
    "SIGQUIT",
    "SIGHUP",
    "SIGABRT",
    "SIGUSR1",
    "SIGUSR2",
)
#: kombu's rate limit text: a count, optionally per second, minute or hour.
_RATE_RE = re.compile(r"([0-9]{1,12}(?:\.[0-9]{1,6})?)(?:/([smh]))?")
_RATE_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0}
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_STATE_RE = re.compile(r"[A-Z0-9_]{1,64}")
#: Epoch seconds beyond this are not times (year 5138), as in the query API.
MAX_EPOCH = 1e11

#: What a time limit change needs before running tasks see it (see Controller.time_limit).
TIME_LIMIT_NOTE = (
    "workers apply new time limits to tasks after a pool restart "
    "(worker_pool_restarts=True) or a reconnection to the broker"
)
#: Worker replies that mean a feature is off, and how to turn it on.
_HINTS = (
    ("Pool restarts not enabled", "start the worker with worker_pool_restarts=True"),
    ("Autoscale not enabled", "start the worker with --autoscale=MAX,MIN"),
    ("not supported with autoscale", "this worker autoscales: change its autoscale range"),
    ("unknown task", "this worker does not have that task registered"),
)

#: Task hash fields a retry decision reads (the body itself is read only to publish it).
_RETRY_META = (
    "state",
    "name",
    "retried_as",
    "content_type",
    "body_truncated",
    "body_error",
)
#: Fields of the original a retry's new task record carries over.
_CARRIED = (
    "name",
    "args",
    "kwargs",
    "args_json",
    "kwargs_json",
    "body",
    "content_type",
    "content_encoding",
    "publish_headers",
    "priority",
    "queue",
    "exchange",
    "routing_key",
)

# Claim a retry before publishing it, so two operators (or a double click)
# cannot rerun one task twice; a hash trimmed meanwhile is never recreated.
_CLAIM = """
-- KEYS[1] the original task's hash
-- ARGV[1] the new task id, ARGV[2] "1" to retry a task retried before
-- returns {0}: no such task; {1, previous retried_as or ""}: claimed;
--         {2, retried_as}: retried before, not claimed
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local previous = redis.call('HGET', KEYS[1], 'retried_as')
if previous and ARGV[2] ~= '1' then return {2, previous} end
redis.call('HSET', KEYS[1], 'retried_as', ARGV[1])
return {1, previous or ''}
"""
# Give a claim back when the publish failed.
_UNCLAIM = """
-- KEYS[1] the original task's hash
-- ARGV[1] the new task id that was not published, ARGV[2] the previous retried_as or ""
-- returns 1 when the claim was given back
if redis.call('HGET', KEYS[1], 'retried_as') ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('HDEL', KEYS[1], 'retried_as')
else redis.call('HSET', KEYS[1], 'retried_as', ARGV[2]) end
return 1
"""
# Record who retried it on the original: fields, a timeline entry that is not a
# state (never through the state machine), and a change for the live pages
# (the same entry apply_batch.lua writes).
_LINK = """
-- KEYS[1] the original task's hash, KEYS[2] its timeline, KEYS[3] the change stream
-- ARGV[1] task id, ARGV[2] who, ARGV[3] time text, ARGV[4] timeline entry JSON,
-- ARGV[5] max timeline length, ARGV[6] change stream MAXLEN
-- returns 1, or 0 when the task is gone
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'retried_by', ARGV[2], 'retried_at', ARGV[3])
local n = redis.call('RPUSHX', KEYS[2], ARGV[4])
if n > tonumber(ARGV[5]) then redis.call('LTRIM', KEYS[2], -tonumber(ARGV[5]), -1) end
local f = redis.call('HMGET', KEYS[1], 'state', 'name', 'worker', 'timestamp')
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'kind', 'task', 'id', ARGV[1],
           'state', f[1] or '', 'name', f[2] or '', 'worker', f[3] or '', 'ts', f[4] or ARGV[3])
return 1
"""


class ActionError(Exception):
    """An action refused, with the exact reason and an HTTP-style status.

    400: a bad parameter; 404: no such task or queue; 409: the task's state
    or history forbids it (not failed, already retried, its queue is gone);
    422: the monitor cannot rebuild the message faithfully (no body, capped,
    not accepted); 503: the broker is unreachable. ``code`` names the reason:
    invalid, not_found, state, retried, queue_gone, body_truncated,
    body_error, no_body, not_accepted, broker.
    """

    def __init__(self, message: str, status: int = 400, code: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        #: a stable word for the reason (bulk runs count skipped tasks by it)
        self.code = code


# -- parameter checks ------------------------------------------------------------
def _text(name: str, value: Any, max_len: int = MAX_NAME) -> str:
    """A name (task, queue, exchange, worker ...): text of 1..max_len characters
    without control characters."""
    if type(value) is not str:
        raise ActionError(f"{name} must be a string, got {type(value).__name__}")
    if not value:
        raise ActionError(f"{name} must not be empty")
    if len(value) > max_len:
        raise ActionError(f"{name} is too long ({len(value)} characters, at most {max_len})")
    if _CONTROL_CHARS.search(value):
        raise ActionError(f"{name} must not contain control characters")
    return value


def _optional_text(name: str, value: Any, max_len: int = MAX_NAME) -> str | None:
    return None if value is None or value == "" else _text(name, value, max_len)


def _int(name: str, value: Any, low: int, high: int) -> int:
    """An integer in [low, high]: an int (not a bool) or its decimal text."""
    if type(value) is str and re.fullmatch(r"[+-]?[0-9]{1,19}", value.strip()):
        value = int(value)
    if type(value) is not int:
        raise ActionError(f"{name} must be an integer, got {brief(value)}")
    if not low <= value <= high:
        raise ActionError(f"{name} must be between {low} and {high}, got {brief(value)}")
    return value


def _number(name: str, value: Any, low: float, high: float) -> float:
    """A finite number in [low, high]: an int or float (not a bool), or its text."""
    if type(value) is str and len(value) <= 40:
        try:
            value = float(value)
        except ValueError:
            pass
    if type(value) not in (int, float):
        raise ActionError(f"{name} must be a number, got {brief(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise ActionError(f"{name} must be between {low:g} and {high:g}") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise ActionError(f"{name} must be between {low:g} and {high:g}, got {brief(value)}")
    return number


def _bool(name: str, value: Any) -> bool:
    if type(value) is not bool:
        raise ActionError(f"{name} must be true or false, got {brief(value)}")
    return value


def task_id_param(value: Any) -> str:
    """A task id as the store can hold it (see :func:`monitor.model.usable_task_id`)."""
    task_id = _text("task id", value, 255)
    if len(task_id.encode("utf-8", "surrogatepass")) > MAX_KEY_PART:
        raise ActionError(f"task id is too long (at most {MAX_KEY_PART} UTF-8 bytes)")
    return task_id


def destination_param(value: Any, required: bool) -> list[str] | None:
    """Worker names: one name, or a list of 1..MAX_DESTINATIONS names."""
    if value is None or value == [] or value == "":
        if required:
            raise ActionError("destination (a worker name, or a list of them) is required")
        return None
    names = [value] if type(value) is str else value
    if type(names) not in (list, tuple):
        raise ActionError(
            f"destination must be a worker name or a list of them, got {brief(value)}"
        )
    if len(names) > MAX_DESTINATIONS:
        raise ActionError(f"destination names at most {MAX_DESTINATIONS} workers")
    return list(dict.fromkeys(_text("worker name", name) for name in names))


def signal_param(value: Any) -> str:
    """A terminate signal: a name (``SIGKILL``, ``KILL``, ``kill``) or its number."""
    if type(value) is int or (type(value) is str and value.strip().isdigit()):
        number = _int("signal", value, 1, 64)
        try:
            name = signals.Signals(number).name
        except ValueError:
            raise ActionError(f"signal {number} is not a signal") from None
    elif type(value) is str and len(value) <= 16:
        name = value.strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
    else:
        raise ActionError(f"signal must be a signal name or number, got {brief(value)}")
    if name not in TERMINATE_SIGNALS:
        raise ActionError(
            f"signal must be one of {', '.join(TERMINATE_SIGNALS)}, got {brief(value)}"
        )
    return name


def rate_param(value: Any) -> str | None:
    """A rate limit: ``"10/m"``, ``"0.5/s"``, ``"100"`` (per second) or a number;
    None, ``""`` or 0 removes the limit."""
    if value is None or value == "" or (type(value) in (int, float) and value == 0):
        return None
    if type(value) in (int, float):
        _number("rate", value, 0.0, MAX_RATE)
        return f"{value:g}"
    if type(value) is not str or len(value) > 32:
        raise ActionError(f"rate must look like 10/m, 0.5/s or 100, got {brief(value)}")
    match = _RATE_RE.fullmatch(value.strip())
    if match is None:
        raise ActionError(f"rate must look like 10/m, 0.5/s or 100, got {brief(value)}")
    count, unit = float(match.group(1)), match.group(2) or "s"
    if count == 0:
        return None
    if count / _RATE_UNIT[unit] > MAX_RATE:
        raise ActionError(f"rate must be at most {MAX_RATE:g} tasks per second")
    return value.strip()


def _seconds(name: str, value: Any) -> float | None:
    if value is None or value == "":
        return None
    return _number(name, value, 0.001, MAX_SECONDS)


def _states(value: Any) -> tuple[str, ...]:
    if value is None or value == "" or value == []:
        return ()
    parts = value.split(",") if type(value) is str else value
    if type(parts) not in (list, tuple) or len(parts) > 16:
        raise ActionError("state must be a state name, or a list of at most 16")
    out = []
    for part in parts:
        if type(part) is not str or not _STATE_RE.fullmatch(part.strip().upper()):
            raise ActionError(f"bad state {brief(part)}")
        out.append(part.strip().upper())
    return tuple(dict.fromkeys(out))


def _epoch(name: str, value: Any) -> float | None:
    if value is None or value == "":
        return None
    return _number(name, value, 0.0, MAX_EPOCH)


@dataclass(frozen=True)
class TaskFilter:
    """Which stored tasks a bulk action selects; times bound the last update."""

    states: tuple[str, ...] = ()
    name: str | None = None
    worker: str | None = None
    since: float | None = None
    until: float | None = None

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None) -> TaskFilter:
        """From ``{"state": "FAILURE" | [...], "name", "worker", "since", "until"}``."""
        spec = spec or {}
        if not isinstance(spec, Mapping):
            raise ActionError(f"filter must be an object, got {brief(spec)}")
        unknown = set(spec) - {"state", "states", "name", "worker", "since", "until"}
        if unknown:
            raise ActionError(f"unknown filter keys: {brief(sorted(map(str, unknown)))}")
        since, until = _epoch("since", spec.get("since")), _epoch("until", spec.get("until"))
        if since is not None and until is not None and since > until:
            raise ActionError("since must not be after until")
        return cls(
            states=_states(spec.get("state", spec.get("states"))),
            name=_optional_text("name", spec.get("name"), MAX_KEY_PART),
            worker=_optional_text("worker", spec.get("worker"), MAX_KEY_PART),
            since=since,
            until=until,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": list(self.states),
            "name": self.name,
            "worker": self.worker,
            "since": self.since,
            "until": self.until,
        }


def _hint(reply: Any) -> Any:
    """A worker's error reply, with how to fix it when we know."""
    if isinstance(reply, dict) and isinstance(reply.get("error"), str):
        for needle, hint in _HINTS:
            if needle in reply["error"]:
                return {**reply, "hint": hint}
    return reply


@dataclass
class _Republish:
    """What one retry publishes, read and checked before anything is sent."""

    task_id: str
    fields: dict[str, str]
    body: bytes
    headers: dict[str, Any]


# -- the controller ----------------------------------------------------------------
class Controller:
    """Acts on the cluster of ``celery_app``'s broker; reads and links tasks in ``store``.

    Every public method validates its parameters, returns a result dict, and
    raises :class:`ActionError` when it refuses. Thread-safe: the app's
    connection pools and the store's client are.
    """

    def __init__(
        self,
        celery_app: Celery,
        store: Store,
        settings: Settings | None = None,
        *,
        timeout: float = REPLY_TIMEOUT,
    ) -> None:
        self.app = celery_app
        self.store = store
        self.settings = settings or store.settings
        self.keys = store.keys
        self.timeout = timeout
        self._claim = store.redis.register_script(_CLAIM)
        self._unclaim = store.redis.register_script(_UNCLAIM)
        self._link = store.redis.register_script(_LINK)

    # -- remote control ------------------------------------------------------
    def _check_broker(self) -> None:
        """One quick connection first: kombu would retry a broadcast for seconds
        against a broker that is down."""
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, interval_start=0)
        except Exception as exc:  # noqa: BLE001 - transport-specific errors
            raise ActionError(
                f"broker unreachable: {type(exc).__name__}: {exc}", 503, "broker"
            ) from exc

    def _online_workers(self) -> list[str]:
        return [w["hostname"] for w in self.store.workers() if w.get("online")]

    def _control(
        self,
        command: str,
        arguments: dict[str, Any],
        destination: list[str] | None,
        **detail: Any,
    ) -> dict[str, Any]:
        """Broadcast ``command`` and collect each worker's reply, or its timeout.

        Returns ``{"action", "destination", "replies": {worker: reply},
        "timeouts": [workers], "ok", **detail}``; ``ok`` when at least one
        worker replied, every reply is ``{"ok": ...}`` and none timed out.
        """
        self._check_broker()
        expected = destination if destination is not None else self._online_workers()
        try:
            raw = self.app.control.broadcast(
                command,
                arguments=arguments,
                destination=destination,
                reply=True,
                timeout=self.timeout,
            )
        except Exception as exc:  # noqa: BLE001 - transport-specific errors
            raise ActionError(f"broker error: {type(exc).__name__}: {exc}", 503, "broker") from exc
        replies: dict[str, Any] = {}
        for item in raw or ():
            if isinstance(item, dict):
                for host, reply in item.items():
                    replies[str(host)] = _hint(reply)
        timeouts = sorted(set(expected) - set(replies))
        ok = bool(replies) and not timeouts
        ok = ok and all(isinstance(r, dict) and "ok" in r for r in replies.values())
        return {
            "action": command,
            "destination": destination,
            **detail,
            "replies": replies,
            "timeouts": timeouts,
            "ok": ok,
        }

    # -- tasks ---------------------------------------------------------------
    def revoke(self, task_id: str) -> dict[str, Any]:
        """Revoke: workers will not run it (those running it let it finish).

        Returns the broadcast result (see :meth:`_control`) with ``task_id`` and
        the task's ``state`` in the store (None when the store has not seen it).
        """
        task_id = task_id_param(task_id)
        return self._control(
            "revoke",
            {"task_id": task_id, "terminate": False, "signal": None},
            None,
            task_id=task_id,
            state=self.store.redis.hget(self.keys.task(task_id), "state"),
        )

    def terminate(self, task_id: str, signal: str | int = "SIGTERM") -> dict[str, Any]:
        """Revoke and kill the pool process running it with ``signal``.

        The worker that runs it replies ``terminate: <id>``; the others
        ``terminate: tasks unknown``. The store shows REVOKED once the worker
        reports it (its hooks or events).
        """
        task_id = task_id_param(task_id)
        name = signal_param(signal)
        return self._control(
            "revoke",
            {"task_id": task_id, "terminate": True, "signal": name},
            None,
            task_id=task_id,
            signal=name,
            state=self.store.redis.hget(self.keys.task(task_id), "state"),
        )

    def retry(self, task_id: str, by: str | None = None, *, force: bool = False) -> dict[str, Any]:
        """Publish a failed, revoked or rejected task again, with a new id.

        Same name, same message body (so the same args and kwargs, types
        included, whatever the serializer), same content type and encoding,
        same exchange and routing key. The original gets ``retried_as``,
        ``retried_by``, ``retried_at`` and a ``RETRIED`` timeline entry; the
        new task is stored as PENDING with ``retry_of``.

        ``force`` retries a task that was retried before (refused otherwise:
        409, so that a double click does not run it twice).

        Returns ``{"id": new id, "retry_of", "name", "queue", "exchange",
        "routing_key", "content_type", "by"}``.
        """
        task_id = task_id_param(task_id)
        by = self._who(by)
        force = _bool("force", force)
        fields = self.store.redis.hgetall(self.keys.task(task_id))
        if not fields:
            raise ActionError(
                f"task {task_id} is not in the monitor's store "
                "(never seen, or gone with retention)",
                404,
                "not_found",
            )
        refusal = self.retry_refusal(task_id, fields, force)
        if refusal is not None:
            raise refusal
        plan = self._plan(task_id, fields)
        self._check_broker()
        self._check_queue(plan.fields)
        with self.app.producer_or_acquire() as producer:
            return self._republish(plan, by, force, producer)

    def retry_refusal(
        self, task_id: str, fields: Mapping[str, str], force: bool = False
    ) -> ActionError | None:
        """Why ``task_id`` (its stored ``fields``) cannot be retried, or None.

        Reads only the metadata (``state``, ``retried_as``, ``content_type``,
        ``body_truncated``, ``body_error``): a dry run asks it of every task.
        """
        state = fields.get("state")
        if state not in RETRIABLE_STATES:
            return ActionError(
                f"task {task_id} is {state}: only {', '.join(RETRIABLE_STATES)} tasks "
                "can be retried",
                409,
                "state",
            )
        if fields.get("retried_as") and not force:
            return ActionError(
                f"task {task_id} was already retried as {fields['retried_as']}; "
                "retry it again with force",
                409,
                "retried",
            )
        if fields.get("body_truncated"):
            return ActionError(
                f"task {task_id} cannot be retried: its message body "
                f"({fields['body_truncated']} bytes) was over max_field_bytes "
                f"({self.settings.max_field_bytes}) when it was published, so it was not "
                "stored (raise MONITOR_MAX_FIELD_BYTES to retry such tasks)",
                422,
                "body_truncated",
            )
        if fields.get("body_error"):
            return ActionError(
                f"task {task_id} cannot be retried: the publish hook did not store its "
                f"message body: {fields['body_error']}",
                422,
                "body_error",
            )
        content_type = fields.get("content_type")
        if not content_type:
            return ActionError(
                f"task {task_id} cannot be retried: the monitor only has a truncated repr "
                "of its arguments (from Celery events or the worker's hooks), not the "
                "message that was published: the publish hook was not connected where "
                "it was sent (monitor.signals.connect(app) in the producer)",
                422,
                "no_body",
            )
        accepted = prepare_accept_content(self.app.conf.accept_content)
        if content_type not in accepted:
            return ActionError(
                f"task {task_id} cannot be retried: its body is {content_type}, which this "
                f"monitor's Celery app does not accept (accept_content = "
                f"{sorted(accepted)}); run the monitor with the application's Celery app, "
                "or add the serializer to its accept_content",
                422,
                "not_accepted",
            )
        return None

    def _plan(self, task_id: str, fields: dict[str, str]) -> _Republish:
        if not fields.get("body") or not fields.get("name"):
            raise ActionError(
                f"task {task_id} cannot be retried: its stored body is empty", 422, "no_body"
            )
        if not fields.get("routing_key"):
            if not fields.get("queue"):
                raise ActionError(
                    f"task {task_id} cannot be retried: its queue and routing key are unknown",
                    422,
                    "no_body",
                )
            fields = {**fields, "routing_key": fields["queue"]}
        encoding = fields.get("content_encoding") or "utf-8"
        try:
            if encoding == "binary":
                body = base64.b64decode(fields["body"], validate=True)
            else:
                body = fields["body"].encode(encoding)
        except (ValueError, LookupError) as exc:
            raise ActionError(
                f"task {task_id} cannot be retried: its stored body does not decode ({brief(exc)})",
                422,
                "body_error",
            ) from None
        headers: dict[str, Any] = {}
        if fields.get("publish_headers"):
            try:
                headers = tagged_json_loads(fields["publish_headers"])
            except ValueError:
                headers = None  # type: ignore[assignment]
            if not isinstance(headers, dict):
                raise ActionError(
                    f"task {task_id} cannot be retried: its stored headers do not decode",
                    422,
                    "body_error",
                )
        return _Republish(task_id, fields, body, headers)

    def _check_queue(self, fields: Mapping[str, str]) -> None:
        """On AMQP, a message to the default exchange for a queue that is gone
        is dropped without a word: refuse instead. (A Redis queue exists once
        a message is in it: nothing to check; a named exchange routes itself.)"""
        if fields.get("exchange"):
            return
        if self._queue_depth(fields["routing_key"]) is None:
            raise ActionError(
                f"its queue {fields['routing_key']!r} does not exist on the broker any more",
                409,
                "queue_gone",
            )

    def _republish(self, plan: _Republish, by: str, force: bool, producer: Any) -> dict[str, Any]:
        fields, task_id = plan.fields, plan.task_id
        new_id = str(uuid.uuid4())
        key = self.keys.task(task_id)
        claimed = self._claim(keys=[key], args=[new_id, "1" if force else "0"])
        if int(claimed[0]) == 0:
            raise ActionError(
                f"task {task_id} is gone from the store (retention)", 404, "not_found"
            )
        if int(claimed[0]) == 2:
            raise ActionError(
                f"task {task_id} was already retried as {claimed[1]}; retry it again with force",
                409,
                "retried",
            )
        previous = claimed[1]
        root_id = fields.get("root_id")
        origin = anon_nodename()
        headers = {
            "lang": "py",
            "task": fields["name"],
            "id": new_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            # a rerun of a workflow's root is the root of its own run
            "root_id": new_id if not root_id or root_id == task_id else root_id,
            "parent_id": fields.get("parent_id"),
            "argsrepr": fields.get("args", ""),
            "kwargsrepr": fields.get("kwargs", ""),
            "origin": origin,
            "ignore_result": False,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        }
        # what the call changed; never what a retry writes afresh (the id above all)
        headers.update((k, v) for k, v in plan.headers.items() if k not in REGENERATED_HEADERS)
        routing_key = fields["routing_key"]
        priority = fields.get("priority")
        try:
            producer.publish(
                plan.body,
                exchange=fields.get("exchange") or "",
                routing_key=routing_key,
                headers=headers,
                content_type=fields["content_type"],
                content_encoding=fields.get("content_encoding") or "utf-8",
                compression=self.app.conf.task_compression,
                delivery_mode=self.app.conf.task_default_delivery_mode,
                priority=int(priority) if priority and priority.isdigit() else None,
                correlation_id=new_id,
                reply_to=self.app.thread_oid,
                retry=True,
                retry_policy=dict(self.app.conf.task_publish_retry_policy or {}),
            )
        except Exception as exc:  # noqa: BLE001 - transport-specific errors
            self._unclaim(keys=[key], args=[new_id, previous])
            raise ActionError(
                f"publishing the retry failed: {type(exc).__name__}: {exc}", 503, "broker"
            ) from exc
        now = time.time()
        record = {k: fields[k] for k in _CARRIED if fields.get(k)}
        record.update(
            retry_of=task_id,
            root_id=headers["root_id"],
            parent_id=headers["parent_id"],
            client=origin,
        )
        entry = fastjson.dumps({"s": "RETRIED", "t": now, "h": by, "src": "operator", "to": new_id})
        linked = True
        try:
            self.store.apply([TaskEvent(new_id, "PENDING", now, "signal", origin, record)])
            self._link(
                keys=[key, self.keys.timeline(task_id), self.keys.changes],
                args=[
                    task_id,
                    by,
                    repr(now),
                    entry,
                    self.settings.max_timeline,
                    self.settings.stream_maxlen,
                ],
            )
        except redis.RedisError as exc:
            # Published: the rerun happens whatever the store says now.
            linked = False
            logger.warning("monitor: retry %s of %s not linked: %s", new_id, task_id, exc)
        logger.info("monitor: %s retried task %s as %s", by, task_id, new_id)
        return {
            "linked": linked,
            "id": new_id,
            "retry_of": task_id,
            "name": fields["name"],
            "queue": fields.get("queue"),
            "exchange": fields.get("exchange") or "",
            "routing_key": routing_key,
            "content_type": fields["content_type"],
            "by": by,
        }

    @staticmethod
    def _who(by: Any) -> str:
        if by is None:
            return "unknown"
        return _text("by", by, MAX_WHO)

    # -- task limits ---------------------------------------------------------
    def rate_limit(
        self, task_name: str, rate: str | float | None, destination: Any = None
    ) -> dict[str, Any]:
        """Set (``"10/m"``, ``"0.5/s"``, ``"100"``) or remove (None, ``""``, 0) a
        task's rate limit on every worker, or the ``destination`` ones."""
        task_name = _text("task name", task_name, MAX_KEY_PART)
        rate = rate_param(rate)
        return self._control(
            "rate_limit",
            {"task_name": task_name, "rate_limit": rate},
            destination_param(destination, required=False),
            task_name=task_name,
            rate=rate,
        )

    def time_limit(
        self,
        task_name: str,
        soft: float | None = None,
        hard: float | None = None,
        destination: Any = None,
    ) -> dict[str, Any]:
        """Set a task's soft and hard time limits (seconds; None removes one).

        The workers change the task's attributes at once (``inspect
        registered`` shows them), but a prefork worker applies a task type's
        limits from a request class it built when it started consuming
        (celery/worker/request.py ``create_request_cls``): new tasks get the
        new limits after :meth:`pool_restart` (workers started with
        ``worker_pool_restarts=True``) or a consumer restart. The result's
        ``note`` says so.
        """
        task_name = _text("task name", task_name, MAX_KEY_PART)
        soft, hard = _seconds("soft", soft), _seconds("hard", hard)
        if soft is not None and hard is not None and soft > hard:
            raise ActionError("the soft time limit must not exceed the hard one")
        return self._control(
            "time_limit",
            {"task_name": task_name, "soft": soft, "hard": hard},
            destination_param(destination, required=False),
            task_name=task_name,
            soft=soft,
            hard=hard,
            note=TIME_LIMIT_NOTE,
        )

    # -- pools ----------------------------------------------------------------
    def pool_grow(self, n: int, destination: Any) -> dict[str, Any]:
        """Add ``n`` pool processes (refused by workers that autoscale)."""
        n = _int("n", n, 1, MAX_PROCESSES)
        return self._control("pool_grow", {"n": n}, destination_param(destination, True), n=n)

    def pool_shrink(self, n: int, destination: Any) -> dict[str, Any]:
        """Remove ``n`` pool processes (refused by workers that autoscale)."""
        n = _int("n", n, 1, MAX_PROCESSES)
        return self._control("pool_shrink", {"n": n}, destination_param(destination, True), n=n)

    def autoscale(self, max: int, min: int, destination: Any) -> dict[str, Any]:
        """Change the autoscale range (workers started with ``--autoscale``)."""
        high = _int("max", max, 1, MAX_PROCESSES)
        low = _int("min", min, 0, MAX_PROCESSES)
        if low > high:
            raise ActionError("min must not exceed max")
        return self._control(
            "autoscale",
            {"max": high, "min": low},
            destination_param(destination, True),
            max=high,
            min=low,
        )

    def pool_restart(self, destination: Any) -> dict[str, Any]:
        """Restart the pool processes (workers with ``worker_pool_restarts=True``;
        the others reply an error with that hint). Module reloading is not offered:
        it would import whatever module name a caller sends."""
        return self._control(
            "pool_restart",
            {"modules": None, "reload": False, "reloader": None},
            destination_param(destination, True),
        )

    # -- consumers --------------------------------------------------------------
    def add_consumer(
        self,
        queue: str,
        destination: Any,
        exchange: str | None = None,
        exchange_type: str | None = None,
        routing_key: str | None = None,
    ) -> dict[str, Any]:
        """Make workers consume from ``queue`` (declared as the worker's app would)."""
        queue = _text("queue", queue)
        exchange = _optional_text("exchange", exchange)
        routing_key = _optional_text("routing_key", routing_key)
        if exchange_type not in (None, "", "direct", "topic", "fanout", "headers"):
            raise ActionError("exchange_type must be direct, topic, fanout or headers")
        return self._control(
            "add_consumer",
            {
                "queue": queue,
                "exchange": exchange,
                "exchange_type": exchange_type or None,
                "routing_key": routing_key,
            },
            destination_param(destination, True),
            queue=queue,
        )

    def cancel_consumer(self, queue: str, destination: Any) -> dict[str, Any]:
        """Make workers stop consuming from ``queue``."""
        queue = _text("queue", queue)
        return self._control(
            "cancel_consumer", {"queue": queue}, destination_param(destination, True), queue=queue
        )

    # -- workers -------------------------------------------------------------------
    def shutdown(self, destination: Any) -> dict[str, Any]:
        """Shut workers down (warm: running tasks finish first).

        A worker never replies to ``shutdown`` (it raises WorkerShutdown), so
        the named workers are pinged first: ``replies`` holds
        ``{"ok": "shutdown requested"}`` for each that answered, ``timeouts``
        those that did not (they get the shutdown message anyway).
        """
        names = destination_param(destination, True)
        pinged = self._control("ping", {}, names)
        try:
            self.app.control.broadcast("shutdown", destination=names, reply=False)
        except Exception as exc:  # noqa: BLE001 - transport-specific errors
            raise ActionError(f"broker error: {type(exc).__name__}: {exc}", 503, "broker") from exc
        replies = {host: {"ok": "shutdown requested"} for host in pinged["replies"]}
        return {
            "action": "shutdown",
            "destination": names,
            "replies": replies,
            "timeouts": pinged["timeouts"],
            "ok": bool(replies) and not pinged["timeouts"],
        }

    # -- queues ------------------------------------------------------------------------
    def _queue_depth(self, queue: str) -> int | None:
        """Messages ready in ``queue`` (a Redis queue's priority lists included),
        or None when the broker has no such queue (:func:`monitor.queues.queue_depth`,
        the one way the monitor reads a depth)."""
        try:
            return queues.queue_depth(self.app, queue)
        except Exception as exc:  # noqa: BLE001 - transport-specific errors
            raise ActionError(f"broker error: {type(exc).__name__}: {exc}", 503, "broker") from exc

    def queue_depth(self, queue: str) -> dict[str, Any]:
        """``{"queue", "depth"}``: what a purge confirmation shows (404: no such queue)."""
        queue = _text("queue", queue)
        depth = self._queue_depth(queue)
        if depth is None:
            raise ActionError(f"queue {queue!r} does not exist on the broker", 404, "not_found")
        return {"queue": queue, "depth": depth}

    def purge(self, queue: str) -> dict[str, Any]:
        """Delete every message waiting in ``queue``.

        Returns ``{"queue", "depth_before", "purged"}`` (``purged``: what the
        broker says it removed; messages a worker holds unacknowledged are not
        in the queue and stay).
        """
        before = self.queue_depth(queue)
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, interval_start=0)
                with conn.channel() as channel:
                    purged = channel.queue_purge(before["queue"])
        except Exception as exc:  # noqa: BLE001 - transport-specific errors
            raise ActionError(f"broker error: {type(exc).__name__}: {exc}", 503, "broker") from exc
        logger.info("monitor: purged %s messages from queue %r", purged, before["queue"])
        return {
            "queue": before["queue"],
            "depth_before": before["depth"],
            "purged": int(purged or 0),
        }

    # -- bulk ------------------------------------------------------------------------------
    def bulk(
        self,
        action: str,
        filter: Mapping[str, Any] | TaskFilter | None = None,
        *,
        dry_run: bool = True,
        limit: int = BULK_LIMIT,
        by: str | None = None,
        progress: Callable[[int, int], Any] | None = None,
    ) -> dict[str, Any]:
        """Retry or revoke every stored task that matches ``filter``, newest first.

        ``filter``: ``{"state", "name", "worker", "since", "until"}`` (times
        bound the task's last update). A retry considers only
        :data:`RETRIABLE_STATES` (the default) and skips tasks it would refuse;
        a revoke defaults to :data:`UNFINISHED_STATES`.

        A dry run (the default) returns ``{"action", "dry_run": True,
        "filter", "count", "complete", "sample", "skipped", "limit"}``:
        ``count`` tasks would be acted on (at most ``limit`` of them per run),
        ``sample`` shows a few ids, ``skipped`` counts the matching tasks a
        retry would refuse, by :attr:`ActionError.code`, and ``complete`` is False when the
        selection stopped at :data:`BULK_SCAN` index entries.

        A run acts on at most ``limit`` tasks, calls ``progress(done, total)``
        every :data:`PROGRESS_EVERY` tasks and at the end, and returns
        ``{"action", "dry_run": False, "filter", "count", "processed",
        "capped", "results", "ok"}``: ``results`` is one entry per task,
        ``{"id", "new_id"}`` (retry) or ``{"id"}`` (revoke), or ``{"id",
        "error", "status", "code"}``; a revoke adds the last broadcast's ``replies``
        and every ``timeouts``.
        """
        if action not in ("retry", "revoke"):
            raise ActionError(f"action must be retry or revoke, got {brief(action)}")
        where = filter if isinstance(filter, TaskFilter) else TaskFilter.parse(filter)
        dry_run = _bool("dry_run", dry_run)
        limit = _int("limit", limit, 1, BULK_LIMIT)
        if progress is not None and not callable(progress):
            raise ActionError("progress must be callable")
        by = self._who(by)
        default_states = RETRIABLE_STATES if action == "retry" else UNFINISHED_STATES
        if action == "retry" and not set(where.states) <= set(RETRIABLE_STATES):
            raise ActionError(
                f"a bulk retry selects only {', '.join(RETRIABLE_STATES)} tasks, "
                f"not {', '.join(sorted(set(where.states) - set(RETRIABLE_STATES)))}"
            )
        states = where.states or default_states
        selected: list[str] = []
        skipped: dict[str, int] = {}
        count = 0
        wanted = None if dry_run else limit + 1  # one more tells a capped run
        selection = self._select(states, where)
        for task_id, fields in selection:
            if action == "retry":
                refusal = self.retry_refusal(task_id, fields)
                if refusal is not None:
                    skipped[refusal.code] = skipped.get(refusal.code, 0) + 1
                    continue
            count += 1
            if len(selected) < (BULK_SAMPLE if dry_run else limit):
                selected.append(task_id)
            if wanted is not None and count >= wanted:
                break
        base = {"action": action, "filter": where.as_dict()}
        if dry_run:
            return {
                **base,
                "dry_run": True,
                "count": count,
                "complete": not selection.cut,
                "sample": selected,
                "skipped": skipped,
                "limit": limit,
            }
        if action == "retry":
            out = self._bulk_retry(selected, by, progress)
        else:
            out = self._bulk_revoke(selected, progress)
        ok = all("error" not in r for r in out["results"]) and not out.get("timeouts")
        return {
            **base,
            "dry_run": False,
            "count": min(count, limit),
            "processed": len(out["results"]),
            "capped": count > limit,
            **out,
            "ok": ok,
        }

    def _bulk_retry(
        self, ids: Sequence[str], by: str, progress: Callable[[int, int], Any] | None
    ) -> dict[str, Any]:
        self._check_broker()
        results: list[dict[str, Any]] = []
        queues: dict[str, ActionError | None] = {}  # routing key -> its check
        with self.app.producer_or_acquire() as producer:
            for i, task_id in enumerate(ids, 1):
                try:
                    # read again: it may have changed since the selection
                    fields = self.store.redis.hgetall(self.keys.task(task_id))
                    if not fields:
                        raise ActionError(
                            f"task {task_id} is gone from the store", 404, "not_found"
                        )
                    refusal = self.retry_refusal(task_id, fields)
                    if refusal is not None:
                        raise refusal
                    plan = self._plan(task_id, fields)
                    route = "" if plan.fields.get("exchange") else plan.fields["routing_key"]
                    if route not in queues:
                        try:
                            self._check_queue(plan.fields)
                            queues[route] = None
                        except ActionError as exc:
                            queues[route] = exc
                    if queues[route] is not None:
                        raise queues[route]
                    done = self._republish(plan, by, False, producer)
                    results.append({"id": task_id, "new_id": done["id"]})
                except ActionError as exc:
                    results.append(
                        {
                            "id": task_id,
                            "error": exc.message,
                            "status": exc.status,
                            "code": exc.code,
                        }
                    )
                if progress is not None and (i % PROGRESS_EVERY == 0 or i == len(ids)):
                    progress(i, len(ids))
        if not ids and progress is not None:
            progress(0, 0)
        return {"results": results}

    def _bulk_revoke(
        self, ids: Sequence[str], progress: Callable[[int, int], Any] | None
    ) -> dict[str, Any]:
        results: list[dict[str, Any]] = []
        replies: dict[str, Any] = {}
        timeouts: set[str] = set()
        for start in range(0, len(ids), BULK_CHUNK):
            chunk = list(ids[start : start + BULK_CHUNK])
            out = self._control("revoke", {"task_id": chunk, "terminate": False}, None)
            replies = out["replies"]
            timeouts.update(out["timeouts"])
            results.extend({"id": task_id} for task_id in chunk)
            if progress is not None:
                progress(len(results), len(ids))
        if not ids and progress is not None:
            progress(0, 0)
        return {"results": results, "replies": replies, "timeouts": sorted(timeouts)}

    def _select(self, states: Sequence[str], where: TaskFilter) -> _Selection:
        return _Selection(self.store, states, where)


class _Selection:
    """The stored tasks matching a filter, newest first, as (id, retry metadata).

    Walks the smallest index that covers one of the filters (each state's
    index, merged by score; a name; a worker) within [since, until], in chunks
    of :data:`BULK_CHUNK`, and tests the other filters on each task's fields.
    Stops after :data:`BULK_SCAN` index entries (``cut`` tells).
    """

    FIELDS = ("state", "name", "worker", *_RETRY_META[2:])

    def __init__(self, store: Store, states: Sequence[str], where: TaskFilter) -> None:
        self.store = store
        self.states = frozenset(states)
        self.where = where
        self.cut = False

    def _sources(self) -> list[str]:
        keys = self.store.keys
        options: list[list[str]] = [[keys.by_state(s) for s in sorted(self.states)]]
        if self.where.name:
            options.append([keys.by_name(self.where.name)])
        if self.where.worker:
            options.append([keys.by_worker(self.where.worker)])
        if len(options) == 1:
            return options[0]
        pipe = self.store.redis.pipeline(transaction=False)
        for option in options:
            for key in option:
                pipe.zcard(key)
        sizes = iter(pipe.execute())
        totals = [sum(int(next(sizes)) for _ in option) for option in options]
        return options[totals.index(min(totals))]

    def _walk(self, key: str) -> Iterator[tuple[str, float]]:
        """(id, score) of one index, newest first, resuming at (score, seen at it)."""
        redis = self.store.redis
        high = "+inf" if self.where.until is None else repr(self.where.until)
        low = "-inf" if self.where.since is None else repr(self.where.since)
        skip = 0
        while True:
            chunk = redis.zrevrangebyscore(
                key, high, low, start=skip, num=BULK_CHUNK, withscores=True
            )
            if not chunk:
                return
            yield from chunk
            if len(chunk) < BULK_CHUNK:
                return
            last = chunk[-1][1]
            same = sum(1 for _, score in chunk if score == last)
            # next: from the last score again, past the ones at it already seen
            skip = same + (skip if repr(last) == high else 0)
            high = repr(last)

    def __iter__(self) -> Iterator[tuple[str, dict[str, str]]]:
        walks = [self._walk(key) for key in self._sources()]
        merged: Iterable[tuple[str, float]] = (
            walks[0] if len(walks) == 1 else heapq.merge(*walks, key=lambda e: -e[1])
        )
        scanned = 0
        batch: list[str] = []
        for task_id, _score in merged:
            batch.append(task_id)
            scanned += 1
            if len(batch) >= BULK_CHUNK:
                yield from self._test(batch)
                batch = []
            if scanned >= BULK_SCAN:
                self.cut = True
                break
        if batch:
            yield from self._test(batch)

    def _test(self, ids: list[str]) -> Iterator[tuple[str, dict[str, str]]]:
        pipe = self.store.redis.pipeline(transaction=False)
        for task_id in ids:
            pipe.hmget(self.store.keys.task(task_id), self.FIELDS)
        where = self.where
        for task_id, values in zip(ids, pipe.execute(), strict=True):
            fields = {k: v for k, v in zip(self.FIELDS, values, strict=True) if v is not None}
            if fields.get("state") not in self.states:
                continue
            if where.name and fields.get("name") != where.name:
                continue
            if where.worker and fields.get("worker") != where.worker:
                continue
            yield task_id, fields


__all__ = [
    "ActionError",
    "BULK_LIMIT",
    "Controller",
    "TaskFilter",
    "destination_param",
    "rate_param",
    "signal_param",
    "task_id_param",
]
