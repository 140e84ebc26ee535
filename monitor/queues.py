"""Queues: which queues exist, how deep they are, who consumes them, and how
long their oldest message has waited (its latency, as Sidekiq calls it).

This module owns the broker reads and its own Redis keys (``Keys.queues*``):

- **Known queues** (:func:`known_queues`): the routing keys the write script
  saw at publish (``{p}:queues``, kept by ``apply_batch.lua``), the app's
  ``task_queues`` and ``task_default_queue``, and the queues online workers
  consume (the ``queues`` their ``worker_ready`` hook recorded, and their
  ``active_queues`` inspect replies).
- **Depth, consumers, oldest message** (:func:`broker_sample`): on a Redis
  broker, one pipelined round trip for every queue, each queue one small
  script that reads the lengths of its priority sub-queues (kombu's
  ``queue``, ``queue\\x06\\x163`` ... after ``priority_steps`` and ``sep``,
  under ``global_keyprefix``) and the id of each sub-queue's oldest message
  (the list's tail: kombu LPUSHes and BRPOPs); consumers are the online
  workers consuming the queue. On AMQP (and kombu's other transports), a
  passive ``queue_declare`` per queue on one channel, within a deadline, gives
  the message and consumer counts; a queue the broker does not have is
  "unknown", not an error. With ``broker_api`` (RabbitMQ's management API, like
  Flower's ``--broker-api``) one GET adds messages ready/unacknowledged and rates.
- **Oldest age**: the broker's oldest message, dated by the ``sent`` time the
  publish hook stored for its task; otherwise the oldest PENDING task the
  store holds for that queue (a bounded read of the PENDING index).
- **Sampler** (:func:`jobs`): one elected process samples every
  ``queues_interval`` seconds and stores the sample (:func:`latest`) and a
  per-minute history per queue (:func:`history`; 7 days, ``queues_history_max``
  queues).

Every figure of a sample says where it came from (``sources``), and may be
None when nothing could tell it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis

from .config import mask_url
from .jobs import Job, JobContext
from .keys import RedisBrokerKeys
from .values import finite_float

logger = logging.getLogger(__name__)

#: Characters of a queue name (AMQP short strings are at most 255 bytes).
MAX_NAME = 255
#: Bytes of a Redis broker message the depth script decodes to find its task id;
#: a bigger oldest message is dated from the store's PENDING tasks instead.
MAX_MESSAGE_DECODE = 256 * 1024
#: PENDING tasks (oldest first) read to date the oldest waiting task per queue.
PENDING_SCAN = 2000
#: Seconds all passive declares of one sample may take on AMQP.
AMQP_BUDGET = 5.0
#: Seconds the management API may take to answer.
MANAGEMENT_TIMEOUT = 3.0
#: Bytes of a management API answer read at most.
MANAGEMENT_MAX_BYTES = 16 * 1024 * 1024
#: Seconds between two inspect broadcasts for workers' active_queues.
INSPECT_EVERY = 30.0
#: Per-minute history kept (like the per-minute stats: 7 days).
HISTORY_SECONDS = 7 * 24 * 3600
#: History windows: name -> (seconds, step seconds).
WINDOWS = {"15m": (900, 60), "1h": (3600, 60), "24h": (86400, 3600), "7d": (7 * 86400, 3600)}

#: KEYS = one queue's sub-queue lists (priority steps, base queue first);
#: ARGV[1] = bytes of a tail message decoded at most. Returns, per key,
#: {length (-1: the key is not a list), oldest message's task id or false, its eta
#: or false}. A routing key any producer chose names these keys: one naming a
#: key of another type must cost that queue its depth, not the sample.
DEPTH_SCRIPT = """
local out = {}
local limit = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local n = redis.pcall('LLEN', key)
  if type(n) ~= 'number' then n = -1 end
  local id, eta = false, false
  if n > 0 then
    local msg = redis.call('LINDEX', key, -1)
    if msg and #msg <= limit then
      local ok, decoded = pcall(cjson.decode, msg)
      if ok and type(decoded) == 'table' and type(decoded.headers) == 'table' then
        local h = decoded.headers
        if type(h.id) == 'string' then id = h.id end
        if type(h.eta) == 'string' then eta = h.eta end
      end
    end
  end
  out[#out + 1] = n
  out[#out + 1] = id
  out[#out + 1] = eta
end
return out
"""


class QueueError(Exception):
    """The broker could not be read."""


def valid_name(name: Any) -> bool:
    return isinstance(name, str) and 0 < len(name) <= MAX_NAME and "\x00" not in name


# -- discovery -----------------------------------------------------------------------
def app_queues(celery_app: Any) -> list[str]:
    """The app's ``task_queues`` and ``task_default_queue`` (when ``-A`` gave an app)."""
    if celery_app is None:
        return []
    names: list[str] = []
    conf = celery_app.conf
    for queue in conf.task_queues or ():
        name = getattr(queue, "name", None) or (queue if isinstance(queue, str) else None)
        if valid_name(name):
            names.append(name)
    default = conf.task_default_queue
    if valid_name(default):
        names.append(default)
    return names


def worker_queues(
    workers: Iterable[Mapping[str, Any]], inspected: Mapping[str, Mapping[str, Any]]
) -> dict[str, set[str]]:
    """queue -> hostnames of the online workers consuming it.

    ``workers``: the store's worker records (their ``queues``, JSON, from the
    ``worker_ready`` hook); ``inspected``: hostname -> cached inspect replies
    (``active_queues``: a list of ``{"name": ...}``), which also cover
    workers without the hooks and queues added later with ``add_consumer``.
    """
    consumers: dict[str, set[str]] = {}
    for worker in workers:
        if not worker.get("online"):
            continue
        host = worker.get("hostname")
        names: set[str] = set()
        raw = worker.get("queues")
        if isinstance(raw, str):
            try:
                listed = json.loads(raw)
            except ValueError:
                listed = []
            if isinstance(listed, list):
                names.update(q for q in listed if valid_name(q))
        reply = (inspected.get(host) or {}).get("active_queues")
        if isinstance(reply, list):
            active = {q.get("name") for q in reply if isinstance(q, dict)}
            names = {q for q in active if valid_name(q)}  # the newer word wins
        for name in names:
            consumers.setdefault(name, set()).add(host)
    return consumers


def known_queues(
    store: Any,
    celery_app: Any = None,
    inspected: Mapping[str, Mapping[str, Any]] | None = None,
    limit: int = 1000,
) -> tuple[dict[str, list[str]], dict[str, set[str]]]:
    """(queue -> where it was seen: "publish", "app", "workers"; queue -> consumers).

    At most ``limit`` queues: the app's and the workers' first, then the most
    recently published to.
    """
    consumers = worker_queues(store.workers(), inspected or {})
    seen: dict[str, list[str]] = {}

    def add(name: str, source: str) -> None:
        if name in seen:
            if source not in seen[name]:
                seen[name].append(source)
        elif len(seen) < limit:
            seen[name] = [source]

    for name in app_queues(celery_app):
        add(name, "app")
    for name in sorted(consumers):
        add(name, "workers")
    for name in store.redis.zrevrange(store.keys.queues, 0, max(limit, 1) - 1):
        if valid_name(name):
            add(name, "publish")
    return seen, consumers


# -- the broker ----------------------------------------------------------------------
def _is_redis(conn: Any) -> bool:
    try:
        from kombu.transport.redis import Transport
    except ImportError:  # pragma: no cover - kombu without redis-py
        return False
    return isinstance(conn.transport, Transport)


def broker_kind(conn: Any) -> str:
    if _is_redis(conn):
        return "redis"
    return str(getattr(conn.transport, "driver_type", None) or conn.transport_cls or "other")


def redis_sub_queues(queue: str, steps: Sequence[int], sep: str, keyprefix: str) -> list[str]:
    """The Redis lists holding ``queue``'s messages (kombu's ``_q_for_pri``)."""
    return RedisBrokerKeys(global_keyprefix=keyprefix).queue_lists(queue, steps, sep)


#: EVALSHA names the script; it is loaded only when the broker's Redis lacks it.
DEPTH_SHA = hashlib.sha1(DEPTH_SCRIPT.encode()).hexdigest()


def redis_depths(
    client: redis.Redis,
    queues: Sequence[str],
    steps: Sequence[int],
    sep: str,
    keyprefix: str = "",
) -> dict[str, dict[str, Any]]:
    """queue -> {"depth", "tails": [(task id, eta)]} in one pipelined round trip.

    One EVALSHA per queue (its sub-queues' LLEN and tail), all in one
    pipeline; the script is loaded (one more round trip) only when the
    broker's Redis does not have it yet.
    """
    if not queues:
        return {}
    key_lists = [redis_sub_queues(q, steps, sep, keyprefix) for q in queues]
    for attempt in (0, 1):
        pipe = client.pipeline(transaction=False)
        for keys in key_lists:
            pipe.evalsha(DEPTH_SHA, len(keys), *keys, MAX_MESSAGE_DECODE)
        replies = pipe.execute(raise_on_error=False)
        if attempt == 0 and any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
            client.script_load(DEPTH_SCRIPT)
            continue
        break
    out: dict[str, dict[str, Any]] = {}
    for queue, reply in zip(queues, replies, strict=True):
        if isinstance(reply, redis.exceptions.ConnectionError):
            raise reply
        if isinstance(reply, Exception) or not isinstance(reply, list):
            out[queue] = {"depth": None, "tails": [], "error": f"{type(reply).__name__}"}
            continue
        depth: int | None = 0
        tails = []
        for i in range(0, len(reply), 3):
            n = int(reply[i])
            if n < 0:  # not a list: not a queue of kombu's
                depth = None
            elif depth is not None:
                depth += n
            task_id, eta = reply[i + 1], reply[i + 2]
            if task_id:
                tails.append((_text(task_id), _text(eta) if eta else None))
        out[queue] = {"depth": depth, "tails": tails}
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _redis_client(conn: Any) -> tuple[redis.Redis, list[int], str, str]:
    """A plain client on the broker's Redis and the channel's priority_steps, sep,
    global_keyprefix (transport options read by kombu's own Channel)."""
    channel = conn.default_channel
    client = redis.Redis(connection_pool=channel.pool)
    steps = list(getattr(channel, "priority_steps", None) or [0])
    return client, steps, channel.sep, channel.global_keyprefix or ""


def declare_depths(
    conn: Any, queues: Sequence[str], budget: float = AMQP_BUDGET
) -> dict[str, dict[str, Any]]:
    """queue -> {"depth", "consumers"} by passive declares on one channel.

    A queue the broker does not have is ``{"depth": None, "consumers": None,
    "missing": True}`` (AMQP closes the channel on that 404: a new one is
    opened). Queues left when ``budget`` seconds are spent are left out.
    """
    import amqp.exceptions

    deadline = time.monotonic() + budget
    out: dict[str, dict[str, Any]] = {}
    channel = conn.channel()
    try:
        for queue in queues:
            if time.monotonic() > deadline:
                break
            try:
                ok = channel.queue_declare(queue=queue, passive=True)
            except amqp.exceptions.ChannelError as exc:
                if getattr(exc, "reply_code", None) not in (404, "404"):
                    raise
                out[queue] = {"depth": None, "consumers": None, "missing": True}
                _close(channel)
                channel = conn.channel()
                continue
            out[queue] = {
                "depth": int(ok.message_count),
                "consumers": int(ok.consumer_count) if ok.consumer_count is not None else None,
            }
    finally:
        _close(channel)
    return out


def _close(channel: Any) -> None:
    try:
        channel.close()
    except Exception:  # noqa: BLE001 - a channel the broker closed already
        pass


def queue_depth(celery_app: Any, queue: str) -> int | None:
    """Messages waiting in ``queue`` (a Redis queue's priority lists included),
    or None when the broker has no such queue (a Redis queue always exists:
    an empty one is no key). Raises the transport's errors."""
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0)
        if _is_redis(conn):
            client, steps, sep, keyprefix = _redis_client(conn)
            return redis_depths(client, [queue], steps, sep, keyprefix)[queue]["depth"]
        return declare_depths(conn, [queue])[queue]["depth"]


def management_queues(
    api_url: str, vhost: str, timeout: float = MANAGEMENT_TIMEOUT
) -> dict[str, dict[str, Any]]:
    """queue -> figures from RabbitMQ's management API (``GET /api/queues/<vhost>``)."""
    parsed = urllib.parse.urlsplit(api_url)
    base = api_url.rstrip("/")
    if not base.endswith("/api"):
        base += "/api"
    netloc = parsed.hostname or ""
    if parsed.port:
        netloc += f":{parsed.port}"
    url = (
        urllib.parse.urlunsplit((parsed.scheme, netloc, urllib.parse.urlsplit(base).path, "", ""))
        + "/queues/"
        + urllib.parse.quote(vhost, safe="")
    )
    url += "?columns=name,messages,messages_ready,messages_unacknowledged,consumers,message_stats"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if parsed.username is not None:
        user = urllib.parse.unquote(parsed.username)
        password = urllib.parse.unquote(parsed.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - configured URL
        raw = answer.read(MANAGEMENT_MAX_BYTES + 1)
    if len(raw) > MANAGEMENT_MAX_BYTES:
        raise QueueError("management API answer too large")
    rows = json.loads(raw)
    if not isinstance(rows, list):
        raise QueueError("management API answer is not a list")
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        if not isinstance(row, dict) or not valid_name(row.get("name")):
            continue
        stats = row.get("message_stats") if isinstance(row.get("message_stats"), dict) else {}

        def rate(key: str, stats: dict[str, Any] = stats) -> float | None:
            detail = stats.get(key)
            value = detail.get("rate") if isinstance(detail, dict) else None
            return _finite(value)

        out[row["name"]] = {
            "messages": _count(row.get("messages")),
            "ready": _count(row.get("messages_ready")),
            "unacked": _count(row.get("messages_unacknowledged")),
            "consumers": _count(row.get("consumers")),
            "publish_rate": rate("publish_details"),
            "deliver_rate": rate("deliver_get_details"),
            "ack_rate": rate("ack_details"),
        }
    return out


def _count(value: Any) -> int | None:
    return value if type(value) is int and 0 <= value < 2**53 else None


def _finite(value: Any) -> float | None:
    if type(value) in (int, float) and math.isfinite(value):
        return float(value)
    return None


# -- oldest waiting task -----------------------------------------------------------
def _sent_times(store: Any, ids: Iterable[str]) -> dict[str, float]:
    ids = list(dict.fromkeys(ids))
    if not ids:
        return {}
    pipe = store.redis.pipeline(transaction=False)
    for task_id in ids:
        pipe.hget(store.keys.task(task_id), "sent")
    out = {}
    for task_id, sent in zip(ids, pipe.execute(), strict=True):
        value = finite_float(sent)
        if value is not None:
            out[task_id] = value
    return out


def oldest_pending(store: Any, scan: int = PENDING_SCAN) -> dict[str, float]:
    """queue -> ``sent`` time of its oldest PENDING task among the ``scan``
    least recently updated PENDING tasks (a bounded read: two round trips)."""
    ids = store.redis.zrange(store.keys.by_state("PENDING"), 0, scan - 1)
    if not ids:
        return {}
    pipe = store.redis.pipeline(transaction=False)
    for task_id in ids:
        pipe.hmget(store.keys.task(task_id), ["queue", "sent", "state"])
    out: dict[str, float] = {}
    for queue, sent, state in pipe.execute():
        value = finite_float(sent)
        if queue is None or value is None or state != "PENDING":
            continue
        if queue not in out or value < out[queue]:
            out[queue] = value
    return out


def _eta_time(eta: str | None) -> float | None:
    """An ISO 8601 eta header as epoch seconds (naive: UTC, as Celery sends it)."""
    if not eta or len(eta) > 64:
        return None
    try:
        when = datetime.datetime.fromisoformat(eta)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return finite_float(when.timestamp())


# -- one sample ------------------------------------------------------------------------
def broker_sample(
    store: Any,
    celery_app: Any,
    settings: Any,
    inspected: Mapping[str, Mapping[str, Any]] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Sample every known queue: ``{"sampled_at", "broker", "error", "queues": {name: row}}``.

    A row: ``{"name", "depth", "consumers", "oldest_age", "sampled_at",
    "broker", "seen": [...], "sources": {"depth", "consumers", "oldest_age"}}``
    (plus ``ready``, ``unacked`` and rates from the management API).
    """
    limit = int(getattr(settings, "queues_max", 1000))
    seen, workers = known_queues(store, celery_app, inspected, limit)
    names = list(seen)
    now = time.time() if now is None else now
    kind = None
    error = None
    figures: dict[str, dict[str, Any]] = {}
    tails: dict[str, list[tuple[str, str | None]]] = {}
    management: dict[str, dict[str, Any]] = {}
    if celery_app is not None and names:
        try:
            with celery_app.connection_for_read() as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, timeout=AMQP_BUDGET)
                kind = broker_kind(conn)
                if kind == "redis":
                    client, steps, sep, keyprefix = _redis_client(conn)
                    for name, got in redis_depths(client, names, steps, sep, keyprefix).items():
                        figures[name] = {"depth": got["depth"]}
                        tails[name] = got["tails"]
                else:
                    figures = declare_depths(conn, names)
                    vhost = conn.virtual_host or "/"
            api_url = getattr(settings, "broker_api", None)
            if api_url and kind not in (None, "redis"):
                try:
                    management = management_queues(api_url, vhost)
                except (OSError, ValueError, QueueError) as exc:
                    error = f"management API: {type(exc).__name__}: {mask_url(str(exc))}"
        except Exception as exc:  # noqa: BLE001 - transport-specific errors
            # the page and the API show it: no URL password in it
            error = f"broker: {type(exc).__name__}: {mask_url(str(exc))}"
    sent = _sent_times(store, (t for rows in tails.values() for t, _eta in rows))
    pending = oldest_pending(store)
    rows: dict[str, Any] = {}
    for name in names:
        got = figures.get(name, {})
        sources: dict[str, str | None] = {"depth": None, "consumers": None, "oldest_age": None}
        depth = got.get("depth")
        if depth is not None:
            sources["depth"] = "broker"
        consumers = got.get("consumers")
        if consumers is not None:
            sources["consumers"] = "broker"
        elif kind == "redis" or name in workers or kind is None:
            consumers = len(workers.get(name, ()))
            sources["consumers"] = "workers"
        oldest_age = None
        # A message is dated by its task's sent time, else by its eta (runnable
        # since then): an ETA message's wait starts when it may run.
        dated = [
            sent[t] if t in sent else when
            for t, eta in tails.get(name, ())
            if t in sent or (when := _eta_time(eta)) is not None
        ]
        if dated:
            oldest_age = max(0.0, now - min(dated))
            sources["oldest_age"] = "broker"
        elif depth != 0 and name in pending:
            oldest_age = max(0.0, now - pending[name])
            sources["oldest_age"] = "store"
        row: dict[str, Any] = {
            "name": name,
            "depth": depth,
            "consumers": consumers,
            "oldest_age": None if oldest_age is None else round(oldest_age, 3),
            "sampled_at": now,
            "broker": kind,
            "seen": seen[name],
            "sources": sources,
        }
        if got.get("missing"):
            row["missing"] = True
        extra = management.get(name)
        if extra:
            row.update({k: v for k, v in extra.items() if k not in ("consumers", "messages")})
            sources["ready"] = "management"
        rows[name] = row
    return {"sampled_at": now, "broker": kind, "error": error, "queues": rows}


# -- storage ---------------------------------------------------------------------------
def store_sample(store: Any, sample: Mapping[str, Any], settings: Any) -> None:
    """Keep ``sample`` as the latest one and add it to the per-minute history."""
    keys = store.keys
    interval = float(getattr(settings, "queues_interval", 10.0))
    cap = int(getattr(settings, "queues_history_max", 200))
    now = float(sample["sampled_at"])
    minute = int(now // 60)
    pipe = store.redis.pipeline(transaction=False)
    # Gone a while after the sampler stops: a reader must not show a stale sample as news.
    pipe.set(
        keys.queues_latest,
        json.dumps(sample, separators=(",", ":")),
        ex=max(600, int(interval * 10)),
    )
    ranked = sorted(sample["queues"].values(), key=lambda r: (-(r["depth"] or 0), r["name"]))[:cap]
    for row in ranked:
        key = keys.queue_history(row["name"])
        member = ",".join(
            [str(minute)]
            + ["" if row[f] is None else str(row[f]) for f in ("depth", "oldest_age", "consumers")]
        )
        pipe.zremrangebyscore(key, minute, minute)
        pipe.zadd(key, {member: minute})
        pipe.zremrangebyscore(key, "-inf", minute - HISTORY_SECONDS // 60)
        pipe.expire(key, HISTORY_SECONDS + 3600)
    pipe.execute()


def latest_sample(store: Any) -> dict[str, Any] | None:
    raw = store.redis.get(store.keys.queues_latest)
    if raw is None:
        return None
    try:
        sample = json.loads(raw)
    except ValueError:
        return None
    return sample if isinstance(sample, dict) and isinstance(sample.get("queues"), dict) else None


def latest(store: Any) -> dict[str, dict[str, Any]]:
    """queue -> ``{"name", "depth", "consumers", "oldest_age", "sampled_at", "broker", ...}``:
    the last sample the elected sampler stored (empty when none is recent)."""
    sample = latest_sample(store)
    return dict(sample["queues"]) if sample else {}


def overview(store: Any, settings: Any) -> dict[str, Any]:
    """What the Queues page shows and its room pushes: ``{"sampled_at", "broker",
    "error", "interval", "queues": [row, ...]}`` (rows by name)."""
    sample = latest_sample(store) or {}
    rows = sorted((sample.get("queues") or {}).values(), key=lambda r: str(r.get("name")))
    return {
        "sampled_at": sample.get("sampled_at"),
        "broker": sample.get("broker"),
        "error": sample.get("error"),
        "interval": float(getattr(settings, "queues_interval", 10.0)),
        "queues": rows,
    }


def parse_window(window: Any) -> tuple[int, int]:
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {', '.join(WINDOWS)}")
    return WINDOWS[window]


def history(store: Any, queue: str, window: str = "1h", now: float | None = None) -> dict[str, Any]:
    """``{"queue", "window", "step", "from", "to", "points": [{"t", "depth",
    "oldest_age", "consumers"}]}``: per-minute samples (15m, 1h), or per hour
    (24h, 7d: each hour's largest depth and oldest age, its fewest consumers).
    Raises ValueError for an unknown window."""
    seconds, step = parse_window(window)
    now = time.time() if now is None else now
    end_minute = int(now // 60)
    # Whole steps, the current one last: 15, 60, 24 or 168 points at most.
    first = (end_minute * 60) // step * step - (seconds - step)
    start_minute = first // 60
    raw = store.redis.zrangebyscore(store.keys.queue_history(queue), start_minute, end_minute)
    buckets: dict[int, dict[str, Any]] = {}
    for member in raw:
        parts = member.split(",")
        if len(parts) != 4:
            continue
        minute = int(parts[0])
        depth, age, consumers = (finite_float(p) if p else None for p in parts[1:])
        t = (minute * 60) // step * step
        point = buckets.get(t)
        if point is None:
            buckets[t] = {"t": t, "depth": depth, "oldest_age": age, "consumers": consumers}
            continue
        point["depth"] = _max(point["depth"], depth)
        point["oldest_age"] = _max(point["oldest_age"], age)
        if consumers is not None:
            point["consumers"] = (
                consumers if point["consumers"] is None else min(point["consumers"], consumers)
            )
    points = []
    for point in sorted(buckets.values(), key=lambda p: p["t"]):
        for f in ("depth", "consumers"):
            if point[f] is not None:
                point[f] = int(point[f])
        points.append(point)
    return {
        "queue": queue,
        "window": window,
        "step": step,
        "from": first,
        "to": (end_minute * 60) // step * step + step,
        "points": points,
    }


def _max(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


# -- the sampler job -------------------------------------------------------------------
def sample_once(ctx: JobContext) -> dict[str, Any]:
    """The job's run: refresh the workers' active_queues now and then (without
    waiting for it), sample, store. Returns the sample."""
    inspected: dict[str, Any] = {}
    if ctx.celery_app is None:
        from .events import make_app  # the receiver's rule for which broker to read

        ctx.celery_app = make_app(ctx.settings)
    if ctx.celery_app is not None:
        # The app's inspector when the runner has one (its replies then serve the
        # workers and risks pages too), else one of the job's own.
        inspector = ctx.inspector or ctx.state.get("inspector")
        if inspector is None:
            from .web.inspect import WorkerInspector

            inspector = ctx.state["inspector"] = WorkerInspector(ctx.settings, ctx.celery_app)
        workers = ctx.store.workers()
        online = [w["hostname"] for w in workers if w.get("online")]
        clock = time.monotonic()
        if online and clock - ctx.state.get("inspected_at", -math.inf) >= INSPECT_EVERY:
            ctx.state["inspected_at"] = clock
            try:
                inspector.refresh(wait=0, expected=len(online))
            except Exception as exc:  # noqa: BLE001 - no broadcast: the hooks' queues remain
                logger.debug("monitor: queues: inspect failed: %s", exc)
        inspected = {host: inspector.cached(host) for host in online}
    sample = broker_sample(ctx.store, ctx.celery_app, ctx.settings, inspected)
    # One line when the broker goes away and one when it is back, not one a sample.
    if sample["error"] and not ctx.state.get("error"):
        logger.warning("monitor: queue sample incomplete: %s", sample["error"])
    elif ctx.state.get("error") and not sample["error"]:
        logger.warning("monitor: queue samples complete again")
    ctx.state["error"] = sample["error"]
    store_sample(ctx.store, sample, ctx.settings)
    ctx.state["last"] = sample
    for hook in list(ctx.state.get("on_sample", ())):
        try:
            hook(sample)
        except Exception:  # noqa: BLE001 - a listener never stops the sampler
            logger.exception("monitor: queues: sample listener failed")
    return sample


def jobs(settings: Any) -> list[Job]:
    """The elected queue sampler (``Keys.lease("queues")``)."""
    return [Job("queues", float(getattr(settings, "queues_interval", 10.0)), sample_once)]
