"""Lost, stuck and at-risk tasks: flags on task rows, the Redis broker's view, the
configuration risks, and the result-backend reconciliation job.

* **lost**: a RECEIVED or STARTED task whose worker is not online by Celery's
  heartbeat rule (:meth:`monitor.store.Store.worker_status`). A flag, not a
  state: the task's state stays what Celery last said.
* **stuck**: a STARTED task running longer than its time limit (hard or soft,
  as recorded by the hooks, see ``monitor.signals.handlers._time_limits``) or
  far beyond its name's p99 runtime (``Settings.stuck_p99_factor``).
* **Redis broker**: kombu's Redis transport keeps every delivered, unacknowledged
  message in the ``unacked`` hash (delivery tag -> [message, exchange, routing
  key]) and its delivery time in the ``unacked_index`` zset; a consumer's
  ``restore_visible`` puts back into its queue every message delivered more than
  ``visibility_timeout`` seconds ago (kombu/transport/redis.py). So a message
  there past the timeout *will be redelivered*, and an ETA/countdown task whose
  ETA is further than the timeout from its delivery runs twice (or more).
* **risks**: ``acks_late`` without ``task_reject_on_worker_lost`` (a pool process
  that dies acknowledges its task: it is marked failed, never redelivered), from
  the app's conf (``-A``), its tasks' own options and the workers' ``conf``
  replies (:mod:`monitor.web.inspect`).
* **reconciliation**: an elected job (:func:`jobs`) asks the result backend
  (``AsyncResult``) about non-final tasks not updated for
  ``Settings.reconcile_after`` seconds, and records the final state it tells
  with source ``reconcile`` (the timeline says so).

Every read is bounded: the task lists walk the RECEIVED/STARTED indexes within
:class:`monitor.web.queries.Budget`; the broker read is one script call reading
at most :data:`UNACKED_READ` entries, cached for :data:`BROKER_CACHE_SECONDS`.
This module owns these reads (the broker's keys are kombu's, spelled from its
transport options by :class:`monitor.keys.RedisBrokerKeys`).
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .jobs import Job, JobContext
from .keys import RedisBrokerKeys
from .model import TaskEvent
from .store import Store, redis_client
from .values import finite_float
from .vocabulary import LIST_FIELDS, READY_STATES

logger = logging.getLogger(__name__)

#: The states in which a task is on a worker (and can be lost with it).
RUNNING = ("RECEIVED", "STARTED")
FLAGS = ("lost", "stuck")
#: Task fields the stuck check reads besides the list's (state, name, worker).
LIMIT_FIELDS = ("started", "time_limit", "soft_time_limit")
#: Seconds past a limit before a task counts as stuck: the worker enforces a hard
#: limit by killing the process and reports the failure a moment later.
LIMIT_GRACE = 5.0
#: The p99 rule needs this many runs of the name in the window ...
P99_MIN_COUNT = 20
#: ... over this window (seconds) ...
P99_WINDOW = 24 * 3600
#: ... and is checked for at most this many names per request (each is a read).
P99_NAMES = 20
#: A task is never stuck by the p99 rule before running this long.
P99_FLOOR = 60.0
#: Entries of the broker's unacked index read at most (oldest first). The script
#: blocks the broker's Redis while it runs: ~6 ms for 500 messages of 1 kB
#: (bench/bench_lost.py), once per BROKER_CACHE_SECONDS per serve process.
UNACKED_READ = 500
#: Larger unacked messages are not JSON-decoded by the script (only their id is
#: looked for in the text).
UNACKED_DECODE_BYTES = 256 * 1024
#: Seconds one broker read is reused (the task list annotates rows from it).
BROKER_CACHE_SECONDS = 5.0
#: Rows listed per section of the risks report.
REPORT_ROWS = 200
#: Task names whose own acks_late option is reported at most.
MAX_TASK_RISKS = 100
#: kombu's default visibility timeout (Channel.visibility_timeout).
DEFAULT_VISIBILITY_TIMEOUT = 3600.0
#: Broker URL schemes served by kombu's Redis transport.
REDIS_SCHEMES = ("redis", "rediss", "unix")


# -- small parsers --------------------------------------------------------------------


def _epoch(value: Any) -> float | None:
    """An ETA as stored (ISO text) or sent (ISO text, datetime): epoch seconds."""
    if isinstance(value, datetime.datetime):
        when = value
    elif isinstance(value, str) and 0 < len(value) <= 64:
        try:
            when = datetime.datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    if when.tzinfo is None:  # Celery sends naive ETAs in UTC (enable_utc)
        when = when.replace(tzinfo=datetime.UTC)
    try:
        return when.timestamp()
    except (OverflowError, ValueError, OSError):
        return None


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# -- lost ------------------------------------------------------------------------------


def online_hosts(store: Store, now: float | None = None) -> set[str]:
    """Hostnames online by Celery's heartbeat rule (one read of the worker set)."""
    return {w["hostname"] for w in store.workers(now) if w.get("online")}


