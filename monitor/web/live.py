"""Live updates: tail ``{prefix}:changes``, coalesce, push to Socket.IO rooms.

One :class:`Hub` per app, one background task per process (started once, under
a lock). The task reads the change feed with ``XREAD BLOCK`` from ``$``,
collects the ids of changed tasks and workers, and every
``Settings.push_interval`` emits at most one message per event name per room:

=================  ===============================================================
room               message
=================  ===============================================================
``overview``       "overview": the /api/v1/stats object
``workers``        "workers": {"workers": [...]}
``tasks:<json>``   "tasks": {"rows": [...]} changed rows matching the filters
``task:<id>``      "task": {"task": detail}
``worker:<host>``  "worker": {"worker": ..., "rows": [...]}
=================  ===============================================================

A room kind is one entry of :data:`ROOM_KINDS` (how a payload names it, what a
new subscriber gets at once). Rows are fetched with one pipeline per push
whatever the event rate, so a 10k events/s burst costs each client a few
messages per second.

Socket.IO clients are untrusted, and one client's flood must not slow the
others' pushes. Every budget is a setting or a constant here: rooms per
connection (``live_max_rooms``), rooms per process (``live_max_rooms_total``),
subscribes per second per connection (``live_subscribe_rate``; a connection
refused :data:`ABUSE_LIMIT` times is closed), the length of every value in a
room name (:data:`MAX_VALUE`). The snapshot a subscriber gets comes from a
short per-room cache (:class:`SnapshotCache`), so a thousand tabs opening one
task cost one read. A push looks rooms up from the changes (an index built
when the room list changes), never scans every room for every change, and
fetches at most :data:`MAX_DETAILS` task details (the rest wait for the next push).

Several ``serve`` processes sharing a Socket.IO message queue share rooms: the
processes register their rooms in ``{prefix}:web:rooms`` and one of them (the
holder of ``{prefix}:web:leader``) tails the feed and emits for all, so a client
never gets the same delta twice. The tailer reconnects with capped backoff and
reports Redis reachability in "status" messages.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from socketio import PubSubManager

from ..config import Settings
from ..store import Store, redis_client
from . import api
from .visibility import visible_row

logger = logging.getLogger(__name__)

RECONNECT_START = 0.5
RECONNECT_MAX = 10.0
#: Overview and workers are re-pushed at least this often (offline detection, "3 s ago").
REFRESH_EVERY = 5.0
#: Changed rows sent per tasks room per push: a burst only needs the newest.
MAX_ROWS = 500
#: Task details fetched per push (task rooms whose task changed); more wait a push.
MAX_DETAILS = 100
ROOM_TTL = 15.0
#: Seconds between two registrations of all of a process's rooms (shared mode).
ROOM_REFRESH = ROOM_TTL / 3
#: KEYS[1] = leader key, ARGV[1] = our token; deletes the key only if we hold it.
_RELEASE_LEADER = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)
LEADER_TTL_MS = 5000
#: KEYS[1] = leader key; ARGV[1] = our token, ARGV[2] = lease (ms), ARGV[3] = "1"
#: to take a free lease. Extends the lease only if we hold it (a GET followed by
#: PEXPIRE could extend the lease of a process that took over in between).
#: Returns 1 when we hold the lease, else 0.
_CLAIM_LEADER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if ARGV[3] == '1' and redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""
#: A process that does not lead keeps what it read for this long (and at most
#: BACKLOG_MAX tasks), and pushes it if it takes over: changes made while a
#: leader that died still held its lease are then not lost.
BACKLOG_SECONDS = LEADER_TTL_MS / 1000 + 2.0
BACKLOG_MAX = 20_000
XREAD_COUNT = 5000
#: Seconds between two pushes to a summary room (overview, workers).
SUMMARY_INTERVAL = 1.0
#: Longest task id, hostname or filter value in a room name (Celery's ids are 36).
MAX_VALUE = 255
#: States one task-list filter may name.
MAX_STATES = 16
#: Seconds a subscribe snapshot is reused; a change to its task or worker drops it sooner.
SNAPSHOT_TTL = 0.5
SNAPSHOT_ENTRIES = 1024
#: Refused subscribes (rate, caps, bad payloads) after which a connection is closed.
ABUSE_LIMIT = 50
#: Subscribes doing Redis work (registering a room, a snapshot) at once, per process:
#: a burst of subscribes must not take every connection of the pool the pushes use.
SUBSCRIBE_CONCURRENCY = 8
#: Seconds between two log lines about refused subscribes.
REFUSAL_LOG_EVERY = 10.0


class RoomError(ValueError):
    """A subscribe payload that names no valid room."""


class RoomRefused(RoomError):
    """A valid room that a cap keeps this connection out of."""


def _value(payload: dict[str, Any], key: str, what: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        raise RoomError(f"{what} room needs a {key}")
    if len(value) > MAX_VALUE:
        raise RoomError(f"{key} longer than {MAX_VALUE} characters")
    return value


def _parse_filters(payload: dict[str, Any]) -> str:
    filters = payload.get("filters") or {}
    if not isinstance(filters, dict):
        raise RoomError("filters must be an object")
    clean: dict[str, str] = {}
    for key in ("state", "name", "worker"):
        value = filters.get(key)
        if not value:
            continue
        if not isinstance(value, str):
            raise RoomError(f"filter {key} must be a string")
        if len(value) > MAX_VALUE:
            raise RoomError(f"filter {key} longer than {MAX_VALUE} characters")
        if key == "state":
            states = sorted({s for s in value.upper().split(",") if s})
            if len(states) > MAX_STATES:
                raise RoomError(f"more than {MAX_STATES} states in one filter")
            value = ",".join(states)
        if value:
            clean[key] = value
    return json.dumps(clean, sort_keys=True, separators=(",", ":"))


def _tasks_filter(arg: str) -> dict[str, str] | None:
    """The filters of a ``tasks:`` room, None when the name is not ours."""
    try:
        filters = json.loads(arg)
    except ValueError:
        return None
    if not isinstance(filters, dict) or not all(isinstance(v, str) for v in filters.values()):
        return None
    return filters


def _overview(store: Store, _arg: str) -> tuple[str, Any]:
    return "overview", api.stats(store)


def _workers(store: Store, _arg: str) -> tuple[str, Any]:
    return "workers", {"workers": store.workers()}


def _task(store: Store, task_id: str) -> tuple[str, Any] | None:
    # Rooms are shared by every client, viewers included: with
    # MONITOR_HIDE_ARGS_FROM_VIEWERS on, live pushes carry no arguments or
    # results for anyone (an operator's page reads them from the API).
    task = api.task_detail(store, task_id, not store.settings.hide_args_from_viewers)
    return ("task", {"task": task}) if task else None


def _worker(store: Store, host: str) -> tuple[str, Any] | None:
    worker = store.worker(host)
    return ("worker", {"worker": worker, "rows": []}) if worker else None


@dataclass(frozen=True)
class RoomKind:
    """One kind of room: the room's argument from a payload, and the first message."""

    #: payload -> argument after "kind:" (None: the room is the kind alone)
    parse: Callable[[dict[str, Any]], str | None]
    #: (store, argument) -> (event, data) a new subscriber gets at once, or None
    snapshot: Callable[[Store, str], tuple[str, Any] | None]


