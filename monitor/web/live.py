"""Live updates: tail ``{prefix}:changes``, coalesce, push to Socket.IO rooms.

One :class:`Hub` per app, one background task per process (started once, under
a lock). The task reads the change feed with ``XREAD BLOCK`` from ``$``,
collects the ids of changed tasks and workers, and every
``Settings.push_interval`` emits at most one message per event name per room:

===================  ===============================================================
room                 message
===================  ===============================================================
``overview``         "overview": the /api/v1/stats object
``workers``          "workers": {"workers": [...]}
``tasks:<json>``     "tasks": {"rows": [...]} changed rows matching the filters
``task:<id>``        "task": {"task": detail}
``worker:<host>``    "worker": {"worker": ..., "rows": [...]}
``beat``             "beat": the /api/v1/beat object (periodic tasks)
``history:<json>``   "history": a chart window's newest points and totals (every 5 s)
``queues``           "queues": the queue sampler's last sample (monitor.queues.overview)
``alerts``           "alerts": sent log, pending deliveries, firing subjects, status
===================  ===============================================================

A room kind is one entry of :data:`ROOM_KINDS` (:class:`RoomKind`: how a
payload names it, what a new subscriber gets at once, what a push sends and
when: on changes of the feed, or every N seconds for data the feed does not
carry). A new kind of room is one entry there. Rows are fetched with one
pipeline per push whatever the event rate, so a 10k events/s burst costs each
client a few messages per second.

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
holder of the ``{prefix}:web:leader`` lease, :class:`monitor.lease.Lease`)
emits for all, so a client never gets the same delta twice; the others keep
what they read for a while (:class:`Backlog`) and push it if they take over.
The tailer reconnects with capped backoff and reports Redis reachability in
"status" messages.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from socketio import PubSubManager

from .. import lost
from ..config import Settings
from ..lease import Lease
from ..store import Store, redis_client
from . import history_room, queries, queues_api
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
LEADER_TTL_MS = 5000
#: A process that does not lead keeps what it read for this long (and at most
#: BACKLOG_MAX tasks), and pushes it if it takes over: changes made while a
#: leader that died still held its lease are then not lost.
BACKLOG_SECONDS = LEADER_TTL_MS / 1000 + 2.0
BACKLOG_MAX = 20_000
XREAD_COUNT = 5000
#: Seconds between two pushes to a summary room (overview, workers).
SUMMARY_INTERVAL = 1.0
#: Seconds between two pushes of the alerts room.
ALERTS_EVERY = 2.0
#: The beat room re-reads every entry (up to 1,000: ~0.1 s): at most this often on changes.
BEAT_THROTTLE = 2.0
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


def room_arg(payload: dict[str, Any], key: str, what: str) -> str:
    """A kind's ``parse`` helper: ``payload[key]``, a non-empty string of at most MAX_VALUE."""
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


# -- room kinds ------------------------------------------------------------------
#: What a kind's push returns: a function that emits once the rows every kind
#: asked for (Push.want) are fetched, or None when it has nothing to send.
Emitter = Callable[[], None]


