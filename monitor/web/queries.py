"""Task list queries over the store's indexes, each within a budget of rows, seconds and bytes.

Every query walks sorted-set indexes newest-first (``ZREVRANGEBYSCORE`` with
``LIMIT``, a few hundred ids per round trip) and fetches rows with pipelined
``HMGET``:

* one filter (state, name or worker) or none: read the matching index
  directly; the total is ``ZCARD``/``ZCOUNT``.
* several states (``SUCCESS,FAILURE``): walk each state's index and merge them
  by score in Python (k-way, like a merge sort's last step); a task is in one
  state index at a time, so the total is the sum of their counts. No temporary
  union key: ``ZUNIONSTORE`` costs O(N) on a million tasks.
* state, name and worker together: walk the smallest of them (a state set
  counts as the sum of its indexes) and test the others on three fields per
  task, within the scan budget.
* text search (``q``): walk newest-first testing id/args/kwargs/result/
  exception, within the scan budget.

Whatever the parameters, one request examines at most :data:`SCAN_BUDGET`
index entries during at most :data:`SCAN_SECONDS`, spends at most
:data:`REQUEST_SECONDS` fetching its page and returns at most
:data:`PAGE_BYTES` of row values. A scan stopped by the budget says so: the
v1 page carries ``next_cursor`` to continue where it stopped; Flower's shape
has no cursor, so a stopped scan returns fewer rows. Nothing before the
requested page is kept: an offset is counted, not collected.

Scans read a hundred ids per round trip rather than thousands, and step aside
(:func:`pause`) after each: the web server is one gevent thread, and each
chunk's Python work is a slice during which no other request runs. Short
slices, and long requests waiting while short ones are in flight, keep
everybody else's latency flat while one client loops the most expensive queries.

Cursors are opaque strings ``<score>~<n>``: the score of the last task consumed
and how many tasks with exactly that score were consumed, which is stable under
concurrent writes (new tasks have higher scores and do not shift the page).
Between equal scores the order is the member's (Redis's own order within one
index), so merged indexes page the same way.
"""

from __future__ import annotations

import heapq
import logging
import math
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from .. import lost
from ..store import MAX_KEY_PART, MAX_MEMBERS, Store
from ..values import finite_float
from ..vocabulary import (
    FILTER_FIELDS,
    LIST_FIELDS,
    SEARCH_FIELDS,
    SORT_FIELDS,
    STAT_RUNTIME,
    STAT_RUNTIME_SUM,
    STAT_SCOPE,
    STAT_STATE,
    state_word,
)
from .visibility import visible_task

logger = logging.getLogger(__name__)

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
#: Index entries one request examines at most (filters the indexes cannot answer, search).
SCAN_BUDGET = 50_000
#: Seconds of server time one scan may take before it returns what it found.
SCAN_SECONDS = 0.5
#: Seconds a request may spend in all (scan, then fetching its page's rows).
REQUEST_SECONDS = 0.8
#: Bytes of field values one page carries at most (rows beyond are left to the next page).
PAGE_BYTES = 8 << 20
#: Ids read from an index, or tasks tested, per round trip while scanning.
SCAN_CHUNK = 100
#: Ids (with scores) read from an index per round trip for a page: redis-py
#: converts each score in Python, and a thousand of them are a long slice.
WALK_CHUNK = 250
#: Field values fetched per round trip when reading a page's rows (rows x fields).
ROW_VALUES = 2000
#: Sorting by a field other than the update time happens in memory, on at most this many tasks.
SORT_LIMIT = 10_000
#: A cursor's count of tasks at one score (also the in-memory sort's offset) is at most this.
MAX_CURSOR_SKIP = SORT_LIMIT
#: Scores of cursors beyond this are not times (epoch seconds: year 33658).
MAX_CURSOR_SCORE = 1e12
#: ``since``/``until`` beyond this are not epoch seconds (year 5138).
MAX_EPOCH = 1e11
#: States in one filter (``state=SUCCESS,FAILURE``): each is an index walked.
MAX_STATES = 16
#: Characters of a text search (``q``, Flower's ``search``) and of any parameter value.
MAX_TEXT = 1000
#: Task names returned by the task-names endpoints, most recently seen first.
MAX_NAMES = 10_000
#: Children whose rows are inlined in a task's detail (more are listed by id only).
MAX_CHILD_ROWS = 200
MAX_STATS_MINUTES = 24 * 60
#: Minutes of counters read per round trip.
STATS_WINDOW = 60
#: Counter fields one stats request reads at most (a day with many task names).
STATS_FIELDS_BUDGET = 200_000
_STATE_RE = re.compile(r"[A-Z0-9_]{1,64}")
_INT_RE = re.compile(r"\s*([+-]?)([0-9]+)\s*")
_NUMERIC_SORT = frozenset({"received", "started", "succeeded", "runtime", "timestamp"})


class QueryError(ValueError):
    """A bad parameter: the API answers 400 with this message."""


# -- parameters ------------------------------------------------------------------


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