ROOM_KINDS: dict[str, RoomKind] = {
    "overview": RoomKind(lambda _p: None, _overview),
    "workers": RoomKind(lambda _p: None, _workers),
    "tasks": RoomKind(_parse_filters, lambda _s, _a: None),  # the page fetches the list
    "task": RoomKind(lambda p: _value(p, "id", "task"), _task),
    "worker": RoomKind(lambda p: _value(p, "hostname", "worker"), _worker),
}


def room_name(payload: Any) -> str:
    """Canonical room name for a subscribe/unsubscribe payload."""
    if not isinstance(payload, dict):
        raise RoomError("payload must be an object")
    kind = payload.get("room")
    spec = ROOM_KINDS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise RoomError(f"unknown room {str(kind)[:40]!r}")
    arg = spec.parse(payload)
    return kind if arg is None else f"{kind}:{arg}"


class RoomIndex:
    """The rooms a push serves, indexed by what a change can match.

    A task-list room is filed under (name, worker, state) with "" for "any" (and
    once per state it names), so a change finds its rooms with eight lookups
    whatever the number of rooms.
    """

    def __init__(self, rooms: list[str]) -> None:
        self.rooms = rooms
        self.summary: set[str] = set()
        self.task_ids: set[str] = set()
        self.hosts: set[str] = set()
        self.lists: dict[tuple[str, str, str], list[str]] = {}
        for room in rooms:
            kind, _, arg = room.partition(":")
            if kind in ("overview", "workers"):
                self.summary.add(kind)
            elif kind == "task" and arg:
                self.task_ids.add(arg)
            elif kind == "worker" and arg:
                self.hosts.add(arg)
            elif kind == "tasks":
                filters = _tasks_filter(arg)
                if filters is None:
                    continue
                name, worker = filters.get("name", ""), filters.get("worker", "")
                for state in filters.get("state", "").split(",")[:MAX_STATES]:
                    self.lists.setdefault((name, worker, state), []).append(room)

    def lists_for(self, name: str, worker: str, state: str) -> Iterator[str]:
        for n in {name, ""}:
            for w in {worker, ""}:
                for s in {state, ""}:
                    yield from self.lists.get((n, w, s), ())


