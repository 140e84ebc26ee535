"""Celery events read straight off a Redis broker's pub/sub.

On a Redis broker, kombu sends every event (a fanout message) with one
``PUBLISH`` on a topic named after the exchange and the routing key
(``/0.celeryev/task.succeeded``). The payload is a JSON envelope whose ``body``
is the base64 of the serialized event. kombu's consumer side then builds a
virtual-transport delivery, a ``Message`` object and a callback chain for every
event: about 25 µs a message, twice what the receiver spends storing it.

This module subscribes to the same topics and decodes the envelope itself. It
asks kombu's own channel for everything that depends on settings: the topic
names (``fanout_prefix``, ``fanout_patterns``, the database number, the
Sentinel compatibility topic) and the Redis client (URL, TLS, Sentinel,
``global_keyprefix``). Only the delivery machinery is skipped; the wire format
is kombu's, and anything but plain JSON (other serializers, kombu's tagged
types) is decoded by kombu's serializer registry.

Every message is untrusted (anyone with broker access can publish one):
:func:`decode` and :func:`decode_body`, which both receiver paths use, raise
:class:`UndecodableMessage` and nothing else, whatever the input. Compressed
bodies are inflated here, not by kombu (whose ``decompress`` has no size cap),
stopping at a size cap.
"""

from __future__ import annotations

import base64
import bz2
import lzma
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from kombu.serialization import loads

from . import fastjson
from .model import MalformedEvent, brief

#: What the receiver accepts on either path, as kombu's ``accept`` list (no pickle, ever).
ACCEPT = {"application/json"}
_UTF8 = ("utf-8", "utf8", None)
#: Default cap on a body's size after decompression (Settings.max_decompressed_bytes).
MAX_DECOMPRESSED_BYTES = 4 * 1024 * 1024
#: An xz header names the memory its decoder needs: xz -9 needs 65 MiB, more is refused.
LZMA_MEMLIMIT = 96 * 1024 * 1024


class UndecodableMessage(MalformedEvent):
    """A message no event can be read from: not kombu's envelope, a serializer
    or a compression we do not take, a body past the size cap, not JSON ..."""


def topics(channel: Any, exchange: str) -> list[str]:
    """The topics kombu would subscribe a queue bound to ``exchange`` with ``#`` to.

    kombu stores a fanout binding's ``#`` as ``*`` (a Redis glob) and asks
    ``_get_publish_topics`` for the names; so do we.
    """
    many = getattr(channel, "_get_publish_topics", None)
    if many is not None:
        return list(many(exchange, "*"))
    return [channel._get_publish_topic(exchange, "*")]


def _as_is(response: Any) -> Any:
    return response


def subscribe(channel: Any, exchange: str) -> Any:
    """A redis-py PubSub on kombu's client, pattern-subscribed to the event topics."""
    # redis-py hands each pub/sub message to push_handler_func; its default one
    # formats the whole message for a debug log line, every time.
    pubsub = channel.client.pubsub(push_handler_func=_as_is)
    pubsub.psubscribe(*topics(channel, exchange))
    return pubsub


_PMESSAGE = (b"pmessage", "pmessage")


def payloads(pubsub: Any, timeout: float, limit: int = 1000) -> Iterator[bytes]:
    """The payloads that arrive within ``timeout`` seconds, then up to ``limit``
    of those already waiting (so a caller under a steady stream still gets back
    control to check its stop flag).

    Reads the subscribed connection directly: ``PubSub.get_message`` costs
    twice as much per message (retry wrappers, a dict per message), and a
    burst of events arrives many to one socket read anyway. Raises redis-py's
    ``ConnectionError`` when the connection is lost.
    """
    conn = pubsub.connection
    if not conn.can_read(timeout=timeout):
        return
    for _ in range(limit):
        response = conn.read_response(push_request=True)
        if isinstance(response, list) and response and response[0] in _PMESSAGE:
            yield response[3]
        if not conn.can_read(timeout=0):
            return


def decode(payload: bytes | str, max_decompressed: int = MAX_DECOMPRESSED_BYTES) -> Any:
    """The event (a dict, or a list for ``task.multi``) inside one published envelope.

    Raises :class:`UndecodableMessage` for an envelope that is not kombu's or
    a body that cannot be decoded.
    """
    try:
        envelope = fastjson.loads(payload)
    except ValueError as exc:
        raise UndecodableMessage(f"envelope is not JSON ({exc})") from None
    if type(envelope) is not dict:
        raise UndecodableMessage(f"envelope is not a JSON object: {brief(envelope)}")
    body = envelope.get("body")
    properties = envelope.get("properties") or {}
    headers = envelope.get("headers") or {}
    if type(properties) is not dict or type(headers) is not dict:
        raise UndecodableMessage("envelope properties or headers are not JSON objects")
    if properties.get("body_encoding") == "base64":
        try:
            body = base64.b64decode(body)
        except (TypeError, ValueError) as exc:  # binascii.Error is a ValueError
            raise UndecodableMessage(f"body is not base64 ({exc})") from None
    return decode_body(
        body,
        envelope.get("content-type"),
        envelope.get("content-encoding"),
        headers.get("compression"),
        max_decompressed,
    )