def online_among(store: Store, hosts: set[str], now: float | None = None) -> set[str]:
    """Which of ``hosts`` are online (one pipeline: a page's few workers, not all)."""
    now = time.time() if now is None else now
    names = sorted(h for h in hosts if isinstance(h, str) and h)
    if not names:
        return set()
    pipe = store.redis.pipeline(transaction=False)
    for host in names:
        pipe.hgetall(store.keys.worker(host))
    return {
        host
        for host, fields in zip(names, pipe.execute(), strict=True)
        if fields and store.worker_status(fields, now)["online"]
    }


def is_lost(state: Any, worker: Any, online: set[str]) -> bool:
    """On a worker (RECEIVED/STARTED) that is not online. A worker purged from the
    list (offline for longer than ``worker_purge_after``) is not online either."""
    return state in RUNNING and bool(worker) and worker not in online


# -- stuck -----------------------------------------------------------------------------


#: Seconds a name's p99 is reused (the task list asks for it on every page).
P99_CACHE_SECONDS = 60.0
#: Names whose p99 this process remembers at most.
P99_CACHE_NAMES = 1000
#: (prefix, name) -> (monotonic time read, p99 or None), shared by this process's requests.
_p99_cache: dict[tuple[str, str], tuple[float, float | None]] = {}
_p99_lock = threading.Lock()


class P99:
    """Names' p99 runtimes, read lazily: at most P99_NAMES reads per instance (a
    request), each kept P99_CACHE_SECONDS for the process's later requests."""

    def __init__(self, store: Store, factor: float) -> None:
        self.store = store
        self.factor = factor
        self._known: dict[str, float | None] = {}
        self._reads = 0
        try:
            from .history import runtime_quantiles
        except ImportError:  # the metrics module is not there: the time-limit rule only
            runtime_quantiles = None
        self._read = runtime_quantiles

    def get(self, name: Any) -> float | None:
        if self._read is None or not isinstance(name, str) or not name:
            return None
        if name in self._known:
            return self._known[name]
        key, clock = (self.store.keys.prefix, name), time.monotonic()
        with _p99_lock:
            cached = _p99_cache.get(key)
        if cached is not None and clock - cached[0] < P99_CACHE_SECONDS:
            self._known[name] = cached[1]
            return cached[1]
        if self._reads >= P99_NAMES:
            return None
        self._reads += 1
        value = None
        try:
            q = self._read(self.store, name, P99_WINDOW)
            count, p99 = q.get("count") or 0, finite_float(q.get("p99"))
            if count >= P99_MIN_COUNT and p99 is not None and p99 > 0:
                value = p99
        except redis.RedisError:
            raise
        except Exception:  # noqa: BLE001 - a sibling module's bug must not break the list
            logger.debug("monitor: runtime_quantiles(%r) failed", name, exc_info=True)
        self._known[name] = value
        with _p99_lock:
            if len(_p99_cache) >= P99_CACHE_NAMES:
                _p99_cache.clear()
            _p99_cache[key] = (clock, value)
        return value


def stuck_reason(
    state: Any,
    started: Any,
    time_limit: Any,
    soft_time_limit: Any,
    now: float,
    p99: float | None = None,
    factor: float = 10.0,
) -> str | None:
    """Why a task is stuck, or None: STARTED past its time limit, else far past its p99."""
    if state != "STARTED":
        return None
    since = finite_float(started)
    if since is None:
        return None
    age = now - since
    hard, soft = finite_float(time_limit), finite_float(soft_time_limit)
    if hard is not None and hard > 0 and age > hard + LIMIT_GRACE:
        return f"running for {_duration(age)}, past its time limit ({_duration(hard)})"
    if soft is not None and soft > 0 and age > soft + LIMIT_GRACE:
        return f"running for {_duration(age)}, past its soft time limit ({_duration(soft)})"
    if p99 is not None and age > max(factor * p99, P99_FLOOR):
        return (
            f"running for {_duration(age)}, over {factor:g} x its p99 runtime "
            f"({p99:.3g} s, last 24 h)"
        )
    return None