class _Flight:
    __slots__ = ("done", "value", "error", "stale")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.stale = False


class SnapshotCache:
    """Room -> first message, computed once per :data:`SNAPSHOT_TTL` per room.

    Concurrent subscribers to one room wait for the one computation in flight.
    A change to the room's task or worker drops its entry (and keeps a
    computation in flight from being stored), so a new subscriber never gets a
    snapshot older than a push its room already had.
    """

    def __init__(self, ttl: float = SNAPSHOT_TTL, size: int = SNAPSHOT_ENTRIES) -> None:
        self.ttl, self.size = ttl, size
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._flights: dict[str, _Flight] = {}
        self.computed = 0

    def get(self, room: str, compute: Callable[[], Any], wait: float = 15.0) -> Any:
        with self._lock:
            hit = self._entries.get(room)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
            flight = self._flights.get(room)
            owner = flight is None
            if flight is None:
                flight = self._flights[room] = _Flight()
        if not owner:
            if not flight.done.wait(wait):
                raise TimeoutError(f"snapshot of {room[:60]} still computing")
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            flight.value = compute()
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                self.computed += 1
                self._flights.pop(room, None)
                if flight.error is None and not flight.stale:
                    self._entries[room] = (time.monotonic() + self.ttl, flight.value)
                    self._entries.move_to_end(room)
                    while len(self._entries) > self.size:
                        self._entries.popitem(last=False)
            flight.done.set()
        return flight.value

    def __len__(self) -> int:
        return len(self._entries)

    def invalidate(self, task_ids: Iterable[str], hosts: Iterable[str]) -> None:
        """Drop the snapshots of these tasks' and workers' rooms."""
        with self._lock:
            if not self._entries and not self._flights:
                return
            doomed = {"task:" + i for i in task_ids} | {"worker:" + h for h in hosts}
            for room in doomed.intersection(self._entries):
                del self._entries[room]
            for room in doomed.intersection(self._flights):
                self._flights[room].stale = True