def parse_int(name: str, value: str | None) -> int | None:
    """An integer parameter (None when absent); 400 for anything but digits.

    Digits beyond 18 are kept as a sign and a huge magnitude so that callers
    that clamp can clamp them, without converting a 10 kB number.
    """
    if value is None or value == "":
        return None
    match = _INT_RE.fullmatch(value)
    if match is None:
        raise QueryError(f"{name} must be an integer, got {value[:40]!r}")
    sign, digits = match.groups()
    number = int(digits) if len(digits) <= 18 else 10**18
    return -number if sign == "-" else number


def parse_bounded_int(name: str, value: str | None, default: int, low: int, high: int) -> int:
    """An integer in [low, high] (400 outside it), or ``default`` when absent."""
    number = parse_int(name, value)
    if number is None:
        return default
    if not low <= number <= high:
        raise QueryError(f"{name} must be between {low} and {high}, got {value}")
    return number


def clamp_int(name: str, value: str | None, default: int, low: int, high: int) -> int:
    """An integer clamped into [low, high] (Flower's endpoints), or ``default`` when absent."""
    number = parse_int(name, value)
    if number is None:
        return default
    return max(low, min(high, number))


def parse_time(name: str, value: str | None) -> float | None:
    """Epoch seconds: finite, 0 .. MAX_EPOCH."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise QueryError(f"{name} must be a number (epoch seconds), got {value[:40]!r}") from None
    if not math.isfinite(number) or not 0 <= number <= MAX_EPOCH:
        raise QueryError(f"{name} must be epoch seconds between 0 and {MAX_EPOCH:.0f}")
    return number


def parse_key_part(name: str, value: str | None) -> str | None:
    """A name, worker or id: what the store can hold (MAX_KEY_PART characters)."""
    if not value:
        return None
    if len(value) > MAX_KEY_PART:
        raise QueryError(f"{name} is too long ({MAX_KEY_PART} characters at most)")
    return value


def parse_text(name: str, value: str | None) -> str | None:
    text = (value or "").strip()
    if len(text) > MAX_TEXT:
        raise QueryError(f"{name} is too long ({MAX_TEXT} characters at most)")
    return text or None


def parse_cursor(text: str | None) -> tuple[float, int] | None:
    if not text:
        return None
    bad = QueryError(f"bad cursor {text[:40]!r} (use next_cursor of the previous page)")
    if len(text) > 64:
        raise bad
    score, sep, skip = text.partition("~")
    try:
        value = (float(score), parse_int("cursor", skip))
    except (ValueError, QueryError):
        raise bad from None
    if not sep or value[1] is None or not math.isfinite(value[0]):
        raise bad
    if abs(value[0]) > MAX_CURSOR_SCORE or not 0 <= value[1] <= MAX_CURSOR_SKIP:
        raise bad
    return value[0], value[1]


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
            raise QueryError(f"bad state {part[:70]!r}")
        states.append(part)
    states = list(dict.fromkeys(states))
    if len(states) > MAX_STATES:
        raise QueryError(f"at most {MAX_STATES} states in one filter")
    return tuple(states)


def parse_limit(value: str | None, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    return parse_bounded_int("limit", value, default, 1, maximum)


def parse_query(args: Mapping[str, str]) -> TaskQuery:
    """Validate the /api/v1/tasks query string (raises QueryError)."""
    sort = args.get("sort") or "updated"
    if sort.startswith("-"):  # Flower style: -received
        sort, order = sort[1:], "desc"
    else:
        order = (args.get("order") or "desc").lower()
    if sort not in SORT_FIELDS:
        raise QueryError(f"sort must be one of {', '.join(SORT_FIELDS)}, got {sort[:40]!r}")
    if order not in ("asc", "desc"):
        raise QueryError(f"order must be asc or desc, got {order[:40]!r}")
    since = parse_time("since", args.get("since"))
    until = parse_time("until", args.get("until"))
    if since is not None and until is not None and since > until:
        raise QueryError("since must not be after until")
    return TaskQuery(
        states=parse_states(args.get("state")),
        name=parse_key_part("name", args.get("name")),
        worker=parse_key_part("worker", args.get("worker")),
        since=since,
        until=until,
        q=parse_text("q", args.get("q")),
        sort=sort,
        desc=order == "desc",
        limit=parse_limit(args.get("limit")),
        cursor=parse_cursor(args.get("cursor")),
    )


# -- budgets -------------------------------------------------------------------


#: Seconds a long request waits, after each chunk, for short ones in flight to finish.
YIELD_MAX = 0.05


class _Turns:
    """Short requests first, in this process.

    The web server is one gevent thread: two busy requests share its CPU (and
    their Redis round trips) turn about, so a long request beside a short one
    would double the short one's latency. A request is short until it first
    calls :func:`pause` (a second chunk of work); from then on it is long, and at
    each pause it waits (up to YIELD_MAX) while short requests are in flight.
    Long requests then get less done within their deadlines instead.
    """

    def __init__(self) -> None:
        self.short = 0
        self._cond: threading.Condition | None = None
        self._made = threading.Lock()  # held only to build the condition, never to wait

    @property
    def cond(self) -> threading.Condition:
        # Built at first use, not at import: `monitor serve` patches threading
        # for gevent after some modules are imported, and a waiting Condition
        # made before would block the whole process instead of one greenlet.
        if self._cond is None:
            with self._made:
                if self._cond is None:
                    self._cond = threading.Condition()
        return self._cond


_turns = _Turns()
#: [long?] for the API request this context serves; None outside requests.
_request: ContextVar[list[bool] | None] = ContextVar("monitor_api_request", default=None)


def request_started() -> None:
    _request.set([False])
    with _turns.cond:
        _turns.short += 1


def request_finished() -> None:
    state = _request.get()
    if state is None:
        return
    _request.set(None)
    with _turns.cond:
        if not state[0]:
            _turns.short -= 1
        _turns.cond.notify_all()


def pause() -> None:
    """Let other requests run between two chunks of a long one.

    A greenlet switch under gevent (``monitor serve`` patches ``time.sleep``),
    a GIL release with threads; within an API request, first a wait while
    short requests are in flight (see :class:`_Turns`).
    """
    state = _request.get()
    if state is not None:
        with _turns.cond:
            if not state[0]:
                state[0] = True
                _turns.short -= 1
                _turns.cond.notify_all()
            if _turns.short > 0:
                _turns.cond.wait_for(lambda: _turns.short <= 0, timeout=YIELD_MAX)
    time.sleep(0)


class Budget:
    """What one request may spend: index entries and seconds scanning, then seconds and
    bytes fetching its page. ``cut`` tells whether anything stopped early."""

    def __init__(self) -> None:
        start = time.monotonic()
        self.rows = SCAN_BUDGET
        self.scan_deadline = start + SCAN_SECONDS
        self.deadline = start + REQUEST_SECONDS
        self.page_bytes = PAGE_BYTES
        self.scanned = 0
        self.cut = False

    def scan_over(self) -> bool:
        return self.scanned >= self.rows or time.monotonic() >= self.scan_deadline

    def time_over(self) -> bool:
        return time.monotonic() >= self.deadline


# -- index walks -------------------------------------------------------------


def _bound(score: float) -> str:
    if score == math.inf:
        return "+inf"
    if score == -math.inf:
        return "-inf"
    return repr(score)


def _float_key(x: float) -> int:
    """An integer in the order of the floats (for bisection over scores)."""
    bits = struct.unpack("<q", struct.pack("<d", x))[0]
    return bits if bits >= 0 else -(bits & 0x7FFF_FFFF_FFFF_FFFF) - 1


def _key_float(k: int) -> float:
    bits = k if k >= 0 else (-(k + 1)) | -0x8000_0000_0000_0000
    return struct.unpack("<d", struct.pack("<q", bits))[0]


class IndexWalk:
    """Ids of one index, or of several merged, in score order from a cursor.

    Between equal scores the order is the member's, as Redis orders one index,
    so a cursor means the same thing whether one index is walked or several.
    ``position`` is the cursor just after the last id :meth:`consumed`.
    """

    def __init__(
        self,
        store: Store,
        keys: str | Sequence[str],
        desc: bool,
        since: float | None,
        until: float | None,
        cursor: tuple[float, int] | None,
        chunk: int = SCAN_CHUNK,
    ) -> None:
        self.redis = store.redis
        self.keys = (keys,) if isinstance(keys, str) else tuple(keys)
        self.desc = desc
        self.low = -math.inf if since is None else since
        self.high = math.inf if until is None else until
        self.position = cursor
        self.chunk = chunk
        self._merged: Iterator[tuple[str, float]] | None = None
        self._peeked: list[tuple[str, float]] = []

    # A walk reads lazily: nothing is asked of Redis before the first batch.
    def _range(self, key: str, start: float | None, skip: int, count: int) -> list:
        if self.desc:
            high = self.high if start is None else start
            return self.redis.zrevrangebyscore(
                key, _bound(high), _bound(self.low), start=skip, num=count, withscores=True
            )
        low = self.low if start is None else start
        return self.redis.zrangebyscore(
            key, _bound(low), _bound(self.high), start=skip, num=count, withscores=True
        )

    def _stream(self, key: str, start: float | None, skip: int) -> Iterator[tuple[str, float]]:
        # Merged indexes share the chunk at first (most pages need a few ids from
        # each), then an index that turns out to hold them reads more at a time.
        size = max(16, self.chunk // len(self.keys))
        while True:
            items = self._range(key, start, skip, size)
            yield from items
            if len(items) < size:
                return
            size = min(self.chunk, size * 2)
            last = items[-1][1]
            same = 0
            for _, score in reversed(items):
                if score != last:
                    break
                same += 1
            if start is not None and last == start:
                skip += same  # the whole chunk had the start score
            else:
                start, skip = last, same

    def _open(self) -> Iterator[tuple[str, float]]:
        cursor = self.position
        if cursor is not None:
            score = cursor[0]
            # A cursor outside [since, until] (forged, or from other filters) starts over.
            if (self.desc and score > self.high) or (not self.desc and score < self.low):
                cursor = None
        if cursor is None:
            streams = [self._stream(key, None, 0) for key in self.keys]
        elif len(self.keys) == 1:
            streams = [self._stream(self.keys[0], cursor[0], cursor[1])]
        else:
            streams = [
                self._stream(key, cursor[0], n)
                for key, n in zip(self.keys, self._split_skip(*cursor), strict=True)
            ]
        if len(streams) == 1:
            return streams[0]
        return heapq.merge(*streams, key=lambda item: (item[1], item[0]), reverse=self.desc)

    def _split_skip(self, score: float, n: int) -> list[int]:
        """How many of the ``n`` consumed tasks at ``score`` each index holds."""
        if n == 0:
            return [0] * len(self.keys)
        pipe = self.redis.pipeline(transaction=False)
        at = _bound(score)
        for key in self.keys:
            # the first n at this score in walk order (Redis orders equal scores by member)
            if self.desc:
                pipe.zrevrangebyscore(key, at, at, start=0, num=n)
            else:
                pipe.zrangebyscore(key, at, at, start=0, num=n)
        tagged = [(member, i) for i, members in enumerate(pipe.execute()) for member in members]
        tagged.sort(reverse=self.desc)
        counts = [0] * len(self.keys)
        for _, i in tagged[:n]:
            counts[i] += 1
        return counts

    def next_batch(self, n: int) -> list[tuple[str, float]]:
        """Up to ``n`` (id, score) pairs; [] when the walk is over.

        Advance ``position`` with :meth:`consumed` for the ones actually used.
        """
        if self._merged is None:
            self._merged = self._open()
        batch = self._peeked[:n]
        del self._peeked[:n]
        if len(batch) < n:
            batch.extend(next(self._merged, None) for _ in range(n - len(batch)))
            while batch and batch[-1] is None:
                batch.pop()
        return batch

    @property
    def exhausted(self) -> bool:
        """Nothing after what :meth:`next_batch` returned (reads one id ahead)."""
        if not self._peeked:
            if self._merged is None:
                self._merged = self._open()
            item = next(self._merged, None)
            if item is None:
                return True
            self._peeked.append(item)
        return False

    def consumed(self, score: float) -> None:
        if self.position is not None and self.position[0] == score:
            self.position = (score, self.position[1] + 1)
        else:
            self.position = (score, 1)

    def seek(self, offset: int) -> bool:
        """Start at the ``offset``-th id (0 = the first); False when there are fewer.

        O(log N) per index: ranks within one index, a bisection over the
        scores for several (each step one pipelined ``ZCOUNT`` per index).
        """
        if offset <= 0:
            return not self.exhausted
        if len(self.keys) == 1:
            position = self._seek_one(offset)
        else:
            position = self._seek_merged(offset)
        if position is None:
            self._merged, self._peeked = iter(()), []
            return False
        self.position, self._merged, self._peeked = position, None, []
        return not self.exhausted

    def _before(self, score: float) -> tuple[str, str]:
        """ZCOUNT range of the entries before ``score`` in walk order (within the bounds)."""
        if self.desc:
            return ("(" + _bound(score), _bound(self.high))
        return (_bound(self.low), "(" + _bound(score))

    def _seek_one(self, offset: int) -> tuple[float, int] | None:
        key = self.keys[0]
        before = 0  # entries outside the bounds, ahead of the walk
        if self.desc:
            if self.high < math.inf:
                before = self.redis.zcount(key, "(" + _bound(self.high), "+inf")
            item = self.redis.zrevrange(key, before + offset, before + offset, withscores=True)
            if not item or item[0][1] < self.low:
                return None
        else:
            if self.low > -math.inf:
                before = self.redis.zcount(key, "-inf", "(" + _bound(self.low))
            item = self.redis.zrange(key, before + offset, before + offset, withscores=True)
            if not item or item[0][1] > self.high:
                return None
        score = item[0][1]
        ahead = self.redis.zcount(key, *self._before(score))
        return score, offset - int(ahead)

    def _counts(self, score: float) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for key in self.keys:
            pipe.zcount(key, *self._before(score))
        return sum(int(n) for n in pipe.execute())

    def _seek_merged(self, offset: int) -> tuple[float, int] | None:
        pipe = self.redis.pipeline(transaction=False)
        low, high = _bound(self.low), _bound(self.high)
        for key in self.keys:
            pipe.zcount(key, low, high)
            pipe.zrangebyscore(key, low, high, start=0, num=1, withscores=True)
            pipe.zrevrangebyscore(key, high, low, start=0, num=1, withscores=True)
        replies = pipe.execute()
        total = sum(int(n) for n in replies[0::3])
        if offset >= total:
            return None
        scores = [item[0][1] for item in replies[1::3] + replies[2::3] if item]
        # The score s of the offset-th id is, in walk order, the first score with
        # at most `offset` ids before it: bisect over the floats between the ends.
        if self.desc:
            # ids before s (higher scores) shrink as s rises: find the lowest s that fits
            lo, hi = _float_key(min(scores)), _float_key(max(scores))
            if self._counts(_key_float(lo)) <= offset:
                hi = lo
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if self._counts(_key_float(mid)) <= offset:
                    hi = mid
                else:
                    lo = mid
            score = _key_float(hi)
        else:
            lo, hi = _float_key(min(scores)), _float_key(max(scores))
            if self._counts(_key_float(hi)) <= offset:
                lo = hi
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if self._counts(_key_float(mid)) <= offset:
                    lo = mid
                else:
                    hi = mid
            score = _key_float(lo)
        return score, offset - self._counts(score)


# -- planning ------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The indexes a query walks and whether each task must still be tested."""

    keys: tuple[str, ...]
    predicate: bool


