"""The audit log: one entry per attempted operator action, refused ones included.

Owns the ``{p}:audit`` stream (spelled in :mod:`monitor.keys`): who (name, role,
how they authenticated), what (action, target, parameters), when, from where,
and the outcome (``ok``, ``status``, a short ``result``). Parameters go through
the monitor's redaction (``MONITOR_REDACT``) and every field is capped, so an
entry costs a few kilobytes whatever it is given; retention is by count and by
age, enforced as entries are written, like the tasks'. No Flask here.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .keys import Keys
from .model import cap_text, redact_mapping

if TYPE_CHECKING:
    import redis

    from .auth import Principal
    from .config import Settings

MAX_LIMIT = 500  # entries one list() returns
MAX_SCAN = 5_000  # entries a filtered list() reads before it hands back a cursor
MAX_PARAMS_BYTES = 2_048
MAX_RESULT_BYTES = 2_048
MAX_TEXT_BYTES = 512  # who, role, via, action, target, addr, status
_MAX_DEPTH = 8  # levels of nesting kept in params and result
_MAX_ITEMS = 50  # items kept per dict or list
_MAX_NODES = 500  # values visited per params or result
_MAX_STRING = 1_024  # characters kept per string inside params or result
_CURSOR = re.compile(r"\d{1,20}-\d{1,20}")
_TEXT_FIELDS = ("who", "role", "via", "action", "target", "addr", "status", "token")


def _text(value: Any, limit: int = MAX_TEXT_BYTES) -> str:
    """Any value as short, valid UTF-8 text (a Redis field, a JSON key)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        value = _repr(value)
    # lone surrogates (from a decoded URL, say) cannot reach Redis as UTF-8
    value = value.encode("utf-8", "replace").decode("utf-8")
    return cap_text(value, limit)[0]


def _repr(value: Any) -> str:
    if isinstance(value, int) and value.bit_length() > 4_000:
        return f"<int of {value.bit_length()} bits>"  # str() of a huge int raises
    try:
        return repr(value)[:_MAX_STRING]
    except Exception:  # a hostile __repr__
        return f"<{type(value).__name__}>"


def scrub(value: Any, names: tuple[str, ...]) -> Any:
    """A JSON-ready copy of ``value``: sensitive keys redacted at every depth, finite
    numbers, and bounded in depth, items per container and values visited."""
    budget = [_MAX_NODES]

    def walk(value: Any, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            return "…"
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):  # beyond 64 bits as text: JSON readers lose precision
            return value if value.bit_length() <= 64 else _repr(value)
        if isinstance(value, float):
            return value if math.isfinite(value) else repr(value)
        if isinstance(value, str):
            return _text(value, _MAX_STRING)
        if depth >= _MAX_DEPTH:
            return "…"
        if isinstance(value, Mapping):
            items = {}
            for count, (key, item) in enumerate(value.items()):
                if count >= _MAX_ITEMS:
                    items["…"] = f"{len(value) - _MAX_ITEMS} more"
                    break
                items[_text(key if isinstance(key, str) else _repr(key), 200)] = item
            redacted = redact_mapping(items, names)
            return {key: walk(item, depth + 1) for key, item in redacted.items()}
        if isinstance(value, list | tuple | set | frozenset):
            head = zip(range(_MAX_ITEMS), value, strict=False)
            kept = [walk(item, depth + 1) for _, item in head]
            if len(value) > _MAX_ITEMS:
                kept.append(f"… {len(value) - _MAX_ITEMS} more")
            return kept
        return _repr(value)

    try:
        return walk(value, 0)
    except Exception:  # a mapping whose items() raises, a set that changes size ...
        return f"<{type(value).__name__}>"


def _json_field(value: Any, names: tuple[str, ...], limit: int) -> tuple[str, int]:
    """(JSON text, original size when capped else 0) for params or result."""
    text = json.dumps(scrub(value, names), ensure_ascii=False, separators=(",", ":"))
    return cap_text(text, limit)


def _decode_json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text  # capped: shown as the text it is