class Backlog:
    """What a process that does not lead has read lately (see BACKLOG_SECONDS)."""

    def __init__(self) -> None:
        self.tasks: dict[str, tuple[float, dict[str, str]]] = {}  # id -> (read at, change)
        self.workers: dict[str, float] = {}

    def __bool__(self) -> bool:
        return bool(self.tasks or self.workers)

    def keep(self, tasks: dict[str, dict[str, str]], workers: set[str], now: float) -> None:
        for task_id, change in tasks.items():
            self.tasks.pop(task_id, None)  # newest last
            self.tasks[task_id] = (now, change)
        for host in workers:
            self.workers[host] = now
        horizon = now - BACKLOG_SECONDS
        while self.tasks:
            oldest = next(iter(self.tasks))
            if self.tasks[oldest][0] >= horizon and len(self.tasks) <= BACKLOG_MAX:
                break
            del self.tasks[oldest]
        self.workers = {h: t for h, t in self.workers.items() if t >= horizon}

    def take(
        self, tasks: dict[str, dict[str, str]], workers: set[str]
    ) -> tuple[dict[str, dict[str, str]], set[str]]:
        """The backlog with ``tasks``/``workers`` on top; empties the backlog."""
        merged = {task_id: change for task_id, (_, change) in self.tasks.items()}
        for task_id, change in tasks.items():
            merged.pop(task_id, None)
            merged[task_id] = change
        hosts = set(self.workers) | workers
        self.tasks, self.workers = {}, {}
        return merged, hosts