def plan(store: Store, states: Sequence[str], name: str | None, worker: str | None) -> Plan:
    """Walk the smallest source covering one filter; test the others on each task."""
    sources: list[tuple[str, ...]] = []
    if name:
        sources.append((store.keys.by_name(name),))
    if worker:
        sources.append((store.keys.by_worker(worker),))
    if states:
        sources.append(tuple(store.keys.by_state(s) for s in states))
    if not sources:
        return Plan((store.keys.tasks,), False)
    if len(sources) == 1:
        return Plan(sources[0], False)
    pipe = store.redis.pipeline(transaction=False)
    for keys in sources:
        for key in keys:
            pipe.zcard(key)
    sizes = iter(pipe.execute())
    sized = [(sum(int(next(sizes)) for _ in keys), i) for i, keys in enumerate(sources)]
    return Plan(sources[min(sized)[1]], True)


def count(store: Store, keys: Sequence[str], since: float | None, until: float | None) -> int:
    """Entries of these indexes within [since, until] (each task is in one state index)."""
    if len(keys) == 1:
        return store.count(keys[0], since, until)
    pipe = store.redis.pipeline(transaction=False)
    for key in keys:
        if since is None and until is None:
            pipe.zcard(key)
        else:
            pipe.zcount(key, "-inf" if since is None else since, "+inf" if until is None else until)
    return sum(int(n) for n in pipe.execute())


