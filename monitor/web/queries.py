"""Task list queries over the store's indexes: filters, text search, sort, cursor paging.

Every query walks one sorted-set index newest-first (``ZREVRANGEBYSCORE`` with
``LIMIT``) and fetches rows with one pipelined ``HMGET`` per page, so a page
costs a few round trips whatever the number of stored tasks:

* one filter (state, name or worker) or none: read the matching index
  directly; the total is ``ZCARD``/``ZCOUNT``.
* several filters: walk the most selective index (smallest ``ZCARD``) and test
  the other filters on a few fields per task, within a scan budget.
* text search (``q``): walk newest-first testing id/args/kwargs/result/
  exception, within a time budget; ``next_cursor`` continues where it stopped.

Cursors are opaque strings ``<score>~<n>``: the score of the last task consumed
and how many tasks with exactly that score were consumed, which is stable under
concurrent writes (new tasks have higher scores and do not shift the page).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..store import LIST_FIELDS, Store

logger = logging.getLogger(__name__)

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
#: Tasks examined at most by one filtered (multi-index) page.
SCAN_BUDGET = 50_000
#: Seconds a text search may scan before returning what it found plus a cursor.
SEARCH_BUDGET = 0.5
#: Ids read from an index per round trip while scanning.
SCAN_CHUNK = 1000
#: Sorting by a field other than the update time happens in memory, on at most this many tasks.
SORT_LIMIT = 10_000
SORT_FIELDS = ("updated", "name", "state", "worker", "received", "started", "succeeded", "runtime")
SEARCH_FIELDS = ("args", "kwargs", "result", "exception")
_STATE_RE = re.compile(r"[A-Z0-9_]{1,64}")
_NUMERIC_SORT = frozenset({"received", "started", "succeeded", "runtime", "timestamp"})


class QueryError(ValueError):
    """A bad parameter: the API answers 400 with this message."""


@dataclass(frozen=True)
class TaskQuery:
    states: tuple[str, ...] = ()
    name: str | None = None
    worker: str | None = None
    since: float | None = None
    until: float | None = None
    q: str | None = None
    sort: str = "updated"
    desc: bool = True
    limit: int = DEFAULT_LIMIT
    cursor: tuple[float, int] | None = None

    @property
    def filtered(self) -> bool:
        return bool(self.states or self.name or self.worker)


def _float(name: str, value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise QueryError(f"{name} must be a number (epoch seconds), got {value!r}") from None
    if number != number:  # NaN
        raise QueryError(f"{name} must be a number, got {value!r}")
    return number


def parse_cursor(text: str | None) -> tuple[float, int] | None:
    if not text:
        return None
    try:
        score, _, skip = text.partition("~")
        value = (float(score), int(skip))
    except ValueError:
        raise QueryError(f"bad cursor {text!r}") from None
    if value[1] < 0 or value[0] != value[0]:
        raise QueryError(f"bad cursor {text!r}")
    return value


def format_cursor(position: tuple[float, int] | None) -> str | None:
    if position is None:
        return None
    return f"{position[0]!r}~{position[1]}"


def parse_states(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    states = []
    for part in value.split(","):
        part = part.strip().upper()
        if not part:
            continue
        if not _STATE_RE.fullmatch(part):
            raise QueryError(f"bad state {part!r}")
        states.append(part)
    return tuple(dict.fromkeys(states))


def parse_limit(value: str | None, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    if value is None or value == "":
        return default
    try:
        limit = int(value)
    except ValueError:
        raise QueryError(f"limit must be an integer, got {value!r}") from None
    if not 1 <= limit <= maximum:
        raise QueryError(f"limit must be between 1 and {maximum}, got {limit}")
    return limit


def parse_query(args: Mapping[str, str]) -> TaskQuery:
    """Validate the /api/v1/tasks query string (raises QueryError)."""
    sort = args.get("sort") or "updated"
    if sort.startswith("-"):  # Flower style: -received
        sort, order = sort[1:], "desc"
    else:
        order = (args.get("order") or "desc").lower()
    if sort not in SORT_FIELDS:
        raise QueryError(f"sort must be one of {', '.join(SORT_FIELDS)}, got {sort!r}")
    if order not in ("asc", "desc"):
        raise QueryError(f"order must be asc or desc, got {order!r}")
    since = _float("since", args.get("since"))
    until = _float("until", args.get("until"))
    if since is not None and until is not None and since > until:
        raise QueryError("since must not be after until")
    q = (args.get("q") or "").strip() or None
    if q is not None and len(q) > 1000:
        raise QueryError("q is too long (1000 characters at most)")
    return TaskQuery(
        states=parse_states(args.get("state")),
        name=args.get("name") or None,
        worker=args.get("worker") or None,
        since=since,
        until=until,
        q=q,
        sort=sort,
        desc=order == "desc",
        limit=parse_limit(args.get("limit")),
        cursor=parse_cursor(args.get("cursor")),
    )


class IndexWalk:
    """Ids of one index in score order from a cursor, fetched in chunks.

    ``position`` is the cursor just after the last id yielded.
    """

    def __init__(
        self,
        store: Store,
        key: str,
        desc: bool,
        since: float | None,
        until: float | None,
        cursor: tuple[float, int] | None,
        chunk: int = SCAN_CHUNK,
    ) -> None:
        self.redis = store.redis
        self.key = key
        self.desc = desc
        self.low = "-inf" if since is None else repr(since)
        self.high = "+inf" if until is None else repr(until)
        self.position = cursor
        self.chunk = chunk
        self.exhausted = False

    def batches(self) -> Iterator[list[tuple[str, float]]]:
        """Lists of (id, score); advance ``position`` with :meth:`consumed`."""
        while not self.exhausted:
            skip = 0
            low, high = self.low, self.high
            if self.position is not None:
                bound, skip = self.position
                if self.desc:
                    high = repr(bound)
                else:
                    low = repr(bound)
            want = self.chunk + skip
            if self.desc:
                items = self.redis.zrevrangebyscore(
                    self.key, high, low, start=0, num=want, withscores=True
                )
            else:
                items = self.redis.zrangebyscore(
                    self.key, low, high, start=0, num=want, withscores=True
                )
            if len(items) < want:
                self.exhausted = True
            # The first `skip` items are the ones at exactly the cursor score
            # that earlier pages consumed (equal scores keep a stable order).
            batch = items[skip:]
            if not batch:
                self.exhausted = True
                return
            yield batch

    def consumed(self, score: float) -> None:
        if self.position is not None and self.position[0] == score:
            self.position = (score, self.position[1] + 1)
        else:
            self.position = (score, 1)


def _index_for(store: Store, query: TaskQuery) -> str:
    """The smallest index covering one of the filters."""
    keys = []
    if query.name:
        keys.append(store.keys.by_name(query.name))
    if len(query.states) == 1:
        keys.append(store.keys.by_state(query.states[0]))
    if query.worker:
        keys.append(store.keys.by_worker(query.worker))
    if not keys:
        return store.keys.tasks
    if len(keys) == 1:
        return keys[0]
    pipe = store.redis.pipeline(transaction=False)
    for key in keys:
        pipe.zcard(key)
    sizes = pipe.execute()
    return min(zip(sizes, keys, strict=True))[1]


def _needs_predicate(query: TaskQuery, key: str, store: Store) -> bool:
    covered = 0
    covered += bool(query.name)
    covered += bool(query.states)
    covered += bool(query.worker)
    return covered > 1 or len(query.states) > 1 or (covered == 1 and key == store.keys.tasks)


def _matches_filters(
    query: TaskQuery, state: str | None, name: str | None, worker: str | None
) -> bool:
    if query.states and state not in query.states:
        return False
    if query.name and name != query.name:
        return False
    return not (query.worker and worker != query.worker)


def _count(store: Store, key: str, query: TaskQuery) -> int:
    return store.count(key, query.since, query.until)


def list_tasks(store: Store, query: TaskQuery) -> dict[str, Any]:
    """One page of rows: {"tasks", "total", "next_cursor", "scanned"?}."""
    if query.sort != "updated":
        return _sorted_in_memory(store, query)
    key = _index_for(store, query)
    if query.q:
        return _search(store, query, key)
    if not _needs_predicate(query, key, store):
        return _simple_page(store, query, key)
    return _filtered_page(store, query, key)


def _simple_page(store: Store, query: TaskQuery, key: str) -> dict[str, Any]:
    walk = IndexWalk(store, key, query.desc, query.since, query.until, query.cursor, query.limit)
    batch = next(walk.batches(), [])
    ids = []
    for task_id, score in batch:
        ids.append(task_id)
        walk.consumed(score)
    rows = store.get_tasks(ids)
    more = len(batch) == query.limit and not walk.exhausted
    return {
        "tasks": rows,
        "total": _count(store, key, query),
        "next_cursor": format_cursor(walk.position) if more else None,
    }


def _filtered_page(store: Store, query: TaskQuery, key: str) -> dict[str, Any]:
    walk = IndexWalk(store, key, query.desc, query.since, query.until, query.cursor)
    found: list[str] = []
    scanned = 0
    stopped_early = False
    for batch in walk.batches():
        pipe = store.redis.pipeline(transaction=False)
        for task_id, _ in batch:
            pipe.hmget(store.keys.task(task_id), ("state", "name", "worker"))
        for (task_id, score), (state, name, worker) in zip(batch, pipe.execute(), strict=True):
            scanned += 1
            walk.consumed(score)
            if state is not None and _matches_filters(query, state, name, worker):
                found.append(task_id)
                if len(found) >= query.limit:
                    stopped_early = True
                    break
            if scanned >= SCAN_BUDGET:
                stopped_early = True
                break
        if stopped_early:
            break
    return {
        "tasks": store.get_tasks(found),
        "total": None,
        "next_cursor": format_cursor(walk.position) if stopped_early else None,
        "scanned": scanned,
    }


def _search(store: Store, query: TaskQuery, key: str) -> dict[str, Any]:
    needle = query.q.lower() if query.q else ""
    deadline = time.monotonic() + SEARCH_BUDGET
    fields = ("state", "name", "worker", *SEARCH_FIELDS)
    found: list[str] = []
    seen: set[str] = set()
    if query.cursor is None and query.q and store.redis.exists(store.keys.task(query.q)):
        # Search by task id: an exact id is found at once whatever its age.
        state, name, worker = store.redis.hmget(store.keys.task(query.q), "state", "name", "worker")
        if _matches_filters(query, state, name, worker):
            found.append(query.q)
            seen.add(query.q)
    walk = IndexWalk(store, key, query.desc, query.since, query.until, query.cursor)
    scanned = 0
    stopped_early = False
    for batch in walk.batches():
        pipe = store.redis.pipeline(transaction=False)
        for task_id, _ in batch:
            pipe.hmget(store.keys.task(task_id), fields)
        for (task_id, score), values in zip(batch, pipe.execute(), strict=True):
            scanned += 1
            walk.consumed(score)
            state, name, worker = values[0], values[1], values[2]
            if state is None or task_id in seen or not _matches_filters(query, state, name, worker):
                continue
            if needle in task_id.lower() or any(
                v is not None and needle in v.lower() for v in values[3:]
            ):
                found.append(task_id)
                if len(found) >= query.limit:
                    stopped_early = True
                    break
        if stopped_early:
            break
        if time.monotonic() > deadline and not walk.exhausted:
            stopped_early = True  # out of time: the cursor continues the scan
            break
    return {
        "tasks": store.get_tasks(found),
        "total": None,
        "next_cursor": format_cursor(walk.position) if stopped_early else None,
        "scanned": scanned,
    }


def _sort_value(row: dict[str, Any], field: str) -> Any:
    value = row.get(field)
    if field in _NUMERIC_SORT:
        try:
            return (0, float(value))
        except (TypeError, ValueError):
            return (1, 0.0)  # missing values last
    return (0 if value is not None else 1, value or "")


def _sorted_in_memory(store: Store, query: TaskQuery) -> dict[str, Any]:
    """Sort by another field: only when the filters leave few enough tasks."""
    if query.q:
        raise QueryError("text search (q) is sorted newest first; drop sort or q")
    key = _index_for(store, query)
    total = _count(store, key, query)
    if total > SORT_LIMIT:
        raise QueryError(
            f"sort={query.sort} needs filters leaving at most {SORT_LIMIT} tasks "
            f"({total} match); use the default sort (updated)"
        )
    walk = IndexWalk(store, key, True, query.since, query.until, None, SORT_LIMIT)
    ids = [task_id for task_id, _ in next(walk.batches(), [])]
    pipe = store.redis.pipeline(transaction=False)
    for task_id in ids:
        pipe.hmget(store.keys.task(task_id), ("state", "name", "worker", query.sort))
    rows = []
    for task_id, (state, name, worker, value) in zip(ids, pipe.execute(), strict=True):
        if state is None or not _matches_filters(query, state, name, worker):
            continue
        rows.append(
            {"id": task_id, query.sort: value, "state": state, "name": name, "worker": worker}
        )
    present = [r for r in rows if r.get(query.sort) is not None]
    missing = [r for r in rows if r.get(query.sort) is None]
    present.sort(key=lambda r: _sort_value(r, query.sort), reverse=query.desc)
    ordered = present + missing
    offset = int(query.cursor[1]) if query.cursor else 0
    page = ordered[offset : offset + query.limit]
    next_offset = offset + len(page)
    return {
        "tasks": store.get_tasks([r["id"] for r in page]),
        "total": len(ordered),
        # Offset cursors for in-memory sorts: the score part is unused (0).
        "next_cursor": format_cursor((0.0, next_offset)) if next_offset < len(ordered) else None,
    }


def worker_tasks(store: Store, hostname: str, limit: int = 100) -> list[dict[str, Any]]:
    ids = store.redis.zrevrange(store.keys.by_worker(hostname), 0, limit - 1)
    return store.get_tasks(ids, LIST_FIELDS)