class Hub:
    """Rooms of this process, their budgets, and the tailer that feeds them."""

    def __init__(self, socketio: Any, settings: Settings, namespace: str = "/") -> None:
        self.socketio = socketio
        self.settings = settings
        self.namespace = namespace
        self.store = Store.from_settings(settings)
        self.redis_ok: bool | None = None
        self.events_status: Callable[[], str] = lambda: "off"
        self.snapshots = SnapshotCache()
        self._redis_slots = threading.BoundedSemaphore(SUBSCRIBE_CONCURRENCY)
        self._last_status: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._started = False
        self._stop = threading.Event()
        self._members: dict[str, set[str]] = {}  # sid -> rooms
        self._rooms: dict[str, int] = {}  # room -> local subscribers
        self._buckets: dict[str, list[float]] = {}  # sid -> [tokens, last, refusals]
        self._token = uuid.uuid4().hex
        self._claim = self.store.redis.register_script(_CLAIM_LEADER)
        self._index = RoomIndex([])
        self._next_registration = 0.0
        self._last_refusal_log = self._last_full_log = 0.0
        self._refusals_logged = 0
        #: refused subscribes by reason, and connections closed for abuse
        self.refused: Counter[str] = Counter()
        self.pushes = 0

    @property
    def shared(self) -> bool:
        """True when the Socket.IO server fans out through a message queue."""
        server = getattr(self.socketio, "server", None)
        return server is not None and isinstance(server.manager, PubSubManager)

    # -- rooms and budgets -------------------------------------------------
    def admit(self, sid: str) -> bool:
        """One token of this connection's request budget: live_subscribe_rate a second,
        in bursts of as many (a page needs one room; a client watching many tasks
        gets there at that pace)."""
        rate = self.settings.live_subscribe_rate
        burst = max(rate, 1.0)
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(sid, [burst, now, 0])
            bucket[0] = min(burst, bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
            if bucket[0] < 1.0:
                return False
            bucket[0] -= 1.0
            return True

    def refuse(self, sid: str, reason: str) -> bool:
        """Count a refused request; True when the connection has now abused its last."""
        now = time.monotonic()
        with self._lock:
            self.refused[reason] += 1
            bucket = self._buckets.get(sid)
            if bucket is not None:
                bucket[2] += 1
            closing = bucket is not None and bucket[2] == ABUSE_LIMIT
            if closing:
                self.refused["closed"] += 1
            total = sum(v for k, v in self.refused.items() if k != "closed")
            log = now - self._last_refusal_log >= REFUSAL_LOG_EVERY
            if log:
                self._last_refusal_log = now
                since, self._refusals_logged = total - self._refusals_logged, total
        if log:
            logger.warning(
                "live updates: %d subscribe(s) refused since the last report (%s); "
                "%d connection(s) closed for abuse",
                since,
                ", ".join(f"{k} {v}" for k, v in sorted(self.refused.items()) if k != "closed"),
                self.refused["closed"],
            )
        return closing

    def join(self, sid: str, room: str) -> bool:
        """Add ``sid`` to ``room``; True when the room is new to this process.

        Raises :class:`RoomRefused` when a cap keeps the connection out.
        """
        with self._lock:
            rooms = self._members.setdefault(sid, set())
            if room in rooms:
                return False
            if len(rooms) >= self.settings.live_max_rooms:
                raise RoomRefused(f"this connection is in {len(rooms)} rooms already (the limit)")
            if room not in self._rooms and len(self._rooms) >= self.settings.live_max_rooms_total:
                raise RoomRefused("this server serves as many rooms as it may; try again later")
            rooms.add(room)
            count = self._rooms[room] = self._rooms.get(room, 0) + 1
            return count == 1

    def _bounded(self, work: Callable[[], Any]) -> Any:
        """Run a subscribe's Redis work within the process's SUBSCRIBE_CONCURRENCY."""
        if not self._redis_slots.acquire(timeout=10.0):
            raise TimeoutError("too many subscribes waiting for Redis")
        try:
            return work()
        finally:
            self._redis_slots.release()

    def register(self, room: str) -> None:
        """Shared mode: make a new room known to the leader before acking the subscribe
        (rooms already known are registered again every ROOM_REFRESH)."""
        if self.shared:
            key, expiry = self.store.keys.web_rooms, time.time() + ROOM_TTL
            self._bounded(lambda: self.store.redis.zadd(key, {room: expiry}))

    def leave(self, sid: str, room: str) -> None:
        with self._lock:
            rooms = self._members.get(sid, set())
            if room in rooms:
                rooms.discard(room)
                self._drop(room)

    def disconnect(self, sid: str) -> None:
        with self._lock:
            self._buckets.pop(sid, None)
            for room in self._members.pop(sid, set()):
                self._drop(room)

    def _drop(self, room: str) -> None:
        n = self._rooms.get(room, 0) - 1
        if n <= 0:
            self._rooms.pop(room, None)
        else:
            self._rooms[room] = n

    def local_rooms(self) -> list[str]:
        with self._lock:
            return list(self._rooms)

    def status(self) -> dict[str, Any]:
        return {"redis": bool(self.redis_ok), "events": self.events_status()}

    def initial(self, room: str) -> tuple[str, Any] | None:
        """The message a new subscriber gets at once (None for task lists)."""
        kind, _, arg = room.partition(":")
        spec = ROOM_KINDS.get(kind)
        if spec is None:
            return None
        return self.snapshots.get(
            room, lambda: self._bounded(lambda: spec.snapshot(self.store, arg))
        )

    # -- the tailer ----------------------------------------------------------
    def ensure_started(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        self.socketio.start_background_task(self._run)

    def stop(self) -> None:
        self._stop.set()
        self._release_leader()

    def _release_leader(self) -> None:
        # Hand leadership over at once: a restarted process (or another one)
        # must not wait LEADER_TTL_MS while changes go unpushed.
        if self.shared:
            try:
                self.store.redis.eval(_RELEASE_LEADER, 1, self.store.keys.web_leader, self._token)
            except redis.RedisError:
                pass

    def _emit(self, event: str, data: Any, room: str | None = None) -> None:
        self.socketio.emit(event, data, to=room, namespace=self.namespace)

    def _set_redis(self, ok: bool) -> None:
        self.redis_ok = ok
        self._check_status()

    def _check_status(self) -> None:
        status = self.status()
        if status != self._last_status:
            self._last_status = status
            self._emit("status", status)

    def _run(self) -> None:
        backoff = RECONNECT_START
        last_id = "$"
        client: redis.Redis | None = None
        while not self._stop.is_set():
            try:
                client = redis_client(self.settings.redis_url, socket_timeout=10.0)
                client.ping()
                if last_id == "$":
                    # Start from the feed's current end; kept across reconnects.
                    info = (
                        client.xinfo_stream(self.store.keys.changes)
                        if client.exists(self.store.keys.changes)
                        else None
                    )
                    last_id = info["last-generated-id"] if info else "0-0"
                self._set_redis(True)
                backoff = RECONNECT_START
                self._next_registration = 0.0  # rooms may have expired meanwhile
                last_id = self._tail(client, last_id)
            except redis.RedisError as exc:
                if self.redis_ok is not False:
                    logger.warning("live updates: Redis unavailable (%s); retrying", exc)
                self._set_redis(False)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX)
            except Exception:  # never let the tailer die: log, back off, go on
                logger.exception("live updates: unexpected error; restarting the tailer")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX)
            finally:
                if client is not None:
                    client.close()
                    client = None
        with self._lock:
            self._started = False
        self._release_leader()

    def _tail(self, client: redis.Redis, last_id: str) -> str:
        interval = self.settings.push_interval
        tasks: dict[str, dict[str, str]] = {}
        workers: set[str] = set()
        deferred: set[str] = set()
        next_push = time.monotonic() + interval
        last_refresh = 0.0
        # Summary rooms (overview, workers) change with every event but need no
        # more than one message a second; task rooms get push_interval. A tab
        # thus gets at most 1/push_interval + 2 messages a second.
        last_summary = 0.0
        summary_tasks = summary_workers = False
        shared = self.shared
        leader = not shared
        backlog = Backlog()
        key = self.store.keys.changes
        while not self._stop.is_set():
            now = time.monotonic()
            block = max(1, int((next_push - now) * 1000))
            response = client.xread({key: last_id}, count=XREAD_COUNT, block=min(block, 1000))
            for _stream, entries in response or ():
                read_tasks: list[str] = []
                read_workers: list[str] = []
                for entry_id, fields in entries:
                    last_id = entry_id
                    if fields.get("kind") == "task":
                        task_id = fields.get("id", "")
                        tasks.pop(task_id, None)  # keep arrival order: newest last
                        tasks[task_id] = fields
                        read_tasks.append(task_id)
                        if fields.get("worker"):
                            workers.add(fields["worker"])
                    elif fields.get("kind") == "worker":
                        workers.add(fields.get("id", ""))
                        read_workers.append(fields.get("id", ""))
                # Every process tails the feed, so every process's cache hears of changes.
                self.snapshots.invalidate(read_tasks, read_workers)
            self._check_status()
            now = time.monotonic()
            if now < next_push:
                continue
            refresh = now - last_refresh >= REFRESH_EVERY
            # Rooms are read at every push: a room subscribed just before a
            # change must get it (subscribe registers the room before its ack).
            if shared:
                leader, rooms = self._registry(client)
            else:
                rooms = self.local_rooms()
            if rooms != self._index.rooms:
                self._index = RoomIndex(rooms)
            summary_tasks = summary_tasks or bool(tasks)
            summary_workers = summary_workers or bool(workers)
            summary_due = now - last_summary >= SUMMARY_INTERVAL
            overview = refresh or (summary_due and (summary_tasks or summary_workers))
            workers_list = refresh or (summary_due and summary_workers)
            if not leader:
                backlog.keep(tasks, workers, now)
            elif backlog:
                tasks, workers = backlog.take(tasks, workers)
            if leader and rooms and (tasks or workers or deferred or overview or workers_list):
                deferred = self._push(self._index, tasks, workers, overview, workers_list, deferred)
            else:
                deferred = set()
            if summary_due:
                last_summary = now
                summary_tasks = summary_workers = False
            if refresh:
                last_refresh = now
            tasks, workers = {}, set()
            next_push = max(now, next_push) + interval
            if next_push < now:
                next_push = now + interval
        return last_id

    def _registry(self, client: redis.Redis) -> tuple[bool, list[str]]:
        """Share rooms across serve processes; True when this process is the leader.

        A process's rooms are registered when first subscribed and again every
        ROOM_REFRESH; the leader reads at most ``live_max_rooms_total`` of them.
        """
        now = time.time()
        keys = self.store.keys
        cap = self.settings.live_max_rooms_total
        pipe = client.pipeline(transaction=False)
        if now >= self._next_registration:
            self._next_registration = now + ROOM_REFRESH
            local = self.local_rooms()
            if local:
                pipe.zadd(keys.web_rooms, {room: now + ROOM_TTL for room in local})
        pipe.zremrangebyscore(keys.web_rooms, "-inf", now)
        # a stopping process must not take the lead back
        take = "0" if self._stop.is_set() else "1"
        self._claim(keys=[keys.web_leader], args=[self._token, LEADER_TTL_MS, take], client=pipe)
        pipe.zrangebyscore(keys.web_rooms, now, "+inf", start=0, num=cap)
        pipe.zcard(keys.web_rooms)
        results = pipe.execute()
        held, rooms, registered = results[-3:]
        leader = held == 1
        if leader:
            clock = time.monotonic()
            if registered > cap and clock - self._last_full_log >= REFUSAL_LOG_EVERY:
                self._last_full_log = clock
                logger.warning(
                    "live updates: %d rooms registered by all serve processes; "
                    "serving %d (MONITOR_LIVE_MAX_ROOMS_TOTAL)",
                    registered,
                    cap,
                )
        return leader, list(rooms)

    def _push(
        self,
        index: RoomIndex,
        tasks: dict[str, dict[str, str]],
        workers: set[str],
        overview: bool = True,
        workers_list: bool = True,
        deferred: set[str] | None = None,
    ) -> set[str]:
        """One coalesced push; returns the task rooms' ids left for the next one."""
        store = self.store
        # Group the changes by what filters look at: rooms are then looked up
        # once per (name, worker, state), not once per change.
        groups: dict[tuple[str, str, str], list[str]] = {}
        by_host: dict[str, list[str]] = {}
        details: list[str] = []
        order: dict[str, int] = {}
        for position, task_id in enumerate(reversed(tasks)):  # newest first
            change = tasks[task_id]
            order[task_id] = position
            host = change.get("worker", "")
            groups.setdefault((change.get("name", ""), host, change.get("state", "")), []).append(
                task_id
            )
            if host in index.hosts:
                ids = by_host.setdefault(host, [])
                if len(ids) < MAX_ROWS:
                    ids.append(task_id)
            if task_id in index.task_ids:
                details.append(task_id)
        wanted: dict[str, list[str]] = {}
        for (name, host, state), ids in groups.items():
            for room in index.lists_for(name, host, state):
                wanted.setdefault(room, []).extend(ids[:MAX_ROWS])
        for ids in wanted.values():
            if len(ids) > 1:
                ids.sort(key=order.__getitem__)
                del ids[MAX_ROWS:]
        row_ids = {i for ids in wanted.values() for i in ids}
        row_ids.update(i for ids in by_host.values() for i in ids)
        rows = {r["id"]: r for r in store.get_tasks(list(row_ids))} if row_ids else {}
        if rows and store.settings.hide_args_from_viewers:
            rows = {i: visible_row(r, False) for i, r in rows.items()}

        if overview and "overview" in index.summary:
            self._emit("overview", api.stats(store), "overview")
        if workers_list and "workers" in index.summary:
            self._emit("workers", {"workers": store.workers()}, "workers")
        for room, ids in wanted.items():
            found = [rows[i] for i in ids if i in rows]
            if found:
                self._emit("tasks", {"rows": found}, room)
        if deferred:
            details.extend(i for i in deferred if i in index.task_ids and i not in order)
        for task_id in details[:MAX_DETAILS]:
            task = api.task_detail(store, task_id, not store.settings.hide_args_from_viewers)
            if task is not None:
                self._emit("task", {"task": task}, "task:" + task_id)
        for host in set(by_host) | (workers & index.hosts):
            # The worker hash may not exist yet (signals only, no heartbeat
            # seen): its task rows are still worth sending.
            info = store.worker(host)
            found = [rows[i] for i in by_host.get(host, ()) if i in rows]
            if info is not None or found:
                self._emit("worker", {"worker": info, "rows": found}, "worker:" + host)
        self.pushes += 1
        return set(details[MAX_DETAILS:])