def matches_filters(
    states: Sequence[str], name: str | None, worker: str | None, values: Sequence[Any]
) -> bool:
    """``values`` are FILTER_FIELDS (state, name, worker) of one task."""
    state, task_name, task_worker = values[0], values[1], values[2]
    if states and state not in states:
        return False
    if name and task_name != name:
        return False
    return not (worker and task_worker != worker)


def _hmget(store: Store, ids: Sequence[str], fields: Sequence[str]) -> list[list[Any]]:
    pipe = store.redis.pipeline(transaction=False)
    for task_id in ids:
        pipe.hmget(store.keys.task(task_id), fields)
    return pipe.execute()


def scan(
    store: Store,
    walk: IndexWalk,
    fields: Sequence[str],
    match: Callable[[str, Sequence[Any]], bool],
    budget: Budget,
) -> Iterator[tuple[str, list[Any]]]:
    """(id, values of ``fields``) of each matching task, until the budget is spent.

    ``fields[0]`` must be ``state`` (a task without one is gone). When the
    consumer stops, ``walk.position`` is just after the last task yielded;
    when the budget stops the scan, ``budget.cut`` is set and the position is
    after the last task examined.
    """
    while True:
        batch = walk.next_batch(SCAN_CHUNK)
        if not batch:
            return
        replies = _hmget(store, [task_id for task_id, _ in batch], fields)
        budget.scanned += len(batch)
        for (task_id, score), values in zip(batch, replies, strict=True):
            walk.consumed(score)
            if values[0] is not None and match(task_id, values):
                yield task_id, values
        pause()
        # Checked after a chunk, not before: every request moves its cursor on.
        if budget.scan_over():
            budget.cut = budget.cut or not walk.exhausted
            return


