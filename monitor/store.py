"""The store: the batch write script, and the reads of single tasks, workers and stats.

Writes: :meth:`Store.apply` turns a batch of :class:`~monitor.model.TaskEvent`
and :class:`~monitor.model.WorkerEvent` into one call of ``apply_batch.lua``
(precedence, de-duplication, timeline, indexes, counters, links, change feed
and retention, atomically, in one round trip).

Reads: tasks (one, or rows for given ids), workers with their online/offline
status, per-minute statistics, the monitor's own counters. Pipelines keep
every read to a small, fixed number of round trips whatever the page size.
Paged and filtered task lists are :mod:`monitor.web.queries`' (over the
indexes this module writes); the live tier tails the change feed itself
(:mod:`monitor.web.live`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis

from . import fastjson, model, vocabulary
from .config import Settings
from .keys import Keys
from .model import TaskEvent, WorkerEvent
from .vocabulary import KNOWN_STATES, LIST_FIELDS, READY_STATES, STATE_TO_SUBJECT

logger = logging.getLogger(__name__)

#: Upper bounds (seconds) of the runtime and queue-wait histogram buckets; +Inf is implicit.
RUNTIME_BUCKETS = vocabulary.STAT_BUCKETS
#: state -> fields Celery keeps from a late event of that state (as a list, for JSON).
_MERGE_KEEP = {state: list(keep) for state, keep in model.MERGE_RULES.items()}
#: Fields holding the real, JSON-encoded arguments (signals path).
JSON_FIELDS = frozenset({"args_json", "kwargs_json"})
#: Two reports of one transition by different sources closer than this are one.
DEDUP_WINDOW = 2.0
#: Fields a record never sets (the script drops them): the state, the time of
#: the last state change and each state's time are the store's own.
OWNED_FIELDS = tuple(sorted(model.STORE_OWNED_FIELDS))
#: Fields one record may carry; ids, names, hosts and the ids that name keys
#: (parent_id, group_id) are at most this long. The script rejects a record
#: beyond either: the model caps event fields well below.
MAX_RECORD_FIELDS = 256
MAX_KEY_PART = 512
#: Fields a task hash may reach through extra event fields (``model.EXTRAS_MARKER``);
#: past that, new extra fields are dropped and counted in ``fields_truncated``.
MAX_TASK_FIELDS = 200
#: Fields of one per-name (or per-worker) per-minute stats hash past which new
#: task names (hostnames) count under ``__other__``: a name takes ~8 fields a
#: minute (its states, a few runtime and queue-wait buckets, sums, its anchor).
STATS_FIELDS = 2_000
#: The same for an hourly hash (a name spreads over more buckets in an hour).
STATS_HOUR_FIELDS = 3_000
#: Fields of a global stats hash past which new custom states are not counted
#: (Celery's states, the buckets and the sums take at most 52).
STATS_GLOBAL_FIELDS = 64
#: The task hash field holding its queue wait (received - sent, seconds): the
#: store's own (the script counts it once, and this field says it did).
QUEUE_WAIT_FIELD = "queue_wait"
#: Members of a children or group set returned with a task (the count is exact).
MAX_MEMBERS = 1000
#: Workers listed at most (newest first): forged hostnames age out, but a
#: flood of them must not make every worker list read thousands of hashes.
MAX_WORKERS = 2000
#: Queue names the write script remembers from publishes ({p}:queues); the
#: least recently used go first, so a producer inventing routing keys cannot
#: grow it (issue 10, queues).
MAX_QUEUES_SEEN = 2000
#: A worker without a known heartbeat interval is assumed to beat this often.
DEFAULT_HEARTBEAT_FREQ = 2.0


bucket_label = vocabulary.bucket_label


def redis_client(url: str, **options: Any) -> redis.Redis:
    """A Redis client that fails fast: the monitor never hangs on a dead Redis."""
    options.setdefault("socket_timeout", 5.0)
    options.setdefault("socket_connect_timeout", 2.0)
    options.setdefault("health_check_interval", 30)
    options.setdefault("decode_responses", True)
    # Anything may sit in Redis (written by another version, or by hand): a
    # byte sequence that is not UTF-8 reads as U+FFFD, never an exception.
    options.setdefault("encoding_errors", "replace")
    return redis.Redis.from_url(url, **options)


#: Where a transition falls within one attempt. States not listed (REVOKED,
#: custom states such as PROGRESS) can happen at any point: they keep their
#: place in time.
_PHASE = {"PENDING": 0, "RECEIVED": 1, "STARTED": 2, "RETRY": 3, "SUCCESS": 3, "FAILURE": 3}
#: Two times closer than this are the same instant (clock resolution, float text).
_SAME_INSTANT = 0.001


def lifecycle_order(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Timeline entries (as stored) in the order the lifecycle happened.

    Time order, except where two hosts' clocks disagree: within one attempt a
    worker's RECEIVED follows the producer's PENDING, STARTED follows RECEIVED
    and the attempt's end follows STARTED, whatever their clocks say. Attempts
    themselves may overlap (``retry()`` sends the next attempt's message, which
    a worker may receive, before the RETRY is reported), so only the entries of
    one attempt trade places, within the slots they hold in time order. An
    entry's attempt is the one it names, else the count of RETRYs before it.
    """
    entries = sorted(entries, key=lambda e: e["t"])
    running = 0
    slots: dict[int, list[int]] = {}  # attempt -> positions of its fixed-phase entries
    for i, e in enumerate(entries):
        named = e.get("r")
        attempt = named if isinstance(named, int) else running
        if e["s"] in _PHASE:
            slots.setdefault(attempt, []).append(i)
        if e["s"] == "RETRY":
            running = attempt + 1
    ordered = list(entries)
    for positions in slots.values():
        fixed = sorted((entries[i] for i in positions), key=lambda e: (_PHASE[e["s"]], e["t"]))
        for i, e in zip(positions, fixed, strict=True):
            ordered[i] = e
    return ordered