class AuditLog:
    """The ``{p}:audit`` stream. ``client`` must decode responses. Methods raise
    ``redis.RedisError`` when Redis is away (an action that cannot be audited
    should not run)."""

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings):
        self.redis = client
        self.keys = keys
        self.settings = settings

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditLog:
        from .store import redis_client

        return cls(redis_client(settings.redis_url), Keys(settings.prefix), settings)

    def record(
        self,
        who: str,
        role: Any,
        via: str,
        action: str,
        target: Any = "",
        params: Any = None,
        addr: str | None = None,
        ok: bool = True,
        status: Any = "",
        result: Any = None,
        *,
        token: str | None = None,
    ) -> str:
        """Append one entry and apply retention; returns the entry id (the list's cursor).

        ``role`` a Role or its name; ``via`` session|basic|token|header|anonymous|cli;
        ``action`` e.g. ``task.revoke``; ``target`` a task id, worker, queue or filter;
        ``params`` and ``result`` anything JSON-like (redacted, capped at 2 KiB each);
        ``ok`` did it run; ``status`` the HTTP status or ``refused``; ``token`` the id of
        the API token used, if any.
        """
        names = self.settings.redact
        now = time.time()
        fields = {
            "who": who,
            "role": getattr(role, "value", role),
            "via": via,
            "action": action,
            "target": target,
            "addr": addr,
            "status": status,
        }
        if token:
            fields["token"] = token
        entry = {name: _text(value) for name, value in fields.items()}
        entry["at"] = repr(now)
        entry["ok"] = "1" if ok else "0"
        entry["params"], params_size = _json_field(params, names, MAX_PARAMS_BYTES)
        entry["result"], result_size = _json_field(result, names, MAX_RESULT_BYTES)
        if params_size:
            entry["params_truncated"] = str(params_size)
        if result_size:
            entry["result_truncated"] = str(result_size)
        min_id = f"{max(0, int((now - self.settings.audit_max_age) * 1000))}-0"
        pipe = self.redis.pipeline(transaction=False)
        # Exact trimming: audit writes come at human rates, and the bounds then hold exactly.
        pipe.xadd(self.keys.audit, entry, maxlen=self.settings.audit_max_entries, approximate=False)
        pipe.xtrim(self.keys.audit, minid=min_id, approximate=False)
        entry_id, _ = pipe.execute()
        return entry_id

    def record_for(self, principal: Principal, action: str, **fields: Any) -> str:
        """:meth:`record` for a :class:`monitor.auth.Principal`."""
        return self.record(
            principal.name,
            principal.role,
            principal.via,
            action,
            token=principal.token_id,
            **fields,
        )

    def count(self) -> int:
        return int(self.redis.xlen(self.keys.audit))

    @staticmethod
    def _entry(entry_id: str, fields: Mapping[str, str]) -> dict[str, Any]:
        try:
            at = float(fields.get("at", ""))
        except ValueError:
            at = math.nan
        if not math.isfinite(at):  # "1e400" would be Infinity: not JSON a browser parses
            at = int(entry_id.split("-")[0]) / 1000.0
        status = fields.get("status", "")
        row: dict[str, Any] = {"id": entry_id, "at": at}
        row.update({name: fields.get(name, "") for name in _TEXT_FIELDS})
        row["token"] = row["token"] or None
        row["addr"] = row["addr"] or None
        row["status"] = int(status) if status.isdigit() and len(status) < 4 else status
        row["ok"] = fields.get("ok") == "1"
        row["params"] = _decode_json(fields.get("params"))
        row["result"] = _decode_json(fields.get("result"))
        for name in ("params_truncated", "result_truncated"):
            if fields.get(name, "").isdigit():
                row[name] = int(fields[name])
        return row

    def list(
        self,
        limit: int = 50,
        before: str | None = None,
        action: str | None = None,
        who: str | None = None,
    ) -> dict[str, Any]:
        """Entries newest first: ``{"entries": [entry], "next_cursor": id or None}``.

        ``limit`` is clamped to 1..500; ``before`` a cursor (an entry id: entries
        strictly older); ``action`` / ``who`` exact filters. A filtered read scans at
        most 5,000 entries and then returns a cursor to continue from. An entry is
        ``{"id", "at", "who", "role", "via", "action", "target", "addr", "ok",
        "status", "params", "result", "token"}`` (plus ``params_truncated`` /
        ``result_truncated``, the original size, when capped). ValueError for a
        malformed ``limit`` or ``before``.
        """
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise ValueError(f"limit must be an integer, got {type(limit).__name__}")
        limit = min(max(limit, 1), MAX_LIMIT)
        if before is not None and not (isinstance(before, str) and _CURSOR.fullmatch(before)):
            raise ValueError("before must be an entry id such as 1700000000000-0")
        filtered = action is not None or who is not None
        upper = f"({before}" if before else "+"
        entries: list[dict[str, Any]] = []
        scanned, last, exhausted = 0, None, False
        while len(entries) < limit and scanned < MAX_SCAN:
            want = min(200 if filtered else limit - len(entries), MAX_SCAN - scanned)
            batch = self.redis.xrevrange(self.keys.audit, max=upper, min="-", count=want)
            used = 0
            for entry_id, fields in batch:
                used += 1
                last = entry_id
                if (action is None or fields.get("action") == action) and (
                    who is None or fields.get("who") == who
                ):
                    entries.append(self._entry(entry_id, fields))
                    if len(entries) == limit:
                        break
            scanned += used
            if len(batch) < want and used == len(batch):
                exhausted = True  # the stream holds nothing older
                break
            upper = f"({last}"
        return {"entries": entries, "next_cursor": None if exhausted else last}