#: One match of a bounded scan: (id, values of the fields, the cursor just after it).
Found = tuple[str, list[Any], tuple[float, int] | None]


def take(
    store: Store,
    walk: IndexWalk,
    fields: Sequence[str],
    match: Callable[[str, Sequence[Any]], bool],
    budget: Budget,
    limit: int,
    skip: int = 0,
) -> tuple[list[Found], bool]:
    """The bounded scan every filtered read uses: up to ``limit`` matches after the
    first ``skip`` ones (counted, not kept), within the budget; True when the
    page is full (``limit`` reached), False when the walk or the budget ended."""
    found: list[Found] = []
    skipped = 0
    for task_id, values in scan(store, walk, fields, match, budget):
        if skipped < skip:
            skipped += 1
            continue
        found.append((task_id, values, walk.position))
        if len(found) >= limit:
            return found, True
    return found, False


def filters_match(
    states: Sequence[str], name: str | None, worker: str | None
) -> Callable[[str, Sequence[Any]], bool]:
    """A scan's ``match`` testing the FILTER_FIELDS only."""

    def match(_task_id: str, values: Sequence[Any]) -> bool:
        return matches_filters(states, name, worker, values)

    return match


def iter_rows(
    store: Store, ids: Sequence[str], fields: Sequence[str], budget: Budget
) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Rows of ``ids`` in order, a chunk at a time, with how many ids each chunk covers.

    Stops (``budget.cut``) once the page holds ``budget.page_bytes`` of values
    or the request's time is up; the first row is always returned.
    """
    size = 0
    done = 0
    step = max(10, ROW_VALUES // len(fields))
    while done < len(ids):
        if done:
            pause()
            if size >= budget.page_bytes or budget.time_over():
                budget.cut = True
                return
        chunk = ids[done : done + step]
        rows: list[dict[str, Any]] = []
        used = 0
        for task_id, values in zip(chunk, _hmget(store, chunk, fields), strict=True):
            if (done or used) and size >= budget.page_bytes:
                budget.cut = True
                break
            used += 1
            if values[0] is None:  # trimmed between the index read and this fetch
                continue
            present = {k: v for k, v in zip(fields, values, strict=True) if v is not None}
            size += sum(map(len, present.values()))
            row = {"id": task_id}
            row.update(present)
            rows.append(row)
        done += used
        yield used, rows
        if used < len(chunk):
            return


def fetch_rows(
    store: Store, ids: Sequence[str], fields: Sequence[str], budget: Budget
) -> tuple[list[dict[str, Any]], int]:
    """The rows of :func:`iter_rows` in one list, and how many ids they cover."""
    rows: list[dict[str, Any]] = []
    covered = 0
    for used, chunk in iter_rows(store, ids, fields, budget):
        covered += used
        rows.extend(chunk)
    return rows, covered


# -- /api/v1/tasks -----------------------------------------------------------


def list_tasks(store: Store, query: TaskQuery) -> dict[str, Any]:
    """One page of rows: {"tasks", "total", "next_cursor", "scanned"?}."""
    budget = Budget()
    where = plan(store, query.states, query.name, query.worker)
    if query.sort != "updated":
        return _sorted_in_memory(store, query, where, budget)
    if query.q:
        return _search(store, query, where, budget)
    if not where.predicate:
        return _simple_page(store, query, where, budget)
    return _filtered_page(store, query, where, budget)


def _walk(store: Store, query: TaskQuery, where: Plan, chunk: int = SCAN_CHUNK) -> IndexWalk:
    return IndexWalk(store, where.keys, query.desc, query.since, query.until, query.cursor, chunk)


def _simple_page(store: Store, query: TaskQuery, where: Plan, budget: Budget) -> dict[str, Any]:
    walk = _walk(store, query, where, chunk=min(query.limit + 1, WALK_CHUNK))
    batch = walk.next_batch(query.limit)
    rows, covered = fetch_rows(store, [task_id for task_id, _ in batch], LIST_FIELDS, budget)
    for _, score in batch[:covered]:
        walk.consumed(score)
    more = covered < len(batch) or (len(batch) == query.limit and not walk.exhausted)
    return {
        "tasks": rows,
        "total": count(store, where.keys, query.since, query.until),
        "next_cursor": format_cursor(walk.position) if more else None,
    }


def _page_from_scan(
    store: Store,
    walk: IndexWalk,
    found: list[tuple[str, tuple[float, int] | None]],
    budget: Budget,
    full: bool,
) -> dict[str, Any]:
    """Rows of the found ids; the cursor follows the last row returned."""
    rows, covered = fetch_rows(store, [task_id for task_id, _ in found], LIST_FIELDS, budget)
    more = full or budget.cut
    if covered < len(found):
        position = found[covered - 1][1]
    else:
        position = walk.position
    return {
        "tasks": rows,
        "total": None,
        "next_cursor": format_cursor(position) if more else None,
        "scanned": budget.scanned,
    }


def _filtered_page(store: Store, query: TaskQuery, where: Plan, budget: Budget) -> dict[str, Any]:
    walk = _walk(store, query, where)
    match = filters_match(query.states, query.name, query.worker)
    found, full = take(store, walk, FILTER_FIELDS, match, budget, query.limit)
    return _page_from_scan(store, walk, [(i, pos) for i, _, pos in found], budget, full)


def _search(store: Store, query: TaskQuery, where: Plan, budget: Budget) -> dict[str, Any]:
    needle = (query.q or "").lower()
    found: list[tuple[str, tuple[float, int] | None]] = []
    exact = None
    if query.cursor is None and query.q and len(query.q) <= MAX_KEY_PART:
        # Search by task id: an exact id is found at once whatever its age.
        values = store.redis.hmget(store.keys.task(query.q), FILTER_FIELDS)
        if values[0] is not None and matches_filters(
            query.states, query.name, query.worker, values
        ):
            exact = query.q
            found.append((exact, None))
    walk = _walk(store, query, where)

    def match(task_id: str, values: Sequence[Any]) -> bool:
        if task_id == exact or not matches_filters(query.states, query.name, query.worker, values):
            return False
        return needle in task_id.lower() or any(
            v is not None and needle in v.lower() for v in values[3:]
        )

    fields = (*FILTER_FIELDS, *SEARCH_FIELDS)
    more, full = take(store, walk, fields, match, budget, query.limit - len(found))
    found.extend((i, pos) for i, _, pos in more)
    return _page_from_scan(store, walk, found, budget, full)


def sort_value(row: Mapping[str, Any], field: str) -> Any:
    value = row.get(field)
    if field in _NUMERIC_SORT:
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return (1, 0.0)  # missing values last
        return (0, number) if math.isfinite(number) else (1, 0.0)
    return (0 if value is not None else 1, value or "")


def sorted_ids(
    store: Store,
    walk: IndexWalk,
    match: Callable[[str, Sequence[Any]], bool],
    fields: Sequence[str],
    field: str,
    desc: bool,
    budget: Budget,
) -> list[str]:
    """Ids of the first SORT_LIMIT matches, sorted by ``field`` (missing values last)."""
    found, _ = take(store, walk, (*fields, field), match, budget, SORT_LIMIT)
    rows = [{"id": task_id, field: values[-1]} for task_id, values, _ in found]
    present = [r for r in rows if sort_value(r, field)[0] == 0]
    missing = [r["id"] for r in rows if sort_value(r, field)[0] != 0]
    present.sort(key=lambda r: sort_value(r, field), reverse=desc)
    return [r["id"] for r in present] + missing


def _sorted_in_memory(
    store: Store, query: TaskQuery, where: Plan, budget: Budget
) -> dict[str, Any]:
    """Sort by another field: only when the filters leave few enough tasks."""
    if query.q:
        raise QueryError("text search (q) is sorted newest first; drop sort or q")
    total = count(store, where.keys, query.since, query.until)
    if total > SORT_LIMIT:
        raise QueryError(
            f"sort={query.sort} needs filters leaving at most {SORT_LIMIT} tasks "
            f"({total} match); use the default sort (updated)"
        )
    walk = IndexWalk(store, where.keys, True, query.since, query.until, None)
    match = filters_match(query.states, query.name, query.worker)
    ordered = sorted_ids(store, walk, match, FILTER_FIELDS, query.sort, query.desc, budget)
    offset = query.cursor[1] if query.cursor else 0
    page = ordered[offset : offset + query.limit]
    rows, covered = fetch_rows(store, page, LIST_FIELDS, budget)
    next_offset = offset + covered
    return {
        "tasks": rows,
        "total": len(ordered) if not budget.cut else None,
        # Offset cursors for in-memory sorts: the score part is unused (0).
        "next_cursor": format_cursor((0.0, next_offset)) if next_offset < len(ordered) else None,
    }


# -- Flower's /api/tasks -----------------------------------------------------


@dataclass(frozen=True)
class OffsetQuery:
    """Flower's task list: filters, offset and limit, optional in-memory sort."""

    states: tuple[str, ...] = ()
    name: str | None = None
    worker: str | None = None
    received_start: float | None = None
    received_end: float | None = None
    search: str | None = None
    sort_by: str | None = None
    desc: bool = False
    offset: int = 0
    limit: int = DEFAULT_LIMIT


