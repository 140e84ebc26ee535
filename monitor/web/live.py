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

Rows are fetched with one pipeline per push whatever the event rate, so a
10k events/s burst costs each client a few messages per second.

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
from collections.abc import Callable
from typing import Any

import redis

from ..config import Settings
from ..store import Store, redis_client
from . import api

logger = logging.getLogger(__name__)

RECONNECT_START = 0.5
RECONNECT_MAX = 10.0
#: Overview and workers are re-pushed at least this often (offline detection, "3 s ago").
REFRESH_EVERY = 5.0
#: Changed rows sent per tasks room per push: a burst only needs the newest.
MAX_ROWS = 500
ROOM_TTL = 15.0
#: KEYS[1] = leader key, ARGV[1] = our token; deletes the key only if we hold it.
_RELEASE_LEADER = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)
LEADER_TTL_MS = 5000
XREAD_COUNT = 5000
#: Seconds between two pushes to a summary room (overview, workers).
SUMMARY_INTERVAL = 1.0


class RoomError(ValueError):
    """A subscribe payload that names no valid room."""


def room_name(payload: Any) -> str:
    """Canonical room name for a subscribe/unsubscribe payload."""
    if not isinstance(payload, dict):
        raise RoomError("payload must be an object")
    kind = payload.get("room")
    if kind in ("overview", "workers"):
        return kind
    if kind == "tasks":
        filters = payload.get("filters") or {}
        if not isinstance(filters, dict):
            raise RoomError("filters must be an object")
        clean = {}
        for key in ("state", "name", "worker"):
            value = filters.get(key)
            if value:
                if not isinstance(value, str):
                    raise RoomError(f"filter {key} must be a string")
                clean[key] = value.upper() if key == "state" else value
        return "tasks:" + json.dumps(clean, sort_keys=True, separators=(",", ":"))
    if kind == "task":
        task_id = payload.get("id")
        if not isinstance(task_id, str) or not task_id:
            raise RoomError("task room needs an id")
        return "task:" + task_id
    if kind == "worker":
        host = payload.get("hostname")
        if not isinstance(host, str) or not host:
            raise RoomError("worker room needs a hostname")
        return "worker:" + host
    raise RoomError(f"unknown room {kind!r}")


def _tasks_filter(room: str) -> dict[str, str]:
    try:
        filters = json.loads(room[6:])
    except ValueError:
        return {}
    return filters if isinstance(filters, dict) else {}


def _matches(filters: dict[str, str], change: dict[str, str]) -> bool:
    state = filters.get("state")
    if state and change.get("state") not in state.split(","):
        return False
    if filters.get("name") and change.get("name") != filters["name"]:
        return False
    return not (filters.get("worker") and change.get("worker") != filters["worker"])