class Push:
    """One coalesced push: the changes since the last one, and the rows the kinds share.

    A kind's push runs in two steps so that one pipeline fetches the rows of
    every room whatever the number of kinds: it looks at the changes, asks for
    rows (:meth:`want`) and returns an emitter; once the rows are fetched
    (:meth:`fetch`) the emitters send.
    """

    def __init__(
        self,
        store: Store,
        tasks: dict[str, dict[str, str]],
        workers: set[str],
        emit: Callable[[str, Any, str], None],
    ) -> None:
        self.store = store
        #: task id -> its last change (state, name, worker), oldest first
        self.tasks = tasks
        #: hostnames of the workers that changed (or whose tasks did)
        self.workers = workers
        self.emit = emit
        #: task id -> position, 0 for the newest change
        self.order = {task_id: i for i, task_id in enumerate(reversed(tasks))}
        self.rows: dict[str, dict[str, Any]] = {}
        self._wanted: set[str] = set()

    def newest_first(self) -> Iterator[tuple[str, dict[str, str]]]:
        for task_id in reversed(self.tasks):
            yield task_id, self.tasks[task_id]

    def want(self, ids: Iterable[str]) -> None:
        """Ask for these tasks' list rows (fetched once for every kind)."""
        self._wanted.update(ids)

    def fetch(self) -> None:
        store = self.store
        if not self._wanted:
            return
        self.rows = {r["id"]: r for r in store.get_tasks(list(self._wanted))}
        if self.rows and store.settings.hide_args_from_viewers:
            self.rows = {i: visible_row(r, False) for i, r in self.rows.items()}

    def found(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        """The fetched rows of ``ids``, in their order (tasks gone are left out)."""
        return [self.rows[i] for i in ids if i in self.rows]


@dataclass(frozen=True)
class RoomKind:
    """One kind of room: how a payload names it, its first message and its pushes.

    A push is due when a change of a kind in ``on`` arrived (at most once per
    ``throttle`` seconds) and, with ``every``, at least every ``every`` seconds
    while the kind has rooms: a periodic kind (data not in the change feed)
    is ``on=()`` with ``every``. ``push`` gets the kind's rooms as ``index``
    made them and a dict it keeps between pushes (``state["again"]`` true: due
    again next push); without ``push`` each room gets its snapshot again.
    """

    #: payload -> argument after "kind:" (None: the room is the kind alone)
    parse: Callable[[dict[str, Any]], str | None]
    #: (store, argument) -> (event, data) a new subscriber gets at once, or None
    snapshot: Callable[[Store, str], tuple[str, Any] | None] = lambda _s, _a: None
    #: (push, rooms, state) -> emitter; None: resend each room's snapshot
    push: Callable[[Push, Any, dict[str, Any]], Emitter | None] | None = None
    #: {argument: room} -> what ``push`` gets as rooms (built when rooms change)
    index: Callable[[dict[str, str]], Any] = dict
    #: change feed kinds ("task", "worker") whose changes make a push due
    on: frozenset[str] = frozenset()
    #: seconds: at most one change-driven push this often (0: every push_interval)
    throttle: float = 0.0
    #: seconds: pushed at least this often while the kind has rooms (None: on changes only)
    every: float | None = None
    #: the change feed kind whose change to the room's argument drops its cached snapshot
    drops: str | None = None


def _resend(push: Push, snapshot: Callable[[Store, str], Any], rooms: dict[str, str]) -> Emitter:
    def emit() -> None:
        for arg, room in rooms.items():
            first = snapshot(push.store, arg)
            if first is not None:
                push.emit(first[0], first[1], room)

    return emit


def _overview(store: Store, _arg: str) -> tuple[str, Any]:
    return "overview", queries.stats(store)


def _workers(store: Store, _arg: str) -> tuple[str, Any]:
    return "workers", {"workers": store.workers()}


def _task(store: Store, task_id: str) -> tuple[str, Any] | None:
    # Rooms are shared by every client, viewers included: with
    # MONITOR_HIDE_ARGS_FROM_VIEWERS on, live pushes carry no arguments or
    # results for anyone (an operator's page reads them from the API).
    task = queries.task_detail(store, task_id, not store.settings.hide_args_from_viewers)
    return ("task", {"task": task}) if task else None


def _worker(store: Store, host: str) -> tuple[str, Any] | None:
    worker = store.worker(host)
    return ("worker", {"worker": worker, "rows": []}) if worker else None


class TaskLists:
    """Task-list rooms filed under (name, worker, state), "" for "any" (and once per
    state a room names), so a change finds its rooms with eight lookups whatever
    the number of rooms."""

    def __init__(self, rooms: dict[str, str]) -> None:
        self.lists: dict[tuple[str, str, str], list[str]] = {}
        for arg, room in rooms.items():
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


def _push_lists(push: Push, lists: TaskLists, _state: dict[str, Any]) -> Emitter | None:
    """Each task-list room: its changed rows, newest first, at most MAX_ROWS."""
    # Group the changes by what filters look at: rooms are then looked up
    # once per (name, worker, state), not once per change.
    groups: dict[tuple[str, str, str], list[str]] = {}
    for task_id, change in push.newest_first():
        key = (change.get("name", ""), change.get("worker", ""), change.get("state", ""))
        groups.setdefault(key, []).append(task_id)
    wanted: dict[str, list[str]] = {}
    for (name, host, state), ids in groups.items():
        for room in lists.lists_for(name, host, state):
            wanted.setdefault(room, []).extend(ids[:MAX_ROWS])
    for ids in wanted.values():
        if len(ids) > 1:
            ids.sort(key=push.order.__getitem__)
            del ids[MAX_ROWS:]
        push.want(ids)

    def emit() -> None:
        for room, ids in wanted.items():
            found = push.found(ids)
            if found:
                # rows may be shared between rooms: flag copies
                found = lost.annotate(push.store, [dict(r) for r in found])
                push.emit("tasks", {"rows": found}, room)

    return emit if wanted else None


def _push_details(push: Push, rooms: dict[str, str], state: dict[str, Any]) -> Emitter | None:
    """Each task room whose task changed: the detail, MAX_DETAILS a push (the rest wait)."""
    details = [task_id for task_id in push.order if task_id in rooms]
    deferred = state.get("deferred") or ()
    details.extend(i for i in deferred if i in rooms and i not in push.order)
    state["deferred"] = set(details[MAX_DETAILS:])
    state["again"] = bool(state["deferred"])
    if not details:
        return None

    def emit() -> None:
        store = push.store
        for task_id in details[:MAX_DETAILS]:
            task = queries.task_detail(store, task_id, not store.settings.hide_args_from_viewers)
            if task is not None:
                push.emit("task", {"task": task}, rooms[task_id])

    return emit


def _push_workers(push: Push, rooms: dict[str, str], _state: dict[str, Any]) -> Emitter | None:
    """Each worker room whose worker or tasks changed: the worker and its changed rows."""
    by_host: dict[str, list[str]] = {}
    for task_id, change in push.newest_first():
        host = change.get("worker", "")
        if host in rooms:
            ids = by_host.setdefault(host, [])
            if len(ids) < MAX_ROWS:
                ids.append(task_id)
    for ids in by_host.values():
        push.want(ids)
    hosts = set(by_host) | {h for h in push.workers if h in rooms}
    if not hosts:
        return None

    def emit() -> None:
        for host in hosts:
            # The worker hash may not exist yet (signals only, no heartbeat
            # seen): its task rows are still worth sending.
            info = push.store.worker(host)
            found = push.found(by_host.get(host, ()))
            if info is not None or found:
                push.emit("worker", {"worker": info, "rows": found}, rooms[host])

    return emit


def _alerts(store: Store, _arg: str) -> tuple[str, Any]:
    from .. import alerts  # the alerts module owns its reads

    return "alerts", alerts.live_snapshot(store)


def _beat(store: Store, _arg: str) -> tuple[str, Any]:
    # Shared by every client: no entry arguments for anyone when they are hidden
    # from viewers (an operator's page reads them from the API).
    from .. import beat

    body = beat.beat_status(store, beat.app_for(store))
    if store.settings.hide_args_from_viewers:
        for row in body["entries"]:
            row["args"] = row["kwargs"] = None
    return "beat", body


def _parse_history(payload: dict[str, Any]) -> str:
    try:
        return history_room.parse(payload)
    except history_room.HistoryRoomError as exc:
        raise RoomError(str(exc)) from None


_NO_ARG: Callable[[dict[str, Any]], str | None] = lambda _p: None  # noqa: E731
_TASK, _WORKER = frozenset({"task"}), frozenset({"worker"})

#: Every room kind, in the order a push sends them. Summary rooms (overview,
#: workers) change with every event but need no more than one message a second
#: (and one every REFRESH_EVERY for offline detection and "3 s ago"); the
#: others get push_interval. A tab thus gets at most 1/push_interval + 2 messages a second.
ROOM_KINDS: dict[str, RoomKind] = {
    "overview": RoomKind(
        _NO_ARG, _overview, on=_TASK | _WORKER, throttle=SUMMARY_INTERVAL, every=REFRESH_EVERY
    ),
    "workers": RoomKind(
        _NO_ARG, _workers, on=_WORKER, throttle=SUMMARY_INTERVAL, every=REFRESH_EVERY
    ),
    # no snapshot: the page fetches the list
    "tasks": RoomKind(_parse_filters, push=_push_lists, index=TaskLists, on=_TASK),
    "task": RoomKind(
        lambda p: room_arg(p, "id", "task"), _task, _push_details, on=_TASK, drops="task"
    ),
    # periodic tasks (monitor/beat.py): new runs arrive as task changes; due and
    # missed follow the clock, hence the refresh
    "beat": RoomKind(_NO_ARG, _beat, on=_TASK, throttle=BEAT_THROTTLE, every=REFRESH_EVERY),
    "worker": RoomKind(
        lambda p: room_arg(p, "hostname", "worker"),
        _worker,
        _push_workers,
        on=_TASK | _WORKER,
        drops="worker",
    ),
    # every known queue, pushed when the elected sampler stored a new sample (issue 10)
    "queues": RoomKind(
        _NO_ARG, queues_api.room_snapshot, queues_api.room_push, every=queues_api.ROOM_EVERY
    ),
    # periodic: the history counters are not in the change feed (monitor.web.history_room)
    "history": RoomKind(_parse_history, history_room.snapshot, every=history_room.EVERY),
    # alerts are not in the change feed: the sent log, pending deliveries and
    # firing subjects, every ALERTS_EVERY seconds (viewer-safe: webhooks masked)
    "alerts": RoomKind(_NO_ARG, _alerts, every=ALERTS_EVERY),
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
    """The rooms a push serves, by kind, each kind's as its ``index`` files them.

    Built when the room list changes, so a push looks rooms up from the changes
    and never scans every room for every change.
    """

    def __init__(self, rooms: list[str]) -> None:
        self.rooms = rooms
        args: dict[str, dict[str, str]] = {}
        for room in rooms:
            kind, _, arg = room.partition(":")
            if kind in ROOM_KINDS:
                args.setdefault(kind, {})[arg] = room
        #: kind -> its rooms, as the kind's index made them (kinds with rooms only)
        self.kinds: dict[str, Any] = {k: ROOM_KINDS[k].index(a) for k, a in args.items()}

    def of(self, kind: str) -> Any:
        """The rooms of ``kind`` (None when it has none)."""
        return self.kinds.get(kind)


def run_push(
    push: Push, index: RoomIndex, due: Iterable[str], states: dict[str, dict[str, Any]]
) -> None:
    """Push ``due`` kinds to their rooms: every kind asks, one fetch, every kind sends."""
    emitters = []
    for name in due:
        kind, rooms = ROOM_KINDS[name], index.of(name)
        if rooms is None:
            continue
        state = states.setdefault(name, {})
        emitter = (
            kind.push(push, rooms, state) if kind.push else _resend(push, kind.snapshot, rooms)
        )
        if emitter is not None:
            emitters.append(emitter)
    push.fetch()
    for emitter in emitters:
        emitter()


class Schedule:
    """When each kind's next push is due (see RoomKind's on/throttle/every)."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}  # kind -> last push (monotonic)
        self.refreshed: dict[str, float] = {}  # kind -> last push due to ``every``
        self.pending: set[str] = set()  # kinds with changes not pushed yet
        #: kind -> what its push keeps between pushes
        self.states: dict[str, dict[str, Any]] = {}

    def due(self, index: RoomIndex, changed: set[str], now: float) -> list[str]:
        """The kinds to push now; a kind without rooms forgets its changes."""
        due = []
        for name, kind in ROOM_KINDS.items():
            if index.of(name) is None:
                self.pending.discard(name)
                self.states.pop(name, None)
                continue
            if kind.on & changed or self.states.get(name, {}).get("again"):
                self.pending.add(name)
            if kind.every is not None and now - self.refreshed.get(name, 0.0) >= kind.every:
                self.refreshed[name] = now
            elif name not in self.pending or now - self.last.get(name, 0.0) < kind.throttle:
                continue
            self.last[name] = now
            self.pending.discard(name)
            due.append(name)
        return due

    def reset(self) -> None:
        """Not leading: the backlog keeps the changes, nothing is carried over."""
        self.pending.clear()
        self.states.clear()


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

    def invalidate(self, changed: dict[str, Iterable[str]]) -> None:
        """Drop the snapshots of the rooms whose argument changed (RoomKind.drops):
        ``changed`` maps a change feed kind ("task", "worker") to the ids read."""
        with self._lock:
            if not self._entries and not self._flights:
                return
            doomed = {
                f"{name}:{arg}"
                for name, kind in ROOM_KINDS.items()
                if kind.drops
                for arg in changed.get(kind.drops, ())
            }
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


class Rooms:
    """The rooms of this process's connections, and their budgets."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._members: dict[str, set[str]] = {}  # sid -> rooms
        self._rooms: dict[str, int] = {}  # room -> local subscribers
        self._buckets: dict[str, list[float]] = {}  # sid -> [tokens, last, refusals]
        self._last_refusal_log = 0.0
        self._refusals_logged = 0
        #: refused subscribes by reason, and connections closed for abuse
        self.refused: Counter[str] = Counter()

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

    def local(self) -> list[str]:
        with self._lock:
            return list(self._rooms)


class SharedRooms:
    """Rooms of every serve process sharing a message queue, and who pushes to them.

    A process's rooms are registered in ``{prefix}:web:rooms`` when first
    subscribed and again every ROOM_REFRESH; the holder of the ``web:leader``
    lease (:class:`monitor.lease.Lease`) reads at most ``live_max_rooms_total``
    of them and is the only one to push, so a client never gets a delta twice.
    """

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.lease = Lease(store.redis, store.keys.web_leader, LEADER_TTL_MS)
        self.next_registration = 0.0
        self._last_full_log = 0.0

    def register(self, room: str) -> None:
        key, expiry = self.store.keys.web_rooms, time.time() + ROOM_TTL
        self.store.redis.zadd(key, {room: expiry})

    def read(self, client: redis.Redis, local: list[str], stopping: bool) -> tuple[bool, list[str]]:
        """(this process leads, the rooms of every process), in one round trip."""
        now = time.time()
        keys = self.store.keys
        cap = self.settings.live_max_rooms_total
        pipe = client.pipeline(transaction=False)
        if now >= self.next_registration:
            self.next_registration = now + ROOM_REFRESH
            if local:
                pipe.zadd(keys.web_rooms, {room: now + ROOM_TTL for room in local})
        pipe.zremrangebyscore(keys.web_rooms, "-inf", now)
        # a stopping process must not take the lead back
        self.lease.claim(take=not stopping, client=pipe)
        pipe.zrangebyscore(keys.web_rooms, now, "+inf", start=0, num=cap)
        pipe.zcard(keys.web_rooms)
        results = pipe.execute()
        held, rooms, registered = results[-3:]
        leader = self.lease.held = held == 1
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

    def release(self) -> None:
        # Hand leadership over at once: a restarted process (or another one)
        # must not wait LEADER_TTL_MS while changes go unpushed.
        try:
            self.lease.release()
        except redis.RedisError:
            pass


class Hub:
    """One app's live updates: tails the change feed and emits to the rooms.

    Who is in which room is :class:`Rooms`; what a room gets is its kind's
    (:data:`ROOM_KINDS`); which process pushes is :class:`SharedRooms`' lease.
    """

    def __init__(self, socketio: Any, settings: Settings, namespace: str = "/") -> None:
        self.socketio = socketio
        self.settings = settings
        self.namespace = namespace
        self.store = Store.from_settings(settings)
        self.rooms = Rooms(settings)
        self.shared_rooms = SharedRooms(self.store, settings)
        self.redis_ok: bool | None = None
        self.events_status: Callable[[], str] = lambda: "off"
        self.snapshots = SnapshotCache()
        self.schedule = Schedule()
        self._redis_slots = threading.BoundedSemaphore(SUBSCRIBE_CONCURRENCY)
        self._last_status: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._started = False
        self._stop = threading.Event()
        #: started with the tailer (the elected jobs): at serve's start, or when an
        #: embedded dashboard gets its first Socket.IO connection (after any fork)
        #: (objects with start() and stop(); stopped with the hub)
        self.companions: list[Any] = []
        self._index = RoomIndex([])
        self.pushes = 0

    @property
    def shared(self) -> bool:
        """True when the Socket.IO server fans out through a message queue."""
        server = getattr(self.socketio, "server", None)
        return server is not None and isinstance(server.manager, PubSubManager)

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
            self._bounded(lambda: self.shared_rooms.register(room))

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
        for companion in self.companions:
            companion.start()

    def stop(self) -> None:
        self._stop.set()
        self._release_leader()
        for companion in self.companions:
            companion.stop()

    def _release_leader(self) -> None:
        if self.shared:
            self.shared_rooms.release()

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
                self.shared_rooms.next_registration = 0.0  # rooms may have expired meanwhile
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
        next_push = time.monotonic() + interval
        shared = self.shared
        leader = not shared
        backlog = Backlog()
        key = self.store.keys.changes
        while not self._stop.is_set():
            now = time.monotonic()
            block = max(1, int((next_push - now) * 1000))
            response = client.xread({key: last_id}, count=XREAD_COUNT, block=min(block, 1000))
            for _stream, entries in response or ():
                read: dict[str, list[str]] = {"task": [], "worker": []}
                for entry_id, fields in entries:
                    last_id = entry_id
                    if fields.get("kind") == "task":
                        task_id = fields.get("id", "")
                        tasks.pop(task_id, None)  # keep arrival order: newest last
                        tasks[task_id] = fields
                        read["task"].append(task_id)
                        if fields.get("worker"):
                            workers.add(fields["worker"])
                    elif fields.get("kind") == "worker":
                        workers.add(fields.get("id", ""))
                        read["worker"].append(fields.get("id", ""))
                # Every process tails the feed, so every process's cache hears of changes.
                self.snapshots.invalidate(read)
            self._check_status()
            now = time.monotonic()
            if now < next_push:
                continue
            # Rooms are read at every push: a room subscribed just before a
            # change must get it (subscribe registers the room before its ack).
            if shared:
                leader, rooms = self.shared_rooms.read(
                    client, self.rooms.local(), self._stop.is_set()
                )
            else:
                rooms = self.rooms.local()
            if rooms != self._index.rooms:
                self._index = RoomIndex(rooms)
            if not leader:
                backlog.keep(tasks, workers, now)
                self.schedule.reset()
            else:
                if backlog:
                    tasks, workers = backlog.take(tasks, workers)
                changed = {k for k, v in (("task", tasks), ("worker", workers)) if v}
                due = self.schedule.due(self._index, changed, now)
                if due:
                    self._push(self._index, tasks, workers, due)
            tasks, workers = {}, set()
            next_push = max(now, next_push) + interval
            if next_push < now:
                next_push = now + interval
        return last_id

    def _push(
        self,
        index: RoomIndex,
        tasks: dict[str, dict[str, str]],
        workers: set[str],
        due: Iterable[str] = tuple(ROOM_KINDS),
    ) -> None:
        """One coalesced push of the ``due`` kinds."""
        run_push(Push(self.store, tasks, workers, self._emit), index, due, self.schedule.states)
        self.pushes += 1


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
        if hub.rooms.refuse(sid, reason):
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
        hub.rooms.disconnect(request.sid)

    @socketio.on("subscribe", namespace=namespace)
    def _subscribe(payload: Any = None) -> dict[str, Any]:
        sid = request.sid
        if not hub.rooms.admit(sid):
            return refused("rate", "too many subscribes; slow down")
        try:
            room = room_name(payload)
            new = hub.rooms.join(sid, room)
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
        if not hub.rooms.admit(sid):
            return refused("rate", "too many requests; slow down")
        try:
            room = room_name(payload)
        except RoomError as exc:
            return refused("invalid", str(exc))
        socketio.server.leave_room(sid, room, namespace=namespace)
        hub.rooms.leave(sid, room)
        return {"ok": True, "room": room}