def offset_page(
    store: Store, query: OffsetQuery, fields: Sequence[str], budget: Budget | None = None
) -> Iterator[list[dict[str, Any]]]:
    """Rows (``fields``) of one offset page, newest first, a chunk at a time.

    Filters the indexes answer page by rank (``seek``); others scan, counting
    the matches before the offset without keeping them. A scan the budget
    stops returns fewer rows.
    """
    budget = budget or Budget()
    where = plan(store, query.states, query.name, query.worker)
    # A task's index score is its last update, never before it was received.
    walk = IndexWalk(
        store, where.keys, True, query.received_start, None, None, min(query.limit + 1, WALK_CHUNK)
    )
    needle = query.search.lower() if query.search else None
    ranged = query.received_start is not None or query.received_end is not None
    test = (*FILTER_FIELDS, "received", *(SEARCH_FIELDS if needle else ()))

    def match(task_id: str, values: Sequence[Any]) -> bool:
        if not matches_filters(query.states, query.name, query.worker, values):
            return False
        if ranged:
            received = finite_float(values[3])
            if received is None:
                return False
            if query.received_start is not None and received < query.received_start:
                return False
            if query.received_end is not None and received > query.received_end:
                return False
        if needle is None:
            return True
        searched = (values[1], *values[4 : 4 + len(SEARCH_FIELDS)])  # name, SEARCH_FIELDS
        return needle in task_id.lower() or any(
            needle in v.lower() for v in searched if v is not None
        )

    if query.sort_by:
        ordered = sorted_ids(store, walk, match, test, query.sort_by, query.desc, budget)
        ids = ordered[query.offset : query.offset + query.limit]
    elif not (where.predicate or ranged or needle):
        if len(where.keys) == 1:  # a page by rank: no scores to read
            ids = []
            for start in range(query.offset, query.offset + query.limit, ROW_VALUES):
                stop = min(start + ROW_VALUES, query.offset + query.limit) - 1
                chunk = store.redis.zrevrange(where.keys[0], start, stop)
                ids.extend(chunk)
                if len(chunk) < stop - start + 1:
                    break
        elif walk.seek(query.offset):
            ids = [task_id for task_id, _ in walk.next_batch(query.limit)]
        else:
            return
    else:
        found, _ = take(store, walk, test, match, budget, query.limit, skip=query.offset)
        ids = [task_id for task_id, _, _ in found]
    for _, rows in iter_rows(store, ids, fields, budget):
        yield rows


