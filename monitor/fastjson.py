"""JSON on the hot paths: orjson, with the standard library for what it refuses.

Every event the receiver takes is two JSON documents (kombu's envelope and the
event inside it) and every record a writer sends is encoded once more: orjson
does each 3-4x faster than ``json``. It is stricter, so anything it refuses
(NaN and Infinity, integers beyond 64 bits when encoding, strings with lone
surrogates) goes through the standard library instead. One difference is
kept: orjson decodes an integer beyond 64 bits as a float (but one beyond a
double's range, which it refuses, comes back from ``json`` as an int).
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """Decode JSON text; raises ``ValueError`` if it is not JSON, and for any
    input it cannot decode (invalid UTF-8, nesting beyond the recursion limit).

    A document may still come back nested up to orjson's depth limit (1024),
    deeper than Python code can recurse: callers that walk or re-encode what
    they decode must guard against ``RecursionError`` (``monitor.model`` does).
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested deeper than the recursion limit") from None


def dumps(value: Any) -> bytes:
    """Encode ``value`` as compact UTF-8 JSON bytes.

    A lone surrogate (from ``os.fsdecode`` of a bad file name, say) cannot be
    UTF-8: it becomes U+FFFD rather than failing the whole batch.
    """
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8", "replace")