# -- rows -----------------------------------------------------------------------------


def annotate(
    store: Store,
    rows: list[dict[str, Any]],
    now: float | None = None,
    online: set[str] | None = None,
    p99: P99 | None = None,
) -> list[dict[str, Any]]:
    """Add ``lost``, ``stuck`` and ``stuck_reason`` to task rows (in place).

    Reads nothing when no row is RECEIVED/STARTED; else the rows' workers (one
    pipeline, unless ``online`` is given) and the limits of the STARTED rows (one
    pipeline).
    """
    now = time.time() if now is None else now
    running = [row for row in rows if row.get("state") in RUNNING]
    started = [row for row in running if row.get("state") == "STARTED"]
    if running and online is None:
        online = online_among(store, {row.get("worker") for row in running}, now)
    limits: list[list[Any]] = []
    if started:
        pipe = store.redis.pipeline(transaction=False)
        for row in started:
            pipe.hmget(store.keys.task(row["id"]), LIMIT_FIELDS)
        limits = pipe.execute()
    if started and p99 is None:
        p99 = P99(store, store.settings.stuck_p99_factor)
    by_id = {row["id"]: values for row, values in zip(started, limits, strict=True)}
    for row in rows:
        row["lost"] = is_lost(row.get("state"), row.get("worker"), online or set())
        reason = None
        values = by_id.get(row.get("id"))
        if values is not None and p99 is not None:
            expected = p99.get(row.get("name"))
            reason = stuck_reason("STARTED", *values, now, expected, p99.factor)
        row["stuck"] = reason is not None
        row["stuck_reason"] = reason
    return rows