def timeline_entry(e: dict[str, Any]) -> dict[str, Any]:
    """One stored timeline entry as the API shows it (see the script's header)."""
    sources = e["src"].split(",")
    reports = [{"source": sources[0], "timestamp": e["t"]}]
    if len(sources) > 1 and e.get("t2") is not None:
        reports.append({"source": sources[1], "timestamp": e["t2"]})
    entry = {
        "state": e["s"],
        "timestamp": e["t"],
        "hostname": e.get("h"),
        "sources": sources,
        "retries": e.get("r"),
        "reports": reports,
    }
    if e.get("o") is not None:
        entry["reported_timestamp"] = e["o"]
    if e.get("to") is not None:  # an operator's retry (monitor/actions.py): the new task
        entry["retried_as"] = e["to"]
    return entry


def mark_skew(timeline: list[dict[str, Any]]) -> None:
    """Flag entries timed before the one they follow: two clocks disagree."""
    for prev, cur in zip(timeline, timeline[1:], strict=False):
        gap = prev["timestamp"] - cur["timestamp"]
        if gap > _SAME_INSTANT:
            cur["skew"] = gap


def _rank_table() -> dict[str, int]:
    return {state: model.rank(state) for state in KNOWN_STATES}


@dataclass
class BatchResult:
    applied: int
    duplicates: int
    tasks_changed: int
    trimmed: int
    #: records dropped alone: not encodable here, or invalid for the script
    rejected: int = 0