def register_handlers(socketio: Any, hub: Hub, namespace: str = "/") -> None:
    """Socket.IO event handlers of one app's hub, in ``namespace`` of ``socketio``.

    They talk to ``socketio`` directly, never through flask_socketio's
    ``emit``/``join_room``, which use ``current_app.extensions["socketio"]``:
    the host's server when the monitor runs one of its own beside it.
    """
    from flask import request

    def send(event: str, data: Any) -> None:
        socketio.emit(event, data, to=request.sid, namespace=namespace)

    def refused(reason: str, message: str) -> dict[str, Any]:
        sid = request.sid
        if hub.refuse(sid, reason):
            logger.warning(
                "live updates: closing connection %s after %d refusals", sid, ABUSE_LIMIT
            )
            server = socketio.server
            eio_sid = server.manager.eio_sid_from_sid(sid, namespace)
            server.disconnect(sid, namespace=namespace)
            if namespace == "/" and eio_sid is not None:
                # Our own server: close the transport too, so the rest of a
                # flood is not even parsed. On a host's server the host's
                # namespaces share it.
                server.eio.disconnect(eio_sid)
        return {"ok": False, "error": message}

    @socketio.on("connect", namespace=namespace)
    def _connect(auth: Any = None) -> bool | None:
        from .security import may_read

        if not may_read():  # the page's session (or credentials), as for HTTP
            return False
        hub.ensure_started()
        send("status", hub.status())

    @socketio.on("disconnect", namespace=namespace)
    def _disconnect(*_args: Any) -> None:
        hub.disconnect(request.sid)

    @socketio.on("subscribe", namespace=namespace)
    def _subscribe(payload: Any = None) -> dict[str, Any]:
        sid = request.sid
        if not hub.admit(sid):
            return refused("rate", "too many subscribes; slow down")
        try:
            room = room_name(payload)
            new = hub.join(sid, room)
        except RoomRefused as exc:
            return refused("rooms", str(exc))
        except RoomError as exc:
            return refused("invalid", str(exc))
        socketio.server.enter_room(sid, room, namespace=namespace)
        if new:
            try:
                hub.register(room)
            except (redis.RedisError, TimeoutError) as exc:
                logger.warning("live updates: cannot register room %.80s: %s", room, exc)
        try:
            first = hub.initial(room)
        except (redis.RedisError, TimeoutError):
            first = None
        if first is not None:
            send(first[0], first[1])
        return {"ok": True, "room": room}

    @socketio.on("*", namespace=namespace)
    def _unknown(event: Any = None, *_args: Any) -> dict[str, Any]:
        # Events nobody handles cost a parse each too: they count as abuse.
        return refused("invalid", f"unknown event {str(event)[:40]!r}")

    @socketio.on("unsubscribe", namespace=namespace)
    def _unsubscribe(payload: Any = None) -> dict[str, Any]:
        sid = request.sid
        if not hub.admit(sid):
            return refused("rate", "too many requests; slow down")
        try:
            room = room_name(payload)
        except RoomError as exc:
            return refused("invalid", str(exc))
        socketio.server.leave_room(sid, room, namespace=namespace)
        hub.leave(sid, room)
        return {"ok": True, "room": room}