def detail_flags(store: Store, task: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """``lost``, ``stuck``, ``stuck_reason`` of one task's detail (its fields are
    all there; ``worker_online`` is the detail's own look at its worker)."""
    now = time.time() if now is None else now
    state, worker = task.get("state"), task.get("worker")
    lost_now = state in RUNNING and bool(worker) and task.get("worker_online") is not True
    reason = None
    if state == "STARTED":
        p99 = P99(store, store.settings.stuck_p99_factor)
        reason = stuck_reason(
            state,
            task.get("started"),
            task.get("time_limit"),
            task.get("soft_time_limit"),
            now,
            p99.get(task.get("name")),
            p99.factor,
        )
    return {"lost": lost_now, "stuck": reason is not None, "stuck_reason": reason}


def parse_flag(value: str | None) -> str | None:
    """The ``flag`` parameter of the task list: lost, stuck or nothing (QueryError else)."""
    from .web.queries import QueryError

    if not value:
        return None
    if value not in FLAGS:
        raise QueryError(f"flag must be one of {', '.join(FLAGS)}, got {value[:40]!r}")
    return value


def flagged_page(store: Store, query: Any, flag: str, now: float | None = None) -> dict[str, Any]:
    """``GET /api/v1/tasks?flag=lost|stuck``: a page of the RECEIVED/STARTED tasks
    with that flag, newest first, within the request's budget.

    ``query`` is a :class:`monitor.web.queries.TaskQuery` (its state, name, worker,
    since, until, limit and cursor apply). ``total`` is None (a scan), ``scanned``
    says how many tasks were examined; ``next_cursor`` continues a scan the
    budget stopped.
    """
    from .web import queries

    if query.sort != "updated" or query.q:
        raise queries.QueryError("flag= lists tasks newest first: drop sort and q")
    now = time.time() if now is None else now
    states = [s for s in RUNNING if not query.states or s in query.states]
    if flag == "stuck":
        states = [s for s in states if s == "STARTED"]
    if not states:
        return {"tasks": [], "total": 0, "next_cursor": None, "scanned": 0}
    budget = queries.Budget()
    walk = queries.IndexWalk(
        store,
        [store.keys.by_state(s) for s in states],
        query.desc,
        query.since,
        query.until,
        query.cursor,
    )
    online = online_hosts(store, now)
    p99 = P99(store, store.settings.stuck_p99_factor)
    fields = (*queries.FILTER_FIELDS, *LIMIT_FIELDS)

    def match(_task_id: str, values: Sequence[Any]) -> bool:
        if not queries.matches_filters(states, query.name, query.worker, values):
            return False
        if flag == "lost":
            return is_lost(values[0], values[2], online)
        return (
            stuck_reason(values[0], *values[3:6], now, p99.get(values[1]), p99.factor) is not None
        )

    found: list[tuple[str, Any]] = []
    full = False
    for task_id, _ in queries.scan(store, walk, fields, match, budget):
        found.append((task_id, walk.position))
        if len(found) >= query.limit:
            full = True
            break
    rows, covered = queries.fetch_rows(store, [i for i, _ in found], LIST_FIELDS, budget)
    position = found[covered - 1][1] if covered < len(found) else walk.position
    more = full or budget.cut
    annotate(store, rows, now, online, p99)
    return {
        "tasks": rows,
        "total": None,
        "next_cursor": queries.format_cursor(position) if more else None,
        "scanned": budget.scanned,
    }


# -- the Redis broker ----------------------------------------------------------------------

#: KEYS[1] = unacked_index zset, KEYS[2] = unacked hash;
#: ARGV[1] = entries to read (oldest first), ARGV[2] = bytes a message is decoded up to.
#: Returns {ZCARD, tag1, score1, id1, name1, eta1, tag2, ...} ('' when unknown).
_UNACKED_SCRIPT = """
local count = redis.call('ZCARD', KEYS[1])
local items = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
local cap = tonumber(ARGV[2])
local out = {count}
local function text(v)
  if type(v) == 'string' and #v <= 512 then return v end
  return ''
end
for i = 1, #items, 2 do
  local tag, score = items[i], items[i + 1]
  local raw = redis.call('HGET', KEYS[2], tag)
  local id, name, eta = '', '', ''
  if type(raw) == 'string' then
    local headers = nil
    if #raw <= cap then
      local ok, m = pcall(cjson.decode, raw)
      if ok and type(m) == 'table' and type(m[1]) == 'table' then headers = m[1].headers end
    end
    if type(headers) == 'table' then
      id, name, eta = text(headers.id), text(headers.task), text(headers.eta)
    else  -- too large to decode (or not JSON): the protocol 2 header by its text
      id = string.match(raw, '"id": *"([^"]*)"') or ''
    end
  end
  out[#out + 1] = tag
  out[#out + 1] = score
  out[#out + 1] = id
  out[#out + 1] = name
  out[#out + 1] = eta
end
return out
"""


def _is_redis_url(url: str | None) -> bool:
    if not url:
        return False
    first = url.split(";")[0]
    scheme = first.split("://", 1)[0].lower() if "://" in first else ""
    return scheme in REDIS_SCHEMES


def _options(conf: Any) -> dict[str, Any]:
    try:
        options = conf.get("broker_transport_options") if conf is not None else None
    except Exception:  # noqa: BLE001 - a conf object of another shape
        options = None
    return dict(options) if isinstance(options, Mapping) else {}


def _conf_get(conf: Any, key: str) -> Any:
    try:
        return conf.get(key)
    except Exception:  # noqa: BLE001 - a reply of another shape
        return None


class BrokerView:
    """One process's view of a Redis broker (its client, script, cached reads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, tuple[redis.Redis, Any]] = {}
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}

    def _client(self, url: str) -> tuple[redis.Redis, Any]:
        with self._lock:
            found = self._clients.get(url)
            if found is None:
                if len(self._clients) >= 8:  # a few brokers per process at most
                    self._clients.clear()
                # Fail fast, no retries: a request (a task list, a task page)
                # waits on this read; a broker away costs one short wait per
                # BROKER_CACHE_SECONDS, then the cached error.
                client = redis_client(
                    url.split(";")[0],
                    socket_timeout=1.0,
                    socket_connect_timeout=0.5,
                    retry=Retry(NoBackoff(), 0),
                    decode_responses=True,
                )
                found = self._clients[url] = (client, client.register_script(_UNACKED_SCRIPT))
            return found

    def unacked(self, url: str, keys: RedisBrokerKeys) -> dict[str, Any]:
        """{"count", "entries": [{"tag","delivered","task_id","name","eta"}], "read_at"}
        (oldest first, at most UNACKED_READ), cached BROKER_CACHE_SECONDS."""
        cache_key = (url, keys.unacked_index)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(cache_key)
        if cached is not None and now - cached[0] < BROKER_CACHE_SECONDS:
            if isinstance(
                cached[1], Exception
            ):  # a broker away: one wait per period, not per request
                raise redis.ConnectionError(str(cached[1]))
            return cached[1]
        _client, script = self._client(url)
        try:
            reply = script(
                keys=[keys.unacked_index, keys.unacked], args=[UNACKED_READ, UNACKED_DECODE_BYTES]
            )
        except redis.RedisError as exc:
            with self._lock:
                self._cache[cache_key] = (now, exc)
            raise
        entries = []
        for i in range(1, len(reply) - 4, 5):
            tag, score, task_id, name, eta = reply[i : i + 5]
            entries.append(
                {
                    "tag": tag,
                    "delivered": finite_float(score),
                    "task_id": task_id or None,
                    "name": name or None,
                    "eta": eta or None,
                }
            )
        result = {"count": int(reply[0]), "entries": entries, "read_at": time.time()}
        with self._lock:
            if len(self._cache) >= 8:
                self._cache.clear()
            self._cache[cache_key] = (now, result)
        return result


#: The process's broker view (clients are per process; redis-py is thread safe).
broker_view = BrokerView()


def broker_settings(celery_app: Any, worker_confs: Mapping[str, Any]) -> dict[str, Any]:
    """The broker URL, transport and the transport options that matter here.

    The visibility timeout: the app's ``broker_transport_options`` (``-A``), else
    the smallest a worker reports in its ``conf`` (the first to restore a
    message is the one with the shortest), else kombu's default.
    """
    conf = getattr(celery_app, "conf", None)
    url = None
    if conf is not None:
        try:
            url = conf.broker_url
        except Exception:  # noqa: BLE001
            url = None
    options = _options(conf)
    source = "app conf" if "visibility_timeout" in options else None
    timeout = finite_float(options.get("visibility_timeout"))
    if source is None:
        for host, wconf in sorted(worker_confs.items()):
            value = finite_float(_options(wconf).get("visibility_timeout"))
            if value is not None and (timeout is None or value < timeout):
                timeout, source = value, f"worker {host} conf"
    if timeout is None or timeout <= 0:
        timeout, source = DEFAULT_VISIBILITY_TIMEOUT, "kombu default"
    prefix = options.get("global_keyprefix")
    if not isinstance(prefix, str):
        prefix = next(
            (
                p
                for p in (_options(w).get("global_keyprefix") for w in worker_confs.values())
                if isinstance(p, str)
            ),
            "",
        )
    keys = RedisBrokerKeys(
        global_keyprefix=prefix,
        unacked_key=str(options.get("unacked_key") or RedisBrokerKeys.unacked_key),
        unacked_index_key=str(
            options.get("unacked_index_key") or RedisBrokerKeys.unacked_index_key
        ),
    )
    return {
        "url": url,
        "transport": "redis" if _is_redis_url(url) else (url or "").split("://", 1)[0] or None,
        "visibility_timeout": timeout,
        "visibility_timeout_source": source,
        "keys": keys,
    }


def config_risks(celery_app: Any, worker_confs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``acks_late`` without ``task_reject_on_worker_lost``: where it is configured."""
    message = (
        "acks_late without task_reject_on_worker_lost: a task whose pool process dies "
        "(OOM killer, segfault, SIGKILL) is acknowledged and marked failed "
        "(WorkerLostError), never redelivered"
    )
    risks = []
    conf = getattr(celery_app, "conf", None)
    app_late = app_reject = False
    if conf is not None:
        app_late = bool(_conf_get(conf, "task_acks_late"))
        app_reject = bool(_conf_get(conf, "task_reject_on_worker_lost"))
        if app_late and not app_reject:
            risks.append({"kind": "acks_late", "where": "app conf", "message": message})
        tasks = getattr(celery_app, "tasks", None) if getattr(celery_app, "configured", 0) else None
        named = 0
        try:
            items = sorted(tasks.items()) if tasks is not None else []
        except Exception:  # noqa: BLE001 - a registry that cannot be listed
            items = []
        for name, task in items:
            if name.startswith("celery.") or named >= MAX_TASK_RISKS:
                continue
            late = getattr(task, "acks_late", None)
            reject = getattr(task, "reject_on_worker_lost", None)
            late = app_late if late is None else bool(late)
            reject = app_reject if reject is None else bool(reject)
            if late and not reject and not (app_late and not app_reject):
                named += 1
                risks.append({"kind": "acks_late", "where": f"task {name}", "message": message})
    for host, wconf in sorted(worker_confs.items()):
        if bool(_conf_get(wconf, "task_acks_late")) and not bool(
            _conf_get(wconf, "task_reject_on_worker_lost")
        ):
            risks.append({"kind": "acks_late", "where": f"worker {host}", "message": message})
    return risks


def worker_confs(inspector: Any, refresh: bool = False, expected: int = 0) -> dict[str, Any]:
    """Each worker's ``conf`` reply, from the inspector's cache (refreshed if asked)."""
    if inspector is None:
        return {}
    if refresh:
        try:
            inspector.refresh(expected=expected)
        except Exception as exc:  # noqa: BLE001 - InspectError: the broker is away
            logger.info("monitor: risks: inspect refresh failed: %s", exc)
    replies = inspector.cached_replies("conf")
    return {host: conf for host, conf in replies.items() if isinstance(conf, Mapping)}


def broker_report(
    store: Store,
    celery_app: Any,
    confs: Mapping[str, Any],
    now: float | None = None,
    with_risks: bool = True,
) -> dict[str, Any]:
    """``GET /api/v1/risks``: the broker's settings, configuration risks, messages
    that will be redelivered, ETA tasks that will run twice."""
    now = time.time() if now is None else now
    broker = broker_settings(celery_app, confs)
    keys: RedisBrokerKeys = broker.pop("keys")
    broker["url"] = None  # never shown (a password); the transport says enough
    timeout = broker["visibility_timeout"]
    report: dict[str, Any] = {
        "broker": broker,
        "risks": config_risks(celery_app, confs) if with_risks else [],
        "redelivery": [],
        "eta_beyond_visibility": [],
        "unacked": None,
        "error": None,
    }
    url = getattr(getattr(celery_app, "conf", None), "broker_url", None)
    if broker["transport"] != "redis" or not url:
        return report
    broker["global_keyprefix"] = keys.global_keyprefix
    try:
        unacked = broker_view.unacked(url, keys)
    except redis.RedisError as exc:
        report["error"] = f"broker unreadable: {type(exc).__name__}"
        return report
    report["unacked"] = {"count": unacked["count"], "read": len(unacked["entries"])}
    for entry in unacked["entries"]:
        delivered = entry["delivered"]
        if delivered is None:
            continue
        age = now - delivered
        row = {
            "task_id": entry["task_id"],
            "name": entry["name"],
            "delivered": delivered,
            "age": round(age, 3),
        }
        if age > timeout and len(report["redelivery"]) < REPORT_ROWS:
            report["redelivery"].append({**row, "overdue": round(age - timeout, 3)})
        eta = _epoch(entry["eta"])
        if (
            eta is not None
            and eta - delivered > timeout
            and len(report["eta_beyond_visibility"]) < REPORT_ROWS
        ):
            report["eta_beyond_visibility"].append({**row, "eta": eta})
    return report


def task_broker_flags(report: Mapping[str, Any], task_id: str) -> dict[str, Any]:
    """What the broker report says of one task: ``redelivery`` / ``eta_beyond_visibility``."""
    flags: dict[str, Any] = {}
    for section in ("redelivery", "eta_beyond_visibility"):
        for row in report.get(section) or ():
            if row.get("task_id") == task_id:
                flags[section] = row
                break
    return flags


def mark_broker(rows: list[dict[str, Any]], report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Add ``redelivery: true`` / ``runs_twice: true`` to the rows the broker report
    names (in place; other rows get neither field)."""
    overdue = {r.get("task_id") for r in report.get("redelivery") or ()}
    twice = {r.get("task_id") for r in report.get("eta_beyond_visibility") or ()}
    for row in rows:
        if row.get("id") in overdue:
            row["redelivery"] = True
        if row.get("id") in twice:
            row["runs_twice"] = True
    return rows


# -- reconciliation with the result backend --------------------------------------------------

#: Non-final states a result backend may have moved on from.
RECONCILE_STATES = ("PENDING", "RECEIVED", "STARTED", "RETRY")
#: Content types the monitor never decodes: loading them runs code the data names.
#: Reconciliation stays off when the app's result backend accepts one of them.
UNSAFE_CONTENT = frozenset({"application/x-python-serialize", "application/x-yaml"})


def _has_backend(celery_app: Any) -> bool:
    if celery_app is None:
        return False
    try:
        from celery.backends.base import DisabledBackend

        return not isinstance(celery_app.backend, DisabledBackend)
    except Exception:  # noqa: BLE001 - a backend that cannot even be built
        return False


def _unsafe_content(celery_app: Any) -> list[str]:
    """The unsafe content types the app's result backend would decode (its
    ``result_accept_content``, else ``accept_content``, as kombu prepared them)."""
    accept = getattr(celery_app.backend, "accept", None) or ()
    return sorted(UNSAFE_CONTENT.intersection(accept))


def _done_at(result: Any, now: float) -> float:
    when = getattr(result, "date_done", None)
    if isinstance(when, str):
        stamp = _epoch(when)
    elif isinstance(when, datetime.datetime):
        stamp = _epoch(when)
    else:
        stamp = None
    return stamp if stamp is not None and 0 < stamp <= now else now


def candidates(store: Store, older_than: float, limit: int, cursors: dict[str, float]) -> list[str]:
    """Up to ``limit`` ids of non-final tasks last updated before ``older_than``,
    oldest first, each state's walk continuing from its cursor (then wrapping)."""
    ids: list[str] = []
    pipe = store.redis.pipeline(transaction=False)
    for state in RECONCILE_STATES:
        after = cursors.get(state)
        low = "-inf" if after is None else f"({after!r}"
        pipe.zrangebyscore(
            store.keys.by_state(state), low, repr(older_than), start=0, num=limit, withscores=True
        )
    for state, items in zip(RECONCILE_STATES, pipe.execute(), strict=True):
        if len(items) >= limit:
            cursors[state] = items[-1][1]
        else:  # this state's walk is done: from its start next time
            cursors.pop(state, None)
        ids.extend(task_id for task_id, _ in items)
    return ids[:limit]


def reconcile(ctx: JobContext, now: float | None = None) -> int:
    """One run: ask the backend about up to ``reconcile_batch`` stale tasks; record
    the final states it knows (source ``reconcile``). Returns how many were corrected."""
    settings = ctx.settings
    after = settings.reconcile_after
    if not after or not _has_backend(ctx.celery_app):
        return 0
    unsafe = _unsafe_content(ctx.celery_app)
    if unsafe:  # AsyncResult would unpickle what the backend holds, in the web tier
        if not ctx.state.get("unsafe_logged"):
            ctx.state["unsafe_logged"] = True
            logger.warning(
                "monitor: reconciliation is off: the result backend accepts %s, "
                "which the monitor never decodes (set result_accept_content to json)",
                ", ".join(unsafe),
            )
        return 0
    from celery.result import AsyncResult

    now = time.time() if now is None else now
    store: Store = ctx.store
    cursors = ctx.state.setdefault("cursors", {})
    ids = candidates(store, now - after, settings.reconcile_batch, cursors)
    events = []
    for task_id in ids:
        result = AsyncResult(task_id, app=ctx.celery_app)
        try:
            state = result.state
        except Exception as exc:  # noqa: BLE001 - a backend down or a result it cannot decode
            logger.info("monitor: reconcile: backend unreadable for %s: %s", task_id, exc)
            break
        if state not in READY_STATES:
            continue
        fields: dict[str, Any] = {}
        info = result.info
        if state == "SUCCESS":
            fields["result"] = _safe_repr(info)
        else:
            fields["exception"] = _safe_repr(info)
            tb = result.traceback
            if isinstance(tb, str):
                fields["traceback"] = tb
        fields["reconciled"] = "result backend"
        events.append(TaskEvent(task_id, state, _done_at(result, now), "reconcile", None, fields))
    if events:
        store.apply(events)
        logger.info("monitor: reconciled %d task(s) with the result backend", len(events))
    return len(events)


def _safe_repr(value: Any) -> str:
    from celery.utils.saferepr import saferepr

    try:
        return saferepr(value, 4096)
    except Exception:  # noqa: BLE001 - a user's object whose repr raises
        return f"<unrepresentable {type(value).__name__}>"


def jobs(settings: Any) -> list[Job]:
    """The elected jobs of this module: reconciliation, when MONITOR_RECONCILE_AFTER > 0."""
    if not settings.reconcile_after:
        return []
    return [Job("reconcile", settings.reconcile_interval, reconcile)]