class Hub:
    """Rooms of this process and the tailer that feeds them."""

    def __init__(self, socketio: Any, settings: Settings, shared: bool = False) -> None:
        self.socketio = socketio
        self.settings = settings
        self.shared = shared
        self.store = Store.from_settings(settings)
        self.redis_ok: bool | None = None
        self.events_status: Callable[[], str] = lambda: "off"
        self._last_status: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._started = False
        self._stop = threading.Event()
        self._members: dict[str, set[str]] = {}  # sid -> rooms
        self._rooms: dict[str, int] = {}  # room -> local subscribers
        self._token = uuid.uuid4().hex
        self.pushes = 0

    # -- rooms -----------------------------------------------------------
    def join(self, sid: str, room: str) -> None:
        with self._lock:
            rooms = self._members.setdefault(sid, set())
            if room not in rooms:
                rooms.add(room)
                self._rooms[room] = self._rooms.get(room, 0) + 1

    def register(self, room: str) -> None:
        """Shared mode: make the room known to the leader before acking the subscribe."""
        if self.shared:
            self.store.redis.zadd(self.store.keys.web_rooms, {room: time.time() + ROOM_TTL})

    def leave(self, sid: str, room: str) -> None:
        with self._lock:
            rooms = self._members.get(sid, set())
            if room in rooms:
                rooms.discard(room)
                self._drop(room)

    def disconnect(self, sid: str) -> None:
        with self._lock:
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
        if room == "overview":
            return "overview", api.stats(self.store)
        if room == "workers":
            return "workers", {"workers": self.store.workers()}
        if room.startswith("task:"):
            task = api.task_detail(self.store, room[5:])
            return ("task", {"task": task}) if task else None
        if room.startswith("worker:"):
            worker = self.store.worker(room[7:])
            return ("worker", {"worker": worker, "rows": []}) if worker else None
        return None

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
        self.socketio.emit(event, data, to=room, namespace="/")

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
        last_refresh = 0.0
        # Summary rooms (overview, workers) change with every event but need no
        # more than one message a second; task rooms get push_interval. A tab
        # thus gets at most 1/push_interval + 2 messages a second.
        last_summary = 0.0
        summary_tasks = summary_workers = False
        leader = not self.shared
        key = self.store.keys.changes
        while not self._stop.is_set():
            now = time.monotonic()
            block = max(1, int((next_push - now) * 1000))
            response = client.xread({key: last_id}, count=XREAD_COUNT, block=min(block, 1000))
            for _stream, entries in response or ():
                for entry_id, fields in entries:
                    last_id = entry_id
                    if fields.get("kind") == "task":
                        tasks[fields.get("id", "")] = fields
                        if fields.get("worker"):
                            workers.add(fields["worker"])
                    elif fields.get("kind") == "worker":
                        workers.add(fields.get("id", ""))
            self._check_status()
            now = time.monotonic()
            if now < next_push:
                continue
            refresh = now - last_refresh >= REFRESH_EVERY
            # Rooms are read at every push: a room subscribed just before a
            # change must get it (subscribe registers the room before its ack).
            if self.shared:
                leader, rooms = self._registry(client)
            else:
                rooms = self.local_rooms()
            summary_tasks = summary_tasks or bool(tasks)
            summary_workers = summary_workers or bool(workers)
            summary_due = now - last_summary >= SUMMARY_INTERVAL
            overview = refresh or (summary_due and (summary_tasks or summary_workers))
            workers_list = refresh or (summary_due and summary_workers)
            if leader and rooms and (tasks or workers or overview or workers_list):
                self._push(rooms, tasks, workers, refresh, overview, workers_list)
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
        """Share rooms across serve processes; True when this process is the leader."""
        now = time.time()
        keys = self.store.keys
        pipe = client.pipeline(transaction=False)
        local = self.local_rooms()
        if local:
            pipe.zadd(keys.web_rooms, {room: now + ROOM_TTL for room in local})
        pipe.zremrangebyscore(keys.web_rooms, "-inf", now)
        if not self._stop.is_set():  # a stopping process must not take the lead back
            pipe.set(keys.web_leader, self._token, nx=True, px=LEADER_TTL_MS)
        pipe.get(keys.web_leader)
        pipe.zrange(keys.web_rooms, 0, -1)
        results = pipe.execute()
        holder, rooms = results[-2], results[-1]
        leader = holder == self._token
        if leader:
            client.pexpire(keys.web_leader, LEADER_TTL_MS)
        return leader, list(rooms)

    def _push(
        self,
        rooms: list[str],
        tasks: dict[str, dict[str, str]],
        workers: set[str],
        refresh: bool,
        overview: bool = True,
        workers_list: bool = True,
    ) -> None:
        store = self.store
        wanted: dict[str, list[str]] = {}
        row_ids: set[str] = set()
        newest_first = list(reversed(list(tasks)))
        for room in rooms:
            if room.startswith("tasks:"):
                filters = _tasks_filter(room)
                ids = [i for i in newest_first if _matches(filters, tasks[i])][:MAX_ROWS]
                if ids:
                    wanted[room] = ids
                    row_ids.update(ids)
            elif room.startswith("worker:"):
                host = room[7:]
                ids = [i for i in newest_first if tasks[i].get("worker") == host][:MAX_ROWS]
                wanted[room] = ids
                row_ids.update(ids)
        rows = {r["id"]: r for r in store.get_tasks(list(row_ids))} if row_ids else {}
        for room in rooms:
            if room == "overview":
                if overview:
                    self._emit("overview", api.stats(store), room)
            elif room == "workers":
                if workers_list:
                    self._emit("workers", {"workers": store.workers()}, room)
            elif room.startswith("tasks:"):
                ids = wanted.get(room)
                if ids:
                    self._emit("tasks", {"rows": [rows[i] for i in ids if i in rows]}, room)
            elif room.startswith("task:"):
                if room[5:] in tasks:
                    task = api.task_detail(store, room[5:])
                    if task is not None:
                        self._emit("task", {"task": task}, room)
            elif room.startswith("worker:"):
                host = room[7:]
                ids = wanted.get(room) or []
                if ids or host in workers:
                    # The worker hash may not exist yet (signals only, no
                    # heartbeat seen): its task rows are still worth sending.
                    info = store.worker(host)
                    rows_ = [rows[i] for i in ids if i in rows]
                    if info is not None or rows_:
                        self._emit("worker", {"worker": info, "rows": rows_}, room)
        self.pushes += 1


def register_handlers(socketio: Any) -> None:
    """Socket.IO event handlers; the hub is looked up on the current app."""
    from flask import current_app, request
    from flask_socketio import emit, join_room, leave_room

    def hub() -> Hub:
        return current_app.extensions["monitor"].hub

    @socketio.on("connect")
    def _connect(auth: Any = None) -> None:
        h = hub()
        h.ensure_started()
        emit("status", h.status())

    @socketio.on("disconnect")
    def _disconnect(*_args: Any) -> None:
        hub().disconnect(request.sid)

    @socketio.on("subscribe")
    def _subscribe(payload: Any) -> dict[str, Any]:
        h = hub()
        try:
            room = room_name(payload)
        except RoomError as exc:
            return {"ok": False, "error": str(exc)}
        join_room(room)
        h.join(request.sid, room)
        try:
            h.register(room)
        except redis.RedisError as exc:
            logger.warning("live updates: cannot register room %s: %s", room, exc)
        try:
            first = h.initial(room)
        except redis.RedisError:
            first = None
        if first is not None:
            emit(first[0], first[1])
        return {"ok": True, "room": room}

    @socketio.on("unsubscribe")
    def _unsubscribe(payload: Any) -> dict[str, Any]:
        try:
            room = room_name(payload)
        except RoomError as exc:
            return {"ok": False, "error": str(exc)}
        leave_room(room)
        hub().leave(request.sid, room)
        return {"ok": True, "room": room}