# -- one task, stats --------------------------------------------------------


def task_detail(store: Store, task_id: str, can_see_args: bool = True) -> dict[str, Any] | None:
    """GET /api/v1/tasks/<id> body (also pushed to a task room), as a caller who
    may (or may not) see arguments and results sees it (monitor.web.visibility;
    the republish payload is never shown)."""
    task = store.get_task(task_id)
    if task is None:
        return None
    children = task.get("children") or []
    if children and len(children) <= MAX_CHILD_ROWS:
        task["children_rows"] = store.get_tasks(children)
    # Is the worker that has (or had) this task alive, by Celery's heartbeat
    # rule? A RECEIVED/STARTED task on an offline worker may be lost: the page
    # says so instead of showing it as running. None: no worker known.
    worker = store.worker(task["worker"]) if task.get("worker") else None
    task["worker_online"] = worker["online"] if worker is not None else None
    task.update(lost.detail_flags(store, task))
    return visible_task(task, can_see_args)


def _minute_windows(
    store: Store, minutes: int, now: float, budget: Budget
) -> Iterator[dict[str, Any]]:
    """Per-minute counters, newest hour first, an hour per round trip, within the budget.

    A day is 1,440 hashes, each with a few fields per task name: read at once it
    would be one long slice of this process (and, with many names, a lot of
    memory). Stops after STATS_FIELDS_BUDGET fields or the request's time.
    """
    last = int(now // 60)
    first = last - minutes + 1
    fields = 0
    while last >= first:
        n = min(STATS_WINDOW, last - first + 1)
        window = store.minute_stats(n, last * 60.0)
        for entry in reversed(window):
            fields += len(entry["counters"]) + len(entry["names"])
            yield entry
        last -= n
        pause()
        if last >= first and (fields >= STATS_FIELDS_BUDGET or budget.time_over()):
            budget.cut = True
            return


_FAILURE_FIELD = STAT_STATE + "FAILURE"


def _count(value: Any) -> float:
    number = finite_float(value)
    return 0.0 if number is None else number


def stats(store: Store, minutes: int = 60, now: float | None = None) -> dict[str, Any]:
    """GET /api/v1/stats body (also the "overview" push).

    ``partial`` is true when the per-minute counters were too many to read
    within the request's budget: ``minutes`` then starts later than asked.
    """
    now = time.time() if now is None else now
    budget = Budget()
    per_minute = []
    runtime_sum: dict[str, float] = {}
    runtime_count: dict[str, int] = {}
    failures: dict[str, int] = {}
    for entry in _minute_windows(store, minutes, now, budget):
        row: dict[str, Any] = {"minute": entry["minute"]}
        for field, value in entry["counters"].items():
            if field.startswith(STAT_STATE):
                row[state_word(field[len(STAT_STATE) :])] = int(_count(value))
        # per-name fields: <field>|<name> (monitor/vocabulary.py)
        for field, value in entry.get("names", {}).items():
            base, _, name = field.partition(STAT_SCOPE)
            if base == _FAILURE_FIELD:
                failures[name] = failures.get(name, 0) + int(_count(value))
            elif base == STAT_RUNTIME_SUM:
                runtime_sum[name] = runtime_sum.get(name, 0.0) + _count(value)
            elif base.startswith(STAT_RUNTIME):
                runtime_count[name] = runtime_count.get(name, 0) + int(_count(value))
        for key in ("received", "started", "succeeded", "failed", "retried"):
            row.setdefault(key, 0)
        per_minute.append(row)
    per_minute.reverse()  # oldest first
    slowest = sorted(
        (
            {"name": n, "avg_runtime": runtime_sum[n] / c, "count": c}
            for n, c in runtime_count.items()
            if c and n in runtime_sum
        ),
        key=lambda r: r["avg_runtime"],
        reverse=True,
    )[:10]
    failing = sorted(
        ({"name": n, "failures": f} for n, f in failures.items() if f),
        key=lambda r: r["failures"],
        reverse=True,
    )[:10]
    workers = store.workers(now)
    online = sum(1 for w in workers if w["online"])
    meta = store.meta()
    return {
        "counts": store.state_counts(),
        "workers": {"online": online, "offline": len(workers) - online},
        "minutes": per_minute,
        "slowest": slowest,
        "failing": failing,
        "dropped": {k[8:]: v for k, v in meta.items() if k.startswith("dropped:")},
        "malformed": sum(v for k, v in meta.items() if k.startswith("malformed")),
        "partial": budget.cut,
    }


# -- Flower's reads, and small ones ----------------------------------------------


def task_fields(
    store: Store, task_id: str, fields: Sequence[str] | None = None
) -> dict[str, str] | None:
    """The stored fields of one task (all, or ``fields`` that are set), None when unknown."""
    key = store.keys.task(task_id)
    if fields is None:
        return store.redis.hgetall(key) or None
    values = store.redis.hmget(key, fields)
    found = {k: v for k, v in zip(fields, values, strict=True) if v is not None}
    return found if found.get("state") else None


def task_children(store: Store, task_id: str) -> list[str]:
    """Ids of a task's children, sorted; at most MAX_MEMBERS of them (a task may
    have started 100,000 children)."""
    return sorted(store.redis.srandmember(store.keys.children(task_id), MAX_MEMBERS))


def task_name_known(store: Store, name: str) -> bool:
    """Has the store seen a task of this name?"""
    return store.redis.zscore(store.keys.task_names, name) is not None


def task_names(store: Store) -> list[str]:
    """Task names, most recently seen first (at most MAX_NAMES)."""
    return list(store.redis.zrevrange(store.keys.task_names, 0, MAX_NAMES - 1))


def worker_tasks(store: Store, hostname: str, limit: int = 100) -> list[dict[str, Any]]:
    ids = store.redis.zrevrange(store.keys.by_worker(hostname), 0, limit - 1)
    return store.get_tasks(ids, LIST_FIELDS)