def decode_body(
    body: Any,
    content_type: Any,
    content_encoding: Any,
    compression: Any,
    max_decompressed: int = MAX_DECOMPRESSED_BYTES,
) -> Any:
    """An event message's body, on either receiver path.

    Celery events are plain JSON: orjson decodes them directly, skipping
    kombu's serializer registry and the decoder object it builds per message.
    Anything else (kombu's tagged types such as datetimes) takes kombu's own
    decoders, limited to :data:`ACCEPT`. A compressed body is inflated first,
    up to ``max_decompressed`` bytes. Raises :class:`UndecodableMessage` only.
    """
    if type(content_type) is not str or content_type not in ACCEPT:
        raise UndecodableMessage(f"content type {brief(content_type)} is not accepted")
    try:
        if compression:
            body = decompress(body, compression, max_decompressed)
        if (
            content_encoding in _UTF8
            and isinstance(body, bytes | str)
            and (b'"__type__"' if isinstance(body, bytes) else '"__type__"') not in body
        ):
            return fastjson.loads(body)
        return loads(body, content_type, content_encoding or "utf-8", accept=ACCEPT)
    except UndecodableMessage:
        raise
    except Exception as exc:  # any decoder's error (RecursionError, LookupError ...)
        raise UndecodableMessage(f"body cannot be decoded ({type(exc).__name__}: {exc})") from None


def _inflate_zlib(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, limit + 1)
    if len(out) > limit:
        raise _too_big(limit)
    if not inflater.eof:
        raise UndecodableMessage("compressed body is truncated")
    return out


def _inflater(make: Callable[[], Any]) -> Callable[[bytes, int], bytes]:
    """bz2/lzma: like ``bz2.decompress``/``lzma.decompress``, which read every
    stream of a concatenation, but stopping past ``limit`` output bytes."""

    def inflate(data: bytes, limit: int) -> bytes:
        out = bytearray()
        while True:
            inflater = make()
            out += inflater.decompress(data, limit + 1 - len(out))
            if len(out) > limit:
                raise _too_big(limit)
            if not inflater.eof:
                raise UndecodableMessage("compressed body is truncated")
            data = inflater.unused_data
            if not data:
                return bytes(out)

    return inflate


def _too_big(limit: int) -> UndecodableMessage:
    return UndecodableMessage(f"body inflates past {limit} bytes (max_decompressed_bytes)")


_ZLIB, _BZ2 = _inflate_zlib, _inflater(bz2.BZ2Decompressor)
_LZMA = _inflater(lambda: lzma.LZMADecompressor(memlimit=LZMA_MEMLIMIT))
#: kombu's compression names (content types and aliases, kombu.compression) we
#: inflate with a cap. kombu's "gzip" is zlib's format. Others (brotli, zstd,
#: when installed) are refused: their decoders here have no output cap.
_INFLATERS: dict[str, Callable[[bytes, int], bytes]] = {
    "application/x-gzip": _ZLIB,
    "gzip": _ZLIB,
    "zlib": _ZLIB,
    "application/x-bz2": _BZ2,
    "bzip2": _BZ2,
    "bzip": _BZ2,
    "application/x-lzma": _LZMA,
    "lzma": _LZMA,
    "xz": _LZMA,
}


def decompress(body: Any, compression: Any, limit: int) -> bytes:
    """kombu's ``decompress``, stopping once the output passes ``limit`` bytes
    (a 10 kB zlib body can inflate to 10 MB). Raises :class:`UndecodableMessage`."""
    inflate = _INFLATERS.get(compression) if type(compression) is str else None
    if inflate is None:
        raise UndecodableMessage(f"unsupported compression {brief(compression)}")
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogateescape")  # kombu's ensure_bytes
    if not isinstance(body, bytes | bytearray | memoryview):
        raise UndecodableMessage(f"compressed body is a {type(body).__name__}")
    try:
        return inflate(body, limit)
    except UndecodableMessage:
        raise
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError, MemoryError) as exc:
        raise UndecodableMessage(f"compressed body is corrupt ({exc})") from None