class Store:
    """The monitor's data in one Redis, under one key prefix."""

    def __init__(self, client: redis.Redis, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.redis = client
        self.keys = Keys(self.settings.prefix)
        script = resources.files("monitor").joinpath("lua/apply_batch.lua").read_text()
        self._apply_script = client.register_script(script)
        self._script_keys = self.keys.script_keys()
        self._ranks = _rank_table()
        self._config_for: Settings | None = None
        self._config_json = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        return cls(redis_client(settings.redis_url), settings)

    def close(self) -> None:
        self.redis.close()

    # -- writes --------------------------------------------------------------
    def record(self, event: TaskEvent | WorkerEvent) -> list[Any]:
        """The JSON-ready form of one record that ``apply_batch.lua`` reads.

        A positional list, not a dict: this runs for every event (10k+/s) in
        the user's processes and in the receiver, and lists encode (here) and
        decode (in Lua) markedly faster. The layout is documented in the script.
        """
        if isinstance(event, WorkerEvent):
            return [
                "w",
                event.hostname,
                event.kind,
                repr(event.timestamp),
                event.source,
                {k: model.as_text(v) for k, v in event.fields.items() if v is not None},
            ]
        cap = self.settings.max_field_bytes
        short = cap // 4  # a str this long cannot exceed cap bytes in UTF-8
        names = self.settings.redact
        data = model.REDACTED_FIELDS if names else ()
        fields: dict[str, str] = {}
        for key, value in event.fields.items():
            if value is None:
                continue
            # Hot path (10k+ events/s): short strings need no conversion or cap,
            # and a data field no redaction when no name occurs in it at all.
            if (
                type(value) is str
                and len(value) <= short
                and (key not in data or not model.mentions(value, names))
            ):
                fields[key] = value
                continue
            if key in JSON_FIELDS and not isinstance(value, str):
                # Real arguments, for a faithful retry: strict JSON or nothing
                # (the display repr is still stored), and never cut in half.
                try:
                    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
                except (TypeError, ValueError):
                    continue
                if names and len(text) <= cap:  # longer: over the cap, not stored
                    text = model.redact_repr(text, names)
                if len(text) > cap // 4 and len(text.encode()) > cap:
                    fields[key + "_truncated"] = str(len(text.encode()))
                    continue
                fields[key] = text
                continue
            text = model.as_text(value)
            if key in model.REDACTED_FIELDS:
                # Cut first: a hostile 10 MB repr costs one cut, and what is
                # scanned is exactly what is stored. Hiding a value can lengthen
                # the text (1 -> '***'): cut again if it then exceeds the cap.
                text, size = model.cap_text(text, cap)
                if key in data:
                    text = model.redact_repr(text, names)
                    if size == 0:
                        text, size = model.cap_text(text, cap)
                if size:
                    fields[key + "_truncated"] = str(size)
            fields[key] = text
        extras = fields.get(model.EXTRAS_MARKER)
        if extras and names:  # an event's own fields: their names and their text
            present = [name for name in extras.split(",") if name in fields]
            # one look over all of them first: they are rarely sensitive
            if model.mentions("\0".join([extras, *(fields[n] for n in present)]), names):
                for name in present:
                    fields[name] = (
                        model.REDACTED
                        if model.sensitive(name, names)
                        else model.redact_repr(fields[name], names)
                    )
        retries = event.fields.get("retries")
        if retries is not None and type(retries) is not int:
            try:
                retries = int(retries)
            except (TypeError, ValueError, OverflowError):  # "x", NaN, inf
                retries = None
        if retries is not None and not -(2**53) < retries < 2**53:
            retries = None  # the script's numbers are doubles
        return [
            "t",
            event.task_id,
            event.state,
            repr(event.timestamp),
            event.source,
            event.hostname or "",
            fields,
            retries,
        ]

    def _config(self) -> str:
        """The script's settings, JSON: encoded once per settings object."""
        s = self.settings
        if self._config_for is s:
            return self._config_json
        self._config_json = json.dumps(
            {
                "ranks": self._ranks,
                "custom_rank": model.CUSTOM_RANK,
                "ready_states": sorted(READY_STATES | {"REJECTED"}),
                # state -> fields a late (merge-only) event of that state keeps
                "keep": _MERGE_KEEP,
                # state -> the hash field holding its time ("received", ...)
                "subject": dict(STATE_TO_SUBJECT),
                "max_tasks": s.max_tasks,
                "max_age": s.max_age,
                "max_timeline": s.max_timeline,
                "stream_maxlen": s.stream_maxlen,
                "dedup_window": DEDUP_WINDOW,
                "purge_after": s.worker_purge_after,
                "clock_skew": s.clock_skew,
                "max_fields": MAX_RECORD_FIELDS,
                "max_key_len": MAX_KEY_PART,
                "max_task_fields": MAX_TASK_FIELDS,
                "owned": [*OWNED_FIELDS, QUEUE_WAIT_FIELD],
                "sf": vocabulary.stats_spelling(),
                # EXPIRE takes whole seconds (at least 1)
                "ttl": {
                    "m": _seconds(s.stats_minutes_ttl),
                    "mn": _seconds(s.stats_ttl),
                    "h": _seconds(s.stats_hours_ttl),
                    "hn": _seconds(s.stats_scoped_hours_ttl),
                },
                "cap": {"mn": STATS_FIELDS, "hn": STATS_HOUR_FIELDS, "g": STATS_GLOBAL_FIELDS},
                "mt": vocabulary.metrics_spelling(),
                "mcap": {
                    "name": s.metrics_max_names,
                    "hostname": s.metrics_max_hostnames,
                    "queue": s.metrics_max_queues,
                    "exception": s.metrics_max_exceptions,
                    "series": s.metrics_max_series,
                },
                "max_queues": MAX_QUEUES_SEEN,  # issue 10, queues
            }
        )
        self._config_for = s
        return self._config_json

    def encode_batch(self, events: Iterable[TaskEvent | WorkerEvent]) -> tuple[bytes, int]:
        """The script's payload, and how many records could not be encoded.

        One record that cannot be encoded (a user's object whose repr raises, a
        value JSON cannot hold) is dropped alone, never its batch.
        """
        events = list(events)
        try:
            return fastjson.dumps([self.record(e) for e in events]), 0
        except Exception:  # noqa: BLE001 - any failure: find the culprits one by one
            pass
        parts, bad = [], 0
        for event in events:
            try:
                parts.append(fastjson.dumps(self.record(event)))
            except Exception as exc:  # noqa: BLE001 - a hostile value, not our bug
                bad += 1
                logger.warning("monitor: dropped a record that cannot be encoded: %.200s", exc)
        return b"[" + b",".join(parts) + b"]", bad

    def apply(
        self, events: Sequence[TaskEvent | WorkerEvent], now: float | None = None
    ) -> BatchResult:
        """Store a batch atomically. Raises redis errors: callers decide to retry or drop.

        Records that cannot be stored (not encodable, or invalid for the script)
        are skipped alone and counted in ``BatchResult.rejected``.
        """
        if not events:
            return BatchResult(0, 0, 0, 0)
        payload, bad = self.encode_batch(events)
        result = self.apply_encoded(payload, now)
        result.rejected += bad
        return result

    def apply_encoded(self, payload: bytes | str, now: float | None = None) -> BatchResult:
        now = time.time() if now is None else now
        result = self._apply_script(
            keys=self._script_keys, args=[payload, self._config(), repr(float(now))]
        )
        return BatchResult(*(int(x) for x in result))

    def incr_meta(self, counters: dict[str, int]) -> None:
        """Add to the monitor's own counters (dropped records, malformed events)."""
        pipe = self.redis.pipeline(transaction=False)
        for name, n in counters.items():
            if n:
                pipe.hincrby(self.keys.meta, name, n)
        pipe.execute()

    def meta(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.redis.hgetall(self.keys.meta).items()}

    # -- task reads --------------------------------------------------------------
    def get_task(self, task_id: str) -> dict[str, Any] | None:
        """Every field of one task, with its timeline and children, or None."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.task(task_id))
        pipe.lrange(self.keys.timeline(task_id), 0, -1)
        self._members(pipe, self.keys.children(task_id))
        fields, raw_timeline, children_total, children = pipe.execute()
        if not fields:
            return None
        timeline = lifecycle_order([json.loads(e) for e in raw_timeline])
        task: dict[str, Any] = dict(fields)
        task["id"] = task_id
        task["timeline"] = [timeline_entry(e) for e in timeline]
        mark_skew(task["timeline"])
        task["children"] = sorted(children)
        task["children_total"] = int(children_total)
        group_id = fields.get("group_id")
        task["group"], task["group_total"] = [], 0
        if group_id:
            pipe = self.redis.pipeline(transaction=False)
            self._members(pipe, self.keys.group(group_id))
            total, members = pipe.execute()
            task["group"], task["group_total"] = sorted(members), int(total)
        return task

    @staticmethod
    def _members(pipe: Any, key: str) -> None:
        """Queue SCARD and up to MAX_MEMBERS members of a set (a task may start
        100,000 children: one detail must not read them all)."""
        pipe.scard(key)
        pipe.srandmember(key, MAX_MEMBERS)

    def get_tasks(self, ids: Sequence[str], fields: Sequence[str] = LIST_FIELDS) -> list[dict]:
        """Rows for ``ids`` in order; ids whose hash is gone are skipped."""
        pipe = self.redis.pipeline(transaction=False)
        for task_id in ids:
            pipe.hmget(self.keys.task(task_id), fields)
        rows = []
        for task_id, values in zip(ids, pipe.execute(), strict=True):
            if values[0] is None:  # no state: trimmed between index read and fetch
                continue
            row = {"id": task_id}
            row.update({k: v for k, v in zip(fields, values, strict=True) if v is not None})
            rows.append(row)
        return rows

    def index_key(self, state: str | None, name: str | None, worker: str | None) -> str:
        """The most selective single index for a filter (extra filters apply on rows)."""
        if name:
            return self.keys.by_name(name)
        if state:
            return self.keys.by_state(state)
        if worker:
            return self.keys.by_worker(worker)
        return self.keys.tasks

    def count(self, key: str, since: float | None = None, until: float | None = None) -> int:
        if since is None and until is None:
            return int(self.redis.zcard(key))
        return int(
            self.redis.zcount(
                key, "-inf" if since is None else since, "+inf" if until is None else until
            )
        )

    def state_counts(self) -> dict[str, int]:
        """Stored tasks per state, from the state indexes (O(states))."""
        pipe = self.redis.pipeline(transaction=False)
        states = sorted(KNOWN_STATES)
        for state in states:
            pipe.zcard(self.keys.by_state(state))
        counts = dict(zip(states, pipe.execute(), strict=True))
        return {state: int(n) for state, n in counts.items()}

    def task_names(self) -> list[str]:
        return list(self.redis.zrevrange(self.keys.task_names, 0, -1))

    # -- workers -------------------------------------------------------------
    def worker_status(self, fields: dict[str, str], now: float) -> dict[str, Any]:
        """Celery's rule: alive while now < last heartbeat + 2 x freq (+ grace)."""
        worker: dict[str, Any] = dict(fields)
        freq = _float(fields.get("freq")) or DEFAULT_HEARTBEAT_FREQ
        last = _float(fields.get("last_heartbeat"))
        offline_at = _float(fields.get("offline_at"))
        alive = last is not None and now < last + 2 * freq + self.settings.worker_grace
        if offline_at is not None and last is not None and offline_at >= last:
            alive = False
        worker["online"] = alive
        worker["status"] = "online" if alive else "offline"
        return worker

    def workers(self, now: float | None = None) -> list[dict[str, Any]]:
        """The MAX_WORKERS most recently heard of workers, with their status."""
        now = time.time() if now is None else now
        hosts = self.redis.zrevrange(self.keys.workers, 0, MAX_WORKERS - 1)
        pipe = self.redis.pipeline(transaction=False)
        for host in hosts:
            pipe.hgetall(self.keys.worker(host))
        result = []
        for host, fields in zip(hosts, pipe.execute(), strict=True):
            if not fields:
                continue
            fields.setdefault("hostname", host)
            result.append(self.worker_status(fields, now))
        return result

    def worker(self, hostname: str, now: float | None = None) -> dict[str, Any] | None:
        fields = self.redis.hgetall(self.keys.worker(hostname))
        if not fields:
            return None
        fields.setdefault("hostname", hostname)
        return self.worker_status(fields, time.time() if now is None else now)

    # -- statistics ------------------------------------------------------------
    def minute_stats(self, minutes: int = 60, now: float | None = None) -> list[dict[str, Any]]:
        """The last ``minutes`` minutes, oldest first: ``{"minute", "counters" (the
        global hash), "names" (the per-name hash: ``<field>|<name>``)}``, fields
        spelled in monitor/vocabulary.py. (Windowed reads: monitor.history.)"""
        now = time.time() if now is None else now
        last = int(now // 60)
        first = last - minutes + 1
        pipe = self.redis.pipeline(transaction=False)
        for minute in range(first, last + 1):
            key = self.keys.stats(minute)
            pipe.hgetall(key)
            pipe.hgetall(self.keys.stats_names(key))
        raw = pipe.execute()
        return [
            {"minute": minute * 60, "counters": raw[2 * i], "names": raw[2 * i + 1]}
            for i, minute in enumerate(range(first, last + 1))
        ]

    # -- maintenance -------------------------------------------------------
    def delete_all(self) -> int:
        """Delete every key of this prefix (tests, `monitor purge`)."""
        deleted = 0
        batch: list[str] = []
        for key in self.redis.scan_iter(match=self.keys.pattern(), count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += self.redis.unlink(*batch)
                batch.clear()
        if batch:
            deleted += self.redis.unlink(*batch)
        return deleted


def _seconds(value: float) -> int:
    return max(1, int(value))


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
