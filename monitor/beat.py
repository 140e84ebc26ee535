"""Periodic tasks: what celery beat should run, what the monitor saw it run, what it missed.

Entries come from two places:

* the Celery app's ``beat_schedule`` (the monitor needs the user's app:
  ``monitor serve -A proj``, ``celery -A proj monitor``, ``create_app(celery_app=app)``);
* celery-redbeat's keys, when they exist, in the app's ``redbeat_redis_url``
  (default: its broker URL) under ``redbeat_key_prefix`` (default ``redbeat:``):
  the ``{prefix}:schedule`` zset of entry keys scored by their next run, each
  entry a hash with ``definition`` and ``meta`` JSON (see :class:`monitor.keys.RedBeatKeys`).
  The monitor only reads them, bounded (:data:`MAX_ENTRIES` entries,
  :data:`MAX_DEFINITION_BYTES` per value, :data:`REDBEAT_BYTES` in all), and
  treats every value as untrusted data: nothing is unpickled or evaluated.

The last run of an entry is the newest task of its task name (the store's name
index: the publish hook's PENDING record or a ``task-sent`` event) that beat
could have sent for it (:func:`_attribute`): a task the publish hook recorded
without beat's ``celery_beat_task`` header was called by something else; when
several entries share a task name, a task is theirs when its args and kwargs
reprs are the ones beat sends for the entry (and its queue, when both say). The
next run and the ``missed`` flag follow from the entry's Celery schedule
(``remaining_estimate``) after the last run, or, for an entry never seen, after
the oldest moment the monitor can vouch for (its oldest stored task): an entry
is missed when it was due more than the grace (``MONITOR_BEAT_GRACE``, else
half its interval within [30 s, 1 h]) ago and no run was seen since.

All reads of the monitor's store are one Lua script call (``lua/beat_runs.lua``,
read-only); redbeat's, three pipelined round trips.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import redis
from celery.schedules import crontab, maybe_schedule, schedule, solar
from celery.utils.saferepr import saferepr

from .config import mask_url
from .keys import RedBeatKeys
from .model import brief
from .store import Store, redis_client

logger = logging.getLogger(__name__)

#: Entries listed at most (app schedule and redbeat together).
MAX_ENTRIES = 1000
#: Task hashes read per call, split over the entries' task names.
RUN_BUDGET = 2000
#: Newest tasks of one name read at most (when few names share the budget).
MAX_PER_NAME = 50
#: Characters of a stored args / kwargs repr compared (Celery's argsrepr is at
#: most 1,024 characters; a forged one may be 16 KB).
ARGS_CUT = 1100
#: Characters of a name, a task name, a schedule text, an args repr shown.
MAX_TEXT = 256
MAX_ARGS_TEXT = 1024
#: A redbeat ``definition`` or ``meta`` value larger than this is not read.
MAX_DEFINITION_BYTES = 64 * 1024
#: redbeat values read per call in all (bytes).
REDBEAT_BYTES = 8 * 1024 * 1024
#: Default grace: this share of the interval, clamped to [GRACE_MIN, GRACE_MAX] seconds.
GRACE_RATIO = 0.5
GRACE_MIN = 30.0
GRACE_MAX = 3600.0
#: An interval schedule beyond this (seconds, ~100 years) is not believed.
MAX_INTERVAL = 100 * 365 * 86400.0
_CRON_FIELDS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")

_script_source = resources.files("monitor").joinpath("lua/beat_runs.lua").read_text()


@dataclass
class Entry:
    """One periodic task, from either source."""

    name: str
    task: str | None
    source: str  # "app" | "redbeat"
    schedule: Any = None  # a celery schedule, or None when it cannot be computed
    schedule_text: str = ""
    kind: str = "unknown"  # interval | crontab | solar | rrule | other | unknown
    args_text: str | None = None
    kwargs_text: str | None = None
    #: what Celery shows as argsrepr / kwargsrepr for beat's call (None: unknowable)
    args_repr: str | None = None
    kwargs_repr: str | None = None
    queue: str | None = None
    enabled: bool = True
    error: str | None = None
    in_app_schedule: bool = False
    redbeat: dict[str, Any] = field(default_factory=dict)


def _text(value: Any, limit: int = MAX_TEXT) -> str:
    """Untrusted value as display text, capped (a marker says so)."""
    text = value if isinstance(value, str) else brief(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


# -- schedules -----------------------------------------------------------------
def human_seconds(seconds: float) -> str:
    """``1 s``, ``90 s``, ``5 min``, ``1.5 h``, ``2 d``."""
    if seconds < 120:
        return f"{seconds:.4g} s"
    if seconds < 7200:
        return f"{seconds / 60:.4g} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.4g} h"
    return f"{seconds / 86400:.4g} d"


def describe(sched: Any) -> tuple[str, str]:
    """(kind, human text) of a Celery schedule."""
    if isinstance(sched, crontab):
        parts = (
            sched._orig_minute,
            sched._orig_hour,
            sched._orig_day_of_month,
            sched._orig_month_of_year,
            sched._orig_day_of_week,
        )
        cron = " ".join(_text(str(p), 64) for p in parts)
        return "crontab", _text(f"crontab {cron} (m h dom mon dow)")
    if isinstance(sched, solar):
        return "solar", _text(f"solar {sched.event} at {sched.lat:g}, {sched.lon:g}")
    if isinstance(sched, schedule):
        seconds = sched.run_every.total_seconds()
        relative = " (relative)" if sched.relative else ""
        return "interval", f"every {human_seconds(seconds)}{relative}"
    return "other", _text(f"{type(sched).__name__} {sched!r}")


def _after(sched: Any, ts: float) -> float | None:
    """The first run of ``sched`` after time ``ts`` (UNIX), by Celery's own rule
    (``remaining_estimate``, relative to Celery's clock), or None."""
    when = dt.datetime.fromtimestamp(ts, tz=dt.UTC)
    now = time.time()
    delta = sched.remaining_estimate(when)
    if delta is None:
        return None
    # Celery's clock and ours were read microseconds apart: millisecond precision.
    return round(now + delta.total_seconds(), 3)


def period(sched: Any, due: float | None) -> float | None:
    """Seconds between two runs: the interval, or from ``due`` to the run after it."""
    if isinstance(sched, schedule) and not isinstance(sched, crontab | solar):
        return sched.run_every.total_seconds()
    if due is None:
        return None
    following = _after(sched, due + 0.001)
    if following is None or following <= due:
        return None
    return following - due


def default_grace(interval: float | None) -> float:
    """Half the interval, at least :data:`GRACE_MIN`, at most :data:`GRACE_MAX`."""
    if interval is None:
        return GRACE_MAX
    return min(GRACE_MAX, max(GRACE_MIN, interval * GRACE_RATIO))


def _set_schedule(entry: Entry, sched: Any) -> None:
    entry.schedule = sched
    entry.kind, entry.schedule_text = describe(sched)


def _call_reprs(app: Any, args: Any, kwargs: Any) -> tuple[str | None, str | None]:
    """argsrepr / kwargsrepr of beat's call: beat passes the args as a list (an
    empty one as ``()``) and the kwargs as a dict (celery/beat.py), and Celery
    shows them with saferepr (celery/app/amqp.py as_task_v2)."""
    if args is None:
        args = ()
    if kwargs is None:
        kwargs = {}
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        return None, None
    levels = getattr(app.conf, "task_repr_maxlevels", None) if app is not None else None
    options = {"maxlevels": levels} if levels else {}
    try:
        a = saferepr(list(args), 1024, **options) if args else "()"
        k = saferepr(dict(kwargs), 1024, **options) if kwargs else "{}"
    except Exception:  # noqa: BLE001 - a lazy argument (BeatLazyFunc) or an odd object
        return None, None
    return a, k


def _queue(options: Any) -> str | None:
    if not isinstance(options, Mapping):
        return None
    queue = options.get("queue")
    if isinstance(queue, str) and queue:
        return _text(queue)
    name = getattr(queue, "name", None)  # a kombu Queue
    return _text(name) if isinstance(name, str) and name else None


# -- the app's beat_schedule ---------------------------------------------------
def app_entries(celery_app: Any) -> list[Entry]:
    """Entries of ``celery_app.conf.beat_schedule`` (at most :data:`MAX_ENTRIES`)."""
    if celery_app is None:
        return []
    config = celery_app.conf.get("beat_schedule") or {}
    if not isinstance(config, Mapping):
        return []
    entries = []
    for name, spec in list(config.items())[:MAX_ENTRIES]:
        entry = Entry(name=_text(str(name)), task=None, source="app", in_app_schedule=True)
        entries.append(entry)
        if not isinstance(spec, Mapping):
            entry.error = "not a mapping"
            continue
        task = spec.get("task")
        entry.task = _text(task) if isinstance(task, str) else None
        args, kwargs = spec.get("args"), spec.get("kwargs")
        if args is not None:
            entry.args_text = _text(saferepr(args, MAX_ARGS_TEXT), MAX_ARGS_TEXT)
        if kwargs is not None:
            entry.kwargs_text = _text(saferepr(kwargs, MAX_ARGS_TEXT), MAX_ARGS_TEXT)
        entry.args_repr, entry.kwargs_repr = _call_reprs(celery_app, args, kwargs)
        entry.queue = _queue(spec.get("options"))
        try:
            sched = maybe_schedule(spec.get("schedule"), spec.get("relative", False), celery_app)
            if sched is None:
                raise ValueError("no schedule")
            _set_schedule(entry, sched)
        except Exception as exc:  # noqa: BLE001 - the user's config: say what is wrong
            entry.error = f"schedule: {brief(exc)}"
    return entries


# -- celery-redbeat's keys -------------------------------------------------------
_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()
_MAX_CLIENTS = 8


#: url -> (monotonic time until which it is not asked again, the error): a Redis
#: that does not answer costs its connect timeout once per REDBEAT_RETRY, not on
#: every request and live push.
_failures: dict[str, tuple[float, str]] = {}
REDBEAT_RETRY = 30.0


def _client(url: str) -> redis.Redis:
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            if len(_clients) >= _MAX_CLIENTS:
                _clients.pop(next(iter(_clients))).close()
            client = _clients[url] = redis_client(url, socket_timeout=3.0)
        return client


def redbeat_config(celery_app: Any) -> tuple[str | None, RedBeatKeys, str | None]:
    """(Redis URL or None, keys, why not readable) of the app's redbeat settings,
    as redbeat reads them (``redbeat_redis_url``, else the broker URL)."""
    conf = celery_app.conf
    prefix = conf.get("redbeat_key_prefix") or conf.get("REDBEAT_KEY_PREFIX") or "redbeat:"
    keys = RedBeatKeys(prefix if isinstance(prefix, str) else "redbeat:")
    url = conf.get("redbeat_redis_url") or conf.get("REDBEAT_REDIS_URL") or conf.get("broker_url")
    if isinstance(url, list | tuple):
        url = url[0] if url else None
    if isinstance(url, str):
        url = url.split(";")[0].strip()
    if not isinstance(url, str) or not url:
        return None, keys, "no redbeat_redis_url and no broker URL"
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None, keys, f"{url.split(':', 1)[0][:20]} URL: not a Redis the monitor reads"
    return url, keys, None


def _datetime(value: Any) -> float | None:
    """redbeat's encoded datetime ({"__type__": "datetime", year ..., timezone}) as UNIX time."""
    if not isinstance(value, Mapping) or value.get("__type__") != "datetime":
        return None
    parts = {}
    for key in ("year", "month", "day", "hour", "minute", "second", "microsecond"):
        part = value.get(key, 0)
        if isinstance(part, bool) or not isinstance(part, int):
            return None
        parts[key] = part
    zone = value.get("timezone", "UTC")
    try:
        if isinstance(zone, int | float) and not isinstance(zone, bool):
            tz: dt.tzinfo = dt.timezone(dt.timedelta(seconds=float(zone)))
        elif zone in ("UTC", None):
            tz = dt.UTC
        elif isinstance(zone, str) and len(zone) <= 64:
            from zoneinfo import ZoneInfo

            tz = ZoneInfo(zone)
        else:
            return None
        return dt.datetime(tzinfo=tz, **parts).timestamp()
    except (ValueError, TypeError, OverflowError, KeyError, OSError):
        return None  # ZoneInfoNotFoundError is a KeyError


def _redbeat_schedule(entry: Entry, spec: Any, app: Any) -> None:
    """A celery schedule from redbeat's JSON (redbeat/decoder.py's encodings),
    each field checked before Celery sees it."""
    if not isinstance(spec, Mapping):
        entry.error = "schedule: not an encoded schedule"
        return
    kind = spec.get("__type__")
    try:
        if kind == "interval":
            every = _finite(spec.get("every"))
            if every is None or not 0 < every <= MAX_INTERVAL:
                raise ValueError(f"interval {brief(spec.get('every'))} is not a number of seconds")
            sched: Any = schedule(
                dt.timedelta(seconds=every), relative=bool(spec.get("relative")), app=app
            )
        elif kind == "crontab":
            fields = {}
            for name in _CRON_FIELDS:
                value = spec.get(name, "*")
                if isinstance(value, bool) or not isinstance(value, str | int):
                    raise ValueError(f"crontab {name} is {brief(value)}")
                if isinstance(value, str) and len(value) > 128:
                    raise ValueError(f"crontab {name} is {len(value)} characters long")
                fields[name] = value
            sched = crontab(app=app, **fields)
        elif kind == "solar":
            lat, lon, event = _finite(spec.get("lat")), _finite(spec.get("lon")), spec.get("event")
            if lat is None or lon is None or event not in solar._all_events:
                raise ValueError("solar event, lat or lon is not usable")
            sched = solar(event, lat, lon, app=app)
        elif kind == "rrule":
            # Not computed here (dateutil's rrule): redbeat's own next run is shown.
            entry.kind = "rrule"
            freq, interval = spec.get("freq"), spec.get("interval")
            entry.schedule_text = _text(f"rrule freq={brief(freq)} interval={brief(interval)}")
            return
        else:
            raise ValueError(f"unknown schedule type {brief(kind)}")
    except Exception as exc:  # noqa: BLE001 - untrusted data: one entry's error
        entry.error = f"schedule: {brief(exc)}"
        entry.schedule_text = _text(f"{brief(kind)}")
        return
    _set_schedule(entry, sched)


def redbeat_entries(celery_app: Any) -> tuple[list[Entry], dict[str, Any]]:
    """Entries of celery-redbeat in the app's redbeat Redis, and what was read
    (``present`` false when there is no schedule zset)."""
    url, keys, why = redbeat_config(celery_app)
    info: dict[str, Any] = {"prefix": _text(keys.prefix), "present": False}
    if url is None:
        info["error"] = why
        return [], info
    info["url"] = mask_url(url)
    client = _client(url)
    pipe = client.pipeline(transaction=False)
    pipe.zcard(keys.schedule)
    pipe.zrange(keys.schedule, 0, MAX_ENTRIES - 1, withscores=True)
    pipe.pttl(keys.lock)
    total, members, lock_ttl = pipe.execute()
    info.update(present=total > 0, count=total, truncated=total > len(members))
    info["lock_held"] = lock_ttl is not None and lock_ttl != -2
    if not members:
        return [], info
    pipe = client.pipeline(transaction=False)
    for member, _score in members:
        pipe.hstrlen(member, "definition")
        pipe.hstrlen(member, "meta")
    sizes = pipe.execute(raise_on_error=False)
    budget = REDBEAT_BYTES
    readable = []
    for i, (member, score) in enumerate(members):
        d_size, m_size = sizes[2 * i], sizes[2 * i + 1]
        ok = isinstance(d_size, int) and isinstance(m_size, int)
        ok = ok and d_size <= MAX_DEFINITION_BYTES and m_size <= MAX_DEFINITION_BYTES
        if ok and d_size + m_size <= budget:
            budget -= d_size + m_size
            readable.append((member, score, True))
        else:
            readable.append((member, score, False))
    pipe = client.pipeline(transaction=False)
    for member, _score, ok in readable:
        if ok:
            pipe.hmget(member, "definition", "meta")
    values = iter(pipe.execute(raise_on_error=False))
    entries = []
    for member, score, ok in readable:
        name = member[len(keys.prefix) :] if member.startswith(keys.prefix) else member
        entry = Entry(name=_text(name), task=None, source="redbeat")
        entry.redbeat = {"key": _text(member), "scheduled": _finite(score)}
        entries.append(entry)
        if not ok:
            entry.error = "definition or meta too large (or not a hash): not read"
            continue
        value = next(values)
        if not isinstance(value, list):
            entry.error = f"cannot read: {brief(value)}"
            continue
        _redbeat_entry(entry, value[0], value[1], celery_app)
    return entries, info


_NOT_JSON = object()


def _json(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _redbeat_entry(entry: Entry, definition: Any, meta: Any, app: Any) -> None:
    spec = _json(definition)
    if spec is None:
        entry.error = "no definition"
        return
    if not isinstance(spec, dict):
        entry.error = "definition is not " + ("JSON" if spec is _NOT_JSON else "an object")
        return
    task = spec.get("task")
    entry.task = _text(task) if isinstance(task, str) and task else None
    if entry.task is None:
        entry.error = "definition has no task name"
    args, kwargs = spec.get("args"), spec.get("kwargs")
    entry.args_text = _text(json.dumps(args), MAX_ARGS_TEXT) if args is not None else None
    entry.kwargs_text = _text(json.dumps(kwargs), MAX_ARGS_TEXT) if kwargs is not None else None
    entry.args_repr, entry.kwargs_repr = _call_reprs(app, args, kwargs)
    entry.queue = _queue(spec.get("options"))
    entry.enabled = spec.get("enabled", True) is not False
    _redbeat_schedule(entry, spec.get("schedule"), app)
    decoded = _json(meta)
    if isinstance(decoded, dict):
        entry.redbeat["last_run_at"] = _datetime(decoded.get("last_run_at"))
        count = decoded.get("total_run_count")
        if isinstance(count, int) and not isinstance(count, bool) and 0 <= count < 2**53:
            entry.redbeat["total_run_count"] = count


# -- runs seen --------------------------------------------------------------------
@dataclass
class _Runs:
    last: dict[str, Any] | None = None
    seen: int = 0
    #: no run of this entry seen since this time (set when the name's window was full)
    looked_back_to: float | None = None


_scripts: dict[int, Any] = {}


def _script(store: Store) -> Any:
    script = _scripts.get(id(store.redis))
    if script is None:
        if len(_scripts) > 64:
            _scripts.clear()
        script = _scripts[id(store.redis)] = store.redis.register_script(_script_source)
    return script


def _attribute(store: Store, entries: list[Entry]) -> tuple[list[_Runs], float | None]:
    """The runs seen of each entry (same order), and the store's oldest task time."""
    runs = [_Runs() for _ in entries]
    by_name: dict[str, list[int]] = {}
    for i, entry in enumerate(entries):
        if entry.task:
            by_name.setdefault(entry.task, []).append(i)
    names = list(by_name)
    per_name = max(1, min(MAX_PER_NAME, RUN_BUDGET // max(1, len(names))))
    reply = _script(store)(keys=store.keys.beat_script_keys(names), args=[per_name, ARGS_CUT])
    horizon = _finite(reply[0]) if reply else None
    for name, rows in zip(names, reply[1:], strict=False):
        group = by_name[name]
        oldest_score = None
        for row in rows:
            (tid, sent, received, stamp, state, beat, hooked, args, kwargs, queue, score) = row
            score_f = _finite(score)
            if score_f is not None:
                oldest_score = score_f if oldest_score is None else min(oldest_score, score_f)
            when = _finite(sent) or _finite(received) or _finite(stamp)
            if when is None:
                continue
            if hooked and not beat:
                continue  # the publish hook saw it, and beat did not send it
            for i in group:
                entry = entries[i]
                if len(group) > 1 and not _same_call(entry, args, kwargs, queue):
                    continue
                r = runs[i]
                r.seen += 1
                if r.last is None or when > r.last["time"]:
                    r.last = {"id": tid, "time": when, "state": state or None}
        if len(rows) >= per_name and oldest_score is not None:
            for i in group:
                runs[i].looked_back_to = oldest_score
    return runs, horizon


def _same_call(entry: Entry, args: Any, kwargs: Any, queue: Any) -> bool:
    """Is a task with these stored reprs (and queue) beat's call of ``entry``?"""
    if entry.args_repr is None or not isinstance(args, str) or not isinstance(kwargs, str):
        return False
    if args != entry.args_repr[:ARGS_CUT] or kwargs != entry.kwargs_repr[:ARGS_CUT]:  # type: ignore[index]
        return False
    return not (entry.queue and isinstance(queue, str) and queue and queue != entry.queue)


# -- the whole picture ----------------------------------------------------------------
def _merge(app_list: list[Entry], redbeat_list: list[Entry]) -> tuple[list[Entry], int]:
    """redbeat keeps the app's static entries under the same names: one row each
    (redbeat's), the first MAX_ENTRIES by name, and how many there were."""
    redbeat_names = {e.name for e in redbeat_list}
    merged = list(redbeat_list)
    for entry in app_list:
        if entry.name in redbeat_names:
            continue
        merged.append(entry)
    app_names = {e.name for e in app_list}
    for entry in redbeat_list:
        entry.in_app_schedule = entry.name in app_names
    return sorted(merged, key=lambda e: (e.name, e.source))[:MAX_ENTRIES], len(merged)


def _row(
    entry: Entry, runs: _Runs, horizon: float | None, now: float, grace_setting: float | None
) -> dict[str, Any]:
    """One entry as the API shows it: schedule, last run seen, next run, missed."""
    rb = entry.redbeat
    beat_last = rb.get("last_run_at")
    seen_last = runs.last["time"] if runs.last else None
    evidence = max((t for t in (seen_last, beat_last) if t is not None), default=None)
    anchor = evidence
    if anchor is None:
        floor = [t for t in (horizon, runs.looked_back_to) if t is not None]
        anchor = max(floor) if floor else None
    due = interval = None
    error = entry.error
    if entry.schedule is not None and entry.enabled:
        try:
            due = _after(entry.schedule, anchor if anchor is not None else now)
            interval = period(entry.schedule, due)
        except Exception as exc:  # noqa: BLE001 - a custom schedule class, odd data
            error = error or f"schedule: {brief(exc)}"
            due = None
    grace = grace_setting if grace_setting is not None else default_grace(interval)
    missed = bool(entry.enabled and due is not None and anchor is not None and now > due + grace)
    scheduled = rb.get("scheduled")
    next_run = scheduled if scheduled is not None and scheduled > 0 else due
    if not entry.enabled:
        status = "disabled"
    elif missed:
        status = "missed"
    elif due is not None and now > due:
        status = "due"
    elif due is None and next_run is None:
        status = "unknown"
    else:
        status = "scheduled"
    row: dict[str, Any] = {
        "name": entry.name,
        "task": entry.task,
        "source": entry.source,
        "schedule": entry.schedule_text or None,
        "schedule_kind": entry.kind,
        "interval": interval,
        "args": entry.args_text,
        "kwargs": entry.kwargs_text,
        "queue": entry.queue,
        "enabled": entry.enabled,
        "last_run": seen_last,
        "last_run_id": runs.last["id"] if runs.last else None,
        "last_run_state": runs.last["state"] if runs.last else None,
        "runs_seen": runs.seen,
        "next_run": next_run,
        "due": due,
        "grace": grace,
        "missed": missed,
        "never_run": evidence is None,
        "status": status,
        "in_app_schedule": entry.in_app_schedule,
        "error": error,
    }
    if entry.source == "redbeat":
        row["redbeat_key"] = rb.get("key")
        row["beat_last_run_at"] = beat_last
        row["total_run_count"] = rb.get("total_run_count")
    return row


class _Backoff(Exception):
    """redbeat's Redis failed less than REDBEAT_RETRY seconds ago: not asked again yet."""


def beat_status(store: Store, celery_app: Any, now: float | None = None) -> dict[str, Any]:
    """``GET /api/v1/beat``: every periodic task with its last, next and missed runs,
    and what each source said."""
    now = time.time() if now is None else now
    sources: dict[str, Any] = {"app": {"configured": celery_app is not None}}
    app_list = app_entries(celery_app)
    config = celery_app.conf.get("beat_schedule") if celery_app is not None else None
    sources["app"]["count"] = len(config) if isinstance(config, Mapping) else 0
    redbeat_list: list[Entry] = []
    if celery_app is not None:
        url, keys, _why = redbeat_config(celery_app)
        failed = _failures.get(url) if url else None
        if failed is not None and failed[0] <= time.monotonic():
            _failures.pop(url, None)  # type: ignore[arg-type]
            failed = None
        try:
            if failed is not None:
                raise _Backoff(failed[1])
            redbeat_list, sources["redbeat"] = redbeat_entries(celery_app)
        except (redis.RedisError, _Backoff) as exc:
            # The user's Redis (often the broker) away: the app's schedule still shows.
            error = str(exc) if isinstance(exc, _Backoff) else type(exc).__name__
            if url and failed is None:
                if len(_failures) >= _MAX_CLIENTS:
                    _failures.clear()
                _failures[url] = (time.monotonic() + REDBEAT_RETRY, error)
            sources["redbeat"] = {
                "prefix": _text(keys.prefix),
                "url": mask_url(url),
                "present": None,
                "error": f"cannot read redbeat's keys: {error}",
            }
    entries, total = _merge(app_list, redbeat_list)
    runs, horizon = _attribute(store, entries)
    grace = store.settings.beat_grace
    rows = [_row(e, r, horizon, now, grace) for e, r in zip(entries, runs, strict=True)]
    return {
        "now": now,
        "horizon": horizon,
        "grace": grace,
        "count": len(rows),
        "truncated": total > MAX_ENTRIES
        or sources["app"]["count"] > len(app_list)
        or bool(sources.get("redbeat", {}).get("truncated")),
        "sources": sources,
        "entries": rows,
    }


#: (redis_url, prefix) -> the Celery app the web tier was given for that store
#: (init_app binds it), for code that only holds a Store: the live "beat" room.
_bound_apps: dict[tuple[str, str], Any] = {}


def bind_app(settings: Any, celery_app: Any) -> None:
    """Remember ``celery_app`` as the app of the store ``settings`` name."""
    if celery_app is not None:
        if len(_bound_apps) >= 64:  # apps built and dropped (tests): keep the newest
            _bound_apps.pop(next(iter(_bound_apps)))
        _bound_apps[(settings.redis_url, settings.prefix)] = celery_app


def app_for(store: Store) -> Any:
    """The Celery app bound to ``store``'s Redis and prefix, or None."""
    return _bound_apps.get((store.settings.redis_url, store.settings.prefix))


def periodic_tasks(store: Store, celery_app: Any, now: float | None = None) -> list[dict[str, Any]]:
    """Every periodic task: ``name, task, schedule, source, last_run, next_run, missed``
    (and the other fields of :func:`beat_status`' rows). Times are UNIX seconds."""
    return beat_status(store, celery_app, now)["entries"]
