"""Every Redis command the monitor runs: the batch write script and the reads.

Writes: :meth:`Store.apply` turns a batch of :class:`~monitor.model.TaskEvent`
and :class:`~monitor.model.WorkerEvent` into one call of ``apply_batch.lua``
(precedence, de-duplication, timeline, indexes, counters, links, change feed
and retention, atomically, in one round trip).

Reads: tasks (one, or a filtered newest-first page), workers with their
online/offline status, per-minute statistics, the change feed. Pipelines keep
every read to a small, fixed number of round trips whatever the page size.
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

from . import fastjson, model
from .config import Settings
from .keys import Keys
from .model import TaskEvent, WorkerEvent

logger = logging.getLogger(__name__)

#: Upper bounds (seconds) of the runtime histogram buckets; +Inf is implicit.
RUNTIME_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: state -> fields Celery keeps from a late event of that state (as a list, for JSON).
_MERGE_KEEP = {state: list(keep) for state, keep in model.MERGE_RULES.items()}
#: Fields holding the real, JSON-encoded arguments (signals path).
JSON_FIELDS = frozenset({"args_json", "kwargs_json"})
#: Two reports of one transition by different sources closer than this are one.
DEDUP_WINDOW = 2.0
#: A worker without a known heartbeat interval is assumed to beat this often.
DEFAULT_HEARTBEAT_FREQ = 2.0
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


def bucket_label(upper_bound: float) -> str:
    """Counter field suffix of a runtime bucket: ``rt:0.25``, ``rt:5``, ``rt:+Inf``."""
    return f"{upper_bound:g}"


def redis_client(url: str, **options: Any) -> redis.Redis:
    """A Redis client that fails fast: the monitor never hangs on a dead Redis."""
    options.setdefault("socket_timeout", 5.0)
    options.setdefault("socket_connect_timeout", 2.0)
    options.setdefault("health_check_interval", 30)
    options.setdefault("decode_responses", True)
    return redis.Redis.from_url(url, **options)


def _rank_table() -> dict[str, int]:
    return {state: model.rank(state) for state in model.KNOWN_STATES}


@dataclass
class BatchResult:
    applied: int
    duplicates: int
    tasks_changed: int
    trimmed: int


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
        fields: dict[str, str] = {}
        for key, value in event.fields.items():
            if value is None:
                continue
            # Hot path (10k+ events/s): short strings need no conversion or cap.
            if type(value) is str and len(value) <= short and key != "kwargs":
                fields[key] = value
                continue
            if key in ("kwargs", "kwargs_json") and isinstance(value, dict):
                value = model.redact_mapping(value, self.settings.redact)
            if key in JSON_FIELDS and not isinstance(value, str):
                # Real arguments, for a faithful retry: strict JSON or nothing
                # (the display repr is still stored), and never cut in half.
                try:
                    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
                except (TypeError, ValueError):
                    continue
                if len(text) > cap // 4 and len(text.encode()) > cap:
                    fields[key + "_truncated"] = str(len(text.encode()))
                    continue
                fields[key] = text
                continue
            text = model.as_text(value)
            if key in model.CAPPED_FIELDS:
                text, size = model.cap_text(text, cap)
                if size:
                    fields[key + "_truncated"] = str(size)
            fields[key] = text
        if "kwargs" in fields and self.settings.redact:
            fields["kwargs"] = model.redact_repr(fields["kwargs"], self.settings.redact)
        retries = event.fields.get("retries")
        if retries is not None and type(retries) is not int:
            try:
                retries = int(retries)
            except (TypeError, ValueError):
                retries = None
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
                "ready_states": sorted(model.READY_STATES | {"REJECTED"}),
                # state -> fields a late (merge-only) event of that state keeps
                "keep": _MERGE_KEEP,
                # state -> the hash field holding its time ("received", ...)
                "subject": dict(model.STATE_TO_SUBJECT),
                "max_tasks": s.max_tasks,
                "max_age": s.max_age,
                "max_timeline": s.max_timeline,
                "stream_maxlen": s.stream_maxlen,
                "stats_ttl": s.stats_ttl,
                "dedup_window": DEDUP_WINDOW,
                "purge_after": s.worker_purge_after,
                "rt_buckets": [[b, bucket_label(b)] for b in RUNTIME_BUCKETS],
            }
        )
        self._config_for = s
        return self._config_json

    def encode_batch(self, events: Iterable[TaskEvent | WorkerEvent]) -> bytes:
        return fastjson.dumps([self.record(e) for e in events])

    def apply(
        self, events: Sequence[TaskEvent | WorkerEvent], now: float | None = None
    ) -> BatchResult:
        """Store a batch atomically. Raises redis errors: callers decide to retry or drop."""
        if not events:
            return BatchResult(0, 0, 0, 0)
        return self.apply_encoded(self.encode_batch(events), now)

    def apply_encoded(self, payload: bytes | str, now: float | None = None) -> BatchResult:
        now = time.time() if now is None else now
        result = self._apply_script(keys=self._script_keys, args=[payload, self._config(), now])
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
        pipe.smembers(self.keys.children(task_id))
        fields, raw_timeline, children = pipe.execute()
        if not fields:
            return None
        timeline = sorted((json.loads(e) for e in raw_timeline), key=lambda e: e["t"])
        task: dict[str, Any] = dict(fields)
        task["id"] = task_id
        task["timeline"] = [
            {
                "state": e["s"],
                "timestamp": e["t"],
                "hostname": e.get("h"),
                "sources": e["src"].split(","),
                "retries": e.get("r"),
            }
            for e in timeline
        ]
        task["children"] = sorted(children)
        group_id = fields.get("group_id")
        task["group"] = sorted(self.redis.smembers(self.keys.group(group_id))) if group_id else []
        return task

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
        states = sorted(model.KNOWN_STATES)
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
        now = time.time() if now is None else now
        hosts = self.redis.zrevrange(self.keys.workers, 0, -1)
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
        """Per-minute counters for the last ``minutes`` minutes, oldest first."""
        now = time.time() if now is None else now
        last = int(now // 60)
        first = last - minutes + 1
        pipe = self.redis.pipeline(transaction=False)
        for minute in range(first, last + 1):
            pipe.hgetall(self.keys.stats(minute))
        out = []
        for minute, raw in zip(range(first, last + 1), pipe.execute(), strict=True):
            out.append({"minute": minute * 60, "counters": raw})
        return out

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


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
